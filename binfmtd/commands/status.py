"""status and targets: what binfmt_misc holds now, who owns each entry and which QEMU it runs;
the targets binfmtd knows. Read-only."""

from __future__ import annotations

from binfmtd.commands.change import settled_state
from binfmtd.config import resolve_paths
from binfmtd.entry import Entry
from binfmtd.errors import BinfmtdError
from binfmtd.facts.host import read_binfmt_misc, target_of_entry
from binfmtd.facts.interpreters import add_versions, describe_version, emulator_identity, safety_problem, same_file
from binfmtd.facts.native import read_native
from binfmtd.image import registered_by_image
from binfmtd.records import dataclass, field
from binfmtd.report import Report
from binfmtd.state.ledger import State
from binfmtd.targets import TARGETS


@dataclass(frozen=True)
class TableStatus:
    path: str
    mounted: bool
    enabled: bool
    private: bool


@dataclass(frozen=True)
class Emulator:
    """Which QEMU an entry runs: the file it pinned (binfmtd's own F entries) and the file on disk."""

    pinned: dict | None
    on_disk: dict | None
    drift: str | None  # "replaced" or "removed" on disk since registration; None: none known
    note: str | None  # the drift in words, with the fix
    version_of: str | None  # whose version qemu_version is: "pinned", "disk" or None


@dataclass(frozen=True)
class EntryStatus:
    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int
    magic: str | None  # lowercase hex, as the kernel prints it
    mask: str | None
    target: str | None  # None: the entry matches no known target
    platform: str | None
    owner: str  # "binfmtd" or "other"
    qemu_version: str | None
    emulator: Emulator


@dataclass
class StatusReport(Report):
    binfmt_misc: TableStatus
    entries: list[EntryStatus]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TargetInfo:
    target: str
    platforms: tuple[str, ...]
    family: str
    native: bool
    entry: str


@dataclass
class TargetsReport(Report):
    targets: list[TargetInfo]
    warnings: list[str] = field(default_factory=list)


def status(binfmt_misc: str | None = None, state_dir: str | None = None) -> StatusReport:
    path, state_dir = resolve_paths(binfmt_misc, state_dir)
    table = read_binfmt_misc(path)
    warnings = []
    try:  # the kernel's table is worth showing even when binfmtd's own records are not readable
        state = settled_state(state_dir, path)
    except BinfmtdError as exc:
        state = State()
        warnings.append(f"{exc} (owners below are unknown and shown as other)")
    emulators = read_emulators(table.entries, state)
    return StatusReport(TableStatus(path, table.mounted, table.enabled, table.private),
                        [_entry_status(entry, state, emulators[entry.name]) for entry in table.entries], warnings)


def _entry_status(entry: Entry, state: State, emulator: Emulator) -> EntryStatus:
    target = target_of_entry(entry)
    version = (emulator.pinned or emulator.on_disk or {}).get("version")
    return EntryStatus(entry.name, entry.enabled, entry.interpreter, entry.flags, entry.offset,
                       entry.magic.hex() or None, entry.mask.hex() or None, target.name if target else None,
                       target.platform if target else None, "binfmtd" if state.owns(entry) else "other",
                       version, emulator)


def read_emulators(entries, state: State) -> dict[str, Emulator]:
    """Per entry: the emulator file it pinned (binfmtd's own F entries: the state's pin) and the
    file at its interpreter path now, with QEMU versions (asked in parallel, never of a file
    binfmtd would not trust, nor of a non-QEMU entry's interpreter)."""
    found = {}
    for entry in entries:
        owned = state.entries.get(entry.name) if state.owns(entry) else None
        pinned = owned.pinned if owned and "F" in entry.flags else None
        found[entry.name] = (pinned, emulator_identity(entry.interpreter, version=False))
    add_versions([disk for e in entries if (disk := found[e.name][1]) and target_of_entry(e)
                  and safety_problem(e.interpreter) is None], state.pins())
    return {e.name: _emulator(e, state.owns(e), *found[e.name]) for e in entries}


def _emulator(entry: Entry, owned: bool, pinned: dict | None, on_disk: dict | None) -> Emulator:
    """Which QEMU an entry runs and whether that is still the file on disk. With F the kernel
    pinned a file at registration: binfmtd knows which for its own entries (`pinned`); for other
    tools' entries only the file on disk now is known (verify sees what really runs)."""
    drift = note = None
    if "F" in entry.flags and entry.enabled and on_disk is None and not registered_by_image(entry.interpreter):
        drift = "removed"
        note = (f"emulator {entry.interpreter} is gone from disk; the entry still runs the file it pinned"
                + (f" ({describe_version(pinned)})" if pinned else "")
                + ("; binfmtd apply removes it" if owned else "; reinstall QEMU or remove the entry "
                   "(it is not binfmtd's)"))
    elif pinned and not same_file(pinned, on_disk):
        drift = "replaced"
        note = (f"pinned {describe_version(pinned)} (replaced on disk by {describe_version(on_disk)}): "
                "re-register to use it (binfmtd apply)")
    version = (pinned or on_disk or {}).get("version")
    return Emulator(pinned, on_disk, drift, note, "pinned" if pinned else "disk" if version else None)


def list_targets() -> TargetsReport:
    native = set(read_native(resolve_paths()[1], remember=False)[0])
    return TargetsReport([TargetInfo(t.name, t.platforms, t.family, t.name in native, t.entry_name) for t in TARGETS])
