"""`binfmtd ps`, the emulation metrics and remove's warning: a real foreign busybox runs under a
namespace-registered entry, and what binfmtd reports about it is checked against its PID. The
namespace has its own PID namespace and /proc: only its own processes are visible there."""

import shlex
import shutil

import pytest
from conftest import BINFMTD, qemu
from prometheus_client.parser import text_string_to_metric_families

from binfmtd.entry import Entry
from binfmtd.facts.processes import (
    CpuLedger,
    EmulatedProcess,
    container_of_cgroup,
    foreign_command,
    parse_auxv,
    parse_cgroup,
    parse_exe_link,
    started_via_entry,
)


def start(busybox, *args: str, argv0: str | None = None) -> str:
    """A step that starts a foreign busybox in the background and prints its PID; the process
    dies with the namespace."""
    exec_ = f"exec -a {shlex.quote(argv0)} " if argv0 else "exec "
    line = f"{exec_}{shlex.quote(str(busybox))} {' '.join(map(shlex.quote, args))}"
    return f"bash -c {shlex.quote(line)} </dev/null >/dev/null 2>&1 & echo $!; sleep 0.5"


def test_ps_lists_a_running_foreign_busybox_with_its_target(ns, foreign_busybox):
    qemu("aarch64")
    apply, pid, ps, text = ns.run(f"{BINFMTD} apply aarch64", start(foreign_busybox["arm64"], "30", argv0="sleep"),
                                  f"{BINFMTD} ps --json", f"{BINFMTD} ps")
    assert apply.rc == 0, apply.err
    assert ps.rc == 0, ps.err
    [process] = [p for p in ps.json()["processes"] if p["pid"] == int(pid.out)]
    assert process["target"] == "aarch64" and process["entry"] == "qemu-aarch64"
    assert process["command"] == ["sleep", "30"]  # P: the original argv[0] comes back
    assert process["via_entry"] is True
    assert process["interpreter"] == "/usr/bin/qemu-aarch64-static" and not process["emulator_deleted"]
    assert process["user"] == "root" and process["rss_bytes"] > 1_000_000 and process["cpu_seconds"] >= 0
    assert ps.json()["targets"] == [{"target": "aarch64", "platform": "linux/arm64", "processes": 1,
                                     "cpu_seconds": process["cpu_seconds"]}]
    assert any(line.split()[:2] == ["aarch64", pid.out.strip()] and line.endswith("sleep 30")
               for line in text.out.splitlines())


def test_without_p_the_command_starts_with_the_binarys_path(ns, foreign_busybox):
    qemu("aarch64")
    busybox = str(foreign_busybox["arm64"])
    _, pid, ps = ns.run(f"{BINFMTD} apply aarch64 --flags OCF", start(busybox, "sleep", "30"), f"{BINFMTD} ps --json")
    [process] = [p for p in ps.json()["processes"] if p["pid"] == int(pid.out)]
    assert process["command"] == [busybox, "sleep", "30"]


def test_metrics_count_the_emulated_process_and_the_cpu_of_its_exited_children(ns, foreign_busybox):
    qemu("aarch64")
    # A foreign shell whose child burns CPU and exits before the scan: reaped, its time is the shell's.
    burn = "(i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done); exec sleep 30"
    _, _, _, ps, metrics = ns.run(f"{BINFMTD} apply aarch64 arm", start(foreign_busybox["arm64"], "sh", "-c", burn),
                               "sleep 2", f"{BINFMTD} ps --json", f"{BINFMTD} status --format prometheus")
    assert metrics.rc == 0, metrics.err
    samples = {(s.name, s.labels["target"]): s.value for family in text_string_to_metric_families(metrics.out)
               for s in family.samples if family.name.startswith("binfmtd_emulated")}
    assert samples[("binfmtd_emulated_processes", "aarch64")] == 1
    assert samples[("binfmtd_emulated_processes", "arm")] == 0
    [process] = ps.json()["processes"]
    assert process["cpu_seconds"] < 0.05 < process["children_cpu_seconds"]
    assert samples[("binfmtd_emulated_cpu_seconds_total", "aarch64")] >= process["children_cpu_seconds"]
    assert samples[("binfmtd_emulated_cpu_seconds_total", "arm")] == 0


def test_remove_warns_while_processes_run_under_the_entry(ns, foreign_busybox):
    qemu("aarch64")
    _, pid, check, remove, after = ns.run(
        f"{BINFMTD} apply aarch64", start(foreign_busybox["arm64"], "sleep", "30"),
        f"{BINFMTD} remove aarch64 --check", f"{BINFMTD} remove aarch64 --json", "pgrep -x busybox")
    warning = f"qemu-aarch64: 1 process(es) still run under it: PID {pid.out.strip()} ("
    assert warning in check.err
    assert remove.rc == 0 and remove.json()["results"][0]["action"] == "removed"
    assert warning in remove.err
    assert after.out.split() == [pid.out.strip()]  # the process goes on with the emulator it has


def test_remove_without_running_processes_does_not_warn(ns):
    qemu("aarch64")
    _, remove = ns.run(f"{BINFMTD} apply aarch64", f"{BINFMTD} remove aarch64")
    assert remove.rc == 0 and "still run" not in remove.err


def test_ps_shows_a_process_that_runs_a_deleted_emulator(ns, foreign_busybox, tmp_path, root_only_dir):
    emulators = root_only_dir  # binfmtd trusts an emulator only where root alone controls the path
    shutil.copy(qemu("aarch64"), emulators / "qemu-aarch64-static")
    (tmp_path / "c.toml").write_text(f'interpreter_dirs = ["{emulators}"]\n')
    apply, pid, _, ps = ns.run(f"{BINFMTD} apply aarch64 --config {tmp_path / 'c.toml'}",
                               start(foreign_busybox["arm64"], "sleep", "30"),
                               f"rm {emulators / 'qemu-aarch64-static'}", f"{BINFMTD} ps --json")
    assert apply.rc == 0, apply.err
    [process] = [p for p in ps.json()["processes"] if p["pid"] == int(pid.out)]
    assert process["emulator_deleted"] and process["interpreter"] == str(emulators / "qemu-aarch64-static")
    assert process["target"] == "aarch64"


def test_a_qemu_started_by_hand_is_told_apart_by_its_auxiliary_vector(ns, foreign_busybox):
    emulator = qemu("aarch64")
    busybox = str(foreign_busybox["arm64"])
    _, pid, ps = ns.run(f"{BINFMTD} apply aarch64", f"{emulator} {busybox} sleep 30 & echo $!; sleep 0.5",
                        f"{BINFMTD} ps --json")
    [process] = [p for p in ps.json()["processes"] if p["pid"] == int(pid.out)]
    assert process["via_entry"] is False and process["target"] == "aarch64"
    assert process["command"] == [busybox, "sleep", "30"]


def test_ps_with_nothing_emulated_says_so(ns):
    step = ns.one(f"{BINFMTD} ps")
    assert step.rc == 0 and step.out.strip() == "no process runs under a binfmt_misc entry"


# ---- parsers, on what the kernel printed ----

@pytest.mark.parametrize("flags, auxv, via", [
    ("POCF", {2: 3, 8: 1}, True), ("POCF", {8: 0}, False),  # O leaves AT_EXECFD
    ("PF", {8: 1}, True), ("PF", {8: 0}, False),  # P leaves AT_FLAGS_PRESERVE_ARGV0 (5.12+)
    ("F", {8: 0}, None),  # no mark: cannot tell
])
def test_started_via_entry_reads_the_marks_of_the_flags(flags, auxv, via):
    assert started_via_entry(auxv, flags) is via


def test_parse_auxv_stops_at_at_null():
    import struct

    data = struct.pack("@8L", 8, 1, 2, 3, 0, 0, 99, 99)
    assert parse_auxv(data) == {8: 1, 2: 3}


def test_exe_link_of_a_deleted_emulator():
    assert parse_exe_link("/usr/bin/qemu-aarch64-static (deleted)") == ("/usr/bin/qemu-aarch64-static", True)
    assert parse_exe_link("/usr/bin/qemu-aarch64-static") == ("/usr/bin/qemu-aarch64-static", False)


@pytest.mark.parametrize("flags, command", [
    ("POCF", ("sleep", "30")), ("P", ("sleep", "30")),
    ("OCF", ("/b/busybox", "30")), ("", ("/b/busybox", "30")),
])
def test_foreign_command_follows_the_p_flag(flags, command):
    # /proc/PID/cmdline of `exec -a sleep /b/busybox 30` on Linux 6.18: with P argv[0] is kept
    # after the path; without P it is gone.
    with_p, without_p = ["/usr/bin/qemu-aarch64-static", "/b/busybox", "sleep", "30"], \
        ["/usr/bin/qemu-aarch64-static", "/b/busybox", "30"]
    assert foreign_command(with_p if "P" in flags else without_p, flags) == command


@pytest.mark.parametrize("text, cgroup, container", [
    ("0::/system.slice/docker-" + "ab" * 32 + ".scope\n", "/system.slice/docker-" + "ab" * 32 + ".scope", "ab" * 32),
    ("0::/machine.slice/libpod-" + "cd" * 32 + ".scope/container\n", None, "cd" * 32),
    ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-"
     + "ef" * 32 + ".scope\n", None, "ef" * 32),
    ("12:pids:/docker/" + "01" * 32 + "\n11:memory:/docker/" + "01" * 32 + "\n", "/docker/" + "01" * 32, "01" * 32),
    ("0::/user.slice/user-0.slice/session-1.scope\n", "/user.slice/user-0.slice/session-1.scope", None),
    ("0::/\n", None, None),
])
def test_cgroup_and_container_id(text, cgroup, container):
    found = parse_cgroup(text)
    if cgroup is not None:
        assert found == cgroup
    assert container_of_cgroup(found) == container


def _process(pid: int, started: float, cpu: float, children: float = 0.0, ppid: int = 1,
             target: str = "aarch64") -> EmulatedProcess:
    return EmulatedProcess(pid, target, f"qemu-{target}", "/q", False, ("x",), True, "root", cpu, children, 1,
                           started, ppid, None, None)


def test_cpu_counter_keeps_the_time_of_processes_that_exited():
    ledger = CpuLedger()
    assert ledger.update([_process(10, 10.0, 2.0), _process(20, 11.0, 1.0)]) == {"aarch64": 3.0}
    assert ledger.update([_process(20, 11.0, 1.5)]) == {"aarch64": 3.5}  # pid 10 exited at 2.0 s
    # pid 20 reused by a new process: the old one's 1.5 s stay, the new one starts from 0.25
    assert ledger.update([_process(20, 20.0, 0.25)]) == {"aarch64": 3.75}


def test_cpu_counter_counts_reaped_children_once():
    ledger = CpuLedger()
    # make (pid 10, parent not emulated) runs gcc (pid 11): each counts its own time
    assert ledger.update([_process(10, 1.0, 1.0), _process(11, 2.0, 4.0, ppid=10)]) == {"aarch64": 5.0}
    # gcc exited and make reaped it: its 4.5 s are now make's children time, not counted twice
    assert ledger.update([_process(10, 1.0, 1.0, children=4.5)]) == {"aarch64": 5.5}
    # a compiler that lived between two scans shows up through make's children time too
    assert ledger.update([_process(10, 1.0, 1.5, children=7.5)]) == {"aarch64": 9.0}
    # make exits: its whole tree stays counted
    assert ledger.update([]) == {"aarch64": 9.0}


def test_entries_of_other_kinds_are_not_emulation(tmp_path):
    from binfmtd.facts.processes import _entries_by_interpreter

    jar = Entry("jar", "/usr/bin/jexec", "", 0, b"", b"", True, "jar")
    assert _entries_by_interpreter([jar]) == {}


def test_daemon_textfile_follows_emulated_processes_while_idle(ns, foreign_busybox):
    """The daemon rewrites its textfile every METRICS_REFRESH seconds while nothing drifts, so a
    foreign process started after its last apply shows up, and its end too."""
    from test_daemon import check_no_failures, config_text, read, scenario

    from binfmtd.daemon import METRICS_REFRESH

    textfile = ns.workdir / "binfmtd.prom"
    line = 'binfmtd_emulated_processes{target="aarch64",platform="linux/arm64"}'
    wait = int((METRICS_REFRESH + 5) * 1000)
    step, _ = scenario(ns, f"""
        start
        wait_until 10000 grep -qF '{line} 0' {textfile} || fail "no metrics after the first apply"
        {shlex.quote(str(foreign_busybox['arm64']))} sleep 600 & B=$!
        wait_until {wait} grep -qF '{line} 1' {textfile} || fail "the running process was not counted"
        kill $B
        wait_until {wait} grep -qF '{line} 0' {textfile} || fail "the ended process was still counted"
        stop
    """, config=config_text(daemon=f'textfile = "{textfile}"\n'), timeout=120)
    check_no_failures(ns, step)
    assert "error" not in read(ns, "daemon.log")


def test_i386_wins_over_i486_which_shares_its_emulator():
    from binfmtd.facts.processes import _entry_for
    from binfmtd.targets import BY_NAME

    i386, i486 = (Entry(f"qemu-{t}", "/usr/bin/qemu-i386-static", "POCF", 0, BY_NAME[t].magic, BY_NAME[t].mask)
                  for t in ("i386", "i486"))
    assert _entry_for([i486, i386]) is i386 and _entry_for([i486]) is i486
