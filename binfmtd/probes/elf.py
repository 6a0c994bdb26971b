"""The probe's ELF file: one memory layout for every architecture, written in pure Python.

Every probe has the same memory layout, and these addresses are baked into the hand-assembled code
(the ISA modules beside this one) as immediates (no relocations anywhere):

    0x400000  ELF header, program headers    }
    0x400100  the marker "binfmtd-probe:"    }  first PT_LOAD, read + execute, from the file
    0x400110  ppc64 ELFv1 entry descriptor   }
    0x400140  code: the entry point          }
    0x410000  struct utsname (6 x 65 bytes)     second PT_LOAD, read + write, bss only
    0x410104  its `machine` field (5th field: 4 x 65 = 260)

0x400000 is the traditional executable base: above any vm.mmap_min_addr, and below 2 GiB so that
every address is a small positive number (one or two instructions to load, even sign-extended on
64-bit ISAs). Segments are 64 KiB aligned so that they stay apart on 64K-page hosts too.
"""

from __future__ import annotations

import struct

from binfmtd.records import dataclass

MARKER = "binfmtd-probe:"

# The layout of the module docstring. The code tables load these addresses as immediates:
# changing one means re-assembling every architecture's code.
_BASE = 0x400000
_MARKER_ADDR = _BASE + 0x100
_DESCRIPTOR_ADDR = _BASE + 0x110
_CODE_ADDR = _BASE + 0x140
_BUFFER_ADDR = _BASE + 0x10000
_BUFFER_SIZE = 6 * 65
_ALIGN = 0x10000

# ELF constants (elf.h).
_ET_EXEC = 2
_PT_LOAD = 1
_PT_GNU_STACK = 0x6474E551
_PF_X, _PF_W, _PF_R = 1, 2, 4

EM_SPARC, EM_386, EM_68K, EM_MIPS, EM_486 = 2, 3, 4, 8, 6
EM_PARISC, EM_SPARC32PLUS, EM_PPC, EM_PPC64, EM_S390 = 15, 18, 20, 21, 22
EM_ARM, EM_SH, EM_SPARCV9, EM_X86_64, EM_OPENRISC, EM_XTENSA = 40, 42, 43, 62, 92, 94
EM_CRIS, EM_ALTERA_NIOS2 = 76, 113
EM_HEXAGON, EM_AARCH64, EM_RISCV, EM_LOONGARCH = 164, 183, 243, 258
EM_ALPHA = 0x9026  # the unofficial number every Linux alpha binary carries
EM_MICROBLAZE_OLD = 0xBAAB  # QEMU accepts it and 189 alike; binfmt tables (ours too) match only this

LE, BE = "little", "big"


@dataclass(frozen=True)
class Spec:
    """One target's probe: the ELF header fields that tell its ABI apart, and its code."""
    bits: int  # ELF class: 32 or 64
    byteorder: str  # data byte order: LE or BE
    e_machine: int
    e_flags: int  # the ABI bits a real binary of the target carries
    code: bytes
    descriptor: bool = False  # ELFv1 PowerPC64: e_entry points at a function descriptor, not code


def pack(words: tuple[int, ...], byteorder: str, size: int = 4) -> bytes:
    """Instruction words (or literal pool words) as bytes in `byteorder`."""
    return b"".join(word.to_bytes(size, byteorder) for word in words)


def elf_file(spec: Spec) -> bytes:
    """The probe's ELF file: header, program headers, marker, (descriptor), code."""
    endian = _struct_order(spec)
    file_size = _CODE_ADDR - _BASE + len(spec.code)
    header = _elf_header(spec)
    header += _program_header(spec, _PT_LOAD, _PF_R | _PF_X, _BASE, file_size, file_size)
    # The utsname buffer: memory only, in its own page, so that no store lands next to code.
    header += _program_header(spec, _PT_LOAD, _PF_R | _PF_W, _BUFFER_ADDR, 0, _BUFFER_SIZE)
    # A non-executable stack; without this header the kernel runs an i386 probe READ_IMPLIES_EXEC.
    header += _program_header(spec, _PT_GNU_STACK, _PF_R | _PF_W, 0, 0, 0)

    image = bytearray(file_size)
    image[:len(header)] = header
    _place(image, _MARKER_ADDR, MARKER.encode())
    if spec.descriptor:  # ELFv1 function descriptor: code address, TOC pointer, environment (unused)
        _place(image, _DESCRIPTOR_ADDR, struct.pack(endian + "3Q", _CODE_ADDR, 0, 0))
    _place(image, _CODE_ADDR, spec.code)
    return bytes(image)


def _elf_header(spec: Spec) -> bytes:
    endian = _struct_order(spec)
    address = "I" if spec.bits == 32 else "Q"
    header_size, program_header_size = (52, 32) if spec.bits == 32 else (64, 56)
    ident = bytes([0x7F, *b"ELF", spec.bits // 32, 1 if spec.byteorder == LE else 2, 1]).ljust(16, b"\0")
    return ident + struct.pack(
        endian + "HHI" + address * 3 + "IHHHHHH",
        _ET_EXEC, spec.e_machine, 1,  # e_type, e_machine, e_version
        _DESCRIPTOR_ADDR if spec.descriptor else _CODE_ADDR,  # e_entry
        header_size, 0,  # e_phoff: right after this header; e_shoff: no section headers
        spec.e_flags, header_size, program_header_size, 3,  # e_flags, e_ehsize, e_phentsize, e_phnum
        0, 0, 0,  # e_shentsize, e_shnum, e_shstrndx
    )


def _program_header(spec: Spec, ptype: int, flags: int, vaddr: int, filesz: int, memsz: int) -> bytes:
    # Every segment has file offset 0: the code segment maps the file from its start, the others
    # map none of it. 0 is also congruent to each vaddr modulo the 64 KiB alignment.
    endian = _struct_order(spec)
    if spec.bits == 32:  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        return struct.pack(endian + "8I", ptype, 0, vaddr, vaddr, filesz, memsz, flags, _ALIGN)
    # 64-bit moves p_flags up beside p_type
    return struct.pack(endian + "2I6Q", ptype, flags, 0, vaddr, vaddr, filesz, memsz, _ALIGN)


def _struct_order(spec: Spec) -> str:
    return "<" if spec.byteorder == LE else ">"


def _place(image: bytearray, address: int, data: bytes) -> None:
    image[address - _BASE:address - _BASE + len(data)] = data
