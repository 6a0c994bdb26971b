"""Packaging: the Debian package and the container image, built from this checkout with Debian's
own tools and used as an admin would: `apt-get install ./dist/binfmtd_*_all.deb`, then purge;
`podman run --privileged IMAGE apply ...` like tonistiigi/binfmt.

These tests change this host and put back what they changed: they install and purge the package
(its postinst enables binfmtd.service, its prerm removes what binfmtd registered), and rootful
containers share the host's user namespace, hence its binfmt_misc table. They register only
targets no other tool registered, mount the host's binfmt_misc only if it was not mounted, and
check that every entry they did not make is as it was. The base image (debootstrap) and the
image's layers are kept in podman's storage, so later runs build in seconds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from binfmtd import __version__
from binfmtd.facts.host import native_targets

from conftest import BINFMT_MISC, ROOT, host_table, need, set_aside

DEB = ROOT / "dist" / f"binfmtd_{__version__}_all.deb"
BASE_IMAGE = "localhost/binfmtd-base:bookworm"
IMAGE = "localhost/binfmtd:test"
UNIT = "/lib/systemd/system/binfmtd.service"
WANTS = "/etc/systemd/system/multi-user.target.wants/binfmtd.service"
# Files the package installs; after purge, none of them may be left.
PACKAGE_PATHS = ["/usr/bin/binfmtd", "/usr/lib/python3/dist-packages/binfmtd/__main__.py", UNIT,
                 "/lib/systemd/system/binfmtd-daemon.service", "/etc/binfmtd/binfmtd.toml",
                 "/usr/share/doc/binfmtd/copyright", "/usr/share/doc/binfmtd/changelog.gz",
                 "/usr/share/man/man1/binfmtd.1.gz"]
# A non-QEMU entry another tool made: binfmtd must never touch it.
FOREIGN = f"binfmtd-test-other-{os.getpid()}"
FOREIGN_LINE = rf":{FOREIGN}:M::\x7fBINFMTDTEST{os.getpid()}::/bin/false:"
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def run(argv, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def host_entries() -> dict[str, str]:
    """Every entry of the host's table (the caller has it mounted), name -> what the kernel prints."""
    return {p.name: p.read_text() for p in Path(BINFMT_MISC).iterdir() if p.name not in ("register", "status")}


@contextlib.contextmanager
def table_held_elsewhere():
    """A process in a mount namespace of its own, with its copy of the host's binfmt_misc mount: the
    kernel keeps the table's entries for as long as one mount of it exists anywhere."""
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"[ -e {BINFMT_MISC}/register ] && echo held && exec sleep 600"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


def remove_entry(name: str) -> None:
    if os.path.exists(f"{BINFMT_MISC}/{name}"):
        Path(BINFMT_MISC, name).write_text("-1")


# What `scripts/install` (the README's set-up) leaves on a host, and the package would take for its
# own: its config, binfmtd's state, the units and their enablement. The package test moves them
# aside for its install and purge (dpkg would otherwise ask about the config, purge would delete
# it and the state, and the enable link would point at the install's unit) and puts them back.
INSTALLED_BY_SCRIPT = ["/etc/binfmtd", "/var/lib/binfmtd", "/etc/systemd/system/binfmtd.service",
                       "/etc/systemd/system/binfmtd-daemon.service", WANTS,
                       "/etc/systemd/system/multi-user.target.wants/binfmtd-daemon.service"]


@contextlib.contextmanager
def files_set_aside(paths):
    """Each existing path renamed to PATH.binfmtd-test-aside while the test runs, and back after."""
    moved = [p for p in paths if os.path.lexists(p)]
    for path in moved:
        os.rename(path, f"{path}.binfmtd-test-aside")
    try:
        yield moved
    finally:
        for path in moved:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
            os.rename(f"{path}.binfmtd-test-aside", path)


@pytest.fixture(scope="module")
def deb() -> Path:
    need(shutil.which("dpkg-deb") is not None, "dpkg-deb is missing (a Debian host has it: apt-get install dpkg)")
    started = time.monotonic()
    done = run([str(ROOT / "scripts" / "build-deb")], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dist/binfmtd_{__version__}_all.deb" and DEB.is_file()
    print(f"scripts/build-deb: {time.monotonic() - started:.1f}s")
    return DEB


def test_package_holds_the_program_units_config_and_docs(deb):
    fields = {key: run(["dpkg-deb", "-f", str(deb), key]).stdout.strip()
              for key in ("Package", "Version", "Architecture", "Depends", "Recommends")}
    assert fields == {"Package": "binfmtd", "Version": __version__, "Architecture": "all",
                      "Depends": "python3 (>= 3.11), python3-typer, python3-psutil, mount",
                      "Recommends": "qemu-user-static"}
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    assert set(PACKAGE_PATHS) <= files
    modules = {f"/usr/lib/python3/dist-packages/{p.relative_to(ROOT).as_posix()}"
               for p in (ROOT / "binfmtd").rglob("*.py")}
    assert modules <= files and not any("__pycache__" in f for f in files)
    launcher = next(line for line in listing.splitlines() if line.endswith(" ./usr/bin/binfmtd"))
    assert launcher.startswith("-rwxr-xr-x root/root ")
    assert run(["dpkg-deb", "-I", str(deb), "conffiles"]).stdout.split() == ["/etc/binfmtd/binfmtd.toml"]


def test_lintian_finds_no_errors(deb):
    need(shutil.which("lintian") is not None, "lintian is missing (apt-get install lintian)")
    done = run(["lintian", "--fail-on", "error", "--display-info", str(deb)])
    print(done.stdout)
    assert done.returncode == 0 and not [line for line in done.stdout.splitlines() if line.startswith("E:")], done.stdout


def test_build_fails_naming_a_missing_unit(tmp_path):
    checkout = tmp_path / "checkout"
    for part in ("binfmtd", "scripts", "packaging", "systemd"):
        shutil.copytree(ROOT / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "systemd" / "binfmtd-daemon.service").unlink()
    done = run([str(checkout / "scripts" / "build-deb")])
    assert done.returncode == 1 and "systemd/binfmtd-daemon.service is missing" in done.stderr
    assert not (checkout / "dist").exists()


def test_installed_package_applies_verifies_and_purges_without_a_trace(deb, ns, foreign_busybox):
    need(shutil.which("apt-get") is not None, "apt-get is missing")
    installed = run(["dpkg-query", "-W", "-f", "${Status}", "binfmtd"]).stdout
    if "installed" in installed.split():
        pytest.skip("the binfmtd package is installed on this host; the test would purge it")
    native = {t.name for t in native_targets()}
    target = next(name for name in ("s390x", "riscv64") if name not in native)  # one no host runs natively
    with host_table() as was_mounted, files_set_aside(INSTALLED_BY_SCRIPT), set_aside(f"qemu-{target}"):
        before = host_entries()
        Path(BINFMT_MISC, "register").write_text(FOREIGN_LINE)
        foreign = Path(BINFMT_MISC, FOREIGN).read_text()
        try:
            done = run(["apt-get", "install", "-y", f"./dist/{deb.name}"], cwd=ROOT, env=APT_ENV)
            assert done.returncode == 0, done.stdout + done.stderr
            assert run(["/usr/bin/binfmtd", "--version"]).stdout == f"binfmtd {__version__}\n"
            # postinst: binfmtd.service enabled the way deb-systemd-helper does it; the daemon is opt-in.
            assert os.readlink(WANTS) == UNIT
            assert not os.path.lexists("/etc/systemd/system/multi-user.target.wants/binfmtd-daemon.service")
            # The shipped config is a conffile, as in the repository.
            conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", "binfmtd"]).stdout.split()
            shipped = (ROOT / "packaging" / "binfmtd.toml").read_bytes()
            assert conffiles == ["/etc/binfmtd/binfmtd.toml", hashlib.md5(shipped).hexdigest()]
            assert Path("/etc/binfmtd/binfmtd.toml").read_bytes() == shipped

            # The installed program (not this checkout: no PYTHONPATH) with the installed config, in a
            # fresh namespace with its own table.
            where, apply, verify, busybox = ns.run(
                "cd / && /usr/bin/python3 -c 'import binfmtd; print(binfmtd.__file__)'", "/usr/bin/binfmtd apply --json",
                "/usr/bin/binfmtd verify --engine sandbox --json", f"{foreign_busybox['arm64']} uname -m",
                env={"PYTHONPATH": "", "BINFMTD_CONFIG": "/etc/binfmtd/binfmtd.toml"})
            assert where.out == "/usr/lib/python3/dist-packages/binfmtd/__init__.py\n", where.err
            assert apply.rc == 0 and apply.json()["ok"], apply.err
            registered = {r["target"] for r in apply.json()["results"] if r["action"] == "registered"}
            assert {"aarch64", "arm", "riscv64", "s390x"} <= registered
            report = verify.json()
            assert verify.rc == 0 and report["ok"] and report["engine"] == "sandbox", verify.out + verify.err
            assert {r["target"]: r["machine"] for r in report["results"]}["aarch64"] == "aarch64"
            assert busybox.out == "aarch64\n", busybox.err

            # On the host: binfmtd registers one target; purge's prerm must remove it and leave the
            # other tool's entry alone. If the test mounted the host's binfmt_misc, it unmounts it while
            # another mount namespace keeps the table alive (as a service's private mount does; with no
            # mount left anywhere the kernel drops every entry by itself): prerm must then mount
            # binfmt_misc privately to find binfmtd's entry.
            done = run(["/usr/bin/binfmtd", "apply", target, "--json"], env={**os.environ, "PYTHONPATH": ""})
            assert done.returncode == 0 and json.loads(done.stdout)["results"][0]["action"] == "registered", done.stderr
            assert os.path.exists(f"{BINFMT_MISC}/qemu-{target}")
            with table_held_elsewhere():
                if not was_mounted:
                    run(["umount", BINFMT_MISC])
                done = run(["apt-get", "purge", "-y", "binfmtd"], env=APT_ENV)
                assert done.returncode == 0, done.stdout + done.stderr
                if not was_mounted:
                    run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC])
            assert not os.path.exists(f"{BINFMT_MISC}/qemu-{target}"), done.stdout + done.stderr
            assert Path(BINFMT_MISC, FOREIGN).read_text() == foreign
            assert "installed" not in run(["dpkg-query", "-W", "-f", "${Status}", "binfmtd"]).stdout.split()
            left = [p for p in PACKAGE_PATHS + ["/etc/binfmtd", "/var/lib/binfmtd", WANTS,
                                                "/usr/lib/python3/dist-packages/binfmtd",
                                                "/var/lib/systemd/deb-systemd-helper-enabled/binfmtd.service.dsh-also"]
                    if os.path.lexists(p)]
            assert left == []
        finally:
            run(["apt-get", "purge", "-y", "binfmtd"], env=APT_ENV)
            if not os.path.exists(f"{BINFMT_MISC}/register"):
                run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC])
            remove_entry(FOREIGN)
            if f"qemu-{target}" not in before:
                remove_entry(f"qemu-{target}")
        assert host_entries() == before


# --- the container image ---

@pytest.fixture(scope="module")
def podman_env(tmp_path_factory) -> dict:
    need(os.geteuid() == 0, "the image tests run rootful podman: run as root")
    need(shutil.which("podman") is not None and shutil.which("runc") is not None,
         "podman and runc are not installed (apt-get install podman runc)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    # What podman needs on these VMs; the product never writes this.
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    '[engine]\nruntime = "runc"\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(deb, podman_env) -> str:
    """The image, built from the base made by make-base (once: kept between runs) and dist/'s package."""
    if run(["podman", "image", "exists", BASE_IMAGE], env=podman_env).returncode != 0:
        need(shutil.which("debootstrap") is not None, "debootstrap is missing (apt-get install debootstrap)")
    started = time.monotonic()
    done = run([str(ROOT / "packaging" / "container" / "make-base"), BASE_IMAGE], env=podman_env)
    assert done.returncode == 0, done.stderr
    print(f"make-base: {time.monotonic() - started:.1f}s")
    old = run(["podman", "image", "inspect", "-f", "{{.Id}}", IMAGE], env=podman_env).stdout.strip()
    started = time.monotonic()
    done = run(["podman", "build", "-q", "-f", "packaging/container/Containerfile", "-t", IMAGE, "."],
               cwd=ROOT, env=podman_env)
    seconds = time.monotonic() - started
    print(f"podman build: {seconds:.1f}s")
    assert done.returncode == 0, done.stderr
    assert seconds < 300, f"the image took {seconds:.0f}s to build"
    new = run(["podman", "image", "inspect", "-f", "{{.Id}}", IMAGE], env=podman_env).stdout.strip()
    if old and old != new:
        run(["podman", "rmi", old], env=podman_env)  # the previous build, now untagged
    return IMAGE


def podman_run(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return run(["podman", "run", "--rm", "--privileged", *args], env=env, timeout=timeout)


def test_image_registers_a_pinned_emulator_that_outlives_the_container(image, podman_env, foreign_busybox, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    volume = ["-v", f"{state}:/var/lib/binfmtd"]
    with host_table(), set_aside("qemu-aarch64"):
        before = host_entries()
        try:
            apply = podman_run(podman_env, *volume, image, "apply", "aarch64", "--json")
            assert apply.returncode == 0, apply.stderr
            assert [(r["target"], r["action"], r["flags"]) for r in json.loads(apply.stdout)["results"]] == \
                [("aarch64", "registered", "POCF")]
            entry = Path(BINFMT_MISC, "qemu-aarch64").read_text()
            assert "flags: POCF" in entry and "interpreter /usr/libexec/binfmtd-image/qemu-aarch64-static" in entry
            # The container is gone; with the host's own /usr/bin hidden, the arm64 busybox still runs:
            # the kernel kept the emulator it opened in the container at registration (F).
            done = run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs none /usr/bin && exec {foreign_busybox['arm64']} uname -m"])
            assert done.stdout == "aarch64\n", done.stderr

            status = podman_run(podman_env, *volume, image, "status", "--json")
            assert status.returncode == 0, status.stderr
            entries = {e["name"]: e for e in json.loads(status.stdout)["entries"]}
            assert entries["qemu-aarch64"]["owner"] == "binfmtd" and entries["qemu-aarch64"]["flags"] == "POCF"

            remove = podman_run(podman_env, *volume, image, "remove", "aarch64", "--json")
            assert remove.returncode == 0, remove.stderr
            assert [r["action"] for r in json.loads(remove.stdout)["results"]] == ["removed"]
            assert not os.path.exists(f"{BINFMT_MISC}/qemu-aarch64")
        finally:
            remove_entry("qemu-aarch64")
        assert host_entries() == before


def test_image_applies_all_then_verify_and_remove_all(image, podman_env, tmp_path):
    volume = ["-v", f"{tmp_path}:/var/lib/binfmtd"]
    with host_table():
        before = host_entries()
        try:
            apply = podman_run(podman_env, *volume, image, "apply", "--all")
            assert apply.returncode == 0, apply.stderr
            ours = set(json.loads((tmp_path / "state.json").read_text())["entries"])  # what binfmtd registered
            assert {"qemu-aarch64", "qemu-arm", "qemu-riscv64", "qemu-s390x"} - set(before) <= ours
            assert ours <= set(host_entries())
            verify = podman_run(podman_env, *volume, image, "verify", "aarch64", "riscv64", "--json")
            report = json.loads(verify.stdout)
            assert verify.returncode == 0 and report["ok"], verify.stdout + verify.stderr
            assert {r["target"]: r["machine"] for r in report["results"]} == {"aarch64": "aarch64", "riscv64": "riscv64"}
            remove = podman_run(podman_env, *volume, image, "remove", "--all", "--json")
            assert remove.returncode == 0, remove.stderr
            assert not ours & set(host_entries())
        finally:
            for name in set(host_entries()) - set(before):
                remove_entry(name)
        assert host_entries() == before


def test_image_daemon_repairs_a_removed_entry_until_stopped(image, podman_env, tmp_path):
    (tmp_path / "binfmtd.toml").write_text('targets = ["riscv64"]\n[daemon]\ninterval = 0.2\n')
    args = ["-v", f"{tmp_path}:/var/lib/binfmtd", "-v", f"{tmp_path}/binfmtd.toml:/etc/binfmtd/binfmtd.toml:ro"]
    name = f"binfmtd-test-daemon-{os.getpid()}"
    with host_table(), set_aside("qemu-riscv64"):
        before = host_entries()
        entry = Path(BINFMT_MISC, "qemu-riscv64")

        def wait_for(present: bool) -> bool:
            deadline = time.monotonic() + 30
            while entry.exists() != present and time.monotonic() < deadline:
                time.sleep(0.1)
            return entry.exists() == present

        try:
            done = run(["podman", "run", "-d", "--rm", "--privileged", "--name", name, *args, image, "daemon"],
                       env=podman_env)
            assert done.returncode == 0, done.stderr
            assert wait_for(True), run(["podman", "logs", name], env=podman_env).stderr
            entry.write_text("-1")  # another tool removes it
            assert wait_for(True), run(["podman", "logs", name], env=podman_env).stderr
            assert "flags: POCF" in entry.read_text()
            assert run(["podman", "stop", "-t", "10", name], env=podman_env).returncode == 0
            assert entry.exists()  # stopping the daemon leaves the entries registered
            remove = podman_run(podman_env, "-v", f"{tmp_path}:/var/lib/binfmtd", image, "remove", "riscv64", "--json")
            assert [r["action"] for r in json.loads(remove.stdout)["results"]] == ["removed"], remove.stderr
        finally:
            run(["podman", "rm", "-f", name], env=podman_env)
            remove_entry("qemu-riscv64")
        assert host_entries() == before
