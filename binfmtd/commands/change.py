"""The public commands as functions returning result values: the CLI, the daemon and the
Ansible module are thin clients of these. Each change command has one shape: read the facts,
plan, and (unless check) act under the lock."""

from __future__ import annotations

import os
import time

from binfmtd.facts.host import BinfmtMisc, DEFAULT_BINFMT_MISC, Host, Kernel, read_binfmt_misc, read_entry, read_host, read_kernel, target_of_entry
from binfmtd.config import Config, load_config
from binfmtd.entry import Entry, flags_problem, normalize_flags
from binfmtd.errors import BinfmtdError, HostUnsupported, UsageError
from binfmtd.image import registered_by_image
from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS, Interpreter, add_versions, read_interpreter, safety_problem
from binfmtd.facts.native import read_native
from binfmtd.plan import REMOVED, Desired, Plan, plan_apply, plan_remove
from binfmtd.records import dataclass, field
from binfmtd.state.files import locked, state_dir_from_env
from binfmtd.state.ledger import State, load_state, reconcile
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
                "results": self.results, "errors": self.errors, "warnings": self.warnings}


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


def refuse_targets_with_all(names, all_targets: bool) -> None:
    if names and all_targets:
        raise UsageError(f"both targets ({' '.join(names)}) and --all given; name the targets or pass --all, "
                         "not both")


def chosen_flags(flags: str | None, config: Config | None) -> tuple[str, bool]:
    """The flags to register and whether the operator chose them: --flags, else the config's
    `flags` ("" meaning none, as `--flags ''`), else the default."""
    if flags is not None:
        return flags, True
    if config and config.flags is not None:
        return config.flags, True
    return DEFAULT_FLAGS, False


def desired_targets(names, all_targets: bool, config: Config | None,
                    native: tuple[str, ...]) -> tuple[tuple[Target, ...], bool]:
    """Which targets a command is about, and whether the user named them: arguments, else
    `--all`, else the config's targets, else every target this host cannot run natively."""
    refuse_targets_with_all(names, all_targets)
    if names:
        return resolve_targets(names), True
    if all_targets:
        return TARGETS, False
    if config and config.targets is not None:
        return resolve_targets(config.targets), False
    return tuple(t for t in TARGETS if t.name not in native), False


def _paths(binfmt_misc: str | None, state_dir: str | None) -> tuple[str, str]:
    return binfmt_misc or DEFAULT_BINFMT_MISC, state_dir or state_dir_from_env()


def _require_kernel(kernel: Kernel) -> None:
    """The kernel binfmtd needs; root is required by the lock (state.open_state_dir)."""
    if not kernel.supports_fix_binary:
        raise HostUnsupported(f"kernel {kernel.release} is older than 4.8 and lacks binfmt_misc's F flag, "
                              "which containers need; upgrade the kernel")


def _read_interpreters(targets, native, dirs, host: Host | None = None,
                       state: State | None = None) -> dict[str, Interpreter]:
    """With `host` and `state`: the QEMU version too, where binfmtd may register (no entry yet,
    or binfmtd's own); a file the state already pinned costs no process (the boot path's no-op)."""
    def wants_version(t: Target) -> bool:
        current = host.binfmt_misc.entry(t.entry_name) if host else None
        return state is not None and (current is None or state.owns(current))
    pins = state.pins() if state is not None else ()
    interpreters = {t.qemu: read_interpreter(t.qemu, dirs, pins) for t in targets if t.name not in native}
    if state is not None:
        add_versions([interpreters[t.qemu].identity for t in targets if t.qemu in interpreters and wants_version(t)
                      and interpreters[t.qemu].problem is None], pins)
    return interpreters


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
          config: Config | None = None, lock_timeout: float = 60.0, reclaim=()) -> ChangeReport:
    """`config` is a config already loaded (the daemon's, checked once); else `config_file`'s.
    `reclaim`: entry names to put back although they differ from the state's record (plan.Desired)."""
    refuse_targets_with_all(names, all_targets)
    config = config or load_config(config_file)
    flags, flags_chosen = chosen_flags(flags, config)
    if problem := flags_problem(flags):
        raise UsageError(f"--flags: {problem}")
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    path, state_dir = _paths(binfmt_misc, state_dir)

    resolve_targets(names)  # an unknown target fails before anything changes

    def plan_now(host: Host, state: State) -> Plan:
        targets, explicit = desired_targets(names, all_targets, config, host.native)
        desired = Desired(targets, normalize_flags(flags), explicit, force, frozenset(reclaim), flags_chosen)
        return plan_apply(desired, host, _read_interpreters(targets, host.native, dirs, host, state), state,
                          _restore_problem)

    if check:
        host = read_host(path, read_native(state_dir, remember=False)[0])
        plan = plan_now(host, settled_state(state_dir, path))
        if plan.mount:
            plan.warnings.insert(0, f"binfmt_misc is not mounted on {path}; apply would mount it")
        return _report(plan, True, [(a.target.name, a.error) for a in plan.actions if a.error], names)
    _require_kernel(read_kernel())
    from binfmtd.act import execute, mount_binfmt_misc, recover

    with locked(state_dir, lock_timeout):  # facts are read under the lock: a concurrent run may just have acted
        native = read_native(state_dir, remember=True)[0]
        host = read_host(path, native)
        mounted_now = not host.binfmt_misc.mounted
        if mounted_now:
            mount_binfmt_misc(path)
            host = read_host(path, native)
        state = load_state(state_dir)
        recovered = recover(path, state_dir, state)
        if recovered:
            host = read_host(path, native)
        plan = plan_now(host, state)
        plan.mount = mounted_now
        plan.warnings[:0] = recovered
        state.last_apply = time.time()
        outcome = execute(plan, path, host.kernel, state_dir, state)
    return _report(plan, False, outcome.errors, names)


def settled_state(state_dir: str, path: str) -> State:
    """The state as the next run will see it once an interrupted run's intents are settled
    (for read-only commands: nothing is written)."""
    state = load_state(state_dir)
    reconcile(state, lambda name: read_entry(path, name))
    return state


def desired_entries(names=(), all_targets=False, flags: str | None = None,
                    config_file: str | None = None) -> tuple[list[Entry], list[str]]:
    """The entries `apply` would register on a host with an empty table (for export), and why
    each other target is left out."""
    config = load_config(config_file)
    flags, _ = chosen_flags(flags, config)
    if problem := flags_problem(flags):
        raise UsageError(f"--flags: {problem}")
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    native = read_native(None, remember=False)[0]
    targets, explicit = desired_targets(names, all_targets, config, native)
    kernel = read_kernel()
    empty = Host(kernel, os.uname().machine,
                       BinfmtMisc(DEFAULT_BINFMT_MISC, True, True, "binfmt_misc", True), native)
    plan = plan_apply(Desired(targets, normalize_flags(flags), explicit, False), empty,
                      _read_interpreters(targets, native, dirs), State())
    errors = [a.error for a in plan.actions if a.error]
    if errors:
        raise BinfmtdError("; ".join(errors))
    return [a.new for a in plan.actions if a.new], [f"{a.target.name}: {a.reason}" for a in plan.actions if not a.new]


def remove(names=(), all_targets=False, force=False, check=False, config_file: str | None = None,
           binfmt_misc: str | None = None, state_dir: str | None = None, lock_timeout: float = 60.0) -> ChangeReport:
    if not names and not all_targets:
        raise UsageError("name the targets to remove, or pass --all")
    refuse_targets_with_all(names, all_targets)
    path, state_dir = _paths(binfmt_misc, state_dir)
    targets = resolve_targets(names) if names else TARGETS

    def present(host: Host) -> tuple[Target, ...]:  # --all reports what is there, not every target
        return targets if names else tuple(t for t in targets if host.binfmt_misc.entry(t.entry_name))

    def warn_running(plan: Plan) -> Plan:  # removing an entry does not stop what runs under it
        from binfmtd.facts.processes import running_under

        plan.warnings += running_under([a.old for a in plan.actions if a.action == REMOVED and a.old])
        return plan

    if check:
        host = read_host(path)
        return _report(warn_running(plan_remove(present(host), host, settled_state(state_dir, path), force,
                                                _restore_problem)), True, [], names)
    _require_kernel(read_kernel())
    from binfmtd.act import execute, recover

    with locked(state_dir, lock_timeout):
        state = load_state(state_dir)
        recovered = recover(path, state_dir, state)
        host = read_host(path)
        plan = warn_running(plan_remove(present(host), host, state, force, _restore_problem))
        plan.warnings[:0] = recovered
        outcome = execute(plan, path, host.kernel, state_dir, state)
    return _report(plan, False, outcome.errors, names)


def _restore_problem(entry: Entry) -> str | None:
    """An entry --force took over is put back only under the rules binfmtd registers by."""
    if problem := entry.problem():
        return problem
    if problem := safety_problem(entry.interpreter):
        return f"interpreter {entry.interpreter}: {problem}"
    return None


def status(binfmt_misc: str | None = None, state_dir: str | None = None) -> dict:
    path, state_dir = _paths(binfmt_misc, state_dir)
    table = read_binfmt_misc(path)
    warnings = []
    try:  # the kernel's table is worth showing even when binfmtd's own records are not readable
        state = settled_state(state_dir, path)
    except BinfmtdError as exc:
        state = State()
        warnings.append(f"{exc} (owners below are unknown and shown as other)")
    emulators = read_emulators(table.entries, state)
    entries = []
    for entry in table.entries:
        target = target_of_entry(entry)
        entries.append({
            "name": entry.name, "enabled": entry.enabled, "interpreter": entry.interpreter,
            "flags": entry.flags, "offset": entry.offset, "magic": entry.magic.hex() or None,
            "mask": entry.mask.hex() or None, "target": target.name if target else None,
            "platform": target.platform if target else None,
            "owner": "binfmtd" if state.owns(entry) else "other",
            **emulator_of(entry, state.owns(entry), *emulators[entry.name]),
        })
    return {"binfmt_misc": {"path": path, "mounted": table.mounted, "enabled": table.enabled,
                            "private": table.private},
            "entries": entries, "warnings": warnings}


def read_emulators(entries, state: State) -> dict[str, tuple[dict | None, dict | None]]:
    """Per entry: the emulator file it pinned (binfmtd's own F entries: the state's pin) and the
    file at its interpreter path now, with QEMU versions (asked in parallel, never of a file
    binfmtd would not trust, nor of a non-QEMU entry's interpreter)."""
    from binfmtd.facts.interpreters import emulator_identity, safety_problem

    found = {}
    for entry in entries:
        owned = state.entries.get(entry.name) if state.owns(entry) else None
        pinned = owned.pinned if owned and "F" in entry.flags else None
        found[entry.name] = (pinned, emulator_identity(entry.interpreter, version=False))
    add_versions([disk for e in entries if (disk := found[e.name][1]) and target_of_entry(e)
                  and safety_problem(e.interpreter) is None], state.pins())
    return found


def emulator_of(entry: Entry, owned: bool, pinned: dict | None, on_disk: dict | None) -> dict:
    """Which QEMU an entry runs and whether that is still the file on disk. With F the kernel
    pinned a file at registration: binfmtd knows which for its own entries (`pinned`); for other
    tools' entries only the file on disk now is known (verify sees what really runs)."""
    from binfmtd.facts.interpreters import describe_version, same_file

    drift = note = None
    if "F" in entry.flags and entry.enabled and on_disk is None and not registered_by_image(entry.interpreter):
        drift = "removed"
        note = (f"emulator {entry.interpreter} is gone from disk; the entry still runs the file it pinned"
                + (f" ({describe_version(pinned)})" if pinned else "")
                + ("; binfmtd apply removes it" if owned else "; reinstall QEMU or remove the entry "
                   "(it is not binfmtd's)"))
    elif pinned and not same_file(pinned, on_disk):
        drift = "replaced"
        note = (f"pinned {describe_version(pinned)} (replaced on disk by {describe_version(on_disk)}): "
                "re-register to use it (binfmtd apply)")
    version = (pinned or on_disk or {}).get("version")
    return {"qemu_version": version,
            "emulator": {"pinned": pinned, "on_disk": on_disk, "drift": drift, "note": note,
                         "version_of": "pinned" if pinned else "disk" if version else None}}


def check(names=(), config_file: str | None = None, binfmt_misc: str | None = None) -> dict:
    """Preflight: can this host run binfmtd's plan? Each check says what is wrong and the fix."""
    from binfmtd.facts.interpreters import qemu_version

    checks: list[dict] = []

    def add(name: str, ok: bool, detail: str, fix: str | None = None) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail, "fix": None if ok else fix})

    path, state_dir = _paths(binfmt_misc, None)
    native, how = read_native(state_dir, remember=False)
    host = read_host(path, native)
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
    add("table", True, "private to this user namespace (its own binfmt_misc instance): registrations here do "
        "not reach the host" if table.private else "an outer user namespace's table (the host's) is mounted here: "
        "registrations reach it" if table.nested and table.mounted else "the host's table")
    try:
        config = load_config(config_file)
        add("config", True, f"{config.path} is valid" if config else "no config file; defaults apply")
    except UsageError as exc:
        config = None
        add("config", False, str(exc), "correct the file as the message says")
    targets, _ = desired_targets(names, False, config, host.native)
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    state = load_state(state_dir)
    for target in targets:
        if target.name in host.native:
            add(f"interpreter:{target.name}", True, f"native on this {host.machine} host; no entry needed")
            continue
        interp = read_interpreter(target.qemu, dirs)  # the same verdict apply's plan uses
        if interp.problem:
            add(f"interpreter:{target.name}", False, interp.described, interp.fix)
        else:
            version = qemu_version(interp.resolved)  # root alone controls it: safe to run
            add(f"interpreter:{target.name}", True, f"{interp.shown}, static, safe, QEMU {version or '?'}")
        if entry := table.entry(target.entry_name):
            owned = state.owns(entry)
            emulator = emulator_of(entry, owned, *read_emulators([entry], state)[entry.name])["emulator"]
            if emulator["drift"]:
                add(f"emulator:{target.name}", False, f"{entry.name}: {emulator['note']}",
                    f"binfmtd apply {target.name}" if owned else
                    f"re-register {entry.name} with the tool that made it, or take it over: binfmtd apply --force {target.name}")
            elif emulator["pinned"]:
                add(f"emulator:{target.name}", True, f"{entry.name} runs the file it pinned, still the one on disk "
                    f"({emulator['pinned']['path']}, QEMU {emulator['pinned'].get('version') or '?'})")
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def list_targets() -> list[dict]:
    native = set(read_native(state_dir_from_env(), remember=False)[0])
    return [{"target": t.name, "platforms": list(t.platforms), "family": t.family, "native": t.name in native,
             "entry": t.entry_name} for t in TARGETS]
