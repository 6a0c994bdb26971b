"""Probe code for the embedded ISAs: OpenRISC, MicroBlaze, Xtensa, Hexagon, CRIS and Nios II.

Hand-assembled machine code of the program binfmtd.probes describes, with the addresses of
binfmtd.probes.elf's layout as immediates. SPECS: each target's ELF class, byte order, e_machine,
e_flags and code, keyed by binfmtd.targets names.
"""

from __future__ import annotations

from binfmtd.probes.elf import (
    BE, EM_ALTERA_NIOS2, EM_CRIS, EM_HEXAGON, EM_MICROBLAZE_OLD, EM_OPENRISC, EM_XTENSA, LE, Spec, pack,
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


# ---- The ABI bits (e_flags) a real binary of each target carries ----------------------------------

_XTENSA_XT_INSN_LIT = 0x300
_HEXAGON_V67 = 0x67  # QEMU 7.2 accepts v5..v67 and refuses other values
_CRIS_VARIANT_V32 = 0x2  # the code is CRIS v32, the CPU QEMU's linux-user emulates (v10 would hang)


def _xtensa(column: int) -> bytes:
    return bytes.fromhex("".join(pair[column] for pair in _XTENSA_LE_BE))


SPECS: dict[str, Spec] = {
    "or1k": Spec(32, BE, EM_OPENRISC, 0, pack(_OR1K, BE)),
    "microblaze": Spec(32, BE, EM_MICROBLAZE_OLD, 0, pack(_MICROBLAZE, BE)),
    "microblazeel": Spec(32, LE, EM_MICROBLAZE_OLD, 0, pack(_MICROBLAZE, LE)),
    "xtensa": Spec(32, LE, EM_XTENSA, _XTENSA_XT_INSN_LIT, _xtensa(0)),
    "xtensaeb": Spec(32, BE, EM_XTENSA, _XTENSA_XT_INSN_LIT, _xtensa(1)),
    "hexagon": Spec(32, LE, EM_HEXAGON, _HEXAGON_V67, pack(_HEXAGON, LE)),
    "cris": Spec(32, LE, EM_CRIS, _CRIS_VARIANT_V32, bytes.fromhex("".join(_CRIS))),
    "nios2": Spec(32, LE, EM_ALTERA_NIOS2, 0, pack(_NIOS2, LE)),
}
