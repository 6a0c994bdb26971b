"""`binfmtd sandbox -- CMD`: a fresh user+mount namespace with its own binfmt_misc instance
(Linux 6.7+), to try a plan without touching the host's table."""

from __future__ import annotations

import os
import shutil

from binfmtd.errors import HostUnsupported
from binfmtd.facts import DEFAULT_BINFMT_MISC, read_kernel

MOUNT_AND_EXEC = f'mount -t binfmt_misc binfmt_misc {DEFAULT_BINFMT_MISC} && exec "$@"'


def sandbox_argv(command: list[str]) -> list[str]:
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
            "sh", "-c", MOUNT_AND_EXEC, "binfmtd-sandbox", *command]


def exec_in_sandbox(command: list[str]) -> None:
    kernel = read_kernel()
    if not kernel.binfmt_misc_per_userns:
        raise HostUnsupported(f"kernel {kernel.release} has one binfmt_misc table for the whole host; a private "
                              "one needs Linux 6.7 or newer")
    if shutil.which("unshare") is None:
        raise HostUnsupported("unshare(1) is missing; install util-linux")
    argv = sandbox_argv(command)
    os.execvp(argv[0], argv)
