"""`python3 -I -m binfmtd.compat ARGS`, the image's entrypoint: the first argument picks the
language (binfmtd.compat says which), and every error becomes one line and an exit code here."""

from __future__ import annotations

import sys

from binfmtd import __version__
from binfmtd.compat.multiarch import MULTIARCH_OPTIONS, run_multiarch
from binfmtd.compat.run import log
from binfmtd.compat.tonistiigi import TONISTIIGI_OPTIONS, run_tonistiigi
from binfmtd.errors import EXIT_OK, EXIT_USAGE, BinfmtdError

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
