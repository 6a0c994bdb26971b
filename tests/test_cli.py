"""The command line as a sysadmin and Ansible meet it: exit codes, one clear line per problem,
no traceback, nothing half-applied, and exactly one JSON object on stdout with --json."""

import json
import shutil
import subprocess
import sys

import pytest

from binfmtd.facts.host import parse_kernel_release

from conftest import BINFMT_MISC, BINFMTD, qemu

LIST = f"ls {BINFMT_MISC}"


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("binfmtd: warning:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def registered(listing: str) -> set[str]:
    return set(listing.split()) - {"register", "status"}


@pytest.mark.parametrize("args, words", [
    ("aarch64 arm65", "unknown target or platform 'arm65'"),
    ("aarch64 --flags PX", "unknown flag(s) 'X'"),
    ("aarch64 --flags=PX", "unknown flag(s) 'X'"),  # the typer path
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ns, args, words):
    apply, listing = ns.run(f"{BINFMTD} apply {args}", LIST)
    assert apply.rc == 2 and words in only_line(apply.err) and apply.out == ""
    assert registered(listing.out) == set()


@pytest.mark.parametrize("text, words", [
    ('targets = ["aarch64"\n', "invalid TOML"),
    ('targets = ["aarch64"]\nflags = 7\n', "c.toml:2: flags: got 7"),
    ('targets = ["arm65"]\n', "unknown target or platform 'arm65'"),
])
def test_invalid_config_is_one_line_exit_2_and_changes_nothing(ns, tmp_path, text, words):
    (tmp_path / "c.toml").write_text(text)
    apply, listing = ns.run(f"{BINFMTD} apply", LIST, env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    assert apply.rc == 2 and words in only_line(apply.err)
    assert registered(listing.out) == set()


def test_config_targets_and_flags_are_used_and_arguments_win(ns, tmp_path):
    (tmp_path / "c.toml").write_text('targets = ["linux/arm64", "s390x"]\nflags = "POF"\n')
    first, listing, second, aarch64 = ns.run(f"{BINFMTD} apply", LIST, f"{BINFMTD} apply aarch64 --flags POCF",
                                             f"cat {BINFMT_MISC}/qemu-aarch64",
                                             env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    assert first.rc == 0 and registered(listing.out) == {"qemu-aarch64", "qemu-s390x"}
    assert "flags: POCF" in aarch64.out


def test_missing_interpreter_fails_a_named_target_and_skips_an_implied_one(ns, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.toml").write_text(f'interpreter_dirs = ["{tmp_path / "empty"}"]\n')
    named, implied, listing = ns.run(f"{BINFMTD} apply aarch64 --json", f"{BINFMTD} apply --json", LIST,
                                     env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    assert named.rc == 1 and "qemu-aarch64-static not found" in named.json()["errors"][0]["message"]
    assert implied.rc == 0 and {r["action"] for r in implied.json()["results"]} == {"skipped"}
    assert registered(listing.out) == set()


def test_unsafe_interpreter_is_refused_and_other_targets_still_apply(ns, tmp_path, root_only_dir):
    bindir = root_only_dir / "bin"
    bindir.mkdir()
    for target, mode in (("aarch64", 0o775), ("riscv64", 0o755)):
        shutil.copy(qemu(target), bindir / f"qemu-{target}-static")
        (bindir / f"qemu-{target}-static").chmod(mode)
    (tmp_path / "c.toml").write_text(f'interpreter_dirs = ["{bindir}"]\n')
    apply, listing = ns.run(f"{BINFMTD} apply aarch64 riscv64 --json", LIST,
                            env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    report = apply.json()
    assert apply.rc == 1 and not report["ok"]
    error, = report["errors"]
    assert error["target"] == "aarch64" and "writable by group 'root'" in error["message"]
    assert registered(listing.out) == {"qemu-riscv64"}


def test_not_root_exits_3():
    done = subprocess.run(["unshare", "--user", sys.executable, "-m", "binfmtd", "apply", "aarch64"],
                          capture_output=True, text=True)
    assert done.returncode == 3 and "only be changed by root" in only_line(done.stderr)


@pytest.mark.parametrize("argv", [["apply", "aarch64"], ["apply", "aarch64", "--flags=POCF"]], ids=["boot", "typer"])
def test_kernel_older_than_4_8_exits_3(mocker, capsys, monkeypatch, argv):
    # An old kernel cannot be booted here: its release string is what is mocked.
    mocker.patch("binfmtd.commands.change.read_kernel", return_value=parse_kernel_release("4.4.0-210-generic"))
    monkeypatch.setattr(sys, "argv", ["binfmtd", *argv])
    from binfmtd.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 3
    assert "older than 4.8" in only_line(capsys.readouterr().err)


def test_kernel_without_binfmt_misc_exits_3(ns):
    # A kernel lacking binfmt_misc cannot be had here: mount(2) is made to answer as it would
    # (ENODEV, unknown filesystem), and modprobe is not run.
    script = ("import errno, sys; from unittest import mock; import binfmtd.act as a; "
              "a._mount = lambda path: errno.ENODEV; mock.patch('subprocess.run').start(); "
              "sys.argv = ['binfmtd', 'apply', 'aarch64']; from binfmtd.__main__ import main; main()")
    step = ns.one(f"{sys.executable} -c \"{script}\"", mount=False)
    assert step.rc == 3 and "has no binfmt_misc" in only_line(step.err)


def test_refused_writes_are_explained_from_the_real_kernel(ns):
    script = """
import errno
from binfmtd.act import register, explain_register_error
from binfmtd.entry import Entry
from binfmtd.facts.host import read_kernel
from binfmtd.targets import BY_NAME
t = BY_NAME["aarch64"]
cases = {
    "too long": Entry("qemu-x", "/usr/bin/qemu-aarch64-static", "", 250, t.magic, t.mask),
    "no interpreter": Entry("qemu-y", "/nonexistent/qemu", "F", 0, t.magic, t.mask),
    "twice": Entry("qemu-z", "/usr/bin/qemu-aarch64-static", "", 0, t.magic, t.mask),
}
register("/proc/sys/fs/binfmt_misc", cases["twice"])
for what, entry in cases.items():
    try:
        register("/proc/sys/fs/binfmt_misc", entry)
        print(what, "ACCEPTED")
    except OSError as exc:
        print(what, errno.errorcode[exc.errno], explain_register_error(exc, entry, read_kernel()))
"""
    (ns.workdir / "refuse.py").write_text(script)
    step = ns.one(f"{sys.executable} {ns.workdir / 'refuse.py'}")
    lines = dict(line.split(" ", 1) for line in step.out.replace("no interpreter", "no-interpreter")
                 .replace("too long", "too-long").splitlines())
    assert lines["too-long"].startswith("EINVAL") and "more than this kernel's 256-byte limit" in lines["too-long"]
    assert lines["no-interpreter"].startswith("ENOENT") and "cannot find interpreter /nonexistent/qemu" in lines[
        "no-interpreter"]
    assert lines["twice"].startswith("EEXIST") and "appeared meanwhile" in lines["twice"]


@pytest.mark.parametrize("command", ["targets --json", "check --json", "status --json", "apply --json",
                                     "apply --check --json", "remove --all --json", "remove --all --check --json"])
def test_json_is_exactly_one_object_on_stdout(ns, command):
    step = ns.one(f"{BINFMTD} {command}")
    assert isinstance(json.loads(step.out), dict), step.err
    assert isinstance(json.loads(step.out)["warnings"], list)


ERROR_KEYS = {"ok", "changed", "check", "results", "errors", "warnings"}
# Bad invocations of every command with --json: rejected by the parser (before binfmtd's code
# runs), by the command's own checks, or by the commands library; by the boot path or by typer.
BAD_INVOCATIONS = [
    "apply --bogus --json", "apply --json --flags", "apply aarch64 --flags PX --json",
    "apply arm65 --json", "apply aarch64 --all --json", "apply --check aarch64 --all --json",
    "apply aarch64 --all --json --force=yes", "apply --json --config {work}/missing.toml",
    "remove --json", "remove --bogus --json", "remove aarch64 --all --json", "remove --check arm65 --json",
    "status --json --format xml", "status --json --format prometheus", "status --format=prometheus --json",
    "status --bogus --json", "status --format json --bogus",
    "check --bogus --json", "check arm65 --json",
    "targets extra --json", "targets --bogus --json",
    "verify --engine bogus --json", "verify --timeout nan --json", "verify --timeout inf --json",
    "verify --timeout -1 --json", "verify --timeout 1e9 --json", "verify --timeout 0 --json",
    "verify --timeout soon --json", "verify arm65 --json", "verify aarch64 --all --json",
    "export --json", "export --format binfmt.d --json", "export --format bogus --dest {work}/out --json",
    "export --format binfmt.d --dest {work}/out aarch64 --all --json",
    "daemon --json", "bogus --json", "--json", "--json apply",
]


def test_every_bad_invocation_with_json_prints_exactly_one_error_object_and_exits_2(ns):
    commands = [f"{BINFMTD} {args.format(work=ns.workdir)}" for args in BAD_INVOCATIONS]
    *steps, listing = ns.run(*commands, LIST)
    for args, step in zip(BAD_INVOCATIONS, steps):
        assert step.rc == 2, (args, step.rc, step.err)
        message = only_line(step.err).removeprefix("binfmtd: error: ")
        assert step.out.count("\n") == 1 and step.out.endswith("}\n"), (args, step.out)  # one line of JSON
        report = json.loads(step.out)  # and nothing else: json.loads refuses trailing text
        assert set(report) == ERROR_KEYS, (args, report)
        assert report == {"ok": False, "changed": False, "check": "--check" in args, "results": [],
                          "errors": [{"target": None, "message": message}], "warnings": report["warnings"]}, args
    assert registered(listing.out) == set() and not (ns.workdir / "out").exists()


@pytest.mark.parametrize("argv, wanted", [
    ("apply --bogus --json", True), ("--json apply", True), ("verify --engine sandbox --json", True),
    ("status --format json --bogus", True), ("status --format=json --bogus", True),
    ("export --format=json --bogus", False), ("apply -- --json", False), ("sandbox -- binfmtd status --json", False),
])
def test_a_request_for_json_is_seen_before_the_command_line_is_parsed(argv, wanted):
    from binfmtd.cli.render import wants_json

    assert wants_json(argv.split()) is wanted


@pytest.mark.parametrize("boot, full", [
    ("apply arm65 --json", "apply arm65 --json --config={none}"),
    ("apply aarch64 --all --check --json", "apply aarch64 --all --check --json --config={none}"),
    ("apply aarch64 --flags PX --json", "apply aarch64 --flags=PX --json"),
    ("apply --json --config {work}/missing.toml", "apply --json --config={work}/missing.toml"),
])
def test_boot_path_gives_the_same_error_object_as_the_full_cli(ns, boot, full):
    paths = {"work": ns.workdir, "none": ns.workdir / "none.toml"}
    by_boot, by_typer, imports = ns.run(f"{BINFMTD} {boot.format(**paths)}", f"{BINFMTD} {full.format(**paths)}",
                                        f"{sys.executable} -X importtime -m binfmtd {boot.format(**paths)}")
    assert by_boot.rc == by_typer.rc == 2 and by_boot.out == by_typer.out and by_boot.err == by_typer.err
    assert json.loads(by_boot.out)["errors"][0]["target"] is None
    assert " typer" not in imports.err  # the boot path answered it


def test_usage_errors_without_json_are_one_line_and_name_the_help(ns):
    unknown, missing = ns.run(f"{BINFMTD} apply --bogus", f"{BINFMTD} export --dest /tmp")
    assert unknown.rc == 2 and unknown.out == ""
    assert only_line(unknown.err) == "binfmtd: error: No such option: --bogus; `binfmtd apply --help` shows the usage"
    assert missing.rc == 2 and "Missing option '--format'" in only_line(missing.err)


def test_apply_on_a_table_switched_off_as_a_whole_says_so_and_leaves_the_switch(ns):
    qemu("aarch64")
    _, text, as_json, switch = ns.run(f"echo 0 > {BINFMT_MISC}/status", f"{BINFMTD} apply aarch64",
                                      f"{BINFMTD} apply aarch64 --json", f"cat {BINFMT_MISC}/status")
    words = f"binfmt_misc is disabled as a whole on {BINFMT_MISC}"
    assert text.rc == 0 and f"binfmtd: warning: {words}" in text.err
    report = as_json.json()
    assert as_json.rc == 0 and report["ok"] and any(w.startswith(words) for w in report["warnings"])
    said = [line.removeprefix("binfmtd: warning: ") for line in as_json.err.splitlines()]
    assert report["warnings"] == said  # JSON carries exactly the warnings stderr shows
    assert switch.out.strip() == "disabled"  # the admin's switch is reported, not overridden


def test_c_flag_warning_comes_with_the_default_flags_first_registration_only(ns, tmp_path):
    for target in ("aarch64", "riscv64", "s390x"):
        qemu(target)
    (tmp_path / "c.toml").write_text('flags = "POCF"\n')
    first, again, _, repaired, chosen, configured, listing = ns.run(
        f"{BINFMTD} apply aarch64", f"{BINFMTD} apply aarch64", f"echo 0 > {BINFMT_MISC}/qemu-aarch64",
        f"{BINFMTD} apply aarch64", f"{BINFMTD} apply riscv64 --flags POCF",
        f"{BINFMTD} apply s390x --config {tmp_path / 'c.toml'}", LIST)
    assert first.rc == 0 and "flag C" in first.err
    assert "replaced" in repaired.out  # a change, but not a first registration
    for step in (again, repaired, chosen, configured):
        assert step.rc == 0 and "flag C" not in step.err, step.command
    assert registered(listing.out) == {"qemu-aarch64", "qemu-riscv64", "qemu-s390x"}


def test_boot_path_and_full_cli_print_the_same_and_boot_skips_typer(ns, tmp_path):
    (tmp_path / "c.toml").write_text('flags = "POF"\n')
    boot, full, imports = ns.run(f"{BINFMTD} apply --check --json --config {tmp_path / 'c.toml'} aarch64",
                                 f"{BINFMTD} apply --check --json --config={tmp_path / 'c.toml'} aarch64",
                                 f"{sys.executable} -X importtime -m binfmtd apply --check aarch64")
    assert boot.json() == full.json() and boot.json()["results"][0]["flags"] == "POF"
    assert " typer" not in imports.err and " binfmtd.commands.change" in imports.err


def test_check_reports_each_problem_with_its_fix(ns, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.toml").write_text(f'targets = ["arm64"]\ninterpreter_dirs = ["{tmp_path / "empty"}"]\n')
    bad = ns.one(f"{BINFMTD} check --json", env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    checks = {c["name"]: c for c in bad.json()["checks"]}
    assert bad.rc == 1 and not checks["interpreter:aarch64"]["ok"]
    assert "apt-get install qemu-user-static" in checks["interpreter:aarch64"]["fix"]
    assert checks["kernel"]["ok"] and checks["binfmt_misc"]["ok"] and checks["config"]["ok"]
    assert "private to this user namespace" in checks["table"]["detail"]


def test_check_passes_on_a_good_host_and_reports_qemu_version(ns):
    qemu("aarch64")
    step = ns.one(f"{BINFMTD} check aarch64 riscv64 --json")
    checks = {c["name"]: c for c in step.json()["checks"]}
    assert step.rc == 0 and step.json()["ok"]
    assert "static, safe, QEMU " in checks["interpreter:aarch64"]["detail"]


def test_remove_needs_targets_or_all(ns):
    step = ns.one(f"{BINFMTD} remove")
    assert step.rc == 2 and "--all" in only_line(step.err)


def test_private_table_and_c_flag_are_said_loudly(ns):
    with_c, without_c = ns.run(f"{BINFMTD} apply aarch64", f"{BINFMTD} apply riscv64 --flags POF")
    assert "registrations do not reach the host" in with_c.err and "flag C" in with_c.err
    assert "flag C" not in without_c.err


@pytest.mark.parametrize("argv", [["targets", "--json"], ["targets"], ["--help"]], ids=["boot", "typer", "help"])
def test_a_reader_that_goes_away_gets_no_traceback(argv):
    """`binfmtd targets --json | head -c 1`: stdout's pipe is closed before binfmtd writes. The
    exit code is not 0 (141 as a shell says a SIGPIPE; click, under typer, says 1 itself)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "binfmtd", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode in (141, 1) and done.stderr == "", done.stderr
