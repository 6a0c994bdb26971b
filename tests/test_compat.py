"""binfmtd's image as a drop-in for tonistiigi/binfmt and multiarch/qemu-user-static
(binfmtd/compat/, the image's entrypoint).

First in a private binfmt_misc (a fresh user namespace: the `ns` fixture), the languages
themselves; then on the host's table, the image as CI uses it: docker/setup-qemu-action's own
bundled code (../shared/clients/setup-qemu-action/index.cjs, unmodified) run by node as a GitHub
runner runs it, driving the docker CLI, which talks to podman's Docker-compatible API socket,
which pulls binfmtd's image from a registry on 127.0.0.1 (Debian's docker-registry); and the two
`docker run` lines that articles paste. Those tests take the host's table under the shared lock
and leave it as they found it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from binfmtd.compat.__main__ import language_of
from binfmtd.compat.multiarch import parse_multiarch
from binfmtd.compat.tonistiigi import parse_tonistiigi
from binfmtd.entry import parse_entry
from binfmtd.errors import UsageError
from binfmtd.image import EMULATOR_DIR, registered_by_image
from binfmtd.targets import lookup

from conftest import BINFMT_MISC, BINFMTD, ROOT, entry_file, host_table, need
from test_packaging import deb, host_entries, image, podman_env, run  # noqa: F401 (fixtures)

COMPAT = BINFMTD.replace("-m binfmtd", "-m binfmtd.compat")
SETUP_QEMU_ACTION = ROOT.parent / "shared" / "clients" / "setup-qemu-action" / "index.cjs"
AARCH64 = lookup("aarch64")
RISCV64 = lookup("riscv64")


def register_line(name: str, target, interpreter: str, flags: str) -> str:
    from binfmtd.entry import escape

    return f":{name}:M::{escape(target.magic)}:{escape(target.mask)}:{interpreter}:{flags}"


def register_cmd(line: str) -> str:
    return f"printf '%s' '{line}' > {BINFMT_MISC}/register"


def status_json(step) -> dict:
    data = json.loads(step.out)
    assert set(data) == {"supported", "emulators"}
    return data


# --- which language: decided by the first argument alone ---

@pytest.mark.parametrize("argv, language", [
    ([], "tonistiigi"), (["--install", "all"], "tonistiigi"), (["-install=arm64"], "tonistiigi"),
    (["--uninstall", "qemu-*"], "tonistiigi"), (["--version"], "tonistiigi"), (["--mount", "/x"], "tonistiigi"),
    (["--reset", "-p", "yes"], "multiarch"), (["-p", "yes"], "multiarch"), (["--credential=yes"], "multiarch"),
    (["apply", "linux/arm64"], "binfmtd"), (["status", "--json"], "binfmtd"), (["daemon"], "binfmtd"),
    (["--help"], "help"), (["-h"], "help"),
])
def test_first_argument_picks_the_language(argv, language):
    assert language_of(argv) == language


def test_tonistiigi_options_parse_as_go_flag_does():
    args = parse_tonistiigi(["-install=arm64,riscv64", "--uninstall", "qemu-*", "--mount", "/mnt/b"])
    assert (args.install, args.uninstall, args.mount, args.version) == ("arm64,riscv64", "qemu-*", "/mnt/b", False)
    assert parse_tonistiigi(["--version"]).version
    with pytest.raises(UsageError, match="flag provided but not defined: -reset"):
        parse_tonistiigi(["--install", "all", "--reset"])
    with pytest.raises(UsageError, match="flag needs an argument: -install"):
        parse_tonistiigi(["--install"])


def test_multiarch_options_give_flags_as_qemu_binfmt_conf_does():
    assert parse_multiarch(["--reset", "-p", "yes"]) == (True, "F")
    assert parse_multiarch(["-p", "yes", "-c", "yes", "--preserve-argv0=yes"]) == (False, "FOCP")
    assert parse_multiarch(["-p", "no"]) == (False, "")
    with pytest.raises(UsageError, match="-p needs yes or no"):
        parse_multiarch(["-p", "maybe"])
    with pytest.raises(UsageError, match="unknown option '--debian'"):
        parse_multiarch(["--debian"])


def test_only_the_images_emulator_dir_marks_an_entry_as_binfmtds():
    assert registered_by_image(f"{EMULATOR_DIR}/qemu-aarch64-static")
    for other in ("/usr/bin/qemu-aarch64-static", f"{EMULATOR_DIR}-x/qemu-aarch64", f"{EMULATOR_DIR}/sub/qemu",
                  "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"):
        assert not registered_by_image(other)


# --- tonistiigi/binfmt's language, in a private table ---

def test_bare_run_prints_status_json_and_changes_nothing(ns):
    bare, listing = ns.run(COMPAT, f"ls {BINFMT_MISC}")
    assert bare.rc == 0, bare.err
    data = status_json(bare)
    assert data["emulators"] == []
    machine = os.uname().machine
    if machine == "x86_64":
        assert data["supported"][0] == "linux/amd64"
    assert not [p for p in data["supported"] if p in ("linux/arm64", "linux/riscv64")]
    assert listing.out.split() == ["register", "status"]


def test_install_registers_verifies_and_logs_like_tonistiigi(ns, foreign_busybox):
    install, entry, busybox = ns.run(f"{COMPAT} --install arm64,linux/riscv64", f"cat {BINFMT_MISC}/qemu-aarch64",
                                     f"{foreign_busybox['arm64']} uname -m")
    assert install.rc == 0, install.err
    assert [line for line in install.err.splitlines() if line.startswith("installing:")] == \
        ["installing: arm64 OK", "installing: riscv64 OK"]
    data = status_json(install)
    assert {"linux/arm64", "linux/riscv64"} <= set(data["supported"])
    assert data["emulators"] == ["qemu-aarch64", "qemu-riscv64"]
    assert entry_file(entry.out)["flags"] == "OCF"  # tonistiigi's CF (C implies O)
    assert busybox.out == "aarch64\n"


def test_status_lists_no_emulated_platform_it_could_not_verify(ns):
    """Without unshare(1) the sandbox cannot run a probe: the status lists only native platforms."""
    install, bare = ns.run(f"{COMPAT} --install arm64", f"PATH=/nonexistent {COMPAT}")
    assert install.rc == 0 and "linux/arm64" in status_json(install)["supported"]
    assert bare.rc == 0, bare.err
    assert "linux/arm64" not in status_json(bare)["supported"] and status_json(bare)["emulators"] == ["qemu-aarch64"]
    assert "warning: emulated platforms are not listed, none could be verified" in bare.err


def test_preserve_argv0_variable_adds_flag_p(ns):
    install, entry = ns.run(f"QEMU_PRESERVE_ARGV0=1 {COMPAT} --install arm64", f"cat {BINFMT_MISC}/qemu-aarch64")
    assert install.rc == 0, install.err
    assert entry_file(entry.out)["flags"] == "POCF"


def test_install_keeps_another_tools_working_entry(ns):
    line = register_line("qemu-aarch64", AARCH64, "/usr/bin/qemu-aarch64-static", "F")
    _, install, entry = ns.run(register_cmd(line), f"{COMPAT} --install arm64", f"cat {BINFMT_MISC}/qemu-aarch64")
    assert install.rc == 0, install.err
    assert "installing: arm64 OK kept: entry qemu-aarch64 of another tool (/usr/bin/qemu-aarch64-static" in install.err
    assert "linux/arm64" in status_json(install)["supported"]
    assert entry_file(entry.out)["interpreter"] == "/usr/bin/qemu-aarch64-static"  # not replaced
    assert entry_file(entry.out)["flags"] == "F"


def test_install_fails_when_another_tools_entry_does_not_work(ns):
    line = register_line("qemu-aarch64", AARCH64, "/bin/false", "F")
    _, install, entry = ns.run(register_cmd(line), f"{COMPAT} --install arm64,riscv64", f"cat {BINFMT_MISC}/qemu-aarch64")
    assert install.rc == 1, install.err
    assert "installing: arm64 failed: entry qemu-aarch64 of another tool (/bin/false, flags F) left in place, " \
        "and it does not work (" in install.err
    assert "fix: replace it: --uninstall qemu-aarch64 --install arm64 (setup-qemu-action: reset: true)" in install.err
    assert "installing: riscv64 OK" in install.err
    supported = status_json(install)["supported"]
    assert "linux/arm64" not in supported and "linux/riscv64" in supported
    assert entry_file(entry.out)["interpreter"] == "/bin/false"


def test_failed_install_exits_nonzero(ns):
    install, listing = ns.run(f"QEMU_BINARY_PATH=/nonexistent {COMPAT} --install arm64", f"ls {BINFMT_MISC}")
    assert install.rc == 1
    assert "installing: arm64 failed: no interpreter: qemu-aarch64-static not found" in install.err
    assert status_json(install)["emulators"] == []
    assert listing.out.split() == ["register", "status"]


def test_unknown_architecture_fails_before_changing_anything(ns):
    install, listing = ns.run(f"{COMPAT} --install arm64,vax", f"ls {BINFMT_MISC}")
    assert install.rc == 2 and install.out == ""
    assert install.err.startswith("error: unsupported architecture: vax;")
    assert listing.out.split() == ["register", "status"]


def test_uninstall_glob_removes_every_qemu_entry_and_nothing_else(ns):
    foreign = register_line("qemu-aarch64", AARCH64, "/usr/bin/qemu-aarch64-static", "F")
    other = r":binfmtd-test-other:M::\x7fBINFMTDTEST::/bin/false:"
    _, _, _, uninstall, missing, listing = ns.run(
        register_cmd(foreign), register_cmd(other), f"{COMPAT} --install riscv64", f"{COMPAT} --uninstall 'qemu-*'",
        f"{COMPAT} --uninstall linux/s390x", f"ls {BINFMT_MISC}")
    assert uninstall.rc == 0, uninstall.err
    assert uninstall.err.splitlines() == ["uninstalling: qemu-aarch64 OK", "uninstalling: qemu-riscv64 OK"]
    assert status_json(uninstall)["emulators"] == ["binfmtd-test-other"]
    assert missing.rc == 0 and missing.err == "uninstalling: linux/s390x not found\n"
    assert listing.out.split() == ["binfmtd-test-other", "register", "status"]


def test_uninstall_by_platform(ns):
    _, uninstall, listing = ns.run(f"{COMPAT} --install arm64,riscv64", f"{COMPAT} --uninstall linux/arm64",
                                   f"ls {BINFMT_MISC}")
    assert uninstall.rc == 0 and uninstall.err == "uninstalling: qemu-aarch64 OK\n"
    assert listing.out.split() == ["qemu-riscv64", "register", "status"]


def test_mount_names_where_binfmt_misc_is_mounted(ns, tmp_path):
    where = tmp_path / "binfmt"
    where.mkdir()
    install, entry = ns.run(f"{COMPAT} --mount {where} --install arm64", f"cat {where}/qemu-aarch64", mount=False)
    assert install.rc == 0, install.err
    assert status_json(install)["emulators"] == ["qemu-aarch64"]
    assert entry_file(entry.out)["flags"] == "OCF"


def test_binary_prefix_variable_is_refused(ns):
    install = ns.one(f"QEMU_BINARY_PREFIX=x- {COMPAT} --install arm64")
    assert install.rc == 2 and "QEMU_BINARY_PREFIX is not supported" in install.err


def test_version_goes_to_stderr_like_tonistiigis(ns):
    version = ns.one(f"{COMPAT} --version", mount=False)
    assert version.rc == 0 and version.out == ""
    assert version.err.startswith("binfmt/binfmtd-") and " qemu/" in version.err


# --- multiarch/qemu-user-static's language ---

def test_reset_p_yes_replaces_every_qemu_entry_with_verified_ones(ns, foreign_busybox):
    foreign = register_line("qemu-aarch64", AARCH64, "/usr/bin/qemu-aarch64-static", "")
    _, reset, entry, busybox = ns.run(register_cmd(foreign), f"{COMPAT} --reset -p yes",
                                      f"cat {BINFMT_MISC}/qemu-aarch64", f"{foreign_busybox['s390x']} uname -m")
    assert reset.rc == 0, reset.err
    assert "Removing qemu-aarch64: OK" in reset.err
    assert "Setting qemu-aarch64 as binfmt interpreter for aarch64: OK" in reset.err
    assert entry_file(entry.out)["flags"] == "F" and entry_file(entry.out)["interpreter"] == "/usr/bin/qemu-aarch64-static"
    assert busybox.out == "s390x\n"


def test_register_without_p_fails_and_names_the_fix(ns):
    reset = ns.one(f"{COMPAT} --reset")
    assert reset.rc == 1
    assert "Setting qemu-aarch64 as binfmt interpreter for aarch64: failed: entry qemu-aarch64 lacks the F flag" in reset.err
    assert "fix: run with -p yes" in reset.err


# --- binfmtd's own language stays the default ---

def test_binfmtd_commands_and_help(ns):
    status, helptext = ns.run(f"{COMPAT} status --json", f"{COMPAT} --help")
    assert status.rc == 0 and json.loads(status.out)["binfmt_misc"]["mounted"]
    assert helptext.rc == 0
    for language in ("binfmtd (default)", "tonistiigi/binfmt", "multiarch/qemu-user-static"):
        assert language in helptext.out


def test_entry_of_an_image_run_without_state_is_binfmtds(ns):
    """What the image registered without a state volume: binfmtd on the host owns and removes it."""
    line = register_line("qemu-aarch64", AARCH64, f"{EMULATOR_DIR}/qemu-aarch64-static", "OC")
    _, status, remove, listing = ns.run(register_cmd(line), f"{BINFMTD} status --json",
                                        f"{BINFMTD} remove aarch64 --json", f"ls {BINFMT_MISC}")
    assert [e["owner"] for e in json.loads(status.out)["entries"]] == ["binfmtd"]
    assert remove.rc == 0 and [r["action"] for r in json.loads(remove.out)["results"]] == ["removed"]
    assert listing.out.split() == ["register", "status"]


# --- the image on the host's table, through the docker CLI and setup-qemu-action ---

def set_aside(before: dict[str, str], names) -> None:
    """Remove other tools' entries the test must not meet (a host set up with binfmtd or Debian's
    qemu-user-static has them); restore_table puts them back from what the kernel printed."""
    for name in sorted(set(names) & set(before)):
        if registered_by_image(parse_entry(name, before[name]).interpreter):
            pytest.skip(f"{name} was registered by binfmtd's image; its emulator is not on the host to put it back")
        Path(BINFMT_MISC, name).write_text("-1")


def restore_table(before: dict[str, str]) -> None:
    """Put the host's table back as it was: remove what was added, re-register what was removed."""
    now = host_entries()
    for name in now:
        if name not in before or now[name] != before[name]:
            Path(BINFMT_MISC, name).write_text("-1")
    for name, text in before.items():
        if not os.path.exists(f"{BINFMT_MISC}/{name}"):
            Path(BINFMT_MISC, "register").write_text(parse_entry(name, text).register_line())
            if not text.startswith("enabled"):
                Path(BINFMT_MISC, name).write_text("0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not start in {seconds:.0f}s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def docker(image, podman_env, tmp_path_factory):  # noqa: F811 (fixture from test_packaging)
    """The docker CLI talking to podman's Docker-compatible API on a socket of the test's own, and
    binfmtd's image as `127.0.0.1:PORT/binfmtd:test` in a docker-registry on loopback."""
    need(shutil.which("docker") is not None, "the docker CLI is missing (the docker.io package has it)")
    need(shutil.which("docker-registry") is not None, "docker-registry is missing (apt-get install docker-registry)")
    work = tmp_path_factory.mktemp("docker")
    port = free_port()
    (work / "registry.yml").write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                                       f"    rootdirectory: {work}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n")
    # The test's registry is plain HTTP: podman (CLI and service) may use it only when told so.
    (work / "registries.conf").write_text(f'unqualified-search-registries = []\n[[registry]]\n'
                                          f'location = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**podman_env, "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"),
           "DOCKER_HOST": f"unix://{work}/podman.sock", "DOCKER_CONFIG": str(work / "docker-config")}
    reference = f"127.0.0.1:{port}/binfmtd:test"
    (work / "docker-config").mkdir()
    (work / "docker-config" / "config.json").write_text("{}\n")  # docker's and podman's auth file: none
    registry = subprocess.Popen(["docker-registry", "serve", str(work / "registry.yml")], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "registry.log", "w"))
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{work}/podman.sock"], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(work / "service.log", "w"))
    try:
        def registry_answers() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).status == 200
            except OSError:
                return False

        wait_until(registry_answers, "docker-registry")
        wait_until(lambda: run(["docker", "version"], env=env).returncode == 0, "podman system service")
        for step in (["podman", "tag", image, reference], ["podman", "push", "-q", reference],
                     ["podman", "rmi", reference]):  # setup-qemu-action must pull it
            done = run(step, env=env)
            assert done.returncode == 0, done.stderr
        yield env, reference
    finally:
        for process in (service, registry):
            process.terminate()
            process.wait(timeout=30)
        run(["podman", "rmi", "-f", reference], env=podman_env)


def setup_qemu_action(env: dict, reference: str, workdir: Path, reset: bool) -> tuple[subprocess.CompletedProcess, str]:
    """index.cjs as a GitHub runner runs it (see ../shared/clients/setup-qemu-action/README.md)."""
    need(SETUP_QEMU_ACTION.is_file(), f"{SETUP_QEMU_ACTION} is missing (setup-qemu-action's bundled code)")
    need(shutil.which("node") is not None, "node is missing (apt-get install nodejs)")
    output, state, temp = workdir / "output", workdir / "state", workdir / "runner-temp"
    output.write_text("")
    state.write_text("")
    temp.mkdir(exist_ok=True)
    runner = {**env, "INPUT_IMAGE": reference, "INPUT_PLATFORMS": "arm64,riscv64", "INPUT_RESET": str(reset).lower(),
              "INPUT_CACHE-IMAGE": "false", "GITHUB_OUTPUT": str(output), "GITHUB_STATE": str(state),
              "RUNNER_TEMP": str(temp)}
    done = run(["node", str(SETUP_QEMU_ACTION)], env=runner)
    lines = output.read_text().splitlines()
    platforms = lines[lines.index(next(x for x in lines if x.startswith("platforms<<"))) + 1] if lines else ""
    return done, platforms


def ours(text: str) -> bool:
    return entry_file(text)["interpreter"].startswith(EMULATOR_DIR + "/")


@pytest.mark.parametrize("reset", [False, True])
def test_setup_qemu_action_installs_verified_platforms(docker, reset, foreign_busybox, tmp_path):
    """The action's own code with `image:` binfmtd's. A working entry another tool made for riscv64
    stays when reset is false (binfmtd does not replace it, the probe shows it works) and is
    removed by reset's `--uninstall qemu-*`, an explicit request."""
    env, reference = docker
    with host_table():
        before = host_entries()
        try:
            set_aside(before, {"qemu-aarch64", "qemu-riscv64"})
            base = host_entries()
            Path(BINFMT_MISC, "register").write_text(
                register_line("qemu-riscv64", RISCV64, "/usr/bin/qemu-riscv64-static", "F"))
            foreign = Path(BINFMT_MISC, "qemu-riscv64").read_text()
            done, platforms = setup_qemu_action(env, reference, tmp_path, reset)
            assert done.returncode == 0, done.stdout + done.stderr
            assert {"linux/arm64", "linux/riscv64"} <= set(platforms.split(",")), done.stdout
            after = host_entries()
            expected = (set(base) - ({n for n in base if n.startswith("qemu-")} if reset else set())) | \
                {"qemu-aarch64", "qemu-riscv64"}
            assert set(after) == expected
            assert ours(after["qemu-aarch64"]) and "flags: OCF" in after["qemu-aarch64"]
            assert after["qemu-riscv64"] != foreign if reset else after["qemu-riscv64"] == foreign
            busybox = run([str(foreign_busybox["arm64"]), "uname", "-m"])
            assert busybox.stdout == "aarch64\n", busybox.stderr
            # docker's CLI against podman 4.3 loses `run --rm` exit codes: the action's runs, by podman
            for args in (["--version"], ["--install", "arm64,riscv64"], []):
                again = run(["podman", "run", "--rm", "--privileged", reference, *args], env=env)
                assert again.returncode == 0, again.stderr
            assert host_entries() == after
        finally:
            restore_table(before)
        assert host_entries() == before


def test_seed_commands_install_all_then_reset_p_yes(docker, podman_env, foreign_busybox):  # noqa: F811
    """`docker run --privileged --rm IMAGE --install all` and `docker run --rm --privileged IMAGE
    --reset -p yes`, as articles paste them. docker's CLI against podman 4.3 does not report a
    `run --rm` container's exit code, so podman itself runs each line once more for it."""
    env, reference = docker
    with host_table():
        before = host_entries()
        try:
            set_aside(before, [name for name in before if name.startswith("qemu-")])
            base = host_entries()
            install = run(["docker", "run", "--privileged", "--rm", reference, "--install", "all"], env=env)
            data = json.loads(install.stdout)
            assert {"linux/arm64", "linux/riscv64", "linux/s390x", "linux/arm/v7", "linux/ppc64le"} <= \
                set(data["supported"]), install.stderr
            assert "installing: arm64 OK" in install.stderr.splitlines()
            assert "failed" not in install.stderr
            again = run(["podman", "run", "--privileged", "--rm", reference, "--install", "all"], env=env)
            assert again.returncode == 0, again.stderr
            added = {name: text for name, text in host_entries().items() if name not in base}
            assert "qemu-aarch64" in added and all(ours(text) and "flags: OCF" in text for text in added.values())

            reset = run(["docker", "run", "--rm", "--privileged", reference, "--reset", "-p", "yes"], env=env)
            assert "Setting qemu-aarch64 as binfmt interpreter for aarch64: OK" in reset.stderr, reset.stderr
            again = run(["podman", "run", "--rm", "--privileged", reference, "--reset", "-p", "yes"], env=env)
            assert again.returncode == 0, again.stderr
            added = {name: text for name, text in host_entries().items() if name not in base}
            assert "qemu-aarch64" in added and all(ours(text) and "flags: F\n" in text for text in added.values())
            busybox = run([str(foreign_busybox["arm64"]), "uname", "-m"])
            assert busybox.stdout == "aarch64\n", busybox.stderr

            bare = run(["podman", "run", "--rm", "--privileged", reference], env=env)
            assert bare.returncode == 0 and "linux/arm64" in json.loads(bare.stdout)["supported"]
        finally:
            restore_table(before)
        assert host_entries() == before


def test_image_entries_without_state_are_removed_by_binfmtd_on_the_host(docker, tmp_path):
    """No state volume: the container's state is gone when it exits, yet binfmtd on the host (with
    a state directory that never saw these entries) knows them as its own and removes them."""
    env, reference = docker
    with host_table():
        before = host_entries()
        try:
            set_aside(before, {"qemu-aarch64", "qemu-s390x"})
            install = run(["podman", "run", "--rm", "--privileged", reference, "--install", "arm64,s390x"], env=env)
            assert install.returncode == 0, install.stderr
            host_env = {**os.environ, "PYTHONPATH": str(ROOT), "BINFMTD_STATE_DIR": str(tmp_path / "state"),
                        "BINFMTD_CONFIG": str(tmp_path / "none.toml")}
            (tmp_path / "none.toml").write_text("")
            status = run([*BINFMTD.split(), "status", "--json"], env=host_env)
            owners = {e["name"]: e["owner"] for e in json.loads(status.stdout)["entries"]}
            assert owners["qemu-aarch64"] == owners["qemu-s390x"] == "binfmtd"
            remove = run([*BINFMTD.split(), "remove", "aarch64", "--json"], env=host_env)
            assert remove.returncode == 0 and json.loads(remove.stdout)["results"][0]["action"] == "removed"
            # and the next container run, without state either, removes the other one
            remove = run(["podman", "run", "--rm", "--privileged", reference, "remove", "--all", "--json"], env=env)
            assert remove.returncode == 0, remove.stderr
            assert [r["name"] for r in json.loads(remove.stdout)["results"] if r["action"] == "removed"] == ["qemu-s390x"]
        finally:
            restore_table(before)
        assert host_entries() == before
