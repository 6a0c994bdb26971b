"""The config file ($BINFMTD_CONFIG, default /etc/binfmtd/binfmtd.toml): what the host should
look like. Every error names the file, the line, the key and what is allowed."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from binfmtd.errors import UsageError

DEFAULT_CONFIG = "/etc/binfmtd/binfmtd.toml"
KEYS = {
    "targets": 'a list of targets or platforms, or "all"',
    "flags": 'a string of binfmt_misc flags from P, O, C, F, e.g. "POCF"',
    "interpreter_dirs": "a list of absolute directory paths",
}


@dataclass(frozen=True)
class Config:
    path: str
    targets: tuple[str, ...] | None = None  # None: not set; ("all",): every target
    flags: str | None = None
    interpreter_dirs: tuple[str, ...] | None = None


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

    def fail(key: str, problem: str) -> UsageError:
        return UsageError(f"{path}:{_line_of(text, key)}: {key}: {problem}; expected {KEYS[key]}")

    for key in data:
        if key not in KEYS:
            raise UsageError(f"{path}:{_line_of(text, key)}: unknown key {key!r}; allowed keys are "
                             + ", ".join(KEYS))
    targets = data.get("targets")
    if targets is not None:
        if targets == "all":
            targets = ["all"]
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise fail("targets", f"got {targets!r}")
    flags = data.get("flags")
    if flags is not None:
        if not isinstance(flags, str) or set(flags.upper()) - set("POCF"):
            raise fail("flags", f"got {flags!r}")
    dirs = data.get("interpreter_dirs")
    if dirs is not None:
        if not isinstance(dirs, list) or not all(isinstance(d, str) and d.startswith("/") for d in dirs):
            raise fail("interpreter_dirs", f"got {dirs!r}")
    return Config(path, tuple(targets) if targets is not None else None, flags,
                  tuple(dirs) if dirs is not None else None)


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1
