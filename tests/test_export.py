"""export: a sysadmin who keeps systemd-binfmt or binfmt-support in charge of boot exports
binfmtd's entries and hands them to those real tools. Each tool runs in a fresh namespace
(a just-booted host) and must leave the kernel with exactly the entries `binfmtd apply` makes."""

import json
import os
import shlex

import pytest
from conftest import BINFMTD, need, qemu
from test_apply import DUMP_ENTRIES, kernel_entries

from binfmtd.facts.host import native_targets
from binfmtd.targets import TARGETS

SYSTEMD_BINFMT = "/usr/lib/systemd/systemd-binfmt"
UPDATE_BINFMTS = "/usr/sbin/update-binfmts"
# binfmt-support's own database and packaged formats: the tests must never touch them.
HOST_BINFMT_SUPPORT_DIRS = ("/var/lib/binfmts", "/usr/share/binfmts")

NATIVE = {t.name for t in native_targets()}
FOREIGN_TARGETS = [t for t in TARGETS if t.name not in NATIVE]


def export(ns, *args: str) -> dict:
    """`binfmtd export ... --json` (it reads no kernel state, so its namespace does not matter)."""
    step = ns.one(f"{BINFMTD} export {' '.join(args)} --json")
    assert step.rc == 0, step.err
    return step.json()


def apply_entries(ns, *args: str) -> dict:
    """What `binfmtd apply` registers on a just-booted host: name -> kernel entry."""
    apply, dump = ns.run(f"{BINFMTD} apply {' '.join(args)}", DUMP_ENTRIES)
    assert apply.rc == 0, apply.err
    return kernel_entries(dump.out)


def snapshot(directories) -> dict:
    return {os.path.join(d, name): (s.st_size, s.st_mtime_ns, s.st_ino)
            for d in directories if os.path.isdir(d)
            for name in os.listdir(d) for s in [os.stat(os.path.join(d, name))]}


def test_systemd_binfmt_registers_the_exported_files_exactly_as_apply_does(ns, tmp_path):
    qemu("aarch64")
    need(os.access(SYSTEMD_BINFMT, os.X_OK), f"{SYSTEMD_BINFMT} is missing (apt-get install systemd)")
    exported = export(ns, f"--format binfmt.d --dest {tmp_path / 'binfmt.d'} --all")
    paths = [f["path"] for f in exported["files"]]
    assert sorted(os.path.basename(p) for p in paths) == sorted(f"{t.entry_name}.conf" for t in FOREIGN_TARGETS)

    # With no arguments systemd-binfmt reads /etc/binfmt.d and friends and first flushes every
    # entry; given files, it registers just those.
    boot, dump = ns.run(f"{SYSTEMD_BINFMT} {' '.join(map(shlex.quote, paths))}", DUMP_ENTRIES)
    assert boot.rc == 0, boot.err
    by_systemd = kernel_entries(dump.out)

    assert set(by_systemd) == {t.entry_name for t in FOREIGN_TARGETS}
    assert by_systemd == apply_entries(ns, "--all")
    assert {e.flags for e in by_systemd.values()} == {"POCF"}


@pytest.mark.parametrize("flags", ["POCF", "PF"])
def test_update_binfmts_imports_the_exported_formats_exactly_as_apply_registers(ns, tmp_path, flags):
    qemu("aarch64")
    need(os.access(UPDATE_BINFMTS, os.X_OK), f"{UPDATE_BINFMTS} is missing (apt-get install binfmt-support)")
    importdir, admindir = tmp_path / "binfmts", tmp_path / "admin"
    admindir.mkdir()
    exported = export(ns, f"--format binfmt-support --dest {importdir} --all --flags {flags}")
    assert sorted(f["name"] for f in exported["files"]) == sorted(t.entry_name for t in FOREIGN_TARGETS)
    assert all(f["path"] == str(importdir / f["name"]) for f in exported["files"])

    host_before = snapshot(HOST_BINFMT_SUPPORT_DIRS)
    # update-binfmts exits 0 even when the kernel refuses a format (it only warns), so the
    # kernel's table is what the test asserts, and the warnings are shown when it differs.
    imported, dump = ns.run(f"{UPDATE_BINFMTS} --admindir {admindir} --importdir {importdir} --import",
                            DUMP_ENTRIES)
    assert imported.rc == 0, imported.err
    by_binfmt_support = kernel_entries(dump.out)

    assert set(by_binfmt_support) == {t.entry_name for t in FOREIGN_TARGETS}, imported.err
    assert by_binfmt_support == apply_entries(ns, f"--all --flags {flags}")
    assert {e.flags for e in by_binfmt_support.values()} == {flags}
    assert sorted(os.listdir(admindir)) == sorted(t.entry_name for t in FOREIGN_TARGETS)
    assert snapshot(HOST_BINFMT_SUPPORT_DIRS) == host_before


def test_open_binary_without_credentials_is_refused_for_binfmt_support(ns, tmp_path):
    """update-binfmts sets O only together with C (credentials yes): POF cannot be exported
    faithfully, so export says so and writes nothing, rather than registering other flags."""
    dest = tmp_path / "binfmts"
    refused, binfmt_d = ns.run(f"{BINFMTD} export --format binfmt-support --dest {dest} aarch64 --flags POF",
                               f"{BINFMTD} export --format binfmt.d --dest {tmp_path / 'binfmt.d'} aarch64 --flags POF")
    assert refused.rc == 2 and refused.out == ""
    message, = refused.err.splitlines()
    assert "binfmt-support cannot express flags 'POF'" in message and "POCF" in message and "PF" in message
    assert not dest.exists()
    assert binfmt_d.rc == 0, binfmt_d.err
    assert (tmp_path / "binfmt.d" / "qemu-aarch64.conf").read_text().splitlines()[-1].endswith(":POF")


def test_unknown_format_is_a_usage_error_on_one_line(ns, tmp_path):
    step, as_json = ns.run(f"{BINFMTD} export --format systemd --dest {tmp_path / 'out'} aarch64",
                           f"{BINFMTD} export --format systemd --dest {tmp_path / 'out'} aarch64 --json")
    assert step.rc == 2 and step.out == ""
    message, = step.err.splitlines()
    assert "'systemd'" in message and "binfmt.d" in message and "binfmt-support" in message
    assert as_json.rc == 2 and json.loads(as_json.out)["ok"] is False
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["binfmt.d", "binfmt-support"])
def test_native_targets_export_nothing(ns, tmp_path, fmt):
    native = sorted(NATIVE)
    need(bool(native), "this host's CPU family has no QEMU target")
    dest = tmp_path / "out"
    report = export(ns, f"--format {fmt} --dest {dest}", *native)
    assert report["files"] == []
    assert len(report["skipped"]) == len(native) and all("native" in reason for reason in report["skipped"])
    assert list(dest.iterdir()) == []


def test_json_is_one_object_and_text_lists_the_paths(ns, tmp_path):
    dest = tmp_path / "binfmt.d"
    as_json, as_text = ns.run(f"{BINFMTD} export --format binfmt.d --dest {dest} aarch64 linux/riscv64 --json",
                              f"{BINFMTD} export --format binfmt.d --dest {dest} aarch64 linux/riscv64")
    assert as_json.rc == 0, as_json.err
    report = json.loads(as_json.out)  # exactly one JSON document, nothing else on stdout
    assert report == {
        "format": "binfmt.d", "dest": str(dest), "skipped": [], "warnings": [],
        "files": [{"target": "aarch64", "platform": "linux/arm64", "name": "qemu-aarch64",
                   "path": str(dest / "qemu-aarch64.conf")},
                  {"target": "riscv64", "platform": "linux/riscv64", "name": "qemu-riscv64",
                   "path": str(dest / "qemu-riscv64.conf")}]}
    assert as_text.out.splitlines() == [str(dest / "qemu-aarch64.conf"), str(dest / "qemu-riscv64.conf")]


def test_export_overwrites_its_own_files_and_leaves_others_alone(ns, tmp_path):
    dest = tmp_path / "binfmt.d"
    dest.mkdir()
    (dest / "jar.conf").write_text(":jar:E::jar::/usr/bin/jexec:\n")
    (dest / "qemu-aarch64.conf").write_text("# Written by binfmtd 0.0.1 (binfmtd export --format binfmt.d)\n"
                                            ":qemu-aarch64:M::stale::/old/qemu:F\n")
    export(ns, f"--format binfmt.d --dest {dest} aarch64 --flags PF")
    assert sorted(p.name for p in dest.iterdir()) == ["jar.conf", "qemu-aarch64.conf"]  # no temp files left
    assert (dest / "jar.conf").read_text() == ":jar:E::jar::/usr/bin/jexec:\n"
    header, line = (dest / "qemu-aarch64.conf").read_text().splitlines()
    assert header.startswith("# Written by binfmtd")
    assert line.startswith(":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46") and line.endswith(":PF")
    assert oct((dest / "qemu-aarch64.conf").stat().st_mode & 0o777) == "0o644"


def test_foreign_binary_runs_after_systemd_binfmt_boots_the_export(ns, tmp_path, foreign_busybox):
    need(os.access(SYSTEMD_BINFMT, os.X_OK), f"{SYSTEMD_BINFMT} is missing (apt-get install systemd)")
    exported = export(ns, f"--format binfmt.d --dest {tmp_path / 'binfmt.d'} linux/arm64")
    path, = [f["path"] for f in exported["files"]]
    boot, run = ns.run(f"{SYSTEMD_BINFMT} {shlex.quote(path)}", f"{foreign_busybox['arm64']} uname -m")
    assert boot.rc == 0, boot.err
    assert (run.rc, run.out.strip()) == (0, "aarch64"), run.err


@pytest.mark.parametrize("fmt,theirs", [("binfmt-support", "qemu-arm"), ("binfmt.d", "qemu-arm.conf")])
def test_export_refuses_to_overwrite_another_packages_file_of_the_same_name(ns, tmp_path, fmt, theirs):
    # Debian's qemu-user-static ships /usr/share/binfmts/qemu-<target>, binfmt-support's default
    # import directory: exporting there must not replace its files.
    dest = tmp_path / "binfmts"
    dest.mkdir()
    packaged = "package qemu-user-static\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\n"
    (dest / theirs).write_text(packaged)
    step = ns.one(f"{BINFMTD} export --format {fmt} --dest {dest} aarch64 arm")
    assert step.rc == 2 and step.out == ""
    message, = step.err.splitlines()
    assert f"{dest / theirs} was not written by binfmtd" in message and "--importdir" in message
    assert [p.name for p in dest.iterdir()] == [theirs] and (dest / theirs).read_text() == packaged


def test_what_export_leaves_out_or_refuses_it_says_in_applys_words(ns, tmp_path, root_only_dir):
    """With only qemu-arm in interpreter_dirs: export --all leaves every other target out with the
    very reason `apply --check` gives (native, no interpreter, QEMU's dropped targets), and a named
    target without an interpreter fails the export with apply's own error."""
    import shutil

    shutil.copy2(qemu("arm"), root_only_dir / "qemu-arm-static")
    config = root_only_dir / "binfmtd.toml"
    config.write_text(f'interpreter_dirs = ["{root_only_dir}"]\n')
    dest = tmp_path / "binfmt.d"
    every, plan, named, named_plan = ns.run(
        f"{BINFMTD} export --format binfmt.d --dest {dest} --all --json", f"{BINFMTD} apply --all --check --json",
        f"{BINFMTD} export --format binfmt.d --dest {dest} riscv64 --json", f"{BINFMTD} apply riscv64 --check --json",
        env={"BINFMTD_CONFIG": str(config)})
    left_out = [f"{r['target']}: {r['reason']}" for r in plan.json()["results"] if r["action"] == "skipped"]
    assert every.rc == 0 and every.json()["skipped"] == left_out, every.out + every.err
    assert [f["name"] for f in every.json()["files"]] == ["qemu-arm"]
    assert any(reason.startswith("cris: no interpreter: ") and reason.endswith("have no cris emulator)")
               for reason in left_out)
    assert named.rc == 1 and [e["message"] for e in named.json()["errors"]] == \
        [e["message"] for e in named_plan.json()["errors"]]
    assert named.json()["errors"][0]["message"].startswith("no interpreter: qemu-riscv64-static not found in ")
