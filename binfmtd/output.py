"""How results reach the operator: text or one JSON object on stdout, warnings and errors as
one line each on stderr, and the exit code. Typer-free, so the boot path can use it too."""

from __future__ import annotations

import json
import sys

from binfmtd.errors import EXIT_FAILED, EXIT_OK, BinfmtdError


def say(kind: str, message: str) -> None:
    print(f"binfmtd: {kind}: {message}", file=sys.stderr)


def finish(produce, as_json: bool, render, exit_code=lambda result: EXIT_OK) -> int:
    """The one exit path: produce a result, print it as text or JSON, return its exit code;
    a BinfmtdError becomes one line on stderr (and a JSON object with --json) and its code."""
    try:
        result = produce()
    except BinfmtdError as exc:
        say("error", str(exc))
        if as_json:
            print(json.dumps({"ok": False, "changed": False, "error": str(exc), "exit_code": exc.exit_code}))
        return exc.exit_code
    if as_json:
        print(json.dumps(result.to_json() if hasattr(result, "to_json") else result,
                         indent=2 if sys.stdout.isatty() else None))
    else:
        render(result)
    return exit_code(result)


def table(rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([str(cell).ljust(width) for cell, width in zip(row, widths)] + [str(row[-1])]).rstrip())


def finish_change(produce, as_json: bool) -> int:
    """finish() for apply/remove: warnings and per-target errors always go to stderr."""
    def produce_and_warn():
        report = produce()
        for warning in report.warnings:
            say("warning", warning)
        if as_json:
            for error in report.errors:
                say("error", error["message"])
        return report
    return finish(produce_and_warn, as_json, render_change, lambda r: EXIT_OK if r.ok else EXIT_FAILED)


def render_change(report) -> None:
    rows = [["TARGET", "PLATFORM", "ACTION", "REASON"]]
    for r in report.results:
        would = "would be " if report.check and r["action"] not in ("unchanged", "skipped") else ""
        rows.append([r["target"], r["platform"] or "-", would + r["action"], r["reason"]])
    table(rows)
    for error in report.errors:
        say("error", error["message"])
