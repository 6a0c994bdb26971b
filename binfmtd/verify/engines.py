"""Where verify's probes run. `sandbox` runs each probe in new user, mount, PID, network, IPC and
UTS namespaces, chrooted into a directory holding the probe alone, so it passes only when the
entry's F flag and interpreter really work without QEMU inside the root filesystem; `docker`,
`podman` and `nerdctl` run a one-file probe image with `--platform`. The sandbox sees the
binfmt_misc of the namespace binfmtd runs in (a child user namespace without its own binfmt_misc
mount inherits its parent's table)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor

from binfmtd.errors import HostUnsupported, UsageError
from binfmtd.facts.host import read_kernel
from binfmtd.facts.interpreters import identity_of_open_file
from binfmtd.namespaces import unshare_argv
from binfmtd.probes import build_probe
from binfmtd.targets import Target
from binfmtd.config import CONTAINER_ENGINES
from binfmtd.verify import spoken
from binfmtd.verify.probe_run import CHROOT_EXEC, ProbeRun, line_answered, probe_answered, run_bounded, \
    run_catching_exe

IMAGE = "binfmtd-probe"


class Sandbox:
    name = "sandbox"

    def __init__(self, workdir: str):
        self.workdir = workdir

    def check(self, timeout: float) -> None:
        kernel = read_kernel()
        if shutil.which("unshare") is None:
            raise HostUnsupported("the sandbox engine needs unshare(1); install util-linux")
        probe = run_bounded(unshare_argv(["true"], isolated=True), timeout)
        if probe.returncode != 0:
            raise HostUnsupported(f"cannot create the sandbox's namespaces on kernel {kernel.release} "
                                  f"({probe.stderr.strip() or 'timed out'}); use a container engine")

    def run(self, target: Target, timeout: float) -> ProbeRun:
        root = os.path.join(self.workdir, target.name)
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, "probe")
        with open(path, "wb") as f:
            f.write(build_probe(target.name))
        os.chmod(path, 0o755)
        launchers = {os.path.realpath(shutil.which("unshare") or "unshare"), os.path.realpath(sys.executable)}
        chroot_exec = [sys.executable, "-I", "-S", "-c", CHROOT_EXEC, root]
        run, held, link = run_catching_exe(unshare_argv(chroot_exec, isolated=True), timeout, launchers)
        if held is not None:
            try:
                if link != os.path.realpath(path):  # emulated, not the probe run natively
                    deleted = link.endswith(" (deleted)")
                    run.ran = identity_of_open_file(held, link.removesuffix(" (deleted)"))
                    run.ran["deleted"] = deleted
            finally:
                os.close(held)
        return run


class ContainerEngine:
    """docker, podman or nerdctl: a probe image per target, loaded from an archive binfmtd builds."""

    def __init__(self, name: str, image: str | None = None):
        self.name = name
        self.user_image = image

    def check(self, timeout: float) -> None:
        if shutil.which(self.name) is None:
            raise HostUnsupported(f"{self.name} is not installed; install it or use --engine sandbox")
        info = run_bounded([self.name, "info"], timeout)
        if info.returncode != 0:
            reason = "did not answer" if info.returncode is None else (info.stderr.strip().splitlines() or ["?"])[-1]
            raise HostUnsupported(f"{self.name} is not answering ({reason}); start its daemon or use --engine sandbox")

    def run(self, target: Target, timeout: float) -> ProbeRun:
        platform = target.platform
        if self.user_image:
            return run_bounded([self.name, "run", "--rm", "--platform", platform, "--network", "none", self.user_image,
                                "uname", "-m"], timeout, answer=line_answered)
        reference = f"{IMAGE}:{target.name}"
        probe = build_probe(target.name)
        digest = hashlib.sha256(probe).hexdigest()
        if self._image_label(reference, timeout) != digest:
            archive = image_archive(reference, platform, probe, digest)
            loaded = run_bounded([self.name, "load"], timeout, stdin=archive)
            if loaded.returncode != 0:
                return ProbeRun(loaded.returncode, "", f"loading {reference} failed: {loaded.stderr.strip()}",
                                loaded.seconds)
        return run_bounded([self.name, "run", "--rm", "--platform", platform, "--network", "none", reference],
                           timeout, answer=probe_answered)

    def _image_label(self, reference: str, timeout: float) -> str | None:
        inspect = run_bounded([self.name, "image", "inspect", reference], timeout)
        if inspect.returncode != 0:
            return None
        try:
            image = json.loads(inspect.stdout)[0]
        except (ValueError, IndexError):
            return None
        labels = (image.get("Config") or {}).get("Labels") or image.get("Labels") or {}
        return labels.get("binfmtd.probe")


def image_archive(reference: str, platform: str, probe: bytes, digest: str) -> bytes:
    """A docker-archive (`docker save` format, which docker, podman and nerdctl load) holding one
    layer with /probe, its entrypoint, and the platform's os/architecture/variant."""
    layer = _tar_of({"probe": probe})
    layer_id = hashlib.sha256(layer).hexdigest()
    os_name, arch, *variant = platform.split("/")
    config = {"architecture": arch, "os": os_name, "config": {"Entrypoint": ["/probe"],
                                                            "Labels": {"binfmtd.probe": digest}},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]}, "history": [{"created_by": "binfmtd"}]}
    if variant:
        config["variant"] = variant[0]
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": [f"{layer_id}/layer.tar"]}]
    return _tar_of({config_name: config_bytes, f"{layer_id}/layer.tar": layer,
                    "manifest.json": json.dumps(manifest).encode()})


def _tar_of(files: dict[str, bytes]) -> bytes:
    """A tar of `files`, reproducible (mtime 0); `probe` executable, the rest 0644."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), (0o755 if name == "probe" else 0o644), 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def run_all(engine, targets: tuple[Target, ...], timeout: float, workers: int = 32) -> list[ProbeRun]:
    """Each target's probe on `engine`, in parallel, in the targets' order."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), workers))) as pool:
        return list(pool.map(lambda target: engine.run(target, timeout), targets))


def pick_engine(name: str, workdir: str, image: str | None, timeout: float):
    """The engine to use; `auto` is the first container engine that answers, else the sandbox."""
    if name == "auto":
        for candidate in CONTAINER_ENGINES:
            if shutil.which(candidate):
                engine = ContainerEngine(candidate, image)
                try:
                    engine.check(min(timeout, 10))
                    return engine
                except HostUnsupported:
                    continue
        if image:
            raise HostUnsupported("--image needs a container engine and none is answering")
        name = "sandbox"
    if image and name == "sandbox":
        raise UsageError(f"--image needs a container engine (--engine {spoken(CONTAINER_ENGINES)})")
    engine = Sandbox(workdir) if name == "sandbox" else ContainerEngine(name, image)
    engine.check(min(timeout, 10))
    return engine
