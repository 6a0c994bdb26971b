"""The config file ($BINFMTD_CONFIG, default /etc/binfmtd/binfmtd.toml): what the host should
look like. Every error names the file, the line, the key and what is allowed."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from binfmtd.errors import UsageError

DEFAULT_CONFIG = "/etc/binfmtd/binfmtd.toml"
ENGINES = ("auto", "sandbox", "docker", "podman", "nerdctl")


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _seconds(low: float, high: float):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high


# (table, key) -> (check, what is allowed); table "" is the top level.
SCHEMA = {
    ("", "targets"): (lambda v: v == "all" or _strings(v), 'a list of targets or platforms, or "all"'),
    ("", "flags"): (lambda v: isinstance(v, str) and not set(v.upper()) - set("POCF"),
                    'a string of binfmt_misc flags from P, O, C, F, e.g. "POCF"'),
    ("", "interpreter_dirs"): (lambda v: _strings(v) and all(d.startswith("/") for d in v),
                               "a list of absolute directory paths"),
    ("daemon", "interval"): (_seconds(0.1, 3600), "seconds between drift checks, 0.1 to 3600"),
    ("daemon", "textfile"): (lambda v: isinstance(v, str) and v.startswith("/"),
                             "an absolute path for Prometheus' textfile collector"),
    ("verify", "engine"): (lambda v: v in ENGINES, "one of " + ", ".join(ENGINES)),
    ("verify", "timeout"): (_seconds(1, 600), "seconds per probe, 1 to 600"),
}
TABLES = {"daemon", "verify"}


@dataclass(frozen=True)
class Config:
    path: str
    targets: tuple[str, ...] | None = None  # None: not set; ("all",): every target
    flags: str | None = None
    interpreter_dirs: tuple[str, ...] | None = None
    daemon_interval: float = 2.0
    daemon_textfile: str | None = None
    verify_engine: str = "auto"
    verify_timeout: float = 20.0


def config_path(explicit: str | None) -> tuple[str, bool]:
    """The config to read and whether the user named it (then it must exist)."""
    if explicit:
        return explicit, True
    if os.environ.get("BINFMTD_CONFIG"):
        return os.environ["BINFMTD_CONFIG"], True
    return DEFAULT_CONFIG, False


def load_config(explicit: str | None = None) -> Config | None:
    path, named = config_path(explicit)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if named:
            raise UsageError(f"config file {path} does not exist; create it or leave out --config/BINFMTD_CONFIG") from None
        return None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read ({exc.strerror})") from None
    return parse_config(text, path)


def parse_config(text: str, path: str = "<config>") -> Config:
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    values: dict[str, object] = {}
    for table, key, value in _items(data):
        where = f"{path}:{_line_of(text, table, key)}: {table + '.' if table else ''}{key}"
        if (table, key) not in SCHEMA:
            allowed = ", ".join(f"{t + '.' if t else ''}{k}" for t, k in SCHEMA)
            raise UsageError(f"{where}: unknown key; allowed keys are {allowed}")
        check, allowed = SCHEMA[(table, key)]
        if not check(value):
            raise UsageError(f"{where}: got {value!r}; expected {allowed}")
        values[f"{table}_{key}" if table else key] = tuple(value) if isinstance(value, list) else value
    if values.get("targets") == "all":
        values["targets"] = ("all",)
    from binfmtd.targets import lookup

    unknown = [t for t in values.get("targets", ()) if t.lower() != "all" and lookup(t) is None]
    if unknown:
        raise UsageError(f"{path}:{_line_of(text, '', 'targets')}: targets: unknown target or platform "
                         f"{', '.join(map(repr, unknown))}; `binfmtd targets` lists them")
    return Config(path, **values)


def _items(data: dict):
    for key, value in data.items():
        if key in TABLES and isinstance(value, dict):
            for sub, subvalue in value.items():
                yield key, sub, subvalue
        else:
            yield "", key, value


def _line_of(text: str, table: str, key: str) -> int:
    """The line a key is on, within its [table] when it has one (for error messages)."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            current = header.group(1)
        elif current == table and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1
