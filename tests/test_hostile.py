"""A hostile user on the host: nothing another uid controls is trusted, written or run as root.

Another uid (65534, nobody) owns the state directory or a directory above it, plants links where
binfmtd writes, forges the files binfmtd reads back, or owns the node-exporter directory the
daemon's metrics go to. Each test asserts what the kernel shows and what happened to the files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys

from conftest import BINFMT_MISC, BINFMTD, need, qemu
from binfmtd.entry import Entry
from binfmtd.facts.host import native_targets
from binfmtd.metrics import write_textfile
from binfmtd.targets import lookup

NOBODY = 65534
LIST = f"ls {BINFMT_MISC}"


def one_error_line(step) -> str:
    lines = [line for line in step.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in step.err, step.err
    return lines[0]


def test_state_directory_owned_by_another_user_is_refused(ns):
    ns.state_dir.mkdir()
    os.chown(ns.state_dir, NOBODY, NOBODY)
    apply, listing = ns.run(f"{BINFMTD} apply aarch64", LIST)
    assert apply.rc == 3
    line = one_error_line(apply)
    assert str(ns.state_dir) in line and "not root" in line and "BINFMTD_STATE_DIR" in line
    assert listing.out.split() == ["register", "status"]
    assert os.listdir(ns.state_dir) == []  # not even the lock was created in it


def test_state_directory_below_a_directory_others_can_write_is_refused(ns):
    parent = ns.workdir / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)  # not sticky: anyone may rename root's directory away and put theirs
    ns.state_dir = parent / "state"
    apply, remove, listing = ns.run(f"{BINFMTD} apply aarch64", f"{BINFMTD} remove --all", LIST)
    assert apply.rc == remove.rc == 3
    assert "writable by everyone" in one_error_line(apply)
    assert listing.out.split() == ["register", "status"]


def test_links_planted_in_the_state_directory_are_never_followed(ns):
    ns.state_dir.mkdir()
    victim = ns.workdir / "root-only"
    victim.write_text("precious\n")
    (ns.state_dir / "lock").symlink_to(victim)
    apply = ns.one(f"{BINFMTD} apply aarch64")
    assert apply.rc == 3 and "lock" in one_error_line(apply)
    (ns.state_dir / "lock").unlink()
    (ns.state_dir / "state.json").symlink_to(victim)
    apply, listing = ns.run(f"{BINFMTD} apply aarch64", LIST)
    assert apply.rc == 1 and "symbolic link" in one_error_line(apply)
    assert listing.out.split() == ["register", "status"]
    assert victim.read_text() == "precious\n"


def test_forged_native_cache_cannot_make_binfmtd_emulate_the_host_itself(ns):
    """A cache that says nothing is native would register qemu-x86_64 on an x86_64 host; every
    program would then fail with ELOOP. The cache may only narrow the CPU family."""
    own = lookup(os.uname().machine)
    ns.state_dir.mkdir()
    boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
    (ns.state_dir / "native.json").write_text(json.dumps(
        {"boot_id": boot_id, "machine": os.uname().machine, "native": []}))
    apply, listing, true = ns.run(f"{BINFMTD} apply --all --json", LIST, "/bin/true")
    assert apply.rc == 0, apply.err
    assert own.entry_name not in listing.out.split()
    actions = {r["target"]: r["action"] for r in apply.json()["results"]}
    assert actions[own.name] == "skipped"
    assert true.rc == 0
    assert {t.name for t in native_targets()} >= {own.name}


def test_forged_replaced_line_with_an_untrusted_interpreter_is_not_registered_by_remove(ns):
    """Even a state file that got past the directory check: what remove puts back passes the
    checks any entry does (here: an interpreter another user owns)."""
    evil = ns.workdir / "evil"
    evil.write_text("#!/bin/sh\nid > /tmp/pwned\n")
    os.chmod(evil, 0o755)
    os.chown(evil, NOBODY, NOBODY)
    target = lookup("aarch64")
    forged = Entry("qemu-aarch64", str(evil), "", 0, target.magic, target.mask).register_line()
    state_file = ns.state_dir / "state.json"
    forge = (f"{shlex.quote(sys.executable)} -c 'import json, sys; p = sys.argv[1]; s = json.load(open(p)); "
             f"s[\"entries\"][\"qemu-aarch64\"][\"replaced\"] = sys.argv[2]; json.dump(s, open(p, \"w\"))' "
             f"{state_file} {shlex.quote(forged)}")
    apply, forging, remove, listing = ns.run(f"{BINFMTD} apply aarch64", forge, f"{BINFMTD} remove aarch64 --json",
                                             LIST)
    assert apply.rc == 0 and forging.rc == 0, apply.err + forging.err
    assert json.loads(state_file.read_text())["entries"] == {}
    assert remove.rc == 0, remove.err
    assert "not put back" in remove.json()["results"][0]["reason"]
    assert listing.out.split() == ["register", "status"]


def test_metrics_textfile_in_a_directory_another_user_owns_never_writes_through_their_links(tmp_path):
    """node_exporter's textfile directory is often another user's: whatever names they plant,
    root replaces only the textfile itself, by rename, and never writes through a link."""
    textfiles = tmp_path / "node-exporter"
    textfiles.mkdir()
    os.chown(textfiles, NOBODY, NOBODY)
    victim = tmp_path / "root-only"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    target = textfiles / "binfmtd.prom"
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # the names the old writer used
        os.symlink(victim, textfiles / f"binfmtd.prom.tmp.{pid}")
    os.symlink(victim, target)
    write_textfile(str(target), "binfmtd_binfmt_misc_mounted 1\n")
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.read_text() == "binfmtd_binfmt_misc_mounted 1\n"


def test_interpreter_check_and_apply_agree_that_the_state_directory_is_needed_first(ns):
    """--check reads no state file through a planted link either."""
    qemu("aarch64")
    ns.state_dir.mkdir()
    victim = ns.workdir / "root-only"
    victim.write_text("{}")
    (ns.state_dir / "state.json").symlink_to(victim)
    check = ns.one(f"{BINFMTD} apply aarch64 --check")
    assert check.rc == 1 and "symbolic link" in one_error_line(check)


def test_status_never_opens_another_tools_interpreter_that_is_not_a_regular_file(ns, tmp_path):
    """Another tool's entry may name any path, which a user may point at a device: root's status
    and metrics look at it with stat() alone (opening /dev/watchdog or a tape has effects)."""
    need(shutil.which("strace") is not None, "strace is missing (apt-get install strace)")
    link = tmp_path / "qemu-user-chosen"
    link.symlink_to("/dev/null")
    target = lookup("aarch64")
    line = Entry("qemu-aarch64", str(link), "", 0, target.magic, target.mask).register_line()
    trace = tmp_path / "trace"
    register, status, prometheus = ns.run(
        f"printf '%s' {shlex.quote(line)} > {BINFMT_MISC}/register",
        f"strace -f -qq -e trace=open,openat -o {trace} {BINFMTD} status --json",
        f"{BINFMTD} status --format prometheus")
    assert register.rc == 0 and status.rc == 0 and prometheus.rc == 0, status.err + prometheus.err
    opened = [row for row in trace.read_text().splitlines() if str(link) in row or "/dev/null" in row.split('"')[1:2]]
    assert opened == [], opened
    assert status.json()["entries"][0]["interpreter"] == str(link)


def test_verify_records_nothing_in_a_state_directory_apply_refuses(ns, foreign_busybox):
    """verify keeps the metrics' record in the state directory under the same rules as apply."""
    ns.state_dir.mkdir()
    os.chown(ns.state_dir, NOBODY, NOBODY)
    elsewhere = ns.workdir / "apply-state"
    apply, verify = ns.run(f"BINFMTD_STATE_DIR={elsewhere} {BINFMTD} apply aarch64",  # a table to verify
                           f"{BINFMTD} verify aarch64 --engine sandbox --json")
    assert apply.rc == 0, apply.err
    assert verify.rc == 0, verify.err
    assert os.listdir(ns.state_dir) == []
