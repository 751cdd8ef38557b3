"""Capstone set-up and the instruction classes the scanner cares about."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache

STRING_IO = {
    "insb": (8, "in"), "insw": (16, "in"), "insd": (32, "in"),
    "outsb": (8, "out"), "outsw": (16, "out"), "outsd": (32, "out"),
}
STRING_IO_MNEMONICS = frozenset(f"{p}{m}" for m in STRING_IO for p in ("", "rep ", "repne ", "repe ", "repnz "))
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


# --- the fast path: capstone's C array read directly ---------------------------------------

K_PLAIN, K_COND, K_JMP, K_CALL, K_END, K_SIO, K_LEA, K_ODD = 0, 1, 2, 3, 4, 5, 6, 7
_INSN_SIZE = 248  # sizeof(cs_insn) in capstone 5 with detail off: id, address, size, bytes[24], ...
_ROW = struct.Struct("<I4xQH230x")
_RIP_B = re.compile(rb"\[rip ([+-]) 0x([0-9a-f]+)\]")


@lru_cache(maxsize=None)
def _kinds() -> dict[int, int]:
    from capstone import x86_const as X

    k: dict[int, int] = {}
    for name in ("JAE", "JA", "JBE", "JB", "JCXZ", "JECXZ", "JE", "JGE", "JG", "JLE", "JL", "JNE", "JNO", "JNP",
                 "JNS", "JO", "JP", "JRCXZ", "JS", "LOOP", "LOOPE", "LOOPNE"):
        k[getattr(X, f"X86_INS_{name}")] = K_COND
    k[X.X86_INS_JMP] = K_JMP
    k[X.X86_INS_CALL] = K_CALL
    for name in ("LJMP", "RET", "RETF", "RETFQ", "IRET", "IRETD", "IRETQ", "UD2", "INT3", "SYSRET", "SYSEXIT",
                 "RSM"):
        if hasattr(X, f"X86_INS_{name}"):
            k[getattr(X, f"X86_INS_{name}")] = K_END
    for name in ("INSB", "INSW", "INSD", "OUTSB", "OUTSW", "OUTSD"):
        k[getattr(X, f"X86_INS_{name}")] = K_SIO
    k[X.X86_INS_LEA] = K_LEA
    # Legal but never emitted by compilers for UEFI code, and what text decodes to: a pointer
    # target whose code holds one of these is data.
    for name in ("INT", "INTO", "BOUND", "ARPL", "AAA", "AAS", "DAA", "DAS", "AAM", "AAD", "SALC", "XLATB", "LDS",
                 "LES", "LCALL", "ENTER", "FWAIT", "SAHF", "LAHF", "CMC", "INT1"):
        if hasattr(X, f"X86_INS_{name}"):
            k[getattr(X, f"X86_INS_{name}")] = K_ODD
    return k


class RawDecoder:
    """Linear decoding of a module's memory image straight from capstone's C array.

    `decode(a, end)` returns [(rva, size, kind, aux)]: aux is the direct target of a branch or
    call (None when indirect), the target of a RIP-relative LEA, or the mnemonic of a string
    I/O instruction. It stops at an undecodable byte, at `end`, or after `max_insns`.
    """

    def __init__(self, mem: bytes, bits: int) -> None:
        import ctypes

        import capstone

        self._ct = ctypes
        self._cs = capstone._cs
        self._insn_t = capstone._cs_insn
        self.handle = cs(bits).csh
        self.buf = (ctypes.c_char * max(1, len(mem))).from_buffer_copy(mem)
        self.base = ctypes.addressof(self.buf)
        self.kinds = _kinds()
        self.size = len(mem)

    def decode(self, a: int, end: int, max_insns: int = 64) -> tuple[list[int], list[int], dict]:
        """Decode linearly from `a`: (addresses, sizes, {rva: (kind, aux)} for the special ones).

        aux is the direct target of a branch or call (None when indirect), the target of a
        RIP-relative LEA, or the mnemonic of a string I/O instruction. Decoding stops at an
        undecodable byte, at `end`, or after `max_insns`.
        """
        ct = self._ct
        ins = ct.POINTER(self._insn_t)()
        # max_insns instructions span at most 15 bytes each; capstone reads every prefix it is
        # given before refusing an over-long instruction, so do not give it megabytes
        span = end - a if max_insns <= 0 else min(end - a, 15 * max_insns)
        n = self._cs.cs_disasm(self.handle, ct.cast(self.base + a, ct.POINTER(ct.c_char)), max(0, span), a,
                               max_insns, ct.byref(ins))
        if n <= 0:
            return [], [], {}
        try:
            raw = ct.string_at(ins, n * _INSN_SIZE)
        finally:
            self._cs.cs_free(ins, n)
        rows = list(_ROW.iter_unpack(raw))
        kinds = self.kinds
        addrs = [r[1] for r in rows]
        sizes = [r[2] for r in rows]
        special = {}
        for j in [j for j, r in enumerate(rows) if r[0] in kinds]:
            iid, addr, size = rows[j]
            k = kinds[iid]
            o = j * _INSN_SIZE
            aux = None
            if k == K_SIO:
                aux = raw[o + 42 : o + 74].split(b"\0", 1)[0].decode()
            else:
                op = raw[o + 74 : o + 120].split(b"\0", 1)[0]
                if k == K_LEA:
                    m = _RIP_B.search(op)
                    if m is None:
                        continue
                    d = int(m.group(2), 16)
                    aux = addr + size + (d if m.group(1) == b"+" else -d)
                elif k in (K_COND, K_JMP, K_CALL) and op.startswith(b"0x") and b":" not in op:
                    aux = int(op, 16)
            special[addr] = (k, aux)
        return addrs, sizes, special


@lru_cache(maxsize=None)
def native_decoder(bits: int):
    """(ovmftool.scan._walk.discover, its capstone arguments) or None when the C walk is not built.

    The C walk decodes with the capstone library the Python package loaded, called through
    function pointers; it assumes capstone 5's `cs_insn` layout, as `RawDecoder` does.
    """
    try:
        from ovmftool.scan import _walk
    except ImportError:
        return None
    import ctypes

    import capstone

    if not capstone.__version__.startswith("5."):
        return None
    lib = capstone._cs
    ptr = [ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in ("cs_malloc", "cs_disasm_iter", "cs_free")]
    kinds = _kinds()
    table = bytearray(max(kinds) + 1)
    for iid, k in kinds.items():
        table[iid] = k
    return _walk.discover, (cs(bits).csh.value, *ptr, bytes(table))
