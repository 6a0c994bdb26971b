"""`binfmtd verify`: prove that emulation works by running each target's probe the way a build
would meet it, and name the cause and the fix of every failure.

Engines: `sandbox` runs each probe in new user, mount, PID, network, IPC and UTS namespaces,
chrooted into a directory holding the probe alone, so it passes only when the entry's F flag
and interpreter really work without QEMU inside the root filesystem; `docker`, `podman` and
`nerdctl` run a one-file probe image with `--platform`. Probes run in parallel, each bounded by a
timeout. The sandbox sees the binfmt_misc of the namespace binfmtd runs in (a child user
namespace without its own binfmt_misc mount inherits its parent's table).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from binfmtd.facts.host import DEFAULT_BINFMT_MISC, Host, read_host, read_kernel
from binfmtd.config import load_config
from binfmtd.errors import HostUnsupported, UsageError
from binfmtd.facts.interpreters import (DEFAULT_INTERPRETER_DIRS, describe_version, emulator_identity,
                                  identity_of_open_file, qemu_version, read_interpreter, same_file)
from binfmtd.facts.native import read_native
from binfmtd.probes import build_probe, parse_probe_output
from binfmtd.targets import Target

CONTAINER_ENGINES = ("docker", "podman", "nerdctl")
IMAGE = "binfmtd-probe"
EXEC_ERRNO = "binfmtd-exec-errno:"

# Runs inside the sandbox's namespaces: chroot into the probe's directory and execv it. Python's
# execv reports the kernel's own errno (a shell or execvp would turn ENOEXEC into ENOENT).
CHROOT_EXEC = (
    "import os, sys\n"
    "os.chroot(sys.argv[1]); os.chdir('/')\n"
    "try:\n"
    "    os.execv('/probe', ['/probe'])\n"
    "except OSError as exc:\n"
    f"    sys.stderr.write('{EXEC_ERRNO}%d\\n' % exc.errno); os._exit(127)\n"
)


@dataclass
class ProbeRun:
    returncode: int | None  # None: stopped, it did not finish in time
    stdout: str
    stderr: str
    seconds: float  # until it exited or was stopped
    answered: float | None = None  # when the probe's answer was on stdout; None if it never was
    ran: dict | None = None  # the file the kernel ran for the probe (/proc/PID/exe), where seen

    @property
    def exec_errno(self) -> int | None:
        for line in self.stderr.splitlines():
            if line.startswith(EXEC_ERRNO):
                return int(line[len(EXEC_ERRNO):])
        return None

    @property
    def succeeded(self) -> bool:
        """It exited 0, or it answered and only the engine's own work after that (a slow `--rm`
        cleanup) outlasted the timeout: the emulation worked."""
        return self.returncode == 0 or (self.returncode is None and self.answered is not None)

    def slow_engine(self, timeout: float) -> str | None:
        """What to say when the answer came in time but the engine took longer than the timeout."""
        if self.answered is None or self.seconds <= timeout:
            return None
        end = f"was still running after {self.seconds:.1f}s; binfmtd stopped waiting" if self.returncode is None \
            else f"took {self.seconds:.1f}s in all"
        return (f"the probe answered after {self.answered:.1f}s (emulation works) but the engine {end} "
                f"(over the {timeout:g}s timeout): the engine is slow, not the emulation")


def _run(argv: list[str], timeout: float, stdin: bytes | None = None, answer=None) -> ProbeRun:
    """Run argv for at most `timeout` seconds. With `answer` (a test on the stdout so far), the
    timeout bounds the answer: once it is there, the engine gets another `timeout` to finish."""
    if answer is None:
        return _run_plain(argv, timeout, stdin)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err, answered = bytearray(), bytearray(), None
    deadline = start + timeout
    with selectors.DefaultSelector() as pipes:
        pipes.register(proc.stdout, selectors.EVENT_READ, out)
        pipes.register(proc.stderr, selectors.EVENT_READ, err)
        # Until both pipes close; a helper the engine left behind (conmon) may hold them open, so
        # also stop once the engine has exited and its pipes are drained (exit checked first:
        # what it wrote before exiting is then in the pipes for this select).
        while pipes.get_map() and time.monotonic() < deadline:
            exited = proc.poll() is not None
            ready = pipes.select(0 if exited else min(0.2, max(0.0, deadline - time.monotonic())))
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    pipes.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if answered is None and key.data is out and answer(out.decode(errors="replace")):
                    answered = time.monotonic() - start
                    deadline = time.monotonic() + timeout
            if exited and not ready:
                break
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        returncode = None
    proc.stdout.close()
    proc.stderr.close()
    return ProbeRun(returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                    time.monotonic() - start, answered)


def _run_plain(argv: list[str], timeout: float, stdin: bytes | None = None) -> ProbeRun:
    start = time.monotonic()
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return ProbeRun(None, (exc.stdout or b"").decode(errors="replace"),
                        (exc.stderr or b"").decode(errors="replace"), time.monotonic() - start)
    return ProbeRun(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"),
                    time.monotonic() - start)


def _full_pipe() -> tuple[int, int, int]:
    """A pipe filled to the last byte: a program given its write end as stdout blocks in its
    first write until the reader drains it. (read end, write end, bytes of filler)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_fd, False)
    filled = 0
    for chunk in (b"\0" * 65536, b"\0"):  # big writes, then single bytes for the last page's room
        try:
            while True:
                filled += os.write(write_fd, chunk)
        except BlockingIOError:
            pass
    os.set_blocking(write_fd, True)  # the probe must block, not get EAGAIN
    return read_fd, write_fd, filled


CATCH_SECONDS = 5.0  # how long a probe may take to reach its first write before it is let go


def _child_exe(pid: int) -> tuple[int, str] | None:
    """The first child of `pid` and what it executes now, or None; OSError where the kernel does
    not list children (CONFIG_PROC_CHILDREN) or hides them."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    if children:
        try:
            return int(children[0]), os.readlink(f"/proc/{children[0]}/exe")
        except FileNotFoundError:  # exited meanwhile
            return None
    return None


def _run_catching_exe(argv: list[str], timeout: float, launchers: set[str]) -> tuple[ProbeRun, int | None, str]:
    """Run the sandbox's probe with its stdout a full pipe, so it stops at its first write; meanwhile
    open /proc/PID/exe of the process (unshare's child once it no longer executes one of
    `launchers`): with binfmt_misc that is the interpreter the kernel ran, for an F entry the
    file pinned at registration, readable even when deleted from disk since. Then drain and
    collect. Returns the run, that file held open (or None) and its /proc path's text."""
    import select
    import threading

    start = time.monotonic()
    deadline = start + timeout
    read_fd, write_fd, filled = _full_pipe()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=subprocess.PIPE)
    finally:
        os.close(write_fd)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    held, link, probe_pid = None, "", None
    catch_until = min(deadline, start + CATCH_SECONDS)
    while held is None and proc.poll() is None and time.monotonic() < catch_until:
        try:
            found = _child_exe(proc.pid)
        except OSError:
            break  # not visible here: the probe just runs, unobserved
        if found and found[1] not in launchers:
            probe_pid, link = found
            try:
                held = os.open(f"/proc/{probe_pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                break  # exited meanwhile: nothing to hold
        else:
            time.sleep(0.001)
    out, timed_out = bytearray(), False
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                timed_out = True
                break
            data = os.read(read_fd, 65536)
            if not data:
                break
            out += data
    finally:
        if timed_out:
            for pid in filter(None, (probe_pid, proc.pid)):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        os.close(read_fd)
        proc.wait()
        reader.join(5)
    seconds = time.monotonic() - start
    text = bytes(out[filled:]).decode(errors="replace")
    run = ProbeRun(None if timed_out else proc.returncode, text,
                   b"".join(errors).decode(errors="replace"), seconds)
    return run, held, link


def _probe_answered(stdout: str) -> bool:
    return parse_probe_output(stdout) is not None


def _line_answered(stdout: str) -> bool:  # `uname -m` in a user's image: one complete line
    return any(line.strip() for line in stdout.splitlines(keepends=True) if line.endswith("\n"))


class Sandbox:
    name = "sandbox"

    def __init__(self, workdir: str):
        self.workdir = workdir

    def check(self, timeout: float) -> None:
        kernel = read_kernel()
        if shutil.which("unshare") is None:
            raise HostUnsupported("the sandbox engine needs unshare(1); install util-linux")
        probe = _run(["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net", "--ipc",
                      "--uts", "true"], timeout)
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
        run, held, link = _run_catching_exe(
            ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net", "--ipc", "--uts",
             "--propagation", "private", sys.executable, "-I", "-S", "-c", CHROOT_EXEC, root], timeout, launchers)
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
        info = _run([self.name, "info"], timeout)
        if info.returncode != 0:
            reason = "did not answer" if info.returncode is None else (info.stderr.strip().splitlines() or ["?"])[-1]
            raise HostUnsupported(f"{self.name} is not answering ({reason}); start its daemon or use --engine sandbox")

    def run(self, target: Target, timeout: float) -> ProbeRun:
        platform = target.platform
        if self.user_image:
            return _run([self.name, "run", "--rm", "--platform", platform, "--network", "none", self.user_image,
                         "uname", "-m"], timeout, answer=_line_answered)
        reference = f"{IMAGE}:{target.name}"
        probe = build_probe(target.name)
        digest = hashlib.sha256(probe).hexdigest()
        if self._image_label(reference, timeout) != digest:
            loaded = _run([self.name, "load"], timeout, stdin=image_archive(reference, platform, probe, digest))
            if loaded.returncode != 0:
                return ProbeRun(loaded.returncode, "", f"loading {reference} failed: {loaded.stderr.strip()}",
                                loaded.seconds)
        return _run([self.name, "run", "--rm", "--platform", platform, "--network", "none", reference], timeout,
                    answer=_probe_answered)

    def _image_label(self, reference: str, timeout: float) -> str | None:
        inspect = _run([self.name, "image", "inspect", reference], timeout)
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
    def tar_of(files: dict[str, bytes], mode: int = 0o644) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), (0o755 if name == "probe" else mode), 0
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    layer = tar_of({"probe": probe})
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
    return tar_of({config_name: config_bytes, f"{layer_id}/layer.tar": layer,
                   "manifest.json": json.dumps(manifest).encode()})


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
        raise UsageError("--image needs a container engine (--engine docker, podman or nerdctl)")
    engine = Sandbox(workdir) if name == "sandbox" else ContainerEngine(name, image)
    engine.check(min(timeout, 10))
    return engine


@dataclass
class VerifyReport:
    engine: str
    results: list[dict]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.results)

    def to_json(self) -> dict:
        return {"ok": self.ok, "engine": self.engine, "results": self.results}


def verify(names=(), all_targets=False, engine_name: str | None = None, image: str | None = None,
           config_file: str | None = None, timeout: float | None = None, binfmt_misc: str | None = None) -> VerifyReport:
    from binfmtd.commands.change import desired_targets, resolve_targets

    config = load_config(config_file)
    engine_name = engine_name or (config.verify_engine if config else "auto")
    timeout = timeout or (config.verify_timeout if config else 20.0)
    resolve_targets(names)  # unknown targets fail before anything runs
    path = binfmt_misc or DEFAULT_BINFMT_MISC
    native, _ = read_native(os.environ.get("BINFMTD_STATE_DIR") or None, remember=False)
    host = read_host(path, native)
    targets, _ = desired_targets(names, all_targets, config, host.native)
    dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
    with tempfile.TemporaryDirectory(prefix="binfmtd-verify-") as workdir:
        engine = pick_engine(engine_name, workdir, image, timeout)
        if engine.name != "sandbox":
            without = [t.name for t in targets if not t.platform]
            if without and names:
                raise UsageError(f"{', '.join(without)} have no container platform; verify them with --engine sandbox")
            targets = tuple(t for t in targets if t.platform)
        with ThreadPoolExecutor(max_workers=max(1, min(len(targets), 32))) as pool:
            runs = list(pool.map(lambda t: engine.run(t, timeout), targets))
    warnings = []
    if host.binfmt_misc.private:
        warnings.append("the table checked is this user namespace's private one, not the host's")
    owned = _owned_entries(host)
    results = [diagnose(t, run, host, read_interpreter(t.qemu, dirs), engine.name, image, t.entry_name in owned)
               for t, run in zip(targets, runs)]
    warnings += [f"{r['target']}: {r['emulator']['note']}" for r in results if r["emulator"] and r["emulator"]["note"]]
    for result, run in zip(results, runs):  # the answer came in time, the engine did not finish in time
        result["slow_engine"] = run.slow_engine(timeout)
        if result["slow_engine"]:
            warnings.append(f"{result['target']}: {result['slow_engine']}")
    return VerifyReport(engine.name, results, warnings)


def emulator_that_ran(run: ProbeRun, entry) -> dict | None:
    """The QEMU the kernel ran for the probe (seen through /proc/PID/exe: the sandbox engine, for
    an emulated target), and whether it is still the file at the entry's interpreter path."""
    if run.ran is None:
        return None
    ran = run.ran
    on_disk = emulator_identity(entry.interpreter, known=(ran,)) if entry else None
    current = same_file(ran, on_disk)
    note = None
    if entry is not None and not current:
        gone = "deleted" if ran["deleted"] else "replaced"
        note = (f"the kernel ran {describe_version(ran)} from {ran['path']}, {gone} on disk since ("
                + (f"{entry.interpreter} is now {describe_version(on_disk)}" if on_disk else f"{entry.interpreter} is gone")
                + f"): {entry.name} still pins the old file; `binfmtd apply` "
                + ("re-registers it" if on_disk else "removes it") + " if it is binfmtd's, else "
                + ("re-register it with the tool that made it" if on_disk else "reinstall QEMU or remove the entry"))
    return {"path": ran["path"], "version": ran["version"], "deleted": ran["deleted"], "current": current,
            "note": note}


def _owned_entries(host: Host) -> set[str]:
    """Names of the entries binfmtd registered (its state), for diagnoses; empty if unreadable."""
    from binfmtd.errors import BinfmtdError
    from binfmtd.state.files import state_dir_from_env
    from binfmtd.state.ledger import load_state

    try:
        state = load_state(state_dir_from_env())
    except BinfmtdError:
        return set()
    return {e.name for e in host.binfmt_misc.entries if state.owns(e)}


def diagnose(target: Target, run: ProbeRun, host: Host, interpreter, engine: str, user_image: str | None,
             ours: bool | None = None) -> dict:
    """The report for one target: what ran, what it said, and for a failure the cause and fix.
    `user_image` is the image --image named (None: binfmtd's probe); `ours` whether binfmtd
    registered the target's entry (its fix then needs no --force)."""
    entry = host.binfmt_misc.entry(target.entry_name)
    native = target.name in host.native
    machine = parse_probe_output(run.stdout)
    if user_image and machine is None:
        machine = (run.stdout.strip().splitlines() or [""])[-1].strip() or None
    expected = {host.machine} if native else {target.machine}
    ok = run.succeeded and machine in expected
    result = {
        "target": target.name, "platform": target.platform, "ok": ok, "machine": machine,
        "seconds": round(run.seconds, 3), "error": None, "cause": None, "fix": None, "native": native,
        "entry": {"name": target.entry_name, "present": entry is not None,
                  "enabled": bool(entry and entry.enabled), "flags": entry.flags if entry else None},
        "interpreter": {"path": interpreter.path, "static": interpreter.static, "safe": interpreter.problem is None},
        "emulator": emulator_that_ran(run, entry),
    }
    if ok:
        return result
    result["error"] = _error_text(run)
    result["cause"], result["fix"] = _cause(target, run, host, entry, interpreter, engine, machine, expected,
                                            user_image, ours)
    return result


def _error_text(run: ProbeRun) -> str:
    if run.returncode is None:
        return f"timed out after {run.seconds:.1f}s"
    code = run.exec_errno
    if code is not None:
        return f"exec failed: {errno.errorcode.get(code, code)} ({os.strerror(code)})"
    lines = [line for line in run.stderr.strip().splitlines() if line]
    return (lines[-1] if lines else f"exit status {run.returncode}")[:300]


def emulates(interpreter: str, target: Target) -> bool:
    """Whether an entry's interpreter is QEMU's emulator for this target, by the names QEMU,
    Debian and tonistiigi/binfmt give it: qemu-aarch64(-static), /usr/libexec/qemu-binfmt/aarch64-binfmt-P."""
    name = os.path.basename(interpreter).removeprefix("qemu-")
    return name.split("-", 1)[0] == target.qemu


# What docker, podman and nerdctl print when an image cannot be pulled or found (they exit 125).
PULL_FAILED = re.compile(r"pull|manifest|not found|image not known|unauthorized|denied|no such host|"
                         r"initializing source|resolv|registry", re.I)


def _cause(target, run, host, entry, interpreter, engine, machine, expected, user_image=None,
           ours=None) -> tuple[str, str]:
    from binfmtd.plan import shadowing_entries

    table = host.binfmt_misc
    shadows = [e for e in shadowing_entries(target, host) if e.enabled]
    others = [e.name for e in shadows]
    # How to take over an entry another tool registered; binfmtd's own only needs apply.
    take_over = (f"binfmtd apply {target.name}" if ours else
                 f"binfmtd apply {target.name} --force (binfmtd remove puts the other tool's entry back)")
    if run.returncode is None:
        return "the probe did not finish in time", "raise the timeout (--timeout), or check the host's load"
    if user_image and machine is None and run.returncode and PULL_FAILED.search(run.stderr):
        return (f"{engine} could not pull or find image {user_image} for {target.platform}",
                f"check the reference, the registry and that the image has a {target.platform} variant: "
                f"{engine} pull --platform {target.platform} {user_image}")
    wrong = [e for e in shadows if not emulates(e.interpreter, target)]
    if wrong:
        return (f"entry {wrong[0].name!r} (not binfmtd's) claims {target.name} binaries and hands them to "
                f"{wrong[0].interpreter}, which is not QEMU's {target.qemu} emulator",
                f"remove that entry (echo -1 > {table.path}/{wrong[0].name}), then binfmtd apply {target.name}")
    if entry is not None and entry.enabled and not emulates(entry.interpreter, target):
        return (f"entry {entry.name} hands {target.name} binaries to {entry.interpreter}, which is not QEMU's "
                f"{target.qemu} emulator", take_over)
    if "uncaught target signal" in run.stderr or (run.returncode and run.returncode >= 128 and interpreter.path):
        # Only a path root alone controls is run as root (resolved is None for a refused one).
        version = qemu_version(interpreter.resolved) if interpreter.resolved else None
        return (f"the emulator crashed (QEMU {version or '?'}): {_error_text(run)}",
                "upgrade qemu-user-static; report the crash to QEMU with the probe")
    if machine and machine not in expected:
        return (f"the probe ran but reported {machine!r}, not {sorted(expected)[0]!r}"
                + (f": entry {others[0]!r} (not binfmtd's) claims these binaries" if others else ""),
                f"remove the shadowing entry (echo -1 > {table.path}/{others[0]}) and run binfmtd apply"
                if others else "check which entry claims the binaries: binfmtd status")
    if not table.mounted:
        return f"binfmt_misc is not mounted on {table.path}", "run binfmtd apply (it mounts it)"
    if not table.enabled:
        return "binfmt_misc is disabled for the whole table", f"echo 1 > {table.path}/status"
    if entry is None and not others:
        suffix = " (this is a private user-namespace table, not the host's)" if table.private else ""
        return f"no entry claims {target.name} binaries{suffix}", f"binfmtd apply {target.name}"
    if entry is not None and not entry.enabled:
        return (f"entry {entry.name} is disabled",
                f"binfmtd apply {target.name} (re-enables it)" if ours else
                f"echo 1 > {table.path}/{entry.name} (another tool's entry), or {take_over}")
    code = run.exec_errno
    if entry is not None and "F" not in entry.flags and not os.path.exists(entry.interpreter):
        return (f"interpreter {entry.interpreter} is gone",
                f"install qemu-user-static, then binfmtd apply {target.name}" if ours else
                f"reinstall the tool that registered {entry.name} (Debian: apt-get install --reinstall "
                f"qemu-user-static), or {take_over}")
    if entry is not None and "F" not in entry.flags and (engine != "sandbox" or code == errno.ENOENT):
        return (f"entry {entry.name} lacks the F flag: the kernel looks for {entry.interpreter} inside the container, "
                "where it does not exist",
                f"binfmtd apply {target.name} --flags POCF" if ours else f"{take_over}; its default flags POCF have F")
    if code == errno.ENOEXEC:
        return "no enabled entry claims the probe (ENOEXEC)", f"binfmtd apply {target.name}"
    if "exec format error" in run.stderr.lower():
        return "the container runtime could not execute the probe (exec format error): no entry claims it", \
            f"binfmtd apply {target.name} on the host the engine runs on"
    return f"the probe failed: {_error_text(run)}", "run binfmtd check and binfmtd status"
