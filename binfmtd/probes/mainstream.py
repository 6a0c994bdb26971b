"""Probe code for the mainstream ISAs: x86, ARM, RISC-V, LoongArch, PowerPC and s390x.

Hand-assembled machine code of the program binfmtd.probes describes, with the addresses of
binfmtd.probes.elf's layout as immediates. SPECS: each target's ELF class, byte order, e_machine,
e_flags and code, keyed by binfmtd.targets names.
"""

from __future__ import annotations

from binfmtd.probes.elf import (
    BE, EM_386, EM_486, EM_AARCH64, EM_ARM, EM_LOONGARCH, EM_PPC, EM_PPC64, EM_RISCV, EM_S390,
    EM_X86_64, LE, Spec, pack,
)

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


# ---- The ABI bits (e_flags) a real binary of each target carries ----------------------------------

_ARM_EABI5 = 0x05000000
_ARM_BE8 = 0x00800000  # code little-endian, data big-endian: how ARMv6+ big-endian binaries run
_RISCV_RVC_DOUBLE = 0x5  # EF_RISCV_RVC | EF_RISCV_FLOAT_ABI_DOUBLE, as Debian's lp64d binaries
_LOONGARCH_LP64D_OBJV1 = 0x43  # EF_LOONGARCH_ABI_DOUBLE_FLOAT | EF_LOONGARCH_OBJABI_V1
_PPC64_ELFV1, _PPC64_ELFV2 = 1, 2  # QEMU reads e_entry as a descriptor unless this says ELFv2

SPECS: dict[str, Spec] = {
    "i386": Spec(32, LE, EM_386, 0, _I386),
    "i486": Spec(32, LE, EM_486, 0, _I386),
    "x86_64": Spec(64, LE, EM_X86_64, 0, _X86_64),
    "aarch64": Spec(64, LE, EM_AARCH64, 0, pack(_AARCH64, LE)),
    "aarch64_be": Spec(64, BE, EM_AARCH64, 0, pack(_AARCH64, LE)),
    "arm": Spec(32, LE, EM_ARM, _ARM_EABI5, pack(_ARM, LE)),
    "armeb": Spec(32, BE, EM_ARM, _ARM_EABI5 | _ARM_BE8, pack(_ARM, LE)),
    "riscv32": Spec(32, LE, EM_RISCV, _RISCV_RVC_DOUBLE, pack(_RISCV, LE)),
    "riscv64": Spec(64, LE, EM_RISCV, _RISCV_RVC_DOUBLE, pack(_RISCV, LE)),
    "loongarch64": Spec(64, LE, EM_LOONGARCH, _LOONGARCH_LP64D_OBJV1, pack(_LOONGARCH, LE)),
    "ppc": Spec(32, BE, EM_PPC, 0, pack(_PPC, BE)),
    "ppc64": Spec(64, BE, EM_PPC64, _PPC64_ELFV1, pack(_PPC, BE), descriptor=True),
    "ppc64le": Spec(64, LE, EM_PPC64, _PPC64_ELFV2, pack(_PPC, LE)),
    "s390x": Spec(64, BE, EM_S390, 0, _S390X),
}
