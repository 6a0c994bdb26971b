"""binfmt_misc entries: the register line binfmtd writes and the entry file the kernel prints.

Pure functions only; reading and writing the files is binfmtd.facts.host's and binfmtd.act's job.
"""

from __future__ import annotations

from binfmtd.records import dataclass
from binfmtd.targets import claims
from binfmtd.trust import UntrustedPath, resolve_trusted

FLAG_ORDER = "POCF"  # the order the kernel prints them in
REGISTER_FILE, STATUS_FILE = "register", "status"
CONTROL_FILES = (REGISTER_FILE, STATUS_FILE)  # binfmt_misc's own files; every other name is an entry
RESERVED_NAMES = ("", ".", "..", *CONTROL_FILES)


def normalize_flags(flags: str) -> str:
    """Flags in the kernel's order; `C` implies `O` in the kernel, so it does here too."""
    wanted = set(flags.upper())
    if "C" in wanted:
        wanted.add("O")
    return "".join(f for f in FLAG_ORDER if f in wanted)


def flags_problem(flags: str) -> str | None:
    bad = sorted(set(flags.upper()) - set(FLAG_ORDER))
    if bad:
        return f"unknown flag(s) {''.join(bad)!r} in {flags!r}; allowed are P, O, C and F"
    return None


@dataclass(frozen=True)
class Entry:
    """One registration, as binfmtd writes it or as the kernel shows it."""

    name: str
    interpreter: str
    flags: str = ""
    offset: int = 0
    magic: bytes = b""
    mask: bytes = b""
    enabled: bool = True
    extension: str | None = None  # type E entries match a file name extension, not magic

    def masked(self) -> Entry:
        """Magic under its mask: the kernel compares only those bits, so entries equal in this
        form claim the same files (QEMU's magic has bytes its mask ignores, other tools zero them)."""
        if not self.mask:
            return self
        magic = bytes(m & k for m, k in zip(self.magic, self.mask))
        return Entry(self.name, self.interpreter, self.flags, self.offset, magic, self.mask,
                     self.enabled, self.extension)

    def same_registration(self, other: Entry) -> bool:
        """Equal in what the kernel does with it: magic, mask, offset, flags, interpreter
        (root-owned symlinks resolved)."""
        a, b = self.masked(), other.masked()
        return (
            (a.magic, a.mask, a.offset, a.extension) == (b.magic, b.mask, b.offset, b.extension)
            and normalize_flags(a.flags) == normalize_flags(b.flags)
            and same_interpreter(a.interpreter, b.interpreter)
        )

    def register_line(self) -> str:
        """The line written to binfmt_misc/register: `:name:type:offset:magic:mask:interp:flags`."""
        if self.extension is not None:
            return f":{self.name}:E::{self.extension}::{self.interpreter}:{self.flags}"
        return (f":{self.name}:M:{self.offset or ''}:{escape(self.magic)}:{escape(self.mask)}:"
                f"{self.interpreter}:{normalize_flags(self.flags)}")

    def problem(self, size_limit: int = 256) -> str | None:
        """Why the kernel would refuse this entry (fs/binfmt_misc.c create_entry), or None."""
        if self.name in RESERVED_NAMES or "/" in self.name:
            return f"entry name {self.name!r} is not allowed (empty, '.', '..', 'register', 'status' or containing '/')"
        if ":" in self.name or _control_characters(self.name):
            return f"entry name '{printable(self.name)}' contains ':' or a control character"
        if problem := interpreter_text_problem(self.interpreter):
            return f"{self.name}: interpreter path {printable(self.interpreter)} {problem}"
        if problem := flags_problem(self.flags):
            return f"{self.name}: {problem}"
        if not self.interpreter.startswith("/"):
            return f"{self.name}: interpreter {self.interpreter!r} must be an absolute path"
        if self.extension is None:
            if not self.magic:
                return f"{self.name}: magic is empty"
            if self.mask and len(self.mask) != len(self.magic):
                return f"{self.name}: mask is {len(self.mask)} bytes but magic is {len(self.magic)}; they must be equally long"
            if self.offset + len(self.magic) > size_limit:
                return (f"{self.name}: offset plus magic is {self.offset + len(self.magic)} bytes, more than this "
                        f"kernel's {size_limit}-byte limit")
        return None

    def claims(self, header: bytes) -> bool:
        if self.extension is not None or not self.enabled:
            return False
        return claims(self.magic, self.mask or b"\xff" * len(self.magic), self.offset, header)


def interpreter_text_problem(path: str) -> str | None:
    """Why binfmt_misc cannot hold `path` faithfully as an interpreter ("contains ..."), or None.
    ':' ends the field in the register line; a newline or other control character is stored,
    but the entry file the kernel prints splits or garbles it: status, remove, export misread it."""
    if ":" in path:
        return "contains ':', which separates a register line's fields"
    if bad := _control_characters(path):
        return (f"contains {bad}, which the kernel's entry file cannot show faithfully (status, remove and "
                "export would misread it)")
    return None


def _control_characters(text: str) -> str:
    if text.isprintable():  # the common case, in C; it is also False for some harmless non-ASCII
        return ""
    bad = sorted({c for c in text if ord(c) < 0x20 or ord(c) == 0x7F})
    return ", ".join("a newline" if c == "\n" else f"control character {printable(c)}" for c in bad)


def printable(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x01), so a message about it stays one line."""
    return "".join(c if 0x20 <= ord(c) != 0x7F else repr(c)[1:-1] for c in text)


def same_interpreter(a: str, b: str) -> bool:
    """The same path, or two paths naming the same file through symlinks root alone controls.
    A path through a link someone else could re-point is not the same as where it points now."""
    if a == b:
        return True
    try:
        return resolve_trusted(a) == resolve_trusted(b)
    except UntrustedPath:
        return False


def escape(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def parse_entry(name: str, text: str) -> Entry:
    """An entry from the text of /proc/sys/fs/binfmt_misc/<name> (fs/binfmt_misc.c entry_status)."""
    enabled, interpreter, flags, offset, magic, mask, extension = True, "", "", 0, b"", b"", None
    in_interpreter = False  # the kernel prints an interpreter path with newlines across lines
    for line in text.split("\n"):
        key, _, value = line.partition(" ")
        if in_interpreter and key != "flags:":
            interpreter += "\n" + line
            continue
        in_interpreter = False
        if line in ("enabled", "disabled"):
            enabled = line == "enabled"
        elif key == "interpreter":
            interpreter, in_interpreter = value, True
        elif key == "flags:":
            flags = value.strip()
        elif key == "offset":
            offset = int(value)
        elif key == "magic":
            magic = bytes.fromhex(value)
        elif key == "mask":
            mask = bytes.fromhex(value)
        elif key == "extension":
            extension = value.removeprefix(".")
    return Entry(name, interpreter, flags, offset, magic, mask, enabled, extension)


def parse_register_line(line: str) -> Entry:
    """An entry from a register line (as stored in binfmtd's state), the inverse of register_line."""
    line = line.strip()
    sep = line[:1]
    fields = line[1:].split(sep)
    if not sep or len(fields) not in (6, 7):
        raise ValueError(f"not a binfmt_misc register line: {line!r}")
    name, kind, offset, magic, mask, interpreter, *flags = fields
    flags_text = flags[0] if flags else ""
    if kind == "E":
        return Entry(name, interpreter, flags_text, extension=magic)
    return Entry(name, interpreter, flags_text, int(offset or 0), unescape(magic), unescape(mask))


def unescape(text: str) -> bytes:
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")
