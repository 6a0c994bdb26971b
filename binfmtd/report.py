"""What every command returns: a report that says whether it went well (`ok`, the exit code),
what the operator should know (`warnings`, and `errors` for a change: one line each on stderr) and
its JSON (`to_json`, the contract's shape), so that binfmtd.cli.render alone turns reports into
output and exit codes. Reports are records (binfmtd.records) with a `warnings` field of their own."""

from __future__ import annotations

from binfmtd.records import dataclass, field, plain


class Report:
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return True

    @property
    def error_messages(self) -> list[str]:
        return []

    def to_json(self) -> dict:
        return plain(self)


@dataclass
class TextReport(Report):
    """A report that is its own text: the Prometheus exposition of `status --format prometheus`."""

    text: str
    warnings: list[str] = field(default_factory=list)
