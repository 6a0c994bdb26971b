"""The daemon's policy: the loop that applies the config, watches the table for drift,
repairs it, reloads on SIGHUP, removes the targets a reload dropped and refreshes the metrics
textfile. The overview is binfmtd.daemon's docstring."""

from __future__ import annotations

import os
import signal
import time

from binfmtd.commands.change import ChangeReport, apply, remove
from binfmtd.config import Config, desired_targets, load_config, settings_from
from binfmtd.daemon.drift import Watch, find_drift, read_table, stamp_emulators, table_problems, watch_from_report
from binfmtd.daemon.systemd import ERR, INFO, NOTICE, WARNING, Log, Notifier, Signals, watchdog_period
from binfmtd.errors import EXIT_OK, BinfmtdError, HostUnsupported, UsageError
from binfmtd.state.files import READY_FILE, touch_record
from binfmtd.state.ledger import State, load_state

DEFAULTS = Config("")
LOCK_TIMEOUT = 5.0  # seconds an apply waits for another binfmtd's lock before retrying later
RETRY_MAX = 300.0  # seconds between applies while targets fail: interval (1 s at least), doubling
METRICS_REFRESH = 15.0  # seconds between textfile rewrites while idle (emulated processes change)


# -- config -------------------------------------------------------------------------------------

def load_settings(config_file: str | None) -> Config:
    """The config the daemon keeps in force (defaults when there is no file); UsageError names
    the file and line of anything wrong in it."""
    return load_config(config_file) or DEFAULTS


def describe_config(config: Config) -> str:
    return config.path or "no config file (defaults)"


def config_targets(config: Config) -> set[str]:
    """The targets a config asks for (no list: all of them; the native ones are skipped)."""
    return {t.name for t in desired_targets((), False, config, native=())[0]}


# -- the loop -------------------------------------------------------------------------------------

class Daemon:
    """The loop's state: the settings in force, the desired state the last apply established,
    targets dropped from the config still to remove, the retry schedule and what was last
    logged and told systemd."""

    def __init__(self, settings: Config, path: str, state_dir: str, log: Log, notify: Notifier, environ=None):
        self.settings, self.path, self.state_dir, self.log, self.notify = settings, path, state_dir, log, notify
        self.watchdog = watchdog_period(environ if environ is not None else os.environ)
        self.watch = Watch()
        self.failed = False  # the last apply could not run at all: its retry re-reads everything
        self.dropped: set[str] = set()  # targets a reload dropped from the config, to remove if binfmtd's
        self.removal_errors: dict[str, str] = {}  # entry name -> why removing it failed
        self.retry_delay = 0.0
        self.retry_at: float | None = None
        self.reported: set[tuple[int, str]] = set()  # the problems and notes logged and still true
        self.apply_problems: set[tuple[int, str]] = set()  # those the last apply found
        self.repairs = 0
        self.metrics_written = 0.0  # monotonic time of the last textfile write
        self.status = ""
        self.ready = False  # STATUS= goes out with READY=1 first
        self.next_tick = 0.0  # monotonic time of the next tick

    def interpreter_dirs(self) -> tuple[str, ...]:
        return settings_from(self.settings, binfmt_misc=self.path, state_dir=self.state_dir).interpreter_dirs

    def apply(self, why: str, reclaim=()) -> int | None:
        """Remove the dropped targets and apply the config in force, then take the desired state
        from the result; an exit code if the host cannot do it at all. Problems are logged when
        they appear, not on every retry. `reclaim`: binfmtd's entries someone changed."""
        started = time.monotonic()
        dir_stamps = stamp_emulators((), self.interpreter_dirs())  # before: a change during the apply counts
        try:
            # a short lock wait: a long one would starve the watchdog pings
            removed = self._remove_dropped()
            report = apply(config=self.settings, binfmt_misc=self.path, state_dir=self.state_dir,
                                    lock_timeout=LOCK_TIMEOUT, reclaim=tuple(sorted(reclaim)))
        except HostUnsupported as exc:
            self.log(ERR, str(exc))
            return exc.exit_code
        except (BinfmtdError, OSError) as exc:  # lock held too long, state unwritable, ...: retry
            self.failed = True
            self.apply_problems = {(ERR, str(exc))}
            self._report(self.apply_problems)
            self._schedule_retry()
            self._set_status(f"apply failed, retry in {self.retry_delay:g}s: {exc}")
            return None
        self.failed = False
        table = read_table(self.path, self.interpreter_dirs(), dir_stamps)
        self.watch = watch_from_report(report, self._state(), table.status)
        self.watch.emulators = table.emulators
        self._log_changes(why, report, removed, (time.monotonic() - started) * 1000)
        self.apply_problems = self._problems_of(report)
        self._report(self.apply_problems | table_problems(table, self.path))
        self._keep(report)
        return None

    def _log_changes(self, why: str, report: ChangeReport, removed: int, elapsed_ms: float) -> None:
        """One line per entry the apply changed, then one for the apply (none for a quiet start)."""
        changed = [r for r in report.results if r.action not in ("unchanged", "skipped")]
        for r in changed:
            self.log(NOTICE, f"{r.name} {r.action} ({r.reason})")
        if removed or report.changed:
            if why == "repair":
                self.repairs += 1
            count = removed + len(changed)
            self.log(NOTICE, f"{why}: {count} entr{'y' if count == 1 else 'ies'} changed in {elapsed_ms:.0f} ms"
                             if count else f"{why}: mounted binfmt_misc on {self.path} in {elapsed_ms:.0f} ms")
        elif why != "start":
            self.log(INFO, f"{why}: nothing to change")

    def _problems_of(self, report: ChangeReport) -> set[tuple[int, str]]:
        """What the apply (and the removal before it, and the textfile after it) found wrong or
        left alone, logged once while it holds."""
        failing = {e.target for e in report.errors}
        problems = {(WARNING, w) for w in report.warnings} | {(ERR, e.message) for e in report.errors}
        # what binfmtd leaves and why, once while it holds: native targets, no QEMU, others' entries
        problems |= {(NOTICE if r.name in self.watch.held else INFO, f"{r.name} skipped ({r.reason})")
                     for r in report.results if r.action == "skipped" and r.target not in failing}
        problems |= {(ERR, f"no longer in the config, but not removed: {message}")
                     for message in self.removal_errors.values()}
        if textfile := self.settings.daemon_textfile:
            problems |= self._write_metrics(textfile)
        return problems

    def _keep(self, report: ChangeReport) -> None:
        """After an apply: the retry schedule while something fails, and systemd's STATUS=."""
        kept = [r.name for r in report.results if r.action in ("registered", "replaced", "unchanged")]
        if report.errors or self.dropped:
            self._schedule_retry()
            self._set_status(f"keeping {len(kept)} entries; {len(report.errors) + len(self.dropped)} failing, "
                             f"retry in {self.retry_delay:g}s (SIGHUP retries now)")
        else:
            self.retry_delay, self.retry_at = 0.0, None
            self._set_status(f"keeping {len(kept)} entries ({', '.join(kept) or 'none'})"
                             + (f"; {self.repairs} drifts repaired" if self.repairs else ""))

    def _state(self) -> State:
        """binfmtd's record of what it registered (just saved by the apply under the lock)."""
        try:
            return load_state(self.state_dir)
        except BinfmtdError:  # the next apply reports it; meanwhile treat nothing as binfmtd's
            return State()

    def _remove_dropped(self) -> int:
        """Remove the targets a reload dropped from the config, where binfmtd owns the entry
        (a taken-over original is put back, as `binfmtd remove` does); others' entries stay,
        and the log says so. A target that failed stays pending and is retried. Returns how
        many entries were removed (logged here: the apply after it may still fail)."""
        self.removal_errors = {}
        if not self.dropped:
            return 0
        report = remove(sorted(self.dropped), binfmt_misc=self.path, state_dir=self.state_dir,
                                 lock_timeout=LOCK_TIMEOUT)
        self.removal_errors = {e.target: e.message for e in report.errors}
        self.dropped = set(self.removal_errors)
        removed = 0
        for r in report.results:
            if r.target in self.dropped:
                continue
            if r.action == "removed":
                removed += 1
                self.log(NOTICE, f"{r.name} removed (no longer in the config; {r.reason})")
            elif r.action == "skipped":
                self.log(NOTICE, f"{r.name} left in place: no longer in the config, but {r.reason}")
        return removed

    def _write_metrics(self, textfile: str) -> set[tuple[int, str]]:
        """The [daemon] textfile for node_exporter, rewritten after each apply; a problem if not."""
        from binfmtd.metrics import prometheus_text, write_textfile

        self.metrics_written = time.monotonic()
        try:
            write_textfile(textfile, prometheus_text(self.path, self.state_dir))
        except (OSError, BinfmtdError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return {(WARNING, f"cannot write the metrics textfile {textfile} ({reason}); check that its "
                              "directory exists and is writable (ReadWritePaths= under systemd)")}
        return set()

    def _report(self, problems: set[tuple[int, str]]) -> None:
        for priority, message in sorted(problems - self.reported):
            self.log(priority, message)
        self.reported = problems

    def _schedule_retry(self) -> None:
        self.retry_delay = min(RETRY_MAX, max(1.0, self.settings.daemon_interval, self.retry_delay * 2))
        self.retry_at = time.monotonic() + self.retry_delay

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            if self.ready:
                self.notify(f"STATUS={status}")

    def reload(self, config_file: str | None) -> int | None:
        """SIGHUP: a good config is applied at once, and the targets it dropped are removed where
        binfmtd owns them; a broken one is logged and changes nothing."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            settings = load_settings(config_file)
        except UsageError as exc:
            self.log(ERR, f"reload: {exc}; keeping the config in force ({describe_config(self.settings)})")
            self.status = f"{self.status}; last reload failed: {exc}"  # shown until the next change
            self.notify("READY=1", f"STATUS={self.status}")
            return None
        wanted = config_targets(settings)
        self.dropped = (self.dropped | config_targets(self.settings)) - wanted
        self.settings = settings
        self.log(INFO, f"reload: config {describe_config(settings)}, checking every {settings.daemon_interval:g}s")
        self.reported = set()
        code = self.apply("reload")
        self.notify("READY=1", f"STATUS={self.status}")
        return code

    def tick(self) -> int | None:
        """The idle path: read the table and compare it with the desired state; an apply only
        if that finds something to repair. No probe, no subprocess, no state file."""
        if self.failed:
            return None  # the scheduled retry re-reads everything
        table = read_table(self.path, self.interpreter_dirs())
        drift = find_drift(table, self.watch, self.path)
        if not drift.changes:
            self.mark_ready()
            textfile = self.settings.daemon_textfile
            if textfile and time.monotonic() - self.metrics_written >= METRICS_REFRESH:
                self._report(self.reported | self._write_metrics(textfile))
            return None
        self.log(NOTICE, "drift: " + "; ".join(drift.changes))
        for name, why in drift.left.items():
            self.log(NOTICE, f"{name} left as it is: {why}")
            self.watch.hold(name)
        code = None
        if drift.repair:
            code = self.apply("repair", drift.reclaim)
        else:  # nothing to repair: the admin's switch, or others' changes to their own entries
            self.watch.status = table.status
            self._report(self.apply_problems | table_problems(table, self.path))
        self.mark_ready()
        return code

    def mark_ready(self) -> None:
        """Touch <state>/daemon.ready while the host is as configured: a readiness signal for
        probes that cannot speak sd_notify (a Kubernetes DaemonSet's); stale means not keeping up."""
        if self.retry_at is not None:
            return
        try:
            touch_record(self.state_dir, READY_FILE)
        except OSError:
            pass

    def run(self, config_file: str | None, signals: Signals) -> int:
        code = self.apply("start")
        if code is not None:
            return code
        self.ready = True
        self.mark_ready()
        self.notify("READY=1", f"STATUS={self.status}")
        self.log(INFO, f"ready: {self.status}")
        self.next_tick = time.monotonic() + self.settings.daemon_interval
        next_ping = time.monotonic() if self.watchdog else None
        while True:
            if next_ping is not None and time.monotonic() >= next_ping:
                self.notify("WATCHDOG=1")
                next_ping = time.monotonic() + self.watchdog
            due = min(t for t in (self.next_tick, next_ping, self.retry_at) if t is not None)
            code = self._on_signals(signals.wait(due - time.monotonic()), config_file)
            if code is None:
                code = self._due_work()
            if code is not None:
                return code

    def _on_signals(self, signums: list[int], config_file: str | None) -> int | None:
        """SIGTERM/SIGINT stop the loop, SIGHUP reloads; the exit code if the loop is to end."""
        for signum in signums:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log(INFO, f"stopping on {signal.Signals(signum).name}")
                return EXIT_OK
            if signum == signal.SIGHUP:
                if (code := self.reload(config_file)) is not None:
                    return code
                self.next_tick = time.monotonic() + self.settings.daemon_interval
        return None

    def _due_work(self) -> int | None:
        """The tick and the retry whose time has come; the exit code if the loop is to end."""
        now = time.monotonic()
        if now >= self.next_tick:
            self.next_tick = now + self.settings.daemon_interval
            if (code := self.tick()) is not None:
                return code
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            return self.apply("retry")
        return None
