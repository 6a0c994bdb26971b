"""check: can this host run binfmtd's plan? Host-wide checks (kernel, root, binfmt_misc, config),
then each target as apply's own planner sees it (one verdict on its interpreter, the same
errors), and the emulator its entry runs now. Each failed check says what is wrong and the fix."""

from __future__ import annotations

import os

from binfmtd.commands.change import read_interpreters, restore_problem, settled_state
from binfmtd.commands.status import read_emulators
from binfmtd.config import desired_targets, load_config, resolve_paths, settings_from
from binfmtd.errors import UsageError
from binfmtd.facts.host import Host, read_host
from binfmtd.facts.interpreters import qemu_version
from binfmtd.facts.native import read_native
from binfmtd.plan import Action, Desired, plan_apply
from binfmtd.records import dataclass, field
from binfmtd.report import Report
from binfmtd.state.ledger import State

NATIVE_HOW = {"probe": "measured by running probes with emulation impossible)",
              "family": "QEMU's CPU-family table; measuring needs Linux 6.7+)",
              "family-fallback": "QEMU's CPU-family table: the probes could not run in a user namespace here)"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None  # None when ok


@dataclass
class CheckReport(Report):
    checks: list[Check]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict:
        return {"ok": self.ok, **super().to_json()}


def check(names=(), config_file: str | None = None, binfmt_misc: str | None = None) -> CheckReport:
    path, state_dir = resolve_paths(binfmt_misc)
    native, how = read_native(state_dir, remember=False)
    host = read_host(path, native)
    checks = _host_checks(host, how)
    try:
        config = load_config(config_file)
        settings = settings_from(config, binfmt_misc=path, state_dir=state_dir)
        checks.append(Check("config", True, f"{config.path} is valid" if config else "no config file; defaults apply"))
    except UsageError as exc:
        config, settings = None, settings_from(None, binfmt_misc=path, state_dir=state_dir)
        checks.append(Check("config", False, str(exc), "correct the file as the message says"))
    targets, _ = desired_targets(names, False, config, host.native)
    # The plan apply would make for these targets, as if named (a missing interpreter is an error).
    state = settled_state(state_dir, path)
    interpreters = read_interpreters(targets, host, settings)
    plan = plan_apply(Desired(targets, settings.flags, explicit=True), host, interpreters, state, restore_problem)
    for action in plan.actions:
        checks += _target_checks(action, interpreters.get(action.target.qemu), host, state)
    return CheckReport(checks)


def _host_checks(host: Host, how: str) -> list[Check]:
    kernel, table, path = host.kernel, host.binfmt_misc, host.binfmt_misc.path
    checks = [
        Check("kernel", kernel.supports_fix_binary, f"Linux {kernel.release}: " + ", ".join(filter(None, [
            "F flag" if kernel.supports_fix_binary else "no F flag (needs 4.8)",
            f"{kernel.magic_size_limit}-byte magic limit",
            "binfmt_misc per user namespace" if kernel.binfmt_misc_per_userns else None])),
            None if kernel.supports_fix_binary else "upgrade to Linux 4.8 or newer"),
        Check("root", os.geteuid() == 0, f"running as uid {os.geteuid()}",
              None if os.geteuid() == 0 else "run binfmtd as root"),
        Check("binfmt_misc", table.supported, "supported by the kernel" if table.supported else
              "not in /proc/filesystems", None if table.supported else
              "load the module (modprobe binfmt_misc) or enable CONFIG_BINFMT_MISC"),
        Check("mount", table.supported, f"mounted on {path}" if table.mounted else
              f"not mounted on {path} (found {table.mount_type or 'nothing'}); apply mounts it",
              None if table.supported else "load binfmt_misc first"),
    ]
    if table.mounted:
        checks.append(Check("enabled", table.enabled, "binfmt_misc is enabled" if table.enabled else
                            "binfmt_misc is disabled", None if table.enabled else f"echo 1 > {path}/status"))
    checks.append(Check("native", True, f"this {host.machine} host runs {', '.join(host.native) or 'no target'} "
                        f"natively ({NATIVE_HOW[how]}"))
    checks.append(Check("table", True, "private to this user namespace (its own binfmt_misc instance): registrations "
                        "here do not reach the host" if table.private else "an outer user namespace's table (the "
                        "host's) is mounted here: registrations reach it" if table.nested and table.mounted
                        else "the host's table"))
    return checks


def _target_checks(action: Action, interpreter, host: Host, state: State) -> list[Check]:
    """The target's interpreter as the plan judged it, and the emulator its entry runs now."""
    target, name = action.target, f"interpreter:{action.target.name}"
    if target.name in host.native:
        return [Check(name, True, f"native on this {host.machine} host; no entry needed")]
    if interpreter.problem:
        checks = [Check(name, False, interpreter.described, interpreter.fix)]
    elif action.error:  # the interpreter is fine, the entry is not (a magic this kernel cannot take)
        checks = [Check(name, False, action.error, "upgrade the kernel or leave the target out")]
    else:
        version = qemu_version(interpreter.resolved)  # root alone controls it: safe to run
        checks = [Check(name, True, f"{interpreter.shown}, static, safe, QEMU {version or '?'}")]
    if (entry := host.binfmt_misc.entry(target.entry_name)) is not None:
        checks += _emulator_checks(target, entry, state)
    return checks


def _emulator_checks(target, entry, state: State) -> list[Check]:
    owned = state.owns(entry)
    emulator = read_emulators([entry], state)[entry.name]
    name = f"emulator:{target.name}"
    if emulator.drift:
        return [Check(name, False, f"{entry.name}: {emulator.note}", f"binfmtd apply {target.name}" if owned else
                      f"re-register {entry.name} with the tool that made it, or take it over: "
                      f"binfmtd apply --force {target.name}")]
    if emulator.pinned:
        return [Check(name, True, f"{entry.name} runs the file it pinned, still the one on disk "
                      f"({emulator.pinned['path']}, QEMU {emulator.pinned.get('version') or '?'})")]
    return []
