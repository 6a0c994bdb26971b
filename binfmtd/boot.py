"""The boot path: `binfmtd apply ...` and `binfmtd daemon` as systemd and Ansible run them,
without importing typer, whose import (click, pydantic) costs several times the whole apply and
doubles the daemon's memory. Only the plain spellings of their options are taken here; anything
else (--help, --flags=X, unknown options) returns None and goes to the full CLI, so both paths
call the same function and print the same output."""

from __future__ import annotations

VALUE_OPTIONS = {"--flags": "flags", "--config": "config_file"}
SWITCHES = {"--all": "all_targets", "--force": "force", "--check": "check", "--json": "as_json"}


def parse_apply(argv: list[str]) -> dict | None:
    if not argv or argv[0] != "apply":
        return None
    options: dict = {"names": [], "flags": None, "config_file": None, **{v: False for v in SWITCHES.values()}}
    args = iter(argv[1:])
    for arg in args:
        if arg in SWITCHES:
            options[SWITCHES[arg]] = True
        elif arg in VALUE_OPTIONS:
            value = next(args, None)
            if value is None:
                return None
            options[VALUE_OPTIONS[arg]] = value
        elif arg.startswith("-"):
            return None
        else:
            options["names"].append(arg)
    return options


def parse_daemon(argv: list[str]) -> dict | None:
    if argv == ["daemon"]:
        return {"config_file": None}
    if len(argv) == 3 and argv[:2] == ["daemon", "--config"]:
        return {"config_file": argv[2]}
    return None


def run_apply(options: dict) -> int:
    from binfmtd import commands
    from binfmtd.output import finish_change

    as_json = options.pop("as_json")
    names = options.pop("names")
    return finish_change(lambda: commands.apply(names, **options), as_json, options["check"])
