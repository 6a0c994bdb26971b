"""Running one probe, or one engine command, bounded by a timeout, and what came of it
(ProbeRun): exit status, output, time, when the answer came and, for the sandbox, which file the
kernel ran."""

from __future__ import annotations

import os
import select
import selectors
import subprocess
import threading
import time

from binfmtd.probes import parse_probe_output
from binfmtd.records import dataclass

EXEC_ERRNO = "binfmtd-exec-errno:"

# Runs inside the sandbox's namespaces: chroot into the probe's directory and execv it. Python's
# execv reports the kernel's own errno (a shell or execvp would turn ENOEXEC into ENOENT).
CHROOT_EXEC = (
    "import os, sys\n"
    "os.chroot(sys.argv[1]); os.chdir('/')\n"
    "try:\n"
    "    os.execv('/probe', ['/probe'])\n"
    "except OSError as exc:\n"
    f"    sys.stderr.write('{EXEC_ERRNO}%d\\n' % exc.errno); os._exit(127)\n"
)

CATCH_SECONDS = 5.0  # how long a probe may take to reach its first write before it is let go


@dataclass
class ProbeRun:
    returncode: int | None  # None: stopped, it did not finish in time
    stdout: str
    stderr: str
    seconds: float  # until it exited or was stopped
    answered: float | None = None  # when the probe's answer was on stdout; None if it never was
    ran: dict | None = None  # the file the kernel ran for the probe (/proc/PID/exe), where seen

    @property
    def exec_errno(self) -> int | None:
        for line in self.stderr.splitlines():
            if line.startswith(EXEC_ERRNO):
                return int(line[len(EXEC_ERRNO):])
        return None

    @property
    def succeeded(self) -> bool:
        """It exited 0, or it answered and only the engine's own work after that (a slow `--rm`
        cleanup) outlasted the timeout: the emulation worked."""
        return self.returncode == 0 or (self.returncode is None and self.answered is not None)

    def slow_engine(self, timeout: float) -> str | None:
        """What to say when the answer came in time but the engine took longer than the timeout."""
        if self.answered is None or self.seconds <= timeout:
            return None
        end = f"was still running after {self.seconds:.1f}s; binfmtd stopped waiting" if self.returncode is None \
            else f"took {self.seconds:.1f}s in all"
        return (f"the probe answered after {self.answered:.1f}s (emulation works) but the engine {end} "
                f"(over the {timeout:g}s timeout): the engine is slow, not the emulation")


def probe_answered(stdout: str) -> bool:
    return parse_probe_output(stdout) is not None


def line_answered(stdout: str) -> bool:  # `uname -m` in a user's image: one complete line
    return any(line.strip() for line in stdout.splitlines(keepends=True) if line.endswith("\n"))


def run_bounded(argv: list[str], timeout: float, stdin: bytes | None = None, answer=None) -> ProbeRun:
    """Run argv for at most `timeout` seconds. With `answer` (a test on the stdout so far), the
    timeout bounds the answer: once it is there, the engine gets another `timeout` to finish."""
    if answer is None:
        return _run_plain(argv, timeout, stdin)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err, answered, deadline = _read_until_answered(proc, start, timeout, answer)
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        returncode = None
    proc.stdout.close()
    proc.stderr.close()
    return ProbeRun(returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                    time.monotonic() - start, answered)


def _read_until_answered(proc: subprocess.Popen, start: float, timeout: float, answer):
    """Read proc's stdout and stderr for `timeout` seconds from `start`, or for `timeout` from the
    answer once `answer` sees it. (stdout, stderr, seconds until the answer or None, the deadline)."""
    out, err, answered = bytearray(), bytearray(), None
    deadline = start + timeout
    with selectors.DefaultSelector() as pipes:
        pipes.register(proc.stdout, selectors.EVENT_READ, out)
        pipes.register(proc.stderr, selectors.EVENT_READ, err)
        # Until both pipes close; a helper the engine left behind (conmon) may hold them open, so
        # also stop once the engine has exited and its pipes are drained (exit checked first:
        # what it wrote before exiting is then in the pipes for this select).
        while pipes.get_map() and time.monotonic() < deadline:
            exited = proc.poll() is not None
            ready = pipes.select(0 if exited else min(0.2, max(0.0, deadline - time.monotonic())))
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    pipes.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if answered is None and key.data is out and answer(out.decode(errors="replace")):
                    answered = time.monotonic() - start
                    deadline = time.monotonic() + timeout
            if exited and not ready:
                break
    return out, err, answered, deadline


def _run_plain(argv: list[str], timeout: float, stdin: bytes | None = None) -> ProbeRun:
    start = time.monotonic()
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return ProbeRun(None, (exc.stdout or b"").decode(errors="replace"),
                        (exc.stderr or b"").decode(errors="replace"), time.monotonic() - start)
    return ProbeRun(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"),
                    time.monotonic() - start)


def run_catching_exe(argv: list[str], timeout: float, launchers: set[str]) -> tuple[ProbeRun, int | None, str]:
    """Run the sandbox's probe with its stdout a full pipe, so it stops at its first write; meanwhile
    open /proc/PID/exe of the process (unshare's child once it no longer executes one of
    `launchers`): with binfmt_misc that is the interpreter the kernel ran, for an F entry the
    file pinned at registration, readable even when deleted from disk since. Then drain and
    collect. Returns the run, that file held open (or None) and its /proc path's text."""
    start = time.monotonic()
    deadline = start + timeout
    read_fd, write_fd, filled = _full_pipe()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=subprocess.PIPE)
    finally:
        os.close(write_fd)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    held, link, probe_pid = _hold_exe(proc, launchers, min(deadline, start + CATCH_SECONDS))
    out, timed_out = bytearray(), False
    try:
        timed_out = _drain(read_fd, deadline, out)
    finally:
        if timed_out:
            for pid in filter(None, (probe_pid, proc.pid)):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        os.close(read_fd)
        proc.wait()
        reader.join(5)
    run = ProbeRun(None if timed_out else proc.returncode, bytes(out[filled:]).decode(errors="replace"),
                   b"".join(errors).decode(errors="replace"), time.monotonic() - start)
    return run, held, link


def _full_pipe() -> tuple[int, int, int]:
    """A pipe filled to the last byte: a program given its write end as stdout blocks in its
    first write until the reader drains it. (read end, write end, bytes of filler)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_fd, False)
    filled = 0
    for chunk in (b"\0" * 65536, b"\0"):  # big writes, then single bytes for the last page's room
        try:
            while True:
                filled += os.write(write_fd, chunk)
        except BlockingIOError:
            pass
    os.set_blocking(write_fd, True)  # the probe must block, not get EAGAIN
    return read_fd, write_fd, filled


def _hold_exe(proc: subprocess.Popen, launchers: set[str], until: float) -> tuple[int | None, str, int | None]:
    """Open /proc/PID/exe of proc's child once it executes something other than `launchers`, trying
    until `until`. (that file held open or None, the link's text, the child's pid or None)."""
    while proc.poll() is None and time.monotonic() < until:
        try:
            found = _child_exe(proc.pid)
        except OSError:
            break  # not visible here: the probe just runs, unobserved
        if found and found[1] not in launchers:
            probe_pid, link = found
            try:
                return os.open(f"/proc/{probe_pid}/exe", os.O_RDONLY | os.O_CLOEXEC), link, probe_pid
            except OSError:
                return None, link, probe_pid  # exited meanwhile: nothing to hold
        time.sleep(0.001)
    return None, "", None


def _child_exe(pid: int) -> tuple[int, str] | None:
    """The first child of `pid` and what it executes now, or None; OSError where the kernel does
    not list children (CONFIG_PROC_CHILDREN) or hides them."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    if children:
        try:
            return int(children[0]), os.readlink(f"/proc/{children[0]}/exe")
        except FileNotFoundError:  # exited meanwhile
            return None
    return None


def _drain(read_fd: int, deadline: float, out: bytearray) -> bool:
    """Read `read_fd` into `out` until its end; whether `deadline` came first."""
    while True:
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        data = os.read(read_fd, 65536)
        if not data:
            return False
        out += data
