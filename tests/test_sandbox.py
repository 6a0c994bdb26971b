"""`binfmtd sandbox` keeps its promise ("try a plan without touching the host"): its own
binfmt_misc and state directory, every id mapped so real tools work; and "private table" is a
fact about the binfmt_misc instance mounted at the path, not about being in a user namespace."""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from binfmtd.entry import escape
from binfmtd.facts.host import read_binfmt_misc, read_kernel
from binfmtd.targets import BY_NAME

from conftest import BINFMT_MISC, BINFMTD, ROOT, host_table, need, qemu

STATE_LINE = re.compile(r"state directory (\S+) are private")


def sandbox(script: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    need(read_kernel().binfmt_misc_per_userns, "binfmt_misc per user namespace needs Linux 6.7+")
    return subprocess.run(f"{BINFMTD} sandbox -- sh -c {shlex.quote(script)}", shell=True, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def snapshot(directory: Path) -> dict:
    """Every file in `directory` with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_sandbox_never_reads_or_writes_the_hosts_state(tmp_path):
    qemu("aarch64")
    host = tmp_path / "host-state"
    host.mkdir()
    (tmp_path / "none.toml").write_text("")
    aarch64 = BY_NAME["aarch64"]
    # The host's files say things the sandbox must not believe: that binfmtd owns a qemu-aarch64
    # entry, and (native.json, valid for this boot) that this host runs aarch64 natively.
    line = f":qemu-aarch64:M::{escape(aarch64.magic)}:{escape(aarch64.mask)}:/usr/bin/qemu-aarch64-static:F"
    (host / "state.json").write_text(json.dumps({"version": 1, "last_apply": 1.0,
                                                 "entries": {"qemu-aarch64": {"line": line, "replaced": None}}}))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (host / "native.json").write_text(json.dumps({"boot_id": boot_id, "machine": os.uname().machine,
                                                  "native": ["aarch64", "riscv64"]}))
    (host / "lock").write_text("")
    os.utime(host / "state.json", ns=(1_000_000_000, 1_000_000_000))  # an mtime no write can keep
    out = tmp_path / "out"
    out.mkdir()
    with host_table():  # the host's table mounted, and no other test changing it meanwhile
        before, table_before = snapshot(host), read_binfmt_misc().entries
        done = sandbox(f"""
        {BINFMTD} apply aarch64 riscv64 --json > {out}/apply.json
        {BINFMTD} remove aarch64 --json > {out}/remove.json
        {BINFMTD} verify riscv64 --engine sandbox --json > {out}/verify.json
        {BINFMTD} status --json > {out}/status.json
        echo "$BINFMTD_STATE_DIR" > {out}/state_dir
        ls -A {host} > {out}/host_listing
        """, {"BINFMTD_STATE_DIR": str(host), "BINFMTD_CONFIG": str(tmp_path / "none.toml")})
        table_after = read_binfmt_misc().entries
    assert done.returncode == 0, done.stderr

    assert snapshot(host) == before  # byte-identical, mtimes unchanged, no file added or removed
    assert table_after == table_before
    # It worked inside, on its own table and state: aarch64 was not "native", remove found
    # binfmtd's own entry, verify ran riscv64 in the sandbox's table.
    apply = json.loads((out / "apply.json").read_text())
    assert [(r["target"], r["action"]) for r in apply["results"]] == [("aarch64", "registered"),
                                                                      ("riscv64", "registered")]
    remove = json.loads((out / "remove.json").read_text())
    assert [(r["target"], r["action"]) for r in remove["results"]] == [("aarch64", "removed")]
    verify = json.loads((out / "verify.json").read_text())
    assert verify["ok"] and verify["results"][0]["machine"] == "riscv64"
    status = json.loads((out / "status.json").read_text())
    assert status["binfmt_misc"]["private"]
    assert [(e["name"], e["owner"]) for e in status["entries"]] == [("qemu-riscv64", "binfmtd")]
    # It said where its state went; inside, the host's directory showed the sandbox's files
    # (hidden under them), and the private directory is gone from the host afterwards.
    private = (out / "state_dir").read_text().strip()
    assert STATE_LINE.search(done.stderr).group(1) == private != str(host)
    assert "native.json" in (out / "host_listing").read_text().split()
    assert not os.path.exists(private)


def test_sandbox_exit_code_is_the_commands(tmp_path):
    done = sandbox("exit 7", {"BINFMTD_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 7
    assert not (tmp_path / "state").exists()


def test_root_sandbox_maps_every_id_so_chown_works(tmp_path):
    need(os.geteuid() == 0, "mapping every id needs real root")
    done = sandbox(f"""
        cat /proc/self/uid_map /proc/self/gid_map
        cd {tmp_path}
        for owner in 0:50 50:50 1000:1000 65534:65534 123456:7; do
            touch "f-$owner" && chown "$owner" "f-$owner" || exit 1
        done
        setpriv --reuid 1000 --regid 1000 --clear-groups id -u
    """, {"BINFMTD_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr
    uid_map, gid_map, setpriv_uid = done.stdout.splitlines()
    assert uid_map.split() == gid_map.split() == ["0", "0", "4294967295"]
    assert setpriv_uid == "1000"
    # The host sees the same ids: the map is the identity, nothing is shifted.
    for owner in ("0:50", "50:50", "1000:1000", "65534:65534", "123456:7"):
        st = (tmp_path / f"f-{owner}").stat()
        assert f"{st.st_uid}:{st.st_gid}" == owner


def test_dpkg_installs_a_package_with_foreign_owners_in_the_sandbox(tmp_path):
    """dpkg unpacks as root and chowns each file to the owner in the package (root:staff here,
    as base-files ships /usr/local): with only uid 0 mapped that chown fails with EINVAL."""
    need(os.geteuid() == 0, "mapping every id needs real root")
    need(shutil.which("dpkg") is not None and shutil.which("dpkg-deb") is not None, "dpkg is not installed")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: binfmtd-owners\nVersion: 1\nArchitecture: all\n"
                                            "Maintainer: binfmtd tests <root@localhost>\nDescription: owners\n")
    (pkg / "srv" / "staff").mkdir(parents=True)
    (pkg / "srv" / "staff" / "file").write_text("x\n")
    os.chown(pkg / "srv" / "staff", 0, 50)
    os.chown(pkg / "srv" / "staff" / "file", 1000, 1000)
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(tmp_path / "owners.deb")], check=True,
                   capture_output=True)
    root = tmp_path / "root"
    (root / "var" / "lib" / "dpkg" / "info").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "updates").mkdir()
    (root / "var" / "lib" / "dpkg" / "status").write_text("")
    done = sandbox(f"dpkg --root={root} --force-script-chrootless --force-bad-path -i {tmp_path / 'owners.deb'} && "
                   f"dpkg --root={root} -s binfmtd-owners | grep '^Status'",
                   {"BINFMTD_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr
    assert "install ok installed" in done.stdout
    st_dir, st_file = (root / "srv" / "staff").stat(), (root / "srv" / "staff" / "file").stat()
    assert (st_dir.st_uid, st_dir.st_gid, st_file.st_uid, st_file.st_gid) == (0, 50, 1000, 1000)


def test_a_foreign_rootfs_chowns_under_emulation_in_the_sandbox(tmp_path, foreign_busybox):
    """An arm64 root filesystem used inside the sandbox: its own chown, run by QEMU through the
    sandbox's private entry, gives files to any owner."""
    need(os.geteuid() == 0, "mapping every id needs real root")
    qemu("aarch64")
    (tmp_path / "none.toml").write_text("")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    shutil.copy(foreign_busybox["arm64"], root / "bin" / "busybox")
    done = sandbox(f"""
        {BINFMTD} apply aarch64 >/dev/null 2>&1 || exit 90
        chroot {root} /bin/busybox sh -c 'busybox uname -m; busybox touch /tmp/f; busybox chown 1000:50 /tmp/f &&
            busybox stat -c %u:%g /tmp/f'
    """, {"BINFMTD_STATE_DIR": str(tmp_path / "state"), "BINFMTD_CONFIG": str(tmp_path / "none.toml")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aarch64", "1000:50"]
    assert (root / "tmp" / "f").stat().st_uid == 1000


# --- "private" is the instance mounted at the path ---

def test_an_inherited_host_mount_is_not_called_private(tmp_path):
    """Real root in a child user namespace whose mount namespace still shows the host's
    binfmt_misc writes to the host's table: binfmtd must not call that table private. Nothing is
    registered: `apply --check` only shows what it would say."""
    need(read_kernel().binfmt_misc_per_userns, "binfmt_misc per user namespace needs Linux 6.7+")
    (tmp_path / "none.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BINFMTD_STATE_DIR": str(tmp_path / "state"),
           "BINFMTD_CONFIG": str(tmp_path / "none.toml")}
    steps = (f"stat -c %d {BINFMT_MISC}; {BINFMTD} status --json; {BINFMTD} check --json; "
             f"{BINFMTD} apply sparc64 --check --json 2>&1 >/dev/null; true")
    with host_table():
        host_device = os.stat(BINFMT_MISC).st_dev
        inherited = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", steps],
                                   env=env, capture_output=True, text=True, timeout=120)
        fresh = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                f"mount -t binfmt_misc binfmt_misc {BINFMT_MISC} && {steps}"],
                               env=env, capture_output=True, text=True, timeout=120)
    for done, host_instance in ((inherited, True), (fresh, False)):
        assert done.returncode == 0, done.stderr
        device, status, check, warnings = done.stdout.split("\n", 3)
        assert (int(device) == host_device) == host_instance  # what the kernel says about the mount
        assert json.loads(status)["binfmt_misc"]["private"] is not host_instance
        table = {c["name"]: c for c in json.loads(check)["checks"]}["table"]["detail"]
        if host_instance:
            assert "registrations reach it" in table and "registrations reach it" in warnings
            assert "do not reach the host" not in warnings
        else:
            assert "private to this user namespace" in table and "do not reach the host" in warnings


def test_the_initial_user_namespace_is_the_hosts_table_without_a_subprocess(monkeypatch):
    """On the host (the boot path) private is false by definition: no namespace is created."""
    import subprocess as real

    def refuse(*args, **kwargs):
        raise AssertionError(f"subprocess started: {args}")

    with open("/proc/self/uid_map") as f:
        need(f.read().split() == ["0", "0", "4294967295"], "runs only in the initial user namespace")
    with host_table(), monkeypatch.context() as patch:
        patch.setattr(real, "run", refuse)
        patch.setattr(real, "Popen", refuse)
        table = read_binfmt_misc()
    assert table.mounted and table.private is False and table.nested is False


def test_identity_map_maps_each_range_of_this_namespace_to_itself():
    from binfmtd.namespaces import identity_map

    assert identity_map("         0          0 4294967295\n") == "0 0 4294967295\n"
    # in a container whose root is host uid 100000: the child maps the same ids, as themselves
    assert identity_map("0 100000 65536\n70000 1000 1\n") == "0 0 65536\n70000 70000 1\n"


def test_instance_comparison_needs_both_devices():
    from binfmtd.facts.host import parse_instance_devices

    assert parse_instance_devices("51\n51\n") is True
    assert parse_instance_devices("21\n52\n") is False
    assert parse_instance_devices("21\n") is None  # the fresh mount failed: unknown, not private
