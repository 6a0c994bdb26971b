"""multiarch/qemu-user-static's language (its `register` script, QEMU's qemu-binfmt-conf.sh):
`--reset`, `-p|--persistent yes|no`, `-c|--credential yes|no`, `-g|--preserve-argv0 yes|no`."""

from __future__ import annotations

from binfmtd.compat.run import Run, ensure_mounted, install, log, remove_entries
from binfmtd.errors import EXIT_FAILED, EXIT_OK, UsageError
from binfmtd.targets import Target

MULTIARCH_OPTIONS = ("--reset", "-p", "--persistent", "-c", "--credential", "-g", "--preserve-argv0")
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
