"""binfmtd verify: probes prove emulation in a sandbox and in real containers, and every broken
target is named with its cause."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from binfmtd.facts.host import Host, BinfmtMisc, parse_kernel_release
from binfmtd.entry import Entry
from binfmtd.facts.interpreters import Interpreter
from binfmtd.probes import MARKER
from binfmtd.targets import BY_NAME
from binfmtd.verify.diagnose import diagnose
from binfmtd.verify.probe_run import ProbeRun, probe_answered, run_bounded

from conftest import BINFMT_MISC, BINFMTD, ROOT, host_table, need, qemu, set_aside

CONTRACT_FIELDS = {"target", "platform", "ok", "machine", "seconds", "error"}


def test_sandbox_verifies_every_registered_target_with_its_machine(ns):
    apply, verify = ns.run(f"{BINFMTD} apply --all", f"{BINFMTD} verify --all --engine sandbox --json")
    report = verify.json()
    assert verify.rc == 0 and report["ok"] and report["engine"] == "sandbox", verify.out
    native = {r["target"] for r in report["results"] if r["native"]}
    assert native >= {"x86_64"} if os.uname().machine == "x86_64" else native
    for r in report["results"]:
        assert CONTRACT_FIELDS <= set(r) and r["ok"] and r["error"] is None and r["seconds"] > 0
        if r["target"] not in native:
            assert r["machine"] == BY_NAME[r["target"]].machine
            assert r["entry"] == {"name": f"qemu-{r['target']}", "present": True, "enabled": True, "flags": "POCF"}


def test_broken_targets_fail_with_their_cause_and_exit_1(ns, tmp_path, root_only_dir):
    bindir = root_only_dir / "bin"
    bindir.mkdir()
    shutil.copy(qemu("s390x"), bindir / "qemu-s390x-static")
    (tmp_path / "c.toml").write_text(f'interpreter_dirs = ["{bindir}", "/usr/bin"]\n')
    steps = ns.run(f"{BINFMTD} apply aarch64 riscv64 arm",  # arm: F-flagged, then disabled
                   f"{BINFMTD} apply ppc64le --flags POC",  # no F: containers cannot see QEMU
                   f"{BINFMTD} apply s390x --flags POC", f"rm {bindir}/qemu-s390x-static",  # interpreter gone
                   f"echo 0 > {BINFMT_MISC}/qemu-arm",
                   f"{BINFMTD} verify aarch64 arm ppc64le s390x mips64el --engine sandbox --json",
                   f"{BINFMTD} verify aarch64 arm --engine sandbox",
                   env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    verify, text = steps[-2:]
    results = {r["target"]: r for r in verify.json()["results"]}
    assert verify.rc == 1 and not verify.json()["ok"]
    assert results["aarch64"]["ok"] and results["aarch64"]["machine"] == "aarch64"
    assert "entry qemu-arm is disabled" in results["arm"]["cause"] and "ENOEXEC" in results["arm"]["error"]
    assert "lacks the F flag" in results["ppc64le"]["cause"] and "ENOENT" in results["ppc64le"]["error"]
    assert "interpreter" in results["s390x"]["cause"] and "is gone" in results["s390x"]["cause"]
    assert "no entry claims mips64el" in results["mips64el"]["cause"]
    assert results["mips64el"]["fix"] == "binfmtd apply mips64el"
    assert text.rc == 1 and "FAILED" in text.out and "cause: entry qemu-arm is disabled" in text.out


def test_f_flag_keeps_working_when_the_interpreter_file_is_deleted(ns, tmp_path, root_only_dir):
    bindir = root_only_dir / "bin"
    bindir.mkdir()
    shutil.copy(qemu("riscv64"), bindir / "qemu-riscv64-static")
    (tmp_path / "c.toml").write_text(f'interpreter_dirs = ["{bindir}"]\n')
    steps = ns.run(f"{BINFMTD} apply riscv64", f"rm {bindir}/qemu-riscv64-static",
                   f"{BINFMTD} verify riscv64 --engine sandbox --json", env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    assert steps[-1].json()["results"][0]["machine"] == "riscv64"


def host_for(entries, native=()):
    return Host(parse_kernel_release("6.18.0"), "x86_64",
                BinfmtMisc(BINFMT_MISC, True, True, "binfmt_misc", True, tuple(entries)), tuple(native))


def test_a_shadowing_entry_and_a_crashing_emulator_are_named():
    # What a probe prints is produced for real elsewhere; here the diagnosis itself is checked.
    t = BY_NAME["aarch64"]
    ours = Entry("qemu-aarch64", "/usr/bin/qemu-aarch64-static", "POCF", 0, t.magic, t.mask)
    shadow = Entry("aarch64", "/usr/bin/qemu-aarch64_be-static", "F", 0, t.magic, t.mask)
    interp = Interpreter("/usr/bin/qemu-aarch64-static", True, None)
    wrong = diagnose(t, ProbeRun(0, "binfmtd-probe:aarch64_be\n", "", 0.1), host_for([ours, shadow]), interp,
                     "sandbox", None)
    assert not wrong["ok"] and wrong["cause"].startswith("entry 'aarch64' (not binfmtd's) claims aarch64 binaries "
                                                         "and hands them to /usr/bin/qemu-aarch64_be-static")
    assert wrong["fix"] == f"remove that entry (echo -1 > {BINFMT_MISC}/aarch64), then binfmtd apply aarch64"
    # The wrong emulator crashing is still the shadowing entry's fault, not QEMU's.
    segv = ProbeRun(139, "", "qemu: uncaught target signal 11 (Segmentation fault) - core dumped\n", 0.1)
    assert "hands them to /usr/bin/qemu-aarch64_be-static" in diagnose(t, segv, host_for([ours, shadow]), interp,
                                                                         "sandbox", None)["cause"]
    crash = diagnose(t, segv, host_for([ours]), interp, "sandbox", None)
    assert crash["cause"].startswith("the emulator crashed (QEMU ") and "uncaught target signal" in crash["cause"]


def test_fixes_need_force_only_for_another_tools_entry():
    t = BY_NAME["riscv64"]
    enoent = ProbeRun(127, "", "binfmtd-exec-errno:2\n", 0.1)
    interp = Interpreter("/usr/bin/qemu-riscv64-static", True, None)
    no_f = Entry("qemu-riscv64", "/usr/bin/qemu-riscv64-static", "POC", 0, t.magic, t.mask)
    mine = diagnose(t, enoent, host_for([no_f]), interp, "podman", None, ours=True)
    assert "lacks the F flag" in mine["cause"] and mine["fix"] == "binfmtd apply riscv64 --flags POCF"
    theirs = diagnose(t, enoent, host_for([no_f]), interp, "podman", None, ours=False)
    assert theirs["fix"].startswith("binfmtd apply riscv64 --force")
    gone = Entry("qemu-riscv64", "/nonexistent/qemu-riscv64-static", "POC", 0, t.magic, t.mask)
    other_gone = diagnose(t, enoent, host_for([gone]), interp, "sandbox", None, ours=False)
    assert other_gone["cause"] == "interpreter /nonexistent/qemu-riscv64-static is gone"
    assert "--force" in other_gone["fix"] and "reinstall" in other_gone["fix"]
    assert diagnose(t, enoent, host_for([gone]), interp, "sandbox", None, ours=True)["fix"] == \
        "install qemu-user-static, then binfmtd apply riscv64"
    # Another tool's qemu-riscv64 handing the binaries to the wrong emulator.
    wrong = Entry("qemu-riscv64", "/usr/bin/qemu-riscv32-static", "F", 0, t.magic, t.mask)
    report = diagnose(t, ProbeRun(1, "", "", 0.1), host_for([wrong]), interp, "sandbox", None, ours=False)
    assert "which is not QEMU's riscv64 emulator" in report["cause"] and "--force" in report["fix"]


def test_a_users_image_is_checked_against_the_machine_and_pull_failures_are_named():
    t = BY_NAME["aarch64"]
    ours = Entry("qemu-aarch64", "/usr/bin/qemu-aarch64-static", "POCF", 0, t.magic, t.mask)
    interp = Interpreter("/usr/bin/qemu-aarch64-static", True, None)
    host = host_for([ours])
    assert diagnose(t, ProbeRun(0, "aarch64\n", "", 0.1), host, interp, "podman", "img")["ok"]
    amd64 = diagnose(t, ProbeRun(0, "x86_64\n", "", 0.1), host, interp, "podman", "img")
    assert not amd64["ok"] and amd64["machine"] == "x86_64"
    probe = diagnose(t, ProbeRun(0, "binfmtd-probe:aarch64\n", "", 0.1), host, interp, "podman", "img")
    assert probe["ok"] and probe["machine"] == "aarch64"
    pull = ProbeRun(125, "", "Trying to pull example.invalid/x:1...\nError: initializing source "
                    "docker://example.invalid/x:1: pinging container registry example.invalid: no such host\n", 0.1)
    failed = diagnose(t, pull, host, interp, "podman", "example.invalid/x:1")
    assert failed["cause"] == "podman could not pull or find image example.invalid/x:1 for linux/arm64"
    assert failed["fix"].endswith("podman pull --platform linux/arm64 example.invalid/x:1")


def test_unknown_or_absent_engine_is_exit_3_not_a_hang(ns):
    absent, unanswering = ns.run(f"PATH=/usr/bin:/bin {BINFMTD} verify aarch64 --engine nerdctl",
                                 f"DOCKER_HOST=unix:///nonexistent.sock {BINFMTD} verify aarch64 --engine docker")
    assert absent.rc == 3 and "nerdctl is not installed" in absent.err
    assert unanswering.rc == 3 and "docker is not answering" in unanswering.err


# --- containers: they run on the host's binfmt_misc, so these tests register there and clean up ---

@pytest.fixture
def containers_conf(tmp_path, monkeypatch):
    need(shutil.which("podman") is not None and shutil.which("runc") is not None,
         "podman and runc are not installed (apt-get install podman runc)")
    conf = tmp_path / "containers.conf"
    # What podman needs on these VMs; the product never writes this.
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    '[engine]\nruntime = "runc"\n')
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    before = probe_images()
    yield conf
    for image in probe_images() - before:  # the probe images this test made
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True)


def probe_images() -> set[str]:
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                            text=True).stdout.split()
    return {image for image in listed if image.split("/")[-1].startswith("binfmtd-probe:")}


@pytest.fixture
def host_registered(tmp_path):
    """Registers aarch64 and riscv64 on the host with binfmtd (own state dir) and removes them after;
    the host's own entries of those names, and s390x's, are set aside meanwhile and put back."""
    env = {**os.environ, "BINFMTD_STATE_DIR": str(tmp_path / "host-state"), "PYTHONPATH": str(ROOT),
           "BINFMTD_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    # One test run at a time on the host's table, mounted while it runs.
    with host_table(), set_aside("qemu-aarch64", "qemu-riscv64", "qemu-s390x"):
        done = subprocess.run([sys.executable, "-m", "binfmtd", "apply", "aarch64", "riscv64", "--json"], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        yield env
        subprocess.run([sys.executable, "-m", "binfmtd", "remove", "aarch64", "riscv64"], env=env,
                       capture_output=True)


def run_verify(args, env, timeout=300):
    done = subprocess.run([sys.executable, "-m", "binfmtd", "verify", *args, "--json"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, json.loads(done.stdout), done.stderr


def test_podman_runs_the_probes_for_real(containers_conf, host_registered):
    rc, report, err = run_verify(["riscv64", "aarch64", "--engine", "podman"], host_registered)
    assert rc == 0 and report["engine"] == "podman", err
    # The rows in the target table's order, whichever probe finished first.
    assert [(r["target"], r["machine"]) for r in report["results"]] == [("aarch64", "aarch64"), ("riscv64", "riscv64")]
    images = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                            text=True).stdout
    assert "binfmtd-probe:aarch64" in images


def test_podman_with_a_users_image(containers_conf, host_registered, foreign_busybox, tmp_path):
    # A user's arm64 image, made here from Debian's arm64 busybox: verify runs `uname -m` in it.
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(foreign_busybox["arm64"], root / "bin" / "busybox")
    (root / "bin" / "uname").symlink_to("busybox")
    archive = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
    subprocess.run(["podman", "import", "--os", "linux", "--arch", "arm64", str(archive),
                    "localhost/binfmtd-test-busybox:arm64"], check=True, capture_output=True)
    try:
        rc, report, err = run_verify(["linux/arm64", "--engine", "podman", "--image",
                                      "localhost/binfmtd-test-busybox:arm64"], host_registered)
        assert rc == 0 and report["results"][0]["machine"] == "aarch64", err
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/binfmtd-test-busybox:arm64"], capture_output=True)


def test_a_slow_engine_is_named_and_the_emulation_passes(containers_conf, host_registered, tmp_path):
    """The real podman, wrapped so that `run` lingers after the container has answered (as a slow
    `--rm` cleanup does): the probe's answer came in time, so the targets pass and the warning
    blames the engine, with how long it took."""
    wrapper = tmp_path / "bin" / "podman"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\n{shutil.which("podman")} "$@"; rc=$?\n[ "$1" = run ] && sleep 15\nexit $rc\n')
    wrapper.chmod(0o755)
    env = {**host_registered, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    rc, report, err = run_verify(["aarch64", "riscv64", "--engine", "podman", "--timeout", "5"], env)
    assert rc == 0 and report["ok"], err
    assert {r["target"]: r["machine"] for r in report["results"]} == {"aarch64": "aarch64", "riscv64": "riscv64"}
    assert "timed out" not in err and all("the engine is slow" in r["slow_engine"] for r in report["results"])
    for target in ("aarch64", "riscv64"):
        line, = [line for line in err.splitlines() if line.startswith(f"binfmtd: warning: {target}: ")]
        assert "emulation works" in line and "the engine is slow" in line and "5s timeout" in line
        answered, engine = (float(x) for x in re.search(r"answered after ([\d.]+)s .* after ([\d.]+)s", line).groups())
        assert answered < 5 <= engine


def test_the_timeout_bounds_the_answer_and_then_the_engine():
    """Real processes standing for an engine: one that never answers is stopped at the timeout
    and fails; one that answers at once and then lingers is stopped a timeout later and passes,
    named as a slow engine."""
    silent = run_bounded(["sh", "-c", "exec sleep 30"], 1.0, answer=probe_answered)
    assert silent.returncode is None and silent.answered is None and not silent.succeeded
    assert 1.0 <= silent.seconds < 5 and silent.slow_engine(1.0) is None
    lingering = run_bounded(["sh", "-c", f"echo '{MARKER}aarch64'; exec sleep 30"], 1.0, answer=probe_answered)
    assert lingering.returncode is None and lingering.succeeded and lingering.answered < 1.0
    assert 1.0 + lingering.answered <= lingering.seconds < 5
    assert "was still running after" in lingering.slow_engine(1.0)
    quick = run_bounded(["sh", "-c", f"echo '{MARKER}aarch64'"], 1.0, answer=probe_answered)
    assert quick.returncode == 0 and quick.succeeded and quick.slow_engine(1.0) is None


def test_an_image_that_cannot_be_pulled_is_named_as_such(containers_conf, tmp_path):
    # Nothing listens on localhost:443: podman's pull fails at once, as with a mistyped registry.
    rc, report, err = run_verify(["linux/arm64", "--engine", "podman", "--image", "localhost/binfmtd-test-missing:nope"],
                                 {"BINFMTD_STATE_DIR": str(tmp_path / "state")})  # not the host's state
    result, = report["results"]
    assert rc == 1 and not result["ok"] and result["machine"] is None, err
    assert result["cause"] == "podman could not pull or find image localhost/binfmtd-test-missing:nope for linux/arm64"
    assert "no entry claims" not in result["cause"] and "localhost" in result["error"]


@pytest.fixture
def docker_on_podman(containers_conf, tmp_path):
    """The real docker CLI against podman's Docker-compatible API socket."""
    need(shutil.which("docker") is not None, "the docker CLI is not installed")
    sock = tmp_path / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sock.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(sock))
                break
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.1)
    else:
        service.kill()
        pytest.fail("podman system service did not open its socket")
    yield {"DOCKER_HOST": f"unix://{sock}"}
    os.killpg(service.pid, signal.SIGTERM)
    service.wait(timeout=30)


def test_docker_cli_runs_the_probes_for_real(docker_on_podman, host_registered):
    rc, report, err = run_verify(["aarch64", "riscv64", "--engine", "docker"], {**host_registered, **docker_on_podman})
    assert rc == 0 and report["engine"] == "docker", err
    assert {r["target"]: r["machine"] for r in report["results"]} == {"aarch64": "aarch64", "riscv64": "riscv64"}


def test_container_engine_names_an_unregistered_target(containers_conf, host_registered):
    rc, report, err = run_verify(["s390x", "--engine", "podman"], host_registered)
    assert rc == 1 and "no entry claims s390x" in report["results"][0]["cause"], err
