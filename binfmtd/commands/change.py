"""apply and remove: each one shape (read the facts, plan, and unless --check act under the
lock), each returning a ChangeReport."""

from __future__ import annotations

import time

from binfmtd.act import execute, mount_binfmt_misc, recover
from binfmtd.config import (Settings, desired_targets, load_config, refuse_targets_with_all, resolve_paths,
                            resolve_targets, settings_from)
from binfmtd.entry import Entry
from binfmtd.errors import HostUnsupported, UsageError
from binfmtd.facts.host import Host, Kernel, read_entry, read_host, read_kernel
from binfmtd.facts.interpreters import Interpreter, add_versions, read_interpreter, safety_problem
from binfmtd.facts.native import read_native
from binfmtd.plan import REMOVED, Desired, Kind, Plan, plan_apply, plan_remove
from binfmtd.records import dataclass, field, plain
from binfmtd.report import Report
from binfmtd.state.files import locked
from binfmtd.state.ledger import State, load_state, reconcile
from binfmtd.targets import TARGETS, Target, lookup
from binfmtd.trust import read_user_fuse_mounts


@dataclass(frozen=True)
class ChangeResult:
    target: str
    platform: str | None
    name: str
    action: Kind
    reason: str
    interpreter: str | None
    flags: str


@dataclass(frozen=True)
class ChangeError:
    target: str | None  # None: the command as a whole
    message: str


@dataclass
class ChangeReport(Report):
    """The result of apply/remove, in the contract's shape."""

    check: bool
    results: list[ChangeResult]
    errors: list[ChangeError]
    changed: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_messages(self) -> list[str]:
        return [error.message for error in self.errors]

    def to_json(self) -> dict:  # in the contract's order (DESIGN.md)
        return {"ok": self.ok, "changed": self.changed, "check": self.check, "results": plain(self.results),
                "errors": plain(self.errors), "warnings": self.warnings}


def apply(names=(), all_targets=False, flags: str | None = None, force=False, check=False,
          config_file: str | None = None, binfmt_misc: str | None = None, state_dir: str | None = None,
          config=None, lock_timeout: float = 60.0, reclaim=()) -> ChangeReport:
    """`config` is a config already loaded (the daemon's, checked once); else `config_file`'s.
    `reclaim`: entry names to put back although they differ from the state's record (plan.Desired)."""
    refuse_targets_with_all(names, all_targets)
    settings = settings_from(config or load_config(config_file), flags, binfmt_misc, state_dir)
    resolve_targets(names)  # an unknown target fails before anything changes

    def plan_now(host: Host, state: State) -> Plan:
        targets, explicit = desired_targets(names, all_targets, settings.config, host.native)
        desired = Desired(targets, settings.flags, explicit, force, frozenset(reclaim), settings.flags_chosen)
        return plan_apply(desired, host, read_interpreters(targets, host, settings, state), state, restore_problem)

    path, state_dir = settings.binfmt_misc, settings.state_dir
    if check:
        plan = plan_now(read_host(path, read_native(state_dir, remember=False)[0]), settled_state(state_dir, path))
        if plan.mount:
            plan.warnings.insert(0, f"binfmt_misc is not mounted on {path}; apply would mount it")
        return _report(plan, True, [(a.target.name, a.error) for a in plan.actions if a.error], names)
    require_kernel(read_kernel())
    with locked(state_dir, lock_timeout):  # facts are read under the lock: a concurrent run may just have acted
        native = read_native(state_dir, remember=True)[0]
        host = read_host(path, native)
        mounted_now = not host.binfmt_misc.mounted
        if mounted_now:
            mount_binfmt_misc(path)
        state = load_state(state_dir)
        recovered = recover(path, state_dir, state)
        if mounted_now or recovered:  # the table changed since it was read
            host = read_host(path, native)
        plan = plan_now(host, state)
        plan.mount = mounted_now
        plan.warnings[:0] = recovered
        state.last_apply = time.time()
        outcome = execute(plan, path, host.kernel, state_dir, state)
    return _report(plan, False, outcome.errors, names)


def remove(names=(), all_targets=False, force=False, check=False, binfmt_misc: str | None = None,
           state_dir: str | None = None, lock_timeout: float = 60.0) -> ChangeReport:
    if not names and not all_targets:
        raise UsageError("name the targets to remove, or pass --all")
    refuse_targets_with_all(names, all_targets)
    path, state_dir = resolve_paths(binfmt_misc, state_dir)  # remove reads no config: it removes what is named
    targets = resolve_targets(names) if names else TARGETS

    def plan_now(host: Host, state: State) -> Plan:
        present = targets if names else tuple(t for t in targets if host.binfmt_misc.entry(t.entry_name))
        plan = plan_remove(present, host, state, force, restore_problem)  # --all: what is there, not every target
        from binfmtd.facts.processes import running_under  # dataclasses, psutil: off the boot path

        plan.warnings += running_under([a.old for a in plan.actions if a.action == REMOVED and a.old])
        return plan

    if check:
        return _report(plan_now(read_host(path), settled_state(state_dir, path)), True, [], names)
    require_kernel(read_kernel())
    with locked(state_dir, lock_timeout):
        state = load_state(state_dir)
        recovered = recover(path, state_dir, state)
        host = read_host(path)
        plan = plan_now(host, state)
        plan.warnings[:0] = recovered
        outcome = execute(plan, path, host.kernel, state_dir, state)
    return _report(plan, False, outcome.errors, names)


def require_kernel(kernel: Kernel) -> None:
    """The kernel binfmtd needs; root is required by the lock (state.files.open_state_dir)."""
    if not kernel.supports_fix_binary:
        raise HostUnsupported(f"kernel {kernel.release} is older than 4.8 and lacks binfmt_misc's F flag, "
                              "which containers need; upgrade the kernel")


def read_interpreters(targets, host: Host, settings: Settings, state: State | None = None) -> dict[str, Interpreter]:
    """Each non-native target's interpreter verdict. With `state`: the QEMU version too, where
    binfmtd may register (no entry yet, or binfmtd's own); a file the state already pinned costs
    no process (the boot path's no-op)."""
    pins, mounts = state.pins() if state is not None else (), read_user_fuse_mounts()  # once for all
    interpreters = {t.qemu: read_interpreter(t.qemu, settings.interpreter_dirs, pins, mounts)
                    for t in targets if t.name not in host.native}
    if state is not None:
        def wants_version(t: Target) -> bool:
            current = host.binfmt_misc.entry(t.entry_name)
            return current is None or state.owns(current)
        add_versions([interpreters[t.qemu].identity for t in targets if t.qemu in interpreters and wants_version(t)
                      and interpreters[t.qemu].problem is None], pins)
    return interpreters


def settled_state(state_dir: str, path: str) -> State:
    """The state as the next run will see it once an interrupted run's intents are settled
    (for read-only commands: nothing is written)."""
    state = load_state(state_dir)
    reconcile(state, lambda name: read_entry(path, name))
    return state


def restore_problem(entry: Entry) -> str | None:
    """An entry --force took over is put back only under the rules binfmtd registers by."""
    if problem := entry.problem():
        return problem
    if problem := safety_problem(entry.interpreter):
        return f"interpreter {entry.interpreter}: {problem}"
    return None


def named_platforms(names) -> dict[str, str]:
    """target -> the platform the user named for it (`apply linux/arm/v6` shows linux/arm/v6, not v7)."""
    named = {}
    for name in names:
        target = lookup(name)
        platform = name.lower() if name.lower().startswith("linux/") else f"linux/{name.lower()}"
        if target and platform in target.platforms:
            named.setdefault(target.name, platform)
    return named


def _report(plan: Plan, check: bool, errors: list[tuple[str, str]], names=()) -> ChangeReport:
    platforms = named_platforms(names)
    results = [ChangeResult(a.target.name, platforms.get(a.target.name, a.target.platform), a.target.entry_name,
                            a.action, a.error or a.reason, a.interpreter, a.flags) for a in plan.actions]
    return ChangeReport(check, results, [ChangeError(t, m) for t, m in errors], plan.changed, list(plan.warnings))
