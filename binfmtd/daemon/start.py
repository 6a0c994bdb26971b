"""`binfmtd daemon`'s entry point: load the config, note the boot, start the loop, and map
what stops it to an exit code."""

from __future__ import annotations

import json
import os

from binfmtd.config import resolve_paths
from binfmtd.facts.host import BOOT_ID, read_boot_id
from binfmtd.daemon.loop import Daemon, describe_config, load_settings
from binfmtd.daemon.systemd import ERR, INFO, Log, Notifier, Signals
from binfmtd.errors import EXIT_USAGE, BinfmtdError, UsageError
from binfmtd.state.files import BOOT_FILE, open_state_dir, read_record, write_record

# -- boot detection ------------------------------------------------------------------------------

def note_boot(state_dir: str) -> tuple[str, str | None]:
    """This boot's id and the one the last start stored (None: never started here), storing
    this one atomically for the next start."""
    boot = read_boot_id()
    open_state_dir(state_dir)
    previous = read_record(state_dir, BOOT_FILE)
    previous = previous if isinstance(previous, str) else None
    if boot and boot != previous:
        write_record(state_dir, BOOT_FILE, json.dumps(boot))
    return boot, previous


def boot_message(boot: str, previous: str | None) -> str:
    if not boot:
        return f"cannot read {BOOT_ID}; not telling a reboot from a restart"
    if previous == boot:
        return f"restarted within the same boot {boot}"
    return f"first start since boot {boot}" + (f" (previous start: boot {previous})" if previous else "")


def run_daemon(config_file: str | None, binfmt_misc: str | None = None, state_dir: str | None = None) -> int:
    """Apply the config, then keep the host there until SIGTERM/SIGINT; the exit code."""
    log = Log()
    notify = Notifier(os.environ.get("NOTIFY_SOCKET"), log)
    path, state_dir = resolve_paths(binfmt_misc, state_dir)
    try:
        settings = load_settings(config_file)
    except UsageError as exc:
        log(ERR, str(exc))
        notify.close()
        return EXIT_USAGE
    try:
        with Signals() as signals:
            try:
                log(INFO, boot_message(*note_boot(state_dir)))
            except OSError as exc:
                log(ERR, f"cannot use state directory {state_dir} ({exc.strerror}); "
                         "set BINFMTD_STATE_DIR to a directory root can write")
                return BinfmtdError.exit_code
            except BinfmtdError as exc:
                log(ERR, str(exc))
                return exc.exit_code
            daemon = Daemon(settings, path, state_dir, log, notify)
            log(INFO, f"started: config {describe_config(settings)}, binfmt_misc {path}, state {state_dir}, "
                      f"checking every {settings.daemon_interval:g}s"
                      + (f", watchdog ping every {daemon.watchdog:g}s" if daemon.watchdog else ""))
            return daemon.run(config_file, signals)
    finally:
        notify("STOPPING=1")
        notify.close()
