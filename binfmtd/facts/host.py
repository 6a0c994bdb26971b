"""Facts: read-only knowledge of the host. Each parser is pure and tested on text the kernel
printed; the small read_* functions around them do the I/O."""

from __future__ import annotations

import functools
import os

from binfmtd.entry import CONTROL_FILES, REGISTER_FILE, STATUS_FILE, Entry, parse_entry
from binfmtd.records import dataclass, field
from binfmtd.targets import BY_ENTRY_NAME, TARGETS, Target, claims, family_of_machine

DEFAULT_BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
INIT_USER_NS_INODE = 0xEFFFFFFD  # PROC_USER_INIT_INO: the initial user namespace's inode
MOUNTINFO = "/proc/self/mountinfo"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class Kernel:
    release: str
    version: tuple[int, int]

    @property
    def supports_fix_binary(self) -> bool:  # the F flag, Linux 4.8
        return self.version >= (4, 8)

    @property
    def magic_size_limit(self) -> int:  # BINPRM_BUF_SIZE grew from 128 to 256 bytes in Linux 5.1
        return 256 if self.version >= (5, 1) else 128

    @property
    def tells_qemu_about_p(self) -> bool:  # AT_FLAGS_PRESERVE_ARGV0 in the auxv, Linux 5.12
        return self.version >= (5, 12)

    @property
    def binfmt_misc_per_userns(self) -> bool:  # Linux 6.7
        return self.version >= (6, 7)


def parse_kernel_release(release: str) -> Kernel:
    # Plain string work, not re: this runs at every boot and re costs the boot path its import.
    major, dot, rest = release.partition(".")
    minor = rest[:len(rest) - len(rest.lstrip("0123456789"))]
    ok = dot and minor and major.isascii() and major.isdigit()
    return Kernel(release, (int(major), int(minor)) if ok else (0, 0))


def parse_filesystems(text: str) -> bool:
    """Whether /proc/filesystems lists binfmt_misc (built in, or its module loaded)."""
    return any(line.split()[-1:] == ["binfmt_misc"] for line in text.splitlines())


def parse_mount_type(mountinfo: str, path: str) -> str | None:
    """The filesystem type mounted at `path` per /proc/self/mountinfo (the last mount wins),
    or None. An untriggered automount shows as `autofs`, which is not binfmt_misc."""
    fstype = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and " - " in line and _unescape_mount(fields[4]) == path:
            fstype = line.split(" - ", 1)[1].split()[0]
    return fstype


def _unescape_mount(text: str) -> str:
    if "\\" not in text:  # the usual case, at boot: no need to import re
        return text
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class BinfmtMisc:
    path: str
    supported: bool
    mounted: bool
    mount_type: str | None  # what is mounted at path: binfmt_misc, autofs, None
    enabled: bool
    entries: tuple[Entry, ...] = ()
    private: bool = False  # the mounted instance is this user namespace's own (Linux 6.7+), not the host's
    nested: bool = False  # this process is in a child user namespace (whatever table it sees)

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)


def read_binfmt_misc(path: str = DEFAULT_BINFMT_MISC, trigger_automount: bool = True) -> BinfmtMisc:
    supported = parse_filesystems(read_text("/proc/filesystems"))
    mount_type = parse_mount_type(read_text(MOUNTINFO), path)
    if mount_type == "autofs" and trigger_automount:
        # An automount (Amazon Linux 2023, systemd's proc-sys-fs-binfmt_misc.automount) mounts on
        # first access; look inside and read mountinfo again to see what is really there.
        try:
            os.listdir(path)
        except OSError:
            pass
        mount_type = parse_mount_type(read_text(MOUNTINFO), path)
    table = read_table(path, mount_type)
    nested = in_child_user_namespace()
    # In the initial user namespace the table is the host's by definition: no subprocess at boot.
    private = table.mounted and nested and shows_own_instance(path)
    return BinfmtMisc(path, supported, table.mounted, mount_type, table.status == "enabled",
                      tuple(parse_entry(name, text) for name, text in table.entries), private=private, nested=nested)


@dataclass(frozen=True)
class Table:
    """What the kernel shows at a binfmt_misc path, unparsed: read_binfmt_misc parses it, and the
    daemon's idle tick compares the texts as they are (one string comparison per entry)."""

    mounted: bool
    status: str = ""  # "enabled" / "disabled"
    entries: tuple[tuple[str, str], ...] = ()  # (name, entry file text), by name


def read_table(path: str = DEFAULT_BINFMT_MISC, mount_type: str | None = None) -> Table:
    """The one reader of the table: mounted?, its status and each entry's text. `mount_type` is
    what mountinfo shows at `path`, if the caller has read it already."""
    if mount_type is None:
        mount_type = parse_mount_type(read_text(MOUNTINFO), path)
    # mountinfo can list a binfmt_misc mount that a later /proc mount hides (a fresh container's
    # or namespace's /proc): the register file must be there too.
    if mount_type != "binfmt_misc" or not os.path.exists(os.path.join(path, REGISTER_FILE)):
        return Table(False)
    try:
        names = sorted(os.listdir(path))
    except OSError:  # unmounted in the meantime
        return Table(False)
    texts = ((name, read_entry_text(path, name)) for name in names if name not in CONTROL_FILES)
    return Table(True, read_text(os.path.join(path, STATUS_FILE)).strip(),
                 tuple((name, text) for name, text in texts if text is not None))


def read_entry_text(path: str, name: str) -> str | None:
    """One entry's file as the kernel shows it, or None when there is none of that name."""
    try:
        with open(os.path.join(path, name)) as f:
            return f.read()
    except OSError:  # not there, or removed between listdir and open
        return None


def read_entry(path: str, name: str) -> Entry | None:
    """One entry as the kernel shows it, or None when there is none of that name."""
    text = read_entry_text(path, name)
    return None if text is None else parse_entry(name, text)


def read_boot_id() -> str:
    """This boot's id ("" if unreadable): what is measured once per boot is stored under it."""
    return read_text(BOOT_ID).strip()


def in_child_user_namespace() -> bool:
    """Inside a user namespace other than the initial one. That alone says nothing about the
    table: a mount namespace copied from the host still shows the host's instance (see
    shows_own_instance)."""
    try:
        link = os.readlink("/proc/self/ns/user")
    except OSError:
        return False
    inode = link.partition("[")[2].partition("]")[0]  # "user:[4026531837]"
    return inode.isascii() and inode.isdigit() and int(inode) != INIT_USER_NS_INODE


# Run in a throwaway mount namespace: the device of what is mounted at $1, then of a fresh mount
# of binfmt_misc, which on Linux 6.7+ is always this user namespace's own instance. The fresh one
# goes on /tmp (or /dev), only in that namespace (the kernel refuses the same instance on top of
# itself at $1). Both mounts are alive while compared, so a recycled device number cannot fool it.
COMPARE_INSTANCES = ('at=/tmp; [ -d $at ] || at=/dev; '
                     'stat -c %d "$1" && mount -t binfmt_misc binfmt_misc $at && stat -c %d $at')


def parse_instance_devices(output: str) -> bool | None:
    """Whether the two device numbers COMPARE_INSTANCES printed are the same instance."""
    devices = output.split()
    return devices[0] == devices[1] if len(devices) == 2 else None


@functools.lru_cache(maxsize=8)
def _own_instance_at(path: str, device: int) -> bool:
    import subprocess  # only in a child user namespace, never on the host's boot path

    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", COMPARE_INSTANCES,
                               "sh", path], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    # Cannot tell (no unshare, not permitted): not private, for "private" promises safety.
    return done.returncode == 0 and parse_instance_devices(done.stdout) is True


def shows_own_instance(path: str) -> bool:
    """Whether the binfmt_misc mounted at `path` is this user namespace's own instance (so
    registrations stay in it) rather than one inherited from an outer namespace's mount, which
    root in a child user namespace writes to like the host's own root. Measured once per mount."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    return _own_instance_at(path, device)


def host_family(machine: str | None = None) -> str:
    return family_of_machine(machine or os.uname().machine)


def native_targets(machine: str | None = None) -> tuple[Target, ...]:
    """The targets this host runs without emulation: its QEMU CPU family."""
    family = host_family(machine)
    return tuple(t for t in TARGETS if t.family == family)


def read_kernel() -> Kernel:
    return parse_kernel_release(os.uname().release)


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@dataclass(frozen=True)
class Host:
    """Everything plan() needs to know about the host."""

    kernel: Kernel
    machine: str
    binfmt_misc: BinfmtMisc
    native: tuple[str, ...] = field(default=())
    # entries whose interpreter path names nothing on disk now (with F the kernel still holds the
    # file it opened; an upgrade or a removal of QEMU took the path away)
    vanished: frozenset[str] = frozenset()


def read_host(binfmt_misc_path: str = DEFAULT_BINFMT_MISC, native: tuple[str, ...] | None = None) -> Host:
    """The host's facts; `native` as measured by binfmtd.facts.native, else QEMU's family table."""
    machine = os.uname().machine
    if native is None:
        native = tuple(t.name for t in native_targets(machine))
    table = read_binfmt_misc(binfmt_misc_path)
    vanished = frozenset(e.name for e in table.entries if not os.path.exists(e.interpreter))
    return Host(read_kernel(), machine, table, native, vanished)


def target_of_entry(entry: Entry) -> Target | None:
    """The QEMU target whose binaries an entry claims (its own `qemu-<target>` name first), or
    None for entries that are not QEMU's (WSLInterop, python, jar, ...)."""
    matching = [t for t in TARGETS if entry.extension is None and entry.magic
                and claims(entry.magic, entry.mask or b"\xff" * len(entry.magic), entry.offset, t.magic)]
    named = BY_ENTRY_NAME.get(entry.name)
    if named in matching:  # a broad mask may claim several targets: its own name decides
        return named
    return matching[0] if len(matching) == 1 else None
