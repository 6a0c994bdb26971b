"""`binfmtd sandbox -- CMD`: run CMD in a fresh user+mount namespace with its own binfmt_misc
instance (Linux 6.7+) and its own state directory, to try a plan without touching the host: the
host's table, state file, native.json and lock are neither read nor written from inside.

Started by root, the namespace maps every uid and gid the caller has to itself (root may write
any map into a child's uid_map), so chown, setgroups, apt and dpkg work inside; started by
another user, only root inside (the caller outside) is mapped, as `unshare --map-root-user` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

from binfmtd.errors import HostUnsupported
from binfmtd.facts.host import DEFAULT_BINFMT_MISC, read_kernel
from binfmtd.state.files import DEFAULT_STATE_DIR, state_dir_from_env

EXIT_SETUP = 3  # the namespace could not be set up (as for "the host cannot do this")

# Runs as the namespace's first process. $1: the private state directory, $2: how many host state
# directories to hide, then those, then COMMAND. With BINFMTD_SANDBOX_PIPES="GO READY" (two fds)
# it first tells the parent on READY that the namespace exists and waits on GO until the parent
# has written the id maps.
SETUP = f"""
fail() {{ echo "binfmtd: error: sandbox: $1" >&2; exit {EXIT_SETUP}; }}
if [ -n "${{BINFMTD_SANDBOX_PIPES:-}}" ]; then
  set -- $BINFMTD_SANDBOX_PIPES "$@"; unset BINFMTD_SANDBOX_PIPES
  eval "echo >&$2; exec $2>&-"
  eval "read -r answer <&$1; exec $1<&-"
  [ "$answer" = mapped ] || fail "the parent did not map the ids"
  shift 2
fi
mount -t binfmt_misc binfmt_misc {DEFAULT_BINFMT_MISC} || fail "cannot mount a private binfmt_misc"
state=$1; hide=$2; shift 2
mount -t tmpfs -o mode=0755,size=16m binfmtd-state "$state" || fail "cannot mount the state directory $state"
while [ "$hide" -gt 0 ]; do
  mount --bind "$state" "$1" || fail "cannot hide the host's state directory $1"
  shift; hide=$((hide - 1))
done
exec "$@"
"""


def identity_map(parent_map: str) -> str:
    """A uid_map/gid_map for a child namespace that maps every id this namespace has to itself."""
    lines = []
    for line in parent_map.splitlines():
        inside, _outside, count = line.split()
        lines.append(f"{inside} {inside} {count}")
    return "\n".join(lines) + "\n"


def host_state_dirs() -> list[str]:
    """The host's state directories that exist, to hide inside: nothing in there is the sandbox's."""
    found = []
    for path in (state_dir_from_env(), DEFAULT_STATE_DIR):
        real = os.path.realpath(path)
        if os.path.isdir(real) and real not in found:
            found.append(real)
    return found


# With `isolated`, a probe also gets its own PID namespace (--fork: the probe, not unshare, is its
# first process), network, IPC and host name: nothing of the host's but the binfmt_misc table.
ISOLATED = ("--pid", "--fork", "--net", "--ipc", "--uts")


def unshare_argv(command: list[str], map_root_user: bool = True, isolated: bool = False) -> list[str]:
    """unshare(1)'s command line running `command` in a new user and mount namespace: the one recipe
    for the sandbox, the native probe and verify's sandbox. `map_root_user`: root inside is the
    caller outside (False: the parent writes the id maps). Mounts made inside never propagate out
    (unshare's default since util-linux 2.27, said explicitly)."""
    ids = ["--map-root-user"] if map_root_user else []
    return ["unshare", "--user", *ids, "--mount", *(ISOLATED if isolated else ()), "--propagation", "private",
            *command]


def sandbox_argv(command: list[str], state_dir: str, hide: list[str], map_all: bool) -> list[str]:
    return unshare_argv(["sh", "-c", SETUP, "binfmtd-sandbox", state_dir, str(len(hide)), *hide, *command],
                        map_root_user=not map_all)


def run_in_sandbox(command: list[str], say) -> int:
    """COMMAND's exit code; `say(kind, message)` tells the operator (binfmtd.cli.render.say)."""
    kernel = read_kernel()
    if not kernel.binfmt_misc_per_userns:
        raise HostUnsupported(f"kernel {kernel.release} has one binfmt_misc table for the whole host; a private "
                              "one needs Linux 6.7 or newer")
    if shutil.which("unshare") is None:
        raise HostUnsupported("unshare(1) is missing; install util-linux")
    map_all = os.geteuid() == 0
    # An empty directory on the host, a tmpfs inside: what COMMAND writes there goes with it. Root
    # makes it in /run, whose every component only root controls (as a state directory's must).
    state_dir = tempfile.mkdtemp(prefix="binfmtd-sandbox-", dir="/run" if map_all and os.path.isdir("/run") else None)
    try:
        say("sandbox", f"binfmt_misc on {DEFAULT_BINFMT_MISC} and state directory {state_dir} are private to "
            "COMMAND and vanish with it; " + ("every uid and gid maps to the host's own" if map_all else
                                              "only root is mapped (run as root to map every uid and gid)"))
        return _run(command, state_dir, map_all, say)
    finally:
        try:
            os.rmdir(state_dir)
        except OSError:
            pass


def _run(command: list[str], state_dir: str, map_all: bool, say) -> int:
    env = {**os.environ, "BINFMTD_STATE_DIR": state_dir}
    argv = sandbox_argv(command, state_dir, host_state_dirs(), map_all)
    if not map_all:
        proc = subprocess.Popen(argv, env=env)
        _pass_signals(proc)
    else:
        go_read, go_write = os.pipe()
        ready_read, ready_write = os.pipe()
        env["BINFMTD_SANDBOX_PIPES"] = f"{go_read} {ready_write}"
        try:
            proc = subprocess.Popen(argv, env=env, pass_fds=(go_read, ready_write))
            _pass_signals(proc)
        finally:
            os.close(go_read)
            os.close(ready_write)
        with os.fdopen(ready_read, "rb") as ready, os.fdopen(go_write, "wb") as go:
            if ready.readline():  # the namespace exists (EOF: the child failed before)
                try:
                    _write_maps(proc.pid)
                    go.write(b"mapped\n")
                except OSError as exc:
                    say("error", f"sandbox: cannot map the ids ({exc.strerror}); run as root or use unshare(1)")
    code = proc.wait()
    return 128 - code if code < 0 else code


def _pass_signals(proc: subprocess.Popen) -> None:
    """The terminal sends ^C to COMMAND too, and COMMAND decides; a signal sent to binfmtd alone
    is passed on. Set after the start, so COMMAND does not inherit an ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: proc.send_signal(number))


def _write_maps(pid: int) -> None:
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/self/{name}") as f:
            mapping = identity_map(f.read())
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(mapping)
