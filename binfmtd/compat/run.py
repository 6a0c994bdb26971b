"""One run of the image in a foreign language (Run), and what both languages do in it: install
(apply, then probe), remove entries by name or glob, probe in binfmtd's sandbox."""

from __future__ import annotations

import fnmatch
import os
import sys
import tempfile
from dataclasses import dataclass, field

from binfmtd.commands.change import apply, remove
from binfmtd.commands.status import status
from binfmtd.act import mount_binfmt_misc, unregister
from binfmtd.config import Config, load_config, resolve_paths, settings_from
from binfmtd.entry import STATUS_FILE
from binfmtd.errors import UsageError
from binfmtd.facts.host import DEFAULT_BINFMT_MISC, read_binfmt_misc, read_host
from binfmtd.facts.interpreters import read_interpreter
from binfmtd.facts.native import read_native
from binfmtd.records import replace  # Config is a boot-path record (binfmtd.records), not a dataclass
from binfmtd.state.files import locked
from binfmtd.targets import Target, lookup
from binfmtd.verify.diagnose import diagnose
from binfmtd.verify.engines import Sandbox, run_all

PROBE_TIMEOUT = 30.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_names(names: list[str]) -> tuple[Target, ...]:
    targets, unknown = [], []
    for name in names:
        target = lookup(name)
        if target is None:
            unknown.append(name)
        elif target not in targets:
            targets.append(target)
    if unknown:
        raise UsageError(f"unsupported architecture: {', '.join(unknown)}; use names such as arm64, riscv64, "
                         "linux/arm/v7, 386 or all (`binfmtd targets` lists every one)")
    return tuple(targets)


@dataclass
class Run:
    """One invocation in a foreign language: where the table is and what failed so far."""

    mount: str = DEFAULT_BINFMT_MISC
    failed: bool = False
    verified: dict[str, dict] = field(default_factory=dict)  # target -> binfmtd.verify.diagnose's result
    _native: tuple[str, ...] | None = None

    @property
    def native(self) -> tuple[str, ...]:
        """The targets this host runs itself (measured once per run)."""
        if self._native is None:
            self._native = read_native(resolve_paths()[1], remember=False)[0]
        return self._native

    def config(self):
        config = load_config()
        if os.environ.get("QEMU_BINARY_PATH"):  # tonistiigi's: where the emulators are
            config = replace(config or Config("<environment>"),
                             interpreter_dirs=(os.environ["QEMU_BINARY_PATH"],))
        return config


def ensure_mounted(path: str) -> None:
    """binfmt_misc at `path`, mounted in the container's own mount namespace if it is not there
    (as tonistiigi does; the table is the host's all the same)."""
    if not os.path.exists(os.path.join(path, STATUS_FILE)):
        mount_binfmt_misc(path)


def probe(run: Run, targets: tuple[Target, ...]) -> dict[str, dict]:
    """Run each target's probe in binfmtd's sandbox (a chroot holding the probe alone, so only
    an entry with a working, kernel-pinned emulator passes); binfmtd.verify.diagnose's result per target."""
    targets = tuple(t for t in targets if t.name not in run.verified)
    if targets:
        host = read_host(run.mount, run.native)
        dirs = settings_from(run.config(), binfmt_misc=run.mount).interpreter_dirs
        with tempfile.TemporaryDirectory(prefix="binfmtd-compat-") as workdir:
            sandbox = Sandbox(workdir)
            sandbox.check(10)
            runs = run_all(sandbox, targets, PROBE_TIMEOUT, workers=16)
        for target, probe_run in zip(targets, runs):
            run.verified[target.name] = diagnose(target, probe_run, host, read_interpreter(target.qemu, dirs),
                                                 "sandbox", user_image=None)
    return run.verified


def install(run: Run, targets: tuple[Target, ...] | None, flags: str, say, replace_hint) -> None:
    """Register `targets` (None: every target) as binfmtd's apply does, then probe each one;
    `say(target, ok, detail)` reports each in the caller's language, and `replace_hint(target)`
    says in it how to replace another tool's entry that does not work."""
    names = [t.name for t in targets] if targets is not None else []
    report = apply(names, all_targets=targets is None, flags=flags, binfmt_misc=run.mount,
                            config=run.config())
    for warning in report.warnings:
        # The flags are the foreign language's own defaults or what its caller chose: no advice on them.
        if "flags lack F" not in warning and "flag C:" not in warning:
            log(f"warning: {warning}")
    to_probe, kept = _say_applied(run, report, say)
    results = probe(run, tuple(to_probe))
    for target in to_probe:
        result = results[target.name]
        if result["ok"]:
            say(target, True, f"kept: {kept[target.name]}" if target.name in kept else "")
        else:
            run.failed = True
            detail = f"{result['cause']}; fix: {result['fix']}"
            if target.name in kept:
                detail = f"{kept[target.name]}, and it does not work ({result['cause']}); fix: {replace_hint(target)}"
            say(target, False, detail)


def _say_applied(run: Run, report, say) -> tuple[list[Target], dict[str, str]]:
    """Say what apply's report settles (errors, native targets, targets without an entry); the rest,
    with an entry, are to be probed. (targets to probe, target -> why another tool's entry was kept)"""
    errors = {e.target: e.message for e in report.errors}
    entries = {e.name: e for e in status(binfmt_misc=run.mount).entries}
    to_probe, kept = [], {}
    for result in report.results:
        target = lookup(result.target)
        entry = entries.get(target.entry_name)
        if target.name in errors:
            run.failed = True
            say(target, False, errors[target.name])
        elif target.name in run.native:
            say(target, True, "runs natively on this host, no entry needed")
        elif entry is None:
            say(target, None, result.reason)  # e.g. no emulator in the image for it, with `all`
        else:
            to_probe.append(target)
            if entry.owner != "binfmtd":
                kept[target.name] = (f"entry {entry.name} of another tool ({entry.interpreter}, "
                                     f"flags {entry.flags or '-'}) left in place")
    return to_probe, kept


def remove_entries(run: Run, patterns: list[str], say) -> None:
    """Remove the entries `patterns` name (entry names, globs such as qemu-*, targets, platforms),
    whoever registered them: the user asked for them by name."""
    present = [e.name for e in read_binfmt_misc(run.mount).entries]
    for pattern in patterns:
        target = lookup(pattern) if not any(c in pattern for c in "*?[") else None
        if target:
            matches = [target.entry_name] if target.entry_name in present else []
        else:
            matches = [n for n in present if fnmatch.fnmatchcase(n, pattern) or n.endswith(f"-{pattern}")]
        if not matches:
            say(pattern, True, "not found")
            continue
        for name in matches:
            known = lookup(name)
            if known and known.entry_name == name:
                report = remove([known.name], force=True, binfmt_misc=run.mount)
                message = report.errors[0].message if report.errors else ""
            else:  # not a QEMU target's entry (e.g. matched by a glob): remove it as it is
                message = _unregister(run.mount, name)
            if message:
                run.failed = True
            say(name, not message, message)
            present.remove(name)


def _unregister(path: str, name: str) -> str:
    try:
        with locked(resolve_paths()[1]):
            unregister(path, name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"cannot remove the entry ({exc.strerror})"
    return ""
