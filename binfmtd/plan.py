"""Plan: desired state against the facts gives one action per target. Pure: no I/O, so a dry
run (--check) is the same computation as the real one and always truthful."""

from __future__ import annotations

from enum import StrEnum

from binfmtd.entry import Entry, normalize_flags, parse_register_line
from binfmtd.facts.host import Host
from binfmtd.image import registered_by_image
from binfmtd.facts.interpreters import Interpreter, describe_version, same_file
from binfmtd.records import dataclass, field, replace
from binfmtd.state.ledger import State
from binfmtd.targets import Target

class Kind(StrEnum):
    """What an action does to its target's entry (the `action` of apply's and remove's JSON)."""

    REGISTERED = "registered"
    REPLACED = "replaced"
    REMOVED = "removed"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"


REGISTERED, REPLACED, REMOVED, UNCHANGED, SKIPPED = Kind


@dataclass(frozen=True)
class Desired:
    targets: tuple[Target, ...]
    flags: str
    explicit: bool = False  # targets named by the user: a missing interpreter is then an error
    force: bool = False
    # entry names the caller knows were binfmtd's until someone changed them (the daemon saw its
    # own entry a tick ago): replaced like binfmtd's own, although the state's record differs
    reclaim: frozenset[str] = frozenset()
    flags_chosen: bool = False  # flags from --flags or the config, not the default


@dataclass(frozen=True)
class Action:
    target: Target
    action: Kind
    reason: str
    interpreter: str | None = None
    flags: str = ""
    new: Entry | None = None  # to register
    old: Entry | None = None  # to remove first
    restore: Entry | None = None  # a foreign entry to put back after removing ours
    take_over: Entry | None = None  # a foreign entry --force replaces: remembered for restore
    error: str | None = None  # planned failure (always SKIPPED): nothing is done for this target
    forget: bool = False  # no entry in the kernel: drop binfmtd's record of it (remove)
    pin: dict | None = None  # the emulator file `new` makes the kernel open (recorded once registered)

    @property
    def changes(self) -> bool:
        return self.action not in (UNCHANGED, SKIPPED)


@dataclass
class Plan:
    actions: list[Action]
    mount: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.mount or any(a.changes for a in self.actions)


def shadowing_entries(target: Target, host: Host) -> list[Entry]:
    """Entries under other names that claim this target's binaries. The kernel tries the newest
    registration first, so such an entry can take binaries away from binfmtd's."""
    return [e for e in host.binfmt_misc.entries
            if e.name != target.entry_name and e.claims(target.magic)]


def plan_apply(desired: Desired, host: Host, interpreters: dict[str, Interpreter], state: State,
               restore_problem=lambda entry: None) -> Plan:
    """`restore_problem` as for plan_remove: an entry binfmtd removes may have taken one over."""
    flags = normalize_flags(desired.flags)
    plan = Plan([], mount=not host.binfmt_misc.mounted)
    for target in desired.targets:
        action = _plan_target(target, flags, desired, host, interpreters.get(target.qemu, Interpreter(None)), state)
        if action.action == REMOVED:
            action = _put_back_taken_over(action, state, restore_problem)
        plan.actions.append(action)
    # The default's C is a surprise worth one warning when binfmtd first registers an entry with
    # it; the operator who chose the flags, and every later run, need not read it again.
    first_default = not desired.flags_chosen and any(
        a.action == REGISTERED and a.target.entry_name not in state.entries for a in plan.actions)
    plan.warnings += _flag_warnings(flags, host, any(a.changes for a in plan.actions), first_default)
    plan.warnings += _table_warnings(host)
    for action in plan.actions:
        if action.action == SKIPPED and action.target.name in host.native:
            continue
        for other in shadowing_entries(action.target, host):
            plan.warnings.append(f"{action.target.entry_name}: entry {other.name!r} (not binfmtd's) also claims "
                                 f"{action.target.name} binaries; whichever was registered last wins")
    return plan


def target_entry(target: Target, interpreter: Interpreter, flags: str) -> Entry:
    """The entry binfmtd registers for `target`, handing its binaries to `interpreter`."""
    return Entry(target.entry_name, interpreter.resolved, flags, 0, target.magic, target.mask)


def native_reason(target: Target, machine: str) -> str:
    return f"native: this {machine} host runs {target.name} binaries itself"


def no_interpreter_reason(target: Target, interpreter: Interpreter) -> str:
    reason = f"no interpreter: {interpreter.problem}; {interpreter.fix}"
    if target.removed_in:  # say so, or the sysadmin goes looking for a package that cannot exist
        reason += f" (QEMU {target.removed_in} and later have no {target.name} emulator)"
    return reason


def interpreter_refused(target: Target, interpreter: Interpreter) -> str:
    return f"{target.entry_name}: interpreter {interpreter.described}; {interpreter.fix}"


def _plan_target(target: Target, flags: str, desired: Desired, host: Host,
                 interpreter: Interpreter, state: State) -> Action:
    name = target.entry_name
    current = host.binfmt_misc.entry(name)
    if target.name in host.native:
        return Action(target, SKIPPED, native_reason(target, host.machine), flags=flags)
    # The interpreter's verdict is interpreters.read_interpreter's alone (check shows the same).
    if interpreter.path is None:
        return _no_interpreter(target, flags, desired, host, interpreter, state)
    path = interpreter.resolved or interpreter.path
    if interpreter.problem:
        return Action(target, SKIPPED, f"interpreter refused: {interpreter.described}", path, flags,
                      error=interpreter_refused(target, interpreter))
    new = target_entry(target, interpreter, flags)
    if problem := new.problem(host.kernel.magic_size_limit):
        return Action(target, SKIPPED, problem, path, flags, error=problem)
    if current is None:
        return Action(target, REGISTERED, "not registered", path, flags, new=new, pin=interpreter.identity)
    ours = state.owns(current) or name in desired.reclaim
    if current.same_registration(new) and current.enabled:
        return _same_registration(target, new, current, ours, interpreter, state)
    if not ours and not desired.force:
        return Action(target, SKIPPED, f"entry {name} was registered by another tool ({current.interpreter}, "
                      f"flags {current.flags or '-'}{', disabled' if not current.enabled else ''}); pass --force "
                      "to take it over", path, flags)
    reason = "entry was disabled" if not current.enabled else "entry differs: " + ", ".join(_differences(current, new))
    if not ours:
        reason += "; taken over from another tool (--force), kept for restore on remove"
    return Action(target, REPLACED, reason, path, flags, new=new, old=current,
                  take_over=None if ours else current, pin=interpreter.identity)


def _no_interpreter(target: Target, flags: str, desired: Desired, host: Host, interpreter: Interpreter,
                    state: State) -> Action:
    current = host.binfmt_misc.entry(target.entry_name)
    vanished = current is not None and current.name in host.vanished
    # binfmtd's entry whose emulator is gone from disk; not one its image registered, whose
    # emulator only ever lived in the container (the kernel holds it with F)
    if vanished and state.owns(current) and not registered_by_image(current.interpreter):
        return _remove_vanished(target, current, state)
    reason = no_interpreter_reason(target, interpreter)
    if vanished and current.enabled and "F" in current.flags:
        reason += (f"; entry {current.name} (not binfmtd's) keeps running the emulator it pinned at registration, "
                   "removed from disk since")
    return Action(target, SKIPPED, reason, flags=flags, error=reason if desired.explicit else None)


def _same_registration(target: Target, new: Entry, current: Entry, ours: bool, interpreter: Interpreter,
                       state: State) -> Action:
    """The kernel has the entry as desired; binfmtd's own F entry may still pin an emulator file
    that was replaced on disk since (an upgrade): then it is registered again."""
    path, flags = interpreter.resolved or interpreter.path, new.flags
    pinned = state.pinned(current.name) if ours else None
    if pinned and "F" in current.flags and not same_file(pinned, interpreter.identity):
        reason = (f"pinned {describe_version(pinned)} (replaced on disk by "
                  f"{describe_version(interpreter.identity)}): re-registered to use it")
        return Action(target, REPLACED, reason, path, flags, new=new, old=current, pin=interpreter.identity)
    reason = "registered by binfmtd, as desired" if ours else "already registered as desired (by another tool)"
    return Action(target, UNCHANGED, reason, path, flags)


def _remove_vanished(target: Target, current: Entry, state: State) -> Action:
    """binfmtd's entry whose emulator is gone from disk (QEMU removed or a target dropped by
    an upgrade): removed, not left pinned to a deleted file (F) or pointing at nothing."""
    pinned = state.pinned(current.name)
    held = f"; it ran {describe_version(pinned)}, now deleted" if pinned and "F" in current.flags else ""
    return Action(target, REMOVED, f"emulator {current.interpreter} is gone from disk{held}: entry removed",
                  current.interpreter, current.flags, old=current)


def _put_back_taken_over(action: Action, state: State, restore_problem) -> Action:
    """A removal of binfmtd's entry puts back the entry --force had taken over, exactly as it was
    (enabled or not), unless `restore_problem` finds it unsafe now."""
    owned = state.entries.get(action.target.entry_name)
    if not (owned and owned.replaced):
        return action
    restore = replace(parse_register_line(owned.replaced), enabled=owned.replaced_enabled)
    if problem := restore_problem(restore):
        return replace(action, reason=action.reason + f"; the entry it had taken over is not put back: {problem}")
    return replace(action, restore=restore, reason=action.reason + "; the entry it had taken over is put back")


def _differences(current: Entry, new: Entry) -> list[str]:
    a, b = current.masked(), new.masked()
    diffs = [what for what, x, y in (("magic", a.magic, b.magic), ("mask", a.mask, b.mask),
                                     ("offset", a.offset, b.offset)) if x != y]
    if normalize_flags(a.flags) != normalize_flags(b.flags):
        diffs.append(f"flags {a.flags or '-'} -> {b.flags}")
    if a.interpreter != b.interpreter:
        diffs.append(f"interpreter {a.interpreter} -> {b.interpreter}")
    return diffs or ["interpreter"]


def _flag_warnings(flags: str, host: Host, changing: bool, first_default: bool) -> list[str]:
    warnings = []
    if changing and "F" not in flags:
        warnings.append("flags lack F: containers and chroots without QEMU inside cannot run foreign binaries")
    if first_default and "C" in flags:
        warnings.append("flag C: a setuid-root foreign binary runs QEMU as root, and QEMU obeys its caller's "
                        "QEMU_* environment (QEMU_LOG_FILENAME writes any file as root): whoever can run such a "
                        "binary can act as root; pass --flags POF unless setuid foreign binaries must work")
    if "P" in flags and not host.kernel.tells_qemu_about_p:
        warnings.append(f"flag P on kernel {host.kernel.release} (before 5.12): QEMU cannot detect it and must be "
                        "built to assume it (Debian's /usr/libexec/qemu-binfmt/*-binfmt-P wrappers), or argv breaks")
    table = host.binfmt_misc
    if table.private:
        warnings.append(f"the binfmt_misc mounted on {table.path} is this user namespace's own table (Linux 6.7+): "
                        "registrations do not reach the host")
    elif table.nested and table.mounted:
        warnings.append(f"this process is in a user namespace, but the binfmt_misc mounted on {table.path} is an "
                        "outer namespace's table (the host's): registrations reach it; mount binfmt_misc "
                        "there in this namespace (or use binfmtd sandbox) for a private one")
    return warnings


def _table_warnings(host: Host) -> list[str]:
    table = host.binfmt_misc
    if table.mounted and not table.enabled:
        return [f"binfmt_misc is disabled as a whole on {table.path}: the kernel uses no entry, binfmtd's "
                f"included; `echo 1 > {table.path}/status` turns it back on"]
    return []


def plan_remove(targets: tuple[Target, ...], host: Host, state: State, force: bool,
                restore_problem=lambda entry: None) -> Plan:
    """`restore_problem(entry)` says why an entry --force took over may not be put back (its
    interpreter is no longer safe), or None."""
    plan = Plan([])
    for target in targets:
        current = host.binfmt_misc.entry(target.entry_name)
        if current is None:
            plan.actions.append(Action(target, UNCHANGED, "not registered", forget=True))
        elif state.owns(current):
            removal = Action(target, REMOVED, "registered by binfmtd", current.interpreter, current.flags, old=current)
            plan.actions.append(_put_back_taken_over(removal, state, restore_problem))
        elif force:
            plan.actions.append(Action(target, REMOVED, "registered by another tool; removed because of --force",
                                       current.interpreter, current.flags, old=current))
        else:
            plan.actions.append(Action(target, SKIPPED, "registered by another tool; pass --force to remove it",
                                       current.interpreter, current.flags))
    return plan
