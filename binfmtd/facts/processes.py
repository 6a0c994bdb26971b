"""The processes running under emulation: those the kernel started through a binfmt_misc entry.

The kernel runs a foreign binary by executing the entry's interpreter instead, so such a process's
/proc/PID/exe is that interpreter (with `F`, the very file opened at registration: when it has
since been deleted or replaced on disk, the link ends in " (deleted)"). Its /proc/PID/cmdline has
binfmt_misc's layout, seen on Linux 6.18 with QEMU 7.2 for every combination of P, O and F:

    with P:    interpreter, full path of the binary, the original argv[0], argv[1], ...
    without P: interpreter, full path of the binary, argv[1], ...   (argv[0] is lost)

O and F do not change it. So the foreign command line is argv[2:] with P and the binary's path
plus argv[2:] without it. A QEMU someone started by hand runs the same file; the auxiliary vector
the kernel gave the process (/proc/PID/auxv) tells them apart where the entry's flags leave a
mark there: AT_EXECFD for O, AT_FLAGS_PRESERVE_ARGV0 for P (Linux 5.12+).

Finding them is one readlink per process (cheap for thousands); psutil, imported only when a
process matches, reads the details (user, CPU time, RSS) of the few that do. Never on the boot path.
"""

from __future__ import annotations

import os
import re
import struct
from collections import defaultdict
from dataclasses import asdict, dataclass

from binfmtd.entry import Entry
from binfmtd.facts.host import read_kernel, target_of_entry

DELETED = " (deleted)"
PROC = "/proc"
_AT_EXECFD, _AT_FLAGS, _AT_FLAGS_PRESERVE_ARGV0 = 2, 8, 0x1


@dataclass(frozen=True)
class EmulatedProcess:
    pid: int
    target: str | None  # the entry's QEMU target; None for an entry that is not QEMU's
    entry: str
    interpreter: str  # the file the process runs, as /proc/PID/exe names it
    emulator_deleted: bool  # that file was deleted or replaced on disk since the process started
    command: tuple[str, ...]  # the foreign command line
    via_entry: bool | None  # started by the kernel through the entry; False: QEMU run by hand; None: unknown
    user: str | None
    cpu_seconds: float  # user + system
    children_cpu_seconds: float  # of its exited children it has reaped (a shell's, make's: the short-lived)
    rss_bytes: int
    started: float  # creation time (seconds since the epoch): with pid, the process's identity
    ppid: int
    cgroup: str | None
    container: str | None  # container ID from the cgroup path, when it is a container's

    def to_json(self) -> dict:
        return {**asdict(self), "command": list(self.command)}


def parse_exe_link(link: str) -> tuple[str, bool]:
    """(path, deleted) from a /proc/PID/exe link."""
    if link.endswith(DELETED):
        return link[:-len(DELETED)], True
    return link, False


def foreign_command(cmdline: list[str], flags: str, via_entry: bool | None = True) -> tuple[str, ...]:
    """The foreign program's own command line from binfmt_misc's argv layout (module docstring);
    for a QEMU run by hand, its arguments."""
    if len(cmdline) < 2 or via_entry is False:
        return tuple(cmdline[1:])
    return tuple(cmdline[2:]) if "P" in flags else (cmdline[1], *cmdline[2:])


def parse_auxv(data: bytes) -> dict[int, int]:
    """/proc/PID/auxv: (type, value) pairs of native words, up to AT_NULL."""
    pairs = {}
    for key, value in struct.iter_unpack("@LL", data[:len(data) // struct.calcsize("@LL") * struct.calcsize("@LL")]):
        if key == 0:
            break
        pairs[key] = value
    return pairs


def started_via_entry(auxv: dict[int, int], flags: str, kernel_marks_p: bool = True) -> bool | None:
    """Whether the kernel ran the process through an entry with these flags, judged by the marks
    those flags leave in its auxiliary vector; None where the flags leave none (neither O nor P)."""
    if "O" in flags:
        return _AT_EXECFD in auxv
    if "P" in flags and kernel_marks_p:
        return bool(auxv.get(_AT_FLAGS, 0) & _AT_FLAGS_PRESERVE_ARGV0)
    return None


def parse_cgroup(text: str) -> str | None:
    """The process's cgroup path from /proc/PID/cgroup: the unified (v2) hierarchy's, else the
    first v1 hierarchy's; None at the root."""
    paths = [line.split(":", 2) for line in text.splitlines() if line.count(":") >= 2]
    path = next((p for hid, _, p in paths if hid == "0"), None) or (paths[0][2] if paths else None)
    return path if path and path != "/" else None


# A 64-hex-digit ID as a whole component of the cgroup path, or prefixed, the way docker
# (docker-ID.scope, /docker/ID), podman (libpod-ID.scope/container), containerd and CRI-O
# (cri-containerd-ID.scope, crio-ID.scope) and Kubernetes (kubepods/.../ID) name a container's.
_CONTAINER_ID = re.compile(r"(?:^|/)(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)")


def container_of_cgroup(cgroup: str | None) -> str | None:
    """The innermost container ID in a cgroup path, or None."""
    ids = _CONTAINER_ID.findall(cgroup or "")
    return ids[-1] if ids else None


def _entries_by_interpreter(entries) -> dict[str, list[Entry]]:
    """Each entry under its interpreter as written and as resolved: /proc/PID/exe names the real file."""
    index: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.extension is not None:  # an extension entry (.jar, ...): no foreign CPU behind it
            continue
        for path in {entry.interpreter, os.path.realpath(entry.interpreter)}:
            index[path].append(entry)
    return index


def scan_exes(proc: str = PROC):
    """(pid, /proc/PID/exe) of every process whose executable can be read. Kernel threads have
    none; other users' processes are unreadable to non-root; a process may exit meanwhile."""
    with os.scandir(proc) as it:
        for item in it:
            if item.name.isdigit():
                try:
                    yield int(item.name), os.readlink(f"{proc}/{item.name}/exe")
                except OSError:
                    continue


def read_emulated(entries) -> list[EmulatedProcess]:
    """The processes that run one of these entries' interpreters, with their details (psutil
    reads /proc, so this does too)."""
    index = _entries_by_interpreter(entries)
    matches = []
    for pid, link in scan_exes():
        path, deleted = parse_exe_link(link)
        if path in index:
            matches.append((pid, link, path, deleted, index[path]))
    if not matches:
        return []
    import psutil

    found = []
    kernel_marks_p = read_kernel().tells_qemu_about_p
    for pid, link, path, deleted, candidates in matches:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                cmdline = process.cmdline()
                times = process.cpu_times()
                details = (process.username(), times.user + times.system,
                           times.children_user + times.children_system, process.memory_info().rss,
                           process.create_time(), process.ppid())
            if os.readlink(f"{PROC}/{pid}/exe") != link:  # the PID was reused since the scan
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        entry = _entry_for(candidates)
        target = target_of_entry(entry)
        via = started_via_entry(parse_auxv(_read(f"{PROC}/{pid}/auxv", binary=True)), entry.flags, kernel_marks_p)
        cgroup = parse_cgroup(_read(f"{PROC}/{pid}/cgroup"))
        found.append(EmulatedProcess(pid, target.name if target else None, entry.name, path, deleted,
                                     foreign_command(cmdline, entry.flags, via), via, *details, cgroup,
                                     container_of_cgroup(cgroup)))
    return sorted(found, key=lambda p: (p.target or "", p.pid))


def _entry_for(candidates: list[Entry]) -> Entry:
    """The entry that started the process, among those with its interpreter: normally one. i386
    and i486 share qemu-i386; the target named after its emulator wins. (Telling them apart by
    the binary's header would mean opening a path the process chose, as root: a FIFO or a device
    there could hang or disturb the daemon.)"""
    def own_emulator(entry: Entry) -> bool:
        target = target_of_entry(entry)
        return bool(target) and target.name == target.qemu and entry.name == target.entry_name
    return next((e for e in candidates if own_emulator(e)), candidates[0])


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _read(path: str, binary: bool = False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError:
        return b"" if binary else ""


def per_target(processes) -> dict[str, tuple[int, float]]:
    """target -> (processes, CPU seconds) of the processes running now."""
    totals: dict[str, tuple[int, float]] = {}
    for p in processes:
        count, seconds = totals.get(p.target or p.entry, (0, 0.0))
        totals[p.target or p.entry] = (count + 1, seconds + p.cpu_seconds)
    return totals


class CpuLedger:
    """Per-target CPU seconds of emulated processes as a Prometheus counter, from scans of the
    processes running at each moment. Most emulated work is short-lived (a build's compilers), so
    each process counts with the time of the children it reaped: when a process exits, the kernel
    adds its time to its parent's children time. A process whose parent is emulated too is thus
    counted by that parent once it is gone; one whose parent is not (a container's first process,
    a shell's child) keeps its time in the ledger after it exits, as of the last scan that saw it.
    Work that starts and ends between two scans under a parent that is not emulated is missed.

    The total only grows while one program (the daemon) keeps the ledger; a one-shot
    `status --format prometheus` starts a fresh one, covering the processes running then."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, float], tuple[str, float, bool]] = {}
        self._exited: dict[str, float] = defaultdict(float)

    def update(self, processes) -> dict[str, float]:
        pids = {p.pid for p in processes}
        now = {(p.pid, p.started): (p.target or p.entry, p.cpu_seconds + p.children_cpu_seconds, p.ppid not in pids)
               for p in processes}
        for key, (target, seconds, outermost) in self._seen.items():
            if key not in now and outermost:  # an emulated parent's children time has the others
                self._exited[target] += seconds
        self._seen = now
        totals = defaultdict(float, self._exited)
        for target, seconds, _ in now.values():
            totals[target] += seconds
        return dict(totals)


def running_under(removed: list[Entry], limit: int = 3) -> list[str]:
    """Warnings for `remove`: the processes still running under entries about to be removed. They
    go on (the kernel already handed them their emulator), but new binaries of theirs will not start."""
    warnings = []
    try:
        found = read_emulated(removed)
    except OSError:  # no /proc: nothing to warn about that can be known
        return []
    for entry in removed:
        mine = [p for p in found if p.entry == entry.name]
        if mine:
            shown = ", ".join(f"{p.pid} ({_short(' '.join(p.command))})" for p in mine[:limit])
            more = f" and {len(mine) - limit} more" if len(mine) > limit else ""
            warnings.append(f"{entry.name}: {len(mine)} process(es) still run under it: PID {shown}{more}; "
                            "they keep their emulator, but new ones will fail to start (binfmtd ps lists them)")
    return warnings
