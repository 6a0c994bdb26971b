"""`binfmtd daemon`: apply the config, then keep the host there. A thin loop over
commands.apply, the function the CLI calls: no fork, no PID file; systemd owns the process
(Type=notify, WatchdogSec=, ExecReload=kill -HUP $MAINPID) and reads its plain lines on stderr.

The loop sleeps in select() on a self-pipe that the signal handlers' wakeup fd writes to, so a
signal wakes it at once and no work happens inside a handler. Each tick reads the table (mounted?,
status, each entry's text) and compares it with the desired state the last apply established
(the entries the config wants, never a snapshot of the table: a snapshot taken after a repair
would make an entry removed in that moment look normal for ever). A full apply (facts,
interpreters, plan, act) runs only when that comparison finds something to repair, on SIGHUP,
and as a backed-off retry while targets fail. After each apply the [daemon] textfile, if set,
gets the Prometheus metrics (binfmtd.metrics).

Whose entry is it? An entry binfmtd registered (its state records that very entry at the last
apply) that someone then changed is drift, repaired like a removal: the daemon's job is the
config. An entry another tool had registered as desired before binfmtd did is that tool's: when
it changes, the daemon says so and leaves it, and registers its own once the name is free. A
target dropped from the config on SIGHUP is removed where binfmtd owns the entry (as `binfmtd
remove` does: a taken-over original is put back).

The kernel sends no uevent for binfmt_misc (it has no kobject; measured: none on register,
disable, remove, umount). inotify on the mount does see writes to register/status/entries,
removals (IN_DELETE) and the umount (IN_UNMOUNT), but not a mount appearing, and needs ctypes
and re-watching after every remount; a tick costs well under a millisecond, so polling it is.

The config in force is the value loaded and checked at start or at the last good SIGHUP, handed
to commands.apply as such: a broken edit on disk never reaches a repair.

The package: systemd (journal lines, sd_notify, watchdog, signals), drift (the table against the
desired state), loop (the Daemon: apply, tick, reload, retry), start (run_daemon, boot detection)."""

from binfmtd.daemon.drift import Drift, Table, Watch, find_drift, read_table, watch_from_report
from binfmtd.daemon.loop import METRICS_REFRESH, Daemon, load_settings
from binfmtd.daemon.start import boot_message, note_boot, run_daemon
from binfmtd.daemon.systemd import Log, Notifier, Signals, watchdog_period

__all__ = ["METRICS_REFRESH", "Daemon", "Drift", "Log", "Notifier", "Signals", "Table", "Watch", "boot_message",
           "find_drift", "load_settings", "note_boot", "read_table", "run_daemon", "watch_from_report",
           "watchdog_period"]
