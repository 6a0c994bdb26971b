"""The probe executables: each one runs under its QEMU and reports the machine we expect."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

from binfmtd import probes, targets

REQUIRED = ("aarch64", "arm", "riscv64", "ppc64le", "s390x", "mips64el", "mipsel", "loongarch64", "i386", "x86_64")


def _emulator(target: str) -> Path:
    """The target's qemu-*-static; a missing one fails the test in CI and skips it elsewhere."""
    path = Path(f"/usr/bin/qemu-{targets.BY_NAME[target].qemu}-static")
    if not path.exists():
        reason = f"{path} is not installed (Debian package qemu-user-static)"
        if targets.BY_NAME[target].removed_in:  # a QEMU newer than the probe's target: nothing to install
            pytest.skip(f"{reason}; QEMU {targets.BY_NAME[target].removed_in} and later have no such emulator")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _write_probe(directory: Path, target: str) -> Path:
    path = directory / f"probe-{target}"
    path.write_bytes(probes.build_probe(target))
    path.chmod(0o755)
    return path


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    # A QEMU_* variable could change what the emulator reports (QEMU_CPU picks another CPU).
    env = {key: value for key, value in os.environ.items() if not key.startswith("QEMU_")}
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("target", probes.supported_targets())
def test_probe_runs_under_qemu_and_reports_the_expected_machine(tmp_path, target):
    emulator = _emulator(target)
    probe = _write_probe(tmp_path, target)

    result = _run([str(emulator), str(probe)])

    assert result.returncode == 0, result.stderr
    assert probes.parse_probe_output(result.stdout) == targets.BY_NAME[target].machine
    assert result.stdout == f"{probes.MARKER}{targets.BY_NAME[target].machine}\n"


def test_probe_of_the_host_architecture_runs_natively(tmp_path):
    machine = platform.machine()
    if machine not in probes.supported_targets():
        pytest.skip(f"no probe is named after this host's machine {machine!r}")
    probe = _write_probe(tmp_path, machine)

    result = _run([str(probe)])

    assert result.returncode == 0, result.stderr
    assert probes.parse_probe_output(result.stdout) == machine


@pytest.mark.parametrize("target", probes.supported_targets())
def test_probe_header_is_claimed_by_its_own_entry_and_no_other(target):
    header = probes.build_probe(target)[:128]

    claimed_by = [entry.name for entry in targets.TARGETS if targets.claims(entry.magic, entry.mask, 0, header)]

    assert claimed_by == [target]


def test_required_targets_are_supported():
    assert set(REQUIRED) <= set(probes.supported_targets())


def test_every_binfmtd_target_has_a_probe_and_an_expected_machine():
    assert set(probes.supported_targets()) == set(targets.BY_NAME)
    assert all(targets.BY_NAME[name].machine for name in probes.supported_targets())


def test_build_probe_refuses_an_unknown_target():
    with pytest.raises(KeyError):
        probes.build_probe("ppc64abi32")


@pytest.mark.parametrize(
    ("text", "machine"),
    [
        ("binfmtd-probe:aarch64\n", "aarch64"),
        ("noise\nbinfmtd-probe:armv7l\r\nmore noise\n", "armv7l"),
        ("binfmtd-probe:mips64\0\0\0", "mips64"),  # a fixed-size write of the NUL-padded field
        ("binfmtd-probe:\n", None),
        ("aarch64\n", None),
        ("", None),
    ],
)
def test_parse_probe_output(text, machine):
    assert probes.parse_probe_output(text) == machine
