"""Entry point of the `binfmtd` command: the boot path for plain `apply`, `daemon` and the JSON
queries, else the full CLI."""

import os
import sys

EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE (128 + 13)


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except BrokenPipeError:  # stdout's reader went away (`binfmtd status --json | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit's flush
        sys.exit(EXIT_BROKEN_PIPE)


def run(argv: list[str]) -> int:
    from binfmtd.cli.boot import parse_apply, parse_daemon, parse_query, run_apply, run_query

    if (options := parse_apply(argv)) is not None:
        return run_apply(options)
    if (options := parse_query(argv)) is not None:
        return run_query(options)
    if (options := parse_daemon(argv)) is not None:
        from binfmtd.daemon import run_daemon

        return run_daemon(options["config_file"])
    from binfmtd.cli.app import main as cli_main

    return cli_main()


if __name__ == "__main__":
    main()
