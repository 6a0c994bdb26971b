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
to commands.apply as such: a broken edit on disk never reaches a repair."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from binfmtd import commands, facts
from binfmtd.config import Config, load_config
from binfmtd.entry import Entry, parse_entry
from binfmtd.errors import EXIT_OK, EXIT_USAGE, BinfmtdError, HostUnsupported, UsageError
from binfmtd.interpreters import DEFAULT_INTERPRETER_DIRS
from binfmtd.state import (
    BOOT_FILE,
    READY_FILE,
    State,
    load_state,
    open_state_dir,
    read_record,
    state_dir_from_env,
    touch_record,
    write_record,
)
from binfmtd.targets import lookup

BOOT_ID = "/proc/sys/kernel/random/boot_id"
DEFAULTS = Config("")
LOCK_TIMEOUT = 5.0  # seconds an apply waits for another binfmtd's lock before retrying later
RETRY_MAX = 300.0  # seconds between applies while targets fail: interval (1 s at least), doubling
METRICS_REFRESH = 15.0  # seconds between textfile rewrites while idle (emulated processes change)
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6  # syslog priorities, as journald reads them


# -- logging: one plain line per event on stderr ---------------------------------------------

class Log:
    """Under systemd each line starts with `<N>`, the syslog priority journald files it at;
    elsewhere with `binfmtd: ` (and `warning: `/`error: ` as the CLI prints them)."""

    def __init__(self, stream=None, environ=None):
        self.stream = stream or sys.stderr
        self.journal = under_systemd(environ if environ is not None else os.environ, self.stream)

    def __call__(self, priority: int, message: str) -> None:
        if self.journal:
            line = f"<{priority}>{message}"
        else:
            kind = {ERR: "error: ", WARNING: "warning: "}.get(priority, "")
            line = f"binfmtd: {kind}{message}"
        try:
            self.stream.write(line.replace("\n", " ") + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: keep the host right all the same
            pass


def under_systemd(environ, stream) -> bool:
    """Whether stderr goes to journald: a service (INVOCATION_ID) or JOURNAL_STREAM naming the
    very stream (device:inode) we write to."""
    if environ.get("INVOCATION_ID"):
        return True
    device_inode = environ.get("JOURNAL_STREAM", "")
    if not device_inode:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True
    return device_inode == f"{st.st_dev}:{st.st_ino}"


# -- sd_notify, by hand ------------------------------------------------------------------------

class Notifier:
    """systemd's notify protocol: newline-separated KEY=VALUE datagrams to $NOTIFY_SOCKET
    (a path, or `@name` in the abstract namespace). Without the variable, it does nothing."""

    def __init__(self, address: str | None, log: Log):
        self.log = log
        self.address = None
        self.sock = None
        if not address:
            return
        if address[0] not in "/@":
            log(WARNING, f"NOTIFY_SOCKET={address!r} is neither a path nor @abstract; not notifying systemd")
            return
        self.address = "\0" + address[1:] if address[0] == "@" else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(0.2)  # a stalled receiver with a full queue must not stall the daemon
        self.failed = False

    def __call__(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
            self.failed = False
        except OSError as exc:
            if not self.failed:  # once per outage, not per watchdog ping
                where = self.address.lstrip("\0")
                self.log(WARNING, f"cannot notify systemd at {where} ({exc.strerror or 'timed out'})")
            self.failed = True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def watchdog_period(environ) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, if it is meant for us."""
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


# -- the desired state, and the drift from it: all a tick computes ------------------------------

@dataclass(frozen=True)
class Table:
    """What the kernel shows at the binfmt_misc path, as cheaply as it can be read."""

    mounted: bool
    status: str = ""  # "enabled" / "disabled"
    entries: tuple[tuple[str, str], ...] = ()  # (name, entry file text)
    # The emulators' files and directories on disk, stat()ed: an upgrade renames a new QEMU over an
    # F entry's pinned file (plan re-registers it), removes one, or adds one to a directory.
    emulators: tuple[tuple[str, tuple | None], ...] = ()


def stamp_emulators(entries: tuple[tuple[str, str], ...], dirs: tuple[str, ...]) -> tuple:
    """(path, stat stamp or None) of each entry's interpreter and each interpreter directory."""
    paths = [line.partition(" ")[2] for _, text in entries for line in text.splitlines()
             if line.startswith("interpreter ")]
    stamps = []
    for path in sorted(set(paths)) + list(dirs):
        try:
            st = os.stat(path)
            stamps.append((path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)))
        except OSError:
            stamps.append((path, None))
    return tuple(stamps)


def read_table(path: str, interpreter_dirs: tuple[str, ...] = (), dir_stamps: tuple | None = None) -> Table:
    """What the kernel shows, with the emulators' stamps; `dir_stamps` are the directories' stamps
    taken earlier (before an apply, so that an emulator added while it ran still counts)."""
    mounted = (facts.parse_mount_type(facts.read_text("/proc/self/mountinfo"), path) == "binfmt_misc"
               and os.path.exists(os.path.join(path, "register")))
    if not mounted:
        return Table(False)
    entries = []
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return Table(False)
    for name in names:
        if name not in ("register", "status"):
            try:
                with open(os.path.join(path, name)) as f:
                    entries.append((name, f.read()))
            except OSError:  # removed between listdir and open
                continue
    dirs = dir_stamps if dir_stamps is not None else stamp_emulators((), interpreter_dirs)
    return Table(True, facts.read_text(os.path.join(path, "status")).strip(), tuple(entries),
                 stamp_emulators(tuple(entries), ()) + dirs)


@dataclass
class Watch:
    """What the kernel must show for the daemon to have nothing to do. Taken from the last
    apply's results, i.e. from the config, never from a snapshot of the table: an entry removed
    in the moment after an apply is then missing at the next tick, not part of "normal"."""

    entries: dict[str, Entry] = field(default_factory=dict)  # present, enabled, as configured
    owned: set[str] = field(default_factory=set)  # those of `entries` binfmtd's state records as its own
    held: set[str] = field(default_factory=set)  # names another tool's entry holds: binfmtd's once gone
    status: str = ""  # binfmt_misc enabled/disabled as a whole: the admin's switch, reported, not repaired
    # entry texts found as desired: the same text again is one string comparison, not a parse
    # and two realpath() calls (half of an idle tick's CPU with 30 entries)
    verified: dict[str, str] = field(default_factory=dict)
    emulators: tuple = ()  # the emulators' stamps after the apply: a file replaced since is drift


def watch_from_report(report: commands.ChangeReport, state: State, status: str) -> Watch:
    """The desired state an apply established. A target with no interpreter (native, no QEMU)
    has nothing to keep; a failing one is retried on its own schedule; a target skipped with
    an interpreter is one whose name another tool's entry holds (plan_apply)."""
    failing = {e["target"] for e in report.errors}
    watch = Watch(status=status)
    for result in report.results:
        name = result["name"]
        if result["target"] in failing or result["interpreter"] is None:
            continue
        if result["action"] == "skipped":
            watch.held.add(name)
            continue
        target = lookup(result["target"])
        watch.entries[name] = Entry(name, result["interpreter"], result["flags"], 0, target.magic, target.mask)
        if state.owns(watch.entries[name]):
            watch.owned.add(name)
    return watch


@dataclass
class Drift:
    changes: list[str] = field(default_factory=list)  # what differs, in an operator's words
    repair: bool = False  # an apply brings the kernel back to the desired state
    reclaim: set[str] = field(default_factory=set)  # binfmtd's entries someone changed: put back
    left: dict[str, str] = field(default_factory=dict)  # changed entries left as they are, and why


def find_drift(table: Table, watch: Watch, path: str) -> Drift:
    """The kernel against the desired state. No I/O but realpath(); it only adds to the
    watch's cache of texts found as desired."""
    drift = Drift()
    if not table.mounted:
        drift.changes.append(f"binfmt_misc was unmounted from {path}")
        drift.repair = True
        return drift
    if table.status != watch.status:
        drift.changes.append(f"binfmt_misc was {table.status or 'made unreadable'} as a whole")
    if table.emulators != watch.emulators:  # plan decides whether an entry must be re-pinned
        old = dict(watch.emulators)
        drift.changes += [f"{file} was {'removed' if stamp is None else 'changed'} on disk"
                          for file, stamp in table.emulators if file in old and old[file] != stamp]
        drift.repair = True
    kernel = dict(table.entries)
    for name in sorted(watch.entries.keys() | watch.held):
        text = kernel.get(name)
        if text is None:
            drift.changes.append(f"{name} was removed" + (" (it was another tool's)" if name in watch.held else ""))
            drift.repair = True
            continue
        if name in watch.held or watch.verified.get(name) == text:
            continue  # someone else's entry (what it contains is theirs to decide), or as desired
        entry, want = parse_entry(name, text), watch.entries[name]
        if entry.enabled and entry.same_registration(want):
            watch.verified[name] = text
            continue
        what = "disabled" if entry.same_registration(want) else "changed"
        if name in watch.owned:
            # binfmtd registered it (its state records this very entry), and someone changed it:
            # drift like any other, although the entry no longer matches the state's record
            drift.changes.append(f"{name} was {what}")
            drift.repair = True
            drift.reclaim.add(name)
        else:
            drift.changes.append(f"{name} was {what}")
            drift.left[name] = (f"another tool's entry, now {entry.interpreter}, flags {entry.flags or '-'}"
                                f"{'' if entry.enabled else ', disabled'}: binfmtd found it registered as "
                                "desired and never took it over, so changing it is that tool's right; "
                                f"`binfmtd apply --force {name.removeprefix('qemu-')}` takes it over")
    return drift


# -- boot detection ------------------------------------------------------------------------------

def note_boot(state_dir: str) -> tuple[str, str | None]:
    """This boot's id and the one the last start stored (None: never started here), storing
    this one atomically for the next start."""
    boot = facts.read_text(BOOT_ID).strip()
    open_state_dir(state_dir)
    previous = read_record(state_dir, BOOT_FILE)
    previous = previous if isinstance(previous, str) else None
    if boot and boot != previous:
        write_record(state_dir, BOOT_FILE, json.dumps(boot))
    return boot, previous


def boot_message(boot: str, previous: str | None) -> str:
    if not boot:
        return f"cannot read {BOOT_ID}; not telling a reboot from a restart"
    if previous == boot:
        return f"restarted within the same boot {boot}"
    return f"first start since boot {boot}" + (f" (previous start: boot {previous})" if previous else "")


# -- config -------------------------------------------------------------------------------------

def load_settings(config_file: str | None) -> Config:
    """The config the daemon keeps in force (defaults when there is no file); UsageError names
    the file and line of anything wrong in it."""
    return load_config(config_file) or DEFAULTS


def describe_config(config: Config) -> str:
    return config.path or "no config file (defaults)"


def config_targets(config: Config) -> set[str]:
    """The targets a config asks for (no list: all of them; the native ones are skipped)."""
    return {t.name for t in commands.desired_targets((), False, config, native=())[0]}


def table_problems(table: Table, path: str) -> set[tuple[int, str]]:
    if table.mounted and table.status == "disabled":
        return {(WARNING, (f"binfmt_misc is disabled as a whole on {path}, so no entry is used; "
                           f"`echo 1 > {path}/status` turns it back on (apply does not)"))}
    return set()


# -- the loop -------------------------------------------------------------------------------------

class Signals:
    """SIGTERM, SIGINT and SIGHUP wake the loop through a self-pipe: the C handler writes the
    signal number (signal.set_wakeup_fd); the Python handlers do nothing."""

    WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __enter__(self):
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in self.WATCHED}
        return self

    def wait(self, timeout: float) -> list[int]:
        """Sleep up to `timeout` seconds; the signals that arrived, in order."""
        ready, _, _ = select.select([self.read_fd], [], [], max(timeout, 0))
        if not ready:
            return []
        try:
            return list(os.read(self.read_fd, 256))
        except BlockingIOError:
            return []

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self.previous_fd)
        os.close(self.read_fd)
        os.close(self.write_fd)


class Daemon:
    """The loop's state: the settings in force, the desired state the last apply established,
    targets dropped from the config still to remove, the retry schedule and what was last
    logged and told systemd."""

    def __init__(self, settings: Config, path: str, state_dir: str, log: Log, notify: Notifier,
                 environ=None):
        self.settings, self.path, self.state_dir, self.log, self.notify = settings, path, state_dir, log, notify
        self.watchdog = watchdog_period(environ if environ is not None else os.environ)
        self.watch = Watch()
        self.failed = False  # the last apply could not run at all: its retry re-reads everything
        self.dropped: set[str] = set()  # targets a reload dropped from the config, to remove if binfmtd's
        self.removal_errors: dict[str, str] = {}  # entry name -> why removing it failed
        self.retry_delay = 0.0
        self.retry_at: float | None = None
        self.reported: set[tuple[int, str]] = set()  # the problems and notes logged and still true
        self.apply_problems: set[tuple[int, str]] = set()  # those the last apply found
        self.repairs = 0
        self.metrics_written = 0.0  # monotonic time of the last textfile write
        self.status = ""
        self.ready = False  # STATUS= goes out with READY=1 first

    def interpreter_dirs(self) -> tuple[str, ...]:
        return tuple(self.settings.interpreter_dirs or DEFAULT_INTERPRETER_DIRS)

    def apply(self, why: str, reclaim=()) -> int | None:
        """Remove the dropped targets and apply the config in force, then take the desired state
        from the result; an exit code if the host cannot do it at all. Problems are logged when
        they appear, not on every retry. `reclaim`: binfmtd's entries someone changed."""
        started = time.monotonic()
        dir_stamps = stamp_emulators((), self.interpreter_dirs())  # before: a change during the apply counts
        try:
            # a short lock wait: a long one would starve the watchdog pings
            removed = self._remove_dropped()
            report = commands.apply(config=self.settings, binfmt_misc=self.path, state_dir=self.state_dir,
                                    lock_timeout=LOCK_TIMEOUT, reclaim=tuple(sorted(reclaim)))
        except HostUnsupported as exc:
            self.log(ERR, str(exc))
            return exc.exit_code
        except (BinfmtdError, OSError) as exc:  # lock held too long, state unwritable, ...: retry
            self.failed = True
            self.apply_problems = {(ERR, str(exc))}
            self._report(self.apply_problems)
            self._schedule_retry()
            self._set_status(f"apply failed, retry in {self.retry_delay:g}s: {exc}")
            return None
        self.failed = False
        table = read_table(self.path, self.interpreter_dirs(), dir_stamps)
        self.watch = watch_from_report(report, self._state(), table.status)
        self.watch.emulators = table.emulators
        elapsed = (time.monotonic() - started) * 1000
        changed = [r for r in report.results if r["action"] not in ("unchanged", "skipped")]
        for r in changed:
            self.log(NOTICE, f"{r['name']} {r['action']} ({r['reason']})")
        if removed or report.changed:
            if why == "repair":
                self.repairs += 1
            count = removed + len(changed)
            self.log(NOTICE, f"{why}: {count} entr{'y' if count == 1 else 'ies'} changed in {elapsed:.0f} ms"
                             if count else f"{why}: mounted binfmt_misc on {self.path} in {elapsed:.0f} ms")
        elif why != "start":
            self.log(INFO, f"{why}: nothing to change")
        failing = {e["target"] for e in report.errors}
        problems = {(WARNING, w) for w in report.warnings} | {(ERR, e["message"]) for e in report.errors}
        # what binfmtd leaves and why, once while it holds: native targets, no QEMU, others' entries
        problems |= {(NOTICE if r["name"] in self.watch.held else INFO, f"{r['name']} skipped ({r['reason']})")
                     for r in report.results if r["action"] == "skipped" and r["target"] not in failing}
        problems |= {(ERR, f"no longer in the config, but not removed: {message}")
                     for message in self.removal_errors.values()}
        textfile = self.settings.daemon_textfile
        if textfile:
            problems |= self._write_metrics(textfile)
        self.apply_problems = problems
        self._report(problems | table_problems(table, self.path))
        kept = [r["name"] for r in report.results if r["action"] in ("registered", "replaced", "unchanged")]
        if report.errors or self.dropped:
            self._schedule_retry()
            self._set_status(f"keeping {len(kept)} entries; {len(report.errors) + len(self.dropped)} failing, "
                             f"retry in {self.retry_delay:g}s (SIGHUP retries now)")
        else:
            self.retry_delay, self.retry_at = 0.0, None
            self._set_status(f"keeping {len(kept)} entries ({', '.join(kept) or 'none'})"
                             + (f"; {self.repairs} drifts repaired" if self.repairs else ""))
        return None

    def _state(self) -> State:
        """binfmtd's record of what it registered (just saved by the apply under the lock)."""
        try:
            return load_state(self.state_dir)
        except BinfmtdError:  # the next apply reports it; meanwhile treat nothing as binfmtd's
            return State()

    def _remove_dropped(self) -> int:
        """Remove the targets a reload dropped from the config, where binfmtd owns the entry
        (a taken-over original is put back, as `binfmtd remove` does); others' entries stay,
        and the log says so. A target that failed stays pending and is retried. Returns how
        many entries were removed (logged here: the apply after it may still fail)."""
        self.removal_errors = {}
        if not self.dropped:
            return 0
        report = commands.remove(sorted(self.dropped), binfmt_misc=self.path, state_dir=self.state_dir,
                                 lock_timeout=LOCK_TIMEOUT)
        self.removal_errors = {e["target"]: e["message"] for e in report.errors}
        self.dropped = set(self.removal_errors)
        removed = 0
        for r in report.results:
            if r["target"] in self.dropped:
                continue
            if r["action"] == "removed":
                removed += 1
                self.log(NOTICE, f"{r['name']} removed (no longer in the config; {r['reason']})")
            elif r["action"] == "skipped":
                self.log(NOTICE, f"{r['name']} left in place: no longer in the config, but {r['reason']}")
        return removed

    def _write_metrics(self, textfile: str) -> set[tuple[int, str]]:
        """The [daemon] textfile for node_exporter, rewritten after each apply; a problem if not."""
        from binfmtd.metrics import prometheus_text, write_textfile

        self.metrics_written = time.monotonic()
        try:
            write_textfile(textfile, prometheus_text(self.path, self.state_dir))
        except (OSError, BinfmtdError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return {(WARNING, f"cannot write the metrics textfile {textfile} ({reason}); check that its "
                              "directory exists and is writable (ReadWritePaths= under systemd)")}
        return set()

    def _report(self, problems: set[tuple[int, str]]) -> None:
        for priority, message in sorted(problems - self.reported):
            self.log(priority, message)
        self.reported = problems

    def _schedule_retry(self) -> None:
        self.retry_delay = min(RETRY_MAX, max(1.0, self.settings.daemon_interval, self.retry_delay * 2))
        self.retry_at = time.monotonic() + self.retry_delay

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            if self.ready:
                self.notify(f"STATUS={status}")

    def reload(self, config_file: str | None) -> int | None:
        """SIGHUP: a good config is applied at once, and the targets it dropped are removed where
        binfmtd owns them; a broken one is logged and changes nothing."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            settings = load_settings(config_file)
        except UsageError as exc:
            self.log(ERR, f"reload: {exc}; keeping the config in force ({describe_config(self.settings)})")
            self.status = f"{self.status}; last reload failed: {exc}"  # shown until the next change
            self.notify("READY=1", f"STATUS={self.status}")
            return None
        wanted = config_targets(settings)
        self.dropped = (self.dropped | config_targets(self.settings)) - wanted
        self.settings = settings
        self.log(INFO, f"reload: config {describe_config(settings)}, checking every {settings.daemon_interval:g}s")
        self.reported = set()
        code = self.apply("reload")
        self.notify("READY=1", f"STATUS={self.status}")
        return code

    def tick(self) -> int | None:
        """The idle path: read the table and compare it with the desired state; an apply only
        if that finds something to repair. No probe, no subprocess, no state file."""
        if self.failed:
            return None  # the scheduled retry re-reads everything
        table = read_table(self.path, self.interpreter_dirs())
        drift = find_drift(table, self.watch, self.path)
        if not drift.changes:
            self.mark_ready()
            textfile = self.settings.daemon_textfile
            if textfile and time.monotonic() - self.metrics_written >= METRICS_REFRESH:
                self._report(self.reported | self._write_metrics(textfile))
            return None
        self.log(NOTICE, "drift: " + "; ".join(drift.changes))
        for name, why in drift.left.items():
            self.log(NOTICE, f"{name} left as it is: {why}")
            del self.watch.entries[name]  # from now on another tool's: binfmtd registers it once it is gone
            self.watch.verified.pop(name, None)
            self.watch.held.add(name)
        code = None
        if drift.repair:
            code = self.apply("repair", drift.reclaim)
        else:  # nothing to repair: the admin's switch, or others' changes to their own entries
            self.watch.status = table.status
            self._report(self.apply_problems | table_problems(table, self.path))
        self.mark_ready()
        return code

    def mark_ready(self) -> None:
        """Touch <state>/daemon.ready while the host is as configured: a readiness signal for
        probes that cannot speak sd_notify (a Kubernetes DaemonSet's); stale means not keeping up."""
        if self.retry_at is not None:
            return
        try:
            touch_record(self.state_dir, READY_FILE)
        except OSError:
            pass

    def run(self, config_file: str | None, signals: Signals) -> int:
        code = self.apply("start")
        if code is not None:
            return code
        self.ready = True
        self.mark_ready()
        self.notify("READY=1", f"STATUS={self.status}")
        self.log(INFO, f"ready: {self.status}")
        next_tick = time.monotonic() + self.settings.daemon_interval
        next_ping = time.monotonic() if self.watchdog else None
        while True:
            if next_ping is not None and time.monotonic() >= next_ping:
                self.notify("WATCHDOG=1")
                next_ping = time.monotonic() + self.watchdog
            due = min(t for t in (next_tick, next_ping, self.retry_at) if t is not None)
            for signum in signals.wait(due - time.monotonic()):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.log(INFO, f"stopping on {signal.Signals(signum).name}")
                    return EXIT_OK
                if signum == signal.SIGHUP:
                    if (code := self.reload(config_file)) is not None:
                        return code
                    next_tick = time.monotonic() + self.settings.daemon_interval
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.settings.daemon_interval
                if (code := self.tick()) is not None:
                    return code
            if self.retry_at is not None and now >= self.retry_at:
                self.retry_at = None
                if (code := self.apply("retry")) is not None:
                    return code


def run_daemon(config_file: str | None, binfmt_misc: str | None = None, state_dir: str | None = None) -> int:
    """Apply the config, then keep the host there until SIGTERM/SIGINT; the exit code."""
    log = Log()
    notify = Notifier(os.environ.get("NOTIFY_SOCKET"), log)
    path = binfmt_misc or facts.DEFAULT_BINFMT_MISC
    state_dir = state_dir or state_dir_from_env()
    try:
        settings = load_settings(config_file)
    except UsageError as exc:
        log(ERR, str(exc))
        notify.close()
        return EXIT_USAGE
    try:
        with Signals() as signals:
            try:
                log(INFO, boot_message(*note_boot(state_dir)))
            except OSError as exc:
                log(ERR, f"cannot use state directory {state_dir} ({exc.strerror}); "
                         "set BINFMTD_STATE_DIR to a directory root can write")
                return BinfmtdError.exit_code
            except BinfmtdError as exc:
                log(ERR, str(exc))
                return exc.exit_code
            daemon = Daemon(settings, path, state_dir, log, notify)
            log(INFO, f"started: config {describe_config(settings)}, binfmt_misc {path}, state {state_dir}, "
                      f"checking every {settings.daemon_interval:g}s"
                      + (f", watchdog ping every {daemon.watchdog:g}s" if daemon.watchdog else ""))
            return daemon.run(config_file, signals)
    finally:
        notify("STOPPING=1")
        notify.close()
