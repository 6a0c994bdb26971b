"""One exception tree. Library code raises these; only binfmtd.cli.render turns them into exit codes."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3


class BinfmtdError(Exception):
    """Something failed; the message names the thing, the reason and the fix."""

    exit_code = EXIT_FAILED


class UsageError(BinfmtdError):
    """Bad input: unknown target, bad flags, invalid config."""

    exit_code = EXIT_USAGE


class HostUnsupported(BinfmtdError):
    """The host cannot do this at all: kernel too old, no binfmt_misc, not permitted."""

    exit_code = EXIT_UNSUPPORTED
