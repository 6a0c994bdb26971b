"""binfmtd knows its emulators: with F the kernel opens the emulator at registration and keeps
that file, so an upgraded or deleted QEMU keeps running until the entry is registered again.
These tests replace and remove real QEMU binaries (Debian 12's 7.2 and bookworm-backports' 10.x,
fetched by scripts/fetch-foreign) the way dpkg does (write a new file, rename it over the old one)
in a directory of the test's own, on the real kernel in a namespace with its own binfmt_misc;
the last one upgrades the host's real qemu-user-static package with the Debian package installed."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from binfmtd.entry import Entry, escape
from binfmtd.facts.host import BinfmtMisc, Host, parse_kernel_release
from binfmtd.facts.interpreters import Interpreter
from binfmtd.plan import Desired, plan_apply
from binfmtd.state.ledger import Owned, State, format_state, parse_state
from binfmtd.targets import BY_NAME, TARGETS

from conftest import BINFMT_MISC, BINFMTD, FOREIGN, ROOT, host_table, need, set_aside

BACKPORTS_QEMU = FOREIGN / "qemu-backports" / "usr" / "bin"
OLD = "/usr/bin/qemu-aarch64-static"


def qemu_version(path: str) -> str:
    """What the emulator itself says when run (binfmtd reads the banner instead: this checks it)."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    words = out.split()
    return words[words.index("version") + 1]


@pytest.fixture
def emulators(ns, tmp_path, root_only_dir) -> dict:
    """A root-owned directory holding qemu-aarch64-static (Debian 12's 7.2), the config that
    points binfmtd at it, and the replacement (bookworm-backports' 10.x) with both versions."""
    need(os.path.exists(OLD), f"{OLD} is missing (apt-get install qemu-user-static)")
    new = BACKPORTS_QEMU / "qemu-aarch64"
    need(new.exists(), f"{new} is missing: run scripts/fetch-foreign")
    directory = root_only_dir  # binfmtd trusts an emulator only where root alone controls the path
    shutil.copy2(OLD, directory / "qemu-aarch64-static")
    config = tmp_path / "binfmtd.toml"
    config.write_text(f'targets = ["aarch64"]\ninterpreter_dirs = ["{directory}"]\n')
    versions = {"old": qemu_version(OLD), "new": qemu_version(str(new))}
    assert versions["old"] and versions["new"] and versions["old"] != versions["new"], versions
    return {"dir": directory, "path": directory / "qemu-aarch64-static", "new_path": new, "config": config,
            "env": {"BINFMTD_CONFIG": str(config)}, **versions}


def upgrade(emulators) -> str:
    """What dpkg does when it upgrades a file: unpack next to it, rename over it."""
    return f"cp {emulators['new_path']} {emulators['dir']}/.dpkg-new && mv {emulators['dir']}/.dpkg-new {emulators['path']}"


def metrics(text: str) -> dict:
    return {(s.name, s.labels.get("target")): s for family in text_string_to_metric_families(text)
            for s in family.samples}


def test_state_round_trips_the_pinned_emulator():
    pinned = {"path": OLD, "dev": 1, "ino": 2, "size": 3, "mtime": 4, "version": "7.2.22"}
    state = State({"qemu-aarch64": Owned(":qemu-aarch64:M::\\x7f:\\xff:/usr/bin/q:F", None, pinned=pinned),
                   "qemu-arm": Owned(":qemu-arm:M::\\x7f:\\xff:/usr/bin/q:F")})
    again = parse_state(format_state(state))
    assert again.entries["qemu-aarch64"].pinned == pinned and again.entries["qemu-arm"].pinned is None
    assert "pinned" not in json.loads(format_state(state))["entries"]["qemu-arm"]  # older readers see no change


def plan_for(current: Entry | None, owned: Owned | None, on_disk: dict | None, flags: str = "POCF"):
    """plan_apply for aarch64 alone (pure: the facts are given)."""
    t = BY_NAME["aarch64"]
    vanished = frozenset({current.name} if current and on_disk is None else ())  # the file at its path is gone
    host = Host(parse_kernel_release("6.18.0"), "x86_64",
                BinfmtMisc(BINFMT_MISC, True, True, "binfmt_misc", True, (current,) if current else ()), (), vanished)
    interpreter = (Interpreter(on_disk["path"], True, resolved=on_disk["path"], identity=on_disk) if on_disk
                   else Interpreter(None, problem="not found", fix="install it"))
    state = State({"qemu-aarch64": owned} if owned else {})
    return plan_apply(Desired((t,), flags), host, {t.qemu: interpreter}, state).actions[0]


def test_plan_re_registers_only_binfmtds_fixed_entries_whose_pinned_file_changed():
    t = BY_NAME["aarch64"]
    old = {"path": OLD, "dev": 1, "ino": 10, "size": 5, "mtime": 7, "version": "7.2.22"}
    new = {**old, "ino": 11, "size": 6, "version": "10.0.2"}
    entry = Entry("qemu-aarch64", OLD, "POCF", 0, t.magic, t.mask)
    line = entry.register_line()
    replaced = plan_for(entry, Owned(line, None, pinned=old), new)
    assert (replaced.action, replaced.reason) == ("replaced", "pinned QEMU 7.2.22 (replaced on disk by QEMU 10.0.2): "
                                                              "re-registered to use it")
    assert replaced.pin == new and replaced.old == entry and replaced.new.register_line() == line
    assert plan_for(entry, Owned(line, None, pinned=old), dict(old)).action == "unchanged"
    # An older binfmtd's state has no pin: nothing to compare with, so no spurious re-registration.
    assert plan_for(entry, Owned(line), new).action == "unchanged"
    # Without F the kernel opens the path at every exec: a new file takes effect by itself.
    no_f = Entry("qemu-aarch64", OLD, "POC", 0, t.magic, t.mask)
    assert plan_for(no_f, Owned(no_f.register_line(), None, pinned=old), new, flags="POC").action == "unchanged"
    # Another tool's entry is never re-registered (nor is its pin known).
    assert plan_for(entry, None, new).reason == "already registered as desired (by another tool)"
    gone = plan_for(entry, Owned(line, None, pinned=old), None)
    assert (gone.action, gone.old) == ("removed", entry) and "it ran QEMU 7.2.22, now deleted" in gone.reason


def test_replaced_emulator_is_drift_until_apply_re_pins_it(ns, emulators):
    old, new = emulators["old"], emulators["new"]
    steps = ns.run(
        f"{BINFMTD} apply --json", f"{BINFMTD} verify --engine sandbox --json", upgrade(emulators),
        f"{BINFMTD} status --json", f"{BINFMTD} status", f"{BINFMTD} check --json",
        f"{BINFMTD} verify --engine sandbox --json", f"{BINFMTD} apply --check --json", f"{BINFMTD} apply --json",
        f"{BINFMTD} verify --engine sandbox --json", f"{BINFMTD} apply --json", f"{BINFMTD} status --format prometheus",
        env=emulators["env"])
    (first, verify_old, _, status, text, check, verify_stale, dry, apply, verify_new, again, prom) = steps
    assert [r["action"] for r in first.json()["results"]] == ["registered"], first.err
    ran = verify_old.json()["results"][0]["emulator"]
    assert (ran["version"], ran["current"], ran["deleted"]) == (old, True, False), verify_old.out

    # After the upgrade: the kernel still runs the old file, and every command says so.
    entry, = status.json()["entries"]
    assert entry["qemu_version"] == old and entry["emulator"]["drift"] == "replaced"
    assert entry["emulator"]["on_disk"]["version"] == new
    note = f"pinned QEMU {old} (replaced on disk by QEMU {new}): re-register to use it"
    assert note in entry["emulator"]["note"]
    assert f" {old} " in text.out and note in text.err
    checks = {c["name"]: c for c in check.json()["checks"]}
    assert check.rc == 1 and not checks["emulator:aarch64"]["ok"] and note in checks["emulator:aarch64"]["detail"]
    assert checks["emulator:aarch64"]["fix"] == "binfmtd apply aarch64"
    stale = verify_stale.json()["results"][0]
    assert stale["ok"] and stale["machine"] == "aarch64"  # emulation works, with the old QEMU:
    assert (stale["emulator"]["version"], stale["emulator"]["current"], stale["emulator"]["deleted"]) == (old, False, True)
    assert f"the kernel ran QEMU {old}" in verify_stale.err and f"now QEMU {new}" in verify_stale.err

    reason = f"pinned QEMU {old} (replaced on disk by QEMU {new}): re-registered to use it"
    assert [(r["action"], r["reason"]) for r in dry.json()["results"]] == [("replaced", reason)]
    assert [(r["action"], r["reason"]) for r in apply.json()["results"]] == [("replaced", reason)], apply.err
    ran = verify_new.json()["results"][0]["emulator"]
    assert (ran["version"], ran["current"], ran["deleted"]) == (new, True, False), verify_new.out
    assert [r["action"] for r in again.json()["results"]] == ["unchanged"]
    pinned = json.loads((ns.state_dir / "state.json").read_text())["entries"]["qemu-aarch64"]["pinned"]
    assert pinned["version"] == new and pinned["ino"] == os.stat(emulators["path"]).st_ino
    info = metrics(prom.out)[("binfmtd_entry_info", "aarch64")]
    assert info.value == 1 and info.labels["qemu_version"] == new and info.labels["drift"] == ""
    assert info.labels["owner"] == "binfmtd"


def test_removed_emulator_entry_is_removed_by_apply(ns, emulators):
    steps = ns.run(f"{BINFMTD} apply --json", f"rm {emulators['path']}", f"{BINFMTD} status --json",
                   f"{BINFMTD} check aarch64 --json", f"{BINFMTD} status --format prometheus", f"{BINFMTD} apply --json",
                   f"ls {BINFMT_MISC}", f"{BINFMTD} apply --json", env=emulators["env"])
    first, _, status, check, prom, apply, listing, again = steps
    entry, = status.json()["entries"]
    assert entry["emulator"]["drift"] == "removed" and entry["emulator"]["on_disk"] is None
    assert "gone from disk" in entry["emulator"]["note"] and "binfmtd apply removes it" in entry["emulator"]["note"]
    # check names both: the interpreter is missing, and the entry still runs the file it pinned
    checks = {c["name"]: c for c in check.json()["checks"]}
    assert not checks["interpreter:aarch64"]["ok"] and "not found" in checks["interpreter:aarch64"]["detail"]
    assert not checks["emulator:aarch64"]["ok"] and "gone from disk" in checks["emulator:aarch64"]["detail"]
    assert checks["emulator:aarch64"]["fix"] == "binfmtd apply aarch64"
    assert metrics(prom.out)[("binfmtd_entry_info", "aarch64")].labels["drift"] == "removed"
    result, = apply.json()["results"]
    assert result["action"] == "removed", apply.out + apply.err
    assert result["reason"] == (f"emulator {emulators['path']} is gone from disk; it ran QEMU {emulators['old']}, "
                                "now deleted: entry removed")
    assert "qemu-aarch64" not in listing.out.split()
    assert "qemu-aarch64" not in json.loads((ns.state_dir / "state.json").read_text())["entries"]
    assert [r["action"] for r in again.json()["results"]] == ["skipped"]  # nothing to register, nothing left


def test_another_tools_entry_with_a_deleted_emulator_is_reported_not_touched(ns, emulators):
    t = BY_NAME["aarch64"]
    line = f":qemu-aarch64:M::{escape(t.magic)}:{escape(t.mask)}:{emulators['path']}:OCF"
    steps = ns.run(f"printf '%s' {shlex.quote(line)} > {BINFMT_MISC}/register", f"rm {emulators['path']}",
                   f"{BINFMTD} status --json", f"{BINFMTD} apply --json", f"{BINFMTD} remove aarch64 --json",
                   f"cat {BINFMT_MISC}/qemu-aarch64", env=emulators["env"])
    _, _, status, apply, remove, entry = steps
    report, = status.json()["entries"]
    assert report["owner"] == "other" and report["emulator"]["drift"] == "removed"
    assert "it is not binfmtd's" in report["emulator"]["note"]
    result, = apply.json()["results"]
    assert result["action"] == "skipped" and "keeps running the emulator it pinned" in result["reason"]
    assert [r["action"] for r in remove.json()["results"]] == ["skipped"]
    assert entry.out.startswith("enabled\n") and f"interpreter {emulators['path']}\n" in entry.out


def test_verify_sees_binfmt_support_entry_still_running_the_qemu_replaced_under_it(ns, emulators, tmp_path):
    """Debian's binfmt-support registers qemu-aarch64 (F, through /usr/libexec/qemu-binfmt's
    link); then a newer QEMU appears at /usr/bin/qemu-aarch64-static (bind-mounted over it in
    this namespace, as an upgrade would rename it). binfmtd cannot know what another tool's entry
    pinned: status shows the version on disk, marked so; verify sees the old one really running
    (/proc/PID/exe) and says so; apply leaves the entry alone."""
    need(shutil.which("update-binfmts") is not None and os.path.exists("/usr/share/binfmts/qemu-aarch64"),
         "binfmt-support and qemu-user-static's formats are needed (apt-get install binfmt-support)")
    admin = tmp_path / "binfmts-admin"
    admin.mkdir()
    steps = ns.run(f"update-binfmts --admindir {admin} --importdir /usr/share/binfmts --import qemu-aarch64",
                   f"mount --bind {emulators['new_path']} {OLD}", f"{BINFMTD} status --json", f"{BINFMTD} status",
                   f"{BINFMTD} verify aarch64 --engine sandbox --json", f"{BINFMTD} apply aarch64 --json",
                   f"cat {BINFMT_MISC}/qemu-aarch64")
    imported, bound, status, text, verify, apply, entry = steps
    assert imported.rc == 0 and bound.rc == 0, imported.err + bound.err
    report, = status.json()["entries"]
    assert report["owner"] == "other" and report["qemu_version"] == emulators["new"]
    assert report["emulator"]["version_of"] == "disk" and report["emulator"]["pinned"] is None
    assert f"{emulators['new']} (on disk)" in text.out
    result = verify.json()["results"][0]
    assert result["ok"] and result["emulator"]["version"] == emulators["old"] and not result["emulator"]["current"]
    assert f"the kernel ran QEMU {emulators['old']} from {OLD}, replaced on disk since" in verify.err
    assert "re-register it with the tool that made it" in verify.err
    assert [r["action"] for r in apply.json()["results"]] == ["skipped"]
    assert "interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n" in entry.out


def test_a_no_op_apply_runs_no_emulator(ns, emulators):
    """The boot path runs no emulator: the version a registration records is read from the
    banner QEMU stores in its file, and a no-op compares stat() results (measured by recording
    every process apply starts)."""
    spy = ("import subprocess, sys; started = []; real = subprocess.Popen.__init__\n"
           "def record(self, args, *a, **k): started.append(args); real(self, args, *a, **k)\n"
           "subprocess.Popen.__init__ = record\n"
           "from binfmtd.commands import change\n"
           "actions = [str(r.action) for r in change.apply(['aarch64']).results]\n"
           "print(actions, sum('--version' in a for a in started))")
    first, second = ns.run(f"python3 -c {shlex.quote(spy)}", f"python3 -c {shlex.quote(spy)}",
                           env={**emulators["env"], "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"})
    assert first.out == "['registered'] 0\n", first.err
    assert second.out == "['unchanged'] 0\n", second.err
    pinned = json.loads((ns.state_dir / "state.json").read_text())["entries"]["qemu-aarch64"]["pinned"]
    assert pinned["version"] == emulators["old"]  # what the emulator itself prints for --version


def test_daemon_re_pins_a_replaced_emulator_within_an_interval(ns, emulators):
    config = emulators["config"]
    config.write_text(config.read_text() + "[daemon]\ninterval = 0.2\n")
    log = ns.workdir / "daemon.log"
    script = f"""
        {BINFMTD} daemon 2>{log} & P=$!
        for i in $(seq 100); do grep -q "ready:" {log} && break; sleep 0.1; done
        t0=$(date +%s%N)
        {upgrade(emulators)}
        for i in $(seq 100); do grep -q "qemu-aarch64 replaced" {log} && break; sleep 0.02; done
        echo $(( ($(date +%s%N) - t0) / 1000000 )) > {ns.workdir}/repair_ms
        {BINFMTD} verify aarch64 --engine sandbox --json
        kill -TERM $P; wait $P
    """
    verify = ns.one(script, env=emulators["env"])
    text = log.read_text()
    assert f"qemu-aarch64 replaced (pinned QEMU {emulators['old']} (replaced on disk by QEMU {emulators['new']})" in text
    assert "drift: " in text and f"{emulators['path']} was changed on disk" in text
    latency = int((ns.workdir / "repair_ms").read_text())
    print(f"\nre-pin latency with interval 0.2 s: {latency} ms")
    assert latency < 3000, text
    ran = json.loads(verify.out)["results"][0]["emulator"]
    assert (ran["version"], ran["current"]) == (emulators["new"], True), verify.err


def test_daemon_registers_an_emulator_that_appears_after_its_removal(ns, emulators):
    config = emulators["config"]
    config.write_text(config.read_text() + "[daemon]\ninterval = 0.2\n")
    log = ns.workdir / "daemon.log"
    moved = ns.workdir / "moved-away"
    script = f"""
        {BINFMTD} daemon 2>{log} & P=$!
        for i in $(seq 100); do grep -q "ready:" {log} && break; sleep 0.1; done
        mv {emulators['path']} {moved}
        for i in $(seq 100); do [ -e {BINFMT_MISC}/qemu-aarch64 ] || break; sleep 0.02; done
        [ -e {BINFMT_MISC}/qemu-aarch64 ] && echo "not removed"
        mv {moved} {emulators['path']}
        for i in $(seq 100); do [ -e {BINFMT_MISC}/qemu-aarch64 ] && break; sleep 0.02; done
        [ -e {BINFMT_MISC}/qemu-aarch64 ] || echo "not registered again"
        kill -TERM $P; wait $P
    """
    step = ns.one(script, env=emulators["env"])
    text = log.read_text()
    assert step.out == "", text
    assert "qemu-aarch64 removed (emulator" in text and "qemu-aarch64 registered (not registered)" in text
    # its own removal is not drift to repair afterwards
    assert "qemu-aarch64 was removed" not in text.split("qemu-aarch64 removed (emulator")[1].split(
        "qemu-aarch64 registered")[0], text


def test_apt_hook_of_the_pip_install_re_pins_after_dpkg_and_prints_only_changes(ns, emulators):
    """/etc/apt/apt.conf.d/80binfmtd (scripts/install, the Ansible role): its DPkg::Post-Invoke
    command, run as apt runs it, with /usr/local/bin/binfmtd and /var/lib (binfmtd's default state)
    replaced by tmpfs in this namespace."""
    text = (ROOT / "packaging" / "apt" / "80binfmtd").read_text()
    parsed = subprocess.run(["apt-config", "dump", "-c", str(ROOT / "packaging" / "apt" / "80binfmtd")],
                            capture_output=True, text=True)
    hook = next(line.split('"', 1)[1].rsplit('"', 1)[0] for line in parsed.stdout.splitlines()
                if line.startswith("DPkg::Post-Invoke::") and "binfmtd" in line)
    assert hook in text
    wrapper = f"#!/bin/sh\nexec {BINFMTD} \"$@\"\n"
    setup = (f"mount -t tmpfs none /usr/local/bin && printf '%s' {shlex.quote(wrapper)} > /usr/local/bin/binfmtd && "
             "chmod 755 /usr/local/bin/binfmtd && mount -t tmpfs none /var/lib")
    unset = "unset BINFMTD_STATE_DIR; "
    steps = ns.run(setup, unset + hook, f"ls {BINFMT_MISC}", unset + f"{BINFMTD} apply", upgrade(emulators),
                   unset + hook, unset + hook, env=emulators["env"])
    _, unused, listing, _, _, upgraded, again = steps
    assert unused.out == "" and "qemu-aarch64" not in listing.out  # binfmtd not in use: the hook does nothing
    assert [line for line in upgraded.out.splitlines() if not line.startswith("binfmtd: warning:")] == [
        f"aarch64  linux/arm64  replaced  pinned QEMU {emulators['old']} (replaced on disk by QEMU {emulators['new']}): "
        "re-registered to use it"], upgraded.out + upgraded.err
    assert [line for line in again.out.splitlines() if not line.startswith("binfmtd: warning:")] == [], again.out


def test_install_script_rejects_an_unknown_qemu_source():
    done = subprocess.run([str(ROOT / "scripts" / "install"), "--qemu", "sid"], capture_output=True, text=True)
    assert done.returncode == 2 and "--qemu 'sid': expected debian or backports" in done.stderr


# --- the Debian package and a real QEMU upgrade on the host --------------------------------------

BACKPORTS_LIST = Path("/etc/apt/sources.list.d/binfmtd-test-bookworm-backports.list")
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PYTHONPATH": ""}
HOST_TARGETS = ("aarch64", "riscv64", "s390x")


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    if argv[0] == "apt-get":  # other test runs may hold dpkg's lock for a while
        argv = [argv[0], "-o", "DPkg::Lock::Timeout=300", *argv[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False, env=APT_ENV, **kwargs)


def host_status() -> dict:
    done = run(["/usr/bin/binfmtd", "status", "--json"])
    assert done.returncode == 0, done.stderr
    return {e["name"]: e for e in json.loads(done.stdout)["entries"]}


def binfmt_support_database() -> dict[str, bytes]:
    where = Path("/var/lib/binfmts")
    return {p.name: p.read_bytes() for p in where.iterdir()} if where.is_dir() else {}


@contextlib.contextmanager
def binfmtd_dirs_set_aside():
    """/var/lib/binfmtd and /etc/binfmtd as a binfmtd install without the package may have left
    them (the README's `scripts/install`; the package's purge deletes both): moved aside for the
    test and put back after."""
    moved = []
    for path in (Path("/var/lib/binfmtd"), Path("/etc/binfmtd")):
        if path.exists():
            aside = path.with_name(f"{path.name}.test-aside-{os.getpid()}")
            path.rename(aside)
            moved.append((path, aside))
    try:
        yield
    finally:
        for path, aside in moved:
            if path.exists():
                shutil.rmtree(path)  # what the test left there
            aside.rename(path)


def test_deb_declares_a_file_trigger_for_every_emulator_path_binfmtd_registers():
    need(shutil.which("dpkg-deb") is not None, "dpkg-deb is missing")
    done = run([str(ROOT / "scripts" / "build-deb")], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    triggers = run(["dpkg-deb", "-I", str(ROOT / done.stdout.strip()), "triggers"]).stdout
    interests = {line.split()[1] for line in triggers.splitlines() if line.startswith("interest-noawait ")}
    assert interests == {f"/usr/bin/qemu-{t.qemu}{suffix}" for t in TARGETS for suffix in ("", "-static")}
    postinst = run(["dpkg-deb", "-I", str(ROOT / done.stdout.strip()), "postinst"]).stdout
    assert '"$1" = "triggered"' in postinst and "binfmtd apply" in postinst


def test_deb_trigger_re_pins_the_entries_when_qemu_is_upgraded_to_backports():
    """Install the .deb, register three targets on the host, upgrade qemu-user-static from Debian
    12's 7.2 to bookworm-backports' 10.x with apt: the package's dpkg trigger re-registers every
    binfmtd entry, which then runs 10.x (verify sees it through /proc/PID/exe). Downgrading back
    to 7.2 (which puts the host back as it was) re-pins them again."""
    need(shutil.which("apt-get") is not None and os.path.exists("/etc/debian_version"), "not a Debian host")
    need("bookworm" in Path("/etc/os-release").read_text(), "bookworm-backports' QEMU 10 is for Debian 12")
    installed = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "qemu-user-static"]).stdout.split()
    need(installed[:3] == ["install", "ok", "installed"], "qemu-user-static is not installed")
    old_version = installed[3]
    need(old_version.startswith("1:7.2"), f"qemu-user-static {old_version} is not Debian 12's 7.2")
    if "installed" in run(["dpkg-query", "-W", "-f", "${Status}", "binfmtd"]).stdout.split():
        pytest.skip("binfmtd is installed on this host; the test would purge it")
    done = run([str(ROOT / "scripts" / "build-deb")], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    deb = ROOT / done.stdout.strip()
    # A host where the README's set-up ran has binfmtd's own qemu-* entries: the package's binfmtd
    # (a fresh state) would rightly leave them alone as another tool's, and QEMU 10's maintainer
    # scripts unregister the entries of the targets it dropped (qemu-cris), whoever made them.
    with host_table(), binfmtd_dirs_set_aside(), \
            set_aside(*(p.name for p in Path(BINFMT_MISC).iterdir() if p.name.startswith("qemu-"))):
        before = {p.name for p in Path(BINFMT_MISC).iterdir()}
        binfmts_before = binfmt_support_database()
        archives_before = set(Path("/var/cache/apt/archives").glob("*.deb"))
        try:
            done = run(["apt-get", "install", "-y", str(deb)])
            assert done.returncode == 0, done.stdout + done.stderr
            Path("/etc/binfmtd/binfmtd.toml").write_text(f"targets = {json.dumps(list(HOST_TARGETS))}\n")
            done = run(["/usr/bin/binfmtd", "apply", "--json"])
            assert done.returncode == 0 and {r["action"] for r in json.loads(done.stdout)["results"]} == {"registered"}
            assert {e["qemu_version"] for n, e in host_status().items() if n not in before} == {qemu_version(OLD)}

            BACKPORTS_LIST.write_text("deb http://deb.debian.org/debian bookworm-backports main\n")
            done = run(["apt-get", "update", "-o", f"Dir::Etc::sourcelist={BACKPORTS_LIST}",
                        "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0"])
            assert done.returncode == 0, done.stderr
            started = time.monotonic()
            done = run(["apt-get", "install", "-y", "-t", "bookworm-backports", "qemu-user-static"])
            print(f"\napt-get upgrade to backports: {time.monotonic() - started:.1f}s\n{done.stdout[-2000:]}")
            assert done.returncode == 0, done.stdout + done.stderr
            new = qemu_version(OLD)
            assert new and not new.startswith("7.2") and os.path.realpath(OLD) == "/usr/bin/qemu-aarch64"
            # The trigger ran `binfmtd apply` (its output is in apt's): every entry re-pinned, none stale.
            assert "binfmtd: QEMU's emulators changed on disk; binfmtd apply:" in done.stdout
            rows = [line.split() for line in done.stdout.splitlines()]
            assert {row[0] for row in rows if row[2:3] == ["replaced"]} == set(HOST_TARGETS), done.stdout
            entries = host_status()
            for target in HOST_TARGETS:
                entry = entries[f"qemu-{target}"]
                assert (entry["owner"], entry["qemu_version"], entry["emulator"]["drift"]) == ("binfmtd", new, None)
            verify = run(["/usr/bin/binfmtd", "verify", *HOST_TARGETS, "--engine", "sandbox", "--json"])
            report = json.loads(verify.stdout)
            assert verify.returncode == 0 and report["ok"], verify.stdout + verify.stderr
            assert {r["target"]: (r["emulator"]["version"], r["emulator"]["current"]) for r in report["results"]} \
                == {t: (new, True) for t in HOST_TARGETS}
        finally:
            BACKPORTS_LIST.unlink(missing_ok=True)
            for lists in Path("/var/lib/apt/lists").glob("*bookworm-backports*"):
                lists.unlink()
            # Back to Debian 12's QEMU (the trigger re-pins binfmtd's entries once more), then purge.
            done = run(["apt-get", "install", "-y", "--allow-downgrades", f"qemu-user-static={old_version}",
                        "qemu-user-", "qemu-user-binfmt-"])
            restored = done.returncode == 0 and \
                run(["dpkg-query", "-W", "-f", "${Version}", "qemu-user-static"]).stdout == old_version
            entries = host_status() if os.path.exists("/usr/bin/binfmtd") else {}
            # binfmt-support's database: 10.x's postinst removes qemu-cris from it (QEMU 9 dropped cris);
            # 7.2's postinst imports its formats again only outside containers (here: a container).
            for name, text in binfmts_before.items():
                if binfmt_support_database().get(name) != text:
                    print(f"restoring /var/lib/binfmts/{name}")
                    Path("/var/lib/binfmts", name).write_bytes(text)
            run(["apt-get", "purge", "-y", "binfmtd"])
            for downloaded in set(Path("/var/cache/apt/archives").glob("*bpo12*.deb")) - archives_before:
                downloaded.unlink()  # the backports packages apt fetched
            for name in {p.name for p in Path(BINFMT_MISC).iterdir()} - before:
                Path(BINFMT_MISC, name).write_text("-1")
        assert restored, done.stdout + done.stderr
        assert {entries[f"qemu-{t}"]["qemu_version"] for t in HOST_TARGETS} == {qemu_version(OLD)}
        assert qemu_version(OLD).startswith("7.2") and not os.path.lexists("/usr/bin/qemu-aarch64")
        assert {p.name for p in Path(BINFMT_MISC).iterdir()} == before
        assert binfmt_support_database() == binfmts_before
        assert not os.path.exists("/var/lib/binfmtd") and not BACKPORTS_LIST.exists()  # purged; yours comes back


def test_vanished_emulator_of_a_taken_over_entry_puts_the_original_back(ns, emulators, root_only_dir):
    """--force took over another tool's entry; when binfmtd's emulator is then removed, apply
    removes binfmtd's entry and registers the original again, exactly as it was."""
    t = BY_NAME["aarch64"]
    other = root_only_dir / "other"
    other.mkdir()
    shutil.copy2(OLD, other / "qemu-aarch64")
    line = f":qemu-aarch64:M::{escape(t.magic)}:{escape(t.mask)}:{other / 'qemu-aarch64'}:F"
    steps = ns.run(f"printf '%s' {shlex.quote(line)} > {BINFMT_MISC}/register", f"cat {BINFMT_MISC}/qemu-aarch64",
                   f"{BINFMTD} apply --force --json", f"rm {emulators['path']}", f"{BINFMTD} apply --json",
                   f"cat {BINFMT_MISC}/qemu-aarch64", env=emulators["env"])
    _, before, force, _, apply, after = steps
    assert [r["action"] for r in force.json()["results"]] == ["replaced"], force.err
    result, = apply.json()["results"]
    assert result["action"] == "removed" and "put back" in result["reason"], apply.out + apply.err
    assert after.out == before.out


def test_an_emulator_only_missing_from_interpreter_dirs_is_not_removed(ns, emulators, tmp_path):
    """"Vanished" means gone from disk, not "not found where this config looks": binfmtd's
    entry stays, and an explicitly named target that cannot be registered is an error."""
    empty = tmp_path / "nothing-here.toml"
    empty.write_text('interpreter_dirs = ["/nonexistent"]\n')
    first, named, listing = ns.run(f"{BINFMTD} apply", f"{BINFMTD} apply aarch64 --config {empty} --json",
                                   f"ls {BINFMT_MISC}", env=emulators["env"])
    assert first.rc == 0, first.err
    assert named.rc == 1 and [r["action"] for r in named.json()["results"]] == ["skipped"]
    assert "qemu-aarch64" in listing.out.split()


def test_entries_of_binfmtds_image_survive_a_host_without_their_emulator(ns, emulators, tmp_path):
    """The image's emulators live only in the container (the kernel holds them with F); a host
    apply where that path names nothing must not remove the image's working entries."""
    t = BY_NAME["aarch64"]
    line = f":qemu-aarch64:M::{escape(t.magic)}:{escape(t.mask)}:/usr/libexec/binfmtd-image/qemu-aarch64-static:"
    config = tmp_path / "c.toml"
    config.write_text('targets = ["aarch64"]\ninterpreter_dirs = ["/nonexistent"]\n')
    _, apply, status, entry = ns.run(f"printf '%s' {shlex.quote(line)} > {BINFMT_MISC}/register",
                                     f"{BINFMTD} apply --config {config} --json", f"{BINFMTD} status --json",
                                     f"cat {BINFMT_MISC}/qemu-aarch64")
    assert apply.rc == 0 and [r["action"] for r in apply.json()["results"]] == ["skipped"], apply.out + apply.err
    report, = status.json()["entries"]
    assert report["owner"] == "binfmtd" and report["emulator"]["drift"] is None
    assert entry.out.startswith("enabled\n")
