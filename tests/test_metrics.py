"""`binfmtd status --format prometheus`, read back with Prometheus' own parser."""

from prometheus_client.parser import text_string_to_metric_families

from binfmtd.targets import TARGETS

from conftest import BINFMTD


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.type == ("counter" if family.name == "binfmtd_emulated_cpu_seconds" else "gauge")
        for sample in family.samples:
            found[(sample.name, sample.labels.get("target"))] = (sample.value, sample.labels)
    return found


def test_metrics_show_registered_enabled_verified_and_times(ns):
    steps = ns.run(f"{BINFMTD} status --format prometheus", f"{BINFMTD} apply aarch64 riscv64",
                   "echo 0 > /proc/sys/fs/binfmt_misc/qemu-riscv64",
                   f"{BINFMTD} verify aarch64 riscv64 --engine sandbox", f"{BINFMTD} status --format prometheus")
    before, after = samples(steps[0].out), samples(steps[-1].out)
    assert before[("binfmtd_binfmt_misc_mounted", None)][0] == 1
    assert all(before[("binfmtd_entry_registered", t.name)][0] == 0 for t in TARGETS)
    assert ("binfmtd_last_apply_timestamp_seconds", None) not in before
    value, labels = after[("binfmtd_entry_registered", "aarch64")]
    assert value == 1 and labels == {"target": "aarch64", "platform": "linux/arm64", "owner": "binfmtd"}
    assert after[("binfmtd_entry_enabled", "aarch64")][0] == 1
    assert after[("binfmtd_entry_registered", "riscv64")][0] == 1 and after[("binfmtd_entry_enabled", "riscv64")][0] == 0
    assert after[("binfmtd_target_verified", "aarch64")][0] == 1
    assert after[("binfmtd_target_verified", "riscv64")][0] == 0
    assert after[("binfmtd_entry_registered", "s390x")][0] == 0
    applied = after[("binfmtd_last_apply_timestamp_seconds", None)][0]
    verified = after[("binfmtd_last_verify_timestamp_seconds", None)][0]
    assert 1.7e9 < applied <= verified


def test_unknown_format_is_a_usage_error(ns):
    step = ns.one(f"{BINFMTD} status --format xml")
    assert step.rc == 2 and "expected text, json or prometheus" in step.err


def test_a_lookalike_entry_is_not_taken_for_the_targets_own(ns):
    """Another tool's `qemu-arm` that claims aarch64 binaries is matched to aarch64 by its magic;
    the aarch64 gauges still describe binfmtd's own qemu-aarch64."""
    from binfmtd.entry import escape
    from binfmtd.targets import BY_NAME

    aarch64 = BY_NAME["aarch64"]
    lookalike = f":qemu-arm:M::{escape(aarch64.magic)}:{escape(aarch64.mask)}:/usr/bin/qemu-aarch64-static:F"
    _, _, status = ns.run(f"{BINFMTD} apply aarch64", f"printf '%s' '{lookalike}' > /proc/sys/fs/binfmt_misc/register",
                          f"{BINFMTD} status --format prometheus")
    value, labels = samples(status.out)[("binfmtd_entry_registered", "aarch64")]
    assert value == 1 and labels["owner"] == "binfmtd", status.out
