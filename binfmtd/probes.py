"""Probe executables: a tiny static ELF program per QEMU target, made at run time in pure Python.

A probe calls uname(2), writes `binfmtd-probe:<machine>` and a newline to stdout and exits 0. Run
through binfmt_misc (or handed to a qemu-*-static directly) it shows that the emulator really runs
that architecture's code and what machine the emulated kernel reports, without a cross compiler,
a download or any external tool.

Every probe has the same memory layout, and these addresses are baked into the hand-assembled code
below as immediates (no relocations anywhere):

    0x400000  ELF header, program headers    }
    0x400100  the marker "binfmtd-probe:"    }  first PT_LOAD, read + execute, from the file
    0x400110  ppc64 ELFv1 entry descriptor   }
    0x400140  code: the entry point          }
    0x410000  struct utsname (6 x 65 bytes)     second PT_LOAD, read + write, bss only
    0x410104  its `machine` field (5th field: 4 x 65 = 260)

0x400000 is the traditional executable base: above any vm.mmap_min_addr, and below 2 GiB so that
every address is a small positive number (one or two instructions to load, even sign-extended on
64-bit ISAs). Segments are 64 KiB aligned so that they stay apart on 64K-page hosts too.

The program is the same on every architecture:

    uname(0x410000)
    write(1, 0x400100, 14)                    # the marker
    p = 0x410104; while *p: p += 1            # strlen of machine
    *p = '\\n'
    write(1, 0x410104, p - 0x410104 + 1)      # machine and newline
    exit_group(0)

No value lives across a system call (each call sets all its registers afresh), so it does not
matter which registers a kernel's system call clobbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MARKER = "binfmtd-probe:"

# The layout of the module docstring. The code literals below load these addresses as immediates:
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

_EM_SPARC, _EM_386, _EM_68K, _EM_MIPS, _EM_486 = 2, 3, 4, 8, 6
_EM_PARISC, _EM_SPARC32PLUS, _EM_PPC, _EM_PPC64, _EM_S390 = 15, 18, 20, 21, 22
_EM_ARM, _EM_SH, _EM_SPARCV9, _EM_X86_64, _EM_OPENRISC, _EM_XTENSA = 40, 42, 43, 62, 92, 94
_EM_CRIS, _EM_ALTERA_NIOS2 = 76, 113
_EM_HEXAGON, _EM_AARCH64, _EM_RISCV, _EM_LOONGARCH = 164, 183, 243, 258
_EM_ALPHA = 0x9026  # the unofficial number every Linux alpha binary carries
_EM_MICROBLAZE_OLD = 0xBAAB  # QEMU accepts it and 189 alike; binfmt tables (ours too) match only this


def _pack(words: tuple[int, ...], byteorder: str, size: int = 4) -> bytes:
    return b"".join(word.to_bytes(size, byteorder) for word in words)


# ---- x86 ----------------------------------------------------------------------------------------
# 32-bit registers are enough: every address is below 4 GiB and 32-bit writes zero the upper half.

_X86_64 = bytes.fromhex(
    "bf 00 00 41 00"  # mov   edi, 0x410000
    "b8 3f 00 00 00"  # mov   eax, 63             __NR_uname
    "0f 05"  #          syscall
    "bf 01 00 00 00"  # mov   edi, 1
    "be 00 01 40 00"  # mov   esi, 0x400100       marker
    "ba 0e 00 00 00"  # mov   edx, 14
    "b8 01 00 00 00"  # mov   eax, 1              __NR_write
    "0f 05"  #          syscall
    "be 04 01 41 00"  # mov   esi, 0x410104       machine
    "89 f2"  #          mov   edx, esi
    "80 3a 00"  #       loop: cmp byte [rdx], 0
    "74 04"  #          je    done
    "ff c2"  #          inc   edx
    "eb f7"  #          jmp   loop
    "c6 02 0a"  #       done: mov byte [rdx], 10
    "29 f2"  #          sub   edx, esi
    "ff c2"  #          inc   edx
    "bf 01 00 00 00"  # mov   edi, 1
    "b8 01 00 00 00"  # mov   eax, 1              __NR_write
    "0f 05"  #          syscall
    "31 ff"  #          xor   edi, edi
    "b8 e7 00 00 00"  # mov   eax, 231            __NR_exit_group
    "0f 05"  #          syscall
)

_I386 = bytes.fromhex(
    "bb 00 00 41 00"  # mov   ebx, 0x410000
    "b8 7a 00 00 00"  # mov   eax, 122            __NR_uname (newuname)
    "cd 80"  #          int   0x80
    "bb 01 00 00 00"  # mov   ebx, 1
    "b9 00 01 40 00"  # mov   ecx, 0x400100       marker
    "ba 0e 00 00 00"  # mov   edx, 14
    "b8 04 00 00 00"  # mov   eax, 4              __NR_write
    "cd 80"  #          int   0x80
    "b9 04 01 41 00"  # mov   ecx, 0x410104       machine
    "89 ca"  #          mov   edx, ecx
    "80 3a 00"  #       loop: cmp byte [edx], 0
    "74 03"  #          je    done
    "42"  #             inc   edx
    "eb f8"  #          jmp   loop
    "c6 02 0a"  #       done: mov byte [edx], 10
    "29 ca"  #          sub   edx, ecx
    "42"  #             inc   edx
    "bb 01 00 00 00"  # mov   ebx, 1
    "b8 04 00 00 00"  # mov   eax, 4              __NR_write
    "cd 80"  #          int   0x80
    "31 db"  #          xor   ebx, ebx
    "b8 fc 00 00 00"  # mov   eax, 252            __NR_exit_group
    "cd 80"  #          int   0x80
)

# ---- ARM ----------------------------------------------------------------------------------------
# AArch64 fetches instructions little-endian in either data byte order, and so does 32-bit ARM in
# BE8 mode (what ARMv6+ big-endian binaries use): one encoding serves both byte orders.

_AARCH64 = (  # system call number in x8, arguments in x0..x2, `svc #0`
    0xD2A00820,  # mov   x0, #0x410000
    0xD2801408,  # mov   x8, #160             __NR_uname
    0xD4000001,  # svc   #0
    0xD2800020,  # mov   x0, #1
    0xD2A00801,  # mov   x1, #0x400000
    0xF2802001,  # movk  x1, #0x100           marker
    0xD28001C2,  # mov   x2, #14
    0xD2800808,  # mov   x8, #64              __NR_write
    0xD4000001,  # svc   #0
    0xD2A00821,  # mov   x1, #0x410000
    0xF2802081,  # movk  x1, #0x104           machine
    0xAA0103E2,  # mov   x2, x1
    0x39400043,  # loop: ldrb w3, [x2]
    0x34000063,  # cbz   w3, done
    0x91000442,  # add   x2, x2, #1
    0x17FFFFFD,  # b     loop
    0x52800143,  # done: mov w3, #10
    0x39000043,  # strb  w3, [x2]
    0xCB010042,  # sub   x2, x2, x1
    0x91000442,  # add   x2, x2, #1
    0xD2800020,  # mov   x0, #1
    0xD2800808,  # mov   x8, #64              __NR_write
    0xD4000001,  # svc   #0
    0xD2800000,  # mov   x0, #0
    0xD2800BC8,  # mov   x8, #94              __NR_exit_group
    0xD4000001,  # svc   #0
)

_ARM = (  # EABI: number in r7, arguments in r0..r2, `svc #0`; ARMv4 instructions only
    0xE3A00841,  # mov   r0, #0x410000
    0xE3A0707A,  # mov   r7, #122             __NR_uname (newuname)
    0xEF000000,  # svc   #0
    0xE3A00001,  # mov   r0, #1
    0xE3A01501,  # mov   r1, #0x400000
    0xE3811C01,  # orr   r1, r1, #0x100       marker
    0xE3A0200E,  # mov   r2, #14
    0xE3A07004,  # mov   r7, #4               __NR_write
    0xEF000000,  # svc   #0
    0xE3A01841,  # mov   r1, #0x410000
    0xE3811C01,  # orr   r1, r1, #0x100
    0xE3811004,  # orr   r1, r1, #4           machine
    0xE1A02001,  # mov   r2, r1
    0xE5D23000,  # loop: ldrb r3, [r2]
    0xE3530000,  # cmp   r3, #0
    0x12822001,  # addne r2, r2, #1
    0x1AFFFFFB,  # bne   loop
    0xE3A0300A,  # mov   r3, #10
    0xE5C23000,  # strb  r3, [r2]
    0xE0422001,  # sub   r2, r2, r1
    0xE2822001,  # add   r2, r2, #1
    0xE3A00001,  # mov   r0, #1
    0xE3A07004,  # mov   r7, #4               __NR_write
    0xEF000000,  # svc   #0
    0xE3A00000,  # mov   r0, #0
    0xE3A070F8,  # mov   r7, #248             __NR_exit_group
    0xEF000000,  # svc   #0
)

# ---- RISC-V, LoongArch: the generic system call table (uname 160, write 64, exit_group 94) ---------

_RISCV = (  # number in a7, arguments in a0..a2, `ecall`; RV32I = RV64I encodings, no compressed ones
    0x00410537,  # lui   a0, 0x410
    0x0A000893,  # li    a7, 160              __NR_uname
    0x00000073,  # ecall
    0x00100513,  # li    a0, 1
    0x004005B7,  # lui   a1, 0x400
    0x10058593,  # addi  a1, a1, 0x100        marker
    0x00E00613,  # li    a2, 14
    0x04000893,  # li    a7, 64               __NR_write
    0x00000073,  # ecall
    0x004105B7,  # lui   a1, 0x410
    0x10458593,  # addi  a1, a1, 0x104        machine
    0x00058613,  # mv    a2, a1
    0x00064683,  # loop: lbu a3, 0(a2)
    0x00068663,  # beqz  a3, done
    0x00160613,  # addi  a2, a2, 1
    0xFF5FF06F,  # j     loop
    0x00A00693,  # done: li a3, 10
    0x00D60023,  # sb    a3, 0(a2)
    0x40B60633,  # sub   a2, a2, a1
    0x00160613,  # addi  a2, a2, 1
    0x00100513,  # li    a0, 1
    0x04000893,  # li    a7, 64               __NR_write
    0x00000073,  # ecall
    0x00000513,  # li    a0, 0
    0x05E00893,  # li    a7, 94               __NR_exit_group
    0x00000073,  # ecall
)

_LOONGARCH = (  # number in a7 (r11), arguments in a0..a2 (r4..r6), `syscall 0`
    0x14008204,  # lu12i.w a0, 0x410
    0x0382800B,  # ori     a7, zero, 160      __NR_uname
    0x002B0000,  # syscall 0
    0x03800404,  # ori     a0, zero, 1
    0x14008005,  # lu12i.w a1, 0x400
    0x038400A5,  # ori     a1, a1, 0x100      marker
    0x03803806,  # ori     a2, zero, 14
    0x0381000B,  # ori     a7, zero, 64       __NR_write
    0x002B0000,  # syscall 0
    0x14008205,  # lu12i.w a1, 0x410
    0x038410A5,  # ori     a1, a1, 0x104      machine
    0x001500A6,  # or      a2, a1, zero
    0x2A0000C7,  # loop: ld.bu a3, a2, 0
    0x40000CE0,  # beqz    a3, done
    0x02C004C6,  # addi.d  a2, a2, 1
    0x53FFF7FF,  # b       loop
    0x03802807,  # done: ori a3, zero, 10
    0x290000C7,  # st.b    a3, a2, 0
    0x001194C6,  # sub.d   a2, a2, a1
    0x02C004C6,  # addi.d  a2, a2, 1
    0x03800404,  # ori     a0, zero, 1
    0x0381000B,  # ori     a7, zero, 64       __NR_write
    0x002B0000,  # syscall 0
    0x03800004,  # ori     a0, zero, 0
    0x0381780B,  # ori     a7, zero, 94       __NR_exit_group
    0x002B0000,  # syscall 0
)

# ---- PowerPC: the same code for ppc, ppc64 and ppc64le --------------------------------------------

_PPC = (  # number in r0, arguments in r3..r5, `sc`
    0x3C600041,  # lis   r3, 0x41
    0x3800007A,  # li    r0, 122              __NR_uname (newuname)
    0x44000002,  # sc
    0x38600001,  # li    r3, 1
    0x3C800040,  # lis   r4, 0x40
    0x60840100,  # ori   r4, r4, 0x100        marker
    0x38A0000E,  # li    r5, 14
    0x38000004,  # li    r0, 4                __NR_write
    0x44000002,  # sc
    0x3C800041,  # lis   r4, 0x41
    0x60840104,  # ori   r4, r4, 0x104        machine
    0x7C852378,  # mr    r5, r4
    0x88C50000,  # loop: lbz r6, 0(r5)
    0x2C060000,  # cmpwi r6, 0
    0x4182000C,  # beq   done
    0x38A50001,  # addi  r5, r5, 1
    0x4BFFFFF0,  # b     loop
    0x38C0000A,  # done: li r6, 10
    0x98C50000,  # stb   r6, 0(r5)
    0x7CA42850,  # subf  r5, r4, r5
    0x38A50001,  # addi  r5, r5, 1
    0x38600001,  # li    r3, 1
    0x38000004,  # li    r0, 4                __NR_write
    0x44000002,  # sc
    0x38600000,  # li    r3, 0
    0x380000EA,  # li    r0, 234              __NR_exit_group
    0x44000002,  # sc
)

# ---- s390x --------------------------------------------------------------------------------------

_S390X = bytes.fromhex(  # arguments in r2..r4; numbers below 256 go in the `svc` immediate
    "c0 2f 00 41 00 00"  # llilf %r2, 0x410000
    "0a 7a"  #             svc   122              __NR_uname (newuname)
    "a7 29 00 01"  #       lghi  %r2, 1
    "c0 3f 00 40 01 00"  # llilf %r3, 0x400100    marker
    "a7 49 00 0e"  #       lghi  %r4, 14
    "0a 04"  #             svc   4                __NR_write
    "c0 3f 00 41 01 04"  # llilf %r3, 0x410104    machine
    "b9 04 00 43"  #       lgr   %r4, %r3
    "95 00 40 00"  #       loop: cli 0(%r4), 0
    "a7 84 00 06"  #       je    done
    "a7 4b 00 01"  #       aghi  %r4, 1
    "a7 f4 ff fa"  #       j     loop
    "92 0a 40 00"  #       done: mvi 0(%r4), 10
    "b9 09 00 43"  #       sgr   %r4, %r3
    "a7 4b 00 01"  #       aghi  %r4, 1
    "a7 29 00 01"  #       lghi  %r2, 1
    "0a 04"  #             svc   4                __NR_write
    "a7 29 00 00"  #       lghi  %r2, 0
    "0a f8"  #             svc   248              __NR_exit_group
)


# ---- MIPS: one code for o32, n32 and n64, only the system call numbers differ --------------------
# 32-bit arithmetic (addiu, subu) is right on MIPS64 too: every value is a small positive number,
# so it is its own sign extension.

def _mips(uname: int, write: int, exit_group: int) -> tuple[int, ...]:
    """Number in v0, arguments in a0..a2, `syscall`; branch delay slots are explicit."""
    return (
        0x3C040041,  # lui   a0, 0x41
        0x24020000 | uname,  # li    v0, __NR_uname
        0x0000000C,  # syscall
        0x24040001,  # li    a0, 1
        0x3C050040,  # lui   a1, 0x40
        0x34A50100,  # ori   a1, a1, 0x100        marker
        0x2406000E,  # li    a2, 14
        0x24020000 | write,  # li    v0, __NR_write
        0x0000000C,  # syscall
        0x3C050041,  # lui   a1, 0x41
        0x34A50104,  # ori   a1, a1, 0x104        machine
        0x00A03025,  # move  a2, a1
        0x90C70000,  # loop: lbu a3, 0(a2)
        0x10E00003,  # beqz  a3, done
        0x00000000,  # nop                        (delay slot)
        0x1000FFFC,  # b     loop
        0x24C60001,  # addiu a2, a2, 1            (delay slot: runs before the branch lands)
        0x2407000A,  # done: li a3, 10
        0xA0C70000,  # sb    a3, 0(a2)
        0x00C53023,  # subu  a2, a2, a1
        0x24C60001,  # addiu a2, a2, 1
        0x24040001,  # li    a0, 1
        0x24020000 | write,  # li    v0, __NR_write
        0x0000000C,  # syscall
        0x24040000,  # li    a0, 0
        0x24020000 | exit_group,  # li    v0, __NR_exit_group
        0x0000000C,  # syscall
    )


_MIPS_O32_CODE = _mips(uname=4122, write=4004, exit_group=4246)
_MIPS_N64_CODE = _mips(uname=5061, write=5001, exit_group=5205)
_MIPS_N32_CODE = _mips(uname=6061, write=6001, exit_group=6205)


# ---- SPARC: the 32-bit and the 64-bit ABI trap to different vectors ------------------------------

def _sparc(trap: int) -> tuple[int, ...]:
    """Number in %g1, arguments in %o0..%o2, `ta 0x10` (32-bit ABI) or `ta 0x6d` (64-bit)."""
    ta = 0x91D02000 | trap
    return (
        0x11001040,  # sethi %hi(0x410000), %o0
        0x821020BD,  # mov   189, %g1             __NR_uname (newuname)
        ta,  #         ta    trap
        0x90102001,  # mov   1, %o0
        0x13001000,  # sethi %hi(0x400100), %o1
        0x92126100,  # or    %o1, 0x100, %o1      marker
        0x9410200E,  # mov   14, %o2
        0x82102004,  # mov   4, %g1               __NR_write
        ta,  #         ta    trap
        0x13001040,  # sethi %hi(0x410104), %o1
        0x92126104,  # or    %o1, 0x104, %o1      machine
        0x94100009,  # mov   %o1, %o2
        0xD60A8000,  # loop: ldub [%o2], %o3
        0x80A2E000,  # cmp   %o3, 0
        0x02800004,  # be    done
        0x01000000,  # nop                        (delay slot)
        0x10BFFFFC,  # ba    loop
        0x9402A001,  # add   %o2, 1, %o2          (delay slot)
        0x9610200A,  # done: mov 10, %o3
        0xD62A8000,  # stb   %o3, [%o2]
        0x94228009,  # sub   %o2, %o1, %o2
        0x9402A001,  # add   %o2, 1, %o2
        0x90102001,  # mov   1, %o0
        0x82102004,  # mov   4, %g1               __NR_write
        ta,  #         ta    trap
        0x90102000,  # mov   0, %o0
        0x821020BC,  # mov   188, %g1             __NR_exit_group
        ta,  #         ta    trap
    )


# ---- m68k ---------------------------------------------------------------------------------------

_M68K = bytes.fromhex(  # number in d0, arguments in d1..d3, `trap #0`
    "223c 0041 0000"  # move.l #0x410000, %d1
    "707a"  #           moveq  #122, %d0         __NR_uname (newuname)
    "4e40"  #           trap   #0
    "7201"  #           moveq  #1, %d1
    "243c 0040 0100"  # move.l #0x400100, %d2    marker
    "760e"  #           moveq  #14, %d3
    "7004"  #           moveq  #4, %d0           __NR_write
    "4e40"  #           trap   #0
    "41f9 0041 0104"  # lea    0x410104, %a0     machine
    "2248"  #           move.l %a0, %a1
    "4a10"  #           loop: tst.b (%a0)
    "6704"  #           beq.s  done
    "5288"  #           addq.l #1, %a0
    "60f8"  #           bra.s  loop
    "10bc 000a"  #      done: move.b #10, (%a0)
    "2608"  #           move.l %a0, %d3
    "9689"  #           sub.l  %a1, %d3
    "5283"  #           addq.l #1, %d3
    "7201"  #           moveq  #1, %d1
    "2409"  #           move.l %a1, %d2
    "7004"  #           moveq  #4, %d0           __NR_write
    "4e40"  #           trap   #0
    "7200"  #           moveq  #0, %d1
    "203c 0000 00f7"  # move.l #247, %d0         __NR_exit_group
    "4e40"  #           trap   #0
)

# ---- SuperH: 16-bit instructions and a literal pool, both in the target's byte order -------------

_SH4 = (  # number in r3, arguments in r4..r6, `trapa` (QEMU and Linux take any 0x10..0x17)
    0xD40C,  # mov.l  @(pool+0, pc), r4      0x410000
    0xE37A,  # mov    #122, r3               __NR_uname (newuname)
    0xC311,  # trapa  #0x11
    0xE401,  # mov    #1, r4
    0xD50B,  # mov.l  @(pool+4, pc), r5      marker
    0xE60E,  # mov    #14, r6
    0xE304,  # mov    #4, r3                 __NR_write
    0xC313,  # trapa  #0x13
    0xD50A,  # mov.l  @(pool+8, pc), r5      machine
    0x6653,  # mov    r5, r6
    0x6060,  # loop: mov.b @r6, r0
    0x2008,  # tst    r0, r0
    0x8901,  # bt     done
    0xAFFB,  # bra    loop
    0x7601,  # add    #1, r6                 (delay slot)
    0xE00A,  # done: mov #10, r0
    0x2600,  # mov.b  r0, @r6
    0x3658,  # sub    r5, r6
    0x7601,  # add    #1, r6
    0xE401,  # mov    #1, r4
    0xE304,  # mov    #4, r3                 __NR_write
    0xC313,  # trapa  #0x13
    0xE400,  # mov    #0, r4
    0xD304,  # mov.l  @(pool+12, pc), r3     __NR_exit_group (too big for an 8-bit immediate)
    0xC311,  # trapa  #0x11
    0x0009,  # nop                           (aligns the pool to 4 bytes)
)
_SH4_POOL = (0x410000, 0x400100, 0x410104, 252)

# ---- Alpha: little-endian, 64-bit -----------------------------------------------------------------

_ALPHA = (  # number in v0, arguments in a0..a2, `callsys`; ldbu/stb need BWX (EV56 and later)
    0x261F0041,  # ldah  a0, 0x41(zero)
    0x201F0153,  # lda   v0, 339(zero)         __NR_uname (newuname; 207 is the OSF one)
    0x00000083,  # callsys
    0x221F0001,  # lda   a0, 1(zero)
    0x263F0040,  # ldah  a1, 0x40(zero)
    0x22310100,  # lda   a1, 0x100(a1)         marker
    0x225F000E,  # lda   a2, 14(zero)
    0x201F0004,  # lda   v0, 4(zero)           __NR_write
    0x00000083,  # callsys
    0x263F0041,  # ldah  a1, 0x41(zero)
    0x22310104,  # lda   a1, 0x104(a1)         machine
    0x47F10412,  # mov   a1, a2
    0x2A720000,  # loop: ldbu a3, 0(a2)
    0xE6600002,  # beq   a3, done
    0x22520001,  # lda   a2, 1(a2)
    0xC3FFFFFC,  # br    loop
    0x227F000A,  # done: lda a3, 10(zero)
    0x3A720000,  # stb   a3, 0(a2)
    0x42510532,  # subq  a2, a1, a2
    0x22520001,  # lda   a2, 1(a2)
    0x221F0001,  # lda   a0, 1(zero)
    0x201F0004,  # lda   v0, 4(zero)           __NR_write
    0x00000083,  # callsys
    0x221F0000,  # lda   a0, 0(zero)
    0x201F0195,  # lda   v0, 405(zero)         __NR_exit_group
    0x00000083,  # callsys
)

# ---- PA-RISC (hppa) -------------------------------------------------------------------------------

_HPPA = (  # branch to the gateway page, 0x100(%sr2, %r0); number in r20 (delay slot), args r26..r24
    0x23480008,  # ldil  L%0x410000, r26
    0x375A0000,  # ldo   R%0x410000(r26), r26
    0xE4008200,  # ble   0x100(sr2, r0)
    0x34140076,  # ldi   59, r20               __NR_uname (newuname)
    0x341A0002,  # ldi   1, r26
    0x23200008,  # ldil  L%0x400100, r25
    0x37390200,  # ldo   R%0x400100(r25), r25  marker
    0x3418001C,  # ldi   14, r24
    0xE4008200,  # ble   0x100(sr2, r0)
    0x34140008,  # ldi   4, r20                __NR_write
    0x23280008,  # ldil  L%0x410104, r25
    0x37390208,  # ldo   R%0x410104(r25), r25  machine
    0x08190258,  # copy  r25, r24
    0x0F001017,  # loop: ldb 0(r24), r23
    0x86E02010,  # cmpib,= 0, r23, done
    0x08000240,  # nop                         (delay slot)
    0xE81F1FDD,  # b     loop
    0x37180002,  # ldo   1(r24), r24           (delay slot)
    0x34170014,  # done: ldi 10, r23
    0x0F171200,  # stb   r23, 0(r24)
    0x0B380418,  # sub   r24, r25, r24
    0x37180002,  # ldo   1(r24), r24
    0x341A0002,  # ldi   1, r26
    0xE4008200,  # ble   0x100(sr2, r0)
    0x34140008,  # ldi   4, r20                __NR_write
    0x341A0000,  # ldi   0, r26
    0xE4008200,  # ble   0x100(sr2, r0)
    0x341401BC,  # ldi   222, r20              __NR_exit_group
)

# ---- OpenRISC 1000: generic system call table ----------------------------------------------------

_OR1K = (  # number in r11, arguments in r3..r5, `l.sys 1`; branches have a delay slot
    0x18600041,  # l.movhi r3, 0x41
    0x9D6000A0,  # l.addi  r11, r0, 160        __NR_uname
    0x20000001,  # l.sys   1
    0x15000000,  # l.nop
    0x9C600001,  # l.addi  r3, r0, 1
    0x18800040,  # l.movhi r4, 0x40
    0xA8840100,  # l.ori   r4, r4, 0x100       marker
    0x9CA0000E,  # l.addi  r5, r0, 14
    0x9D600040,  # l.addi  r11, r0, 64         __NR_write
    0x20000001,  # l.sys   1
    0x15000000,  # l.nop
    0x18800041,  # l.movhi r4, 0x41
    0xA8840104,  # l.ori   r4, r4, 0x104       machine
    0xE0A40004,  # l.or    r5, r4, r0
    0x8CC50000,  # loop: l.lbz r6, 0(r5)
    0xE4060000,  # l.sfeq  r6, r0
    0x10000004,  # l.bf    done
    0x15000000,  # l.nop                       (delay slot)
    0x03FFFFFC,  # l.j     loop
    0x9CA50001,  # l.addi  r5, r5, 1           (delay slot)
    0x9CC0000A,  # done: l.addi r6, r0, 10
    0xD8053000,  # l.sb    0(r5), r6
    0xE0A52002,  # l.sub   r5, r5, r4
    0x9CA50001,  # l.addi  r5, r5, 1
    0x9C600001,  # l.addi  r3, r0, 1
    0x9D600040,  # l.addi  r11, r0, 64         __NR_write
    0x20000001,  # l.sys   1
    0x15000000,  # l.nop
    0x9C600000,  # l.addi  r3, r0, 0
    0x9D60005E,  # l.addi  r11, r0, 94         __NR_exit_group
    0x20000001,  # l.sys   1
    0x15000000,  # l.nop
)

# ---- MicroBlaze: the same words in either byte order ----------------------------------------------

_MICROBLAZE = (  # number in r12, arguments in r5..r7, `brki r14, 8`; `imm` supplies a high half
    0xB0000041,  # imm   0x41
    0x30A00000,  # addik r5, r0, 0             r5 = 0x410000
    0x3180007A,  # addik r12, r0, 122          __NR_uname (newuname)
    0xB9CC0008,  # brki  r14, 8
    0x30A00001,  # addik r5, r0, 1
    0xB0000040,  # imm   0x40
    0x30C00100,  # addik r6, r0, 0x100         marker
    0x30E0000E,  # addik r7, r0, 14
    0x31800004,  # addik r12, r0, 4            __NR_write
    0xB9CC0008,  # brki  r14, 8
    0xB0000041,  # imm   0x41
    0x30C00104,  # addik r6, r0, 0x104         machine
    0x80E60000,  # or    r7, r6, r0
    0xE1070000,  # loop: lbui r8, r7, 0
    0xBC08000C,  # beqi  r8, done
    0x30E70001,  # addik r7, r7, 1
    0xB800FFF4,  # bri   loop
    0x3100000A,  # done: addik r8, r0, 10
    0xF1070000,  # sbi   r8, r7, 0
    0x14E63800,  # rsubk r7, r6, r7            r7 = r7 - r6
    0x30E70001,  # addik r7, r7, 1
    0x30A00001,  # addik r5, r0, 1
    0x31800004,  # addik r12, r0, 4            __NR_write
    0xB9CC0008,  # brki  r14, 8
    0x30A00000,  # addik r5, r0, 0
    0x318000FC,  # addik r12, r0, 252          __NR_exit_group
    0xB9CC0008,  # brki  r14, 8
)

# ---- Xtensa: 24-bit instructions whose fields lie in mirrored order when big-endian ---------------
# Number in a2, arguments in a6, a3, a4, `syscall`. No l32r literal pool: movi takes 12 bits, so
# the addresses are built with movi, slli and addmi. Columns: little-endian, big-endian bytes.

_XTENSA_LE_BE = (
    ("62 a0 41", "26 0a 41"),  # movi  a6, 0x41
    ("00 66 11", "00 66 11"),  # slli  a6, a6, 16           a6 = 0x410000
    ("22 a0 d0", "22 0a d0"),  # movi  a2, 208              __NR_uname (newuname)
    ("00 50 00", "00 05 00"),  # syscall
    ("62 a0 01", "26 0a 01"),  # movi  a6, 1
    ("32 a0 40", "23 0a 40"),  # movi  a3, 0x40
    ("00 33 11", "00 33 11"),  # slli  a3, a3, 16
    ("32 d3 01", "23 3d 01"),  # addmi a3, a3, 0x100        marker
    ("42 a0 0e", "24 0a 0e"),  # movi  a4, 14
    ("22 a0 0d", "22 0a 0d"),  # movi  a2, 13               __NR_write
    ("00 50 00", "00 05 00"),  # syscall
    ("32 a0 41", "23 0a 41"),  # movi  a3, 0x41
    ("00 33 11", "00 33 11"),  # slli  a3, a3, 16
    ("32 d3 01", "23 3d 01"),  # addmi a3, a3, 0x100
    ("32 c3 04", "23 3c 04"),  # addi  a3, a3, 4            machine
    ("30 43 20", "03 34 02"),  # or    a4, a3, a3
    ("52 04 00", "25 40 00"),  # loop: l8ui a5, a4, 0
    ("16 55 00", "64 50 05"),  # beqz  a5, done
    ("42 c4 01", "24 4c 01"),  # addi  a4, a4, 1
    ("c6 fc ff", "63 ff f3"),  # j     loop
    ("52 a0 0a", "25 0a 0a"),  # done: movi a5, 10
    ("52 44 00", "25 44 00"),  # s8i   a5, a4, 0
    ("30 44 c0", "03 44 0c"),  # sub   a4, a4, a3
    ("42 c4 01", "24 4c 01"),  # addi  a4, a4, 1
    ("62 a0 01", "26 0a 01"),  # movi  a6, 1
    ("22 a0 0d", "22 0a 0d"),  # movi  a2, 13               __NR_write
    ("00 50 00", "00 05 00"),  # syscall
    ("62 a0 00", "26 0a 00"),  # movi  a6, 0
    ("22 a0 77", "22 0a 77"),  # movi  a2, 119              __NR_exit_group
    ("00 50 00", "00 05 00"),  # syscall
)

# ---- Hexagon: one instruction per packet; `##` needs a constant extender word ---------------------

_HEXAGON = (  # number in r6, arguments in r0..r2, `trap0(#1)`; generic system call table
    0x00044400,  # { immext(#0x410000)
    0x7800C000,  #   r0 = ##0x410000 }
    0x7800D406,  # { r6 = #160 }               __NR_uname
    0x5400C004,  # { trap0(#1) }
    0x7800C020,  # { r0 = #1 }
    0x00044004,  # { immext(#0x400100)
    0x7800C001,  #   r1 = ##0x400100 }         marker
    0x7800C1C2,  # { r2 = #14 }
    0x7800C806,  # { r6 = #64 }                __NR_write
    0x5400C004,  # { trap0(#1) }
    0x00044404,  # { immext(#0x410100)
    0x7800C081,  #   r1 = ##0x410104 }         machine
    0x7061C002,  # { r2 = r1 }
    0x9122C003,  # loop: { r3 = memub(r2+#0) }
    0x7503C000,  # { p0 = cmp.eq(r3, #0) }
    0x5C00C006,  # { if (p0) jump done }
    0xB002C022,  # { r2 = add(r2, #1) }
    0x59FFFFF8,  # { jump loop }
    0x7800C143,  # done: { r3 = #10 }
    0xA102C300,  # { memb(r2+#0) = r3 }
    0xF321C202,  # { r2 = sub(r2, r1) }
    0xB002C022,  # { r2 = add(r2, #1) }
    0x7800C020,  # { r0 = #1 }
    0x7800C806,  # { r6 = #64 }                __NR_write
    0x5400C004,  # { trap0(#1) }
    0x7800C000,  # { r0 = #0 }
    0x7800CBC6,  # { r6 = #94 }                __NR_exit_group
    0x5400C004,  # { trap0(#1) }
)


# ---- CRIS v32 (QEMU's linux-user CPU): 16-bit little-endian words, branches have a delay slot ------
# Number in r9, arguments in r10..r12, `break 13`. `move.d [pc+], rd` loads the 32-bit word after it.

_CRIS = (
    "6f ae 00 00 41 00",  # move.d 0x410000, r10
    "6f 9e 7a 00 00 00",  # move.d 122, r9          __NR_uname (newuname)
    "3d e9",  #             break  13
    "41 a2",  #             moveq  1, r10
    "6f be 00 01 40 00",  # move.d 0x400100, r11     marker
    "4e c2",  #             moveq  14, r12
    "44 92",  #             moveq  4, r9            __NR_write
    "3d e9",  #             break  13
    "6f de 04 01 41 00",  # move.d 0x410104, r13     machine
    "6d c6",  #             move.d r13, r12
    "4c 9c",  #             loop: movu.b [r12+], r9  (sets Z)
    "ff 20",  #             bne    loop
    "b0 05",  #             nop                      (delay slot)
    "81 c2",  #             subq   1, r12            r12 = the NUL
    "4a 92",  #             moveq  10, r9
    "cc 9b",  #             move.b r9, [r12]
    "01 c2",  #             addq   1, r12
    "ad c6",  #             sub.d  r13, r12
    "41 a2",  #             moveq  1, r10
    "6d b6",  #             move.d r13, r11
    "44 92",  #             moveq  4, r9            __NR_write
    "3d e9",  #             break  13
    "40 a2",  #             moveq  0, r10
    "6f 9e fc 00 00 00",  # move.d 252, r9          __NR_exit_group
    "3d e9",  #             break  13
)

# ---- Nios II (R1): generic system call table, no delay slots ---------------------------------------

_NIOS2 = (  # number in r2, arguments in r4..r6, `trap`
    0x01001074,  # movhi r4, 0x41
    0x00802804,  # movi  r2, 160               __NR_uname
    0x003B683A,  # trap
    0x01000044,  # movi  r4, 1
    0x01401034,  # movhi r5, 0x40
    0x29404014,  # ori   r5, r5, 0x100         marker
    0x01800384,  # movi  r6, 14
    0x00801004,  # movi  r2, 64                __NR_write
    0x003B683A,  # trap
    0x01401074,  # movhi r5, 0x41
    0x29404114,  # ori   r5, r5, 0x104         machine
    0x280D883A,  # mov   r6, r5
    0x31C00003,  # loop: ldbu r7, 0(r6)
    0x38000226,  # beq   r7, zero, done
    0x31800044,  # addi  r6, r6, 1
    0x003FFC06,  # br    loop
    0x01C00284,  # done: movi r7, 10
    0x31C00005,  # stb   r7, 0(r6)
    0x314DC83A,  # sub   r6, r6, r5
    0x31800044,  # addi  r6, r6, 1
    0x01000044,  # movi  r4, 1
    0x00801004,  # movi  r2, 64                __NR_write
    0x003B683A,  # trap
    0x01000004,  # movi  r4, 0
    0x00801784,  # movi  r2, 94                __NR_exit_group
    0x003B683A,  # trap
)

# ---- The table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    bits: int  # ELF class: 32 or 64
    byteorder: str  # data byte order: "little" or "big"
    machine: int  # e_machine
    flags: int  # e_flags: the ABI bits a real binary of the target carries
    code: bytes
    uname_machine: str  # what `uname -m` prints under QEMU 7.2, seen by running this probe
    descriptor: bool = False  # ELFv1 PowerPC64: e_entry points at a function descriptor, not code


_LE, _BE = "little", "big"
_ARM_EABI5 = 0x05000000
_ARM_BE8 = 0x00800000  # code little-endian, data big-endian: how ARMv6+ big-endian binaries run
_MIPS_NOREORDER = 0x1
_MIPS_ABI2 = 0x20  # n32; binfmt_misc's MIPS entries read this bit to tell n32 from o32
_MIPS_O32 = 0x1000 | 0x70000000 | _MIPS_NOREORDER  # EF_MIPS_ABI_O32, mips32r2
_MIPS_64R2 = 0x80000000 | _MIPS_NOREORDER  # n64 as is, n32 with _MIPS_ABI2
_RISCV_RVC_DOUBLE = 0x5  # EF_RISCV_RVC | EF_RISCV_FLOAT_ABI_DOUBLE, as Debian's lp64d binaries
_LOONGARCH_LP64D_OBJV1 = 0x43  # EF_LOONGARCH_ABI_DOUBLE_FLOAT | EF_LOONGARCH_OBJABI_V1
_PPC64_ELFV1, _PPC64_ELFV2 = 1, 2  # QEMU reads e_entry as a descriptor unless this says ELFv2
_SPARC_32PLUS = 0x100
_SH_SH4 = 0x9
_PARISC_1_1 = 0x210
_XTENSA_XT_INSN_LIT = 0x300
_HEXAGON_V67 = 0x67  # QEMU 7.2 accepts v5..v67 and refuses other values
_CRIS_VARIANT_V32 = 0x2  # the code is CRIS v32, the CPU QEMU's linux-user emulates (v10 would hang)


def _xtensa(column: int) -> bytes:
    return bytes.fromhex("".join(pair[column] for pair in _XTENSA_LE_BE))


def _sh4(byteorder: str) -> bytes:
    return _pack(_SH4, byteorder, 2) + _pack(_SH4_POOL, byteorder)


# Keyed by binfmtd.targets names; every target in that table has a probe.
_SPECS: dict[str, _Spec] = {
    "i386": _Spec(32, _LE, _EM_386, 0, _I386, "i686"),
    "i486": _Spec(32, _LE, _EM_486, 0, _I386, "i686"),
    "x86_64": _Spec(64, _LE, _EM_X86_64, 0, _X86_64, "x86_64"),
    "aarch64": _Spec(64, _LE, _EM_AARCH64, 0, _pack(_AARCH64, _LE), "aarch64"),
    "aarch64_be": _Spec(64, _BE, _EM_AARCH64, 0, _pack(_AARCH64, _LE), "aarch64_be"),
    "arm": _Spec(32, _LE, _EM_ARM, _ARM_EABI5, _pack(_ARM, _LE), "armv7l"),
    "armeb": _Spec(32, _BE, _EM_ARM, _ARM_EABI5 | _ARM_BE8, _pack(_ARM, _LE), "armv7b"),
    "riscv32": _Spec(32, _LE, _EM_RISCV, _RISCV_RVC_DOUBLE, _pack(_RISCV, _LE), "riscv32"),
    "riscv64": _Spec(64, _LE, _EM_RISCV, _RISCV_RVC_DOUBLE, _pack(_RISCV, _LE), "riscv64"),
    "loongarch64": _Spec(64, _LE, _EM_LOONGARCH, _LOONGARCH_LP64D_OBJV1, _pack(_LOONGARCH, _LE), "loongarch64"),
    "ppc": _Spec(32, _BE, _EM_PPC, 0, _pack(_PPC, _BE), "ppc"),
    "ppc64": _Spec(64, _BE, _EM_PPC64, _PPC64_ELFV1, _pack(_PPC, _BE), "ppc64", descriptor=True),
    "ppc64le": _Spec(64, _LE, _EM_PPC64, _PPC64_ELFV2, _pack(_PPC, _LE), "ppc64le"),
    "s390x": _Spec(64, _BE, _EM_S390, 0, _S390X, "s390x"),
    "mips": _Spec(32, _BE, _EM_MIPS, _MIPS_O32, _pack(_MIPS_O32_CODE, _BE), "mips"),
    "mipsel": _Spec(32, _LE, _EM_MIPS, _MIPS_O32, _pack(_MIPS_O32_CODE, _LE), "mips"),
    "mipsn32": _Spec(32, _BE, _EM_MIPS, _MIPS_64R2 | _MIPS_ABI2, _pack(_MIPS_N32_CODE, _BE), "mips64"),
    "mipsn32el": _Spec(32, _LE, _EM_MIPS, _MIPS_64R2 | _MIPS_ABI2, _pack(_MIPS_N32_CODE, _LE), "mips64"),
    "mips64": _Spec(64, _BE, _EM_MIPS, _MIPS_64R2, _pack(_MIPS_N64_CODE, _BE), "mips64"),
    "mips64el": _Spec(64, _LE, _EM_MIPS, _MIPS_64R2, _pack(_MIPS_N64_CODE, _LE), "mips64"),
    "sparc": _Spec(32, _BE, _EM_SPARC, 0, _pack(_sparc(0x10), _BE), "sparc"),
    # QEMU runs sparc32plus (32-bit code, V8+ ABI) on a 64-bit CPU, and says so.
    "sparc32plus": _Spec(32, _BE, _EM_SPARC32PLUS, _SPARC_32PLUS, _pack(_sparc(0x10), _BE), "sparc64"),
    "sparc64": _Spec(64, _BE, _EM_SPARCV9, 0, _pack(_sparc(0x6D), _BE), "sparc64"),
    "m68k": _Spec(32, _BE, _EM_68K, 0, _M68K, "m68k"),
    "sh4": _Spec(32, _LE, _EM_SH, _SH_SH4, _sh4(_LE), "sh4"),
    "sh4eb": _Spec(32, _BE, _EM_SH, _SH_SH4, _sh4(_BE), "sh4"),
    "alpha": _Spec(64, _LE, _EM_ALPHA, 0, _pack(_ALPHA, _LE), "alpha"),
    "hppa": _Spec(32, _BE, _EM_PARISC, _PARISC_1_1, _pack(_HPPA, _BE), "parisc"),
    "or1k": _Spec(32, _BE, _EM_OPENRISC, 0, _pack(_OR1K, _BE), "openrisc"),
    "microblaze": _Spec(32, _BE, _EM_MICROBLAZE_OLD, 0, _pack(_MICROBLAZE, _BE), "microblaze"),
    "microblazeel": _Spec(32, _LE, _EM_MICROBLAZE_OLD, 0, _pack(_MICROBLAZE, _LE), "microblaze"),
    "xtensa": _Spec(32, _LE, _EM_XTENSA, _XTENSA_XT_INSN_LIT, _xtensa(0), "xtensa"),
    "xtensaeb": _Spec(32, _BE, _EM_XTENSA, _XTENSA_XT_INSN_LIT, _xtensa(1), "xtensa"),
    "hexagon": _Spec(32, _LE, _EM_HEXAGON, _HEXAGON_V67, _pack(_HEXAGON, _LE), "hexagon"),
    "cris": _Spec(32, _LE, _EM_CRIS, _CRIS_VARIANT_V32, bytes.fromhex("".join(_CRIS)), "cris"),
    "nios2": _Spec(32, _LE, _EM_ALTERA_NIOS2, 0, _pack(_NIOS2, _LE), "nios2"),
}

# What `uname -m` prints under Debian 12's QEMU 7.2 (/usr/bin/qemu-<target>-static) for each
# target, as seen by running every probe there. A real kernel can say otherwise: on an x86_64 host
# i386 and i486 probes run natively and print "x86_64" ("i686" only under qemu-i386 or `linux32`).
EXPECTED_MACHINE: dict[str, str] = {name: spec.uname_machine for name, spec in _SPECS.items()}


def supported_targets() -> tuple[str, ...]:
    """The targets (binfmtd.targets names) build_probe makes a probe for."""
    return tuple(_SPECS)


def _program_header(spec: _Spec, ptype: int, flags: int, vaddr: int, filesz: int, memsz: int) -> bytes:
    # Every segment has file offset 0: the code segment maps the file from its start, the others
    # map none of it. 0 is also congruent to each vaddr modulo the 64 KiB alignment.
    endian = "<" if spec.byteorder == _LE else ">"
    if spec.bits == 32:  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        return struct.pack(endian + "8I", ptype, 0, vaddr, vaddr, filesz, memsz, flags, _ALIGN)
    # 64-bit moves p_flags up beside p_type
    return struct.pack(endian + "2I6Q", ptype, flags, 0, vaddr, vaddr, filesz, memsz, _ALIGN)


def _elf(spec: _Spec) -> bytes:
    """The probe's ELF file: header, program headers, marker, (descriptor), code."""
    endian = "<" if spec.byteorder == _LE else ">"
    address = "I" if spec.bits == 32 else "Q"
    header_size, program_header_size = (52, 32) if spec.bits == 32 else (64, 56)
    file_size = _CODE_ADDR - _BASE + len(spec.code)

    ident = bytes([0x7F, *b"ELF", spec.bits // 32, 1 if spec.byteorder == _LE else 2, 1]).ljust(16, b"\0")
    header = ident + struct.pack(
        endian + "HHI" + address * 3 + "IHHHHHH",
        _ET_EXEC, spec.machine, 1,  # e_type, e_machine, e_version
        _DESCRIPTOR_ADDR if spec.descriptor else _CODE_ADDR,  # e_entry
        header_size, 0,  # e_phoff: right after this header; e_shoff: no section headers
        spec.flags, header_size, program_header_size, 3,  # e_flags, e_ehsize, e_phentsize, e_phnum
        0, 0, 0,  # e_shentsize, e_shnum, e_shstrndx
    )
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


def _place(image: bytearray, address: int, data: bytes) -> None:
    image[address - _BASE:address - _BASE + len(data)] = data


def build_probe(target: str) -> bytes:
    """The complete ELF file of the probe for `target`; KeyError if there is none for it."""
    return _elf(_SPECS[target])


def parse_probe_output(text: str) -> str | None:
    """The machine a probe printed after the marker, or None when no line carries the marker."""
    for line in text.splitlines():
        if MARKER in line:
            return line.split(MARKER, 1)[1].strip("\0 \t\r") or None
    return None
