"""Act: the one module that writes to binfmt_misc. Executes a plan under binfmtd's lock, target
by target: a failure is reported for its target and never stops or half-does another."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from binfmtd.entry import Entry
from binfmtd.errors import BinfmtdError, HostUnsupported
from binfmtd.facts import Kernel
from binfmtd.plan import REGISTERED, REMOVED, REPLACED, Action, Plan
from binfmtd.state import Owned, State

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


@dataclass
class Outcome:
    """What happened to each target: the plan's actions, with failures turned into errors."""

    actions: list[Action]
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
    fd = os.open(os.path.join(path, "register"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, entry.register_line().encode())
    finally:
        os.close(fd)


def unregister(path: str, name: str) -> None:
    fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"-1")
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


def execute(plan: Plan, path: str, kernel: Kernel, state: State) -> Outcome:
    """Carry out `plan`, updating `state` with what binfmtd now owns. The caller holds the lock."""
    outcome = Outcome(plan.actions)
    for action in plan.actions:
        if action.error:
            outcome.errors.append((action.target.name, action.error))
            continue
        if not action.changes:
            if action.forget:
                state.entries.pop(action.target.entry_name, None)
            continue
        try:
            _execute_action(action, path, kernel, state)
            if action.pin and action.new:  # the file the kernel opened for it: later drift is measured against it
                state.entries[action.target.entry_name].pinned = action.pin
        except BinfmtdError as exc:
            action.error = str(exc)
            outcome.errors.append((action.target.name, str(exc)))
    return outcome


def _execute_action(action: Action, path: str, kernel: Kernel, state: State) -> None:
    name = action.target.entry_name
    if action.action == REGISTERED:
        _register_or_explain(path, action.new, kernel)
        state.entries[name] = Owned(action.new.register_line())
    elif action.action == REPLACED:
        previous = state.entries.get(name)
        _unregister_or_explain(path, name)
        try:
            _register_or_explain(path, action.new, kernel)
        except BinfmtdError as exc:
            try:  # put the old entry back: a refused replacement must not leave the target empty
                register(path, action.old)
                raise BinfmtdError(f"{exc}; the previous entry was restored") from None
            except OSError as restore_exc:
                raise BinfmtdError(f"{exc}; restoring the previous entry also failed "
                                   f"({restore_exc.strerror}), so {name} is now unregistered") from None
        replaced = action.take_over.register_line() if action.take_over else (previous and previous.replaced)
        state.entries[name] = Owned(action.new.register_line(), replaced)
    elif action.action == REMOVED:
        _unregister_or_explain(path, name)
        state.entries.pop(name, None)
        if action.restore:
            _register_or_explain(path, action.restore, kernel)


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
