"""The boot path: `binfmtd apply ...` and `binfmtd daemon` as systemd and Ansible run them, and
the JSON queries that Ansible, the metrics textfile and scripts call over and over (`status
--json`, `check --json`, `targets --json`, `verify --json`), without importing typer, whose
import (click, pydantic) costs several times the whole apply and doubles the daemon's memory.
Only the plain spellings of their options are taken here; anything else (--help, --flags=X,
unknown options) returns None and goes to the full CLI, so both paths call the same function and
print the same output."""

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
    from binfmtd.cli.render import finish, render_change
    from binfmtd.commands.change import apply

    as_json = options.pop("as_json")
    names = options.pop("names")
    return finish(lambda: apply(names, **options), as_json, render_change, options["check"])


# The queries' value options: option -> (key, how the value is read); a value that does not read
# (a --timeout that is no number) goes to the full CLI, which says what is wrong.
QUERY_VALUES = {"check": {"--config": ("config_file", str)},
                "verify": {"--config": ("config_file", str), "--engine": ("engine", str), "--image": ("image", str),
                           "--timeout": ("timeout", float)}}


def parse_query(argv: list[str]) -> dict | None:
    """`status --json` (or `--format json`), `check --json [--config FILE] [TARGET]...`,
    `targets --json` and `verify --json [--all] [--engine E] [--image REF] [--timeout S]
    [--config FILE] [TARGET]...`; their text forms go to the full CLI, which renders them."""
    if not argv or argv[0] not in ("status", "check", "targets", "verify"):
        return None
    command, args = argv[0], iter(argv[1:])
    values = QUERY_VALUES.get(command, {})
    options: dict = {"command": command, "names": [], "all_targets": False, "config_file": None, "engine": None,
                     "image": None, "timeout": None}
    as_json = False
    for arg in args:
        if arg == "--json" or (command == "status" and arg == "--format" and next(args, None) == "json"):
            as_json = True
        elif command == "verify" and arg == "--all":
            options["all_targets"] = True
        elif arg in values and (value := _read(next(args, None), values[arg][1])) is not None:
            options[values[arg][0]] = value
        elif command in ("check", "verify") and not arg.startswith("-"):
            options["names"].append(arg)
        else:
            return None
    return options if as_json else None


def _read(value: str | None, kind):
    try:
        return None if value is None else kind(value)
    except ValueError:
        return None


def run_query(options: dict) -> int:
    from binfmtd.cli.render import finish

    command, names = options["command"], tuple(options["names"])
    if command == "status":
        from binfmtd.commands.status import status
        return finish(status, True, None)
    if command == "check":
        from binfmtd.commands.check import check
        return finish(lambda: check(names, options["config_file"]), True, None)
    if command == "verify":
        from binfmtd.verify.run import verify
        return finish(lambda: verify(names, options["all_targets"], options["engine"], options["image"],
                                     options["config_file"], options["timeout"]), True, None)
    from binfmtd.commands.status import list_targets
    return finish(list_targets, True, None)
