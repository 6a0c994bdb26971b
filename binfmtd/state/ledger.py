"""What binfmtd owns, kept in the state file (state.json, written and read through
binfmtd.state.files): the entries it registered and the write-ahead intents of a run in progress.

Ownership is decided by comparing the state with the kernel, never by the state alone (after a
reboot or another tool's work they disagree, and that is normal). Every change to the kernel is
recorded as an *intent* (the entry before, the entry after) durably before the first write, and
the next run reconciles each intent with what the kernel shows: a change that landed is owned, one
that never started is forgotten, one cut in half is rolled back to the entry that was there. So a
kill -9 or a power cut between any two writes loses nothing and orphans nothing (dpkg's rule)."""

from __future__ import annotations

import json
import os

from binfmtd.entry import Entry, parse_register_line
from binfmtd.errors import BinfmtdError
from binfmtd.image import registered_by_image
from binfmtd.records import dataclass, field
from binfmtd.state.files import STATE_FILE, read_small, write_atomic


class StateCorrupt(BinfmtdError):
    """The state file is there but not binfmtd's: ownership is unknown until it is moved aside."""


# -- what binfmtd owns ---------------------------------------------------------------------------

@dataclass
class Owned:
    line: str  # the register line binfmtd wrote
    replaced: str | None = None  # the foreign entry --force took over, to put back on remove
    replaced_enabled: bool = True  # and whether it was enabled, so it comes back exactly
    pinned: dict | None = None  # the emulator file registered (interpreters.emulator_identity)


@dataclass
class Intent:
    """A change about to be made to entry `name`: what the kernel shows before it and after it
    (None: no entry; a line: that entry, enabled or not), and the record binfmtd keeps once it
    has landed (None: binfmtd no longer owns the name)."""

    before: str | None
    before_enabled: bool
    after: str | None
    after_enabled: bool
    record: Owned | None


@dataclass
class State:
    entries: dict[str, Owned] = field(default_factory=dict)
    last_apply: float | None = None  # when an apply last ran to completion (for metrics)
    intents: dict[str, Intent] = field(default_factory=dict)

    def pinned(self, name: str) -> dict | None:
        """The emulator file binfmtd's entry of that name pinned, where recorded (an entry owned
        without a record, e.g. one binfmtd's image registered, has none)."""
        owned = self.entries.get(name)
        return owned.pinned if owned else None

    def pins(self) -> tuple[dict, ...]:
        """Every emulator file binfmtd's entries pinned, with the QEMU versions read then."""
        return tuple(o.pinned for o in self.entries.values() if o.pinned)

    def owns(self, entry: Entry) -> bool:
        if registered_by_image(entry.interpreter):  # binfmtd's image, run without this state
            return True
        owned = self.entries.get(entry.name)
        return owned is not None and shows(entry, owned.line)


def shows(current: Entry | None, line: str | None) -> bool:
    """Whether the kernel's entry is the registration `line` describes (None: no entry)."""
    if line is None or current is None:
        return line is None and current is None
    return parse_register_line(line).same_registration(current)


def reconcile(state: State, current_of) -> list[tuple[str, str, bool]]:
    """Settle every intent against the kernel (`current_of(name)` -> Entry or None), updating
    `state.entries`. Returns the writes still needed, as (name, line, enabled): entries to put
    back because a change was cut in half, or whose enabled state must be set again. Pure."""
    repairs = []
    for name, intent in sorted(state.intents.items()):
        current = current_of(name)
        if shows(current, intent.after):  # it landed
            if intent.record is None:
                state.entries.pop(name, None)
            else:
                state.entries[name] = intent.record
            if current is not None and current.enabled != intent.after_enabled:
                repairs.append((name, intent.after, intent.after_enabled))
        elif shows(current, intent.before):  # it never started
            if current is not None and current.enabled != intent.before_enabled:
                repairs.append((name, intent.before, intent.before_enabled))
        elif current is None and intent.before is not None:  # cut between removing and registering
            repairs.append((name, intent.before, intent.before_enabled))
        # else someone else changed the entry meanwhile: it is theirs, the records stay as they were
    state.intents.clear()
    return repairs


# -- the state file ------------------------------------------------------------------------------

def parse_state(text: str | bytes) -> State:
    """The state file, validated: every line must be a register line for the name it is filed
    under that the kernel would accept (a forged or damaged file is refused, not trusted)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    _require(isinstance(data, dict), "not a JSON object")
    last_apply = data.get("last_apply")
    _require(last_apply is None or (isinstance(last_apply, (int, float)) and not isinstance(last_apply, bool)),
             "last_apply is not a number")
    entries, intents = data.get("entries", {}), data.get("intents", {})
    _require(isinstance(entries, dict) and isinstance(intents, dict), "entries/intents are not objects")
    state = State({name: _owned(name, item) for name, item in entries.items()}, last_apply)
    for name, item in intents.items():
        _require(isinstance(item, dict), f"intent {name!r} is not an object")
        record = item.get("record")
        state.intents[name] = Intent(_line(name, item.get("before"), optional=True), _flag(item, "before_enabled"),
                                     _line(name, item.get("after"), optional=True), _flag(item, "after_enabled"),
                                     None if record is None else _owned(name, record))
    return state


def _owned(name: str, item) -> Owned:
    _require(isinstance(item, dict), f"entry {name!r} is not an object")
    return Owned(_line(name, item.get("line")), _line(name, item.get("replaced"), optional=True),
                 _flag(item, "replaced_enabled"), _pinned(name, item.get("pinned")))


def _pinned(name: str, pinned) -> dict | None:
    if pinned is None:
        return None
    _require(isinstance(pinned, dict) and isinstance(pinned.get("path"), str)
             and all(isinstance(pinned.get(k), int) and not isinstance(pinned.get(k), bool)
                     for k in ("dev", "ino", "size", "mtime"))
             and isinstance(pinned.get("version"), (str, type(None))), f"{name!r}: pinned emulator is malformed")
    return pinned


def _line(name: str, line, optional: bool = False) -> str | None:
    if line is None and optional:
        return None
    _require(isinstance(line, str), f"{name!r}: register line missing")
    try:
        entry = parse_register_line(line)
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"{name!r}: {exc}") from None
    _require(entry.name == name, f"{name!r}: register line is for {entry.name!r}")
    problem = entry.problem() or (None if entry.interpreter.isprintable() else "control character in interpreter")
    _require(problem is None, f"{name!r}: {problem}")
    return line


def _flag(item: dict, key: str) -> bool:
    value = item.get(key, True)
    _require(isinstance(value, bool), f"{key} is not true/false")
    return value


def _require(condition: bool, why: str) -> None:
    if not condition:
        raise ValueError(why)


def format_state(state: State) -> str:
    def owned(o: Owned) -> dict:
        return {"line": o.line, "replaced": o.replaced, "replaced_enabled": o.replaced_enabled,
                **({"pinned": o.pinned} if o.pinned else {})}
    intents = {name: {"before": i.before, "before_enabled": i.before_enabled, "after": i.after,
                      "after_enabled": i.after_enabled, "record": owned(i.record) if i.record else None}
               for name, i in sorted(state.intents.items())}
    return json.dumps({"version": 2, "last_apply": state.last_apply,
                       "entries": {name: owned(o) for name, o in sorted(state.entries.items())},
                       "intents": intents}, indent=2) + "\n"


def load_state(state_dir: str) -> State:
    path = os.path.join(state_dir, STATE_FILE)
    data = read_small(path)
    if data is None:
        return State()
    try:
        return parse_state(data)
    except ValueError as exc:
        raise StateCorrupt(f"state file {path} is not binfmtd's ({exc}); move it aside (mv {path} {path}.bad) "
                           "and run apply again: its entries then count as another tool's (--force takes them "
                           "over)") from None


def save_state(state_dir: str, state: State) -> None:
    path = os.path.join(state_dir, STATE_FILE)
    try:
        write_atomic(path, format_state(state), 0o600)
    except OSError as exc:  # a full or read-only /var: the intents already saved settle next run
        raise BinfmtdError(f"cannot write {path} ({exc.strerror}); make room on that filesystem or make it "
                           "writable, then run binfmtd apply again") from None
