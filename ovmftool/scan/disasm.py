"""Capstone set-up and the instruction classes the scanner cares about."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

STRING_IO = {
    "insb": (8, "in"), "insw": (16, "in"), "insd": (32, "in"),
    "outsb": (8, "out"), "outsw": (16, "out"), "outsd": (32, "out"),
}
# Instructions after which execution never falls through.
TERMINATORS = frozenset({"ret", "retf", "retfq", "iret", "iretd", "iretq", "ud2", "int3", "jmp", "ljmp",
                         "sysret", "sysexit", "rsm"})
CONDITIONAL = frozenset({"jo", "jno", "jb", "jae", "je", "jne", "jbe", "ja", "js", "jns", "jp", "jnp", "jl",
                         "jge", "jle", "jg", "loop", "loope", "loopne", "jrcxz", "jecxz", "jcxz"})
_RIP = re.compile(r"\[rip ([+-]) 0x([0-9a-f]+)\]")


@lru_cache(maxsize=None)
def cs(bits: int):
    """A capstone decoder for 16-, 32- or 64-bit x86 (detail off: the fast path)."""
    import capstone

    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    md.detail = False
    return md


@dataclass(frozen=True)
class StringIo:
    """What a string I/O mnemonic means."""

    width: int
    direction: str  # "in" (INS: port to memory) or "out" (OUTS: memory to port)
    rep: str | None  # "rep", "repne" or None


def string_io(mnemonic: str) -> StringIo | None:
    """Classify capstone's mnemonic ("rep outsb", "insd", ...) or return None."""
    parts = mnemonic.split()
    info = STRING_IO.get(parts[-1])
    if info is None:
        return None
    rep = parts[0] if len(parts) > 1 and parts[0] in ("rep", "repne", "repe", "repz", "repnz") else None
    if rep in ("repe", "repz"):
        rep = "rep"
    elif rep == "repnz":
        rep = "repne"
    return StringIo(info[0], info[1], rep)


def direct_target(op_str: str) -> int | None:
    """Target of a direct branch/call (capstone prints an immediate address), else None."""
    if op_str.startswith("0x"):
        try:
            return int(op_str, 16)
        except ValueError:
            return None
    if op_str.isdigit():
        return int(op_str)
    return None


def rip_target(op_str: str, next_addr: int) -> int | None:
    """Address a RIP-relative operand refers to."""
    m = _RIP.search(op_str)
    if not m:
        return None
    d = int(m.group(2), 16)
    return next_addr + d if m.group(1) == "+" else next_addr - d
