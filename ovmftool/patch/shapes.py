"""Recognise the routine a string I/O site sits in and say how to rewrite it.

Known shapes (BaseIoLibIntrinsic, every tree and arch the signatures cover):

- `sev-fifo` — IoFifoSev.nasm: the REP path sits beside an unrolled IN/OUT loop::

      test eax, eax ; jnz NoRep ; cld ; rep insb ; jmp Done ; NoRep: [jrcxz Done] ; Loop: ...

  Rewritten in place: `rep insb ; jmp Done` becomes a NOP of the same length, so the REP path
  falls into NoRep (whose `jrcxz` keeps count 0 a no-op); where NoRep has no `jrcxz` (older
  trees), the bytes become `jrcxz Done` and a NOP. Nothing moves; `cld` stays.
- `rep-fifo` — IoFifo.nasm (non-Sev instance before edk2-stable202402): pure REP, no loop, no
  room for one in place: the module is grown (`grow`) and the routine's entry jumps to a loop.

Anything else is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ovmftool.model.pe import PeImage

NOPS = {
    1: b"\x90",
    2: b"\x66\x90",
    3: b"\x0f\x1f\x00",
    4: b"\x0f\x1f\x40\x00",
    5: b"\x0f\x1f\x44\x00\x00",
    6: b"\x66\x0f\x1f\x44\x00\x00",
    7: b"\x0f\x1f\x80\x00\x00\x00\x00",
    8: b"\x0f\x1f\x84\x00\x00\x00\x00\x00",
    9: b"\x66\x0f\x1f\x84\x00\x00\x00\x00\x00",
}


# How `patch` rewrites a site: the Sev routine's REP path in place by its own loop (sev-fifo), an
# IoFifo.nasm routine grown into new room (rep-fifo), the instructions around any other site moved
# into grown space (detour); unknown: no shape matched (the module is then detoured).
Shape = Literal["sev-fifo", "rep-fifo", "detour", "unknown"]


@dataclass(frozen=True)
class Rewrite:
    """Replace `old` at `rva` with `new` (same length) in one module."""

    rva: int
    old: bytes
    new: bytes
    shape: Shape
    note: str


@dataclass(frozen=True)
class Verdict:
    """What can be done about one site: a rewrite, or why not."""

    shape: Shape  # sev-fifo, rep-fifo or unknown
    rewrite: Rewrite | None  # the in-place rewrite (sev-fifo)
    reason: str | None  # why not, when there is no way (None for rep-fifo: the module is grown)


def _s8(b: int) -> int:
    return b - 256 if b >= 128 else b


def classify(img: PeImage, rva: int, size: int) -> Verdict:
    """Match the string I/O instruction at `rva` (`size` bytes) to a known routine shape."""
    mem = img.memory
    j = rva + size  # what follows the REP instruction
    if j + 2 <= len(mem) and rva >= 3 and mem[rva - 1] == 0xFC and mem[rva - 3] == 0x75:
        nojmp = rva - 1 + _s8(mem[rva - 2])  # jnz NoRep
        if mem[j] == 0xEB:
            after, target = j + 2, j + 2 + _s8(mem[j + 1])
        elif mem[j] == 0xE9 and j + 5 <= len(mem):
            after = j + 5
            target = after + int.from_bytes(mem[j + 1 : j + 5], "little", signed=True)
        else:
            after = target = -1
        if after == nojmp and after > 0:
            n = after - rva
            if n - 2 not in NOPS or n not in NOPS:  # redundant prefixes: not the routine GCC/NASM emit
                return Verdict("sev-fifo", None, f"REP path of {n} bytes, longer than the rewrite handles")
            if mem[after] == 0xE3 and after + 2 + _s8(mem[after + 1]) == target:
                new = NOPS[n]
                note = "REP path falls into the loop (its jrcxz keeps count 0 a no-op)"
            elif -128 <= target - (rva + 2) < 128:
                new = bytes([0xE3, (target - (rva + 2)) & 0xFF]) + NOPS[n - 2]
                note = "REP path becomes jrcxz Done, then falls into the loop"
            else:
                return Verdict("sev-fifo", None, "Done label out of jrcxz range")
            if img.relocated_in(rva, after):
                return Verdict("sev-fifo", None, "bytes covered by a base relocation")
            return Verdict("sev-fifo", Rewrite(rva, bytes(mem[rva:after]), new, "sev-fifo", note), None)
    tail = bytes(mem[j : j + 4])
    if tail[:2] in (b"\x5f\xc3", b"\x5e\xc3") or tail in (b"\x4c\x89\xc7\xc3", b"\x4c\x89\xc6\xc3"):
        return Verdict("rep-fifo", None, None)
    return Verdict("unknown", None, "not a known string I/O routine shape")
