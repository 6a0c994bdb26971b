"""The daemon's systemd side: journal-priority lines on stderr, sd_notify by hand, the watchdog
period, and the signals that wake the loop. Nothing here knows what binfmtd keeps."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

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


# -- signals: a self-pipe the loop sleeps on ---------------------------------------------------

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
