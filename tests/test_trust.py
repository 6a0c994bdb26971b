"""The hostile-user suite for interpreters: what the kernel is told to run is fixed by root alone.

Another user (uid 65534, nobody; the test chowns files to it as real root) owns a link, a
directory or a linked directory on the interpreter's path, or a directory on it is writable by
group or everyone: `check` and `apply` refuse with one line naming the component and the fix,
and the kernel's table (in the test's own namespace) stays empty. A good path is registered
resolved. A dynamic binary, a static non-QEMU binary and a path binfmt_misc cannot hold (':',
newline, control characters) are refused by check and apply alike.

Inside the test namespace only uid 0 is mapped (to real root): root's files show as owned by
0 there, everyone else's as 65534 (the overflow uid), so "owned by root" means the same inside
and out. The verdicts are asserted both ways: in-process (the host's view) and in the namespace.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from binfmtd.entry import parse_entry
from binfmtd.facts.interpreters import read_interpreter
from binfmtd.targets import BY_NAME
from binfmtd.trust import UntrustedPath, parse_user_fuse_mounts, resolve_trusted

from conftest import BINFMT_MISC, BINFMTD, ROOT, qemu

NOBODY = 65534
T = BY_NAME["aarch64"]
LIST = f"ls {BINFMT_MISC}"
ENTRY = f"cat {BINFMT_MISC}/{T.entry_name}"


def write_config(tmp_path: Path, *dirs) -> dict:
    """A config searching `dirs` for interpreters; the env that makes binfmtd read it."""
    config = tmp_path / "c.toml"
    config.write_text("interpreter_dirs = [" + ", ".join(json.dumps(str(d)) for d in dirs) + "]\n")
    return {"BINFMTD_CONFIG": str(config)}


def assert_refused_alike(ns, tmp_path: Path, directory: Path, component: str, says: str, fix: str):
    """With `directory` as interpreter_dirs, check and apply refuse with the same verdict, one
    line naming `component` and the fix; the host's view (in-process, outside the namespace)
    agrees; nothing reaches the kernel."""
    verdict = read_interpreter(T.qemu, (str(directory),))
    assert verdict.problem and component in verdict.described and says in verdict.problem, verdict
    assert fix in verdict.fix, verdict

    check, apply, apply_json, listing = ns.run(
        f"{BINFMTD} check aarch64 --json", f"{BINFMTD} apply aarch64", f"{BINFMTD} apply aarch64 --json", LIST,
        env=write_config(tmp_path, directory))
    checked = {c["name"]: c for c in check.json()["checks"]}[f"interpreter:{T.name}"]
    assert check.rc == 1 and not checked["ok"], check.out
    assert component in checked["detail"] and says in checked["detail"] and fix in checked["fix"], checked
    errors = [line for line in apply.err.splitlines() if line.startswith("binfmtd: error:")]
    assert apply.rc == 1 and len(errors) == 1, apply.err
    # One verdict: apply's line is check's detail and fix, word for word.
    assert checked["detail"] in errors[0] and checked["fix"] in errors[0], (errors, checked)
    assert "\n" not in checked["detail"] and "Traceback" not in apply.err
    report = apply_json.json()
    assert apply_json.rc == 1 and [e["target"] for e in report["errors"]] == [T.name]
    assert report["errors"][0]["message"] == errors[0].removeprefix("binfmtd: error: ")
    assert set(listing.out.split()) == {"register", "status"}, "something was registered"


@pytest.fixture
def shared(root_only_dir) -> Path:
    """A sticky world-writable directory, as /tmp is."""
    directory = root_only_dir / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory


def test_nobodys_link_in_a_sticky_world_writable_dir_is_refused_and_their_program_never_runs(
        ns, tmp_path, shared, foreign_busybox):
    """The reported attack: nobody's link to root's QEMU in a /tmp-like directory listed in
    interpreter_dirs. It is refused; re-pointing the link at nobody's own program then runs
    nothing as root when an aarch64 program starts."""
    link = shared / f"qemu-{T.qemu}-static"
    link.symlink_to(qemu(T.qemu))
    os.lchown(link, NOBODY, NOBODY)
    assert_refused_alike(ns, tmp_path, shared, f"directory {shared}", "writable by everyone (sticky or not",
                         f"keep the file out of the shared directory {shared}")

    marker = tmp_path / "ran-as-root"
    evil = shared / "evil"
    evil.write_text(f"#!/bin/sh\nid -u > {marker}\n")
    evil.chmod(0o755)
    os.chown(evil, NOBODY, NOBODY)
    # (In the namespace, uid 65534 is not mapped: the re-pointed link is root's there; no matter.)
    apply, repoint, run = ns.run(f"{BINFMTD} apply aarch64", f"ln -sfn {evil} {link}",
                                 shlex.quote(str(foreign_busybox["arm64"])) + " true",
                                 env=write_config(tmp_path, shared))
    assert apply.rc == 1 and repoint.rc == 0, repoint.err
    assert run.rc != 0 and not marker.exists()


def test_nobodys_link_in_a_root_only_dir_is_refused(ns, tmp_path, root_only_dir):
    link = root_only_dir / f"qemu-{T.qemu}-static"
    link.symlink_to(qemu(T.qemu))
    os.lchown(link, NOBODY, NOBODY)
    assert_refused_alike(ns, tmp_path, root_only_dir, str(link), "is owned by uid 65534",
                         f"replace symlink {link} with one root owns")


def test_nobodys_directory_is_refused(ns, tmp_path, root_only_dir):
    directory = root_only_dir / "theirs"
    directory.mkdir(mode=0o755)
    shutil.copy(qemu(T.qemu), directory / f"qemu-{T.qemu}-static")
    os.chown(directory, NOBODY, NOBODY)
    assert_refused_alike(ns, tmp_path, directory, f"directory {directory}", "is owned by uid 65534",
                         f"chown root {directory}")


def test_nobodys_directory_above_a_root_owned_one_is_refused(ns, tmp_path, root_only_dir):
    """Root's file in root's directory is not enough: nobody can rename that directory away."""
    above = root_only_dir / "theirs"
    below = above / "bin"
    below.mkdir(parents=True, mode=0o755)
    shutil.copy(qemu(T.qemu), below / f"qemu-{T.qemu}-static")
    os.chown(above, NOBODY, NOBODY)
    assert_refused_alike(ns, tmp_path, below, f"directory {above} ", "is owned by uid 65534",
                         f"chown root {above}")


def test_nobodys_symlinked_directory_is_refused(ns, tmp_path, root_only_dir):
    link = root_only_dir / "bin"
    link.symlink_to(os.path.dirname(qemu(T.qemu)))
    os.lchown(link, NOBODY, NOBODY)
    assert_refused_alike(ns, tmp_path, link, f"symlink {link}", "is owned by uid 65534",
                         f"replace symlink {link}")


def test_roots_link_into_nobodys_directory_is_refused(ns, tmp_path, root_only_dir):
    """Links are followed and what they lead to is judged too."""
    theirs = root_only_dir / "theirs"
    theirs.mkdir(mode=0o755)
    shutil.copy(qemu(T.qemu), theirs / f"qemu-{T.qemu}-static")
    os.chown(theirs, NOBODY, NOBODY)
    (root_only_dir / "bin").symlink_to(theirs)
    assert_refused_alike(ns, tmp_path, root_only_dir / "bin", f"directory {theirs}",
                         "is owned by uid 65534", f"chown root {theirs}")


@pytest.mark.parametrize("mode, says", [(0o775, "writable by group 'root'"), (0o757, "writable by everyone")])
def test_group_or_world_writable_component_is_refused(ns, tmp_path, root_only_dir, mode, says):
    directory = root_only_dir / "bin"
    directory.mkdir()
    shutil.copy(qemu(T.qemu), directory / f"qemu-{T.qemu}-static")
    directory.chmod(mode)
    assert_refused_alike(ns, tmp_path, directory, f"directory {directory}", says,
                         f"chmod go-w {directory}")


def test_group_writable_interpreter_file_is_refused(ns, tmp_path, root_only_dir):
    interpreter = root_only_dir / f"qemu-{T.qemu}-static"
    shutil.copy(qemu(T.qemu), interpreter)
    interpreter.chmod(0o775)
    assert_refused_alike(ns, tmp_path, root_only_dir, f"file {interpreter}", "writable by group",
                         f"chmod go-w {interpreter}")


def test_the_resolved_path_is_registered_and_check_shows_where_the_links_lead(ns, tmp_path, root_only_dir):
    """Root's own links are fine, but the kernel is given the path they lead to now, so no link
    is left for anyone to re-point later."""
    real = os.path.realpath(qemu(T.qemu))
    (root_only_dir / "bin").symlink_to(os.path.dirname(real))  # a linked directory ...
    (root_only_dir / "links").mkdir()
    link = root_only_dir / "links" / f"qemu-{T.qemu}-static"
    link.symlink_to(f"../bin/{os.path.basename(real)}")  # ... reached through a relative link
    env = write_config(tmp_path, root_only_dir / "links")
    check, apply, entry = ns.run(f"{BINFMTD} check aarch64 --json", f"{BINFMTD} apply aarch64 --json", ENTRY, env=env)
    checked = {c["name"]: c for c in check.json()["checks"]}[f"interpreter:{T.name}"]
    assert check.rc == 0 and checked["detail"].startswith(f"{link} -> {real}, static, safe, QEMU "), checked
    assert apply.rc == 0 and apply.json()["results"][0]["interpreter"] == real, apply.out
    assert parse_entry(T.entry_name, entry.out).interpreter == real


def test_a_dynamic_binary_is_refused(ns, tmp_path, root_only_dir):
    shutil.copy("/bin/dash", root_only_dir / f"qemu-{T.qemu}-static")
    assert_refused_alike(ns, tmp_path, root_only_dir, f"{root_only_dir}/qemu-{T.qemu}-static",
                         "is dynamically linked", "install qemu-user-static")


@pytest.mark.parametrize("impostor", ["/sbin/ldconfig", "arm64-busybox"])
def test_a_static_binary_that_is_not_qemu_is_refused(ns, tmp_path, root_only_dir, foreign_busybox, impostor):
    """A statically linked program put in QEMU's place (host ldconfig, a foreign busybox)."""
    source = str(foreign_busybox["arm64"]) if impostor == "arm64-busybox" else impostor
    if not os.path.exists(source):
        pytest.skip(f"{source} is not on this host")
    shutil.copy(source, root_only_dir / f"qemu-{T.qemu}-static")
    assert_refused_alike(ns, tmp_path, root_only_dir, f"{root_only_dir}/qemu-{T.qemu}-static",
                         "is not QEMU", "install qemu-user-static")


@pytest.mark.parametrize("name, says", [("a\nb", "contains a newline"), ("a:b", "contains ':'"),
                                        ("a\x01b", "control character \\x01"), ("a\tb", "control character \\t")])
def test_a_path_binfmt_misc_cannot_hold_is_refused(ns, tmp_path, root_only_dir, name, says):
    directory = root_only_dir / name
    directory.mkdir()
    shutil.copy(qemu(T.qemu), directory / f"qemu-{T.qemu}-static")
    assert_refused_alike(ns, tmp_path, directory, f"{directory}/qemu-".replace("\n", "\\n").replace(
        "\x01", "\\x01").replace("\t", "\\t"), says, "without ':' or control")


def test_a_root_link_leading_to_a_name_binfmt_misc_cannot_hold_is_refused(ns, tmp_path, root_only_dir):
    """The resolved path is what gets registered, so it is what must be storable."""
    odd = root_only_dir / "a\nb"
    odd.mkdir()
    shutil.copy(qemu(T.qemu), odd / f"qemu-{T.qemu}-static")
    (root_only_dir / "bin").mkdir()
    (root_only_dir / "bin" / f"qemu-{T.qemu}-static").symlink_to(odd / f"qemu-{T.qemu}-static")
    assert_refused_alike(ns, tmp_path, root_only_dir / "bin", f"resolves to {root_only_dir}/a\\nb/",
                         "contains a newline", "without ':' or control")


def test_an_entry_with_a_newline_in_its_interpreter_is_shown_whole_and_removed(ns, tmp_path):
    """Registered by another tool (or an older binfmtd): status shows the interpreter whole,
    `remove --force` removes it, and `apply --force` replaces it with the resolved QEMU."""
    magic = "".join(f"\\x{b:02x}" for b in T.magic)
    mask = "".join(f"\\x{b:02x}" for b in T.mask)
    line = f":{T.entry_name}:M::{magic}:{mask}:/opt/a\nb:P"
    register = f"printf '%s' {shlex.quote(line)} > {BINFMT_MISC}/register"
    status, text, remove, listing = ns.run(register, f"{BINFMTD} status --json", f"{BINFMTD} status",
                                           f"{BINFMTD} remove aarch64 --force --json", LIST)[1:]
    entry, = [e for e in status.json()["entries"] if e["name"] == T.entry_name]
    assert (entry["interpreter"], entry["flags"], entry["target"]) == ("/opt/a\nb", "P", T.name)
    assert "/opt/a\\nb" in text.out and "\nb\n" not in text.out, text.out
    assert remove.rc == 0 and remove.json()["results"][0]["action"] == "removed", remove.out
    assert set(listing.out.split()) == {"register", "status"}

    apply, entry_file = ns.run(register, f"{BINFMTD} apply aarch64 --force --json", ENTRY)[1:]
    assert apply.rc == 0 and apply.json()["results"][0]["action"] == "replaced", apply.out
    assert parse_entry(T.entry_name, entry_file.out).interpreter == os.path.realpath(qemu(T.qemu))


def test_check_outside_any_namespace_gives_the_same_verdict(tmp_path, root_only_dir):
    """The host's own view (no user namespace, real uids): nobody's link is refused by check."""
    link = root_only_dir / f"qemu-{T.qemu}-static"
    link.symlink_to(qemu(T.qemu))
    os.lchown(link, NOBODY, NOBODY)
    env = {**os.environ, **write_config(tmp_path, root_only_dir), "PYTHONPATH": str(ROOT),
           "BINFMTD_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "binfmtd", "check", "aarch64", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    checked = {c["name"]: c for c in json.loads(done.stdout)["checks"]}[f"interpreter:{T.name}"]
    assert done.returncode == 1 and f"symlink {link} is owned by uid 65534" in checked["detail"], checked


MOUNTINFO_FUSE = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
62 22 0:52 / /home/bob/mnt rw,nosuid,nodev,relatime shared:35 - fuse.sshfs bob@example:/ rw,user_id=1000,group_id=1000
63 22 0:53 / /mnt/roots rw,relatime - fuse.bindfs /srv rw,user_id=0,group_id=0,allow_other
64 22 8:17 / /media/usb rw,nosuid,nodev - fuseblk /dev/sdb1 rw,user_id=1001,group_id=1001,allow_other,blksize=4096
65 22 0:20 / /sys/fs/fuse/connections rw - fusectl fusectl rw
"""


def test_fuse_mounts_made_by_users_are_found_in_mountinfo():
    assert parse_user_fuse_mounts(MOUNTINFO_FUSE) == {os.makedev(0, 52): 1000, os.makedev(8, 17): 1001}


def test_owners_on_a_users_fuse_mount_are_not_believed(root_only_dir):
    """A user's FUSE daemon (seen by root with user_allow_other) can answer "root, 0755" for
    anything. Producing one needs fusermount and a fuse.conf change on the host, so the mount
    table is what is given here: the directory's real device stands for a user's FUSE mount."""
    (root_only_dir / "bin").mkdir()
    interpreter = root_only_dir / "bin" / f"qemu-{T.qemu}-static"
    shutil.copy(qemu(T.qemu), interpreter)
    assert resolve_trusted(str(interpreter), user_mounts={}) == str(interpreter)
    with pytest.raises(UntrustedPath, match="is on a FUSE filesystem mounted by uid 1000") as refused:
        resolve_trusted(str(interpreter), user_mounts={os.stat(root_only_dir).st_dev: 1000})
    assert str(interpreter).startswith(refused.value.component)  # the first component on that device


@pytest.mark.parametrize("case", ["nobodys-link", "newline"])
def test_export_refuses_what_apply_refuses(tmp_path, root_only_dir, case):
    """export (binfmt.d files for systemd-binfmt) is a third client of the same verdict: it
    writes nothing for an interpreter apply would refuse (a newline used to split its line)."""
    directory = root_only_dir / ("a\nb" if case == "newline" else "bin")
    directory.mkdir()
    if case == "newline":
        shutil.copy(qemu(T.qemu), directory / f"qemu-{T.qemu}-static")
    else:
        (directory / f"qemu-{T.qemu}-static").symlink_to(qemu(T.qemu))
        os.lchown(directory / f"qemu-{T.qemu}-static", NOBODY, NOBODY)
    dest = tmp_path / "binfmt.d"
    dest.mkdir()
    env = {**os.environ, **write_config(tmp_path, directory), "PYTHONPATH": str(ROOT),
           "BINFMTD_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "binfmtd", "export", "--format", "binfmt.d", "--dest", str(dest),
                           "aarch64"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ("contains a newline" if case == "newline" else "is owned by uid 65534") in done.stderr
    assert list(dest.iterdir()) == []


def test_an_entry_through_nobodys_link_is_not_taken_as_the_desired_one(ns, tmp_path, root_only_dir):
    """Another tool registered QEMU through nobody's link (the link points at the right file
    today): that is not "registered as desired". apply leaves it as another tool's, and
    `apply --force` replaces it with the resolved path."""
    link = root_only_dir / f"qemu-{T.qemu}-static"
    link.symlink_to(qemu(T.qemu))
    os.lchown(link, NOBODY, NOBODY)
    magic = "".join(f"\\x{b:02x}" for b in T.magic)
    mask = "".join(f"\\x{b:02x}" for b in T.mask)
    register = f"printf '%s' {shlex.quote(f':{T.entry_name}:M::{magic}:{mask}:{link}:POCF')} > {BINFMT_MISC}/register"
    apply, forced, entry = ns.run(register, f"{BINFMTD} apply aarch64 --json", f"{BINFMTD} apply aarch64 --force --json",
                                  ENTRY)[1:]
    result, = apply.json()["results"]
    assert result["action"] == "skipped" and "registered by another tool" in result["reason"], result
    assert forced.rc == 0 and forced.json()["results"][0]["action"] == "replaced", forced.out
    assert parse_entry(T.entry_name, entry.out).interpreter == os.path.realpath(qemu(T.qemu))
