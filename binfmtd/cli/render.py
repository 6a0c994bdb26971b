"""How reports reach the operator, in one place: text or one JSON object on stdout, warnings and
errors as one line each on stderr, and the exit code (report.ok). Every renderer is here.
Typer-free, so the boot path (binfmtd.cli.boot) uses it too."""

from __future__ import annotations

import json
import sys

from binfmtd.entry import printable
from binfmtd.errors import EXIT_FAILED, EXIT_OK, BinfmtdError


def say(kind: str, message: str) -> None:
    print(f"binfmtd: {kind}: {message}", file=sys.stderr)


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


def error_object(message: str, check: bool = False) -> dict:
    """--json's answer when a command fails as a whole (a usage error, a host that cannot, ...),
    for every command: apply's shape, with the error under `target` null (the command itself)."""
    return {"ok": False, "changed": False, "check": check, "results": [],
            "errors": [{"target": None, "message": message}], "warnings": []}


def print_json(value) -> None:
    print(json.dumps(value, indent=2 if sys.stdout.isatty() else None))


def fail(message: str, exit_code: int, as_json: bool, check: bool = False) -> int:
    """A command failed as a whole: one line on stderr, the error object with --json; the code."""
    say("error", message)
    if as_json:
        print_json(error_object(message, check))
    return exit_code


def finish(produce, as_json: bool, render, check: bool = False) -> int:
    """The one exit path: produce a report, say its warnings and errors on stderr (one line each),
    print it as text (`render`; the errors after it) or as one JSON object, and return its exit
    code; a BinfmtdError becomes one line on stderr (and the error object with --json) and its code."""
    try:
        report = produce()
    except BinfmtdError as exc:
        return fail(str(exc), exc.exit_code, as_json, check)
    for warning in report.warnings:
        say("warning", warning)
    if as_json:
        for message in report.error_messages:
            say("error", message)
        print_json({**report.to_json(), "warnings": list(dict.fromkeys(report.warnings))})
    else:
        render(report)
        for message in report.error_messages:
            say("error", message)
    return EXIT_OK if report.ok else EXIT_FAILED


def table(rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([str(cell).ljust(width) for cell, width in zip(row, widths)] + [str(row[-1])]).rstrip())


def render_change(report) -> None:
    rows = [["TARGET", "PLATFORM", "ACTION", "REASON"]]
    for r in report.results:
        would = "would be " if report.check and r.action not in ("unchanged", "skipped") else ""
        rows.append([r.target, r.platform or "-", would + r.action, r.reason])
    table(rows)


def render_status(report) -> None:
    misc = report.binfmt_misc
    where = "private user-namespace table" if misc.private else "host table"
    state = ("mounted, " + ("enabled" if misc.enabled else "DISABLED")) if misc.mounted else "NOT MOUNTED"
    print(f"binfmt_misc: {misc.path} {state} ({where})")
    if not report.entries:
        print("no entries registered")
        return
    rows = [["NAME", "TARGET", "PLATFORM", "STATE", "FLAGS", "OWNER", "QEMU", "INTERPRETER"]]
    rows += [[e.name, e.target or "-", e.platform or "-", "enabled" if e.enabled else "disabled", e.flags or "-",
              e.owner, _shown_version(e), printable(e.interpreter)]  # printable: a newline must not split a row
             for e in report.entries]
    table(rows)
    for e in report.entries:  # an emulator replaced or removed on disk since registration
        if e.emulator.drift:
            say("warning", f"{e.name}: {e.emulator.note}")


def _shown_version(entry) -> str:
    """The QEMU an entry runs; `(on disk)` where only the file on disk is known: another tool's F
    entry may still run an older file it pinned (binfmtd verify shows which)."""
    version = entry.qemu_version or "-"
    unsure = entry.emulator.version_of == "disk" and "F" in entry.flags
    return f"{version} (on disk)" if unsure and entry.qemu_version else version


def render_check(report) -> None:
    for c in report.checks:
        print(f"{'ok' if c.ok else 'FAIL':4}  {c.name}: {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else ""))


def render_targets(report) -> None:
    rows = [["TARGET", "PLATFORMS", "FAMILY", "NATIVE"]]
    rows += [[t.target, ",".join(t.platforms) or "-", t.family, "yes" if t.native else ""] for t in report.targets]
    table(rows)


def render_processes(report) -> None:
    if not report.processes:
        print("no process runs under a binfmt_misc entry")
        return
    rows = [["TARGET", "PID", "USER", "CPU", "RSS", "CONTAINER", "EMULATOR", "COMMAND"]]
    rows += [[p.target or p.entry, p.pid, p.user or "-", f"{p.cpu_seconds:.2f}s", f"{p.rss_bytes / 2**20:.1f}M",
              (p.container or "-")[:12], "DELETED" if p.emulator_deleted else "current", " ".join(p.command)]
             for p in report.processes]
    table(rows)
    print(", ".join(f"{t['target']}: {t['processes']} ({t['cpu_seconds']:.2f}s CPU)" for t in report.targets))


def render_verify(report) -> None:
    rows = [["TARGET", "PLATFORM", "RESULT", "MACHINE", "SECONDS", "QEMU"]]
    rows += [[r["target"], r["platform"] or "-", "ok" if r["ok"] else "FAILED", r["machine"] or "-",
              f"{r['seconds']:.2f}", (r["emulator"] or {}).get("version") or "-"] for r in report.results]
    print(f"engine: {report.engine}")
    table(rows)
    for r in report.results:
        if not r["ok"]:
            print(f"{r['target']}: {r['error']}\n  cause: {r['cause']}\n  fix: {r['fix']}")


def render_export(report) -> None:
    for item in report.files:
        print(item["path"])


def render_text(report) -> None:
    print(report.text, end="")
