"""Broken config files as an unlucky operator makes them (binary, huge, a FIFO, a device, a
directory, nested too deep): one error line naming the file, exit 2, never a traceback or a
hang, nothing registered; the daemon logs a broken reload and keeps the config in force.
And the two values that used to fall back silently: `flags = ""` and `interpreter_dirs = []`."""

from __future__ import annotations

import os
import subprocess

import pytest

from binfmtd.config import MAX_CONFIG_BYTES, parse_config
from binfmtd.errors import UsageError

from conftest import BINFMT_MISC, BINFMTD, ROOT, qemu
from test_cli import LIST, only_line, registered
from test_daemon import NEW_TARGET, TARGETS, check_no_failures, config_text, entries_in, read, scenario

NOT_UTF8 = b'targets = ["aarch64"]\n# caf\xe9 in Latin-1\n'


def broken_configs(tmp_path):
    """name -> (path, words the one error line must contain); built fresh in tmp_path."""
    (tmp_path / "binary.toml").write_bytes(NOT_UTF8)
    (tmp_path / "huge.toml").write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    (tmp_path / "nested.toml").write_text("targets = " + "[" * 5000 + "]" * 5000 + "\n")
    os.mkfifo(tmp_path / "fifo.toml")  # nobody ever writes: reading it would block forever
    (tmp_path / "dir.toml").mkdir()
    return {
        "binary": (tmp_path / "binary.toml", f"{tmp_path / 'binary.toml'}:2: not UTF-8 text (byte 0xe9"),
        "huge": (tmp_path / "huge.toml", "is larger than 1 MiB"),
        "nested": (tmp_path / "nested.toml", "nested too deeply"),
        "fifo": (tmp_path / "fifo.toml", f"config file {tmp_path / 'fifo.toml'} is not a regular file (a FIFO)"),
        "device": ("/dev/zero", "config file /dev/zero is not a regular file (a character device)"),
        "directory": (tmp_path / "dir.toml", "is not a regular file (a directory)"),
    }


@pytest.mark.parametrize("kind", ["binary", "huge", "nested", "fifo", "device", "directory"])
def test_broken_config_is_one_line_exit_2_for_apply_and_check_and_registers_nothing(ns, tmp_path, kind):
    path, words = broken_configs(tmp_path)[kind]
    apply, as_json, boot_json, check, listing = ns.run(
        f"{BINFMTD} apply", f"{BINFMTD} apply aarch64 --json --config={path}",
        f"{BINFMTD} apply aarch64 --json --config {path}", f"{BINFMTD} check aarch64 --json",
        LIST, env={"BINFMTD_CONFIG": str(path)}, timeout=60)
    assert apply.rc == 2 and words in only_line(apply.err) and apply.out == ""
    assert as_json.rc == 2 and as_json.json()["errors"] == [
        {"target": None, "message": only_line(as_json.err).removeprefix("binfmtd: error: ")}]
    assert boot_json.rc == 2 and boot_json.out == as_json.out  # the boot path answers the same
    config_check, = [c for c in check.json()["checks"] if c["name"] == "config"]
    assert check.rc == 1 and not config_check["ok"] and words in config_check["detail"]
    assert registered(listing.out) == set()


def test_broken_config_at_daemon_start_exits_2_with_one_line(tmp_path):
    path, words = broken_configs(tmp_path)["binary"]
    done = subprocess.run(f"{BINFMTD} daemon --config {path}", shell=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "BINFMTD_STATE_DIR": str(tmp_path / "state")},
                          timeout=30)
    assert done.returncode == 2 and done.stdout == "" and words in only_line(done.stderr)
    assert not (tmp_path / "state").exists()


def test_daemon_logs_a_binary_or_fifo_config_on_sighup_and_keeps_the_last_good_one(ns):
    work = ns.workdir
    (work / "binary.toml").write_bytes(NOT_UTF8)
    (work / "fixed.toml").write_text(config_text(TARGETS + [NEW_TARGET]))
    config = work / "binfmtd.toml"
    step, _ = scenario(ns, """
        start
        wait_until 10000 enabled %(all)s || fail "first apply"
        dump before
        cp %(binary)s %(config)s; kill -HUP $P
        wait_until 5000 logged "reload: .*not UTF-8" || fail "binary config not reported"
        gone && fail "daemon died on a binary config"
        rm %(config)s; mkfifo %(config)s; kill -HUP $P
        wait_until 5000 logged "reload: .*a FIFO" || fail "FIFO config not reported (hung?)"
        gone && fail "daemon died on a FIFO config"
        echo -1 > $M/qemu-%(first)s
        wait_until 5000 enabled %(first)s || fail "the last good config is no longer kept"
        dump after_broken
        rm %(config)s; cp %(fixed)s %(config)s; kill -HUP $P
        wait_until 5000 enabled %(new)s || fail "fixed config not applied"
        stop
    """ % {"all": " ".join(TARGETS), "binary": work / "binary.toml", "fixed": work / "fixed.toml",
           "config": config, "new": NEW_TARGET, "first": TARGETS[0]})
    check_no_failures(ns, step)
    assert entries_in(read(ns, "after_broken")) == entries_in(read(ns, "before"))
    errors = [line for line in read(ns, "daemon.log").splitlines() if line.startswith("binfmtd: error: reload:")]
    assert len(errors) == 2 and all("keeping the config in force" in line for line in errors), errors
    assert f"{config}:2: not UTF-8 text" in errors[0] and "a FIFO" in errors[1]
    assert "Traceback" not in read(ns, "daemon.log")
    assert read(ns, "rc").strip() == "0"


def test_config_through_a_symlink_is_read(ns, tmp_path):
    """/etc files and Kubernetes ConfigMap mounts are symlinks: the config follows them."""
    (tmp_path / "real.toml").write_text('targets = ["s390x"]\n')
    (tmp_path / "link.toml").symlink_to(tmp_path / "real.toml")
    apply, listing = ns.run(f"{BINFMTD} apply", LIST, env={"BINFMTD_CONFIG": str(tmp_path / "link.toml")})
    assert apply.rc == 0 and registered(listing.out) == {"qemu-s390x"}


def test_empty_flags_in_the_config_register_no_flags_as_the_empty_flags_option_does(ns, tmp_path):
    qemu("aarch64")
    (tmp_path / "c.toml").write_text('targets = ["aarch64"]\nflags = ""\n')
    by_config, shown, removed, by_option, shown_again = ns.run(
        f"{BINFMTD} apply --json", f"cat {BINFMT_MISC}/qemu-aarch64", f"{BINFMTD} remove aarch64",
        f"{BINFMTD} apply aarch64 --flags '' --json", f"cat {BINFMT_MISC}/qemu-aarch64",
        env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    assert by_config.rc == 0 and by_config.json()["results"][0]["flags"] == ""
    assert "\nflags: \n" in shown.out and removed.rc == 0  # the kernel shows no flag letters
    assert by_option.json()["results"][0]["flags"] == "" and shown_again.out == shown.out
    assert any("flags lack F" in w for w in by_config.json()["warnings"])


def test_empty_interpreter_dirs_is_an_error_naming_the_line(ns, tmp_path):
    (tmp_path / "c.toml").write_text('targets = ["aarch64"]\ninterpreter_dirs = []\n')
    apply, listing = ns.run(f"{BINFMTD} apply", LIST, env={"BINFMTD_CONFIG": str(tmp_path / "c.toml")})
    assert apply.rc == 2 and registered(listing.out) == set()
    assert f"{tmp_path / 'c.toml'}:2: interpreter_dirs: got []; expected a non-empty list" in only_line(apply.err)


# -- pure parts ---------------------------------------------------------------------------------

def test_config_values_that_used_to_fall_back_silently():
    assert parse_config('flags = ""').flags == ""  # no flags, not the default
    assert parse_config("").flags is None  # left out: the default
    with pytest.raises(UsageError, match="interpreter_dirs: got \\[\\]"):
        parse_config("interpreter_dirs = []")


# --- settings: arguments, then environment, then the config file, then the defaults -------------

def test_settings_without_a_config_are_the_defaults(monkeypatch):
    from binfmtd.config import DEFAULT_FLAGS, settings_from
    from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS

    monkeypatch.delenv("BINFMTD_STATE_DIR", raising=False)
    settings = settings_from(None)
    assert (settings.binfmt_misc, settings.state_dir) == ("/proc/sys/fs/binfmt_misc", "/var/lib/binfmtd")
    assert (settings.flags, settings.flags_chosen) == (DEFAULT_FLAGS, False)
    assert settings.interpreter_dirs == DEFAULT_INTERPRETER_DIRS
    assert (settings.verify_engine, settings.verify_timeout) == ("auto", 20.0)


def test_settings_take_the_option_over_the_environment_and_the_config_over_the_defaults(monkeypatch):
    from binfmtd.config import settings_from

    monkeypatch.setenv("BINFMTD_STATE_DIR", "/run/state-from-env")
    config = parse_config('flags = "fop"\ninterpreter_dirs = ["/opt/qemu"]\n[verify]\nengine = "podman"\n')
    settings = settings_from(config)
    assert settings.state_dir == "/run/state-from-env"
    assert (settings.flags, settings.flags_chosen) == ("POF", True)  # normalized, and the operator's choice
    assert (settings.interpreter_dirs, settings.verify_engine) == (("/opt/qemu",), "podman")
    chosen = settings_from(config, flags="", binfmt_misc="/mnt/misc", state_dir="/run/state-from-option")
    assert (chosen.flags, chosen.flags_chosen, chosen.binfmt_misc, chosen.state_dir) == \
        ("", True, "/mnt/misc", "/run/state-from-option")
    no_flags = settings_from(parse_config('flags = ""\n'))
    assert (no_flags.flags, no_flags.flags_chosen) == ("", True)  # "" is a choice: no flags at all


def test_bad_flags_are_a_usage_error_naming_the_option():
    from binfmtd.config import settings_from

    with pytest.raises(UsageError, match=r"^--flags: unknown flag\(s\) 'X'"):
        settings_from(None, flags="POX")
