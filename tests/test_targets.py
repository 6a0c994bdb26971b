"""The target table against QEMU's script and Debian's binfmt files, and on the real kernel:
every emulator the supported distributions ship gets its entry."""

import os
import shlex
from pathlib import Path

import pytest
from conftest import BINFMT_MISC, BINFMTD, need, qemu

from binfmtd import probes
from binfmtd.entry import unescape
from binfmtd.facts.host import native_targets
from binfmtd.targets import BY_NAME, TARGETS, claims, family_of_machine, lookup

QEMU_10_TARGETS = set("""i386 i486 alpha arm armeb sparc sparc32plus sparc64 ppc ppc64 ppc64le m68k mips mipsel
mipsn32 mipsn32el mips64 mips64el sh4 sh4eb s390x aarch64 aarch64_be hppa riscv32 riscv64 xtensa xtensaeb
microblaze microblazeel or1k x86_64 hexagon loongarch64""".split())

# Where Debian 12's table (QEMU 7.2 plus Debian's patches) and ours differ, byte offsets and why.
# Any difference not listed here fails the test.
OSABI = {7}  # QEMU 8.0+ ignores EI_OSABI (mask 00); Debian still only accepts 0-3 (mask fc)
ABIVERSION = {8}  # QEMU 8.2+ ignores MIPS EI_ABIVERSION (mask 00); Debian accepts 0/1 (mask fe)
MIPS_EV_CURRENT = {20, 21, 22, 23}  # QEMU 10's 40-byte MIPS magic also checks e_version == 1
MIPS_LE_TAIL = {37, 38, 39}  # Debian's little-endian MIPS magic stops at e_flags' low byte (37 bytes)
EXPLAINED = {
    "alpha": {5, 6},  # QEMU copied the x86 mask (fe) for EI_DATA/EI_VERSION; Debian requires exact
    "m68k": {6},  # same for EI_VERSION
    **{t: OSABI for t in ("sparc", "sparc32plus", "sparc64", "ppc", "ppc64", "ppc64le", "sh4", "sh4eb", "s390x")},
    "mips": ABIVERSION | MIPS_EV_CURRENT,
    "mipsn32": ABIVERSION | MIPS_EV_CURRENT,
    "mipsel": ABIVERSION | MIPS_EV_CURRENT | MIPS_LE_TAIL,
    "mipsn32el": ABIVERSION | MIPS_EV_CURRENT | MIPS_LE_TAIL,
    "mips64": ABIVERSION,
    "mips64el": ABIVERSION,
}


# The linux-user targets (configs/targets/*-linux-user.mak) of the QEMU releases that current Debian
# and Ubuntu LTS releases ship: Ubuntu 22.04 6.2, Debian 12 7.2, Ubuntu 24.04 8.2, Debian 13 and
# bookworm-backports 10.0. QEMU 7.0 dropped ppc64abi32, 7.1 added loongarch64, 9.1 dropped nios2 and
# 9.2 cris (docs/about/removed-features.rst).
LINUX_USER_TARGETS = {
    "6.2": QEMU_10_TARGETS - {"loongarch64"} | {"cris", "nios2", "ppc64abi32"},
    "7.2": QEMU_10_TARGETS | {"cris", "nios2"},
    "8.2": QEMU_10_TARGETS | {"cris", "nios2"},
    "10.0": QEMU_10_TARGETS,
}
# ppc64abi32 ran 32-bit PowerPC binaries, which the ppc entry claims: it cannot have its own entry.
NO_ENTRY_OF_ITS_OWN = {"ppc64abi32"}


def test_table_has_every_qemu_10_target():
    assert {t.name for t in TARGETS} >= QEMU_10_TARGETS


@pytest.mark.parametrize("version", LINUX_USER_TARGETS)
def test_table_covers_every_linux_user_target_a_supported_distribution_ships(version):
    assert {t.name for t in TARGETS} >= LINUX_USER_TARGETS[version] - NO_ENTRY_OF_ITS_OWN


def test_targets_qemu_dropped_say_since_when():
    assert (BY_NAME["cris"].removed_in, BY_NAME["nios2"].removed_in) == ("9.2", "9.1")
    assert all(not t.removed_in for t in TARGETS if t.name in QEMU_10_TARGETS)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_magic_and_mask_are_equally_long_and_fit_every_kernel(target):
    assert len(target.magic) == len(target.mask)
    assert len(target.magic) <= 128  # BINPRM_BUF_SIZE before Linux 5.1


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_each_target_header_is_claimed_by_its_own_entry_only(target):
    claimants = [t.name for t in TARGETS if claims(t.magic, t.mask, 0, target.magic)]
    assert claimants == [target.name]


def debian_entry(name: str) -> tuple[bytes, bytes] | None:
    path = Path(f"/usr/share/binfmts/qemu-{name}")
    if not path.exists():
        return None
    fields = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    return unescape(fields["magic"]), unescape(fields["mask"])


def differing_offsets(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> set[int]:
    def masked(magic, mask):
        return [(m & k, k) for m, k in zip(magic, mask)]
    a, b = masked(*ours), masked(*theirs)
    return {i for i in range(max(len(a), len(b))) if a[i:i + 1] != b[i:i + 1]}


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_table_matches_debian_except_for_explained_differences(target):
    need(Path("/usr/share/binfmts").is_dir(), "Debian's qemu-user-static is not installed")
    theirs = debian_entry(target.name)
    if theirs is None:
        # Debian ships no entry for its own CPU family (x86 on amd64) nor for targets it lacks.
        assert target.name in ("i386", "i486", "x86_64", "aarch64_be", "microblazeel", "or1k", "nios2")
        return
    assert differing_offsets((target.magic, target.mask), theirs) == EXPLAINED.get(target.name, set())
    # QEMU's magic is a real header (EV_CURRENT, ET_EXEC, the right e_machine): both tables claim it.
    assert claims(target.magic, target.mask, 0, target.magic)
    assert claims(theirs[0], theirs[1], 0, target.magic)


def test_microblaze_matches_big_endian_binaries_unlike_qemus_table():
    # A big-endian ET_EXEC header: e_type is 00 02. QEMU 10's entry has 02 00 here.
    header = b"\x7fELF\x01\x02\x01" + bytes(9) + b"\x00\x02\xba\xab"
    t = BY_NAME["microblaze"]
    assert claims(t.magic, t.mask, 0, header)
    qemu_magic = b"\x7fELF\x01\x02\x01" + bytes(9) + b"\x02\x00\xba\xab"
    qemu_mask = b"\xff" * 7 + b"\x00" + b"\xff" * 8 + b"\xfe\xff\xff\xff"
    assert not claims(qemu_magic, qemu_mask, 0, header)


@pytest.mark.parametrize("spelling, target", [
    ("aarch64", "aarch64"), ("arm64", "aarch64"), ("linux/arm64", "aarch64"), ("linux/arm64/v8", "aarch64"),
    ("linux/arm/v7", "arm"), ("linux/arm/v6", "arm"), ("armhf", "arm"), ("linux/386", "i386"),
    ("linux/amd64", "x86_64"), ("linux/riscv64", "riscv64"), ("linux/ppc64le", "ppc64le"),
    ("ppc64el", "ppc64le"), ("linux/s390x", "s390x"), ("linux/mips64le", "mips64el"),
    ("linux/loong64", "loongarch64"), ("qemu-aarch64", "aarch64"), ("LINUX/ARM64", "aarch64"),
])
def test_targets_and_platforms_are_interchangeable(spelling, target):
    assert lookup(spelling).name == target


def test_unknown_spelling_is_not_guessed():
    assert lookup("arm65") is None and lookup("linux/") is None


@pytest.mark.parametrize("machine, family", [
    ("x86_64", "i386"), ("i686", "i386"), ("aarch64", "arm"), ("armv7l", "arm"), ("aarch64_be", "armeb"),
    ("ppc64le", "ppcle"), ("ppc64", "ppc"), ("s390x", "s390x"), ("mips64", "mips"), ("riscv64", "riscv64"),
    ("loongarch64", "loongarch"), ("sparc64", "sparc"),
])
def test_host_family_follows_qemus_script(machine, family):
    assert family_of_machine(machine) == family


def _qemu_get_family(machine: str) -> str:
    """qemu_get_family of QEMU's scripts/qemu-binfmt-conf.sh, transcribed case by case: the reference
    that binfmtd's table-driven family_of_machine must answer like."""
    if machine in ("amd64", "i386", "i486", "i586", "i686", "i86pc", "BePC", "x86_64"):
        return "i386"
    if machine.startswith("mips"):
        return "mips"
    if machine in ("Power Macintosh", "ppc64", "powerpc", "ppc"):
        return "ppc"
    if machine in ("ppc64el", "ppc64le"):
        return "ppcle"
    if machine in ("arm", "armel", "armhf", "arm64", "aarch64") or (
            machine.startswith("armv") and machine.endswith("l")):
        return "arm"
    if machine in ("armeb", "aarch64_be") or (machine.startswith("armv") and machine.endswith("b")):
        return "armeb"
    if machine.startswith("sparc"):
        return "sparc"
    if machine.startswith("loongarch"):
        return "loongarch"
    return machine


def _machine_spellings() -> set[str]:
    """Every name, alias, platform part and expected machine in the table, QEMU's own spellings, and
    near misses around each pattern (case, prefixes alone, suffixes on other words)."""
    words = {"", "BePC", "i86pc", "Power Macintosh", "i586", "armv", "armvl", "armvb", "armv5tel", "armv6l",
             "armv7b", "armv8b", "armv7", "armv7lx", "xarmv7l", "arm64be", "mips", "mipsisa64r6el", "sparc",
             "sparcv9", "loongarch", "loongarch32", "x86", "AMD64", "ARMV7L", "Mips64", "ppc64lex", "ia64",
             "s390", "s390x", "riscv64", "parisc64", "sh4a", "m68k", "alpha", "unknown"}
    for target in TARGETS:
        words |= {target.name, target.family, target.machine, *target.aliases}
        words |= {part for platform in target.platforms for part in platform.split("/")}
    return words | {w + suffix for w in set(words) for suffix in ("l", "b", "el", "_be", " ")}


def test_family_of_machine_answers_as_qemus_script_over_many_spellings():
    spellings = _machine_spellings()
    assert len(spellings) > 400
    assert {m: family_of_machine(m) for m in spellings} == {m: _qemu_get_family(m) for m in spellings}


def test_every_target_says_what_uname_prints_under_its_qemu():
    assert all(target.machine for target in TARGETS)


def test_apply_all_registers_cris_and_skips_a_target_whose_emulator_is_missing(ns, tmp_path, root_only_dir):
    """Debian 12 ships qemu-cris-static: `apply --all` registers it and a cris binary runs through
    the kernel's entry. A target without an emulator on disk (here nios2, hidden by
    interpreter_dirs) is skipped with a reason that says why it cannot be installed from QEMU 10."""
    qemu("cris")
    native = {t.name for t in native_targets()}
    emulators = root_only_dir  # binfmtd trusts an emulator only where root alone controls the path
    for t in TARGETS:
        if t.name not in native and t.name != "nios2" and os.path.exists(f"/usr/bin/qemu-{t.qemu}-static"):
            (emulators / f"qemu-{t.qemu}-static").symlink_to(f"/usr/bin/qemu-{t.qemu}-static")
    (tmp_path / "c.toml").write_text(f'interpreter_dirs = ["{emulators}"]\n')
    probe = tmp_path / "probe-cris"
    probe.write_bytes(probes.build_probe("cris"))
    probe.chmod(0o755)

    apply, entry, run = ns.run(f"{BINFMTD} apply --all --json --config {tmp_path / 'c.toml'}",
                               f"cat {BINFMT_MISC}/qemu-cris", shlex.quote(str(probe)))

    assert apply.rc == 0, apply.err
    results = {r["target"]: r for r in apply.json()["results"]}
    assert results["cris"]["action"] == "registered"
    assert results["nios2"]["action"] == "skipped"
    assert "qemu-nios2-static not found" in results["nios2"]["reason"]
    assert "QEMU 9.1 and later have no nios2 emulator" in results["nios2"]["reason"]
    assert "interpreter /usr/bin/qemu-cris-static" in entry.out and "flags: POCF" in entry.out  # the resolved link
    assert (run.rc, run.out) == (0, f"{probes.MARKER}cris\n"), run.err
