"""Which targets this host runs natively.

On Linux 6.7+ this is measured, not guessed: the probes of the host's CPU family run in a user
namespace that mounts its own, empty binfmt_misc, where nothing can be emulated, so what runs
there is what the CPU and kernel run themselves (an arm64 CPU without AArch32 cannot run `arm`, which QEMU's
CPU-family table would wrongly skip; an x86_64 kernel booted with ia32_emulation=0 cannot run
i386). The answer holds for a boot, so it is cached in the state directory under the boot id.
Older kernels, or hosts where the namespace cannot be made, fall back to the family table.
"""

from __future__ import annotations

import json
import os

from binfmtd.facts.host import DEFAULT_BINFMT_MISC, native_targets, read_boot_id, read_kernel
from binfmtd.state.files import NATIVE_FILE, read_record, write_record
from binfmtd.targets import lookup

RUN_PROBES = (f"mount -t binfmt_misc binfmt_misc {DEFAULT_BINFMT_MISC} || exit 90\n"
              # a probe that fails to exec must not count: dash would run it as a script (ENOEXEC)
              'for t in "$@"; do out=$("./$t" 2>/dev/null) && case "$out" in binfmtd-probe:*) echo "$t";; esac; done; exit 0')


def probe_native(candidates: tuple[str, ...], timeout: float = 20.0) -> tuple[str, ...] | None:
    """Which of `candidates` run with emulation impossible, or None if that cannot be tried."""
    import subprocess  # off the boot path: once a boot, the cached answer is read instead
    import tempfile

    from binfmtd.namespaces import unshare_argv
    from binfmtd.probes import build_probe, supported_targets

    names = [name for name in candidates if name in supported_targets()]
    with tempfile.TemporaryDirectory(prefix="binfmtd-native-") as workdir:
        for name in names:
            path = os.path.join(workdir, name)
            with open(path, "wb") as f:
                f.write(build_probe(name))
            os.chmod(path, 0o755)
        try:
            done = subprocess.run(unshare_argv(["sh", "-c", RUN_PROBES, "sh", *names]), cwd=workdir,
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
    if done.returncode != 0:
        return None
    ran = set(done.stdout.split())
    return tuple(name for name in names if name in ran)


def read_native(state_dir: str | None, remember: bool) -> tuple[tuple[str, ...], str]:
    """The native targets and how they were found; measured once per boot when the kernel allows."""
    boot_id = read_boot_id()
    machine = os.uname().machine
    # Only the CPU family's own targets can be native (QEMU's assumption, kept); the probe tells
    # which of them really are.
    family = tuple(t.name for t in native_targets(machine))
    cached = _read_cache(state_dir, boot_id, machine, family) if state_dir else None
    if cached is not None:
        return cached, "probe"
    if not read_kernel().binfmt_misc_per_userns:
        return family, "family"
    measured = probe_native(family)
    if measured is None:  # no user namespace here (a container, a unit without CAP_SETFCAP, ...)
        return family, "family-fallback"
    if remember and state_dir:
        try:
            write_record(state_dir, NATIVE_FILE, json.dumps({"boot_id": boot_id, "machine": machine,
                                                             "native": list(measured)}))
        except OSError:
            pass  # a cache that cannot be written is measured again next time
    return measured, "probe"


def _read_cache(state_dir: str, boot_id: str, machine: str, family: tuple[str, ...]) -> tuple[str, ...] | None:
    """This boot's measured answer, or None. The cache can only narrow the CPU family, and never
    drops the host's own architecture: a forged or stale file must not make binfmtd register an
    emulator for the host itself (every program would then fail with ELOOP)."""
    cached = read_record(state_dir, NATIVE_FILE)
    if not (isinstance(cached, dict) and cached.get("boot_id") == boot_id and cached.get("machine") == machine
            and isinstance(cached.get("native"), list)):
        return None
    own = lookup(machine)
    return tuple(name for name in family if name in cached["native"] or (own and name == own.name))
