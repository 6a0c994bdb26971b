"""The state directory's files: their names, the one safe way to read and write them, and the
lock that serializes runs. Every file binfmtd keeps in $BINFMTD_STATE_DIR is named here and read
or written only through this module's functions (binfmtd.state.ledger keeps state.json through
them); nothing else opens a path in the state directory."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from contextlib import contextmanager

from binfmtd.errors import BinfmtdError, HostUnsupported
from binfmtd.trust import UntrustedPath, resolve_trusted

DEFAULT_STATE_DIR = "/var/lib/binfmtd"
# Every file in the state directory, named here only.
STATE_FILE = "state.json"  # what binfmtd owns, and the intents of a run in progress
LOCK_FILE = "lock"  # serializes runs
NATIVE_FILE = "native.json"  # the native targets measured this boot (binfmtd.facts.native)
VERIFY_FILE = "verify.json"  # the last verify's results, for the metrics
BOOT_FILE = "boot_id"  # the boot the daemon last started in: a restart is not a reboot
READY_FILE = "daemon.ready"  # rewritten while the daemon keeps the host as configured
MAX_FILE_SIZE = 1 << 20  # every file binfmtd reads back is small; a bigger one is not ours


def state_dir_from_env() -> str:
    return os.environ.get("BINFMTD_STATE_DIR") or DEFAULT_STATE_DIR


def read_small(path: str, limit: int = MAX_FILE_SIZE) -> bytes | None:
    """A small regular file's bytes, or None when it does not exist. Never follows a link at the
    last component, never blocks on a FIFO, never reads more than `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BinfmtdError(f"{path} is a symbolic link; binfmtd only reads its own regular files: "
                               "remove the link") from None
        raise BinfmtdError(f"cannot read {path} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BinfmtdError(f"{path} is not a regular file; remove it")
        if st.st_size > limit:
            raise BinfmtdError(f"{path} is {st.st_size} bytes, more than binfmtd's {limit}; it is not binfmtd's: "
                               "move it aside")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise BinfmtdError(f"{path} is more than {limit} bytes; it is not binfmtd's: move it aside")
        return data
    finally:
        os.close(fd)


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Replace `path` with `text` so that a reader or a crash sees the old file or the new one,
    never half of one, and never through a name someone else planted: the new file is created
    exclusively (O_EXCL, so never through a link) under a random name in the same directory,
    synced, then renamed over `path` (tempfile.mkstemp's method, without its import cost)."""
    directory = os.path.dirname(path) or "."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}")
        try:
            fd = os.open(temporary, flags, 0o600)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    """The rename is durable only once the directory is (power loss, not just kill -9)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_state_dir(state_dir: str) -> str:
    """Create the state directory if needed and refuse it unless root alone controls it: a user
    who can write there could forge what root registers, removes or restores."""
    if os.geteuid() != 0:  # only root changes binfmt_misc, and only root may own its records
        raise HostUnsupported("binfmt_misc can only be changed by root; run it as root")
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise HostUnsupported(f"cannot create state directory {state_dir} ({exc.strerror}); "
                              "set BINFMTD_STATE_DIR to a directory root can write") from None
    try:
        resolve_trusted(state_dir, sticky_above=True)
    except UntrustedPath as exc:
        raise HostUnsupported(f"state directory {state_dir} is not safe: {exc.reason}; "
                              f"{exc.fix or 'make its path root-only'}, or set BINFMTD_STATE_DIR") from None
    return state_dir


def read_record(state_dir: str, name: str) -> object | None:
    """A small JSON file of the state directory, or None when it is missing or not valid JSON:
    these are caches and records that a later run rebuilds; the caller checks the shape."""
    try:
        return json.loads(read_small(os.path.join(state_dir, name)) or b"null")
    except (BinfmtdError, ValueError):
        return None


def write_record(state_dir: str, name: str, text: str) -> None:
    write_atomic(os.path.join(state_dir, name), text)


def touch_record(state_dir: str, name: str) -> None:
    """Set a file's time to now (a heartbeat), creating it when missing; a link planted at the
    name is touched itself, never followed (utimensat with AT_SYMLINK_NOFOLLOW)."""
    try:
        os.utime(os.path.join(state_dir, name), follow_symlinks=False)
    except FileNotFoundError:
        write_record(state_dir, name, "")



@contextmanager
def locked(state_dir: str, timeout: float = 60.0):
    """Hold binfmtd's lock: concurrent applies (boot unit, daemon, Ansible) run one at a time.
    The state directory is checked first: the lock is the first file root opens in it."""
    open_state_dir(state_dir)
    path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        fix = ("remove the link: binfmtd makes it a plain file" if exc.errno == errno.ELOOP else
               "binfmtd needs its state directory writable (or set BINFMTD_STATE_DIR)")
        raise HostUnsupported(f"cannot open {path} ({exc.strerror}); {fix}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HostUnsupported(f"{path} is not a regular file; remove it")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise BinfmtdError(f"another binfmtd holds {path} for more than "
                                       f"{timeout:.0f}s; wait for it or stop it") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
