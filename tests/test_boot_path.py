"""The boot path (`binfmtd apply`, what binfmtd.service runs at every boot) imports only what a
boot needs. A real apply runs in a private namespace under a small wrapper that writes down the
modules binfmtd imported; the set must stay within the allow-list below, so a change that adds
an import to the boot path has to add it here too, on purpose. Time itself is measured by
scripts/bench, not here."""

import sys

import pytest
from conftest import BINFMTD

from binfmtd.entry import Entry
from binfmtd.records import FrozenInstanceError, replace
from binfmtd.state.ledger import State

# Python runs with -S: site (and a venv's editable-install finder) imports nothing beforehand, so
# the list is what binfmtd itself pulls in, as on a host with binfmtd installed system-wide.
RECORD = """import sys
before = set(sys.modules)
out, sys.argv = sys.argv[1], ["binfmtd", *sys.argv[2:]]
try:
    from binfmtd.__main__ import main
    main()
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(set(sys.modules) - before)))
"""

# Top-level names; a C accelerator (_json, _sre, ...) goes with its module and is not listed.
APPLY_ALLOWED = {
    # the interpreter's own start-up under -S, and the basics every module uses
    "encodings", "genericpath", "os", "posixpath", "stat", "errno", "importlib", "types", "warnings",
    # state and lock: JSON records (json brings re and enum), flock, QEMU's ELF banner
    "json", "re", "enum", "functools", "collections", "itertools", "operator", "reprlib", "keyword", "copyreg",
    "fcntl", "struct", "contextlib",
    # subprocess: the native probe (once a boot, then cached) and, in a child user namespace only,
    # the private-table check
    "subprocess", "signal", "threading", "select", "selectors", "locale", "math",
    # tempfile: the native probe's files (once a boot)
    "tempfile", "shutil", "fnmatch", "random", "bisect", "zlib", "bz2", "lzma", "atexit", "weakref",
}
# dataclasses: its import (inspect, ast, dis, tokenize) cost ~8 ms a boot; records.py stands in
NEVER = {"dataclasses", "inspect", "typer", "click", "pydantic", "rich", "tomllib", "typing", "pathlib", "concurrent",
         "ctypes", "pwd", "grp", "datetime", "urllib", "ipaddress", "argparse", "logging"}


def imported(ns, tmp_path, *argvs: str) -> list[tuple[object, set[str]]]:
    """Each command's step and the top-level modules it imported, for commands run in one namespace."""
    (tmp_path / "record.py").write_text(RECORD)
    steps = ns.run(*(f"{sys.executable} -S {tmp_path / 'record.py'} {tmp_path / f'mods-{i}'} {argv}"
                     for i, argv in enumerate(argvs)))
    result = []
    for i, step in enumerate(steps):
        names = (tmp_path / f"mods-{i}").read_text().split()
        result.append((step, {n.split(".")[0] for n in names if not n.startswith(("_", "binfmtd"))}))
    return result


def test_apply_imports_only_the_boot_paths_modules(ns, tmp_path):
    (fresh, fresh_mods), (noop, noop_mods), (check, check_mods) = imported(
        ns, tmp_path, "apply --all", "apply --all", "apply --check --json aarch64")
    for step in (fresh, noop, check):
        assert step.rc == 0, (step.command, step.err)
    assert " registered  " in fresh.out and " registered  " not in noop.out  # a real apply, then a real no-op
    for mods in (fresh_mods, noop_mods, check_mods):
        assert mods - APPLY_ALLOWED == set(), "new imports on the boot path; make them lazy or allow them here"
        assert not mods & NEVER


def test_json_queries_take_the_boot_path_and_import_only_its_modules(ns, tmp_path):
    """status/check/targets --json: what Ansible, the metrics textfile and scripts call over and over."""
    queries = ("status --json", "status --format json", "check --json aarch64", "targets --json")
    setup, *steps = imported(ns, tmp_path, "apply aarch64", *queries)
    assert setup[0].rc == 0
    for step, mods in steps:
        assert step.rc == 0 and step.json(), (step.command, step.err)
        assert mods - APPLY_ALLOWED == set(), f"{step.command}: new imports; make them lazy or allow them here"
        assert not mods & NEVER, step.command


def test_json_queries_print_the_same_on_both_paths(ns, tmp_path):
    """The boot path's spellings against ones only the full (typer) CLI takes: the same output,
    warnings and exit code; a failing check included (a target without its emulator)."""
    config = tmp_path / "c.toml"
    config.write_text(f'interpreter_dirs = ["{tmp_path}"]\n')
    pairs = [("status --json", "status --format=json"),
             ("check --json aarch64", "check --json aarch64 --"),
             (f"check --json --config {config} riscv64", f"check --json --config={config} riscv64"),
             ("targets --json", "targets --json --")]
    commands = [f"{BINFMTD} apply aarch64"] + [f"{BINFMTD} {c}" for pair in pairs for c in pair] + [
        f"{sys.executable} -X importtime -m binfmtd {pairs[0][0]}", f"{sys.executable} -X importtime -m binfmtd {pairs[0][1]}"]
    setup, *steps, lean, full = ns.run(*commands)
    assert setup.rc == 0
    for boot, typer_path in zip(steps[::2], steps[1::2]):
        assert (boot.rc, boot.json(), boot.err) == (typer_path.rc, typer_path.json(), typer_path.err), boot.command
    assert steps[4].rc == 1 and not steps[4].json()["ok"]  # the failing check fails alike on both
    assert " typer" not in lean.err and " typer" in full.err


def test_a_config_of_comments_only_needs_no_toml_parser(ns, tmp_path):
    """The shipped /etc/binfmtd/binfmtd.toml is all comments: reading it at boot costs no tomllib."""
    shipped = tmp_path / "binfmtd.toml"
    shipped.write_text("# binfmtd's config\n\n#targets = [\"arm64\"]\r\n\t# flags = \"POF\"\n")
    (toml, toml_mods), = imported(ns, tmp_path, f"apply --check --json --config {shipped} aarch64")
    set_one = tmp_path / "set.toml"
    set_one.write_text("# POF\nflags = \"POF\"\n")
    (step, mods), = imported(ns, tmp_path, f"apply --check --json --config {set_one} aarch64")
    assert toml.rc == 0 and step.rc == 0
    assert "tomllib" not in toml_mods
    assert "tomllib" in mods and step.json()["results"][0]["flags"] == "POF"
    assert toml.json()["results"][0]["flags"] != "POF"


@pytest.mark.parametrize("text", ["# fine\n#\x00\n", "# fine\n\ufeff# bom\n", "# a\rb\n"])
def test_a_comment_shortcut_never_accepts_what_toml_refuses(ns, tmp_path, text):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(text.encode())
    step = ns.one(f"{sys.executable} -m binfmtd apply --check --config {bad} aarch64")
    assert step.rc == 2 and "invalid TOML" in step.err


def test_records_behave_as_the_dataclasses_they_replace():
    entry = Entry("qemu-x", "/usr/bin/qemu-x", flags="F", magic=b"\x7f")
    assert entry == Entry("qemu-x", "/usr/bin/qemu-x", "F", 0, b"\x7f") and hash(entry) == hash(replace(entry))
    assert replace(entry, enabled=False) != entry and replace(entry, enabled=False).flags == "F"
    assert repr(entry).startswith("Entry(name='qemu-x', interpreter='/usr/bin/qemu-x', flags='F'")
    with pytest.raises(FrozenInstanceError):
        entry.flags = "P"
    with pytest.raises(TypeError, match="missing required argument: 'interpreter'"):
        Entry("qemu-x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'flag'"):
        Entry("qemu-x", "/q", flag="F")
    one, two = State(), State()
    one.entries["x"] = None
    assert two.entries == {} and one != two  # a fresh default per record, compared by value
    with pytest.raises(TypeError):
        hash(one)  # mutable records have no hash, as with dataclasses


def test_a_record_extends_another_records_fields():
    from binfmtd.records import dataclass

    @dataclass(frozen=True)
    class Base:
        a: int
        b: str = ""

    @dataclass(frozen=True)
    class Extended(Base):
        c: tuple = ()

    extended = Extended(1, "x", (2,))
    assert (extended.a, extended.b, extended.c) == (1, "x", (2,)) and Extended(1) == Extended(1, "", ())
    assert hash(Extended(1)) == hash(Extended(1)) and Extended(1) != Base(1)


def test_verify_json_takes_the_boot_path_and_answers_as_the_full_cli(ns, tmp_path):
    """`verify --json` (Ansible's verify, scripts) skips typer and pydantic; its answer, warnings
    and exit code are the full CLI's, a usage error's included."""
    pairs = [("verify --json --engine sandbox aarch64", "verify --json --engine=sandbox aarch64"),
             ("verify --json --engine sandbox --timeout 0 aarch64", "verify --json --engine=sandbox --timeout=0 aarch64"),
             ("verify --json --all aarch64", "verify --json --all aarch64 --")]
    commands = [f"{BINFMTD} apply aarch64"] + [f"{BINFMTD} {c}" for pair in pairs for c in pair] + [
        f"{sys.executable} -X importtime -m binfmtd {pairs[0][0]}"]
    setup, *steps, lean = ns.run(*commands)
    assert setup.rc == 0
    for boot, typer_path in zip(steps[::2], steps[1::2]):
        answer, other = boot.json(), typer_path.json()
        for result in answer["results"] + other["results"]:
            result.pop("seconds")
        assert (boot.rc, answer, boot.err) == (typer_path.rc, other, typer_path.err), boot.command
    assert steps[0].rc == 0 and steps[0].json()["ok"]  # a real probe ran through the entry
    assert [s.rc for s in steps[2:]] == [2, 2, 2, 2]  # --timeout 0; targets and --all
    assert " typer" not in lean.err
