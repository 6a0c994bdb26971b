"""Parsers are pure: tested on text the kernel and the system printed."""

import errno
import os
import stat

import pytest

from binfmtd.act import explain_register_error
from binfmtd.config import parse_config
from binfmtd.entry import Entry, normalize_flags, parse_entry, parse_register_line
from binfmtd.errors import UsageError
from binfmtd.facts import parse_filesystems, parse_kernel_release, parse_mount_type, target_of_entry
from binfmtd.interpreters import is_static, safety_problem
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
        assert is_static(qemu)
    assert not is_static("/bin/ls")  # dynamically linked on every Debian


def test_interpreter_safety(tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    interp = directory / "qemu-test-static"
    interp.write_bytes(b"\x7fELF")
    interp.chmod(0o755)
    assert safety_problem(str(interp)) is None
    interp.chmod(0o775)
    assert "writable by group" in safety_problem(str(interp))
    interp.chmod(0o755)
    directory.chmod(0o757)
    assert safety_problem(str(interp)) == f"{directory} is writable by everyone"
    directory.chmod(0o755)
    os.chown(interp, 1000, 1000)
    assert "owned by uid 1000" in safety_problem(str(interp))
    os.chown(interp, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(interp)
    assert safety_problem(str(link)) is None
    interp.chmod(0o644)
    assert safety_problem(str(link)) == "is not executable"
    assert "cannot be read" in safety_problem(str(tmp_path / "missing"))


def test_sticky_world_writable_parent_is_safe(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777 | stat.S_ISVTX)
    (sticky / "d").mkdir(mode=0o755)
    interp = sticky / "d" / "q"
    interp.write_bytes(b"")
    interp.chmod(0o755)
    assert safety_problem(str(interp)) is None


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
    from binfmtd.plan import interpreter_problem

    path = "/usr/local/bin/qemu-aarch64-static"
    assert interpreter_problem(path, f"{path} is writable by group 'staff'") == f"{path} is writable by group 'staff'"
    assert interpreter_problem(path, "/usr/local/bin is writable by everyone") == \
        f"{path}: /usr/local/bin is writable by everyone"
    assert interpreter_problem(path, "is not executable") == f"{path} is not executable"
