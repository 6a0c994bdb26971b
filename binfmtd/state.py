"""What binfmtd registered, remembered across runs in $BINFMTD_STATE_DIR, and the lock that
serializes runs. A state that disagrees with the kernel (after a reboot, after another tool
acted) is normal: ownership is decided by comparing the two, never by the state alone."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from binfmtd.entry import Entry, parse_register_line
from binfmtd.errors import BinfmtdError

DEFAULT_STATE_DIR = "/var/lib/binfmtd"
STATE_FILE = "state.json"
LOCK_FILE = "lock"


def state_dir_from_env() -> str:
    return os.environ.get("BINFMTD_STATE_DIR") or DEFAULT_STATE_DIR


@dataclass
class Owned:
    line: str  # the register line binfmtd wrote
    replaced: str | None = None  # the foreign entry --force took over, to put back on remove
    pinned: dict | None = None  # the emulator file registered (interpreters.emulator_identity)


@dataclass
class State:
    entries: dict[str, Owned] = field(default_factory=dict)
    last_apply: float | None = None  # when an apply last ran to completion (for metrics)

    def owns(self, entry: Entry) -> bool:
        owned = self.entries.get(entry.name)
        return owned is not None and parse_register_line(owned.line).same_registration(entry)


def parse_state(text: str) -> State:
    data = json.loads(text)
    return State({name: Owned(item["line"], item.get("replaced"), item.get("pinned"))
                  for name, item in data.get("entries", {}).items()}, data.get("last_apply"))


def format_state(state: State) -> str:
    entries = {name: {"line": o.line, "replaced": o.replaced, **({"pinned": o.pinned} if o.pinned else {})}
               for name, o in sorted(state.entries.items())}
    return json.dumps({"version": 1, "last_apply": state.last_apply, "entries": entries}, indent=2) + "\n"


def load_state(state_dir: str) -> State:
    try:
        with open(os.path.join(state_dir, STATE_FILE)) as f:
            return parse_state(f.read())
    except FileNotFoundError:
        return State()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BinfmtdError(f"state file {os.path.join(state_dir, STATE_FILE)} is unreadable ({exc}); "
                           "move it aside and run apply again") from None


def save_state(state_dir: str, state: State) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path = os.path.join(state_dir, STATE_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(format_state(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def locked(state_dir: str, timeout: float = 60.0):
    """Hold binfmtd's lock: concurrent applies (boot unit, daemon, Ansible) run one at a time."""
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BinfmtdError(f"cannot use state directory {state_dir} ({exc.strerror}); "
                           "set BINFMTD_STATE_DIR to a directory root can write") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise BinfmtdError(f"another binfmtd holds {state_dir}/{LOCK_FILE} for more than "
                                       f"{timeout:.0f}s; wait for it or stop it") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
