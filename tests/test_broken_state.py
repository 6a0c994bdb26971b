"""A broken state file gives one line, never a traceback, never a hang, and status still shows
the kernel's table. Binary, huge, a FIFO, and well-formed JSON of the wrong shape."""

from __future__ import annotations

import json
import os

import pytest

from conftest import BINFMT_MISC, BINFMTD

BROKEN = {
    "binary": b"\x00\xff\xfe binfmtd \x80\x81",
    "huge": b"{" + b" " * (2 << 20) + b"}",
    "list": b"[1, 2, 3]",
    "null": b"null",
    "entries as a list": b'{"entries": []}',
    "last_apply a string": b'{"last_apply": "yesterday", "entries": {}}',
    "entry without line": b'{"entries": {"qemu-aarch64": {}}}',
    "line for another name": b'{"entries": {"qemu-aarch64": {"line": ":qemu-arm:M::\\\\x7fELF::/usr/bin/x:F"}}}',
    "newline in interpreter": b'{"entries": {"qemu-arm": {"line": ":qemu-arm:M::\\\\x7fELF::/usr/bin/x\\ny:F"}}}',
    "fifo": None,
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_state_file_is_one_line_and_nothing_changes(ns, kind):
    ns.state_dir.mkdir()
    path = ns.state_dir / "state.json"
    if BROKEN[kind] is None:
        os.mkfifo(path)
    else:
        path.write_bytes(BROKEN[kind])
    pre = f"echo ':other:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00::/usr/bin/qemu-aarch64-static:F' > {BINFMT_MISC}/register"
    steps = ns.run(pre, f"{BINFMTD} apply aarch64", f"{BINFMTD} remove --all", f"{BINFMTD} status",
                   f"{BINFMTD} status --json", f"{BINFMTD} status --format prometheus", f"ls {BINFMT_MISC}",
                   timeout=60)
    setup, apply, remove, status, status_json, prometheus, listing = steps
    assert setup.rc == 0, setup.err
    for step in (apply, remove):
        lines = step.err.strip().splitlines()
        assert step.rc == 1 and len(lines) == 1 and "Traceback" not in step.err, step.err
        assert "state" in lines[0] and ("move it aside" in lines[0] or "remove it" in lines[0])
    assert sorted(listing.out.split()) == ["other", "register", "status"]  # nothing registered, nothing removed
    assert status.rc == 0 and "other" in status.out and "warning" in status.err, status.err
    report = status_json.json()
    assert [e["name"] for e in report["entries"]] == ["other"] and report["warnings"]
    assert prometheus.rc == 0, prometheus.err
    samples = [line for line in prometheus.out.splitlines() if line and not line.startswith("#")]
    for sample in samples:
        float(sample.rsplit(" ", 1)[1])  # every sample's value is a number


def test_a_full_state_filesystem_is_one_line_and_one_json_object(ns):
    """A full /var at boot: binfmtd cannot record intent, so it changes nothing and says why in
    one line (and one JSON object), never a traceback."""
    ns.state_dir.mkdir()
    fill = (f"mount -t tmpfs -o size=64k,mode=0755 tmpfs {ns.state_dir} && "
            f"dd if=/dev/zero of={ns.state_dir}/filler bs=4k 2>/dev/null; true")
    _, apply, listing = ns.run(fill, f"{BINFMTD} apply aarch64 --json", f"ls {BINFMT_MISC}")
    lines = apply.err.strip().splitlines()
    assert apply.rc == 1 and "Traceback" not in apply.err, apply.err
    assert any("cannot write" in line and "state.json" in line for line in lines), apply.err
    report = json.loads(apply.out)
    assert report["ok"] is False and report["errors"][0]["message"].startswith("cannot write")
    assert listing.out.split() == ["register", "status"]
