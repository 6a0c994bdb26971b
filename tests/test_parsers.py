"""Parsers are pure: tested on text the kernel and the system printed."""

import errno
import os

import pytest

from binfmtd.act import explain_register_error
from binfmtd.config import parse_config
from binfmtd.entry import Entry, normalize_flags, parse_entry, parse_register_line
from binfmtd.errors import UsageError
from binfmtd.facts.elf import CHUNK, find_qemu_banner, parse_elf_section
from binfmtd.facts.host import parse_filesystems, parse_kernel_release, parse_mount_type, target_of_entry
from binfmtd.facts.interpreters import judge_interpreter, safety_problem
from binfmtd.trust import UntrustedPath, resolve_trusted
from binfmtd.targets import BY_NAME

# Printed by Linux 6.18 for an entry registered by binfmtd.
KERNEL_AARCH64 = """enabled
interpreter /usr/bin/qemu-aarch64-static
flags: POCF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
# An extension entry, disabled, as the kernel prints it (no magic, no mask).
KERNEL_JAR = """disabled
interpreter /usr/bin/jexec
flags: 
extension .jar
"""


def test_parse_entry_reads_every_field_the_kernel_prints():
    entry = parse_entry("qemu-aarch64", KERNEL_AARCH64)
    target = BY_NAME["aarch64"]
    assert (entry.enabled, entry.interpreter, entry.flags, entry.offset) == (
        True, "/usr/bin/qemu-aarch64-static", "POCF", 0)
    assert entry.mask == target.mask and entry.magic == target.magic
    assert target_of_entry(entry) is target


def test_parse_extension_entry_is_not_a_qemu_target():
    entry = parse_entry("jar", KERNEL_JAR)
    assert (entry.enabled, entry.extension, entry.flags, entry.magic) == (False, "jar", "", b"")
    assert target_of_entry(entry) is None


def test_register_line_round_trips_and_equals_what_the_kernel_shows():
    target = BY_NAME["mipsel"]
    ours = Entry("qemu-mipsel", "/usr/bin/qemu-mipsel-static", "POCF", 0, target.magic, target.mask)
    assert parse_register_line(ours.register_line()) == ours
    kernel = Entry("qemu-mipsel", "/usr/bin/qemu-mipsel-static", "POCF", 0,
                   bytes(m & k for m, k in zip(target.magic, target.mask)), target.mask)
    assert ours.same_registration(kernel)
    assert not ours.same_registration(Entry(**{**kernel.__dict__, "flags": "POF"}))


@pytest.mark.parametrize("flags, expected", [("F", "F"), ("CF", "POCF"[1:]), ("fcp", "POCF"), ("", "")])
def test_flags_are_normalized_in_kernel_order_and_c_implies_o(flags, expected):
    assert normalize_flags(flags) == expected


@pytest.mark.parametrize("entry, words", [
    (Entry("register", "/x", magic=b"a", mask=b"\xff"), "not allowed"),
    (Entry("..", "/x", magic=b"a"), "not allowed"),
    (Entry("a/b", "/x", magic=b"a"), "not allowed"),
    (Entry("", "/x", magic=b"a"), "not allowed"),
    (Entry("x", "/x", "PQ", magic=b"a"), "unknown flag"),
    (Entry("x", "/x", magic=b"ab", mask=b"\xff"), "must be equally long"),
    (Entry("x", "rel/x", magic=b"a"), "absolute path"),
    (Entry("x", "/x", offset=250, magic=b"\x7fELF" * 5), "256-byte limit"),
])
def test_entry_validation_names_the_problem(entry, words):
    assert words in entry.problem(256)


def test_kernel_release_and_features():
    old = parse_kernel_release("4.4.0-210-generic")
    new = parse_kernel_release("6.18.44-fc-v657")
    assert (old.version, old.supports_fix_binary, old.magic_size_limit) == ((4, 4), False, 128)
    assert (new.supports_fix_binary, new.magic_size_limit, new.tells_qemu_about_p, new.binfmt_misc_per_userns) == (
        True, 256, True, True)
    assert parse_kernel_release("5.4.0").magic_size_limit == 256 and not parse_kernel_release("5.4.0").tells_qemu_about_p


def test_proc_filesystems():
    assert parse_filesystems("nodev\tsysfs\nnodev\tbinfmt_misc\n\text4\n")
    assert not parse_filesystems("nodev\tsysfs\n\text4\n")


# /proc/self/mountinfo of an Amazon Linux 2023 host before and after the automount fires.
MOUNTINFO_AUTOFS = ("24 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
                    "25 24 0:22 / /proc/sys/fs/binfmt_misc rw,relatime shared:13 - autofs systemd-1 "
                    "rw,fd=29,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=14519\n")
MOUNTINFO_TRIGGERED = MOUNTINFO_AUTOFS + (
    "72 25 0:39 / /proc/sys/fs/binfmt_misc rw,nosuid,nodev,noexec,relatime shared:36 - binfmt_misc "
    "binfmt_misc rw\n")


def test_untriggered_automount_is_not_a_mount():
    assert parse_mount_type(MOUNTINFO_AUTOFS, "/proc/sys/fs/binfmt_misc") == "autofs"
    assert parse_mount_type(MOUNTINFO_TRIGGERED, "/proc/sys/fs/binfmt_misc") == "binfmt_misc"
    assert parse_mount_type(MOUNTINFO_AUTOFS, "/elsewhere") is None


def test_static_and_dynamic_executables_are_told_apart():
    qemu = "/usr/bin/qemu-aarch64-static"
    if os.path.exists(qemu):
        assert judge_interpreter(qemu).static and judge_interpreter(qemu).problem is None
    ls = judge_interpreter("/bin/ls")  # dynamically linked on every Debian
    assert not ls.static and "dynamically linked" in ls.problem


def test_an_unchanged_pinned_emulator_is_not_searched_for_its_banner_again(root_only_dir):
    """The no-op apply's saving: a file binfmtd pinned with a QEMU version, found again with the
    same device, inode, size and mtime, showed QEMU's banner then. Any change to the file, or a
    pin without a version, and the banner is searched again (here: a static busybox, refused)."""
    import shutil

    from binfmtd.facts.interpreters import identity_of_open_file

    busybox = os.path.join(os.path.dirname(__file__), ".foreign", "arm64", "bin", "busybox")
    if not os.path.exists(busybox):
        pytest.skip("tests/.foreign is missing (scripts/fetch-foreign)")
    interp = root_only_dir / "qemu-aarch64-static"
    shutil.copyfile(busybox, interp)
    interp.chmod(0o755)
    assert "is not QEMU" in judge_interpreter(str(interp)).problem
    with open(interp, "rb") as f:
        pin = {**identity_of_open_file(f.fileno(), str(interp), version=False), "version": "7.2.22"}
    verdict = judge_interpreter(str(interp), (pin,))
    assert verdict.problem is None and verdict.identity["ino"] == pin["ino"]
    assert "is not QEMU" in judge_interpreter(str(interp), ({**pin, "version": None},)).problem
    os.utime(interp, ns=(pin["mtime"], pin["mtime"] + 1))
    assert "is not QEMU" in judge_interpreter(str(interp), (pin,)).problem


def test_interpreter_safety(root_only_dir):
    directory = root_only_dir / "bin"
    directory.mkdir()
    interp = directory / "qemu-test-static"
    interp.write_bytes(b"\x7fELF")
    interp.chmod(0o755)
    assert safety_problem(str(interp)) is None
    interp.chmod(0o775)
    assert safety_problem(str(interp)) == f"file {interp} is writable by group 'root'"
    interp.chmod(0o755)
    directory.chmod(0o757)
    assert safety_problem(str(interp)) == f"directory {directory} is writable by everyone"
    directory.chmod(0o755)
    os.chown(interp, 1000, 1000)
    assert safety_problem(str(interp)).startswith(f"file {interp} is owned by uid 1000")
    os.chown(interp, 0, 0)
    link = root_only_dir / "link"
    link.symlink_to(interp)
    assert safety_problem(str(link)) is None
    os.lchown(link, 1000, 1000)
    assert safety_problem(str(link)).startswith(f"symlink {link} is owned by uid 1000")
    os.lchown(link, 0, 0)
    interp.chmod(0o644)
    assert safety_problem(str(link)) == f"{interp} is not executable"
    assert "cannot be read" in safety_problem(str(root_only_dir / "missing"))


def test_sticky_world_writable_directory_is_not_trusted(root_only_dir):
    """sudo's secure-path rule: a sticky bit keeps others from replacing root's names, not from
    adding their own, so a sticky world-writable directory on the way is refused all the same."""
    sticky = root_only_dir / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "d").mkdir(mode=0o755)
    interp = sticky / "d" / "q"
    interp.write_bytes(b"")
    interp.chmod(0o755)
    assert safety_problem(str(interp)).startswith(f"directory {sticky} is writable by everyone (sticky or not")


def test_trusted_path_resolves_relative_links_dots_and_loops(root_only_dir):
    (root_only_dir / "real").mkdir()
    (root_only_dir / "real" / "q").write_bytes(b"")
    (root_only_dir / "up").symlink_to("real/../real")
    (root_only_dir / "abs").symlink_to(root_only_dir / "up" / "q")
    assert resolve_trusted(f"{root_only_dir}/./abs") == f"{root_only_dir}/real/q"
    (root_only_dir / "loop").symlink_to("loop")
    with pytest.raises(UntrustedPath, match="more than 40 symlinks"):
        resolve_trusted(str(root_only_dir / "loop"))
    with pytest.raises(UntrustedPath, match="is not a directory"):
        resolve_trusted(f"{root_only_dir}/real/q/x")
    with pytest.raises(UntrustedPath, match="not an absolute path"):
        resolve_trusted("relative/q")


def test_qemu_is_told_from_other_static_binaries_by_its_banner():
    def elf_with(data: bytes) -> tuple[bytes, object]:
        blob = bytes(64) + data
        return blob[:64], lambda offset, size: blob[offset:offset + size]

    banner = (b"\0qemu-aarch64 version 7.2.22 (Debian)\n"
              b"Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\0")
    assert find_qemu_banner(*elf_with(bytes(3 << 20) + banner)) == "qemu-aarch64 version 7.2.22 (Debian)"
    straddling = bytes(CHUNK - 10 - 64 - banner.index(b"Fabrice")) + banner  # across two reads
    assert find_qemu_banner(*elf_with(straddling)) == "qemu-aarch64 version 7.2.22 (Debian)"
    assert find_qemu_banner(*elf_with(b"tcc version 0.9 - Copyright (C) 2001-2006 Fabrice Bellard\0")) is None
    if os.path.exists("/usr/bin/qemu-aarch64-static"):
        with open("/usr/bin/qemu-aarch64-static", "rb") as f:
            header = f.read(64)
            assert parse_elf_section(header, lambda o, n: (f.seek(o), f.read(n))[1], b".rodata")
            assert find_qemu_banner(header, lambda o, n: (f.seek(o), f.read(n))[1]).startswith(
                "qemu-aarch64 version ")


KERNEL_NEWLINE = """enabled
interpreter /opt/a
b
flags: F
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


def test_an_interpreter_with_a_newline_is_read_back_whole():
    # Printed by Linux 6.18 for an entry registered with interpreter "/opt/a\nb".
    entry = parse_entry("qemu-aarch64", KERNEL_NEWLINE)
    assert (entry.interpreter, entry.flags, entry.magic) == ("/opt/a\nb", "F", BY_NAME["aarch64"].magic)


@pytest.mark.parametrize("interpreter, says", [
    ("/opt/q\nx", "contains a newline"), ("/opt/q\tx", "control character \\t"), ("/opt/q\x7fx", "\\x7f"),
    ("/opt/q:x", "contains ':'"),
])
def test_entries_that_binfmt_misc_cannot_hold_faithfully_are_refused(interpreter, says):
    t = BY_NAME["aarch64"]
    problem = Entry("qemu-aarch64", interpreter, "F", 0, t.magic, t.mask).problem()
    assert says in problem and "\n" not in problem


def test_config_parses_targets_flags_and_dirs():
    config = parse_config('targets = ["arm64", "linux/riscv64"]\nflags = "POF"\ninterpreter_dirs = ["/opt/q"]\n')
    assert (config.targets, config.flags, config.interpreter_dirs) == (("arm64", "linux/riscv64"), "POF", ("/opt/q",))
    assert parse_config('targets = "all"').targets == ("all",)


def test_config_tables_for_daemon_and_verify():
    config = parse_config('flags = "POF"\n[daemon]\ninterval = 0.5\n[verify]\nengine = "podman"\ntimeout = 5\n')
    assert (config.daemon_interval, config.verify_engine, config.verify_timeout) == (0.5, "podman", 5)
    assert parse_config("").daemon_interval == 2.0


@pytest.mark.parametrize("text, words", [
    ('targets = ["arm64"\n', "/etc/x.toml: invalid TOML"),
    ('\n\nflags = "POX"\n', "/etc/x.toml:3: flags: got 'POX'"),
    ('targets = "arm64"\n', "/etc/x.toml:1: targets"),
    ('interpreter_dirs = ["rel"]\n', "interpreter_dirs"),
    ('\ntarget = ["arm64"]\n', "/etc/x.toml:2: target: unknown key; allowed keys are targets"),
    ('[daemon]\ninterval = 0\n', "/etc/x.toml:2: daemon.interval: got 0; expected seconds between drift checks"),
    ('[daemon]\ninterval = 1\n[verify]\nengine = "lxc"\n', "/etc/x.toml:4: verify.engine: got 'lxc'; expected one of"),
    ('[verify]\nspeed = 1\n', "/etc/x.toml:2: verify.speed: unknown key"),
    ('\n\ntargets = ["arm64", "arm65"]\n', "/etc/x.toml:3: targets: unknown target or platform 'arm65'"),
])
def test_config_errors_name_file_line_and_key(text, words):
    with pytest.raises(UsageError) as exc:
        parse_config(text, "/etc/x.toml")
    assert words in str(exc.value)


@pytest.mark.parametrize("code, release, flags, words", [
    (errno.EINVAL, "4.4.0", "POCF", "predates Linux 4.8 and has no F flag"),
    (errno.EINVAL, "6.18.0", "POCF", "does not accept this register line"),
    (errno.EEXIST, "6.18.0", "POCF", "appeared meanwhile"),
    (errno.ENOENT, "6.18.0", "POCF", "cannot find interpreter"),
    (errno.EACCES, "6.18.0", "POCF", "noexec"),
])
def test_refused_register_writes_are_explained(code, release, flags, words):
    # The kernel of an old host cannot be had here: its release string is given.
    target = BY_NAME["aarch64"]
    entry = Entry("qemu-aarch64", "/usr/bin/qemu-aarch64-static", flags, 0, target.magic, target.mask)
    message = explain_register_error(OSError(code, os.strerror(code)), entry, parse_kernel_release(release))
    assert message.startswith("qemu-aarch64: ") and words in message


def test_an_interpreter_problem_names_the_path_once():
    from binfmtd.facts.interpreters import Interpreter

    path = "/usr/local/bin/qemu-aarch64-static"
    own = f"file {path} is writable by group 'staff'"
    assert Interpreter(path, problem=own).described == own
    assert Interpreter(path, problem="directory /usr/local/bin is writable by everyone").described == \
        f"{path}: directory /usr/local/bin is writable by everyone"
