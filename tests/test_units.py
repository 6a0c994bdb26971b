"""What binfmtd ships for the host: the systemd units and the default config. systemd itself
judges the units; a fresh namespace where binfmt_misc is not even mounted stands for a host
that has just booted, and binfmtd.service's own ExecStart must leave it running foreign code."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BINFMT_MISC, BINFMTD, ROOT, need, qemu
from test_apply import DUMP_ENTRIES, kernel_entries

from binfmtd.config import DEFAULT_FLAGS
from binfmtd.config import SCHEMA, Config, parse_config
from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS
from binfmtd.probes import build_probe

UNITS = ROOT / "systemd"
SHIPPED_CONFIG = ROOT / "packaging" / "binfmtd.toml"
UNIT_NAMES = ["binfmtd.service", "binfmtd-daemon.service"]
# The binfmtd of the environment running the tests (the venv's console script): what systemd
# finds when binfmtd is installed, since the units name it without a path.
INSTALLED_BINFMTD = os.path.join(os.path.dirname(sys.executable), "binfmtd")


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as systemd reads them: a key may repeat, '#' and ';' comment."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    """Every word of every `key=` line in a section (After=a b and After=c give a, b, c)."""
    return [word for k, v in unit.get(section, []) if k == key for word in v.split()]


def verify_unit(unit_dir: Path, name: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on a unit, with this test run's binfmtd as the one systemd finds
    on its search path: a private mount namespace shows /usr/local/bin with just that binfmtd,
    as `pip install` would put it there."""
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (apt-get install systemd)")
    need(os.access(INSTALLED_BINFMTD, os.X_OK), f"{INSTALLED_BINFMTD} is missing: install binfmtd into the venv")
    script = ("mount -t tmpfs tmpfs /usr/local/bin || exit 99\n"
              f"ln -s {shlex.quote(INSTALLED_BINFMTD)} /usr/local/bin/binfmtd\n"
              f"exec systemd-analyze verify --man=no {shlex.quote(str(unit_dir / name))}")
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
                           "sh", "-c", script], check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_accepts_the_shipped_units_without_a_word(tmp_path, name):
    shutil.copy(UNITS / name, tmp_path / name)
    done = verify_unit(tmp_path, name)
    assert done.returncode != 99, done.stderr
    # Warnings ("Unknown key name", "Failed to parse ..., ignoring") leave the exit code at 0:
    # only silence means systemd took every line.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("breakage", [
    ("Type=oneshot", "Type=oneshoot"),
    ("RestrictNamespaces=user mnt", "RestrictNamespace=user mnt"),
    ("ExecStart=binfmtd apply", "ExecStart=binfmtd-missing apply"),
    ("[Service]", "[Servce]"),
], ids=["bad-value", "misspelt-key", "missing-command", "misspelt-section"])
def test_verify_catches_a_broken_unit(tmp_path, breakage):
    """The check above is worth something only if a broken copy of the unit fails it. (Not every
    mistake: systemd 252 passes an unknown capability name in silence, hence the checks below.)"""
    good, bad = breakage
    text = (UNITS / "binfmtd.service").read_text()
    assert good in text
    (tmp_path / "binfmtd.service").write_text(text.replace(good, bad))
    done = verify_unit(tmp_path, "binfmtd.service")
    assert done.returncode != 0 or done.stdout + done.stderr != ""


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_run_every_boot_after_other_tools_and_before_container_engines(name):
    unit = read_unit(UNITS / name)
    after, before = values(unit, "Unit", "After"), values(unit, "Unit", "Before")
    assert {"local-fs.target", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
            "systemd-binfmt.service", "binfmt-support.service"} <= set(after)
    assert {"docker.service", "containerd.service", "podman.service", "buildkit.service"} <= set(before)
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    # systemd mounts binfmt_misc on the host first: the service then registers into that mount.
    assert "proc-sys-fs-binfmt_misc.mount" in values(unit, "Unit", "Wants")
    service = dict(unit["Service"])
    # Each of these broke binfmtd when the units were booted under systemd (see the comments there):
    # /proc/sys read-only, a private table, a fresh /proc hiding the host's binfmt_misc mount, the
    # i386 native probe killed.
    for breaks_binfmtd in ("ProtectKernelTunables", "PrivateUsers", "ProtectControlGroups", "SystemCallArchitectures"):
        assert breaks_binfmtd not in service, breaks_binfmtd
    assert service["ProtectSystem"] == "strict" and service["StateDirectory"] == "binfmtd"
    assert service["CapabilityBoundingSet"].split() == ["CAP_SYS_ADMIN", "CAP_SETFCAP"]


def test_daemon_unit_is_a_notify_service_with_watchdog_and_reload():
    service = dict(read_unit(UNITS / "binfmtd-daemon.service")["Service"])
    assert (service["Type"], service["NotifyAccess"], service["ExecStart"]) == ("notify", "main", "binfmtd daemon")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID" and service["WatchdogSec"] == "30"
    assert "AF_UNIX" in service["RestrictAddressFamilies"].split()


def exec_start_commands(unit_path: Path) -> list[str]:
    """binfmtd.service's ExecStart= lines as shell commands, with `binfmtd` resolved as systemd
    resolves it on a host where this test run's binfmtd is installed."""
    commands = []
    for value in values_raw(read_unit(unit_path), "Service", "ExecStart"):
        argv = shlex.split(value.lstrip("@-:+!"))
        if argv[0] == "binfmtd":
            need(os.access(INSTALLED_BINFMTD, os.X_OK), f"{INSTALLED_BINFMTD} is missing")
            argv[0] = INSTALLED_BINFMTD
        assert argv[0].startswith("/"), f"ExecStart={value}: systemd needs a path or a command on its search path"
        commands.append(shlex.join(argv))
    return commands


def values_raw(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def test_after_a_reboot_binfmtd_service_registers_the_config_and_foreign_programs_run(ns, tmp_path, foreign_busybox):
    """A just-booted host: binfmt_misc not even mounted, a config naming four targets. The unit's
    own ExecStart must leave exactly those entries, with the default flags, and real foreign
    programs must run: Debian's busybox for three of them, binfmtd's probe for riscv64."""
    for target in ("aarch64", "arm", "riscv64", "s390x"):
        qemu(target)
    config = tmp_path / "binfmtd.toml"
    config.write_text('targets = ["aarch64", "arm", "riscv64", "s390x"]\n')
    probe = tmp_path / "probe-riscv64"
    probe.write_bytes(build_probe("riscv64"))
    probe.chmod(0o755)
    start = exec_start_commands(UNITS / "binfmtd.service")
    assert start, "binfmtd.service has no ExecStart="

    steps = ns.run(f"test -e {BINFMT_MISC}/register", *start, DUMP_ENTRIES,
                   f"{foreign_busybox['arm64']} uname -m", f"{foreign_busybox['armhf']} uname -m",
                   f"{foreign_busybox['s390x']} uname -m", str(probe),
                   mount=False, env={"BINFMTD_CONFIG": str(config)})
    mounted_at_boot, *started = steps[:1 + len(start)]
    dump, arm64, armhf, s390x, riscv64 = steps[1 + len(start):]

    assert mounted_at_boot.rc != 0  # nothing mounted binfmt_misc before the unit ran
    for step in started:
        assert step.rc == 0, step.err
    entries = kernel_entries(dump.out)
    assert set(entries) == {"qemu-aarch64", "qemu-arm", "qemu-riscv64", "qemu-s390x"}
    assert all(e.enabled and e.flags == DEFAULT_FLAGS == "POCF" for e in entries.values())
    assert (arm64.rc, arm64.out.strip()) == (0, "aarch64"), arm64.err
    assert (armhf.rc, armhf.out.strip()) == (0, "armv7l"), armhf.err
    assert (s390x.rc, s390x.out.strip()) == (0, "s390x"), s390x.err
    assert (riscv64.rc, riscv64.out.strip()) == (0, "binfmtd-probe:riscv64"), riscv64.err


# ---- the default config ----------------------------------------------------------------------

# "#key = value" and "#[table]" are settings shown at their defaults; "# text" is prose.
COMMENTED_SETTING = re.compile(r"^#(?=[^\s#])")


def uncomment_settings(text: str) -> str:
    return "\n".join(COMMENTED_SETTING.sub("", line) for line in text.splitlines()) + "\n"


def test_shipped_config_parses_to_the_defaults():
    assert parse_config(SHIPPED_CONFIG.read_text(), str(SHIPPED_CONFIG)) == Config(str(SHIPPED_CONFIG))


def test_shipped_config_documents_every_key_at_its_real_default():
    """Uncommenting every setting still parses, names every key binfmtd knows, and changes
    nothing but what has no default (textfile): the file tells the truth about the code."""
    text = uncomment_settings(SHIPPED_CONFIG.read_text())
    config = parse_config(text, "uncommented")
    documented = {(table, key) for table, key, _ in _settings(text)}
    assert documented == set(SCHEMA)
    defaults = Config("uncommented")
    assert config.flags == DEFAULT_FLAGS
    assert config.interpreter_dirs == DEFAULT_INTERPRETER_DIRS
    assert (config.daemon_interval, config.verify_engine, config.verify_timeout) == \
        (defaults.daemon_interval, defaults.verify_engine, defaults.verify_timeout)
    assert config.targets == ("all",)  # registers what leaving it out registers: native ones are skipped
    assert config.daemon_textfile.startswith("/")


def _settings(text: str):
    import tomllib

    for key, value in tomllib.loads(text).items():
        if isinstance(value, dict):
            yield from ((key, sub, v) for sub, v in value.items())
        else:
            yield "", key, value


def test_targets_all_registers_what_no_targets_registers(ns, tmp_path):
    """The shipped config says `targets = "all"` is the same as leaving it out; the kernel agrees."""
    (tmp_path / "all.toml").write_text('targets = "all"\n')
    default_apply, default_dump = ns.run(f"{BINFMTD} apply", DUMP_ENTRIES)
    all_apply, all_dump = ns.run(f"{BINFMTD} apply --config {tmp_path / 'all.toml'}", DUMP_ENTRIES)
    assert default_apply.rc == 0 and all_apply.rc == 0, (default_apply.err, all_apply.err)
    assert kernel_entries(all_dump.out) == kernel_entries(default_dump.out) != {}
