"""kill -9 at every write: binfmtd loses nothing and orphans nothing, whenever it dies.

Black-box fault injection: strace kills binfmtd just before its Nth write to binfmt_misc (register,
or an entry file: remove, disable) or its Nth rename of the state file, for N = 1, 2, ... until a
run completes. After each crash the same command runs again and must converge, and `remove --all`
must then leave exactly the table the host had before binfmtd came: no entry binfmtd wrote, and
every entry `--force` took over back as it was (interpreter, flags, enabled or disabled)."""

from __future__ import annotations

import shlex
import shutil

import pytest

from conftest import BINFMT_MISC, BINFMTD, need, qemu
from binfmtd.entry import Entry
from binfmtd.targets import TARGETS, lookup

TARGET_NAMES = ("aarch64", "riscv64", "s390x")
WATCHED = " ".join(f"-P {BINFMT_MISC}/{name}" for name in
                   ["register", "status"] + [t.entry_name for t in TARGETS])
SNAPSHOT = f'for f in {BINFMT_MISC}/qemu-*; do [ -e "$f" ] && echo "== $f" && cat "$f"; done; true'


def foreign_entries() -> str:
    """Another tool's entries, as a host may have them: one enabled, one disabled, both with
    flags binfmtd would not choose."""
    lines = [Entry(f"qemu-{name}", qemu(name), flags, 0, lookup(name).magic, lookup(name).mask).register_line()
             for name, flags in (("aarch64", "F"), ("riscv64", ""))]
    return " && ".join([f"printf '%s' {shlex.quote(line)} > {BINFMT_MISC}/register" for line in lines]
                       + [f"echo 0 > {BINFMT_MISC}/qemu-riscv64"])


def killed_at(n: int, syscall: str, command: str) -> str:
    watched = WATCHED if syscall == "write" else ""  # binfmtd renames only its own files into place
    return (f"strace -f -qq -o /dev/null {watched} -e trace={syscall} "
            f"-e inject={syscall}:signal=KILL:when={n} {BINFMTD} {command}")


ALL = " ".join(TARGET_NAMES)
SCENARIOS = {
    # name: (set-up before binfmtd, the command that is killed, the command that converges it,
    #        the host's table binfmtd must leave behind after `remove --all`)
    "apply": (lambda: "true", f"apply {ALL}", f"apply {ALL}", lambda: "true"),
    "apply --force": (foreign_entries, f"apply --force {ALL}", f"apply --force {ALL}", foreign_entries),
    "remove": (lambda: f"{foreign_entries()} && {BINFMTD} apply --force {ALL}", "remove --all", "remove --all",
               foreign_entries),
    # --force removes another tool's entry on purpose: that one is gone, the rest is as it was
    "remove --force": (lambda: f"{foreign_entries()} && {BINFMTD} apply s390x", "remove --force aarch64 s390x",
                       "remove --force aarch64 s390x",
                       lambda: f"{foreign_entries()} && echo -1 > {BINFMT_MISC}/qemu-aarch64"),
}


@pytest.mark.parametrize("syscall", ["write", "rename"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_at_every_write_loses_and_orphans_nothing(ns, scenario, syscall):
    need(shutil.which("strace") is not None, "strace is missing (apt-get install strace)")
    setup, victim, converge, expected = SCENARIOS[scenario]
    setup = setup()
    original = ns.run(expected(), SNAPSHOT)[1].out
    crashes = 0
    for n in range(1, 40):
        ns.state_dir = ns.workdir / f"state-{scenario.replace(' ', '')}-{syscall}-{n}"
        steps = ns.run(setup, killed_at(n, syscall, victim), f"{BINFMTD} {converge}",
                       f"{BINFMTD} status --json", f"{BINFMTD} remove --all", SNAPSHOT)
        prepared, crash, again, status, remove_all, table = steps
        assert prepared.rc == 0, prepared.err
        if crash.rc != 137:  # the command ran to its end: every write point has been tried
            assert crash.rc == 0, crash.err
            break
        crashes += 1
        assert again.rc == 0, f"kill before {syscall} #{n}: `{converge}` did not converge: {again.err}"
        if converge.startswith("apply"):
            mine = {e["target"]: e for e in status.json()["entries"] if e["owner"] == "binfmtd"}
            assert sorted(mine) == sorted(TARGET_NAMES), f"kill before {syscall} #{n}: owned {sorted(mine)}"
            assert all(e["flags"] == "POCF" and e["enabled"] for e in mine.values())
        assert remove_all.rc == 0, remove_all.err
        assert table.out == original, (f"kill before {syscall} #{n} of `{victim}`: after `{converge}` and "
                                       f"`remove --all` the table is not the host's original:\n{table.out}\n"
                                       f"expected:\n{original}")
    else:
        pytest.fail("the command never ran to its end")
    assert crashes >= 1, "no write was ever interrupted: the injection does not reach binfmtd"


def test_disabled_original_comes_back_disabled(ns):
    """The property in plain steps: --force takes over a disabled entry, remove puts it back
    exactly as it was, disabled."""
    before, _, during, _, after = ns.run(
        foreign_entries() + f" && cat {BINFMT_MISC}/qemu-riscv64", f"{BINFMTD} apply --force riscv64",
        f"cat {BINFMT_MISC}/qemu-riscv64", f"{BINFMTD} remove riscv64", f"cat {BINFMT_MISC}/qemu-riscv64")
    assert before.out.startswith("disabled") and during.out.startswith("enabled")
    assert after.out == before.out
