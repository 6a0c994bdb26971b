"""The `binfmtd` command line (typer): parses arguments, calls binfmtd.commands and the other
clients, and hands the result to binfmtd.cli.render, the one place that prints results and turns
error types into exit codes. `apply` and `daemon` usually arrive through binfmtd.cli.boot instead.
The modules of verify, export, ps, metrics, daemon and sandbox are imported by their own command
only: each brings its own weight (threads, psutil, dataclasses) that other commands need not pay."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
import typer.core

from binfmtd import __version__
from binfmtd.cli.render import (fail, finish, render_change, render_check, render_export, render_processes,
                                render_status, render_targets, render_text, render_verify, say, wants_json)
from binfmtd.commands import change, check as preflight, status as host_status
from binfmtd.config import ENGINES
from binfmtd.errors import EXIT_USAGE, BinfmtdError
from binfmtd.targets import TARGETS
from binfmtd.verify import spoken

app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Register QEMU user-mode emulators with binfmt_misc, verify them, keep them.")


def _complete_targets(incomplete: str) -> list[str]:
    names = [n for t in TARGETS for n in (t.name, *t.platforms)]
    return [n for n in dict.fromkeys(names) if n.startswith(incomplete)]


def _completer(*values: str):
    return lambda incomplete: [v for v in values if v.startswith(incomplete)]


def _usage(pieces: str) -> type:
    """A command whose usage line reads `binfmtd COMMAND <pieces>` whatever typer's version: typer
    spells a variadic argument `TARGET` (0.7), `[TARGET]...` or `[[TARGET]...]...` (newer)."""
    class Usage(typer.core.TyperCommand):
        def collect_usage_pieces(self, ctx) -> list[str]:
            return [pieces]
    return Usage


WITH_TARGETS = _usage("[OPTIONS] [TARGET]...")
# The argument's own help line would read "TARGET... <list[str]>" (typer prints the Python type):
# each command's help says what TARGET is instead.
TargetsArg = typer.Argument(None, metavar="TARGET", hidden=True, autocompletion=_complete_targets)
FlagsOpt = typer.Option(None, "--flags", metavar="FLAGS", autocompletion=_completer("POCF", "POF", "POC", "OCF", "PF"),
                        help="binfmt_misc flags, letters of POCF (default POCF).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
ConfigOpt = typer.Option(None, "--config", metavar="FILE", help="Config file (default $BINFMTD_CONFIG, "
                         "/etc/binfmtd/binfmtd.toml).")


def _exit(code: int) -> None:
    raise typer.Exit(code)


def _usage_error(message: str, as_json: bool) -> None:
    _exit(fail(message, EXIT_USAGE, as_json))


@app.command(cls=WITH_TARGETS)
def apply(targets: Optional[List[str]] = TargetsArg,
          all_targets: bool = typer.Option(False, "--all", help="Every known target (native ones are skipped)."),
          flags: Optional[str] = FlagsOpt,
          force: bool = typer.Option(False, "--force", help="Take over entries registered by other tools."),
          check: bool = typer.Option(False, "--check", help="Show the plan, change nothing."),
          as_json: bool = JsonOpt, config: Optional[str] = ConfigOpt) -> None:
    """Register the entries (idempotent). With no TARGET: the config's targets, else every non-native one.

    TARGET: a QEMU target or a container platform (aarch64, arm64, linux/arm/v7, riscv64, ...)."""
    _exit(finish(lambda: change.apply(targets or (), all_targets, flags, force, check, config), as_json,
                 render_change, check))


@app.command(cls=WITH_TARGETS)
def remove(targets: Optional[List[str]] = TargetsArg,
           all_targets: bool = typer.Option(False, "--all", help="Every target binfmtd registered."),
           force: bool = typer.Option(False, "--force", help="Also remove qemu-* entries of other tools."),
           check: bool = typer.Option(False, "--check", help="Show the plan, change nothing."),
           as_json: bool = JsonOpt) -> None:
    """Remove binfmtd's entries (others' only with --force); entries it took over are put back.

    TARGET: a QEMU target or a container platform (aarch64, arm64, linux/arm/v7, riscv64, ...)."""
    _exit(finish(lambda: change.remove(targets or (), all_targets, force, check), as_json, render_change, check))


@app.command()
def status(as_json: bool = JsonOpt,
           fmt: str = typer.Option("text", "--format", metavar="text|json|prometheus",
                                   autocompletion=_completer("text", "json", "prometheus"),
                                   help="Output format (--json is --format json).")) -> None:
    """Show binfmt_misc and every registered entry, with its target and owner."""
    if fmt not in ("text", "json", "prometheus"):
        _usage_error(f"--format {fmt!r}: expected text, json or prometheus", as_json)
    if fmt == "prometheus":
        if as_json:  # --json is --format json: two formats for one stdout
            _usage_error("--json and --format prometheus both given; pass one of them", True)
        from binfmtd.metrics import prometheus_text
        from binfmtd.report import TextReport

        _exit(finish(lambda: TextReport(prometheus_text()), False, render_text))
    _exit(finish(host_status.status, as_json or fmt == "json", render_status))


@app.command("ps")
def ps_cmd(as_json: bool = JsonOpt) -> None:
    """List the processes running under emulation: target, PID, user, CPU, RSS, container, command."""
    from binfmtd.commands.ps import processes_report

    _exit(finish(processes_report, as_json, render_processes))


@app.command("check", cls=WITH_TARGETS)
def check_cmd(targets: Optional[List[str]] = TargetsArg, as_json: bool = JsonOpt,
              config: Optional[str] = ConfigOpt) -> None:
    """Preflight: kernel, binfmt_misc, config and interpreters, each with the fix for what fails.

    TARGET: a QEMU target or a container platform (aarch64, arm64, linux/arm/v7, riscv64, ...)."""
    _exit(finish(lambda: preflight.check(targets or (), config), as_json, render_check))


@app.command("targets")
def targets_cmd(as_json: bool = JsonOpt) -> None:
    """List every QEMU target with its container platforms."""
    _exit(finish(host_status.list_targets, as_json, render_targets))


@app.command("verify", cls=WITH_TARGETS)
def verify_cmd(targets: Optional[List[str]] = TargetsArg,
               all_targets: bool = typer.Option(False, "--all", help="Every known target."),
               engine: Optional[str] = typer.Option(None, "--engine", metavar="ENGINE",
                                                    autocompletion=_completer(*ENGINES),
                                                    help=f"Where probes run: {spoken(ENGINES)} (default: the "
                                                    "config's, else auto)."),
               image: Optional[str] = typer.Option(None, "--image", metavar="REF",
                                                   help="Run `uname -m` in this image instead of binfmtd's probe."),
               timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS",
                                                       help="Seconds per probe (default: the config's, else 20)."),
               as_json: bool = JsonOpt, config: Optional[str] = ConfigOpt) -> None:
    """Prove emulation works: run each target's probe and name the cause of every failure.

    With no TARGET: the config's targets, else every target this host does not run natively.

    TARGET: a QEMU target or a container platform (aarch64, arm64, linux/arm/v7, riscv64, ...)."""
    from binfmtd.verify.run import verify

    _exit(finish(lambda: verify(targets or (), all_targets, engine, image, config, timeout), as_json, render_verify))


@app.command(cls=WITH_TARGETS)
def export(targets: Optional[List[str]] = TargetsArg,
           fmt: str = typer.Option(..., "--format", metavar="FORMAT",
                                   autocompletion=_completer("binfmt.d", "binfmt-support"),
                                   help="binfmt.d (systemd-binfmt) or binfmt-support (update-binfmts --import)."),
           dest: str = typer.Option(..., "--dest", metavar="DIR", help="Directory to write the files to."),
           all_targets: bool = typer.Option(False, "--all", help="Every known target (native ones are skipped)."),
           flags: Optional[str] = FlagsOpt,
           as_json: bool = JsonOpt, config: Optional[str] = ConfigOpt) -> None:
    """Write the entries apply would register as files for systemd-binfmt or binfmt-support.

    Files of the same name that binfmtd did not write (qemu-user-static's /usr/share/binfmts/qemu-*)
    are never overwritten: export to a directory of its own and import with update-binfmts --importdir.

    TARGET: a QEMU target or a container platform (aarch64, arm64, linux/arm/v7, riscv64, ...)."""
    from binfmtd.commands.export import export_entries

    _exit(finish(lambda: export_entries(fmt, dest, targets or (), all_targets, flags, config), as_json, render_export))


@app.command()
def daemon(config: Optional[str] = ConfigOpt) -> None:
    """Apply the config, then keep the host there: repair drift, reload on SIGHUP (for systemd)."""
    from binfmtd.daemon import run_daemon

    _exit(run_daemon(config))


@app.command(cls=_usage("[OPTIONS] -- COMMAND [ARG]..."),
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox(command: List[str] = typer.Argument(..., metavar="COMMAND", hidden=True)) -> None:
    """Run COMMAND in a user+mount namespace with its own binfmt_misc and state directory (Linux 6.7+).

    Nothing COMMAND registers reaches the host's table, nor its state:

    \b
      binfmtd sandbox -- sh -c 'binfmtd apply arm64 && binfmtd verify arm64 --engine sandbox'"""
    from binfmtd.namespaces import run_in_sandbox

    try:
        code = run_in_sandbox(command, say)
    except BinfmtdError as exc:  # COMMAND's own output is the sandbox's: no report to finish()
        code = fail(str(exc), exc.exit_code, as_json=False)
    _exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"binfmtd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version.")) -> None:
    pass


SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _completion_for_named_shell(argv: list[str]) -> bool:
    """`--show-completion zsh` and `--install-completion zsh`: typer's options take no value and
    use the shell they detect, so `zsh` would be ignored when typed in bash. Handled here."""
    if len(argv) != 2 or argv[0] not in ("--show-completion", "--install-completion") or argv[1] not in SHELLS:
        return False
    from typer.completion import get_completion_script, install

    if argv[0] == "--show-completion":
        print(get_completion_script(prog_name="binfmtd", complete_var="_BINFMTD_COMPLETE", shell=argv[1]))
    else:
        shell, path = install(shell=argv[1], prog_name="binfmtd", complete_var="_BINFMTD_COMPLETE")
        print(f"{shell} completion installed in {path}; it takes effect in a new shell")
    return True


def _parser_errors() -> tuple[type, type]:
    """click's UsageError and ClickException as this typer raises them (its own copy of click in
    recent versions, click itself before), found through the public typer.BadParameter."""
    bases = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    return bases["UsageError"], bases["ClickException"]


def main() -> None:
    """Run the CLI. A command line the parser rejects (before any command runs) is answered like
    every usage error: one line on stderr, the error object with --json, exit 2."""
    argv = sys.argv[1:]
    if _completion_for_named_shell(argv):
        return
    usage_error, click_error = _parser_errors()
    try:
        code = app(args=argv, prog_name="binfmtd", standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `binfmtd` alone: the help, as always
            exc.show()
            code = exc.exit_code
        else:
            where = f"; `{exc.ctx.command_path} --help` shows the usage" if exc.ctx else ""
            code = fail(" ".join(exc.format_message().split()).rstrip(".") + where, EXIT_USAGE, wants_json(argv))
    except click_error as exc:
        code = fail(" ".join(exc.format_message().split()), exc.exit_code, wants_json(argv))
    sys.exit(code or 0)
