"""Telling code from data in one module: recursive-descent disassembly.

GCC-built EDK II modules keep string constants inside `.text`, so a linear sweep decodes text
as instructions (0x6C..0x6F are `l m n o` and INS/OUTS). Code here is only what one of these
reaches, following direct calls, jumps and fall-through:

- strong roots: the entry point, exported functions, and routines matched by a built-in
  signature (byte-exact EDK II routines);
- weak roots, accepted only when their code decodes cleanly, does not overlap code already
  found, does not start like a NUL-terminated ASCII or UCS-2 string, and contains no bare
  (REP-less) INS/OUTS: targets of base relocations and RIP-relative LEAs that point into an
  executable section (function pointers, or string pointers), and
- gap fill: a hole between two pieces of code that decodes, instruction by instruction, exactly
  up to the code after it and ends in a terminator (unreferenced routines linked beside used
  ones, as NASM objects are).

Each instruction is attributed to the function (root or call target) that reached it first.

`discover` runs the same walk in C (`_walk.c`, built at install time) when it is available and
falls back to the `Discoverer` below otherwise; the two give equal code maps
(tests/test_scan_native.py). Set OVMFTOOL_PURE_PYTHON=1 to force the Python walk.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ovmftool.errors import LimitExceeded
from ovmftool.model import structs as S
from ovmftool.scan.disasm import (
    K_CALL,
    K_COND,
    K_END,
    K_JMP,
    K_LEA,
    K_ODD,
    K_SIO,
    RawDecoder,
    cs,
    native_decoder,
    native_walk_on,
)

DECODE_INSNS = 32
SWEEP_INSNS = 1024
# instructions decoded per capstone call in the first decode of an unproven pointer target (most
# are data and fail early); decoded instructions are cached
PROBE_INSNS = 8
_PAD = frozenset(b"\x90\xcc\x00")
# Caps on one module's code map (_walk.c has the same): far above any real module (OVMF's largest
# has 2,902 functions, 14,808 calls, 6 sites), low enough that a hostile one cannot make the map
# take gigabytes.
MAX_FUNCS = 65536
MAX_TRANSFERS = 262144  # calls and tail jumps
MAX_SITES = 65536
MAX_OUTSIDE = 4096  # function starts outside the image


class CodeMapLimit(LimitExceeded):
    """A module's code map would exceed the walk's caps: a hostile module, not code."""


_CAPS_MESSAGE = (
    "the module's code map exceeds the walk's caps (more than 65536 functions, 262144 calls and jumps, "
    "65536 string I/O sites or 4096 targets outside it)"
)


@dataclass
class Site:
    """A string I/O instruction found in code."""

    rva: int
    size: int
    mnemonic: str
    function: int  # start rva of the function that reached it


Transfer = Literal["call", "jmp"]  # a direct call, or a tail jump


@dataclass
class CodeMap:
    """Result of code discovery in one module."""

    starts: dict[int, int] = field(default_factory=dict)  # instruction rva -> size
    functions: set[int] = field(default_factory=set)
    calls: list[tuple[int, int, int]] = field(default_factory=list)  # (caller fn, call rva, target)
    tails: list[tuple[int, int, int]] = field(default_factory=list)  # (fn, jmp rva, target fn)
    sites: list[Site] = field(default_factory=list)
    sizes: bytes | None = None  # the native walk's instruction starts: size per rva, 0 where none
    code_bytes: int = 0  # sum of instruction sizes
    # A lean map (`discover(lean=True)` of a module without sites) holds only code_bytes and
    # function_count: its starts, functions, calls and tails are left empty.
    lean: bool = False
    n_functions: int | None = None  # the lean map's count of functions
    # target -> transfers, made once
    _callers: dict[int, set[tuple[int, int, Transfer]]] | None = field(default=None, init=False, repr=False)

    @property
    def function_count(self) -> int:
        """How many functions the walk found (lean or not)."""
        return cast(int, self.n_functions) if self.lean else len(self.functions)  # a lean map has its count

    def instruction_starts(self) -> dict[int, int]:
        """Instruction rva -> size, whichever walk made the map."""
        if self.sizes is None:
            return self.starts
        return {a: n for a, n in enumerate(self.sizes) if n}

    def reachable_from(self, entry: int) -> set[int]:
        """Functions reachable from `entry` by direct calls and tail jumps."""
        edges: dict[int, set[int]] = {}
        for f, _site, t in self.calls:
            edges.setdefault(f, set()).add(t)
        for f, _site, t in self.tails:
            edges.setdefault(f, set()).add(t)
        seen, todo = {entry}, [entry]
        while todo:
            f = todo.pop()
            for t in edges.get(f, ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    def callers_of(self, fn: int) -> list[tuple[int, int, Transfer]]:
        """(caller function start, instruction rva, "call" or "jmp") for direct transfers to `fn`."""
        if self._callers is None:  # one pass over the transfers, not one per site
            idx: dict[int, set[tuple[int, int, Transfer]]] = {}
            for f, s, t in self.calls:
                idx.setdefault(t, set()).add((f, s, "call"))
            for f, s, t in self.tails:
                if f != t:
                    idx.setdefault(t, set()).add((f, s, "jmp"))
            self._callers = idx
        return sorted(self._callers.get(fn, ()))


class _Trial:
    """Code found from one root, kept apart until the root is accepted."""

    def __init__(self) -> None:
        self.starts: dict[int, int] = {}
        self.functions: set[int] = set()
        self.calls: list[tuple[int, int, int]] = []
        self.tails: list[tuple[int, int, int]] = []
        self.sites: list[Site] = []
        self.leas: list[int] = []
        self.bare_string_io = False
        self.ok = True


class Discoverer:
    """Recursive descent over one module's memory image."""

    def __init__(self, mem: bytes, bits: int, exec_ranges: list[tuple[int, int]]) -> None:
        self.mem = mem
        self.bits = bits
        self.md = cs(bits)
        self.ranges = sorted(exec_ranges)
        self.map = CodeMap()
        self._lo = [r[0] for r in self.ranges]
        self.raw = RawDecoder(mem, bits)
        self.size_of: dict[int, int] = {}  # decoded instructions: rva -> size
        # rva -> (kind, aux) for branches, LEAs, INS/OUTS: aux an int (target), a str (mnemonic) or None
        self.special: dict[int, tuple[int, Any]] = {}
        self.outside = 0  # functions found outside the memory image (MAX_OUTSIDE)
        self._sweep()

    # --- helpers -------------------------------------------------------------------------

    def in_exec(self, a: int) -> bool:
        i = bisect.bisect_right(self._lo, a) - 1
        return i >= 0 and a < self.ranges[i][1]

    def _range_end(self, a: int) -> int:
        i = bisect.bisect_right(self._lo, a) - 1
        return self.ranges[i][1]

    def _inside_other(self, a: int, trial: _Trial) -> bool:
        """True when `a` falls inside (not at the start of) an instruction already decoded."""
        known, mine = self.map.starts, trial.starts
        for back in range(1, 15):
            sz = known.get(a - back) or mine.get(a - back)
            if sz is not None and sz > back:
                return True
        return False

    def looks_like_string(self, a: int) -> bool:
        """ASCII (>= 4 printable then NUL) or UCS-2 (>= 3 chars then NUL NUL) at `a`."""
        m = self.mem
        n = 0
        while a + n < len(m) and (0x20 <= m[a + n] < 0x7F or m[a + n] in (9, 10, 13)):
            n += 1
            if n > 256:
                break
        if n >= 4 and a + n < len(m) and m[a + n] == 0:
            return True
        k = 0
        while (
            a + 2 * k + 1 < len(m)
            and (0x20 <= m[a + 2 * k] < 0x7F or m[a + 2 * k] in (9, 10, 13))
            and m[a + 2 * k + 1] == 0
        ):
            k += 1
            if k > 128:
                break
        return k >= 3 and m[a + 2 * k : a + 2 * k + 2] == b"\0\0"

    # --- the walk ------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Decode every executable range linearly once, in large batches, into the caches.

        This is not a verdict on what is code: it only primes the caches, so that the descent,
        which decides, finds most instructions decoded already (decoding from an address always
        yields the same instruction). Targets that fall between these boundaries (code after
        data) are decoded on demand.
        """
        size_of, special, raw = self.size_of, self.special, self.raw
        for lo, hi in self.ranges:
            a = lo
            while a < hi:
                addrs, sizes, sp = raw.decode(a, hi, SWEEP_INSNS)
                if not addrs:
                    a += 1
                    continue
                size_of.update(zip(addrs, sizes))
                special.update(sp)
                a = addrs[-1] + sizes[-1]

    def _decode(self, a: int, count: int = 0) -> bool:
        """Decode linearly from `a` into the caches. Decoding from an address always yields the
        same instructions, so overlapping decodes agree and simply refresh the same entries."""
        addrs, sizes, special = self.raw.decode(a, self._range_end(a), count or DECODE_INSNS)
        if not addrs:
            return False
        self.size_of.update(zip(addrs, sizes))
        self.special.update(special)
        return True

    def _walk(self, root: int, trial: _Trial, strict: bool) -> None:
        """Explore the function at `root` and everything it calls into `trial`."""
        known, size_of, special, functions = self.map.starts, self.size_of, self.special, self.map.functions
        tstarts = trial.starts
        fn_todo = [root]
        trial.functions.add(root)
        while fn_todo and trial.ok:
            fn = fn_todo.pop()
            blocks = [fn]
            while blocks and trial.ok:
                a = blocks.pop()
                if a in known or a in tstarts:
                    continue
                if not self.in_exec(a) or (strict and self._inside_other(a, trial)):
                    if strict:
                        trial.ok = False
                    continue
                end = self._range_end(a)
                probe = PROBE_INSNS if strict and len(tstarts) < PROBE_INSNS else 0
                while a < end and a not in known and a not in tstarts:
                    size = size_of.get(a)
                    if size is None:
                        if not self._decode(a, probe):
                            if strict:
                                trial.ok = False
                            break
                        size = size_of[a]
                    tstarts[a] = size
                    sp = special.get(a)
                    addr = a
                    a += size
                    if sp is not None:
                        kind, aux = sp
                        if kind == K_COND:
                            if aux is not None:
                                blocks.append(aux)
                        elif kind == K_CALL:
                            if aux is not None:
                                trial.calls.append((fn, addr, aux))
                                if aux not in trial.functions and aux not in functions:
                                    trial.functions.add(aux)
                                    fn_todo.append(aux)
                            # A string right after a call: the call does not return (SecMain's
                            # entry calls SecCoreStartupWithStack, and GCC put PrintLib's
                            # "<null string>" after it in edk2-stable201905/201911): code does not
                            # fall through into it.
                            if self.looks_like_string(a):
                                break
                        elif kind == K_JMP:
                            if aux is not None:
                                if aux in functions or aux in trial.functions:
                                    trial.tails.append((fn, addr, aux))
                                else:
                                    blocks.append(aux)
                            break
                        elif kind == K_END:
                            break
                        elif kind == K_LEA:
                            trial.leas.append(aux)
                        elif kind == K_SIO:
                            trial.sites.append(Site(addr, size, aux, fn))
                            if " " not in aux:
                                trial.bare_string_io = True
                                if strict:
                                    trial.ok = False
                                    break
                        elif kind == K_ODD and strict:
                            trial.ok = False
                            break

    def _merge(self, trial: _Trial) -> None:
        m = self.map
        m.starts.update(trial.starts)
        m.functions |= trial.functions
        m.calls.extend(trial.calls)
        m.tails.extend(trial.tails)
        m.sites.extend(trial.sites)
        self.outside += sum(1 for f in trial.functions if not 0 <= f < len(self.mem))
        if (
            len(m.functions) > MAX_FUNCS
            or self.outside > MAX_OUTSIDE
            or len(m.calls) + len(m.tails) > MAX_TRANSFERS
            or len(m.sites) > MAX_SITES
        ):
            raise CodeMapLimit(_CAPS_MESSAGE)

    def add_root(self, root: int, kind: str, weak: bool) -> list[int]:
        """Explore from `root`. Weak roots are validated; returns LEA targets found (for more roots)."""
        if root in self.map.starts or root in self.map.functions or not self.in_exec(root):
            return []
        if weak and self.looks_like_string(root):
            return []
        trial = _Trial()
        self._walk(root, trial, strict=weak)
        if weak and (not trial.ok or trial.bare_string_io or not trial.starts):
            return []
        self._merge(trial)
        return trial.leas

    # --- gap fill ------------------------------------------------------------------------

    def gaps(self) -> list[tuple[int, int]]:
        """[end of code, start of next code) holes between decoded instructions, and the parts of
        each executable range that holds code before its first instruction and after its last (a
        routine nothing calls can be the first or last object linked), in address order."""
        starts = self.map.starts
        keys = sorted(starts)
        ends = [a + starts[a] for a in keys]
        out = [(e, b) for e, b in zip(ends, keys[1:]) if b > e]
        for lo, hi in self.ranges:
            hi = min(hi, len(self.mem))
            i, j = bisect.bisect_left(keys, lo), bisect.bisect_left(keys, hi)
            if i == j:
                continue
            if keys[i] > lo:
                out.append((lo, keys[i]))
            if ends[j - 1] < hi:
                out.append((ends[j - 1], hi))
        return sorted(set(out))

    def _skip_pad(self, a: int, end: int) -> int:
        mem = self.mem
        while a < end:
            b = mem[a]
            if b in _PAD:
                a += 1
                continue
            # multi-byte NOPs: [66 ...] [2e] 0f 1f /0
            p = a
            while p < end and mem[p] in (0x66, 0x2E):
                p += 1
            if p + 1 < end and mem[p] == 0x0F and mem[p + 1] == 0x1F:
                first = next(self.md.disasm_lite(mem[a : a + 16], a), None)
                if first is None or first[2] != "nop":
                    return a
                a += first[1]
                continue
            return a
        return a

    def fill_gaps(self) -> None:
        """Accept code in holes between code: from the hole's start (after padding), or from
        the first place after an unconditional end (JMP, RET) and its padding where the hole
        decodes exactly up to the code after it and the walk accepts the root. A hole that
        starts with other code the walk refuses (a dead loop, a routine that does not validate)
        can still hold a routine nothing calls and no signature names: an IoFifo routine of
        another tree, the last one of its file. After a root is accepted, the rest of its hole
        is searched the same way (consecutive routines nothing calls); a hole of any size, as
        code nothing reaches can be kilobytes long (a second pass takes holes that code found
        in a later hole shortened)."""
        for _ in range(2):
            added = False
            for e0, a1 in self.gaps():
                if self.in_exec(e0) and self._range_end(e0) >= a1:
                    added = self._fill_hole(e0, a1) or added
            if not added:
                break

    def _fill_hole(self, e0: int, a1: int) -> bool:
        """Roots found in the hole [e0, a1), each part of it from a place after code up to the next
        code; True if any was accepted. `exact` keeps `_decodes_exactly`'s verdicts for the
        current end, so each byte of the hole is decoded about once."""
        starts = self.map.starts
        added = False
        p, end = e0, e0
        exact: dict[int, bool] = {}
        while p < a1:
            if end <= p:  # the code after this part: the next instruction start
                end = p
                while end < a1 and end not in starts:
                    end += 1
                exact = {}
            q = self._skip_pad(p, end)
            p = end
            while q < end:
                if not self.looks_like_string(q) and self._decodes_exactly(q, end, exact):
                    before = len(starts)
                    self.add_root(q, "gap", weak=True)
                    if len(starts) > before:
                        added = True
                        p, n = q, 0  # go on after the code just found at q
                        while p in starts:
                            p += starts[p]
                            n += 1
                        if n != len(starts) - before:  # code found elsewhere too: the part's end may move
                            end = p
                        break
                q = self._next_gap_start(q, end)
            while p < a1 and p in starts:
                p += starts[p]
        return added

    def _next_gap_start(self, q: int, end: int) -> int:
        """Where a function may start after `q` in a hole: after the first unconditional end a
        linear decode from `q` meets, and its padding; `end` when there is none. A byte that does
        not decode (TDCALL, which capstone 5 does not know, or data) is stepped over."""
        a = q
        while a < end:
            addrs, sizes, special = self.raw.decode(a, end, 1)
            if not addrs:
                a += 1
                continue
            kind = special.get(addrs[0], (0, None))[0]
            a = addrs[0] + sizes[0]
            if kind in (K_JMP, K_END):
                return self._skip_pad(a, end)
        return end

    def _decodes_exactly(self, p: int, end: int, memo: dict[int, bool]) -> bool:
        """Whether a linear decode from `p` reaches `end` exactly, ending in an unconditional end
        (or reaches one followed by padding up to `end`), with no bare string I/O and nothing the
        walk refuses. The verdict holds for every instruction start on the way (the same decode
        from there on): `memo` keeps it for them."""
        if p in memo:
            return memo[p]
        path: list[int] = []
        verdict = self._decode_path(p, end, memo, path)
        for a in path:
            memo[a] = verdict
        return verdict

    def _decode_path(self, p: int, end: int, memo: dict[int, bool], path: list[int]) -> bool:
        last_kind = None
        a = p
        while a < end:
            addrs, sizes, special = self.raw.decode(a, end, 256)
            if not addrs:
                return False
            for addr, size in zip(addrs, sizes):
                if addr in memo:
                    return memo[addr]
                path.append(addr)
                kind, aux = special.get(addr, (0, None))
                if (kind == K_SIO and " " not in aux) or kind == K_ODD:
                    return False
                a = addr + size
                last_kind = kind
                if a >= end:
                    break
                if kind in (K_JMP, K_END) and self._skip_pad(a, end) >= end:
                    return True
        return a == end and last_kind in (K_JMP, K_END)


def pointer_targets(mem: bytes, relocations: Iterable[tuple[int, int]], image_base: int) -> list[int]:
    """Sorted distinct targets of a module's relocated pointers that land inside `mem`: the value
    of each DIR64 (8-byte) or HIGHLOW (4-byte) base relocation that lies whole inside `mem`,
    minus `image_base` (modulo 2**64). One C pass when the native walk is built and the
    relocations are the model's arrays (`pe.Relocations`), else Python; the same list."""

    rvas: Any  # the model's array("Q") when it is one (checked below)
    rvas, types = getattr(relocations, "rvas", None), getattr(relocations, "types", None)
    if (
        native_available()
        and getattr(rvas, "typecode", None) == "Q"
        and isinstance(types, (bytes, bytearray))
        and len(rvas) == len(types)
        and 0 <= image_base < 1 << 64
    ):
        from ovmftool.scan import _walk

        return _walk.pointer_roots(mem, rvas, types, image_base, S.REL_BASED_DIR64, S.REL_BASED_HIGHLOW)
    out = []
    size = len(mem)
    for rva, t in relocations:
        if t == S.REL_BASED_DIR64 and rva + 8 <= size:
            v = int.from_bytes(mem[rva : rva + 8], "little")
        elif t == S.REL_BASED_HIGHLOW and rva + 4 <= size:
            v = int.from_bytes(mem[rva : rva + 4], "little")
        else:
            continue
        tgt = (v - image_base) & 0xFFFFFFFFFFFFFFFF
        if tgt < size:
            out.append(tgt)
    return sorted(set(out))


def native_available() -> bool:
    """True when `discover` will use the C walk."""
    return native_walk_on()


def discover(
    mem: bytes,
    bits: int,
    exec_ranges: list[tuple[int, int]],
    strong: list[tuple[int, str]],
    weak: list[int],
    native: bool | None = None,
    lean: bool = False,
) -> CodeMap:
    """Find the code of a module: strong roots first, then validated weak roots, then gaps.

    `native` None: the C walk when built (and OVMFTOOL_PURE_PYTHON is unset), else Python.
    `lean`: when the walk finds no string I/O site, the C walk returns a lean map (code_bytes
    and function_count only: what a scan reports of such a module), saving the Python objects
    of thousands of functions and calls; the Python walk always returns the whole map.
    """
    if native is None:
        native = native_available()
    walker = native_decoder(bits) if native else None
    if walker is not None:
        fn, args = walker
        try:
            sizes, functions, calls, tails, sites, code_bytes = fn(
                mem, bits, sorted(exec_ranges), strong, weak, *args, lean
            )
        except OverflowError:  # the C walk's caps
            raise CodeMapLimit(_CAPS_MESSAGE) from None
        if calls is None:
            return CodeMap(code_bytes=code_bytes, lean=True, n_functions=functions)
        return CodeMap(
            functions=set(functions),
            calls=calls,
            tails=tails,
            sites=[Site(a, n, mn, f) for a, n, mn, f in sites],
            sizes=sizes,
            code_bytes=code_bytes,
        )
    return discover_python(mem, bits, exec_ranges, strong, weak)


def discover_python(
    mem: bytes, bits: int, exec_ranges: list[tuple[int, int]], strong: list[tuple[int, str]], weak: list[int]
) -> CodeMap:
    """The reference walk in Python (see `discover`)."""
    d = Discoverer(mem, bits, exec_ranges)
    pending: list[int] = []
    for r, kind in strong:
        pending += d.add_root(r, kind, weak=False)
    seen: set[int] = set()
    queue = list(weak) + pending
    while queue:
        t = queue.pop(0)
        if t in seen:
            continue
        seen.add(t)
        queue += d.add_root(t, "pointer", weak=True)
    d.fill_gaps()
    d.map.code_bytes = sum(d.map.starts.values())
    return d.map
