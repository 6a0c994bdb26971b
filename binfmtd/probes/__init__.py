"""Probe executables: a tiny static ELF program per QEMU target, made at run time in pure Python.

A probe calls uname(2), writes `binfmtd-probe:<machine>` and a newline to stdout and exits 0. Run
through binfmt_misc (or handed to a qemu-*-static directly) it shows that the emulator really runs
that architecture's code and what machine the emulated kernel reports (binfmtd.targets' `machine`
says what to expect), without a cross compiler, a download or any external tool.

The program is the same on every architecture:

    uname(0x410000)
    write(1, 0x400100, 14)                    # the marker
    p = 0x410104; while *p: p += 1            # strlen of machine
    *p = '\\n'
    write(1, 0x410104, p - 0x410104 + 1)      # machine and newline
    exit_group(0)

No value lives across a system call (each call sets all its registers afresh), so it does not
matter which registers a kernel's system call clobbers.

elf.py writes the file and fixes the addresses; mainstream.py, classic.py and embedded.py hold
each ISA's hand-assembled code and ELF header fields, as data.
"""

from __future__ import annotations

from binfmtd.probes import classic, embedded, mainstream
from binfmtd.probes.elf import MARKER, Spec, elf_file

__all__ = ["MARKER", "build_probe", "parse_probe_output", "supported_targets"]

# Keyed by binfmtd.targets names; every target in that table has a probe.
_SPECS: dict[str, Spec] = {**mainstream.SPECS, **classic.SPECS, **embedded.SPECS}


def supported_targets() -> tuple[str, ...]:
    """The targets (binfmtd.targets names) build_probe makes a probe for."""
    return tuple(_SPECS)


def build_probe(target: str) -> bytes:
    """The complete ELF file of the probe for `target`; KeyError if there is none for it."""
    return elf_file(_SPECS[target])


def parse_probe_output(text: str) -> str | None:
    """The machine a probe printed after the marker, or None when no line carries the marker."""
    for line in text.splitlines():
        if MARKER in line:
            return line.split(MARKER, 1)[1].strip("\0 \t\r") or None
    return None
