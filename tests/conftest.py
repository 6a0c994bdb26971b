"""Shared fixtures. The main tests run binfmtd inside a fresh user+mount namespace that mounts
its own binfmt_misc (Linux 6.7+): a real kernel table that stands for a just-booted host and
is gone when the namespace ends. A facility the machine lacks fails the test under CI=true and
skips it elsewhere."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from binfmtd.facts.host import read_kernel

ROOT = Path(__file__).resolve().parent.parent
FOREIGN = Path(os.environ.get("BINFMTD_TEST_FOREIGN", ROOT / "tests" / ".foreign"))
BINFMTD = f"{shlex.quote(sys.executable)} -m binfmtd"
BINFMT_MISC = "/proc/sys/fs/binfmt_misc"

# Debian architecture -> (QEMU target, what `uname -m` prints under QEMU)
FOREIGN_BUSYBOX = {
    "arm64": ("aarch64", "aarch64"),
    "armhf": ("arm", "armv7l"),
    "armel": ("arm", "armv7l"),
    "mips64el": ("mips64el", "mips64"),
    "mipsel": ("mipsel", "mips"),
    "ppc64el": ("ppc64le", "ppc64le"),
    "s390x": ("s390x", "s390x"),
}


def need(condition: bool, reason: str) -> None:
    """Skip for a missing facility, except in CI, where it must be there."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI lacks a required facility: {reason}")
        pytest.skip(reason)


@dataclass
class Step:
    command: str
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Namespace:
    """Runs shell steps in one fresh user+mount namespace; each step's stdout, stderr and exit
    code come back separately so a test can assert on all of them."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.state_dir = workdir / "state"

    def run(self, *commands: str, mount: bool = True, env: dict | None = None, timeout: float = 120) -> list[Step]:
        out = self.workdir / f"steps-{os.urandom(4).hex()}"
        out.mkdir()
        lines = ["set -u", f"export BINFMTD_STATE_DIR={shlex.quote(str(self.state_dir))}",
                 f"export BINFMTD_CONFIG={shlex.quote(str(self.workdir / 'none.toml'))}"
                 if not (env and "BINFMTD_CONFIG" in env) else ":"]
        if mount:
            lines.append(f"mount -t binfmt_misc binfmt_misc {BINFMT_MISC} || exit 99")
        for i, command in enumerate(commands):
            lines.append(f"( {command} ) >{out}/{i}.out 2>{out}/{i}.err; echo $? >{out}/{i}.rc")
        run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        # A new PID namespace and /proc, like a freshly booted host: binfmt_misc is not mounted
        # there even when the host has mounted its own.
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
                               "--pid", "--fork", "--mount-proc", "sh", "-c", "\n".join(lines)], env=run_env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"namespace setup failed ({done.returncode}): {done.stderr}"
        return [Step(c, int((out / f"{i}.rc").read_text()), (out / f"{i}.out").read_text(),
                     (out / f"{i}.err").read_text()) for i, c in enumerate(commands)]

    def one(self, command: str, **kwargs) -> Step:
        return self.run(command, **kwargs)[0]


@pytest.fixture
def ns(tmp_path: Path) -> Namespace:
    need(read_kernel().binfmt_misc_per_userns, "binfmt_misc per user namespace needs Linux 6.7+")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t binfmt_misc binfmt_misc {BINFMT_MISC}"], capture_output=True, text=True)
    need(probe.returncode == 0, f"cannot mount a private binfmt_misc: {probe.stderr.strip()}")
    (tmp_path / "none.toml").write_text("")  # an empty config: tests never read /etc/binfmtd
    return Namespace(tmp_path)


ROOT_ONLY_BASE = "/run/binfmtd-tests"  # tmpfs, root-only: gone at reboot, removed when empty


@pytest.fixture
def root_only_dir():
    """A fresh directory root alone controls (every component root-owned, none writable by group
    or others), as binfmtd demands of an interpreter's path. pytest's tmp_path is under /tmp,
    which everyone can write to, so interpreters placed there are refused."""
    import shutil
    import tempfile

    from binfmtd.trust import UntrustedPath, resolve_trusted

    need(os.geteuid() == 0, "a root-only directory needs root")
    os.makedirs(ROOT_ONLY_BASE, mode=0o755, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=ROOT_ONLY_BASE))
    directory.chmod(0o755)
    try:
        resolve_trusted(str(directory))
    except UntrustedPath as exc:
        need(False, f"no root-only directory for the test: {exc}")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
    try:
        os.rmdir(ROOT_ONLY_BASE)
    except OSError:
        pass  # another test's directory is still there


def qemu(target_qemu: str) -> str:
    path = f"/usr/bin/qemu-{target_qemu}-static"
    need(os.path.exists(path), f"{path} is missing (apt-get install qemu-user-static)")
    return path


@pytest.fixture
def foreign_busybox() -> dict[str, Path]:
    """Debian's statically linked busybox for foreign architectures (fetched by scripts/test)."""
    found = {arch: FOREIGN / arch / "bin" / "busybox" for arch in FOREIGN_BUSYBOX}
    missing = [arch for arch, path in found.items() if not path.exists()]
    need(not missing, f"foreign busybox binaries missing for {missing}: run scripts/fetch-foreign")
    return found


def entry_file(step_output: str) -> dict[str, str]:
    """The fields of an entry file as the kernel printed it."""
    fields = {}
    for line in step_output.splitlines():
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value if value else key
    return fields


HOST_LOCK = "/run/lock/binfmtd-tests-host.lock"


def run_quiet(argv) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


@contextlib.contextmanager
def host_table():
    """The host's binfmt_misc mounted for the test's reads, unmounted after if it was not before.
    Held under a lock, so two test runs on one machine do not install, purge and register at once."""
    need(os.geteuid() == 0, "the packaging tests install packages and use the host's binfmt_misc: run as root")
    with open(HOST_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with _mounted() as was_mounted:
            yield was_mounted


@contextlib.contextmanager
def _mounted():
    was_mounted = os.path.exists(f"{BINFMT_MISC}/register")
    if not was_mounted:
        done = run_quiet(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC])
        need(done.returncode == 0, f"cannot mount the host's binfmt_misc: {done.stderr.strip()}")
    try:
        yield was_mounted
    finally:
        if not was_mounted:
            run_quiet(["umount", BINFMT_MISC])




@contextlib.contextmanager
def set_aside(*names: str):
    """The host's entries with these names, removed while the test runs and registered again after
    as they were (the caller holds host_table()). A host where the README's set-up ran
    (`scripts/install && binfmtd apply`) has binfmtd's own qemu-* entries, which the test's binfmtd
    (with its own state directory) rightly treats as another tool's; the test needs the names free.
    An entry is put back at the end of the table and, with F, pins the emulator file the path names
    then; one whose interpreter is gone could not be put back, so the test is skipped instead."""
    from binfmtd.entry import parse_entry

    saved = []
    for name in names:
        path = Path(BINFMT_MISC, name)
        if path.exists():
            entry = parse_entry(name, path.read_text())
            if not os.path.exists(entry.interpreter):
                pytest.skip(f"the host's entry {name} names {entry.interpreter}, which is gone: "
                            "the test could not put the entry back")
            saved.append(entry)
    for entry in saved:
        Path(BINFMT_MISC, entry.name).write_text("-1")
    try:
        yield [e.name for e in saved]
    finally:
        for entry in saved:
            path = Path(BINFMT_MISC, entry.name)
            if path.exists():
                path.write_text("-1")  # what the test left under that name
            Path(BINFMT_MISC, "register").write_text(entry.register_line())
            if not entry.enabled:
                path.write_text("0")
