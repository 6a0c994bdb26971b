"""Settings: the config file ($BINFMTD_CONFIG, default /etc/binfmtd/binfmtd.toml), what the host
should look like, and the one resolver of what a command runs with (arguments, environment,
config file, defaults: in that order, here only). Every config error names the file, the line,
the key and what is allowed."""

from __future__ import annotations

import os
import stat

from binfmtd.entry import flags_problem, normalize_flags
from binfmtd.errors import UsageError
from binfmtd.facts.host import DEFAULT_BINFMT_MISC
from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS
from binfmtd.records import dataclass
from binfmtd.state.files import state_dir_from_env
from binfmtd.targets import TARGETS, Target, lookup

DEFAULT_CONFIG = "/etc/binfmtd/binfmtd.toml"
DEFAULT_FLAGS = "POCF"  # as in the field: QEMU's qemu-binfmt-conf.sh --persistent, tonistiigi/binfmt
CONTAINER_ENGINES = ("docker", "podman", "nerdctl")
ENGINES = ("auto", "sandbox", *CONTAINER_ENGINES)  # auto: the first container engine that answers, else sandbox
MAX_CONFIG_BYTES = 1 << 20  # a config is a few lines; more is a wrong path (a log, a device), not a config


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _seconds(low: float, high: float):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high


# (table, key) -> (check, what is allowed); table "" is the top level.
SCHEMA = {
    ("", "targets"): (lambda v: v == "all" or _strings(v), 'a list of targets or platforms, or "all"'),
    # flags = "" means no flags at all, as `--flags ''` does (leave the key out for the default POCF)
    ("", "flags"): (lambda v: isinstance(v, str) and not set(v.upper()) - set("POCF"),
                    'a string of binfmt_misc flags from P, O, C, F, e.g. "POCF", or "" for none'),
    # an empty list would search nowhere; leaving the key out means the default directories
    ("", "interpreter_dirs"): (lambda v: _strings(v) and bool(v) and all(d.startswith("/") for d in v),
                               "a non-empty list of absolute directory paths (leave the key out for the "
                               "default directories)"),
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


@dataclass(frozen=True)
class Settings:
    """What a command runs with, resolved once by resolve_settings."""

    config: Config | None
    binfmt_misc: str  # where binfmt_misc is mounted
    state_dir: str
    flags: str  # normalized
    flags_chosen: bool  # by --flags or the config, not the default
    interpreter_dirs: tuple[str, ...]
    verify_engine: str
    verify_timeout: float


def resolve_settings(config_file: str | None = None, flags: str | None = None, binfmt_misc: str | None = None,
                     state_dir: str | None = None) -> Settings:
    """The settings from `config_file`'s config, else $BINFMTD_CONFIG's, else the default
    file's if there is one (settings_from says the rest)."""
    return settings_from(load_config(config_file), flags, binfmt_misc, state_dir)


def settings_from(config: Config | None, flags: str | None = None, binfmt_misc: str | None = None,
                  state_dir: str | None = None) -> Settings:
    """The settings with a config already loaded (or none). Flags: --flags, else the config's
    `flags` ("" meaning none, as `--flags ''`), else DEFAULT_FLAGS."""
    values = config or Config("")  # no file: Config's defaults
    chosen = flags if flags is not None else values.flags
    used = DEFAULT_FLAGS if chosen is None else chosen
    if problem := flags_problem(used):
        raise UsageError(f"--flags: {problem}")
    return Settings(config, *resolve_paths(binfmt_misc, state_dir), normalize_flags(used), chosen is not None,
                    values.interpreter_dirs or DEFAULT_INTERPRETER_DIRS, values.verify_engine, values.verify_timeout)


def resolve_paths(binfmt_misc: str | None = None, state_dir: str | None = None) -> tuple[str, str]:
    """Where binfmt_misc is mounted and binfmtd's state directory ($BINFMTD_STATE_DIR)."""
    return binfmt_misc or DEFAULT_BINFMT_MISC, state_dir or state_dir_from_env()


def resolve_targets(names: list[str] | tuple[str, ...]) -> tuple[Target, ...]:
    """Targets from target names or platforms, in the table's order, without duplicates."""
    chosen, unknown = set(), []
    for name in names:
        if name.lower() == "all":
            chosen.update(t.name for t in TARGETS)
        elif target := lookup(name):
            chosen.add(target.name)
        else:
            unknown.append(name)
    if unknown:
        raise UsageError(f"unknown target or platform {', '.join(map(repr, unknown))}; "
                         "`binfmtd targets` lists them (e.g. aarch64 or linux/arm64)")
    return tuple(t for t in TARGETS if t.name in chosen)


def refuse_targets_with_all(names, all_targets: bool) -> None:
    if names and all_targets:
        raise UsageError(f"both targets ({' '.join(names)}) and --all given; name the targets or pass --all, "
                         "not both")


def desired_targets(names, all_targets: bool, config: Config | None,
                    native: tuple[str, ...]) -> tuple[tuple[Target, ...], bool]:
    """Which targets a command is about, and whether the user named them: arguments, else
    `--all`, else the config's targets, else every target this host cannot run natively."""
    refuse_targets_with_all(names, all_targets)
    if names:
        return resolve_targets(names), True
    if all_targets:
        return TARGETS, False
    if config and config.targets is not None:
        return resolve_targets(config.targets), False
    return tuple(t for t in TARGETS if t.name not in native), False


def config_path(explicit: str | None) -> tuple[str, bool]:
    """The config to read and whether the user named it (then it must exist)."""
    if explicit:
        return explicit, True
    if os.environ.get("BINFMTD_CONFIG"):
        return os.environ["BINFMTD_CONFIG"], True
    return DEFAULT_CONFIG, False


def load_config(explicit: str | None = None) -> Config | None:
    path, named = config_path(explicit)
    text = read_config_text(path, named)
    return None if text is None else parse_config(text, path)


def read_config_text(path: str, named: bool = True) -> str | None:
    """The config's text; None if an unnamed default is absent. Only a regular file is read (a
    FIFO would hang, a device never end), at most MAX_CONFIG_BYTES, and it must be UTF-8 (TOML is).
    Symlinks are followed: /etc files and Kubernetes ConfigMap mounts are often links."""
    fix = "point --config/BINFMTD_CONFIG at a TOML file"
    try:
        # stat before open: opening some devices does something (a watchdog, a tape); the fstat
        # below is what counts, as the name may change in between.
        if not stat.S_ISREG(mode := os.stat(path).st_mode):
            raise UsageError(f"config file {path} is not a regular file ({_kind(mode)}); {fix}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        if named:
            raise UsageError(f"config file {path} does not exist; create it or leave out --config/BINFMTD_CONFIG") from None
        return None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read ({exc.strerror}); {fix}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"config file {path} is not a regular file ({_kind(mode)}); {fix}")
        data = b""
        while len(data) <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read ({exc.strerror}); {fix}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; {fix}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "TOML files are UTF-8: save it as UTF-8 or remove the byte") from None


def _kind(mode: int) -> str:
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a file")


def parse_config(text: str, path: str = "<config>") -> Config:
    if _blank_or_comments(text):
        return Config(path)
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level of arrays and inline tables
        raise UsageError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
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
    unknown = [t for t in values.get("targets", ()) if t.lower() != "all" and lookup(t) is None]
    if unknown:
        raise UsageError(f"{path}:{_line_of(text, '', 'targets')}: targets: unknown target or platform "
                         f"{', '.join(map(repr, unknown))}; `binfmtd targets` lists them")
    return Config(path, **values)


# What a TOML comment may not hold (the spec allows tab): tomllib decides about such a file.
_CONTROL_CHARACTERS = frozenset(chr(c) for c in (*range(0x09), *range(0x0a, 0x20), 0x7f))


def _blank_or_comments(text: str) -> bool:
    """Whether TOML text holds only blank lines and valid comments, as the shipped config does:
    it sets nothing, and tomllib (about 5 ms of imports) stays off the boot path. Anything else,
    a stray control character included, goes to tomllib to be parsed or refused."""
    for line in text.split("\n"):
        line = line.removesuffix("\r").lstrip(" \t")
        if (line and not line.startswith("#")) or not _CONTROL_CHARACTERS.isdisjoint(line):
            return False
    return True


def _items(data: dict):
    for key, value in data.items():
        if key in TABLES and isinstance(value, dict):
            for sub, subvalue in value.items():
                yield key, sub, subvalue
        else:
            yield "", key, value


def _line_of(text: str, table: str, key: str) -> int:
    """The line a key is on, within its [table] when it has one (for error messages)."""
    import re  # only for an error message

    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            current = header.group(1)
        elif current == table and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1
