"""How results reach the operator: text or one JSON object on stdout, warnings and errors as
one line each on stderr, and the exit code. Typer-free, so the boot path can use it too."""

from __future__ import annotations

import json
import sys

from binfmtd.errors import EXIT_FAILED, EXIT_OK, BinfmtdError


# The warnings said while finish() produces a result: --json's object carries them too.
_said_warnings: list[str] | None = None


def say(kind: str, message: str) -> None:
    print(f"binfmtd: {kind}: {message}", file=sys.stderr)
    if kind == "warning" and _said_warnings is not None:
        _said_warnings.append(message)


def wants_json(argv: list[str]) -> bool:
    """Whether a command line asks for JSON, read without parsing it, so that even a command line
    the parser rejects is answered with one JSON object. `sandbox`'s words are its COMMAND's;
    `--format json` means JSON for `status` only (export's --format names a file format)."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command == "sandbox":
        return False
    for i, arg in enumerate(argv):
        if arg == "--":
            return False
        if arg == "--json" or command == "status" and (
                arg == "--format=json" or arg == "--format" and argv[i + 1:i + 2] == ["json"]):
            return True
    return False


def error_object(message: str, check: bool = False, warnings=()) -> dict:
    """--json's answer when a command fails as a whole (a usage error, a host that cannot, ...),
    for every command: apply's shape, with the error under `target` null (the command itself)."""
    return {"ok": False, "changed": False, "check": check, "results": [],
            "errors": [{"target": None, "message": message}], "warnings": list(warnings)}


def print_json(value) -> None:
    print(json.dumps(value, indent=2 if sys.stdout.isatty() else None))


def fail(message: str, exit_code: int, as_json: bool, check: bool = False, warnings=()) -> int:
    """A command failed as a whole: one line on stderr, the error object with --json; the code."""
    say("error", message)
    if as_json:
        print_json(error_object(message, check, warnings))
    return exit_code


def finish(produce, as_json: bool, render, exit_code=lambda result: EXIT_OK, check: bool = False) -> int:
    """The one exit path: produce a result, print it as text or JSON, return its exit code;
    a BinfmtdError becomes one line on stderr (and the error object with --json) and its code."""
    global _said_warnings
    _said_warnings = said = []
    try:
        try:
            result = produce()
        except BinfmtdError as exc:
            return fail(str(exc), exc.exit_code, as_json, check, said)
        if as_json:
            value = result.to_json() if hasattr(result, "to_json") else result
            if isinstance(value, dict):  # every object has `warnings`: the result's and those said
                value = {**value, "warnings": list(dict.fromkeys([*value.get("warnings", ()), *said]))}
            print_json(value)
        else:
            render(result)
        return exit_code(result)
    finally:
        _said_warnings = None


def table(rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([str(cell).ljust(width) for cell, width in zip(row, widths)] + [str(row[-1])]).rstrip())


def finish_change(produce, as_json: bool, check: bool = False) -> int:
    """finish() for apply/remove: warnings and per-target errors always go to stderr."""
    def produce_and_warn():
        report = produce()
        for warning in report.warnings:
            say("warning", warning)
        if as_json:
            for error in report.errors:
                say("error", error["message"])
        return report
    return finish(produce_and_warn, as_json, render_change, lambda r: EXIT_OK if r.ok else EXIT_FAILED, check)


def render_change(report) -> None:
    rows = [["TARGET", "PLATFORM", "ACTION", "REASON"]]
    for r in report.results:
        would = "would be " if report.check and r["action"] not in ("unchanged", "skipped") else ""
        rows.append([r["target"], r["platform"] or "-", would + r["action"], r["reason"]])
    table(rows)
    for error in report.errors:
        say("error", error["message"])
