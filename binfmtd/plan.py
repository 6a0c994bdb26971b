"""Plan: desired state against the facts gives one action per target. Pure: no I/O, so a dry
run (--check) is the same computation as the real one and always truthful."""

from __future__ import annotations

from dataclasses import dataclass, field

from binfmtd.entry import Entry, normalize_flags, parse_register_line
from binfmtd.facts import Host
from binfmtd.interpreters import Interpreter
from binfmtd.state import State
from binfmtd.targets import Target

REGISTERED, REPLACED, REMOVED, UNCHANGED, SKIPPED = "registered", "replaced", "removed", "unchanged", "skipped"


@dataclass(frozen=True)
class Desired:
    targets: tuple[Target, ...]
    flags: str = "POCF"
    explicit: bool = False  # targets named by the user: a missing interpreter is then an error
    force: bool = False


@dataclass
class Action:
    target: Target
    action: str
    reason: str
    interpreter: str | None = None
    flags: str = ""
    new: Entry | None = None  # to register
    old: Entry | None = None  # to remove first
    restore: Entry | None = None  # a foreign entry to put back after removing ours
    take_over: Entry | None = None  # a foreign entry --force replaces: remembered for restore
    error: str | None = None  # planned failure: nothing is done for this target
    forget: bool = False  # no entry in the kernel: drop binfmtd's record of it (remove)

    @property
    def changes(self) -> bool:
        return self.error is None and self.action not in (UNCHANGED, SKIPPED)


@dataclass
class Plan:
    actions: list[Action]
    mount: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.mount or any(a.changes for a in self.actions)


def interpreter_problem(path: str, problem: str) -> str:
    """`/usr/bin/qemu-x is writable by group 'staff'`: a problem naming the file itself is not
    prefixed with its path again; one naming a directory or link on the way says whose it is."""
    if problem.startswith(path + " "):
        return problem
    return f"{path}: {problem}" if problem.startswith("/") else f"{path} {problem}"


def shadowing_entries(target: Target, host: Host) -> list[Entry]:
    """Entries under other names that claim this target's binaries. The kernel tries the newest
    registration first, so such an entry can take binaries away from binfmtd's."""
    return [e for e in host.binfmt_misc.entries
            if e.name != target.entry_name and e.claims(target.magic)]


def plan_apply(desired: Desired, host: Host, interpreters: dict[str, Interpreter], state: State) -> Plan:
    flags = normalize_flags(desired.flags)
    plan = Plan([], mount=not host.binfmt_misc.mounted)
    for target in desired.targets:
        plan.actions.append(_plan_target(target, flags, desired, host,
                                         interpreters.get(target.qemu, Interpreter(None)), state))
    plan.warnings += _flag_warnings(flags, host, any(a.changes for a in plan.actions))
    for action in plan.actions:
        if action.action == SKIPPED and action.target.name in host.native:
            continue
        interpreter = interpreters[action.target.qemu]
        if interpreter.path and not interpreter.static and "F" in flags:
            plan.warnings.append(f"{action.target.entry_name}: {interpreter.path} is dynamically linked: containers "
                                 "and chroots cannot load it; install qemu-user-static")
        for other in shadowing_entries(action.target, host):
            plan.warnings.append(f"{action.target.entry_name}: entry {other.name!r} (not binfmtd's) also claims "
                                 f"{action.target.name} binaries; whichever was registered last wins")
    return plan


def _plan_target(target: Target, flags: str, desired: Desired, host: Host,
                 interpreter: Interpreter, state: State) -> Action:
    name = target.entry_name
    current = host.binfmt_misc.entry(name)
    if target.name in host.native:
        return Action(target, SKIPPED, f"native: this {host.machine} host runs {target.name} binaries itself",
                      flags=flags)
    if interpreter.path is None:
        reason = (f"no interpreter: qemu-{target.qemu}-static not found; install qemu-user-static "
                  "or set interpreter_dirs")
        return Action(target, SKIPPED, reason, flags=flags, error=reason if desired.explicit else None)
    base = Action(target, UNCHANGED, "", interpreter.path, flags)
    if interpreter.problem:
        what = interpreter_problem(interpreter.path, interpreter.problem)
        base.action, base.reason = SKIPPED, f"unsafe interpreter: {what}"
        base.error = (f"{name}: interpreter {what}; fix its ownership and "
                      "permissions (root-owned, not group/other-writable) or set interpreter_dirs")
        return base
    new = Entry(name, interpreter.path, flags, 0, target.magic, target.mask)
    if problem := new.problem(host.kernel.magic_size_limit):
        base.action, base.reason, base.error = SKIPPED, problem, problem
        return base
    base.new = new
    if current is None:
        base.action, base.reason = REGISTERED, "not registered"
        return base
    ours = state.owns(current)
    if current.same_registration(new) and current.enabled:
        base.new = None
        base.reason = "registered by binfmtd, as desired" if ours else "already registered as desired (by another tool)"
        return base
    if not ours and not desired.force:
        base.action, base.new = SKIPPED, None
        base.reason = (f"entry {name} was registered by another tool ({current.interpreter}, flags "
                       f"{current.flags or '-'}{', disabled' if not current.enabled else ''}); pass --force to take it over")
        return base
    base.action, base.old = REPLACED, current
    if not current.enabled:
        base.reason = "entry was disabled"
    else:
        base.reason = "entry differs: " + ", ".join(_differences(current, new))
    if not ours:
        base.take_over = current
        base.reason += "; taken over from another tool (--force), kept for restore on remove"
    return base


def _differences(current: Entry, new: Entry) -> list[str]:
    a, b = current.masked(), new.masked()
    diffs = [what for what, x, y in (("magic", a.magic, b.magic), ("mask", a.mask, b.mask),
                                     ("offset", a.offset, b.offset)) if x != y]
    if normalize_flags(a.flags) != normalize_flags(b.flags):
        diffs.append(f"flags {a.flags or '-'} -> {b.flags}")
    if a.interpreter != b.interpreter:
        diffs.append(f"interpreter {a.interpreter} -> {b.interpreter}")
    return diffs or ["interpreter"]


def _flag_warnings(flags: str, host: Host, changing: bool) -> list[str]:
    warnings = []
    if "F" not in flags:
        warnings.append("flags lack F: containers and chroots without QEMU inside cannot run foreign binaries")
    if changing and "C" in flags:
        warnings.append("flag C: setuid foreign binaries run with their owner's rights (root for setuid-root "
                        "ones); pass --flags POF to turn that off")
    if "P" in flags and not host.kernel.tells_qemu_about_p:
        warnings.append(f"flag P on kernel {host.kernel.release} (before 5.12): QEMU cannot detect it and must be "
                        "built to assume it (Debian's /usr/libexec/qemu-binfmt/*-binfmt-P wrappers), or argv breaks")
    if host.binfmt_misc.private:
        warnings.append("this process is in a user namespace: the binfmt_misc table here is private to it "
                        "(Linux 6.7+), registrations do not reach the host")
    return warnings


def plan_remove(targets: tuple[Target, ...], host: Host, state: State, force: bool) -> Plan:
    plan = Plan([])
    for target in targets:
        current = host.binfmt_misc.entry(target.entry_name)
        if current is None:
            plan.actions.append(Action(target, UNCHANGED, "not registered", forget=True))
            continue
        action = Action(target, REMOVED, "", current.interpreter, current.flags, old=current)
        owned = state.entries.get(current.name)
        if state.owns(current):
            action.reason = "registered by binfmtd"
            if owned and owned.replaced:
                action.restore = parse_register_line(owned.replaced)
                action.reason += "; the entry it had taken over is put back"
        elif force:
            action.reason = "registered by another tool; removed because of --force"
        else:
            action.action, action.old = SKIPPED, None
            action.reason = "registered by another tool; pass --force to remove it"
        plan.actions.append(action)
    return plan
