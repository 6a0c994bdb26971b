"""Native targets are measured by running probes where emulation is impossible (Linux 6.7+)."""

import json
import os

from binfmtd.facts.host import native_targets
from binfmtd.facts.native import probe_native

from conftest import BINFMTD


def test_probes_of_the_host_family_run_natively_and_foreign_ones_do_not():
    family = tuple(t.name for t in native_targets())
    measured = probe_native(family + ("aarch64", "riscv64", "s390x"))
    assert measured is not None
    assert os.uname().machine in measured or "x86_64" in measured
    assert not {"aarch64", "riscv64", "s390x"} & set(measured) - set(family)


def test_apply_measures_once_per_boot_and_check_mode_writes_nothing(ns):
    check, listing, apply, checks = ns.run(f"{BINFMTD} apply --check --json", f"ls -A {ns.state_dir}",
                                           f"{BINFMTD} apply --all --json", f"{BINFMTD} check --json")
    assert check.rc == 0 and "native.json" not in listing.out
    cache = json.loads((ns.state_dir / "native.json").read_text())
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert cache["boot_id"] == f.read().strip()
    skipped_native = {r["target"] for r in apply.json()["results"] if r["reason"].startswith("native")}
    assert skipped_native == set(cache["native"]) and os.uname().machine in skipped_native
    detail = next(c["detail"] for c in checks.json()["checks"] if c["name"] == "native")
    assert "measured by running probes" in detail
