"""Prometheus metrics: `binfmtd status --format prometheus`, and the daemon's textfile for
node_exporter's textfile collector. Gauges per target (registered, enabled, verified) and the
times of the last apply and verify, in the text exposition format."""

from __future__ import annotations

import json
import time

from binfmtd.commands.status import status as read_status
from binfmtd.config import resolve_paths
from binfmtd.entry import Entry
from binfmtd.errors import BinfmtdError
from binfmtd.facts.processes import CpuLedger, per_target, read_emulated
from binfmtd.state.files import VERIFY_FILE, open_state_dir, read_record, write_atomic, write_record
from binfmtd.state.ledger import load_state
from binfmtd.targets import BY_NAME, TARGETS


def record_verify(report, state_dir: str | None = None) -> None:
    """Remember the last verify's per-target results for the metrics (best effort: a verify run
    by a user who cannot write the state directory simply is not recorded)."""
    state_dir = resolve_paths(state_dir=state_dir)[1]
    data = {"time": time.time(), "engine": report.engine, "results": {r["target"]: r["ok"] for r in report.results}}
    try:
        open_state_dir(state_dir)  # the rules apply's writes follow: root's, root-only, or nothing
        write_record(state_dir, VERIFY_FILE, json.dumps(data))
    except (OSError, BinfmtdError):
        pass


def _last_verify(state_dir: str) -> dict:
    """The last verify's record, validated (a damaged file must not make an invalid sample)."""
    data = read_record(state_dir, VERIFY_FILE)
    if not isinstance(data, dict):
        return {}
    when, results = data.get("time"), data.get("results")
    return {"time": when if isinstance(when, (int, float)) and not isinstance(when, bool) else None,
            "results": {k: v for k, v in results.items() if isinstance(v, bool)} if isinstance(results, dict) else {}}


def _labels(**labels: str | None) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{escape(v or "")}"' for k, v in labels.items()) + "}"


def prometheus_text(binfmt_misc: str | None = None, state_dir: str | None = None) -> str:
    state_dir = resolve_paths(state_dir=state_dir)[1]
    status = read_status(binfmt_misc, state_dir)
    misc = status.binfmt_misc
    lines = [*_gauge("binfmtd_binfmt_misc_mounted", "Whether binfmt_misc is mounted.", [("", int(misc.mounted))]),
             *_gauge("binfmtd_binfmt_misc_enabled", "Whether binfmt_misc is enabled as a whole.",
                     [("", int(misc.enabled))])]
    lines += _entry_gauges(status.entries)
    verified = _last_verify(state_dir)
    results = verified.get("results", {})
    lines += _gauge("binfmtd_target_verified", "Whether the target's probe passed in the last binfmtd verify.",
                    [(_labels(target=name, platform=target.platform), int(ok))
                     for target in TARGETS for name, ok in results.items() if name == target.name])
    lines += emulation_metrics(status.entries)
    lines += _time_gauges(state_dir, verified.get("time"))
    return "\n".join(lines) + "\n"


def _gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
            *(f"{name}{labels} {value!r}" for labels, value in samples)]


def _entry_gauges(entries: list) -> list[str]:
    """Per target: whether its qemu-<target> entry is registered, enabled, and what it runs."""
    by_target = {e.target: e for e in entries if e.target and BY_NAME[e.target].entry_name == e.name}  # its own name
    registered, enabled = [], []
    for target in TARGETS:
        entry = by_target.get(target.name)
        labels = _labels(target=target.name, platform=target.platform, owner=entry.owner if entry else None)
        registered.append((labels, int(entry is not None)))
        enabled.append((labels, int(bool(entry and entry.enabled))))
    return [*_gauge("binfmtd_entry_registered", "Whether binfmt_misc has the target's qemu-<target> entry.",
                    registered),
            *_gauge("binfmtd_entry_enabled", "Whether the target's entry is registered and enabled.", enabled),
            *_gauge("binfmtd_entry_info", "The target's entry: who owns it, the QEMU version it runs and its "
                    "emulator's drift (replaced or removed on disk since registration; empty: none).",
                    [(_labels(target=t.name, platform=t.platform, owner=e.owner, qemu_version=e.qemu_version,
                              drift=e.emulator.drift), 1)
                     for t in TARGETS if (e := by_target.get(t.name))])]


def _time_gauges(state_dir: str, last_verify: float | None) -> list[str]:
    """When apply last completed and verify last ran; each left out while unknown."""
    try:
        last_apply = load_state(state_dir).last_apply
    except BinfmtdError:  # status already said why; the other samples are still true
        last_apply = None
    times = [("binfmtd_last_apply_timestamp_seconds", "When binfmtd apply last completed.", last_apply),
             ("binfmtd_last_verify_timestamp_seconds", "When binfmtd verify last ran.", last_verify)]
    return [line for name, help_text, value in times if value is not None
            for line in _gauge(name, help_text, [("", value)])]


_LEDGER = None  # the daemon's CPU ledger: kept across its scrapes so the counter only grows


def emulation_metrics(entries: list) -> list[str]:
    """Per target: how many processes run under emulation now, and the CPU seconds they used (a
    counter in the daemon, which keeps the ledger; see binfmtd.facts.processes.CpuLedger). Every target
    with an entry has a sample, 0 when nothing runs under it; entries of no QEMU target (jar,
    python) are not emulation and are left out."""
    global _LEDGER
    table = [Entry(e.name, e.interpreter, e.flags, e.offset, bytes.fromhex(e.magic or ""),
                   bytes.fromhex(e.mask or ""), e.enabled) for e in entries if e.target]
    found = read_emulated(table)
    _LEDGER = _LEDGER or CpuLedger()
    cpu = _LEDGER.update(found)
    counts = per_target(found)
    names = sorted({e.target for e in entries if e.target} | set(counts) | set(cpu))

    def labels(name: str) -> str:
        target = BY_NAME.get(name)
        return _labels(target=name, platform=target.platform if target else None)
    return ["# HELP binfmtd_emulated_processes Processes running under the target's binfmt_misc entry now.",
            "# TYPE binfmtd_emulated_processes gauge",
            *(f"binfmtd_emulated_processes{labels(n)} {counts.get(n, (0, 0.0))[0]}" for n in names),
            ("# HELP binfmtd_emulated_cpu_seconds_total CPU seconds (user+system) used by processes running "
             "under the target's entry."),
            "# TYPE binfmtd_emulated_cpu_seconds_total counter",
            *(f"binfmtd_emulated_cpu_seconds_total{labels(n)} {round(cpu.get(n, 0.0), 2)!r}" for n in names)]


def write_textfile(path: str, text: str) -> None:
    """Atomically, as node_exporter's textfile collector requires (it must never read half a file),
    and never through a name the directory's owner could have planted."""
    write_atomic(path, text)
