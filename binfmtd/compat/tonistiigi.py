"""tonistiigi/binfmt's language (what docker/setup-qemu-action drives): Go's flags `--install`,
`--uninstall`, `--version`, `--mount`; status JSON on stdout, `installing: arm64 OK` on stderr."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from binfmtd import __version__
from binfmtd.compat.run import Run, ensure_mounted, install, log, probe, remove_entries, resolve_names
from binfmtd.errors import EXIT_FAILED, EXIT_OK, HostUnsupported, UsageError
from binfmtd.facts.host import DEFAULT_BINFMT_MISC, read_binfmt_misc
from binfmtd.facts.interpreters import DEFAULT_INTERPRETER_DIRS, find_interpreter, qemu_version
from binfmtd.targets import TARGETS, Target

TONISTIIGI_OPTIONS = ("install", "uninstall", "version", "mount")
# Platforms the status leaves out because another name of the same platform is listed (the
# normalized forms containerd prints: arm64/v8 is arm64, arm is arm/v7; buildkit lists no v5).
STATUS_ALIASES = {"linux/arm64/v8", "linux/arm", "linux/arm/v5",
                  "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4"}


def display_name(target: Target) -> str:
    """The name tonistiigi's logs use: the platform's architecture (arm64, arm, 386), else QEMU's."""
    return target.platform.split("/")[1] if target.platform else target.name


def status(run: Run) -> dict:
    """tonistiigi's status: platforms this host runs now (native first, then each emulated one
    whose probe passed) and the names of the enabled entries."""
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


@dataclass
class TonistiigiArgs:
    install: str = ""
    uninstall: str = ""
    version: bool = False
    mount: str = DEFAULT_BINFMT_MISC


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
    emulator = find_interpreter("aarch64", DEFAULT_INTERPRETER_DIRS) or find_interpreter("x86_64")
    return f"binfmt/binfmtd-{__version__} qemu/{(emulator and qemu_version(emulator)) or 'none'}"
