"""The public commands as functions returning result values: the CLI, the daemon and the
Ansible module are thin clients of these. Each change command has one shape: read the facts,
plan, and (unless check) act under the lock."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from binfmtd import facts
from binfmtd.config import Config, load_config
from binfmtd.entry import Entry, flags_problem, normalize_flags
from binfmtd.errors import BinfmtdError, HostUnsupported, UsageError
from binfmtd.interpreters import DEFAULT_INTERPRETER_DIRS, Interpreter, read_interpreter
from binfmtd.native import read_native
from binfmtd.plan import Desired, Plan, interpreter_problem, plan_apply, plan_remove
from binfmtd.state import State, load_state, locked, save_state, state_dir_from_env
from binfmtd.targets import TARGETS, Target, lookup

DEFAULT_FLAGS = "POCF"


@dataclass
class ChangeReport:
    """The result of apply/remove, in the contract's shape."""

    check: bool
    results: list[dict]
    errors: list[dict]
    changed: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "changed": self.changed, "check": self.check,
                "results": self.results, "errors": self.errors}


def resolve_targets(names: list[str] | tuple[str, ...]) -> tuple[Target, ...]:
    """Targets from target names or platforms, in the table's order, without duplicates."""
    chosen, unknown = set(), []
    for name in names:
        if name.lower() == "all":
            chosen.update(t.name for t in TARGETS)
        elif target := lookup(name):
            chosen.add(target.name)
        else:
            unknown.append(name)
    if unknown:
        raise UsageError(f"unknown target or platform {', '.join(map(repr, unknown))}; "
                         "`binfmtd targets` lists them (e.g. aarch64 or linux/arm64)")
    return tuple(t for t in TARGETS if t.name in chosen)


def desired_targets(names, all_targets: bool, config: Config | None,
                    native: tuple[str, ...]) -> tuple[tuple[Target, ...], bool]:
    """Which targets a command is about, and whether the user named them: arguments, else
    `--all`, else the config's targets, else every target this host cannot run natively."""
    if names:
        return resolve_targets(names), True
    if all_targets:
        return TARGETS, False
    if config and config.targets is not None:
        return resolve_targets(config.targets), False
    return tuple(t for t in TARGETS if t.name not in native), False


def _paths(binfmt_misc: str | None, state_dir: str | None) -> tuple[str, str]:
    return binfmt_misc or facts.DEFAULT_BINFMT_MISC, state_dir or state_dir_from_env()


def _require_root_and_kernel(kernel: facts.Kernel) -> None:
    if not kernel.supports_fix_binary:
        raise HostUnsupported(f"kernel {kernel.release} is older than 4.8 and lacks binfmt_misc's F flag, "
                              "which containers need; upgrade the kernel")
    if os.geteuid() != 0:
        raise HostUnsupported("binfmt_misc can only be changed by root; run it as root")


def _read_interpreters(targets, native, dirs) -> dict[str, Interpreter]:
    return {t.qemu: read_interpreter(t.qemu, dirs) for t in targets if t.name not in native}


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
    results = [{"target": a.target.name, "platform": platforms.get(a.target.name, a.target.platform),
                "name": a.target.entry_name,
                "action": "skipped" if a.error else a.action, "reason": a.error or a.reason,
                "interpreter": a.interpreter, "flags": a.flags} for a in plan.actions]
    return ChangeReport(check, results, [{"target": t, "message": m} for t, m in errors],
                        plan.changed, list(plan.warnings))


def apply(names=(), all_targets=False, flags: str | None = None, force=False, check=False,
          config_file: str | None = None, binfmt_misc: str | None = None, state_dir: str | None = None,
          config: Config | None = None, lock_timeout: float = 60.0) -> ChangeReport:
    """`config` is a config already loaded (the daemon's, checked once); else `config_file`'s."""
    config = config or load_config(config_file)
    flags = flags if flags is not None else (config and config.flags) or DEFAULT_FLAGS
    if problem := flags_problem(flags):
        raise UsageError(f"--flags: {problem}")
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    path, state_dir = _paths(binfmt_misc, state_dir)

    resolve_targets(names)  # an unknown target fails before anything changes

    def plan_now(host: facts.Host, state: State) -> Plan:
        targets, explicit = desired_targets(names, all_targets, config, host.native)
        desired = Desired(targets, normalize_flags(flags), explicit, force)
        return plan_apply(desired, host, _read_interpreters(targets, host.native, dirs), state)

    if check:
        host = facts.read_host(path, read_native(state_dir, remember=False)[0])
        plan = plan_now(host, load_state(state_dir))
        if plan.mount:
            plan.warnings.insert(0, f"binfmt_misc is not mounted on {path}; apply would mount it")
        return _report(plan, True, [(a.target.name, a.error) for a in plan.actions if a.error], names)
    _require_root_and_kernel(facts.read_kernel())
    from binfmtd.act import execute, mount_binfmt_misc

    with locked(state_dir, lock_timeout):  # facts are read under the lock: a concurrent run may just have acted
        native = read_native(state_dir, remember=True)[0]
        host = facts.read_host(path, native)
        mounted_now = not host.binfmt_misc.mounted
        if mounted_now:
            mount_binfmt_misc(path)
            host = facts.read_host(path, native)
        state = load_state(state_dir)
        plan = plan_now(host, state)
        plan.mount = mounted_now
        outcome = execute(plan, path, host.kernel, state)
        state.last_apply = time.time()
        save_state(state_dir, state)
    return _report(plan, False, outcome.errors, names)


def desired_entries(names=(), all_targets=False, flags: str | None = None,
                    config_file: str | None = None) -> tuple[list[Entry], list[str]]:
    """The entries `apply` would register on a host with an empty table (for export), and why
    each other target is left out."""
    config = load_config(config_file)
    flags = flags if flags is not None else (config and config.flags) or DEFAULT_FLAGS
    if problem := flags_problem(flags):
        raise UsageError(f"--flags: {problem}")
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    native = read_native(None, remember=False)[0]
    targets, explicit = desired_targets(names, all_targets, config, native)
    kernel = facts.read_kernel()
    empty = facts.Host(kernel, os.uname().machine,
                       facts.BinfmtMisc(facts.DEFAULT_BINFMT_MISC, True, True, "binfmt_misc", True), native)
    plan = plan_apply(Desired(targets, normalize_flags(flags), explicit, False), empty,
                      _read_interpreters(targets, native, dirs), State())
    errors = [a.error for a in plan.actions if a.error]
    if errors:
        raise BinfmtdError("; ".join(errors))
    return [a.new for a in plan.actions if a.new], [f"{a.target.name}: {a.reason}" for a in plan.actions if not a.new]


def remove(names=(), all_targets=False, force=False, check=False, config_file: str | None = None,
           binfmt_misc: str | None = None, state_dir: str | None = None) -> ChangeReport:
    if not names and not all_targets:
        raise UsageError("name the targets to remove, or pass --all")
    path, state_dir = _paths(binfmt_misc, state_dir)
    targets = resolve_targets(names) if names else TARGETS

    def present(host: facts.Host) -> tuple[Target, ...]:  # --all reports what is there, not every target
        return targets if names else tuple(t for t in targets if host.binfmt_misc.entry(t.entry_name))

    if check:
        host = facts.read_host(path)
        return _report(plan_remove(present(host), host, load_state(state_dir), force), True, [], names)
    _require_root_and_kernel(facts.read_kernel())
    from binfmtd.act import execute

    with locked(state_dir):
        host = facts.read_host(path)
        state = load_state(state_dir)
        plan = plan_remove(present(host), host, state, force)
        outcome = execute(plan, path, host.kernel, state)
        save_state(state_dir, state)
    return _report(plan, False, outcome.errors, names)


def status(binfmt_misc: str | None = None, state_dir: str | None = None) -> dict:
    path, state_dir = _paths(binfmt_misc, state_dir)
    table = facts.read_binfmt_misc(path)
    state = load_state(state_dir)
    entries = []
    for entry in table.entries:
        target = facts.target_of_entry(entry)
        entries.append({
            "name": entry.name, "enabled": entry.enabled, "interpreter": entry.interpreter,
            "flags": entry.flags, "offset": entry.offset, "magic": entry.magic.hex() or None,
            "mask": entry.mask.hex() or None, "target": target.name if target else None,
            "platform": target.platform if target else None,
            "owner": "binfmtd" if state.owns(entry) else "other",
        })
    return {"binfmt_misc": {"path": path, "mounted": table.mounted, "enabled": table.enabled,
                            "private": table.private},
            "entries": entries}


def check(names=(), config_file: str | None = None, binfmt_misc: str | None = None) -> dict:
    """Preflight: can this host run binfmtd's plan? Each check says what is wrong and the fix."""
    from binfmtd.interpreters import qemu_version

    checks: list[dict] = []

    def add(name: str, ok: bool, detail: str, fix: str | None = None) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail, "fix": None if ok else fix})

    path, state_dir = _paths(binfmt_misc, None)
    native, how = read_native(state_dir, remember=False)
    host = facts.read_host(path, native)
    kernel, table = host.kernel, host.binfmt_misc
    add("kernel", kernel.supports_fix_binary,
        f"Linux {kernel.release}: " + ", ".join(filter(None, [
            "F flag" if kernel.supports_fix_binary else "no F flag (needs 4.8)",
            f"{kernel.magic_size_limit}-byte magic limit",
            "binfmt_misc per user namespace" if kernel.binfmt_misc_per_userns else None])),
        "upgrade to Linux 4.8 or newer")
    add("root", os.geteuid() == 0, f"running as uid {os.geteuid()}", "run binfmtd as root")
    add("binfmt_misc", table.supported, "supported by the kernel" if table.supported else
        "not in /proc/filesystems", "load the module (modprobe binfmt_misc) or enable CONFIG_BINFMT_MISC")
    add("mount", table.supported, f"mounted on {path}" if table.mounted else
        f"not mounted on {path} (found {table.mount_type or 'nothing'}); apply mounts it",
        "load binfmt_misc first")
    if table.mounted:
        add("enabled", table.enabled, "binfmt_misc is enabled" if table.enabled else "binfmt_misc is disabled",
            f"echo 1 > {path}/status")
    add("native", True, f"this {host.machine} host runs {', '.join(native) or 'no target'} natively ("
        + {"probe": "measured by running probes with emulation impossible)",
           "family": "QEMU's CPU-family table; measuring needs Linux 6.7+)",
           "family-fallback": "QEMU's CPU-family table: the probes could not run in a user namespace here)"}[how])
    add("table", True, "private to this user namespace: registrations here do not reach the host"
        if table.private else "the host's table")
    try:
        config = load_config(config_file)
        add("config", True, f"{config.path} is valid" if config else "no config file; defaults apply")
    except UsageError as exc:
        config = None
        add("config", False, str(exc), "correct the file as the message says")
    targets, _ = desired_targets(names, False, config, host.native)
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    for target in targets:
        if target.name in host.native:
            add(f"interpreter:{target.name}", True, f"native on this {host.machine} host; no entry needed")
            continue
        interp = read_interpreter(target.qemu, dirs)
        if interp.path is None:
            add(f"interpreter:{target.name}", False, f"qemu-{target.qemu}-static not found in {':'.join(dirs)}",
                "install qemu-user-static (apt-get install qemu-user-static) or set interpreter_dirs")
        elif interp.problem:
            add(f"interpreter:{target.name}", False, interpreter_problem(interp.path, interp.problem),
                f"make {interp.path} root-owned and not group/other-writable")
        elif not interp.static:
            add(f"interpreter:{target.name}", False, f"{interp.path} is dynamically linked: containers and "
                "chroots cannot load it", "install qemu-user-static")
        else:
            version = qemu_version(interp.path)
            add(f"interpreter:{target.name}", True, f"{interp.path}, static, safe, QEMU {version or '?'}")
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def list_targets() -> list[dict]:
    native = set(read_native(state_dir_from_env(), remember=False)[0])
    return [{"target": t.name, "platforms": list(t.platforms), "family": t.family, "native": t.name in native,
             "entry": t.entry_name} for t in TARGETS]
