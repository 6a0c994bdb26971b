"""Interpreter facts: where each target's QEMU is, and the one verdict on whether binfmtd may
hand it to the kernel as root: root alone controls its whole path (a file, directory or link
any non-root user can change is a root shell), it is a statically linked QEMU, and binfmt_misc
can store its path. What gets registered is the resolved path, so no link is left to re-point."""

from __future__ import annotations

import os
import stat
import struct

from binfmtd.entry import interpreter_text_problem, printable
from binfmtd.records import dataclass, replace
from binfmtd.trust import UntrustedPath, resolve_trusted

# The last one is where binfmtd's container image keeps its emulators (binfmtd/image.py); no host has it.
DEFAULT_INTERPRETER_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/libexec/qemu-binfmt", "/usr/libexec/binfmtd-image")
PT_INTERP = 3


@dataclass(frozen=True)
class Interpreter:
    """The one verdict on a target's interpreter: `check`, `apply`, `export` and `verify` all
    judge it through read_interpreter, so they cannot disagree."""

    path: str | None  # as found in interpreter_dirs; None: not found
    static: bool = False
    problem: str | None = None  # why it may not be registered (one line), None when it may
    fix: str | None = None  # what to do about the problem
    resolved: str | None = None  # what binfmtd registers: no symlinks left, every component root's
    banner: str | None = None  # QEMU's version line, as stored in the file
    identity: dict | None = None  # which file it is now (emulator_identity): what an F entry would pin

    @property
    def shown(self) -> str:
        """The path as found, and where it leads when that is elsewhere."""
        path = printable(self.path or "")
        return f"{path} -> {printable(self.resolved)}" if self.resolved and self.resolved != self.path else path

    @property
    def described(self) -> str:
        """The problem, naming the path once (for messages: one line, control characters escaped):
        a problem that names the file itself is not prefixed with its path again."""
        problem, path = self.problem or "", printable(self.path or "")
        return f"{path}: {problem}" if path and path not in problem else problem


INSTALL_FIX = "install qemu-user-static (apt-get install qemu-user-static) or set interpreter_dirs"


class Refused(Exception):
    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def candidate_names(qemu: str) -> tuple[str, ...]:
    return (f"qemu-{qemu}-static", f"qemu-{qemu}")


def find_interpreter(qemu: str, dirs: tuple[str, ...] = DEFAULT_INTERPRETER_DIRS) -> str | None:
    """The first `qemu-<target>-static`, then `qemu-<target>`, in the search path."""
    for name in candidate_names(qemu):
        for directory in dirs:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    return None


def read_interpreter(qemu: str, dirs: tuple[str, ...] = DEFAULT_INTERPRETER_DIRS) -> Interpreter:
    """The verdict on target `qemu`'s interpreter: found, controlled by root alone, a static
    QEMU, and storable in binfmt_misc; with the resolved path to register."""
    path = find_interpreter(qemu, dirs)
    if path is None:
        return Interpreter(None, problem=f"qemu-{qemu}-static not found in {':'.join(dirs)}", fix=INSTALL_FIX)
    judged = judge_interpreter(path)
    if judged.problem is None:  # stat only; add_versions asks the QEMU version when it is needed
        judged = replace(judged, identity=emulator_identity(judged.resolved, version=False))
    return judged


def judge_interpreter(path: str) -> Interpreter:
    try:
        resolved = trusted_executable(path)
        with open(resolved, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF":
                raise Refused(f"{printable(resolved)} is not an ELF executable, so not QEMU's user-mode emulator",
                              INSTALL_FIX)
            if not parse_elf_is_static(header, _reader(f)):
                raise Refused(f"{printable(resolved)} is dynamically linked: containers and chroots cannot load "
                              "it", "install qemu-user-static (its emulators are statically linked)")
            banner = find_qemu_banner(header, _reader(f))
            if banner is None:
                raise Refused(f"{printable(resolved)} is not QEMU (it lacks the version banner every QEMU "
                              "carries)", INSTALL_FIX)
    except Refused as refused:
        return Interpreter(path, problem=refused.problem, fix=refused.fix)
    except OSError as exc:
        return Interpreter(path, problem=f"cannot be read ({exc.strerror})", fix=INSTALL_FIX)
    return Interpreter(path, True, resolved=resolved, banner=banner)


def safety_problem(path: str) -> str | None:
    """Why `path` may not be handed to the kernel as root, or None: see trusted_executable."""
    try:
        trusted_executable(path)
    except Refused as refused:
        return refused.problem
    return None


def trusted_executable(path: str) -> str:
    """`path` resolved, if binfmt_misc can store it and root alone controls every component
    (binfmtd.trust) and it names an executable regular file; else Refused, naming the component
    at fault and the fix."""
    rename = "use a path without ':' or control characters (rename it, or set interpreter_dirs)"
    if problem := interpreter_text_problem(path):
        raise Refused(problem, rename)
    try:
        resolved = resolve_trusted(path)
    except UntrustedPath as exc:
        raise Refused(printable(exc.reason), _trust_fix(exc)) from None
    if problem := interpreter_text_problem(resolved):  # a root-owned link may lead to such a name
        raise Refused(f"resolves to {printable(resolved)}, which {problem}", rename)
    try:
        st = os.lstat(resolved)
    except OSError as exc:  # removed since the walk
        raise Refused(f"{printable(resolved)} cannot be read ({exc.strerror})", INSTALL_FIX) from None
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{printable(resolved)} is not a regular file", INSTALL_FIX)
    if not st.st_mode & 0o111:
        raise Refused(f"{printable(resolved)} is not executable", f"chmod 755 {printable(resolved)}")
    return resolved


def _trust_fix(exc: UntrustedPath) -> str:
    elsewhere = "set interpreter_dirs to a directory only root controls"
    return f"{printable(exc.fix)}, or {elsewhere}" if exc.fix else f"install qemu-user-static, or {elsewhere}"


def _reader(f):
    def read_at(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)
    return read_at


def parse_elf_is_static(header: bytes, read_at) -> bool:
    """Whether an ELF has no PT_INTERP program header (statically linked, or static-pie).
    `read_at(offset, size)` reads the rest of the file; the parse itself does no I/O."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return False
    is64, endian = header[4] == 2, "<" if header[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(endian + "Q", header, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
    else:
        phoff, = struct.unpack_from(endian + "I", header, 28)
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 42)
    table = read_at(phoff, phentsize * phnum)
    if phentsize < 4 or len(table) < phentsize * phnum:
        return False  # truncated: not something the kernel could run anyway
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == PT_INTERP:
            return False
    return True


# Every QEMU of the last decade prints this in --version (QEMU_COPYRIGHT) and so carries it in
# its read-only data, right after the "qemu-<target> version X" line. Looking for it is how binfmtd
# tells QEMU from another binary without running anything as root: a cheap test against a
# mistake (a shell copied into place), not a defence against root, who controls the file anyway
# (every component is root's by then); an attacker controls nothing on that path.
QEMU_SIGNATURE = b"Fabrice Bellard and the QEMU Project developers"
CHUNK = 128 << 10  # QEMU 7.2's banner lies 30-600 KiB into .rodata: read a little at a time


def find_qemu_banner(header: bytes, read_at) -> str | None:
    """QEMU's version line ("qemu-aarch64 version 7.2.22 (Debian ...)") stored in the ELF, or
    None when the file lacks QEMU's signature. Looks in .rodata first (a few hundred KiB in,
    so a few reads), then anywhere in the file."""
    rodata = parse_elf_section(header, read_at, b".rodata")
    places = [rodata] if rodata else []
    for start, size in places + [(0, None)]:
        position = _search(read_at, QEMU_SIGNATURE, start, size)
        if position is not None:
            window_start = max(0, position - 256)
            window = read_at(window_start, position - window_start)
            line = window[window.rfind(b"\0") + 1:].split(b"\n")[0].decode("utf-8", "replace")
            return printable(line) if line.startswith("qemu-") else "QEMU"
    return None


def _search(read_at, needle: bytes, start: int, size: int | None) -> int | None:
    offset, end = start, None if size is None else start + size
    while end is None or offset < end:
        length = CHUNK if end is None else min(CHUNK, end - offset)
        data = read_at(offset, length + len(needle) - 1)
        found = data.find(needle)
        if found >= 0:
            return offset + found
        if len(data) < length + len(needle) - 1:
            return None  # end of file
        offset += length
    return None


def parse_elf_section(header: bytes, read_at, name: bytes) -> tuple[int, int] | None:
    """(file offset, size) of the ELF section called `name`, or None (no such section, or no
    section headers at all: they are optional)."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return None
    is64, endian = header[4] == 2, "<" if header[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", header, 40)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 58)
        layout = endian + "II8xQQQ"  # sh_name, sh_type, (sh_flags), sh_addr, sh_offset, sh_size
    else:
        shoff, = struct.unpack_from(endian + "I", header, 32)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 46)
        layout = endian + "II4xIII"
    if not shoff or not shnum or shstrndx >= shnum or shentsize < struct.calcsize(layout):
        return None
    table = read_at(shoff, shentsize * shnum)
    if len(table) < shentsize * shnum:
        return None
    sections = [struct.unpack_from(layout, table, i * shentsize) for i in range(shnum)]
    _, _, _, names_offset, names_size = sections[shstrndx]
    names = read_at(names_offset, names_size)
    for sh_name, _, _, offset, size in sections:
        if names[sh_name:names.find(b"\0", sh_name)] == name:
            return offset, size
    return None


def qemu_version(path: str) -> str | None:
    """The version `path --version` would print, read from the banner stored in the file."""
    identity = emulator_identity(path)
    return identity and identity["version"]


# -- which file an emulator is ------------------------------------------------------------------
# With F the kernel opens the emulator at registration and keeps that very file (inode) for the
# entry's lifetime: a package upgrade renames a new file over the path and the entry goes on
# running the old one. So binfmtd records the file it registered (device, inode, size, mtime:
# a rename or an in-place rewrite changes one of them) and the QEMU version it states, and
# compares that with the path now. The version is read from the banner QEMU stores in its
# read-only data (what `--version` prints, found without running anything: a fraction of a
# millisecond against a process's 20-30 ms, which kept a fresh boot's apply slow).

_versions: dict[tuple, str | None] = {}


def looks_like_qemu(path: str) -> bool:
    """Only QEMU has a version to read: an entry's interpreter may be anything (FEX, box64, a
    script), and large non-QEMU files are not searched for a banner they lack."""
    return os.path.basename(path).startswith("qemu-")


def file_key(identity: dict | None) -> tuple | None:
    return (identity["dev"], identity["ino"], identity["size"], identity["mtime"]) if identity else None


def same_file(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and file_key(a) == file_key(b)


def version_of_banner(banner: str | None) -> str | None:
    """"qemu-aarch64 version 7.2.22 (Debian ...)" -> "7.2.22"."""
    words = (banner or "").split()
    return words[words.index("version") + 1] if "version" in words[:-1] else None


def emulator_identity(path: str, version: bool = True, known: tuple[dict, ...] = ()) -> dict | None:
    """Which file `path` is now (symlinks followed, as the kernel's open follows them):
    {"path", "dev", "ino", "size", "mtime", "version"}, or None when nothing is there. The
    version comes from a known identity of the same file, else from its banner (with `version`)."""
    try:  # another tool's interpreter path may name anything: open only a regular file, never a
        # device (opening /dev/watchdog or a tape has effects) or a FIFO
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the two looks
            os.close(fd)
            return None
    except OSError:
        return None
    try:
        return identity_of_open_file(fd, os.path.realpath(path), version, known)
    finally:
        os.close(fd)


def add_versions(identities: list[dict | None], known: tuple[dict, ...] = ()) -> None:
    """Fill in each identity's version (in place), if the file at its path is still that file."""
    for identity in identities:
        if identity and not identity.get("version"):
            again = emulator_identity(identity["path"], True, known)
            if same_file(again, identity):
                identity["version"] = again["version"]


def describe_version(identity: dict | None) -> str:
    """`QEMU 7.2.22` for messages."""
    return f"QEMU {identity.get('version') or '(version unknown)'}" if identity else "no emulator"


def identity_of_open_file(fd: int, path: str, version: bool = True, known: tuple[dict, ...] = ()) -> dict:
    """emulator_identity of a file held open (e.g. /proc/PID/exe of a probe: the file the kernel
    really ran, deleted from disk or not); its version from that very file's banner."""
    st = os.fstat(fd)
    identity = {"path": path, "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime": st.st_mtime_ns,
                "version": None}
    key = file_key(identity)
    identity["version"] = next((k["version"] for k in known if k and file_key(k) == key and k.get("version")), None)
    if identity["version"] is None and version and looks_like_qemu(path) and stat.S_ISREG(st.st_mode):
        if key not in _versions:
            def read_at(offset: int, size: int) -> bytes:
                return os.pread(fd, size, offset)
            _versions[key] = version_of_banner(find_qemu_banner(os.pread(fd, 64, 0), read_at))
        identity["version"] = _versions[key]
    return identity
