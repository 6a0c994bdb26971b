"""Interpreter facts: where each target's QEMU is, and the one verdict on whether binfmtd may
hand it to the kernel as root: root alone controls its whole path (a file, directory or link
any non-root user can change is a root shell), it is a statically linked QEMU, and binfmt_misc
can store its path. What gets registered is the resolved path, so no link is left to re-point."""

from __future__ import annotations

import os
import stat

from binfmtd.entry import interpreter_text_problem, printable
from binfmtd.facts.elf import find_qemu_banner, parse_elf_is_static, version_of_banner
from binfmtd.records import dataclass
from binfmtd.trust import UntrustedPath, resolve_trusted

# The last one is where binfmtd's container image keeps its emulators (binfmtd/image.py); no host has it.
DEFAULT_INTERPRETER_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/libexec/qemu-binfmt", "/usr/libexec/binfmtd-image")


@dataclass(frozen=True)
class Interpreter:
    """The one verdict on a target's interpreter: `check`, `apply`, `export` and `verify` all
    judge it through read_interpreter, so they cannot disagree."""

    path: str | None  # as found in interpreter_dirs; None: not found
    static: bool = False
    problem: str | None = None  # why it may not be registered (one line), None when it may
    fix: str | None = None  # what to do about the problem
    resolved: str | None = None  # what binfmtd registers: no symlinks left, every component root's
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


def read_interpreter(qemu: str, dirs: tuple[str, ...] = DEFAULT_INTERPRETER_DIRS,
                     pins: tuple[dict, ...] = (), user_mounts: dict[int, int] | None = None) -> Interpreter:
    """The verdict on target `qemu`'s interpreter: found, controlled by root alone, a static
    QEMU, and storable in binfmt_misc; with the resolved path to register. `pins`: the emulator
    files binfmtd's entries pinned (State.pins), whose banners need no second search.
    `user_mounts`: trust.read_user_fuse_mounts(), read once for a batch of verdicts."""
    path = find_interpreter(qemu, dirs)
    if path is None:
        return Interpreter(None, problem=f"qemu-{qemu}-static not found in {':'.join(dirs)}", fix=INSTALL_FIX)
    return judge_interpreter(path, pins, user_mounts)


def judge_interpreter(path: str, pins: tuple[dict, ...] = (), user_mounts: dict[int, int] | None = None) -> Interpreter:
    """The verdict on the file at `path`, with its identity (no version: add_versions asks for
    it when it is needed)."""
    try:
        resolved = trusted_executable(path, user_mounts)
        with open(resolved, "rb") as f:
            identity = _require_static_qemu(f, resolved, pins)
    except Refused as refused:
        return Interpreter(path, problem=refused.problem, fix=refused.fix)
    except OSError as exc:
        return Interpreter(path, problem=f"cannot be read ({exc.strerror})", fix=INSTALL_FIX)
    return Interpreter(path, True, resolved=resolved, identity=identity)


def _require_static_qemu(f, resolved: str, pins: tuple[dict, ...]) -> dict:
    """The identity of the open file `f` if it is a statically linked QEMU, else Refused. A file
    binfmtd pinned with a QEMU version and finds unchanged (same device, inode, size and mtime)
    showed QEMU's banner then, so its banner is not searched again: the boot path's no-op reads
    no emulator's data. A banner found here gives the version too, so it is searched once."""
    identity = identity_of_open_file(f.fileno(), resolved, version=False)
    header = f.read(64)
    if header[:4] != b"\x7fELF":
        raise Refused(f"{printable(resolved)} is not an ELF executable, so not QEMU's user-mode emulator", INSTALL_FIX)
    if not parse_elf_is_static(header, _reader(f)):
        raise Refused(f"{printable(resolved)} is dynamically linked: containers and chroots cannot load it",
                      "install qemu-user-static (its emulators are statically linked)")
    if known_version(identity, pins) is None:
        banner = find_qemu_banner(header, _reader(f))
        if banner is None:
            raise Refused(f"{printable(resolved)} is not QEMU (it lacks the version banner every QEMU carries)",
                          INSTALL_FIX)
        _versions[file_key(identity)] = version_of_banner(banner)
    return identity


def safety_problem(path: str) -> str | None:
    """Why `path` may not be handed to the kernel as root, or None: see trusted_executable."""
    try:
        trusted_executable(path)
    except Refused as refused:
        return refused.problem
    return None


def trusted_executable(path: str, user_mounts: dict[int, int] | None = None) -> str:
    """`path` resolved, if binfmt_misc can store it and root alone controls every component
    (binfmtd.trust) and it names an executable regular file; else Refused, naming the component
    at fault and the fix."""
    rename = "use a path without ':' or control characters (rename it, or set interpreter_dirs)"
    if problem := interpreter_text_problem(path):
        raise Refused(problem, rename)
    try:
        resolved = resolve_trusted(path, user_mounts)
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


def known_version(identity: dict, known: tuple[dict | None, ...]) -> str | None:
    """The QEMU version recorded for this very file (device, inode, size, mtime) in `known`:
    pins binfmtd recorded, or identities read before. None when none of them knows it."""
    key = file_key(identity)
    return next((k["version"] for k in known if k and file_key(k) == key and k.get("version")), None)


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
    identity["version"] = known_version(identity, known)
    if identity["version"] is None and version and looks_like_qemu(path) and stat.S_ISREG(st.st_mode):
        key = file_key(identity)
        if key not in _versions:
            def read_at(offset: int, size: int) -> bytes:
                return os.pread(fd, size, offset)
            _versions[key] = version_of_banner(find_qemu_banner(os.pread(fd, 64, 0), read_at))
        identity["version"] = _versions[key]
    return identity
