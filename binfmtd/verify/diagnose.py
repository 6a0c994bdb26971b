"""What a probe's run means: the report for one target and, for a failure, its cause and fix,
found by asking the rules below in turn."""

from __future__ import annotations

import errno
import os
import re
from functools import cached_property

from binfmtd.config import resolve_paths
from binfmtd.entry import Entry
from binfmtd.errors import BinfmtdError
from binfmtd.facts.host import Host
from binfmtd.facts.interpreters import Interpreter, describe_version, emulator_identity, qemu_version, same_file
from binfmtd.plan import shadowing_entries
from binfmtd.probes import parse_probe_output
from binfmtd.records import dataclass
from binfmtd.state.ledger import load_state
from binfmtd.targets import Target
from binfmtd.verify.probe_run import ProbeRun

# What docker, podman and nerdctl print when an image cannot be pulled or found (they exit 125).
PULL_FAILED = re.compile(r"pull|manifest|not found|image not known|unauthorized|denied|no such host|"
                         r"initializing source|resolv|registry", re.I)


def diagnose(target: Target, run: ProbeRun, host: Host, interpreter: Interpreter, engine: str, user_image: str | None,
             ours: bool | None = None) -> dict:
    """The report for one target: what ran, what it said, and for a failure the cause and fix.
    `user_image` is the image --image named (None: binfmtd's probe); `ours` whether binfmtd
    registered the target's entry (its fix then needs no --force)."""
    entry = host.binfmt_misc.entry(target.entry_name)
    native = target.name in host.native
    machine = parse_probe_output(run.stdout)
    if user_image and machine is None:
        machine = (run.stdout.strip().splitlines() or [""])[-1].strip() or None
    expected = {host.machine} if native else {target.machine}
    ok = run.succeeded and machine in expected
    result = {
        "target": target.name, "platform": target.platform, "ok": ok, "machine": machine,
        "seconds": round(run.seconds, 3), "error": None, "cause": None, "fix": None, "native": native,
        "entry": {"name": target.entry_name, "present": entry is not None,
                  "enabled": bool(entry and entry.enabled), "flags": entry.flags if entry else None},
        "interpreter": {"path": interpreter.path, "static": interpreter.static, "safe": interpreter.problem is None},
        "emulator": emulator_that_ran(run, entry),
    }
    if ok:
        return result
    result["error"] = error_text(run)
    result["cause"], result["fix"] = cause_of(Failure(target, run, host, entry, interpreter, engine, machine,
                                                      expected, user_image, ours))
    return result


def emulator_that_ran(run: ProbeRun, entry: Entry | None) -> dict | None:
    """The QEMU the kernel ran for the probe (seen through /proc/PID/exe: the sandbox engine, for
    an emulated target), and whether it is still the file at the entry's interpreter path."""
    if run.ran is None:
        return None
    ran = run.ran
    on_disk = emulator_identity(entry.interpreter, known=(ran,)) if entry else None
    current = same_file(ran, on_disk)
    note = None
    if entry is not None and not current:
        gone = "deleted" if ran["deleted"] else "replaced"
        note = (f"the kernel ran {describe_version(ran)} from {ran['path']}, {gone} on disk since ("
                + (f"{entry.interpreter} is now {describe_version(on_disk)}" if on_disk else f"{entry.interpreter} is gone")
                + f"): {entry.name} still pins the old file; `binfmtd apply` "
                + ("re-registers it" if on_disk else "removes it") + " if it is binfmtd's, else "
                + ("re-register it with the tool that made it" if on_disk else "reinstall QEMU or remove the entry"))
    return {"path": ran["path"], "version": ran["version"], "deleted": ran["deleted"], "current": current,
            "note": note}


def entries_binfmtd_owns(host: Host) -> set[str]:
    """Names of the entries binfmtd registered (its state), for diagnoses; empty if unreadable."""
    try:
        state = load_state(resolve_paths()[1])
    except BinfmtdError:
        return set()
    return {e.name for e in host.binfmt_misc.entries if state.owns(e)}


def error_text(run: ProbeRun) -> str:
    if run.returncode is None:
        return f"timed out after {run.seconds:.1f}s"
    code = run.exec_errno
    if code is not None:
        return f"exec failed: {errno.errorcode.get(code, code)} ({os.strerror(code)})"
    lines = [line for line in run.stderr.strip().splitlines() if line]
    return (lines[-1] if lines else f"exit status {run.returncode}")[:300]


def emulates(interpreter: str, target: Target) -> bool:
    """Whether an entry's interpreter is QEMU's emulator for this target, by the names QEMU,
    Debian and tonistiigi/binfmt give it: qemu-aarch64(-static), /usr/libexec/qemu-binfmt/aarch64-binfmt-P."""
    name = os.path.basename(interpreter).removeprefix("qemu-")
    return name.split("-", 1)[0] == target.qemu


@dataclass
class Failure:
    """What is known about a failed probe: the run, the table, the target's entry and emulator."""

    target: Target
    run: ProbeRun
    host: Host
    entry: Entry | None  # the target's
    interpreter: Interpreter  # the target's emulator as found on disk
    engine: str
    machine: str | None
    expected: set[str]
    user_image: str | None = None
    ours: bool | None = None

    @property
    def table(self):
        return self.host.binfmt_misc

    @cached_property
    def shadows(self) -> list:
        """Other enabled entries that claim the target's binaries."""
        return [e for e in shadowing_entries(self.target, self.host) if e.enabled]

    @property
    def take_over(self) -> str:
        """How to take over an entry another tool registered; binfmtd's own only needs apply."""
        name = self.target.name
        return (f"binfmtd apply {name}" if self.ours else
                f"binfmtd apply {name} --force (binfmtd remove puts the other tool's entry back)")


def cause_of(failure: Failure) -> tuple[str, str]:
    """The first cause a rule finds, with its fix; rules run from the most to the least specific."""
    for rule in CAUSES:
        found = rule(failure)
        if found:
            return found
    return f"the probe failed: {error_text(failure.run)}", "run binfmtd check and binfmtd status"


def _timed_out(f: Failure):
    if f.run.returncode is None:
        return "the probe did not finish in time", "raise the timeout (--timeout), or check the host's load"


def _image_not_pulled(f: Failure):
    if f.user_image and f.machine is None and f.run.returncode and PULL_FAILED.search(f.run.stderr):
        platform = f.target.platform
        return (f"{f.engine} could not pull or find image {f.user_image} for {platform}",
                f"check the reference, the registry and that the image has a {platform} variant: "
                f"{f.engine} pull --platform {platform} {f.user_image}")


def _shadowed_by_another_emulator(f: Failure):
    wrong = [e for e in f.shadows if not emulates(e.interpreter, f.target)]
    if wrong:
        return (f"entry {wrong[0].name!r} (not binfmtd's) claims {f.target.name} binaries and hands them to "
                f"{wrong[0].interpreter}, which is not QEMU's {f.target.qemu} emulator",
                f"remove that entry (echo -1 > {f.table.path}/{wrong[0].name}), then binfmtd apply {f.target.name}")


def _entry_runs_another_emulator(f: Failure):
    entry = f.entry
    if entry is not None and entry.enabled and not emulates(entry.interpreter, f.target):
        return (f"entry {entry.name} hands {f.target.name} binaries to {entry.interpreter}, which is not QEMU's "
                f"{f.target.qemu} emulator", f.take_over)


def _emulator_crashed(f: Failure):
    run, interpreter = f.run, f.interpreter
    if "uncaught target signal" in run.stderr or (run.returncode and run.returncode >= 128 and interpreter.path):
        # Only a path root alone controls is run as root (resolved is None for a refused one).
        version = qemu_version(interpreter.resolved) if interpreter.resolved else None
        return (f"the emulator crashed (QEMU {version or '?'}): {error_text(run)}",
                "upgrade qemu-user-static; report the crash to QEMU with the probe")


def _wrong_machine(f: Failure):
    if f.machine and f.machine not in f.expected:
        others = [e.name for e in f.shadows]
        return (f"the probe ran but reported {f.machine!r}, not {sorted(f.expected)[0]!r}"
                + (f": entry {others[0]!r} (not binfmtd's) claims these binaries" if others else ""),
                f"remove the shadowing entry (echo -1 > {f.table.path}/{others[0]}) and run binfmtd apply"
                if others else "check which entry claims the binaries: binfmtd status")


def _table_off(f: Failure):
    if not f.table.mounted:
        return f"binfmt_misc is not mounted on {f.table.path}", "run binfmtd apply (it mounts it)"
    if not f.table.enabled:
        return "binfmt_misc is disabled for the whole table", f"echo 1 > {f.table.path}/status"


def _no_entry(f: Failure):
    if f.entry is None and not f.shadows:
        suffix = " (this is a private user-namespace table, not the host's)" if f.table.private else ""
        return f"no entry claims {f.target.name} binaries{suffix}", f"binfmtd apply {f.target.name}"


def _entry_disabled(f: Failure):
    entry = f.entry
    if entry is not None and not entry.enabled:
        return (f"entry {entry.name} is disabled",
                f"binfmtd apply {f.target.name} (re-enables it)" if f.ours else
                f"echo 1 > {f.table.path}/{entry.name} (another tool's entry), or {f.take_over}")


def _interpreter_gone(f: Failure):
    entry = f.entry
    if entry is not None and "F" not in entry.flags and not os.path.exists(entry.interpreter):
        return (f"interpreter {entry.interpreter} is gone",
                f"install qemu-user-static, then binfmtd apply {f.target.name}" if f.ours else
                f"reinstall the tool that registered {entry.name} (Debian: apt-get install --reinstall "
                f"qemu-user-static), or {f.take_over}")


def _lacks_f_flag(f: Failure):
    entry = f.entry
    if entry is not None and "F" not in entry.flags and (f.engine != "sandbox" or f.run.exec_errno == errno.ENOENT):
        return (f"entry {entry.name} lacks the F flag: the kernel looks for {entry.interpreter} inside the container, "
                "where it does not exist",
                f"binfmtd apply {f.target.name} --flags POCF" if f.ours else
                f"{f.take_over}; its default flags POCF have F")


def _nothing_claims_the_probe(f: Failure):
    if f.run.exec_errno == errno.ENOEXEC:
        return "no enabled entry claims the probe (ENOEXEC)", f"binfmtd apply {f.target.name}"
    if "exec format error" in f.run.stderr.lower():
        return ("the container runtime could not execute the probe (exec format error): no entry claims it",
                f"binfmtd apply {f.target.name} on the host the engine runs on")


# In the order they are asked: the first that names a cause wins.
CAUSES = (_timed_out, _image_not_pulled, _shadowed_by_another_emulator, _entry_runs_another_emulator,
          _emulator_crashed, _wrong_machine, _table_off, _no_entry, _entry_disabled, _interpreter_gone,
          _lacks_f_flag, _nothing_claims_the_probe)
