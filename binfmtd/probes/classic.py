"""Probe code for the classic ISAs: MIPS, SPARC, m68k, SuperH, Alpha and PA-RISC.

Hand-assembled machine code of the program binfmtd.probes describes, with the addresses of
binfmtd.probes.elf's layout as immediates. SPECS: each target's ELF class, byte order, e_machine,
e_flags and code, keyed by binfmtd.targets names.
"""

from __future__ import annotations

from binfmtd.probes.elf import (
    BE, EM_68K, EM_ALPHA, EM_MIPS, EM_PARISC, EM_SH, EM_SPARC, EM_SPARC32PLUS, EM_SPARCV9, LE, Spec, pack,
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


# ---- The ABI bits (e_flags) a real binary of each target carries ----------------------------------

_MIPS_NOREORDER = 0x1
_MIPS_ABI2 = 0x20  # n32; binfmt_misc's MIPS entries read this bit to tell n32 from o32
_MIPS_O32 = 0x1000 | 0x70000000 | _MIPS_NOREORDER  # EF_MIPS_ABI_O32, mips32r2
_MIPS_64R2 = 0x80000000 | _MIPS_NOREORDER  # n64 as is, n32 with _MIPS_ABI2
_SPARC_32PLUS = 0x100
_SH_SH4 = 0x9
_PARISC_1_1 = 0x210


def _sh4(byteorder: str) -> bytes:
    return pack(_SH4, byteorder, 2) + pack(_SH4_POOL, byteorder)


SPECS: dict[str, Spec] = {
    "mips": Spec(32, BE, EM_MIPS, _MIPS_O32, pack(_MIPS_O32_CODE, BE)),
    "mipsel": Spec(32, LE, EM_MIPS, _MIPS_O32, pack(_MIPS_O32_CODE, LE)),
    "mipsn32": Spec(32, BE, EM_MIPS, _MIPS_64R2 | _MIPS_ABI2, pack(_MIPS_N32_CODE, BE)),
    "mipsn32el": Spec(32, LE, EM_MIPS, _MIPS_64R2 | _MIPS_ABI2, pack(_MIPS_N32_CODE, LE)),
    "mips64": Spec(64, BE, EM_MIPS, _MIPS_64R2, pack(_MIPS_N64_CODE, BE)),
    "mips64el": Spec(64, LE, EM_MIPS, _MIPS_64R2, pack(_MIPS_N64_CODE, LE)),
    "sparc": Spec(32, BE, EM_SPARC, 0, pack(_sparc(0x10), BE)),
    "sparc32plus": Spec(32, BE, EM_SPARC32PLUS, _SPARC_32PLUS, pack(_sparc(0x10), BE)),
    "sparc64": Spec(64, BE, EM_SPARCV9, 0, pack(_sparc(0x6D), BE)),
    "m68k": Spec(32, BE, EM_68K, 0, _M68K),
    "sh4": Spec(32, LE, EM_SH, _SH_SH4, _sh4(LE)),
    "sh4eb": Spec(32, BE, EM_SH, _SH_SH4, _sh4(BE)),
    "alpha": Spec(64, LE, EM_ALPHA, 0, pack(_ALPHA, LE)),
    "hppa": Spec(32, BE, EM_PARISC, _PARISC_1_1, pack(_HPPA, BE)),
}
