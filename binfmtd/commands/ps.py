"""ps: the processes running under emulation now and, per target, how many and their CPU time."""

from __future__ import annotations

import os

from binfmtd.config import resolve_paths
from binfmtd.facts.host import read_binfmt_misc
from binfmtd.facts.processes import per_target, read_emulated
from binfmtd.records import dataclass, field
from binfmtd.report import Report
from binfmtd.targets import BY_NAME


@dataclass
class ProcessesReport(Report):
    processes: list  # facts.processes.EmulatedProcess, shown by its to_json()
    targets: list[dict]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"processes": [p.to_json() for p in self.processes], "targets": self.targets,
                "warnings": self.warnings}


def processes_report(binfmt_misc: str | None = None) -> ProcessesReport:
    table = read_binfmt_misc(resolve_paths(binfmt_misc)[0])
    found = read_emulated(table.entries)
    targets = [{"target": name, "platform": BY_NAME[name].platform if name in BY_NAME else None,
                "processes": count, "cpu_seconds": round(seconds, 2)}
               for name, (count, seconds) in sorted(per_target(found).items())]
    warnings = []
    if os.geteuid() != 0:
        warnings.append("not root: other users' processes are not visible; run it with sudo")
    if not table.mounted:
        warnings.append(f"binfmt_misc is not mounted on {table.path}: no entry, so no process can be matched")
    return ProcessesReport(found, targets, warnings)
