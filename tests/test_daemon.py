"""`binfmtd daemon` on the real kernel, started as systemd starts it: in a fresh namespace with
its own binfmt_misc, with $NOTIFY_SOCKET naming a datagram socket this test bound and reads.
Each scenario is one shell script inside one namespace (the table dies with the namespace):
start the daemon, wait for its entries, break something the way an admin or another tool would,
poll with a deadline until the kernel shows the repair, stop it. Then the test asserts on what
the kernel showed, what the daemon logged, what it told systemd and how it exited."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from binfmtd.daemon import (Log, Table, Watch, boot_message, find_drift, load_settings, watch_from_report,
                            watchdog_period)
from binfmtd.entry import Entry, parse_entry
from binfmtd.errors import UsageError
from binfmtd.facts.host import native_targets
from binfmtd.targets import lookup

from conftest import BINFMT_MISC, BINFMTD, ROOT, need, qemu

NATIVE = {t.name for t in native_targets()}
TARGETS = [t for t in ("aarch64", "riscv64", "s390x", "ppc64le") if t not in NATIVE][:3]
FIRST, SECOND, THIRD = TARGETS
NEW_TARGET = next(t for t in ("arm", "mips64el") if t not in NATIVE)


def config_text(targets=TARGETS, interval=0.2, extra="", daemon="") -> str:
    return f"targets = {json.dumps(list(targets))}\n{extra}[daemon]\ninterval = {interval}\n{daemon}"


class NotifySocket:
    """The test's stand-in for systemd's notify socket: a bound AF_UNIX datagram socket read by
    a thread, which keeps each datagram with its arrival time and appends it as one line
    (fields joined by ' | ') to a file the scenario's shell can poll."""

    def __init__(self, address: str, log: Path):
        self.address, self.log = address, log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, list[str]]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            fields = data.decode().split("\n")
            self.received.append((time.monotonic(), fields))
            with open(self.log, "a") as f:
                f.write(" | ".join(fields) + "\n")

    def __enter__(self) -> NotifySocket:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.1)  # the last datagrams are queued already; let the reader take them
        self.done.set()
        self.thread.join()
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)

    def fields(self) -> list[str]:
        return [field for _, fields in self.received for field in fields]


# Shell helpers every scenario starts with. $W is the test's directory, $P the daemon's pid.
HELPERS = r"""
M=%(misc)s; W=%(work)s
now_ms() { echo $(( $(date +%%s%%N) / 1000000 )); }
wait_until() {  # wait_until MILLISECONDS COMMAND...: poll COMMAND until true or the deadline
  _end=$(( $(now_ms) + $1 )); shift
  until "$@"; do [ "$(now_ms)" -ge "$_end" ] && return 1; sleep 0.02; done
}
enabled() { for _t in "$@"; do [ "$(head -n1 "$M/qemu-$_t" 2>/dev/null)" = enabled ] || return 1; done; }
notified() { grep -q -- "$1" "$W/notify.log" 2>/dev/null; }
logged() { grep -q -- "$1" "$W/daemon.log" 2>/dev/null; }
fail() { echo "$*" >> "$W/failures"; }
start() { %(binfmtd)s daemon 2>>"$W/daemon.log" & P=$!; echo $P > "$W/pid"; }
gone() { ! kill -0 $P 2>/dev/null || [ "$(cut -d' ' -f3 /proc/$P/stat 2>/dev/null)" = Z ]; }
stop() {  # SIGTERM, then record the exit code and how long the daemon took to exit
  _t=$(now_ms); kill -TERM $P
  wait_until 5000 gone || { fail "still running 5 s after SIGTERM"; kill -KILL $P; }
  wait $P; echo $? > "$W/rc"; echo $(( $(now_ms) - _t )) > "$W/stop_ms"
}
dump() { for _f in "$M"/qemu-*; do echo "== $_f"; cat "$_f"; done > "$W/$1"; }
"""


def scenario(ns, script: str, config: str | None = None, notify: str | None = None,
             env: dict | None = None, timeout: float = 90):
    """Run `script` (after HELPERS) in one namespace step with a notify socket bound at `notify`
    (a path under the test's directory by default, or `@name`); returns (step, socket)."""
    for target in TARGETS + [NEW_TARGET]:
        qemu(target)  # these targets' QEMU names are their own
    work = ns.workdir
    (work / "binfmtd.toml").write_text(config if config is not None else config_text())
    address = notify or str(work / "notify.sock")
    helpers = HELPERS % {"misc": BINFMT_MISC, "work": shlex.quote(str(work)), "binfmtd": BINFMTD}
    run_env = {"BINFMTD_CONFIG": str(work / "binfmtd.toml"), "NOTIFY_SOCKET": address, **(env or {})}
    for variable in ("INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"):
        run_env.setdefault(variable, "")
    with NotifySocket(address, work / "notify.log") as sock:
        step = ns.one(helpers + script, env=run_env, timeout=timeout)
    return step, sock


def read(ns, name: str) -> str:
    path = ns.workdir / name
    return path.read_text() if path.exists() else ""


def check_no_failures(ns, step) -> None:
    failures = read(ns, "failures")
    assert not failures, f"{failures}\n--- daemon log:\n{read(ns, 'daemon.log')}\n--- step stderr:\n{step.err}"


def entries_in(dump: str) -> dict[str, str]:
    return {Path(block.partition("\n")[0]).name: block.partition("\n")[2]
            for block in dump.split("== ")[1:]}


def test_daemon_registers_the_config_and_tells_systemd_it_is_ready(ns):
    textfile = ns.workdir / "binfmtd.prom"
    step, sock = scenario(ns, """
        start
        wait_until 10000 notified READY=1 || fail "no READY=1"
        enabled %s || fail "entries not registered when READY=1 came"
        dump entries
        stop
    """ % " ".join(TARGETS), config=config_text(daemon=f'textfile = "{textfile}"\n'))
    check_no_failures(ns, step)
    ready = next(fields for _, fields in sock.received if "READY=1" in fields)
    status = next(f for f in ready if f.startswith("STATUS="))
    assert all(f"qemu-{t}" in status for t in TARGETS), status
    entries = entries_in(read(ns, "entries"))
    assert set(entries) == {f"qemu-{t}" for t in TARGETS}
    assert all(text.startswith("enabled\n") and "flags: POCF\n" in text for text in entries.values())
    log = read(ns, "daemon.log")
    assert "binfmtd: first start since boot " in log and "binfmtd: ready: keeping 3 entries" in log
    assert "\x1b[" not in log  # plain text for journald and Ansible
    state = json.loads((ns.state_dir / "state.json").read_text())
    assert set(state["entries"]) == set(entries)
    assert (ns.state_dir / "daemon.ready").exists()  # the DaemonSet's readiness probe looks at it
    metrics = textfile.read_text().splitlines()  # for node_exporter's textfile collector
    registered = [line for line in metrics if line.startswith("binfmtd_entry_registered{") and line.endswith(" 1")]
    assert sorted(line.split('target="')[1].split('"')[0] for line in registered) == sorted(TARGETS)


def test_removed_and_disabled_entries_are_repaired_within_a_few_ticks(ns):
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        t0=$(now_ms)
        echo -1 > $M/qemu-%(first)s
        echo 0 > $M/qemu-%(second)s
        wait_until 10000 enabled %(all)s || fail "not repaired"
        echo $(( $(now_ms) - t0 )) > $W/repair_ms
        dump entries
        stop
    """ % {"all": " ".join(TARGETS), "first": FIRST, "second": SECOND})
    check_no_failures(ns, step)
    latency = int(read(ns, "repair_ms"))
    print(f"\nrepair latency with interval 0.2 s: {latency} ms")
    assert latency < 3000
    entries = entries_in(read(ns, "entries"))
    assert set(entries) == {f"qemu-{t}" for t in TARGETS}
    assert all(text.startswith("enabled\n") for text in entries.values())
    log = read(ns, "daemon.log")
    assert f"drift: qemu-{FIRST} was removed; qemu-{SECOND} was disabled" in log
    assert f"qemu-{FIRST} registered (not registered)" in log
    assert f"qemu-{SECOND} replaced (entry was disabled)" in log
    assert read(ns, "rc").strip() == "0"


def test_unmounted_binfmt_misc_is_mounted_and_filled_again(ns):
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        t0=$(now_ms)
        umount $M || fail "umount"
        [ -e $M/register ] && fail "still mounted after umount"
        wait_until 10000 enabled %(all)s || fail "not re-mounted and re-registered"
        echo $(( $(now_ms) - t0 )) > $W/repair_ms
        grep " $M " /proc/self/mountinfo > $W/mounts
        stop
    """ % {"all": " ".join(TARGETS)})
    check_no_failures(ns, step)
    print(f"\nremount + re-register latency: {read(ns, 'repair_ms').strip()} ms")
    mounts = read(ns, "mounts").splitlines()
    assert mounts and "- binfmt_misc binfmt_misc" in mounts[-1] and "noexec" in mounts[-1]
    assert f"drift: binfmt_misc was unmounted from {BINFMT_MISC}" in read(ns, "daemon.log")


def test_binfmt_misc_disabled_as_a_whole_is_reported_and_the_daemon_keeps_running(ns):
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        echo 0 > $M/status
        wait_until 5000 logged "disabled as a whole on" || fail "not reported"
        echo -1 > $M/qemu-%(first)s
        wait_until 5000 enabled %(first)s || fail "entry not repaired while disabled"
        cat $M/status > $W/status
        stop
    """ % {"all": " ".join(TARGETS), "first": FIRST})
    check_no_failures(ns, step)
    log = read(ns, "daemon.log")
    assert "drift: binfmt_misc was disabled as a whole" in log
    assert f"`echo 1 > {BINFMT_MISC}/status` turns it back on" in log
    assert read(ns, "status").strip() == "disabled"  # the admin's switch is reported, not overridden
    assert read(ns, "rc").strip() == "0"


def test_reload_with_a_broken_config_keeps_the_entries_then_a_fixed_one_adds_its_target(ns):
    broken = ns.workdir / "broken.toml"
    broken.write_text('targets = ["aarch64"]\n[daemon]\ninterval = "soon"\n')
    fixed = ns.workdir / "fixed.toml"
    fixed.write_text(config_text(TARGETS + [NEW_TARGET]))
    config = ns.workdir / "binfmtd.toml"
    step, sock = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        dump before
        cp %(broken)s %(config)s; kill -HUP $P
        wait_until 5000 logged "reload: .*interval" || fail "broken config not reported"
        gone && fail "daemon died on a broken config"
        dump after_broken
        cp %(fixed)s %(config)s; kill -HUP $P
        wait_until 5000 enabled %(new)s || fail "fixed config not applied"
        dump after_fixed
        stop
    """ % {"all": " ".join(TARGETS), "broken": broken, "fixed": fixed, "config": config, "new": NEW_TARGET})
    check_no_failures(ns, step)
    assert read(ns, "after_broken") == read(ns, "before")
    assert set(entries_in(read(ns, "after_fixed"))) == {f"qemu-{t}" for t in TARGETS + [NEW_TARGET]}
    error_line, = [l for l in read(ns, "daemon.log").splitlines() if "reload:" in l and "error" in l]
    assert error_line.startswith(f"binfmtd: error: reload: {config}:3: daemon.interval: got 'soon'")
    assert "keeping the config in force" in error_line
    fields = sock.fields()
    assert fields.count("RELOADING=1") == 2 and fields.count("READY=1") == 3
    assert read(ns, "rc").strip() == "0"


def register_line(target: str, flags: str) -> str:
    """The register line another tool would write for `target`: QEMU's magic and mask, the
    same interpreter binfmtd uses, its own flags."""
    t = lookup(target)
    return Entry(t.entry_name, qemu(t.qemu), flags, 0, t.magic, t.mask).register_line()


def test_an_entry_removed_right_after_each_repair_comes_back_every_time(ns):
    """The race: another tool removes the entry again the moment the daemon's repair lands.
    The daemon compares the kernel with the config, not with what it read after the repair,
    so the entry returns each time within a few intervals."""
    iterations = 15
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        appears() {  # poll every millisecond: remove the repaired entry before the daemon looks again
          _end=$(( $(now_ms) + $1 ))
          until [ -e $M/qemu-%(first)s ]; do [ "$(now_ms)" -ge "$_end" ] && return 1; sleep 0.001; done
        }
        for i in $(seq %(iterations)s); do
          echo -1 > $M/qemu-%(first)s
          appears 5000 || { fail "iteration $i: not repaired after the first removal"; break; }
          echo -1 > $M/qemu-%(first)s 2>/dev/null || echo "$i" >> $W/missed  # the repair's own gap
          t0=$(now_ms)
          appears 5000 || { fail "iteration $i: missing for good after the second removal"; break; }
          echo $(( $(now_ms) - t0 )) >> $W/latencies
        done
        wait_until 5000 enabled %(all)s || fail "not all enabled at the end"
        dump entries
        stop
    """ % {"all": " ".join(TARGETS), "first": FIRST, "iterations": iterations}, config=config_text(interval=0.1),
        timeout=180)
    check_no_failures(ns, step)
    latencies = [int(line) for line in read(ns, "latencies").split()]
    print(f"\nback after the second removal (interval 0.1 s), ms: {latencies}; second removal missed the "
          f"entry in iterations {read(ns, 'missed').split()}")
    assert len(latencies) == iterations
    assert max(latencies) < 3000  # a few intervals, with room for a machine shared by many test runs
    entries = entries_in(read(ns, "entries"))
    assert all(entries[f"qemu-{t}"].startswith("enabled\n") and "flags: POCF\n" in entries[f"qemu-{t}"]
               for t in TARGETS)
    log = read(ns, "daemon.log")
    assert log.count(f"drift: qemu-{FIRST} was removed") >= iterations + 1
    assert read(ns, "rc").strip() == "0"


def test_binfmtds_entry_changed_by_another_tool_is_put_back(ns):
    """qemu-FIRST is binfmtd's (its state records it); another tool re-registers it with flags
    F only: the daemon restores binfmtd's entry (POCF) and says what it did and why."""
    (ns.workdir / "foreign_line").write_text(register_line(FIRST, "F"))
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        echo -1 > $M/qemu-%(first)s; cat $W/foreign_line > $M/register || fail "re-register with F"
        grep -q "flags: F$" $M/qemu-%(first)s || fail "the other tool's entry did not land"
        pocf() { grep -q "flags: POCF$" $M/qemu-%(first)s 2>/dev/null; }
        wait_until 5000 pocf || fail "flags not restored"
        wait_until 5000 logged "repair: 1 entry changed" || fail "repair not logged"
        dump entries
        stop
    """ % {"all": " ".join(TARGETS), "first": FIRST})
    check_no_failures(ns, step)
    entries = entries_in(read(ns, "entries"))
    assert entries[f"qemu-{FIRST}"].startswith("enabled\n") and "flags: POCF\n" in entries[f"qemu-{FIRST}"]
    log = read(ns, "daemon.log")
    assert f"binfmtd: drift: qemu-{FIRST} was changed\n" in log
    assert f"binfmtd: qemu-{FIRST} replaced (entry differs: flags F -> POCF)\n" in log
    assert "nothing to change" not in log
    state = json.loads((ns.state_dir / "state.json").read_text())["entries"][f"qemu-{FIRST}"]
    assert state["line"].endswith(":POCF") and state["replaced"] is None  # drift, not an original to restore


def test_another_tools_entry_is_left_to_it_with_the_reason_until_it_is_gone(ns):
    """qemu-SECOND was registered by another tool before binfmtd started, exactly as binfmtd
    wants it; qemu-THIRD by another tool with other flags. binfmtd leaves both, says why, and
    registers its own once the name is free."""
    (ns.workdir / "second_pocf").write_text(register_line(SECOND, "POCF"))
    (ns.workdir / "second_f").write_text(register_line(SECOND, "F"))
    (ns.workdir / "third_f").write_text(register_line(THIRD, "F"))
    step, _ = scenario(ns, """
        cat $W/second_pocf > $M/register && cat $W/third_f > $M/register || fail "other tool's entries"
        start
        wait_until 10000 logged "ready:" || fail "not ready"
        echo -1 > $M/qemu-%(second)s; cat $W/second_f > $M/register
        wait_until 5000 logged "qemu-%(second)s left as it is" || fail "leaving it not logged"
        sleep 1  # ten intervals: still the other tool's
        grep -q "flags: F$" $M/qemu-%(second)s || fail "the other tool's changed entry was touched"
        grep -q "flags: F$" $M/qemu-%(third)s || fail "the other tool's entry was touched"
        echo -1 > $M/qemu-%(second)s; echo -1 > $M/qemu-%(third)s
        wait_until 5000 enabled %(all)s || fail "binfmtd's entries not registered once the names were free"
        dump entries
        stop
    """ % {"all": " ".join(TARGETS), "second": SECOND, "third": THIRD}, config=config_text(interval=0.1))
    check_no_failures(ns, step)
    log = read(ns, "daemon.log")
    assert f"binfmtd: qemu-{THIRD} skipped (entry qemu-{THIRD} was registered by another tool " in log
    assert f"binfmtd: drift: qemu-{SECOND} was changed\n" in log
    left, = [line for line in log.splitlines() if f"qemu-{SECOND} left as it is" in line]
    assert f"another tool's entry, now {qemu(SECOND)}, flags F: binfmtd found it registered as desired" in left
    assert f"`binfmtd apply --force {SECOND}` takes it over" in left
    assert f"drift: qemu-{SECOND} was removed (it was another tool's)" in log
    assert f"qemu-{SECOND} registered (not registered)" in log and f"qemu-{THIRD} registered (not registered)" in log
    entries = entries_in(read(ns, "entries"))
    assert all("flags: POCF\n" in entries[f"qemu-{t}"] for t in TARGETS)


def test_reload_removes_a_dropped_target_binfmtd_owns_and_leaves_another_tools(ns):
    """The config drops FIRST (binfmtd's entry) and NEW_TARGET (another tool's, as desired):
    on SIGHUP binfmtd removes its own and leaves the other tool's, saying so; a removed
    dropped target is not repaired afterwards."""
    (ns.workdir / "new_line").write_text(register_line(NEW_TARGET, "POCF"))
    smaller = ns.workdir / "smaller.toml"
    smaller.write_text(config_text([SECOND, THIRD], interval=0.1))
    step, _ = scenario(ns, """
        cat $W/new_line > $M/register || fail "other tool's entry"
        start
        wait_until 10000 enabled %(all)s %(new)s || fail "first apply"
        cp %(smaller)s $W/binfmtd.toml; kill -HUP $P
        absent() { [ ! -e $M/qemu-%(first)s ]; }
        wait_until 5000 absent || fail "dropped target not removed"
        wait_until 5000 logged "reload: 1 entry changed" || fail "reload not logged"
        sleep 0.5
        absent || fail "dropped target registered again"
        enabled %(second)s %(third)s %(new)s || fail "other entries touched"
        stop
    """ % {"all": " ".join(TARGETS), "new": NEW_TARGET, "first": FIRST, "second": SECOND, "third": THIRD,
           "smaller": smaller}, config=config_text(TARGETS + [NEW_TARGET], interval=0.1))
    check_no_failures(ns, step)
    log = read(ns, "daemon.log")
    assert f"binfmtd: qemu-{FIRST} removed (no longer in the config; registered by binfmtd)\n" in log
    assert (f"binfmtd: qemu-{NEW_TARGET} left in place: no longer in the config, but registered by another tool; "
            "pass --force to remove it\n") in log
    state = json.loads((ns.state_dir / "state.json").read_text())
    assert set(state["entries"]) == {f"qemu-{SECOND}", f"qemu-{THIRD}"}


def test_idle_ticks_start_no_process_and_write_no_file(ns):
    """A tick that finds the host as configured reads the table and compares: no probe, no
    subprocess, no file opened for writing (strace attached over twenty ticks)."""
    need(shutil.which("strace") is not None, "strace is missing (apt-get install strace)")
    step, _ = scenario(ns, """
        start
        wait_until 10000 notified READY=1 || fail "no READY=1"
        sleep 0.3
        strace -f -qq -p $P -o $W/trace -e trace=process,openat,open,creat,rename,unlink & S=$!
        sleep 2
        kill -INT $S; wait $S
        logged drift && fail "drift while idle"
        stop
    """, config=config_text(interval=0.1))
    check_no_failures(ns, step)
    trace = read(ns, "trace").splitlines()
    ticks = [line for line in trace if "/proc/self/mountinfo" in line]
    assert len(ticks) >= 5, trace  # strace really watched the ticks
    spawned = [line for line in trace if any(f"{call}(" in line for call in ("execve", "clone", "fork", "vfork"))]
    writes = [line for line in trace if any(flag in line for flag in ("O_WRONLY", "O_RDWR", "O_CREAT"))
              or "rename" in line or "unlink" in line]
    assert not spawned and not writes, spawned + writes


def test_sigterm_stops_promptly_with_exit_0_and_tells_systemd_on_an_abstract_socket(ns):
    address = f"@binfmtd-test-{os.getpid()}-{os.urandom(4).hex()}"
    step, sock = scenario(ns, """
        start
        wait_until 10000 notified READY=1 || fail "no READY=1 on the abstract socket"
        stop
        enabled %(all)s || fail "entries dropped on stop"
    """ % {"all": " ".join(TARGETS)}, notify=address)
    check_no_failures(ns, step)
    stop_ms = int(read(ns, "stop_ms"))
    print(f"\nstop after SIGTERM: {stop_ms} ms")
    assert read(ns, "rc").strip() == "0" and stop_ms < 2000
    assert sock.received[-1][1] == ["STOPPING=1"]
    assert "binfmtd: stopping on SIGTERM" in read(ns, "daemon.log")


def test_kill_9_and_restart_leaves_the_same_entries_and_knows_it_is_the_same_boot(ns):
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        dump before
        kill -KILL $P; wait $P
        mv $W/daemon.log $W/first.log
        start
        wait_until 10000 logged "ready:" || fail "restart not ready"
        dump after
        stop
    """ % {"all": " ".join(TARGETS)})
    check_no_failures(ns, step)
    before, after = entries_in(read(ns, "before")), entries_in(read(ns, "after"))
    assert after == before and set(after) == {f"qemu-{t}" for t in TARGETS}
    assert all(text.startswith("enabled\n") for text in after.values())
    log = read(ns, "daemon.log")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert f"binfmtd: restarted within the same boot {boot_id}" in log
    assert "registered" not in log and "replaced" not in log  # nothing to redo after a crash
    assert f"first start since boot {boot_id}" in read(ns, "first.log")
    state = json.loads((ns.state_dir / "state.json").read_text())
    assert set(state["entries"]) == set(after)
    assert json.loads((ns.state_dir / "boot_id").read_text()) == boot_id
    assert not list(ns.state_dir.glob("*.tmp.*"))


def test_watchdog_pings_arrive_every_half_watchdog_usec(ns):
    step, sock = scenario(ns, """
        start
        wait_until 10000 notified READY=1 || fail "no READY=1"
        pings() { [ "$(grep -c WATCHDOG=1 "$W/notify.log")" -ge "$1" ]; }
        wait_until 5000 pings 4 || fail "fewer than 4 pings"
        stop
    """, env={"WATCHDOG_USEC": "1000000"})
    check_no_failures(ns, step)
    pings = [at for at, fields in sock.received if fields == ["WATCHDOG=1"]]
    gaps = [round(b - a, 3) for a, b in zip(pings, pings[1:])]
    print(f"\nwatchdog gaps (WATCHDOG_USEC=1000000): {gaps}")
    assert len(pings) >= 4 and all(0.3 < gap < 1.0 for gap in gaps), gaps
    assert "watchdog ping every 0.5s" in read(ns, "daemon.log")


def test_idle_daemon_costs_almost_nothing(ns):
    step, _ = scenario(ns, """
        start
        wait_until 10000 notified READY=1 || fail "no READY=1"
        sleep 0.5
        cat /proc/$P/stat > $W/stat0; cat /proc/$P/schedstat > $W/sched0 2>/dev/null; t0=$(now_ms)
        sleep 5
        cat /proc/$P/stat > $W/stat1; cat /proc/$P/schedstat > $W/sched1 2>/dev/null; t1=$(now_ms)
        grep -E '^(VmRSS|VmHWM):' /proc/$P/status > $W/memory
        echo $(( t1 - t0 )) > $W/idle_ms
        stop
    """, config=config_text(interval=2.0))
    check_no_failures(ns, step)

    def cpu_seconds(stat: str) -> float:
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    cpu = cpu_seconds(read(ns, "stat1")) - cpu_seconds(read(ns, "stat0"))
    if read(ns, "sched1"):  # nanoseconds on the CPU and wakeups, finer than the clock ticks of stat
        (ns1, _, wakeups1), (ns0, _, wakeups0) = (map(int, read(ns, f).split()) for f in ("sched1", "sched0"))
        cpu, wakeups = (ns1 - ns0) / 1e9, wakeups1 - wakeups0
    else:
        wakeups = "?"
    memory = dict(line.split(":") for line in read(ns, "memory").splitlines())
    print(f"\nidle over {int(read(ns, 'idle_ms')) / 1000:.1f} s (interval 2.0): CPU {cpu * 1000:.2f} ms in "
          f"{wakeups} wakeups; VmRSS {memory['VmRSS'].strip()}, VmHWM {memory['VmHWM'].strip()}")
    assert cpu < 0.1
    assert "drift" not in read(ns, "daemon.log")  # idle means no apply at all


def test_failing_target_is_reported_once_and_retried_while_the_others_are_kept(ns, root_only_dir):
    """An unsafe interpreter fails one target; the daemon keeps the others, logs the error once,
    and registers the target on a retry once the admin fixed the permissions."""
    bad_dir = root_only_dir / "interpreters"
    bad_dir.mkdir()
    interpreter = bad_dir / f"qemu-{FIRST}-static"
    shutil.copy(qemu(FIRST), interpreter)
    interpreter.chmod(0o775)
    config = config_text(extra=f'interpreter_dirs = ["{bad_dir}", "/usr/bin"]\n')
    step, sock = scenario(ns, """
        start
        wait_until 10000 notified READY=1 || fail "no READY=1"
        enabled %(others)s || fail "the other targets were not registered"
        [ -e $M/qemu-%(first)s ] && fail "the unsafe interpreter was registered"
        wait_until 5000 notified "failing, retry in 2s" || fail "no second retry"
        chmod 755 %(interpreter)s
        wait_until 10000 enabled %(first)s || fail "not registered after the fix"
        stop
    """ % {"others": f"{SECOND} {THIRD}", "first": FIRST, "interpreter": interpreter}, config=config)
    check_no_failures(ns, step)
    errors = [l for l in read(ns, "daemon.log").splitlines() if l.startswith("binfmtd: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"binfmtd: error: qemu-{FIRST}: interpreter ") \
        and str(interpreter) in errors[0], errors
    statuses = [f for f in sock.fields() if f.startswith("STATUS=")]
    assert "1 failing, retry in 1s" in statuses[0] and "keeping 3 entries" in statuses[-1], statuses
    assert read(ns, "rc").strip() == "0"


def test_broken_config_at_start_exits_2_with_one_line_naming_file_and_line(tmp_path):
    config = tmp_path / "binfmtd.toml"
    config.write_text('targets = ["aarch64"]\nflags = "POCF"\n[daemon]\ninterval = 0\n')
    done = subprocess.run(f"{BINFMTD} daemon --config {config}", shell=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "BINFMTD_STATE_DIR": str(tmp_path / "state")},
                          timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"binfmtd: error: {config}:4: daemon.interval: got 0; expected seconds "
                                        "between drift checks, 0.1 to 3600"]
    assert not (tmp_path / "state").exists()


def test_unknown_target_in_the_config_is_a_usage_error_with_its_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('flags = "POF"\ntargets = ["aarch64", "vax"]\n')
    with pytest.raises(UsageError, match=rf"^{config}:2: targets: unknown target or platform 'vax'"):
        load_settings(str(config))


def test_daemon_without_root_exits_3_and_says_so(ns, tmp_path):
    """Not root in its user namespace (no uid mapping): the host cannot do it at all."""
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    (tmp_path / "c.toml").write_text(config_text())
    done = subprocess.run(["unshare", "--user", "sh", "-c", f"{BINFMTD} daemon"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT), "BINFMTD_STATE_DIR": str(state),
                                           "BINFMTD_CONFIG": str(tmp_path / "c.toml"), "NOTIFY_SOCKET": ""})
    assert done.returncode == 3, done.stderr
    assert "binfmtd: error: binfmt_misc can only be changed by root" in done.stderr


# -- pure parts ---------------------------------------------------------------------------------

def entry_text(enabled=True, flags="POCF") -> str:
    return (f"{'enabled' if enabled else 'disabled'}\ninterpreter /usr/bin/qemu-aarch64-static\nflags: {flags}\n"
            "offset 0\nmagic 7f454c46\nmask ffffffff\n")


def test_drift_is_the_kernel_against_the_desired_state_in_an_operators_words():
    """Each entry is compared with what the config wants, not with the last table read: an
    entry missing is drift whatever the table looked like a tick ago."""
    names = ("qemu-aarch64", "qemu-riscv64", "qemu-s390x", "qemu-arm")
    want = {name: parse_entry(name, entry_text()) for name in names}
    watch = Watch(dict(want), owned={"qemu-aarch64", "qemu-riscv64", "qemu-s390x"}, held={"qemu-mips"},
                  status="enabled")
    table = Table(True, "disabled", (("jar", "enabled\n"), ("qemu-arm", entry_text(flags="F")),
                                     ("qemu-mips", entry_text(flags="F")),
                                     ("qemu-riscv64", entry_text(enabled=False)),
                                     ("qemu-s390x", entry_text(flags="F"))))
    drift = find_drift(table, watch, BINFMT_MISC)
    assert drift.changes == ["binfmt_misc was disabled as a whole", "qemu-aarch64 was removed", "qemu-arm was changed",
                             "qemu-riscv64 was disabled", "qemu-s390x was changed"]
    assert drift.repair and drift.reclaim == {"qemu-riscv64", "qemu-s390x"}  # binfmtd's own, changed: put back
    assert list(drift.left) == ["qemu-arm"]  # another tool's entry that was as desired: its own business
    assert "another tool's entry, now /usr/bin/qemu-aarch64-static, flags F" in drift.left["qemu-arm"]

    as_desired = Table(True, "enabled", tuple((name, entry_text()) for name in sorted(want)) + (
        ("jar", "enabled\n"), ("qemu-mips", entry_text(flags="OC"))))
    assert find_drift(as_desired, watch, BINFMT_MISC).changes == []  # others' entries are not drift
    changed_again = Table(True, "enabled", tuple((name, entry_text(flags="F" if name == "qemu-s390x" else "POCF"))
                                                 for name in sorted(want)) + as_desired.entries[-2:])
    assert find_drift(changed_again, watch, BINFMT_MISC).reclaim == {"qemu-s390x"}  # texts found as desired are
    assert find_drift(as_desired, watch, BINFMT_MISC).changes == []  # remembered; a new text is compared again
    without_mips = Table(True, "enabled", as_desired.entries[:-1])
    assert find_drift(without_mips, watch, BINFMT_MISC).changes == ["qemu-mips was removed (it was another tool's)"]
    assert find_drift(Table(False), watch, BINFMT_MISC).changes == [f"binfmt_misc was unmounted from {BINFMT_MISC}"]


def test_the_tick_and_status_read_the_table_through_one_reader(ns):
    """The daemon's tick compares raw entry texts; facts parses the very same read: both see the
    same entries (a disabled one and another tool's included), the status, and an unmount."""
    show = shlex.quote(
        "import json, sys; from binfmtd.facts.host import read_binfmt_misc; from binfmtd.daemon import read_table; "
        f"tick, facts_ = read_table({BINFMT_MISC!r}), read_binfmt_misc({BINFMT_MISC!r}); "
        "print(json.dumps({'tick': [tick.mounted, tick.status, [[n, t] for n, t in tick.entries]], "
        "'facts': [facts_.mounted, facts_.enabled, [[e.name, e.register_line(), e.enabled] for e in facts_.entries]]}))")
    python = f"{shlex.quote(sys.executable)} -c {show}"
    registered, unmounted = ns.run(
        f"{BINFMTD} apply {FIRST} {SECOND} >/dev/null && echo ':jar:E::jar::/bin/true:' > {BINFMT_MISC}/register "
        f"&& echo 0 > {BINFMT_MISC}/qemu-{SECOND} && echo 0 > {BINFMT_MISC}/status && {python}",
        f"umount {BINFMT_MISC} && {python}")
    assert registered.rc == 0, registered.err
    tick, parsed = registered.json()["tick"], registered.json()["facts"]
    assert tick[:2] == [True, "disabled"] and parsed[:2] == [True, False]
    assert [name for name, _ in tick[2]] == ["jar", f"qemu-{FIRST}", f"qemu-{SECOND}"]
    assert [[e.name, e.register_line(), e.enabled] for e in (parse_entry(n, t) for n, t in tick[2])] == parsed[2]
    assert [enabled for *_, enabled in parsed[2]] == [True, True, False]
    assert unmounted.json() == {"tick": [False, "", []], "facts": [False, False, []]}


def test_desired_state_comes_from_the_apply_and_the_state_not_from_the_table():
    from binfmtd.commands.change import ChangeError, ChangeReport, ChangeResult
    from binfmtd.plan import Kind
    from binfmtd.state.ledger import Owned, State

    def result(target, action, interpreter=f"/usr/bin/qemu-{FIRST}-static", reason=""):
        return ChangeResult(target, None, f"qemu-{target}", Kind(action), reason, interpreter, "POCF")

    mine = Entry(f"qemu-{FIRST}", f"/usr/bin/qemu-{FIRST}-static", "POCF", 0, lookup(FIRST).magic, lookup(FIRST).mask)
    report = ChangeReport(False, [result(FIRST, "unchanged"), result(SECOND, "unchanged"), result(THIRD, "skipped"),
                                  result("arm", "skipped", interpreter=None), result("mips", "skipped")],
                          [ChangeError("mips", "unsafe")], False)
    watch = watch_from_report(report, State({mine.name: Owned(mine.register_line())}), "enabled")
    assert set(watch.entries) == {f"qemu-{FIRST}", f"qemu-{SECOND}"}  # kept as configured
    assert watch.owned == {f"qemu-{FIRST}"}  # the state records it: binfmtd's; SECOND is another tool's as desired
    assert watch.held == {f"qemu-{THIRD}"}  # another tool holds the name: binfmtd's once it is gone
    # no interpreter (native, no QEMU) and failing targets (retried on their own) are not watched


def test_watchdog_period_is_half_of_watchdog_usec_and_only_for_this_pid():
    assert watchdog_period({"WATCHDOG_USEC": "1000000"}) == 0.5
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15
    assert watchdog_period({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({}) is None and watchdog_period({"WATCHDOG_USEC": "x"}) is None


def test_log_lines_carry_syslog_priorities_under_systemd_and_a_name_elsewhere(tmp_path):
    import io

    plain, journal = io.StringIO(), io.StringIO()
    for stream, environ in ((plain, {}), (journal, {"INVOCATION_ID": "abc"})):
        log = Log(stream, environ)
        log(3, "qemu-aarch64: broken")
        log(4, "careful")
        log(5, "drift: qemu-aarch64 was removed")
        log(6, "ready")
    assert plain.getvalue().splitlines() == ["binfmtd: error: qemu-aarch64: broken", "binfmtd: warning: careful",
                                             "binfmtd: drift: qemu-aarch64 was removed", "binfmtd: ready"]
    assert journal.getvalue().splitlines() == ["<3>qemu-aarch64: broken", "<4>careful",
                                               "<5>drift: qemu-aarch64 was removed", "<6>ready"]
    with open(tmp_path / "err", "w") as f:  # JOURNAL_STREAM counts when it names our very stderr
        st = os.fstat(f.fileno())
        assert Log(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}).journal
        assert not Log(f, {"JOURNAL_STREAM": "1:2"}).journal


def test_boot_message_tells_a_reboot_from_a_restart():
    assert boot_message("b2", None) == "first start since boot b2"
    assert boot_message("b2", "b1") == "first start since boot b2 (previous start: boot b1)"
    assert boot_message("b2", "b2") == "restarted within the same boot b2"
