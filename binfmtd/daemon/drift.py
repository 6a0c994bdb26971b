"""The desired state, and the drift from it: all an idle tick computes. The table is read as
raw texts and compared with the entries the last apply established, not with a snapshot."""

from __future__ import annotations

import os

from binfmtd.commands.change import ChangeReport
from binfmtd.facts import host
from binfmtd.daemon.systemd import WARNING
from binfmtd.entry import Entry, parse_entry
from binfmtd.records import dataclass, field  # host.Table, which Table extends, is one
from binfmtd.state.ledger import State
from binfmtd.targets import lookup


@dataclass(frozen=True)
class Table(host.Table):
    """The table as facts reads it (mounted?, status, each entry's text), and the emulators' files
    and directories on disk, stat()ed: an upgrade renames a new QEMU over an F entry's pinned file
    (plan re-registers it), removes one, or adds one to a directory."""

    emulators: tuple[tuple[str, tuple | None], ...] = ()


def stamp_emulators(entries: tuple[tuple[str, str], ...], dirs: tuple[str, ...]) -> tuple:
    """(path, stat stamp or None) of each entry's interpreter and each interpreter directory."""
    paths = [line.partition(" ")[2] for _, text in entries for line in text.splitlines()
             if line.startswith("interpreter ")]
    stamps = []
    for path in sorted(set(paths)) + list(dirs):
        try:
            st = os.stat(path)
            stamps.append((path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)))
        except OSError:
            stamps.append((path, None))
    return tuple(stamps)


def read_table(path: str, interpreter_dirs: tuple[str, ...] = (), dir_stamps: tuple | None = None) -> Table:
    """What the kernel shows, with the emulators' stamps; `dir_stamps` are the directories' stamps
    taken earlier (before an apply, so that an emulator added while it ran still counts)."""
    table = host.read_table(path)
    if not table.mounted:
        return Table(False)
    dirs = dir_stamps if dir_stamps is not None else stamp_emulators((), interpreter_dirs)
    return Table(True, table.status, table.entries, stamp_emulators(table.entries, ()) + dirs)


@dataclass
class Watch:
    """What the kernel must show for the daemon to have nothing to do. Taken from the last
    apply's results, i.e. from the config, never from a snapshot of the table: an entry removed
    in the moment after an apply is then missing at the next tick, not part of "normal"."""

    entries: dict[str, Entry] = field(default_factory=dict)  # present, enabled, as configured
    owned: set[str] = field(default_factory=set)  # those of `entries` binfmtd's state records as its own
    held: set[str] = field(default_factory=set)  # names another tool's entry holds: binfmtd's once gone
    status: str = ""  # binfmt_misc enabled/disabled as a whole: the admin's switch, reported, not repaired
    # entry texts found as desired: the same text again is one string comparison, not a parse
    # and two realpath() calls (half of an idle tick's CPU with 30 entries)
    verified: dict[str, str] = field(default_factory=dict)
    emulators: tuple = ()  # the emulators' stamps after the apply: a file replaced since is drift

    def hold(self, name: str) -> None:
        """From now on another tool's entry: binfmtd registers its own once the name is free."""
        del self.entries[name]
        self.verified.pop(name, None)
        self.held.add(name)


def watch_from_report(report: ChangeReport, state: State, status: str) -> Watch:
    """The desired state an apply established. A target with no interpreter (native, no QEMU)
    has nothing to keep; a failing one is retried on its own schedule; a target skipped with
    an interpreter is one whose name another tool's entry holds (plan_apply); a removed one
    (its emulator vanished) is no longer wanted."""
    failing = {e.target for e in report.errors}
    watch = Watch(status=status)
    for result in report.results:
        name = result.name
        if result.target in failing or result.interpreter is None or result.action == "removed":
            continue
        if result.action == "skipped":
            watch.held.add(name)
            continue
        target = lookup(result.target)
        watch.entries[name] = Entry(name, result.interpreter, result.flags, 0, target.magic, target.mask)
        if state.owns(watch.entries[name]):
            watch.owned.add(name)
    return watch


@dataclass
class Drift:
    changes: list[str] = field(default_factory=list)  # what differs, in an operator's words
    repair: bool = False  # an apply brings the kernel back to the desired state
    reclaim: set[str] = field(default_factory=set)  # binfmtd's entries someone changed: put back
    left: dict[str, str] = field(default_factory=dict)  # changed entries left as they are, and why


def find_drift(table: Table, watch: Watch, path: str) -> Drift:
    """The kernel against the desired state. No I/O but realpath(); it only adds to the
    watch's cache of texts found as desired."""
    drift = Drift()
    if not table.mounted:
        drift.changes.append(f"binfmt_misc was unmounted from {path}")
        drift.repair = True
        return drift
    if table.status != watch.status:
        drift.changes.append(f"binfmt_misc was {table.status or 'made unreadable'} as a whole")
    if table.emulators != watch.emulators:  # plan decides whether an entry must be re-pinned
        old = dict(watch.emulators)
        drift.changes += [f"{file} was {'removed' if stamp is None else 'changed'} on disk"
                          for file, stamp in table.emulators if file in old and old[file] != stamp]
        drift.repair = True
    kernel = dict(table.entries)
    for name in sorted(watch.entries.keys() | watch.held):
        judge_entry(drift, watch, name, kernel.get(name))
    return drift


def judge_entry(drift: Drift, watch: Watch, name: str, text: str | None) -> None:
    """One entry the watch keeps (or knows as another tool's) against its text in the kernel
    (None: gone), adding to `drift` what differs."""
    if text is None:
        drift.changes.append(f"{name} was removed" + (" (it was another tool's)" if name in watch.held else ""))
        drift.repair = True
        return
    if name in watch.held or watch.verified.get(name) == text:
        return  # someone else's entry (what it contains is theirs to decide), or as desired
    entry, want = parse_entry(name, text), watch.entries[name]
    if entry.enabled and entry.same_registration(want):
        watch.verified[name] = text
        return
    drift.changes.append(f"{name} was {'disabled' if entry.same_registration(want) else 'changed'}")
    if name in watch.owned:
        # binfmtd registered it (its state records this very entry), and someone changed it:
        # drift like any other, although the entry no longer matches the state's record
        drift.repair = True
        drift.reclaim.add(name)
    else:
        drift.left[name] = (f"another tool's entry, now {entry.interpreter}, flags {entry.flags or '-'}"
                            f"{'' if entry.enabled else ', disabled'}: binfmtd found it registered as "
                            "desired and never took it over, so changing it is that tool's right; "
                            f"`binfmtd apply --force {name.removeprefix('qemu-')}` takes it over")


def table_problems(table: Table, path: str) -> set[tuple[int, str]]:
    if table.mounted and table.status == "disabled":
        return {(WARNING, (f"binfmt_misc is disabled as a whole on {path}, so no entry is used; "
                           f"`echo 1 > {path}/status` turns it back on (apply does not)"))}
    return set()
