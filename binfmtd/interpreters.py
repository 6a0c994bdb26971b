"""Interpreter facts: where each target's QEMU is, whether it is static and whether it is safe
to hand to the kernel as root (a file any non-root user can change is a root shell)."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

DEFAULT_INTERPRETER_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/libexec/qemu-binfmt")
PT_INTERP = 3


@dataclass(frozen=True)
class Interpreter:
    path: str | None  # None: not found
    static: bool = False
    problem: str | None = None  # why it is unsafe, None when safe
    identity: dict | None = None  # which file it is now (emulator_identity): what an F entry would pin

    @property
    def usable(self) -> bool:
        return self.path is not None and self.problem is None


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
    """The target's emulator, with its identity (stat only; add_versions asks the QEMU version)."""
    path = find_interpreter(qemu, dirs)
    if path is None:
        return Interpreter(None)
    return Interpreter(path, is_static(path), safety_problem(path), emulator_identity(path, version=False))


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
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == PT_INTERP:
            return False
    return True


def is_static(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            def read_at(offset: int, size: int) -> bytes:
                f.seek(offset)
                return f.read(size)
            return parse_elf_is_static(f.read(64), read_at)
    except OSError:
        return False


def safety_problem(path: str) -> str | None:
    """Why `path` is not safe to register as root, or None: it must be a regular executable
    owned by root, and neither it nor any directory above it (on the way to it and to what its
    symlinks point at) may be writable by group or others."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if not st.st_mode & 0o111:
        return "is not executable"
    for checked in _paths_to_check(path, real):
        try:
            st = os.lstat(checked) if checked != real else os.stat(real)
        except OSError as exc:
            return f"{checked} cannot be read ({exc.strerror})"
        if stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing; its directory and target are checked
        if st.st_uid != 0:
            return f"{checked} is owned by uid {st.st_uid}, not root"
        if st.st_mode & stat.S_IWGRP and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{checked} is writable by group {_group_name(st.st_gid)!r}"
        if st.st_mode & stat.S_IWOTH and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            # a sticky world-writable directory (/tmp) lets nobody replace root's entries in it
            return f"{checked} is writable by everyone"
    return None


def _paths_to_check(path: str, real: str) -> list[str]:
    checked: list[str] = []
    for leaf in (os.path.abspath(path), real):
        current = leaf
        while True:
            if current not in checked:
                checked.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return checked


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def qemu_version(path: str, timeout: float = 5.0, pass_fds: tuple[int, ...] = ()) -> str | None:
    """`qemu-x --version`'s version number (for `check`; never on the apply path)."""
    import subprocess

    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=timeout,
                             pass_fds=pass_fds).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.splitlines()[0] if out else ""
    words = first.split()
    return words[words.index("version") + 1] if "version" in words[:-1] else (first or None)


# -- which file an emulator is ------------------------------------------------------------------
# With F the kernel opens the emulator at registration and keeps that very file (inode) for the
# entry's lifetime: a package upgrade renames a new file over the path and the entry goes on
# running the old one. So binfmtd records the file it registered (device, inode, size, mtime:
# a rename or an in-place rewrite changes one of them) and the QEMU version it reports, and
# compares that with the path now. stat() costs a microsecond; `--version` costs a process
# (20-30 ms), so it runs only for a file no known identity describes, once per file and process.

_versions: dict[tuple, str | None] = {}


def looks_like_qemu(path: str) -> bool:
    """Only QEMU is asked its version: an entry's interpreter may be anything (FEX, box64, a
    script), and `--version` means nothing to some of them."""
    return os.path.basename(path).startswith("qemu-")


def file_key(identity: dict | None) -> tuple | None:
    return (identity["dev"], identity["ino"], identity["size"], identity["mtime"]) if identity else None


def same_file(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and file_key(a) == file_key(b)


def emulator_identity(path: str, version: bool = True, known: tuple[dict, ...] = ()) -> dict | None:
    """Which file `path` is now (symlinks followed, as the kernel's open follows them):
    {"path", "dev", "ino", "size", "mtime", "version"}, or None when nothing is there. The
    version comes from a known identity of the same file, else from running it (with `version`)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    identity = {"path": os.path.realpath(path), "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
                "mtime": st.st_mtime_ns, "version": None}
    key = file_key(identity)
    for other in known:
        if other and file_key(other) == key and other.get("version"):
            identity["version"] = other["version"]
            return identity
    if version and looks_like_qemu(identity["path"]):
        if key not in _versions:  # the real file: Debian's <target>-binfmt-P links make QEMU read argv differently
            _versions[key] = qemu_version(identity["path"])
        identity["version"] = _versions[key]
    return identity


def add_versions(identities: list[dict | None], known: tuple[dict, ...] = ()) -> None:
    """Fill in each identity's version (in place): from a known identity of the same file, else by
    running the files, in parallel (a first `apply --all` asks some thirty emulators at once)."""
    missing = [i for i in identities if i and not i.get("version")]
    for identity in missing:
        identity["version"] = next((k["version"] for k in known if same_file(k, identity) and k.get("version")), None)
    todo = {file_key(i): i["path"] for i in missing
            if not i["version"] and file_key(i) not in _versions and looks_like_qemu(i["path"])}
    if todo:
        from concurrent.futures import ThreadPoolExecutor  # only when a process is needed: not on a no-op

        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            _versions.update(zip(todo, pool.map(qemu_version, todo.values())))
    for identity in missing:
        identity["version"] = identity["version"] or _versions.get(file_key(identity))


def describe_version(identity: dict | None) -> str:
    """`QEMU 7.2.22` for messages."""
    return f"QEMU {identity.get('version') or '(version unknown)'}" if identity else "no emulator"


def identity_of_open_file(fd: int, path: str, version: bool = True, known: tuple[dict, ...] = ()) -> dict:
    """emulator_identity of a file held open (e.g. /proc/PID/exe of a probe: the file the kernel
    really ran, deleted from disk or not); its version by running that very file."""
    st = os.fstat(fd)
    identity = {"path": path, "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime": st.st_mtime_ns,
                "version": None}
    key = file_key(identity)
    identity["version"] = next((k["version"] for k in known if k and file_key(k) == key and k.get("version")), None)
    if identity["version"] is None and version and looks_like_qemu(path):
        if key not in _versions:
            _versions[key] = qemu_version(f"/proc/self/fd/{fd}", pass_fds=(fd,))
        identity["version"] = _versions[key]
    return identity
