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
import threading
import time
from pathlib import Path

import pytest

from binfmtd.daemon import Log, Table, boot_message, describe_drift, load_settings, watchdog_period
from binfmtd.errors import UsageError
from binfmtd.facts import native_targets

from conftest import BINFMT_MISC, BINFMTD, ROOT, qemu

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
    assert len(errors) == 1 and f"qemu-{FIRST}: interpreter {interpreter}" in errors[0], errors
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


def test_drift_is_described_in_an_operators_words():
    before = Table(True, "enabled", (("qemu-aarch64", entry_text()), ("qemu-riscv64", entry_text()),
                                     ("qemu-s390x", entry_text())))
    after = Table(True, "disabled", (("jar", "enabled\n"), ("qemu-riscv64", entry_text(enabled=False)),
                                     ("qemu-s390x", entry_text(flags="F"))))
    assert describe_drift(before, after, BINFMT_MISC) == [
        "binfmt_misc was disabled as a whole", "jar was added", "qemu-aarch64 was removed",
        "qemu-riscv64 was disabled", "qemu-s390x was changed"]
    assert describe_drift(before, Table(False), BINFMT_MISC) == [f"binfmt_misc was unmounted from {BINFMT_MISC}"]
    assert describe_drift(before, before, BINFMT_MISC) == []


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
