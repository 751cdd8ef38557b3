"""Capstone set-up and the instruction classes the scanner cares about."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import struct
import sys
import types
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, cast

# capstone is imported where it is used: 52 ms at start-up, which `info`, `extract` and every
# scan answered from the cache would pay for nothing; `_walk` (the C walk) may not be built.

if TYPE_CHECKING:
    from collections.abc import Callable

    import capstone

    from ovmftool.scan._walk import DiscoverResult

STRING_IO = {
    "insb": (8, "in"),
    "insw": (16, "in"),
    "insd": (32, "in"),
    "outsb": (8, "out"),
    "outsw": (16, "out"),
    "outsd": (32, "out"),
}


@cache
def cs(bits: int) -> capstone.Cs:
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


# --- the fast path: capstone's C array read directly ---------------------------------------

K_PLAIN, K_COND, K_JMP, K_CALL, K_END, K_SIO, K_LEA, K_ODD = 0, 1, 2, 3, 4, 5, 6, 7
_INSN_SIZE = 248  # sizeof(cs_insn) in capstone 5 with detail off: id, address, size, bytes[24], ...
_ROW = struct.Struct("<I4xQH230x")
_RIP_B = re.compile(rb"\[rip ([+-]) 0x([0-9a-f]+)\]")


def _x86_const() -> Any:
    """capstone's x86 instruction ids (X86_INS_*), without importing the capstone package (~25 ms
    of start-up: every architecture's bindings) when it is not imported yet: read from the
    package's own x86_const.py, a generated file of `X86_INS_NAME = NUMBER` lines
    (tests/test_scan_native.py checks the ids equal the package's)."""

    path = os.path.join(_capstone_dir() or "", "x86_const.py")
    if "capstone" in sys.modules or not os.path.isfile(path):
        from capstone import x86_const

        return x86_const
    ids: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("X86_INS_"):
                name, eq, value = line.partition(" = ")
                if not eq or not value.strip().isdigit():
                    from capstone import x86_const  # not the layout this reads: the package's own

                    return x86_const
                ids[name] = int(value)
    return types.SimpleNamespace(**ids)


def _capstone_dir() -> str | None:
    """The capstone package's directory, found without importing it."""

    try:
        spec = importlib.util.find_spec("capstone")
    except (ImportError, ValueError):
        return None
    locs = list(spec.submodule_search_locations or ()) if spec is not None else []
    return locs[0] if locs else None


@cache
def _capstone_lib() -> ctypes.CDLL | None:
    """capstone's C library (ctypes) for the native walk, or None unless it is capstone 5.

    The capstone package's own when the package is imported; else, on Linux, the file the package
    loads first (in $LIBCAPSTONE_PATH, else in the package's lib/ directory, as
    capstone/__init__.py looks), loaded the same way without importing the package; else the
    package's (imported). One file either way, so both walks decode with the same library."""

    lib = None
    if "capstone" not in sys.modules and sys.platform.startswith("linux"):
        pkg = _capstone_dir()
        for d in (os.environ.get("LIBCAPSTONE_PATH"), os.path.join(pkg, "lib") if pkg else None):
            if d is None:
                continue
            f = next(
                (
                    f
                    for f in (os.path.join(d, "libcapstone.so"), os.path.join(d, "libcapstone.so.5"))
                    if os.path.exists(f)
                ),
                None,
            )
            if f is not None:
                lib = ctypes.CDLL(f, mode=getattr(os, "RTLD_DEEPBIND", 0))
                break
    if lib is None:
        import capstone

        if not capstone.__version__.startswith("5."):
            return None
        lib = capstone._cs
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cs_version(ctypes.byref(major), ctypes.byref(minor))
    return lib if major.value == 5 else None


# (capstone handle, cs_malloc, cs_disasm_iter, cs_free): what the native walk decodes with
_Handle = tuple[int, int, int, int]


@cache
def _native_handle(bits: int) -> _Handle | None:
    """(capstone handle for x86 `bits`, cs_malloc, cs_disasm_iter, cs_free) for the C side, or None.
    A handle of its own, with capstone's defaults (detail off, Intel syntax), as `cs` has."""

    lib = _capstone_lib()
    if lib is None:
        return None
    handle = ctypes.c_size_t()
    mode = {16: 1 << 1, 32: 1 << 2, 64: 1 << 3}[bits]  # CS_MODE_16/32/64
    if lib.cs_open(3, mode, ctypes.byref(handle)) != 0:  # CS_ARCH_X86; CS_ERR_OK
        return None
    ptr = [ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in ("cs_malloc", "cs_disasm_iter", "cs_free")]
    return cast(_Handle, (handle.value, *ptr))  # function addresses: never NULL


def disasm_lite(code: bytes, bits: int) -> list[tuple[int, int, str, str]]:
    """capstone's `Cs.disasm_lite(code, 0)` as a list: (address, size, mnemonic, op_str) up to the
    first byte that does not decode; through the native walk when it is built (no capstone package)."""
    if native_walk_on():
        from ovmftool.scan import _walk

        # a handle for every mode: native_walk_on opened one for 64 bits, with capstone 5's library
        return _walk.disasm_lite(code, *cast(_Handle, _native_handle(bits)))
    return list(cs(bits).disasm_lite(code, 0))


@cache
def _kinds() -> dict[int, int]:
    X = _x86_const()

    k: dict[int, int] = {}
    for name in (
        "JAE",
        "JA",
        "JBE",
        "JB",
        "JCXZ",
        "JECXZ",
        "JE",
        "JGE",
        "JG",
        "JLE",
        "JL",
        "JNE",
        "JNO",
        "JNP",
        "JNS",
        "JO",
        "JP",
        "JRCXZ",
        "JS",
        "LOOP",
        "LOOPE",
        "LOOPNE",
    ):
        k[getattr(X, f"X86_INS_{name}")] = K_COND
    k[X.X86_INS_JMP] = K_JMP
    k[X.X86_INS_CALL] = K_CALL
    for name in ("LJMP", "RET", "RETF", "RETFQ", "IRET", "IRETD", "IRETQ", "UD2", "INT3", "SYSRET", "SYSEXIT", "RSM"):
        if hasattr(X, f"X86_INS_{name}"):
            k[getattr(X, f"X86_INS_{name}")] = K_END
    for name in ("INSB", "INSW", "INSD", "OUTSB", "OUTSW", "OUTSD"):
        k[getattr(X, f"X86_INS_{name}")] = K_SIO
    k[X.X86_INS_LEA] = K_LEA
    # Legal but never emitted by compilers for UEFI code, and what text decodes to: a pointer
    # target whose code holds one of these is data.
    for name in (
        "INT",
        "INTO",
        "BOUND",
        "ARPL",
        "AAA",
        "AAS",
        "DAA",
        "DAS",
        "AAM",
        "AAD",
        "SALC",
        "XLATB",
        "LDS",
        "LES",
        "LCALL",
        "ENTER",
        "FWAIT",
        "SAHF",
        "LAHF",
        "CMC",
        "INT1",
    ):
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

        import capstone

        self._ct = ctypes
        self._cs = capstone._cs
        self._insn_t = capstone._cs_insn
        self.handle = cs(bits).csh
        self.buf = (ctypes.c_char * max(1, len(mem))).from_buffer_copy(mem)
        self.base = ctypes.addressof(self.buf)
        self.kinds = _kinds()
        self.size = len(mem)

    def decode(self, a: int, end: int, max_insns: int = 64) -> tuple[list[int], list[int], dict[int, tuple[int, Any]]]:
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
        n = self._cs.cs_disasm(
            self.handle, ct.cast(self.base + a, ct.POINTER(ct.c_char)), max(0, span), a, max_insns, ct.byref(ins)
        )
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


def native_walk_on() -> bool:
    """True when the native walk is built and OVMFTOOL_PURE_PYTHON is unset (codemap.native_available)."""
    return not os.environ.get("OVMFTOOL_PURE_PYTHON") and native_decoder(64) is not None


@cache
def native_decoder(bits: int) -> tuple[Callable[..., DiscoverResult], tuple[int, int, int, int, bytes]] | None:
    """(ovmftool.scan._walk.discover, its capstone arguments) or None when the C walk is not built.

    The C walk decodes with the capstone library the Python package loaded, called through
    function pointers; it assumes capstone 5's `cs_insn` layout, as `RawDecoder` does.
    """
    try:
        from ovmftool.scan import _walk
    except ImportError:
        return None
    handle = _native_handle(bits)
    if handle is None:
        return None
    kinds = _kinds()
    table = bytearray(max(kinds) + 1)
    for iid, k in kinds.items():
        table[iid] = k
    return _walk.discover, (*handle, bytes(table))
