"""Export: the entries `apply` would register, written as files for the tools a distribution
already runs at boot, so a host can keep its registrations without binfmtd installed.

- `binfmt.d`: DEST/<name>.conf with one register line, read by systemd-binfmt from
  /etc/binfmt.d (binfmt.d(5)); the line is exactly the one `apply` writes.
- `binfmt-support`: DEST/<name>, a format file for `update-binfmts --importdir DEST --import
  <name>` (update-binfmts(8), FORMAT FILES).

Rendering is pure (`render_binfmt_d`, `render_binfmt_support`); `export_entries` computes the
entries, renders every file before it writes any, then writes each atomically.
"""

from __future__ import annotations

import os

from binfmtd import __version__
from binfmtd.config import desired_targets, resolve_settings
from binfmtd.entry import Entry, escape, normalize_flags
from binfmtd.errors import BinfmtdError, UsageError
from binfmtd.facts.host import read_kernel
from binfmtd.facts.interpreters import read_interpreter
from binfmtd.facts.native import read_native
from binfmtd.plan import interpreter_refused, native_reason, no_interpreter_reason, target_entry
from binfmtd.records import dataclass, field
from binfmtd.report import Report
from binfmtd.state.files import write_atomic
from binfmtd.targets import BY_ENTRY_NAME
from binfmtd.trust import read_user_fuse_mounts

BINFMT_D, BINFMT_SUPPORT = "binfmt.d", "binfmt-support"
FORMATS = (BINFMT_D, BINFMT_SUPPORT)
PACKAGE = "binfmtd"  # update-binfmts' owner of the format; --unimport and --display show it


@dataclass
class ExportReport(Report):
    format: str
    dest: str
    files: list[dict]  # {"target", "platform", "name", "path"} of each file written
    skipped: list[str]  # "target: why it has no file"
    warnings: list[str] = field(default_factory=list)


def binfmt_d_file_name(entry: Entry) -> str:
    return f"{entry.name}.conf"  # systemd-binfmt reads only *.conf


def render_binfmt_d(entry: Entry) -> str:
    # '#' starts a comment in binfmt.d; systemd-binfmt writes every other line to register verbatim.
    return (f"# Written by binfmtd {__version__} (binfmtd export --format binfmt.d); "
            "systemd-binfmt registers it at boot.\n"
            f"{entry.register_line()}\n")


def binfmt_support_flags_problem(flags: str) -> str | None:
    """Why update-binfmts cannot produce these kernel flags, or None.

    A format file has three switches, and update-binfmts turns them into kernel flags so
    (checked with binfmt-support 2.2 on Linux 6.18): `preserve yes` -> P, `fix_binary yes` -> F,
    `credentials yes` -> C, to which the kernel adds O. There is no switch for O alone.
    """
    flags = normalize_flags(flags)
    if "O" in flags and "C" not in flags:
        return (f"binfmt-support cannot express flags {flags!r}: update-binfmts has no open-binary "
                "option and sets O only together with C (credentials yes); pass --flags with C "
                f"({flags.replace('O', 'OC')}) or without O ({flags.replace('O', '') or 'no flags'}), "
                "or use --format binfmt.d")
    return None


def render_binfmt_support(entry: Entry) -> str:
    # No comment line: the format has none; the package field says who wrote the file.
    flags = normalize_flags(entry.flags)
    lines = [f"package {PACKAGE}", f"interpreter {entry.interpreter}"]
    if entry.extension is not None:
        lines.append(f"extension {entry.extension}")
    else:
        # Every byte escaped: update-binfmts decodes \xHH, and no raw byte can end the line.
        lines += [f"magic {escape(entry.magic)}", f"offset {entry.offset}"]
        if entry.mask:
            lines.append(f"mask {escape(entry.mask)}")
    lines += [f"credentials {'yes' if 'C' in flags else 'no'}",
              f"preserve {'yes' if 'P' in flags else 'no'}",
              f"fix_binary {'yes' if 'F' in flags else 'no'}"]
    return "\n".join(lines) + "\n"


def render(fmt: str, entry: Entry) -> tuple[str, str]:
    """(file name, content) of one entry in one format."""
    if fmt == BINFMT_D:
        return binfmt_d_file_name(entry), render_binfmt_d(entry)
    if problem := binfmt_support_flags_problem(entry.flags):
        raise UsageError(problem)
    return entry.name, render_binfmt_support(entry)


def written_by_binfmtd(path: str) -> bool | None:
    """Whether the file at `path` is one binfmtd exported (None: there is no file). Debian's
    qemu-user-static ships /usr/share/binfmts/qemu-<target> under the same names, and a file
    another package or the admin wrote is theirs to keep."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return False if os.path.lexists(path) else None
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096).splitlines()
    except OSError:
        return False
    return f"package {PACKAGE}" in head or any(line.startswith("# Written by binfmtd") for line in head)


def desired_entries(names=(), all_targets=False, flags: str | None = None,
                    config_file: str | None = None) -> tuple[list[Entry], list[str]]:
    """The entries `apply` would register on this host were its table empty, and why each other
    target is left out. An entry that cannot be made (an unsafe interpreter, a named target's
    missing one, a magic this kernel cannot take) fails the export as a whole."""
    settings = resolve_settings(config_file, flags)
    native = read_native(settings.state_dir, remember=False)[0]  # this boot's measurement, if apply made one
    targets, explicit = desired_targets(names, all_targets, settings.config, native)
    magic_size_limit, mounts = read_kernel().magic_size_limit, read_user_fuse_mounts()
    entries, skipped, errors = [], [], []
    for target in targets:
        interpreter = None if target.name in native else \
            read_interpreter(target.qemu, settings.interpreter_dirs, user_mounts=mounts)
        if interpreter is None:
            skipped.append(f"{target.name}: {native_reason(target, os.uname().machine)}")
        elif interpreter.path is None and not explicit:  # as apply says it: skipped, or for a named target
            skipped.append(f"{target.name}: {no_interpreter_reason(target, interpreter)}")
        elif interpreter.path is None:  # an error
            errors.append(no_interpreter_reason(target, interpreter))
        elif interpreter.problem:
            errors.append(interpreter_refused(target, interpreter))
        elif problem := (entry := target_entry(target, interpreter, settings.flags)).problem(magic_size_limit):
            errors.append(problem)
        else:
            entries.append(entry)
    if errors:
        raise BinfmtdError("; ".join(errors))
    return entries, skipped


def export_entries(fmt: str, dest: str, names=(), all_targets=False, flags: str | None = None,
                   config_file: str | None = None) -> ExportReport:
    """Write one file per entry `apply` would register into DEST (created if missing); other files
    in DEST are left alone. Nothing is written when any entry cannot be expressed or when a file
    binfmtd did not write already has an entry's name."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; allowed are {' and '.join(FORMATS)}")
    entries, skipped = desired_entries(names, all_targets, flags, config_file)
    rendered = [(entry, *render(fmt, entry)) for entry in entries]  # every problem before any write
    dest = os.path.abspath(dest)
    theirs = [os.path.join(dest, name) for _, name, _ in rendered
              if written_by_binfmtd(os.path.join(dest, name)) is False]
    if theirs:
        raise UsageError(f"{theirs[0]}{f' (and {len(theirs) - 1} more)' if len(theirs) > 1 else ''} was not "
                         f"written by binfmtd (Debian's qemu-user-static ships such files in /usr/share/binfmts); "
                         "binfmtd does not overwrite it: export to a directory of binfmtd's own, e.g. --dest "
                         "/etc/binfmtd/binfmts, and import from there (update-binfmts --importdir DIR --import NAME)")
    try:
        os.makedirs(dest, exist_ok=True)
        files = []
        for entry, file_name, content in rendered:
            path = os.path.join(dest, file_name)
            write_atomic(path, content)
            target = BY_ENTRY_NAME.get(entry.name)
            files.append({"target": target.name if target else None,
                          "platform": target.platform if target else None,
                          "name": entry.name, "path": path})
    except OSError as exc:
        where = exc.filename or dest
        raise BinfmtdError(f"cannot write to {where} ({exc.strerror}); pass a writable --dest") from None
    return ExportReport(fmt, dest, files, skipped)
