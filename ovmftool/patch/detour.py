"""Rewrite a string I/O instruction of any routine: a detour.

For a site no known routine shape covers, the instruction itself is rewritten. The bytes from
the site on, whole instructions, at least 5 of them (the *window*), become `jmp rel32` to new code
(the rest of the window INT3); the new code does what the string I/O instruction does with
IN/OUT, then runs the other displaced instructions (relative branches and calls re-encoded for
their new place), then jumps back to the end of the window unless the last displaced instruction
left already (RET, JMP).

What the replacement honours, as the instruction does: the units (8, 16, 32 bits), the port in
DX, the count in RCX/ECX for REP (none moved when it is 0; 0 at the end), the pointer RDI/EDI
(INS) or RSI/ESI (OUTS) advanced per unit forward or backward by the direction flag at run time,
no flag and no other register changed (the flags and RAX/EAX are saved on the stack, below the
stack pointer the code found, and restored).

Refused, each with its reason: an address-size prefix (the pointer and count would be the 32-bit
registers of a 64-bit module), a segment override other than DS (FS/GS bases are not flat), REPNE,
a window shorter than 5 bytes before the code ends, a known branch target inside the window (the
jump would land in the middle of the new `jmp`), an indirect jump in the function (it could land
there too), bytes covered by a base relocation, an instruction in the window that cannot move
(RIP-relative operands, JRCXZ/LOOP, another string I/O instruction), a TE module (no room to grow).

`emulate.compare_window` proves each detour against the original on randomised states.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from ovmftool.scan.disasm import cs, direct_target, string_io

_LEGACY = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_JCC = {f"j{c}" for c in ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")}
_CC_CODE = {
    "jo": 0,
    "jno": 1,
    "jb": 2,
    "jae": 3,
    "je": 4,
    "jne": 5,
    "jbe": 6,
    "ja": 7,
    "js": 8,
    "jns": 9,
    "jp": 10,
    "jnp": 11,
    "jl": 12,
    "jge": 13,
    "jle": 14,
    "jg": 15,
}
MIN_WINDOW = 5


class CannotDetour(Exception):
    """Why a site cannot be rewritten by a detour (one line)."""


@dataclass(frozen=True)
class Insn:
    rva: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes


@dataclass(frozen=True)
class Window:
    """The instructions displaced for one site: [rva, end), the site being insns[site]."""

    rva: int
    end: int
    insns: tuple[Insn, ...]
    site: int
    direction: str
    width: int
    rep: bool

    @property
    def size(self) -> int:
        return self.end - self.rva


def _prefixes(raw: bytes) -> bytes:
    i = 0
    while i < len(raw) and raw[i] in _LEGACY:
        i += 1
    return raw[:i]


def window_at(mem: bytes, bits: int, start: int, site: int, limit: int) -> Window:
    """The window that starts at the instruction at `start` (the site, or an instruction before
    it that falls through to it) and holds the string I/O instruction at `site`: whole
    instructions, at least MIN_WINDOW bytes, code up to `limit`. CannotDetour says why not."""
    insns: list[Insn] = []
    pos = start
    for addr, size, mnem, op in cs(bits).disasm_lite(bytes(mem[start : min(limit, site + 64)]), start):
        if addr != pos:
            break
        insns.append(Insn(addr, size, mnem, op, bytes(mem[addr : addr + size])))
        pos = addr + size
        if pos > site and pos - start >= MIN_WINDOW:
            break
    at = next((k for k, i in enumerate(insns) if i.rva == site), None)
    if at is None or string_io(insns[at].mnemonic) is None:
        raise CannotDetour("no string I/O instruction decodes at the site from this start")
    if pos - start < MIN_WINDOW:
        raise CannotDetour(f"only {pos - start} bytes of code from rva 0x{start:X} on: the jump needs {MIN_WINDOW}")
    s = insns[at]
    pre = _prefixes(s.raw)
    sio = string_io(s.mnemonic)
    if 0x67 in pre:
        raise CannotDetour("an address-size prefix (67): the count and pointer are other registers")
    if 0xF2 in pre:
        raise CannotDetour("a REPNE prefix on string I/O")
    if any(p in pre for p in (0x26, 0x2E, 0x36, 0x64, 0x65)):
        raise CannotDetour("a segment override other than DS")
    for k, i in enumerate(insns):
        if k == at:
            continue
        if string_io(i.mnemonic) is not None:
            raise CannotDetour(f"another string I/O instruction at rva 0x{i.rva:X} in the displaced window")
        if "rip" in i.op_str or "eip" in i.op_str:
            raise CannotDetour(f"a RIP-relative operand at rva 0x{i.rva:X} in the displaced window")
        if i.mnemonic in ("jrcxz", "jecxz", "jcxz", "loop", "loope", "loopne"):
            raise CannotDetour(f"{i.mnemonic} at rva 0x{i.rva:X} in the displaced window (no near form)")
        if k < at and (
            i.mnemonic.startswith("ret") or i.mnemonic == "jmp" or i.mnemonic in _JCC or i.mnemonic == "call"
        ):
            raise CannotDetour(f"{i.mnemonic} at rva 0x{i.rva:X} before the site in the window")
    return Window(start, pos, tuple(insns), at, sio.direction, sio.width, sio.rep is not None)


def check_targets(win: Window, targets: set[int]) -> None:
    """CannotDetour when a known branch target or function start lies inside the window (after
    its first byte)."""
    inside = sorted(t for t in targets if win.rva < t < win.end)
    if inside:
        raise CannotDetour(f"a branch target at rva 0x{inside[0]:X} inside the displaced window")


def _unit(bits: int, direction: str, width: int) -> tuple[bytes, bytes, bytes]:
    """(move one unit, pointer forward, pointer backward) for the string I/O instruction."""
    o16 = b"\x66" if width == 16 else b""
    w = width // 8
    if direction == "in":
        move = o16 + (b"\xec" if width == 8 else b"\xed") + o16 + (b"\x88\x07" if width == 8 else b"\x89\x07")
        modrm = 0x7F  # [rdi|edi + disp8] -> rdi|edi
    else:
        move = o16 + (b"\x8a\x06" if width == 8 else b"\x8b\x06") + o16 + (b"\xee" if width == 8 else b"\xef")
        modrm = 0x76  # [rsi|esi + disp8] -> rsi|esi
    rex = b"\x48" if bits == 64 else b""
    fwd = rex + bytes([0x8D, modrm, w])
    back = rex + bytes([0x8D, modrm, (-w) & 0xFF])
    return move, fwd, back


def io_code(bits: int, direction: str, width: int, rep: bool) -> bytes:
    """IN/OUT code equal to the (REP) INS/OUTS: pushf; push rax|eax; [jrcxz done]; L: move one
    unit; step the pointer by DF; [loop L]; done: pop rax|eax; popf."""
    move, fwd, back = _unit(bits, direction, width)
    df = b"\xf6\x44\x24" + bytes([9 if bits == 64 else 5]) + b"\x04"  # test byte [rsp+9|esp+5], 4: DF
    body = move + df + bytes([0x75, len(fwd) + 2]) + fwd + bytes([0xEB, len(back)]) + back
    if rep:
        body = bytes([0xE3, len(body) + 2]) + body + bytes([0xE2, (-(len(body) + 2)) & 0xFF])
    return b"\x9c\x50" + body + b"\x58\x9d"


def _rel32(at: int, size: int, target: int) -> bytes:
    return struct.pack("<i", target - (at + size))


def detour_code(win: Window, bits: int, start: int) -> bytes:
    """The new code for `win`, placed at rva `start`."""
    code = bytearray()
    ends = False
    for k, i in enumerate(win.insns):
        at = start + len(code)
        if k == win.site:
            code += io_code(bits, win.direction, win.width, win.rep)
            continue
        t = direct_target(i.op_str)
        if i.mnemonic == "jmp" and t is not None:
            code += b"\xe9" + _rel32(at, 5, t)
            ends = True
        elif i.mnemonic == "call" and t is not None:
            code += b"\xe8" + _rel32(at, 5, t)
        elif i.mnemonic in _JCC and t is not None:
            code += bytes([0x0F, 0x80 + _CC_CODE[i.mnemonic]]) + _rel32(at, 6, t)
        else:
            code += i.raw
            ends = i.mnemonic.startswith("ret") or (i.mnemonic == "jmp")
    if not ends:
        at = start + len(code)
        code += b"\xe9" + _rel32(at, 5, win.end)
    return bytes(code)


def site_bytes(win: Window, target: int) -> bytes:
    """What the window becomes: `jmp rel32` to the detour, INT3 after it."""
    return b"\xe9" + _rel32(win.rva, 5, target) + b"\xcc" * (win.size - 5)


# --- one module: every site by a detour ---------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A site's detour in its module: the window, where its code goes, the window's new bytes."""

    site: int
    window: Window
    target: int
    old: bytes
    new: bytes


def _function_facts(sizes: dict[int, int], mem: bytes, bits: int, lo: int, hi: int) -> tuple[set[int], bool]:
    """(direct branch targets, holds an indirect jump) of the instructions the walk found in
    [lo, hi): the function holding a site, from its start to the next function's."""
    md = cs(bits)
    targets: set[int] = set()
    indirect = False
    for a in (r for r in sizes if lo <= r < hi):
        for _addr, _size, mnem, op in md.disasm_lite(bytes(mem[a : a + 15]), a, 1):
            if mnem == "jmp" or mnem in _JCC or mnem in ("call", "jrcxz", "jecxz", "loop", "loope", "loopne"):
                t = direct_target(op)
                if t is not None:
                    targets.add(t)
                elif mnem == "jmp":
                    indirect = True
    return targets, indirect


def plan_module(img, cmap, sites: list[int], bits: int) -> tuple[list[tuple[int, Window]], dict[int, str]]:
    """A window for each site rva (trying the site, then up to three instructions before it that
    fall through to it, within its function), and the reason for each site that has none."""
    mem = img.memory
    sizes = cmap.instruction_starts()
    order = sorted(sizes)
    index = {a: i for i, a in enumerate(order)}
    fns = sorted(cmap.functions)
    known = set(cmap.functions) | {t for _f, _s, t in cmap.calls} | {t for _f, _s, t in cmap.tails}
    facts: dict[tuple[int, int], tuple[set[int], bool]] = {}
    windows: list[tuple[int, Window]] = []
    refused: dict[int, str] = {}
    taken: list[tuple[int, int]] = []
    limits = _exec_ranges(img)
    for site in sorted(sites):
        if site not in index:
            refused[site] = "the walk has no instruction there"
            continue
        limit = next((hi for lo, hi in limits if lo <= site < hi), site)
        k = bisect.bisect_right(fns, site)
        lo = fns[k - 1] if k else next((lo for lo, hi in limits if lo <= site < hi), 0)
        hi = fns[k] if k < len(fns) else limit
        if (lo, hi) not in facts:
            facts[(lo, hi)] = _function_facts(sizes, mem, bits, lo, hi)
        targets, indirect = facts[(lo, hi)]
        if indirect:
            refused[site] = (
                f"an indirect jump in its function (rva 0x{lo:X}..0x{hi:X}) could land in a displaced window"
            )
            continue
        cands = [site]
        i = index[site]
        while len(cands) < 4 and i > 0:
            prev = order[i - 1]
            if prev + sizes[prev] != order[i] or prev < lo:
                break
            cands.append(prev)
            i -= 1
        why = None
        for start in cands:
            try:
                win = window_at(mem, bits, start, site, limit)
                check_targets(win, targets | known)
                if img.relocated_in(win.rva, win.end):
                    raise CannotDetour("bytes covered by a base relocation in the window")
                if any(a < win.end and win.rva < b for a, b in taken):
                    raise CannotDetour("its window overlaps another site's")
            except CannotDetour as e:
                why = why or str(e)
                continue
            windows.append((site, win))
            taken.append((win.rva, win.end))
            why = None
            break
        if why is not None:
            refused[site] = why
    return windows, refused


def _exec_ranges(img) -> list[tuple[int, int]]:
    return [(s.rva, s.rva + max(s.virtual_size, s.raw_size)) for s in img.sections if s.executable]


def build(windows: list[tuple[int, Window]], bits: int):
    """`grow.add_code`'s builder for these windows: each detour 16-byte aligned."""
    sizes = [len(detour_code(w, bits, 0)) for _s, w in windows]

    def make(start: int) -> tuple[bytes, list[tuple[int, bytes]]]:
        code = bytearray()
        patches = []
        for (_s, w), n in zip(windows, sizes):
            code += b"\xcc" * ((-len(code)) % 16)
            at = start + len(code)
            code += detour_code(w, bits, at)
            assert len(code) - (at - start) == n
            patches.append((w.rva, site_bytes(w, at)))
        return bytes(code), patches

    return make
