"""Entry point of the `binfmtd` command: the boot path for plain `apply`, `daemon` and the JSON
queries, else the full CLI."""

import sys


def main() -> None:
    from binfmtd.cli.boot import parse_apply, parse_daemon, parse_query, run_apply, run_query

    options = parse_apply(sys.argv[1:])
    if options is not None:
        sys.exit(run_apply(options))
    options = parse_query(sys.argv[1:])
    if options is not None:
        sys.exit(run_query(options))
    options = parse_daemon(sys.argv[1:])
    if options is not None:
        from binfmtd.daemon import run_daemon

        sys.exit(run_daemon(options["config_file"]))
    from binfmtd.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
