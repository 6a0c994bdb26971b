"""`binfmtd daemon`: apply the config, then keep the host there. A thin loop over
commands.apply, the function the CLI calls: no fork, no PID file; systemd owns the process
(Type=notify, WatchdogSec=, ExecReload=kill -HUP $MAINPID) and reads its plain lines on stderr.

The loop sleeps in select() on a self-pipe that the signal handlers' wakeup fd writes to, so a
signal wakes it at once and no work happens inside a handler. Each tick reads only a fingerprint
of the table (mounted?, status, each entry's text); a full apply (facts, interpreters, plan, act)
runs only when the fingerprint moved away from the one taken after the last apply, on SIGHUP, and
as a backed-off retry while targets fail. After each apply the [daemon] textfile, if set, gets
the Prometheus metrics (binfmtd.metrics).

The kernel sends no uevent for binfmt_misc (it has no kobject; measured: none on register,
disable, remove, umount). inotify on the mount does see writes to register/status/entries,
removals (IN_DELETE) and the umount (IN_UNMOUNT), but not a mount appearing, and needs ctypes
and re-watching after every remount; a tick costs well under a millisecond, so polling it is.

The config in force is the value loaded and checked at start or at the last good SIGHUP, handed
to commands.apply as such: a broken edit on disk never reaches a repair."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

from binfmtd import commands, facts
from binfmtd.config import Config, load_config
from binfmtd.errors import EXIT_OK, EXIT_USAGE, BinfmtdError, HostUnsupported, UsageError
from binfmtd.state import state_dir_from_env

BOOT_ID = "/proc/sys/kernel/random/boot_id"
BOOT_ID_FILE = "boot_id"
DEFAULTS = Config("")
READY_FILE = "daemon.ready"
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


# -- the fingerprint: all a tick reads ----------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """What the kernel shows at the binfmt_misc path, as cheaply as it can be read."""

    mounted: bool
    status: str = ""  # "enabled" / "disabled"
    entries: tuple[tuple[str, str], ...] = ()  # (name, entry file text)


def read_table(path: str) -> Table:
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
    return Table(True, facts.read_text(os.path.join(path, "status")).strip(), tuple(entries))


def describe_drift(before: Table, after: Table, path: str) -> list[str]:
    """What moved between two fingerprints, in an operator's words."""
    if before.mounted and not after.mounted:
        return [f"binfmt_misc was unmounted from {path}"]
    if not before.mounted and after.mounted:
        return [f"binfmt_misc was mounted on {path}"]
    changes = []
    if before.status != after.status:
        changes.append(f"binfmt_misc was {after.status or 'made unreadable'} as a whole")
    old, new = dict(before.entries), dict(after.entries)
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            changes.append(f"{name} was removed")
        elif name not in old:
            changes.append(f"{name} was added")
        elif old[name] != new[name]:
            was_enabled, is_enabled = (text.startswith("enabled") for text in (old[name], new[name]))
            what = "changed" if was_enabled == is_enabled else "re-enabled" if is_enabled else "disabled"
            changes.append(f"{name} was {what}")
    return changes


# -- boot detection ------------------------------------------------------------------------------

def note_boot(state_dir: str) -> tuple[str, str | None]:
    """This boot's id and the one the last start stored (None: never started here), storing
    this one atomically for the next start."""
    boot = facts.read_text(BOOT_ID).strip()
    path = os.path.join(state_dir, BOOT_ID_FILE)
    previous = facts.read_text(path).strip() or None
    if boot and boot != previous:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(boot + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
    """The loop's state: the settings in force, the fingerprint after the last apply, the retry
    schedule and what was last logged and told systemd."""

    def __init__(self, settings: Config, path: str, state_dir: str, log: Log, notify: Notifier,
                 environ=None):
        self.settings, self.path, self.state_dir, self.log, self.notify = settings, path, state_dir, log, notify
        self.watchdog = watchdog_period(environ if environ is not None else os.environ)
        self.baseline = Table(False)
        self.retry_delay = 0.0
        self.retry_at: float | None = None
        self.reported: set[tuple[int, str]] = set()  # the problems the last apply logged
        self.repairs = 0
        self.metrics_written = 0.0  # monotonic time of the last textfile write
        self.status = ""
        self.ready = False  # STATUS= goes out with READY=1 first

    def apply(self, why: str) -> int | None:
        """Apply the config in force and take the new fingerprint; an exit code if the host
        cannot do it at all. Problems are logged when they appear, not on every retry."""
        started = time.monotonic()
        try:
            # a short lock wait: a long one would starve the watchdog pings
            report = commands.apply(config=self.settings, binfmt_misc=self.path, state_dir=self.state_dir,
                                    lock_timeout=LOCK_TIMEOUT)
        except HostUnsupported as exc:
            self.log(ERR, str(exc))
            return exc.exit_code
        except (BinfmtdError, OSError) as exc:  # lock held too long, state unwritable, ...: retry
            self.baseline = read_table(self.path)
            self._report({(ERR, str(exc))})
            self._schedule_retry()
            self._set_status(f"apply failed, retry in {self.retry_delay:g}s: {exc}")
            return None
        self.baseline = read_table(self.path)
        elapsed = (time.monotonic() - started) * 1000
        changed = [r for r in report.results if r["action"] not in ("unchanged", "skipped")]
        for r in changed:
            self.log(NOTICE, f"{r['name']} {r['action']} ({r['reason']})")
        if report.changed:
            if why == "repair":
                self.repairs += 1
            self.log(NOTICE, f"{why}: {len(changed)} entr{'y' if len(changed) == 1 else 'ies'} "
                             f"changed in {elapsed:.0f} ms" if changed else
                             f"{why}: mounted binfmt_misc on {self.path} in {elapsed:.0f} ms")
        elif why != "start":
            self.log(INFO, f"{why}: nothing to change")
        problems = {(WARNING, w) for w in report.warnings} | {(ERR, e["message"]) for e in report.errors}
        if self.baseline.mounted and self.baseline.status == "disabled":
            problems.add((WARNING, f"binfmt_misc is disabled as a whole on {self.path}, so no entry is used; "
                                   f"`echo 1 > {self.path}/status` turns it back on (apply does not)"))
        textfile = self.settings.daemon_textfile
        if textfile:
            problems |= self._write_metrics(textfile)
        self._report(problems)
        kept = [r["name"] for r in report.results if r["action"] in ("registered", "replaced", "unchanged")]
        if report.errors:
            self._schedule_retry()
            self._set_status(f"keeping {len(kept)} entries; {len(report.errors)} failing, "
                             f"retry in {self.retry_delay:g}s (SIGHUP retries now)")
        else:
            self.retry_delay, self.retry_at = 0.0, None
            self._set_status(f"keeping {len(kept)} entries ({', '.join(kept) or 'none'})"
                             + (f"; {self.repairs} drifts repaired" if self.repairs else ""))
        return None

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
        """SIGHUP: a good config is applied at once; a broken one is logged and changes nothing."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            settings = load_settings(config_file)
        except UsageError as exc:
            self.log(ERR, f"reload: {exc}; keeping the config in force ({describe_config(self.settings)})")
            self.status = f"{self.status}; last reload failed: {exc}"  # shown until the next change
            self.notify("READY=1", f"STATUS={self.status}")
            return None
        self.settings = settings
        self.log(INFO, f"reload: config {describe_config(settings)}, checking every {settings.daemon_interval:g}s")
        self.reported = set()
        code = self.apply("reload")
        self.notify("READY=1", f"STATUS={self.status}")
        return code

    def tick(self) -> int | None:
        """The idle path: one fingerprint read; an apply only if the table moved."""
        table = read_table(self.path)
        if table == self.baseline:
            self.mark_ready()
            textfile = self.settings.daemon_textfile
            if textfile and time.monotonic() - self.metrics_written >= METRICS_REFRESH:
                self._report(self.reported | self._write_metrics(textfile))
            return None
        self.log(NOTICE, "drift: " + "; ".join(describe_drift(self.baseline, table, self.path)))
        code = self.apply("repair")
        self.mark_ready()
        return code

    def mark_ready(self) -> None:
        """Touch <state>/daemon.ready while the host is as configured: a readiness signal for
        probes that cannot speak sd_notify (a Kubernetes DaemonSet's); stale means not keeping up."""
        if self.retry_at is not None:
            return
        path = os.path.join(self.state_dir, READY_FILE)
        try:
            os.utime(path)
        except FileNotFoundError:
            try:
                with open(path, "w"):
                    pass
            except OSError:
                pass
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
            daemon = Daemon(settings, path, state_dir, log, notify)
            log(INFO, f"started: config {describe_config(settings)}, binfmt_misc {path}, state {state_dir}, "
                      f"checking every {settings.daemon_interval:g}s"
                      + (f", watchdog ping every {daemon.watchdog:g}s" if daemon.watchdog else ""))
            return daemon.run(config_file, signals)
    finally:
        notify("STOPPING=1")
        notify.close()
