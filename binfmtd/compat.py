"""The container image's command line: binfmtd's own commands, and the languages of the two images
it replaces, chosen by the first argument (`python3 -m binfmtd.compat ARGS`, the image's entrypoint):

- tonistiigi/binfmt (what docker/setup-qemu-action drives): no arguments, `--install`,
  `--uninstall`, `--version`, `--mount` (Go's flag syntax: one or two dashes, `=` or a space).
  Status JSON on stdout, `installing: arm64 OK` logs on stderr; see cmd/binfmt/main.go there.
- multiarch/qemu-user-static (its `register` script, QEMU's qemu-binfmt-conf.sh): `--reset`,
  `-p|--persistent yes|no`, `-c|--credential yes|no`, `-g|--preserve-argv0 yes|no`.
- anything else: binfmtd's own CLI (`apply`, `status`, `daemon`, ...).

Both foreign languages keep binfmtd's guarantees, which those images lack: a platform is reported
supported only after a probe ran on it (binfmtd.verify.run's sandbox), any failure exits non-zero,
and an entry another tool registered is never replaced unless the user asked for its removal
(`--uninstall qemu-*`, `--reset`); where it is kept, the probe says whether it does the job.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from binfmtd import __version__
from binfmtd.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, BinfmtdError, HostUnsupported, UsageError
from binfmtd.records import replace  # Config is a boot-path record (binfmtd.records), not a dataclass
from binfmtd.targets import TARGETS, Target, lookup

DEFAULT_MOUNT = "/proc/sys/fs/binfmt_misc"
TONISTIIGI_OPTIONS = ("install", "uninstall", "version", "mount")
MULTIARCH_OPTIONS = ("--reset", "-p", "--persistent", "-c", "--credential", "-g", "--preserve-argv0")
# Platforms the status leaves out because another name of the same platform is listed (the
# normalized forms containerd prints: arm64/v8 is arm64, arm is arm/v7; buildkit lists no v5).
STATUS_ALIASES = {"linux/arm64/v8", "linux/arm", "linux/arm/v5",
                  "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4"}
PROBE_TIMEOUT = 30.0

HELP = f"""binfmtd {__version__} container image: register QEMU emulators with the host's binfmt_misc,
verify each one with a probe, and never replace other tools' entries unless asked.
Run it with --privileged. It speaks three languages, chosen by the first argument:

  binfmtd (default)        IMAGE apply linux/arm64 riscv64 [--json]   IMAGE status [--json]
                           IMAGE remove --all   IMAGE verify   IMAGE daemon   IMAGE <command> --help
  tonistiigi/binfmt        IMAGE                       status JSON: {{"supported": [...], "emulators": [...]}}
                           IMAGE --install all|arm64,riscv64,linux/arm/v7,...
                           IMAGE --uninstall qemu-*|qemu-aarch64|linux/arm64,...
                           IMAGE --version   IMAGE --mount PATH ...
                           (env: QEMU_PRESERVE_ARGV0=1 adds flag P; QEMU_BINARY_PATH=DIR)
  multiarch/qemu-user-static
                           IMAGE --reset -p yes        [-c yes|no] [-g|--preserve-argv0 yes|no]

In every language a platform counts as installed only once a probe ran on it, and a failure
exits non-zero. Entries the image registers name their emulator under /usr/libexec/binfmtd-image/,
which marks them as binfmtd's: `binfmtd remove` on the host or a later run removes them.
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def language_of(argv: list[str]) -> str:
    """`tonistiigi`, `multiarch`, `help` or `binfmtd`, from the first argument alone."""
    if not argv:
        return "tonistiigi"
    first = argv[0]
    if first in ("-h", "--help", "help"):
        return "help"
    if first.lstrip("-").split("=", 1)[0] in TONISTIIGI_OPTIONS and first.startswith("-"):
        return "tonistiigi"
    if first.split("=", 1)[0] in MULTIARCH_OPTIONS:
        return "multiarch"
    return "binfmtd"


# --- shared: targets, installation, probes, status ---

def display_name(target: Target) -> str:
    """The name tonistiigi's logs use: the platform's architecture (arm64, arm, 386), else QEMU's."""
    return target.platform.split("/")[1] if target.platform else target.name


def resolve_names(names: list[str]) -> tuple[Target, ...]:
    targets, unknown = [], []
    for name in names:
        target = lookup(name)
        if target is None:
            unknown.append(name)
        elif target not in targets:
            targets.append(target)
    if unknown:
        raise UsageError(f"unsupported architecture: {', '.join(unknown)}; use names such as arm64, riscv64, "
                         "linux/arm/v7, 386 or all (`binfmtd targets` lists every one)")
    return tuple(targets)


@dataclass
class Run:
    """One invocation in a foreign language: where the table is and what failed so far."""

    mount: str = DEFAULT_MOUNT
    failed: bool = False
    verified: dict[str, dict] = field(default_factory=dict)  # target -> binfmtd.verify.run's result
    _native: tuple[str, ...] | None = None

    @property
    def native(self) -> tuple[str, ...]:
        """The targets this host runs itself (measured once per run)."""
        if self._native is None:
            from binfmtd.facts.native import read_native
            from binfmtd.state.files import state_dir_from_env

            self._native = read_native(state_dir_from_env(), remember=False)[0]
        return self._native

    def config(self):
        from binfmtd.config import Config, load_config

        config = load_config()
        if os.environ.get("QEMU_BINARY_PATH"):  # tonistiigi's: where the emulators are
            config = replace(config or Config("<environment>"),
                             interpreter_dirs=(os.environ["QEMU_BINARY_PATH"],))
        return config


def ensure_mounted(path: str) -> None:
    """binfmt_misc at `path`, mounted in the container's own mount namespace if it is not there
    (as tonistiigi does; the table is the host's all the same)."""
    if not os.path.exists(os.path.join(path, "status")):
        from binfmtd.act import mount_binfmt_misc

        mount_binfmt_misc(path)


def probe(run: Run, targets: tuple[Target, ...]) -> dict[str, dict]:
    """Run each target's probe in binfmtd's sandbox (a chroot holding the probe alone, so only
    an entry with a working, kernel-pinned emulator passes); binfmtd.verify.run's result per target."""
    from binfmtd.facts.host import read_binfmt_misc, read_host
    from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS, read_interpreter
    from binfmtd.verify.run import Sandbox, diagnose

    targets = tuple(t for t in targets if t.name not in run.verified)
    if targets:
        host = read_host(run.mount, run.native)
        config = run.config()
        dirs = (config and config.interpreter_dirs) or DEFAULT_INTERPRETER_DIRS
        with tempfile.TemporaryDirectory(prefix="binfmtd-compat-") as workdir:
            sandbox = Sandbox(workdir)
            sandbox.check(10)
            with ThreadPoolExecutor(max_workers=max(1, min(len(targets), 16))) as pool:
                runs = list(pool.map(lambda t: sandbox.run(t, PROBE_TIMEOUT), targets))
        for target, probe_run in zip(targets, runs):
            run.verified[target.name] = diagnose(target, probe_run, host, read_interpreter(target.qemu, dirs),
                                                 "sandbox", False)
    return run.verified


def install(run: Run, targets: tuple[Target, ...] | None, flags: str, say, replace_hint) -> None:
    """Register `targets` (None: every target) as binfmtd's apply does, then probe each one;
    `say(target, ok, detail)` reports each in the caller's language, and `replace_hint(target)`
    says in it how to replace another tool's entry that does not work."""
    from binfmtd import commands

    names = [t.name for t in targets] if targets is not None else []
    report = commands.apply(names, all_targets=targets is None, flags=flags, binfmt_misc=run.mount,
                            config=run.config())
    for warning in report.warnings:
        # The flags are the foreign language's own defaults or what its caller chose: no advice on them.
        if "flags lack F" not in warning and "flag C:" not in warning:
            log(f"warning: {warning}")
    errors = {e["target"]: e["message"] for e in report.errors}
    entries = {e["name"]: e for e in commands.status(binfmt_misc=run.mount)["entries"]}
    to_probe, kept = [], {}
    for result in report.results:
        target = lookup(result["target"])
        entry = entries.get(target.entry_name)
        if target.name in errors:
            run.failed = True
            say(target, False, errors[target.name])
        elif target.name in run.native:
            say(target, True, "runs natively on this host, no entry needed")
        elif entry is None:
            say(target, None, result["reason"])  # e.g. no emulator in the image for it, with `all`
        else:
            to_probe.append(target)
            if entry["owner"] != "binfmtd":
                kept[target.name] = (f"entry {entry['name']} of another tool ({entry['interpreter']}, "
                                     f"flags {entry['flags'] or '-'}) left in place")
    results = probe(run, tuple(to_probe))
    for target in to_probe:
        result = results[target.name]
        if result["ok"]:
            say(target, True, f"kept: {kept[target.name]}" if target.name in kept else "")
        else:
            run.failed = True
            detail = f"{result['cause']}; fix: {result['fix']}"
            if target.name in kept:
                detail = f"{kept[target.name]}, and it does not work ({result['cause']}); fix: {replace_hint(target)}"
            say(target, False, detail)


def remove_entries(run: Run, patterns: list[str], say) -> None:
    """Remove the entries `patterns` name (entry names, globs such as qemu-*, targets, platforms),
    whoever registered them: the user asked for them by name."""
    from binfmtd import commands
    from binfmtd.facts.host import read_binfmt_misc, read_host

    present = [e.name for e in read_binfmt_misc(run.mount).entries]
    for pattern in patterns:
        target = lookup(pattern) if not any(c in pattern for c in "*?[") else None
        if target:
            matches = [target.entry_name] if target.entry_name in present else []
        else:
            matches = [n for n in present if fnmatch.fnmatchcase(n, pattern) or n.endswith(f"-{pattern}")]
        if not matches:
            say(pattern, True, "not found")
            continue
        for name in matches:
            known = lookup(name)
            if known and known.entry_name == name:
                report = commands.remove([known.name], force=True, binfmt_misc=run.mount)
                message = report.errors[0]["message"] if report.errors else ""
            else:  # not a QEMU target's entry (e.g. matched by a glob): remove it as it is
                message = _unregister(run.mount, name)
            if message:
                run.failed = True
            say(name, not message, message)
            present.remove(name)


def _unregister(path: str, name: str) -> str:
    from binfmtd.act import unregister
    from binfmtd.state.files import locked, state_dir_from_env

    try:
        with locked(state_dir_from_env()):
            unregister(path, name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"cannot remove the entry ({exc.strerror})"
    return ""


def status(run: Run) -> dict:
    """tonistiigi's status: platforms this host runs now (native first, then each emulated one
    whose probe passed) and the names of the enabled entries."""
    from binfmtd.facts.host import read_binfmt_misc, read_host

    table = read_binfmt_misc(run.mount)
    native = set(run.native)
    emulated = tuple(t for t in TARGETS if t.platform and t.name not in native
                     and any(e.enabled and e.claims(t.magic) for e in table.entries))
    try:
        results = probe(run, emulated) if emulated and table.enabled else {}
    except HostUnsupported as exc:  # nothing verified: report the native platforms alone
        log(f"warning: emulated platforms are not listed, none could be verified: {exc}")
        results = {}
    order = [t for t in TARGETS if t.name in native] + \
        [t for t in emulated if t.name in results and results[t.name]["ok"]]
    native_first = sorted(order, key=lambda t: (t.name not in native, t.name != os.uname().machine))
    supported = [p for t in native_first for p in t.platforms if p not in STATUS_ALIASES]
    return {"supported": supported, "emulators": [e.name for e in table.entries if e.enabled]}


# --- tonistiigi/binfmt ---

@dataclass
class TonistiigiArgs:
    install: str = ""
    uninstall: str = ""
    version: bool = False
    mount: str = DEFAULT_MOUNT


def parse_tonistiigi(argv: list[str]) -> TonistiigiArgs:
    """Go's flag package: -name or --name, value after `=` or as the next argument."""
    args = TonistiigiArgs()
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if not arg.startswith("-"):
            break  # Go's flag stops at the first non-flag; tonistiigi ignores the rest
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in TONISTIIGI_OPTIONS:
            raise UsageError(f"flag provided but not defined: -{name}; the flags are --install, --uninstall, "
                             "--version and --mount (binfmtd's own commands: --help)")
        if name == "version":
            args.version = value.lower() not in ("false", "0") if has_value else True
            continue
        if not has_value:
            if not rest:
                raise UsageError(f"flag needs an argument: -{name}")
            value = rest.pop(0)
        setattr(args, name, value)
    return args


def run_tonistiigi(argv: list[str]) -> int:
    args = parse_tonistiigi(argv)
    if args.version:
        log(version_line())
        return EXIT_OK
    if os.environ.get("QEMU_BINARY_PREFIX"):
        raise UsageError("QEMU_BINARY_PREFIX is not supported: binfmtd names its entries qemu-<target> "
                         "(as tonistiigi/binfmt does without it); unset it")
    install_names = [n for n in args.install.split(",") if n]
    targets = None if [n.lower() for n in install_names] == ["all"] else resolve_names(install_names)
    run = Run(args.mount)
    ensure_mounted(run.mount)
    uninstall = [n for n in args.uninstall.split(",") if n]
    if uninstall:
        remove_entries(run, uninstall, lambda name, ok, detail:
                       log(f"uninstalling: {name} {'OK' if ok and detail != 'not found' else detail}"))
    if targets is None or targets:
        flags = "POCF" if os.environ.get("QEMU_PRESERVE_ARGV0") else "OCF"  # tonistiigi's: CF, P on request

        def say(target: Target, ok, detail: str) -> None:
            word = {True: "OK", False: "failed:", None: "skipped:"}[ok]
            log(f"installing: {display_name(target)} {word}{' ' + detail if detail else ''}".rstrip())

        install(run, targets, flags, say, lambda target: f"replace it: --uninstall {target.entry_name} "
                f"--install {display_name(target)} (setup-qemu-action: reset: true)")
    print(json.dumps(status(run), indent=2))
    return EXIT_FAILED if run.failed else EXIT_OK


def version_line() -> str:
    from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS, find_interpreter, qemu_version

    emulator = find_interpreter("aarch64", DEFAULT_INTERPRETER_DIRS) or find_interpreter("x86_64")
    return f"binfmt/binfmtd-{__version__} qemu/{(emulator and qemu_version(emulator)) or 'none'}"


# --- multiarch/qemu-user-static ---

MULTIARCH_FLAGS = {"-p": "F", "--persistent": "F", "-c": "OC", "--credential": "OC",
                   "-g": "P", "--preserve-argv0": "P"}


def parse_multiarch(argv: list[str]) -> tuple[bool, str]:
    """(reset, flags) from the register script's arguments."""
    reset, flags = False, ""
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        option, has_value, value = arg.partition("=")
        if option == "--reset":
            reset = True
            continue
        if option not in MULTIARCH_FLAGS:
            raise UsageError(f"unknown option {arg!r}; this image takes --reset, -p|--persistent yes|no, "
                             "-c|--credential yes|no, -g|--preserve-argv0 yes|no (binfmtd's own commands: --help)")
        if not has_value:
            value = rest.pop(0) if rest else ""
        if value not in ("yes", "no"):
            raise UsageError(f"{option} needs yes or no, got {value!r}")
        if value == "yes":
            flags += MULTIARCH_FLAGS[option]
    return reset, flags


def run_multiarch(argv: list[str]) -> int:
    reset, flags = parse_multiarch(argv)
    run = Run()
    ensure_mounted(run.mount)
    if reset:  # every qemu-* entry, whoever registered it: --reset asks for that
        remove_entries(run, ["qemu-*"], lambda name, ok, detail:
                       log(f"Removing {name}: {'OK' if ok else detail}") if detail != "not found" else None)
    if "F" not in flags:
        log("warning: without -p yes the entries lack the F flag: the kernel looks for the emulator inside each "
            "container, where it is not; the probes will fail")

    def say(target: Target, ok, detail: str) -> None:
        if ok:
            log(f"Setting {target.entry_name} as binfmt interpreter for {target.name}: OK"
                + (f" ({detail})" if detail else ""))
        elif ok is None:
            log(f"Skipping {target.name}: {detail}")
        else:
            if "F" not in flags and "lacks the F flag" in detail:
                detail = detail.split("; fix:")[0] + "; fix: run with -p yes"
            log(f"Setting {target.entry_name} as binfmt interpreter for {target.name}: failed: {detail}")

    install(run, None, flags, say, lambda target: "replace it: --reset")
    return EXIT_FAILED if run.failed else EXIT_OK


# --- entry point ---

def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    language = language_of(argv)
    if language == "binfmtd":
        from binfmtd.__main__ import main as binfmtd_main

        sys.argv = ["binfmtd", *argv]
        binfmtd_main()
        return
    if language == "help":
        print(HELP, end="")
        sys.exit(EXIT_OK)
    try:
        sys.exit(run_tonistiigi(argv) if language == "tonistiigi" else run_multiarch(argv))
    except BinfmtdError as exc:
        log(f"error: {exc}")
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)


if __name__ == "__main__":
    main()
