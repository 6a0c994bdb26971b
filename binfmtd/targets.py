"""The table of QEMU user-mode targets: data in one place.

Magic and mask are QEMU 10's `scripts/qemu-binfmt-conf.sh`, byte for byte, except where marked
FIX (QEMU's value does not match real binaries). The table covers every linux-user target of the
QEMU versions current Debian and Ubuntu LTS releases ship (6.2 in Ubuntu 22.04 to 10.x in Debian
13): QEMU's script lists all of them but two, cris and nios2, which QEMU dropped (`removed_in`) but
Debian 12's and Ubuntu 24.04's qemu-user-static still ship; their entries follow Debian's table.
ppc64abi32 (QEMU 6.2 only) has no entry of its own: its binaries are ordinary 32-bit PowerPC ELF
files, which the ppc entry claims. `family` is the script's CPU family: a host runs
every target of its own family natively, so those are never registered (a host emulating itself
loops: the interpreter is claimed by its own entry and exec fails with ELOOP).
`platforms` are the container world's names (OCI/Go); `aliases` are other common spellings
(Debian architecture names, `uname -m` values); `machine` is what `uname -m` prints under the
target's QEMU, what its probe (binfmtd.probes) must report.
"""

from __future__ import annotations

from binfmtd.records import dataclass

ENTRY_PREFIX = "qemu-"  # binfmtd names its entries qemu-<target>, as QEMU's script, Debian and tonistiigi/binfmt do


@dataclass(frozen=True)
class Target:
    name: str
    family: str
    magic: bytes
    mask: bytes
    platforms: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    emulator: str = ""  # QEMU binary suffix when it is not the target name (i486 runs on qemu-i386)
    removed_in: str = ""  # the QEMU release that dropped the target: newer QEMUs have no emulator for it
    # What `uname -m` prints under the target's QEMU (Debian 12's QEMU 7.2, qemu-<qemu>-static), as
    # seen by running its probe (binfmtd.probes). A real kernel can say otherwise: on an x86_64 host
    # i386 and i486 probes run natively and print "x86_64" ("i686" only under qemu-i386 or `linux32`).
    machine: str = ""

    @property
    def entry_name(self) -> str:
        return ENTRY_PREFIX + self.name

    @property
    def qemu(self) -> str:
        return self.emulator or self.name

    @property
    def platform(self) -> str | None:
        return self.platforms[0] if self.platforms else None


# ELF header fields the masks look at: e_ident[EI_CLASS] (byte 4), [EI_DATA] (5), [EI_VERSION] (6),
# [EI_OSABI] (7), [EI_ABIVERSION] (8), e_type (16-17, ET_EXEC or ET_DYN: mask fe), e_machine
# (18-19); the MIPS entries also read e_flags (36-39) to tell o32 from n32 (EF_MIPS_ABI2).
TARGETS: tuple[Target, ...] = (
    Target("i386", "i386",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00",
           b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/386",), ("386", "i686", "x86"), machine="i686"),
    Target("i486", "i386",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x06\x00",
           b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           emulator="i386", machine="i686"),
    Target("alpha", "alpha",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x26\x90",
           b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           machine="alpha"),
    Target("arm", "arm",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/arm/v7", "linux/arm/v6", "linux/arm/v5", "linux/arm"), ("armhf", "armel", "armv7l"),
           machine="armv7l"),
    Target("armeb", "armeb",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="armv7b"),
    Target("sparc", "sparc",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="sparc"),
    Target("sparc32plus", "sparc",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x12",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="sparc64"),  # QEMU runs sparc32plus (32-bit code, V8+ ABI) on a 64-bit CPU, and says so
    Target("sparc64", "sparc",
           b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x2b",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           ("linux/sparc64",), machine="sparc64"),
    Target("ppc", "ppc",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x14",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           (), ("powerpc",), machine="ppc"),
    Target("ppc64", "ppc",
           b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           ("linux/ppc64",), machine="ppc64"),
    Target("ppc64le", "ppcle",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
           ("linux/ppc64le",), ("ppc64el",), machine="ppc64le"),
    Target("m68k", "m68k",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x04",
           b"\xff\xff\xff\xff\xff\xff\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="m68k"),
    # MIPS: 40 bytes, so that e_flags' EF_MIPS_ABI2 (0x20) tells o32 (mips, mipsel) from n32.
    Target("mips", "mips",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08"
           b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff"
           b"\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20",
           ("linux/mips",), machine="mips"),
    Target("mipsel", "mips",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00"
           b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
           b"\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00",
           ("linux/mipsle",), machine="mips"),
    Target("mipsn32", "mips",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08"
           b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff"
           b"\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20",
           machine="mips64"),
    Target("mipsn32el", "mips",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00"
           b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
           b"\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00",
           machine="mips64"),
    Target("mips64", "mips",
           b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           ("linux/mips64",), machine="mips64"),
    Target("mips64el", "mips",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/mips64le",), machine="mips64"),
    Target("sh4", "sh4",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x2a\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           machine="sh4"),
    Target("sh4eb", "sh4",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x2a",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="sh4"),
    Target("s390x", "s390x",
           b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           ("linux/s390x",), machine="s390x"),
    Target("aarch64", "arm",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/arm64", "linux/arm64/v8"), ("arm64",), machine="aarch64"),
    Target("aarch64_be", "armeb",
           b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="aarch64_be"),
    Target("hppa", "hppa",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x0f",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="parisc"),
    Target("riscv32", "riscv32",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           machine="riscv32"),
    Target("riscv64", "riscv64",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/riscv64",), machine="riscv64"),
    Target("xtensa", "xtensa",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x5e\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           machine="xtensa"),
    Target("xtensaeb", "xtensaeb",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x5e",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="xtensa"),
    # FIX: QEMU writes e_type little-endian (02 00, mask fe ff) in this big-endian entry, so it
    # never matches a real big-endian executable (e_type 00 02); Debian's table has it right.
    Target("microblaze", "microblaze",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\xba\xab",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="microblaze"),
    Target("microblazeel", "microblazeel",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xab\xba",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           machine="microblaze"),
    Target("or1k", "or1k",
           b"\x7fELF\x01\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x5c",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
           machine="openrisc"),
    Target("x86_64", "i386",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
           b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/amd64", "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4"), ("amd64", "x64"), machine="x86_64"),
    Target("hexagon", "hexagon",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xa4\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           machine="hexagon"),
    Target("loongarch64", "loongarch",
           b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02\x01",
           b"\xff\xff\xff\xff\xff\xff\xff\xfc\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           ("linux/loong64",), ("loong64",), machine="loongarch64"),
    # Not in QEMU's script. cris: Debian's table (debian/binfmt-install); QEMU 9.2 dropped it.
    Target("cris", "cris",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x4c\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           removed_in="9.2", machine="cris"),
    # nios2 (EM_ALTERA_NIOS2, 113): in no table, Debian's included; the little-endian 32-bit
    # pattern every such entry uses. QEMU 9.1 dropped it.
    Target("nios2", "nios2",
           b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x71\x00",
           b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
           removed_in="9.1", machine="nios2"),
)

BY_NAME: dict[str, Target] = {t.name: t for t in TARGETS}
# The entry binfmtd registers for each target, by its exact name (as the kernel lists it).
BY_ENTRY_NAME: dict[str, Target] = {t.entry_name: t for t in TARGETS}


def _spellings(target: Target) -> list[str]:
    names = [target.name, *target.aliases]
    for platform in target.platforms:
        names += [platform, platform.removeprefix("linux/")]
    return names


_BY_SPELLING: dict[str, Target] = {}
for _target in TARGETS:
    for _spelling in _spellings(_target):
        _BY_SPELLING.setdefault(_spelling.lower(), _target)


def lookup(spelling: str) -> Target | None:
    """The target a user means by a target name, `qemu-<target>`, a platform or an alias (an
    entry's name is matched exactly in BY_ENTRY_NAME instead)."""
    key = spelling.strip().lower()
    return _BY_SPELLING.get(key) or _BY_SPELLING.get(key.removeprefix(ENTRY_PREFIX))


# qemu_get_family in QEMU's script, as data: `uname -m` values it names outright, then the
# (prefix, suffix, family) rules for the spellings it matches by pattern (armv7l, mips64el, sparc64).
_FAMILY_OF_MACHINE: dict[str, str] = {
    **dict.fromkeys(("amd64", "i386", "i486", "i586", "i686", "i86pc", "BePC", "x86_64"), "i386"),
    **dict.fromkeys(("Power Macintosh", "ppc64", "powerpc", "ppc"), "ppc"),
    **dict.fromkeys(("ppc64el", "ppc64le"), "ppcle"),
    **dict.fromkeys(("arm", "armel", "armhf", "arm64", "aarch64"), "arm"),
    **dict.fromkeys(("armeb", "aarch64_be"), "armeb"),
}
_FAMILY_BY_PATTERN: tuple[tuple[str, str, str], ...] = (
    ("mips", "", "mips"),
    ("armv", "l", "arm"),
    ("armv", "b", "armeb"),
    ("sparc", "", "sparc"),
    ("loongarch", "", "loongarch"),
)


def family_of_machine(machine: str) -> str:
    """QEMU's CPU family of a `uname -m` value; a machine QEMU's script does not know is its own family."""
    if machine in _FAMILY_OF_MACHINE:
        return _FAMILY_OF_MACHINE[machine]
    for prefix, suffix, family in _FAMILY_BY_PATTERN:
        if machine.startswith(prefix) and machine.endswith(suffix):
            return family
    return machine


def claims(magic: bytes, mask: bytes, offset: int, header: bytes) -> bool:
    """Whether an entry with this magic/mask/offset claims a file starting with `header`,
    compared as the kernel does (fs/binfmt_misc.c: (byte ^ magic) & mask == 0)."""
    window = header[offset:offset + len(magic)]
    if len(window) < len(magic):
        return False
    return (int.from_bytes(window) ^ int.from_bytes(magic)) & int.from_bytes(mask) == 0
