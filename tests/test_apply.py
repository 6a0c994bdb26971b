"""apply / remove / status on the real kernel, each test in a fresh namespace with its own
binfmt_misc: what the kernel shows, what foreign binaries print, what the CLI printed."""

import json
import os
import shlex
import subprocess
import sys


from binfmtd.entry import parse_entry
from binfmtd.facts.host import native_targets
from binfmtd.targets import BY_NAME, TARGETS

from conftest import BINFMT_MISC, BINFMTD, FOREIGN_BUSYBOX, host_table, qemu

NATIVE = {t.name for t in native_targets()}
FOREIGN_TARGETS = [t for t in TARGETS if t.name not in NATIVE]
LIST_ENTRIES = f"ls {BINFMT_MISC}"
DUMP_ENTRIES = f"for f in {BINFMT_MISC}/*; do echo \"== $f\"; cat \"$f\"; done"


def kernel_entries(dump: str) -> dict:
    """Entries from a DUMP_ENTRIES step: name -> parsed entry file."""
    entries = {}
    for block in dump.split("== ")[1:]:
        path, _, text = block.partition("\n")
        name = os.path.basename(path)
        if name not in ("register", "status"):
            entries[name] = parse_entry(name, text)
    return entries


def register_line(name, target, interpreter, flags="F"):
    t = BY_NAME[target]
    magic = "".join(f"\\x{b:02x}" for b in t.magic)
    mask = "".join(f"\\x{b:02x}" for b in t.mask)
    return f"printf '%s' {shlex.quote(f':{name}:M::{magic}:{mask}:{interpreter}:{flags}')} > {BINFMT_MISC}/register"


def test_apply_all_registers_exactly_qemus_entries_for_every_foreign_target(ns):
    qemu("aarch64")
    apply, dump = ns.run(f"{BINFMTD} apply --all --json", DUMP_ENTRIES)
    assert apply.rc == 0, apply.err
    report = apply.json()
    assert report["ok"] and report["changed"] and not report["check"] and report["errors"] == []
    actions = {r["target"]: r["action"] for r in report["results"]}
    assert actions == {t.name: "skipped" if t.name in NATIVE else "registered" for t in TARGETS}
    entries = kernel_entries(dump.out)
    assert set(entries) == {t.entry_name for t in FOREIGN_TARGETS}
    for t in FOREIGN_TARGETS:
        entry = entries[t.entry_name]
        assert entry.enabled and entry.flags == "POCF" and entry.offset == 0
        assert entry.mask == t.mask
        assert entry.magic == t.magic
        assert os.path.realpath(entry.interpreter) == os.path.realpath(f"/usr/bin/qemu-{t.qemu}-static")


def test_foreign_binaries_run_through_the_entries(ns, foreign_busybox):
    steps = ns.run(f"{BINFMTD} apply --all",
                   *[f"{shlex.quote(str(path))} uname -m" for path in foreign_busybox.values()])
    assert steps[0].rc == 0, steps[0].err
    for (arch, (_, machine)), step in zip(FOREIGN_BUSYBOX.items(), steps[1:]):
        assert (arch, step.rc, step.out.strip()) == (arch, 0, machine), step.err


def test_without_entries_foreign_binaries_do_not_run(ns, foreign_busybox):
    step = ns.one(f"{shlex.quote(str(foreign_busybox['arm64']))} uname -m")
    assert step.rc != 0 and "Exec format error" in step.err


SWAP_INTERPRETERS = """
import os, sys
from binfmtd.entry import Entry, parse_entry
path, scripts = "/proc/sys/fs/binfmt_misc", sys.argv[1]
for name in os.listdir(path):
    if name.startswith("qemu-"):
        with open(f"{path}/{name}") as f:
            e = parse_entry(name, f.read())
        with open(f"{path}/{name}", "w") as f:
            f.write("-1")
        with open(f"{path}/register", "w") as f:
            f.write(Entry(name, f"{scripts}/{name}", e.flags, e.offset, e.magic, e.mask).register_line())
"""


def test_each_binary_is_claimed_by_exactly_its_own_entry_and_native_ones_by_none(ns, foreign_busybox, tmp_path):
    """binfmtd registers every foreign target; then each entry's interpreter is swapped for a
    script naming its target (binfmtd itself registers only QEMU), keeping the magic, mask and
    offset the kernel shows. The kernel's own matching then tells which entry claims each real
    foreign binary and each target's header."""
    interp_dir = tmp_path / "interpreters"
    interp_dir.mkdir()
    for t in FOREIGN_TARGETS:
        script = interp_dir / t.entry_name
        script.write_text(f"#!/bin/sh\necho claimed-by:{t.qemu}\n")
        script.chmod(0o755)
    (tmp_path / "swap.py").write_text(SWAP_INTERPRETERS)
    headers = tmp_path / "headers"
    headers.mkdir()
    for t in FOREIGN_TARGETS:
        (headers / t.name).write_bytes(t.magic + bytes(64))
        (headers / t.name).chmod(0o755)
    run_headers = [str(headers / t.name) for t in FOREIGN_TARGETS]
    run_busybox = [f"{shlex.quote(str(p))} uname -m" for p in foreign_busybox.values()]
    # Flag O hands the binary over as a file descriptor, which a script interpreter cannot use.
    steps = ns.run(f"{BINFMTD} apply --all --flags PF && {sys.executable} {tmp_path / 'swap.py'} {interp_dir}",
                   *run_headers, *run_busybox, "/bin/true && echo native", "/usr/bin/env python3 -c 'print(1)'")
    assert steps[0].rc == 0, steps[0].err
    for t, step in zip(FOREIGN_TARGETS, steps[1:]):
        assert step.out.strip() == f"claimed-by:{t.qemu}", (t.name, step.err)
    for (arch, (target, _)), step in zip(FOREIGN_BUSYBOX.items(), steps[1 + len(run_headers):]):
        assert step.out.strip() == f"claimed-by:{BY_NAME[target].qemu}", arch
    native, python = steps[-2:]
    assert (native.rc, native.out.strip()) == (0, "native")  # a claimed native binary would loop (ELOOP)
    assert (python.rc, python.out.strip()) == (0, "1")


def test_second_apply_changes_nothing(ns):
    first, second, dump_before, third, dump_after = ns.run(
        f"{BINFMTD} apply --json", f"{BINFMTD} apply --json", DUMP_ENTRIES, f"{BINFMTD} apply --all --json", DUMP_ENTRIES)
    assert first.json()["changed"]
    report = second.json()
    assert second.rc == 0 and report["changed"] is False
    assert {r["action"] for r in report["results"]} == {"unchanged"}
    assert third.rc == 0 and {r["action"] for r in third.json()["results"]} == {"unchanged", "skipped"}
    assert dump_before.out == dump_after.out


def test_check_mode_changes_nothing_not_even_the_mount(ns):
    check, mounts, listing = ns.run(f"{BINFMTD} apply --check --json", f"ls {BINFMT_MISC} | wc -l",
                                    f"{BINFMTD} status --json", mount=False)
    report = check.json()
    assert check.rc == 0 and report["check"] and report["changed"]
    assert {r["action"] for r in report["results"]} == {"registered"}
    assert "apply would mount it" in check.err
    assert mounts.out.strip() == "0"
    assert listing.json()["binfmt_misc"]["mounted"] is False


def test_apply_mounts_binfmt_misc_when_it_is_not_mounted(ns):
    apply, mountinfo, entry = ns.run(f"{BINFMTD} apply aarch64", "cat /proc/self/mountinfo",
                                     f"cat {BINFMT_MISC}/qemu-aarch64", mount=False)
    assert apply.rc == 0, apply.err
    line = [l for l in mountinfo.out.splitlines() if f" {BINFMT_MISC} " in l][-1]
    assert "- binfmt_misc binfmt_misc" in line and "nosuid" in line and "noexec" in line
    assert entry.out.startswith("enabled\ninterpreter ")


def test_remove_takes_only_binfmtds_entries(ns, tmp_path):
    foreign = register_line("qemu-arm", "arm", "/usr/bin/qemu-arm-static", "F")
    jar = f"echo ':jar:E::jar::/bin/true:' > {BINFMT_MISC}/register"
    steps = ns.run(foreign, jar, f"{BINFMTD} apply --all --json", f"{BINFMTD} remove --all --json", LIST_ENTRIES,
                   f"{BINFMTD} status --json")
    apply, remove, listing, status = steps[2:]
    arm = next(r for r in apply.json()["results"] if r["target"] == "arm")
    assert arm["action"] == "skipped" and "--force" in arm["reason"]
    assert remove.rc == 0 and remove.json()["changed"]
    assert set(listing.out.split()) == {"register", "status", "qemu-arm", "jar"}
    owners = {e["name"]: (e["owner"], e["target"]) for e in status.json()["entries"]}
    assert owners == {"qemu-arm": ("other", "arm"), "jar": ("other", None)}


def test_foreign_entry_survives_remove_without_force(ns):
    steps = ns.run(register_line("qemu-aarch64", "aarch64", "/usr/bin/qemu-aarch64-static", "F"),
                   f"{BINFMTD} remove aarch64 --json", f"cat {BINFMT_MISC}/qemu-aarch64")
    remove, entry = steps[1:]
    assert remove.rc == 0 and remove.json()["results"][0]["action"] == "skipped"
    assert "flags: F\n" in entry.out


def test_force_takes_over_a_foreign_entry_and_remove_puts_it_back(ns):
    qemu("aarch64")
    steps = ns.run(register_line("qemu-aarch64", "aarch64", "/usr/bin/qemu-aarch64-static", "OF"),
                   f"{BINFMTD} apply aarch64 --force --json", f"cat {BINFMT_MISC}/qemu-aarch64",
                   f"{BINFMTD} status --json", f"{BINFMTD} remove aarch64 --json", f"cat {BINFMT_MISC}/qemu-aarch64",
                   f"{BINFMTD} status --json")
    apply, taken, status_taken, remove, restored, status_after = steps[1:]
    result = apply.json()["results"][0]
    assert result["action"] == "replaced" and "taken over" in result["reason"]
    assert "flags: POCF" in taken.out
    assert status_taken.json()["entries"][0]["owner"] == "binfmtd"
    assert remove.json()["results"][0]["action"] == "removed"
    assert "flags: OF" in restored.out
    assert status_after.json()["entries"][0]["owner"] == "other"


def test_disabled_and_changed_entries_are_repaired(ns):
    steps = ns.run(f"{BINFMTD} apply aarch64 riscv64", f"echo 0 > {BINFMT_MISC}/qemu-aarch64",
                   f"{BINFMTD} apply aarch64 riscv64 --flags POF --json", f"cat {BINFMT_MISC}/qemu-aarch64",
                   f"cat {BINFMT_MISC}/qemu-riscv64")
    report, aarch64, riscv64 = steps[2].json(), steps[3].out, steps[4].out
    reasons = {r["target"]: (r["action"], r["reason"]) for r in report["results"]}
    assert reasons["aarch64"][0] == "replaced" and reasons["riscv64"] == ("replaced", "entry differs: flags POCF -> POF")
    assert aarch64.startswith("enabled\n") and "flags: POF\n" in aarch64 and "flags: POF\n" in riscv64


def test_shadowing_entry_under_another_name_is_reported(ns):
    steps = ns.run(register_line("aarch64", "aarch64", "/usr/bin/qemu-aarch64-static", ""),
                   f"{BINFMTD} apply aarch64 --json", f"{BINFMTD} status --json")
    apply, status = steps[1:]
    assert apply.rc == 0 and "entry 'aarch64' (not binfmtd's) also claims aarch64 binaries" in apply.err
    targets = {e["name"]: (e["target"], e["owner"]) for e in status.json()["entries"]}
    assert targets == {"aarch64": ("aarch64", "other"), "qemu-aarch64": ("aarch64", "binfmtd")}


def test_concurrent_applies_register_each_entry_once(ns):
    runs = " & ".join(f"{BINFMTD} apply --all --json > {ns.workdir}/run{i}.json" for i in range(4))
    step, dump = ns.run(f"{runs} & wait", DUMP_ENTRIES)
    reports = [json.loads((ns.workdir / f"run{i}.json").read_text()) for i in range(4)]
    assert all(r["ok"] for r in reports), step.err
    registered = [r["target"] for report in reports for r in report["results"] if r["action"] == "registered"]
    assert sorted(registered) == sorted(t.name for t in FOREIGN_TARGETS)  # each once, by exactly one run
    assert set(kernel_entries(dump.out)) == {t.entry_name for t in FOREIGN_TARGETS}


def test_status_reports_the_table_and_owners(ns):
    apply, status, text = ns.run(f"{BINFMTD} apply aarch64", f"{BINFMTD} status --json", f"{BINFMTD} status")
    report = status.json()
    assert report["binfmt_misc"] == {"path": BINFMT_MISC, "mounted": True, "enabled": True, "private": True}
    entry, = report["entries"]
    version, emulator = entry.pop("qemu_version"), entry.pop("emulator")  # tests/test_emulators.py has the details
    assert version and version == emulator["pinned"]["version"] and emulator["drift"] is None
    assert entry == {"name": "qemu-aarch64", "enabled": True, "interpreter": "/usr/bin/qemu-aarch64-static",
                     "flags": "POCF", "offset": 0, "magic": "7f454c460201010000000000000000000200b700",
                     "mask": "ffffffffffffff00fffffffffffffffffeffffff", "target": "aarch64",
                     "platform": "linux/arm64", "owner": "binfmtd"}
    assert "qemu-aarch64" in text.out and "linux/arm64" in text.out and "private user-namespace table" in text.out


def test_state_lost_or_stale_is_normal(ns):
    apply, wipe, again = ns.run(f"{BINFMTD} apply aarch64", f"echo -1 > {BINFMT_MISC}/qemu-aarch64",
                                f"{BINFMTD} apply aarch64 --json")
    assert again.rc == 0 and again.json()["results"][0]["action"] == "registered"
    state = json.loads((ns.state_dir / "state.json").read_text())
    assert list(state["entries"]) == ["qemu-aarch64"]


def test_platform_names_work_like_targets(ns):
    apply, listing = ns.run(f"{BINFMTD} apply linux/arm64 linux/arm/v7 riscv64 --json", LIST_ENTRIES)
    assert [r["target"] for r in apply.json()["results"]] == ["arm", "aarch64", "riscv64"]
    assert {"qemu-aarch64", "qemu-arm", "qemu-riscv64"} <= set(listing.out.split())


def test_sandbox_command_gives_a_private_table(tmp_path):
    from binfmtd.facts.host import read_binfmt_misc

    with host_table():  # the host's table must stay as it is: no other test may change it meanwhile
        before = read_binfmt_misc().entries
        done = subprocess.run(f"{BINFMTD} sandbox -- sh -c '{BINFMTD} apply aarch64 >/dev/null && "
                              f"{BINFMTD} status --json'", shell=True, capture_output=True, text=True,
                              env={**os.environ, "BINFMTD_STATE_DIR": str(tmp_path)})
        after = read_binfmt_misc().entries
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["binfmt_misc"]["private"] and [e["name"] for e in status["entries"]] == ["qemu-aarch64"]
    assert after == before


def test_remove_forgets_an_entry_that_is_already_gone(ns):
    apply, wipe, remove = ns.run(f"{BINFMTD} apply aarch64 riscv64", f"echo -1 > {BINFMT_MISC}/qemu-aarch64",
                                 f"{BINFMTD} remove aarch64 --json")
    assert remove.json()["results"][0]["action"] == "unchanged"
    state = json.loads((ns.state_dir / "state.json").read_text())
    assert list(state["entries"]) == ["qemu-riscv64"]


def test_apply_shows_the_platform_the_user_named(ns):
    qemu("arm")
    as_json, as_text = ns.run(f"{BINFMTD} apply linux/arm/v6 --json", f"{BINFMTD} apply arm/v5 --check")
    result, = as_json.json()["results"]
    assert (result["target"], result["platform"], result["action"]) == ("arm", "linux/arm/v6", "registered")
    assert as_text.out.splitlines()[1].split()[:2] == ["arm", "linux/arm/v5"]
