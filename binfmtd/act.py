"""Act: the one module that writes to binfmt_misc. Executes a plan under binfmtd's lock, target
by target: a failure is reported for its target and never stops or half-does another."""

from __future__ import annotations

import errno
import os

from binfmtd.entry import REGISTER_FILE, Entry, parse_register_line
from binfmtd.errors import BinfmtdError, HostUnsupported
from binfmtd.facts.host import Kernel, read_entry
from binfmtd.plan import REGISTERED, REMOVED, REPLACED, Action, Plan
from binfmtd.records import dataclass, field
from binfmtd.state.ledger import Intent, Owned, State, reconcile, save_state
from binfmtd.targets import BY_ENTRY_NAME

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


@dataclass
class Outcome:
    """The failures of a plan's execution, per target."""

    errors: list[tuple[str, str]] = field(default_factory=list)  # (target, message)


def mount_binfmt_misc(path: str) -> None:
    """Mount binfmt_misc at `path` as systemd does (nosuid, nodev, noexec). mount(2) loads the
    module by itself where it may; modprobe is the fallback where it did not (it needs
    CAP_SYS_MODULE, which binfmtd's units do not grant)."""
    err = _mount(path)
    if err == errno.ENODEV:  # the kernel does not know the filesystem
        import subprocess

        subprocess.run(["modprobe", "binfmt_misc"], capture_output=True)
        err = _mount(path)
        if err == errno.ENODEV:
            raise HostUnsupported("this kernel has no binfmt_misc (not built in, module not loadable); "
                                  "enable CONFIG_BINFMT_MISC or install the kernel's extra modules")
    if err == errno.EPERM:
        raise HostUnsupported(f"not permitted to mount binfmt_misc on {path}; run as root (in a container: "
                              "--privileged)")
    if err:
        raise HostUnsupported(f"cannot mount binfmt_misc on {path}: {os.strerror(err)}")


def _mount(path: str) -> int:
    """mount(2) of binfmt_misc on `path`: 0, or the errno."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"binfmt_misc", os.fsencode(path), b"binfmt_misc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        return ctypes.get_errno()
    return 0


def register(path: str, entry: Entry) -> None:
    _write(path, REGISTER_FILE, entry.register_line().encode())


def unregister(path: str, name: str) -> None:
    _write(path, name, b"-1")


def set_enabled(path: str, name: str, enabled: bool) -> None:
    _write(path, name, b"1" if enabled else b"0")


def _write(path: str, name: str, command: bytes) -> None:
    """One write to a binfmt_misc file: the kernel takes each write as one command."""
    fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, command)
    finally:
        os.close(fd)


def explain_register_error(exc: OSError, entry: Entry, kernel: Kernel) -> str:
    """What a refused register write means, and the fix (the kernel only says the errno)."""
    name, interpreter = entry.name, entry.interpreter
    code = exc.errno
    if code == errno.EINVAL:
        if "F" in entry.flags and not kernel.supports_fix_binary:
            return (f"{name}: kernel {kernel.release} refused the entry (EINVAL): it predates Linux 4.8 and has no "
                    "F flag; upgrade the kernel, or pass --flags POC (containers will not find the interpreter)")
        if problem := entry.problem(kernel.magic_size_limit):
            return f"{name}: kernel refused the entry (EINVAL): {problem}"
        return (f"{name}: kernel {kernel.release} refused the entry (EINVAL): it does not accept this register line "
                f"({entry.register_line()[:60]}...); check the flags and magic, or upgrade the kernel")
    if code == errno.EEXIST:
        return f"{name}: an entry of that name appeared meanwhile (another tool registered it); run apply again"
    if code == errno.ENOENT:
        return (f"{name}: the kernel cannot find interpreter {interpreter} (ENOENT; the F flag opens it at "
                "registration); install qemu-user-static or fix interpreter_dirs")
    if code == errno.EACCES:
        return (f"{name}: the kernel may not open interpreter {interpreter} (EACCES): check that it is executable "
                "and that its filesystem is not mounted noexec")
    if code == errno.EPERM:
        return f"{name}: not permitted to write binfmt_misc (EPERM); run as root"
    return f"{name}: kernel refused the entry: {exc.strerror or exc}"


def execute(plan: Plan, path: str, kernel: Kernel, state_dir: str, state: State) -> Outcome:
    """Carry out `plan` and record in `state` what binfmtd now owns. The caller holds the lock.
    Intent before action: every change is saved as an intent before the first kernel write, and
    what each change achieved is read back from the kernel afterwards, by the same reconcile that
    recovers from a crash, so the normal path and the recovery path are one."""
    outcome = Outcome()
    changes = [a for a in plan.actions if a.changes]
    for action in plan.actions:
        if action.error:
            outcome.errors.append((action.target.name, action.error))
        elif action.forget:
            state.entries.pop(action.target.entry_name, None)
    state.intents = {a.target.entry_name: _intent(a, state) for a in changes}
    if state.intents:
        save_state(state_dir, state)
    for action in changes:
        try:
            _execute_action(action, path, kernel)
        except BinfmtdError as exc:
            outcome.errors.append((action.target.name, str(exc)))
    outcome.errors += [(BY_ENTRY_NAME[name].name if name in BY_ENTRY_NAME else name, message)
                       for name, message in settle(path, state)]
    save_state(state_dir, state)
    return outcome


def recover(path: str, state_dir: str, state: State) -> list[str]:
    """Settle the intents an interrupted run left behind (kill -9, power loss) before planning."""
    if not state.intents:
        return []
    names = ", ".join(sorted(state.intents))
    errors = settle(path, state)
    save_state(state_dir, state)
    return [f"settled an interrupted run's changes to {names}"] + [message for _, message in errors]


def settle(path: str, state: State) -> list[tuple[str, str]]:
    """Reconcile `state`'s intents with the kernel and make the writes that finish the job:
    put back an entry whose change was cut in half, set an enabled state again."""
    errors = []
    for name, line, enabled in reconcile(state, lambda name: read_entry(path, name)):
        entry = parse_register_line(line)
        try:
            if read_entry(path, name) is None:
                register(path, entry)
            set_enabled(path, name, enabled)
        except OSError as exc:
            errors.append((name, f"{name}: could not put back {line} ({exc.strerror}); register it by hand"))
    return errors


def _intent(action: Action, state: State) -> Intent:
    old = action.old
    before, before_enabled = (old.register_line(), old.enabled) if old else (None, True)
    if action.action == REMOVED:
        restore = action.restore
        return Intent(before, before_enabled, restore.register_line() if restore else None,
                      restore.enabled if restore else True, None)
    previous = state.entries.get(action.target.entry_name)
    if action.take_over:
        replaced, replaced_enabled = action.take_over.register_line(), action.take_over.enabled
    elif action.action == REPLACED and previous:
        replaced, replaced_enabled = previous.replaced, previous.replaced_enabled
    else:
        replaced, replaced_enabled = None, True
    line = action.new.register_line()
    return Intent(before, before_enabled, line, True, Owned(line, replaced, replaced_enabled, action.pin))


def _execute_action(action: Action, path: str, kernel: Kernel) -> None:
    """The kernel writes of one action. A replacement the kernel refuses leaves the target empty
    for a moment; settle() then puts the previous entry back, as after a crash."""
    name = action.target.entry_name
    if action.action in (REPLACED, REMOVED):
        _unregister_or_explain(path, name)
    if action.action in (REGISTERED, REPLACED):
        _register_or_explain(path, action.new, kernel)
    elif action.restore:
        _register_or_explain(path, action.restore, kernel)
        if not action.restore.enabled:
            set_enabled(path, name, False)


def _register_or_explain(path: str, entry: Entry, kernel: Kernel) -> None:
    try:
        register(path, entry)
    except OSError as exc:
        raise BinfmtdError(explain_register_error(exc, entry, kernel)) from None


def _unregister_or_explain(path: str, name: str) -> None:
    try:
        unregister(path, name)
    except FileNotFoundError:
        pass  # already gone: the goal is reached
    except OSError as exc:
        raise BinfmtdError(f"{name}: cannot remove the entry ({exc.strerror}); run as root") from None
