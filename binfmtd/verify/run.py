"""`binfmtd verify`: prove that emulation works by running each target's probe the way a build
would meet it, and name the cause and the fix of every failure. Probes run in parallel, each
bounded by a timeout; engines.py says where they run, diagnose.py what a run means."""

from __future__ import annotations

import math
import tempfile

from binfmtd.config import ENGINES, desired_targets, load_config, resolve_targets, settings_from
from binfmtd.errors import UsageError
from binfmtd.facts.host import Host, read_host
from binfmtd.facts.interpreters import read_interpreter
from binfmtd.facts.native import read_native
from binfmtd.metrics import record_verify
from binfmtd.records import dataclass
from binfmtd.report import Report
from binfmtd.targets import Target
from binfmtd.trust import read_user_fuse_mounts
from binfmtd.verify import spoken
from binfmtd.verify.diagnose import diagnose, entries_binfmtd_owns
from binfmtd.verify.engines import pick_engine, run_all


@dataclass
class VerifyReport(Report):
    """The result of verify, in the contract's shape; `warnings` go to stderr (and --json's object)."""

    engine: str
    results: list[dict]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.results)

    def to_json(self) -> dict:
        return {"ok": self.ok, "engine": self.engine, "results": self.results}


def verify(names=(), all_targets=False, engine_name: str | None = None, image: str | None = None,
           config_file: str | None = None, timeout: float | None = None, binfmt_misc: str | None = None) -> VerifyReport:
    """Run the probes of `names` (with none and not `all_targets`: the config's targets, else every
    non-native one) and diagnose each; the results are recorded for the metrics (binfmtd.metrics)."""
    check_options(engine_name, timeout)
    config = load_config(config_file)
    settings = settings_from(config, binfmt_misc=binfmt_misc)
    engine_name, timeout = engine_name or settings.verify_engine, timeout or settings.verify_timeout
    resolve_targets(names)  # unknown targets fail before anything runs
    host = read_host(settings.binfmt_misc, read_native(settings.state_dir, remember=False)[0])
    targets, _ = desired_targets(names, all_targets, config, host.native)
    with tempfile.TemporaryDirectory(prefix="binfmtd-verify-") as workdir:
        engine = pick_engine(engine_name, workdir, image, timeout)
        if engine.name != "sandbox":
            targets = _with_platforms(targets, named=bool(names))
        runs = run_all(engine, targets, timeout)
    owned, mounts = entries_binfmtd_owns(host), read_user_fuse_mounts()
    results = [diagnose(t, run, host, read_interpreter(t.qemu, settings.interpreter_dirs, user_mounts=mounts),
                        engine.name, image, t.entry_name in owned) for t, run in zip(targets, runs)]
    for result, run in zip(results, runs):  # the answer came in time, the engine did not finish in time
        result["slow_engine"] = run.slow_engine(timeout)
    report = VerifyReport(engine.name, results, _warnings(host, results))
    record_verify(report)
    return report


def check_options(engine_name: str | None, timeout: float | None) -> None:
    """Refuse an engine or a timeout verify cannot use, before anything runs."""
    if engine_name is not None and engine_name not in ENGINES:
        raise UsageError(f"--engine {engine_name!r}: expected {spoken(ENGINES)}")
    if timeout is not None and not (math.isfinite(timeout) and 1 <= timeout <= 600):
        raise UsageError(f"--timeout {timeout:g}: expected seconds per probe, 1 to 600")


def _with_platforms(targets: tuple[Target, ...], named: bool) -> tuple[Target, ...]:
    """The targets a container engine can run (those with a platform); naming one without is an error."""
    without = [t.name for t in targets if not t.platform]
    if without and named:
        raise UsageError(f"{', '.join(without)} have no container platform; verify them with --engine sandbox")
    return tuple(t for t in targets if t.platform)


def _warnings(host: Host, results: list[dict]) -> list[str]:
    warnings = []
    if host.binfmt_misc.private:
        warnings.append("the table checked is this user namespace's private one, not the host's")
    warnings += [f"{r['target']}: {r['emulator']['note']}" for r in results if r["emulator"] and r["emulator"]["note"]]
    warnings += [f"{r['target']}: {r['slow_engine']}" for r in results if r["slow_engine"]]
    return warnings
