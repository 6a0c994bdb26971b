"""What binfmtd reads in an ELF file without running it (binfmtd.probes.elf writes the probes'):
whether it is statically linked, where a section lies, and the version banner QEMU stores in its
read-only data. The parsers are pure: `header` is the file's first 64 bytes and `read_at(offset,
size)` reads the rest, so they are tested on bytes and the caller chooses how the file is read."""

from __future__ import annotations

import struct

from binfmtd.entry import printable

PT_INTERP = 3


def parse_elf_is_static(header: bytes, read_at) -> bool:
    """Whether an ELF has no PT_INTERP program header (statically linked, or static-pie).
    `read_at(offset, size)` reads the rest of the file; the parse itself does no I/O."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return False
    is64, endian = header[4] == 2, "<" if header[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(endian + "Q", header, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
    else:
        phoff, = struct.unpack_from(endian + "I", header, 28)
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 42)
    table = read_at(phoff, phentsize * phnum)
    if phentsize < 4 or len(table) < phentsize * phnum:
        return False  # truncated: not something the kernel could run anyway
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == PT_INTERP:
            return False
    return True


# Every QEMU of the last decade prints this in --version (QEMU_COPYRIGHT) and so carries it in
# its read-only data, right after the "qemu-<target> version X" line. Looking for it is how binfmtd
# tells QEMU from another binary without running anything as root: a cheap test against a
# mistake (a shell copied into place), not a defence against root, who controls the file anyway
# (every component is root's by then); an attacker controls nothing on that path.
QEMU_SIGNATURE = b"Fabrice Bellard and the QEMU Project developers"
CHUNK = 128 << 10  # QEMU 7.2's banner lies 30-600 KiB into .rodata: read a little at a time


def find_qemu_banner(header: bytes, read_at) -> str | None:
    """QEMU's version line ("qemu-aarch64 version 7.2.22 (Debian ...)") stored in the ELF, or
    None when the file lacks QEMU's signature. Looks in .rodata first (a few hundred KiB in,
    so a few reads), then anywhere in the file."""
    rodata = parse_elf_section(header, read_at, b".rodata")
    places = [rodata] if rodata else []
    for start, size in places + [(0, None)]:
        position = _search(read_at, QEMU_SIGNATURE, start, size)
        if position is not None:
            window_start = max(0, position - 256)
            window = read_at(window_start, position - window_start)
            line = window[window.rfind(b"\0") + 1:].split(b"\n")[0].decode("utf-8", "replace")
            return printable(line) if line.startswith("qemu-") else "QEMU"
    return None


def _search(read_at, needle: bytes, start: int, size: int | None) -> int | None:
    offset, end = start, None if size is None else start + size
    while end is None or offset < end:
        length = CHUNK if end is None else min(CHUNK, end - offset)
        data = read_at(offset, length + len(needle) - 1)
        found = data.find(needle)
        if found >= 0:
            return offset + found
        if len(data) < length + len(needle) - 1:
            return None  # end of file
        offset += length
    return None


def parse_elf_section(header: bytes, read_at, name: bytes) -> tuple[int, int] | None:
    """(file offset, size) of the ELF section called `name`, or None (no such section, or no
    section headers at all: they are optional)."""
    if header[:4] != b"\x7fELF" or len(header) < 64:
        return None
    is64, endian = header[4] == 2, "<" if header[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", header, 40)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 58)
        layout = endian + "II8xQQQ"  # sh_name, sh_type, (sh_flags), sh_addr, sh_offset, sh_size
    else:
        shoff, = struct.unpack_from(endian + "I", header, 32)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 46)
        layout = endian + "II4xIII"
    if not shoff or not shnum or shstrndx >= shnum or shentsize < struct.calcsize(layout):
        return None
    table = read_at(shoff, shentsize * shnum)
    if len(table) < shentsize * shnum:
        return None
    sections = [struct.unpack_from(layout, table, i * shentsize) for i in range(shnum)]
    _, _, _, names_offset, names_size = sections[shstrndx]
    names = read_at(names_offset, names_size)
    for sh_name, _, _, offset, size in sections:
        if names[sh_name:names.find(b"\0", sh_name)] == name:
            return offset, size
    return None


def version_of_banner(banner: str | None) -> str | None:
    """"qemu-aarch64 version 7.2.22 (Debian ...)" -> "7.2.22"."""
    words = (banner or "").split()
    return words[words.index("version") + 1] if "version" in words[:-1] else None

