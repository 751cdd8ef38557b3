"""Guest addresses to modules: executed sites (`map_to_modules`) and where a boot stopped
(`locate`, `stopped_where`), by the DEBUG log's load addresses, XIP image bases, the flash's place
below 4 GiB, or the code QEMU translated around the address."""

from __future__ import annotations

import re
from pathlib import Path

from ovmftool.boot.qemu import Ending
from ovmftool.boot.records import Executed, StoppedAt
from ovmftool.boot.trace import code_log, code_near, cpu_address, last_block, last_line, translated_code
from ovmftool.model.flash import FlashImage
from ovmftool.ops.modules import Module, iter_code_blobs, iter_modules
from ovmftool.scan.scanner import ModuleCode, ModuleKey, ScanResult, module_code

_LOAD = re.compile(r"Loading (?:PEIM|driver) at 0x([0-9A-Fa-f]+) EntryPoint=0x([0-9A-Fa-f]+) (\S+?)\.efi")

_FOUR_GIB = 1 << 32


def map_to_modules(
    execd: list[Executed], root: FlashImage, scan: ScanResult, debug_log: Path, trace: Path | None = None
) -> None:
    """Attach module, RVA and function to each executed site (see the module docstring)."""
    mods = list(iter_modules(root))
    code: dict[int, bytes] | None = None  # the whole translation log, read only if a mapping is ambiguous
    loads = debug_loads(debug_log, mods)
    sites = {(ModuleKey.of(f), f.rva): f for f in scan.findings}
    for e in execd:
        hit = None
        # Memory is reused as images are unloaded: of the images ever loaded over this address, the
        # one with this very instruction at that RVA is the one that ran it.
        spans = [(m, e.address - base) for base, m in loads if base <= e.address < base + m.image.size_of_image]
        for m, rva in spans:
            f = sites.get((ModuleKey.of(m), rva))
            if f is not None and f.bytes == e.bytes:
                hit = (m, rva, "debug-log")
        if hit is None:
            for m in mods:
                b = m.image.image_base
                if m.phase in ("SEC", "PEI") and b <= e.address < b + m.image.size_of_image:
                    f = sites.get((ModuleKey.of(m), e.address - b))
                    if f is not None and f.bytes == e.bytes:
                        hit = (m, e.address - b, "xip")
        if hit is not None:
            m, rva, how = hit
            f = sites.get((ModuleKey.of(m), rva))
            e.module, e.guid, e.rva, e.mapped_by = m.name, m.guid, rva, how
            e.function = f.function if f else None
            continue
        cands = [f for f in scan.findings if f.rva % 0x1000 == e.address % 0x1000 and f.bytes == e.bytes]
        e.candidates = sorted({f"{f.module}:{f.function}:0x{f.rva:x}" for f in cands})
        how = "page-offset"
        if len({(f.guid, f.rva) for f in cands}) > 1 and trace is not None and trace.is_file():
            code = translated_code(trace) if code is None else code
            best = _code_match(e, cands, mods, code)
            cands, how = ([best], "code-match") if best is not None else (cands, how)
        if len({(f.guid, f.rva) for f in cands}) == 1:
            f = cands[0]
            e.module, e.guid, e.rva, e.function, e.mapped_by = f.module, f.guid, f.rva, f.function, how


def debug_loads(debug_log: Path, mods: list[Module]) -> list[tuple[int, Module]]:
    """(load address, module) from a DEBUG build's `Loading PEIM/driver at ...` lines, in order."""
    by_name: dict[str, list] = {}
    for m in mods:
        by_name.setdefault(m.name, []).append(m)
    loads = []
    if debug_log.is_file():
        for mm in _LOAD.finditer(debug_log.read_text(errors="replace")):
            base, entry, name = int(mm.group(1), 16), int(mm.group(2), 16), mm.group(3)
            for m in by_name.get(name, []):
                if m.image.entry_rva == entry - base:
                    loads.append((base, m))
                    break
    return loads


def _code_match(e: Executed, cands, mods, code: dict[int, bytes]):
    """Of several candidate sites, the one whose module's code agrees with the other translated
    instructions in the span it would occupy; None when no candidate clearly wins."""
    by_key = {ModuleKey.of(m): m for m in mods}
    scores = []
    for f in cands:
        m = by_key.get(ModuleKey.of(f))
        if m is None:
            continue
        mem, base = m.image.memory, e.address - f.rva
        good = bad = 0
        for a, b in code.items():
            off = a - base
            if 0 <= off and off + len(b) <= len(mem) and a != e.address:
                if mem[off : off + len(b)] == b:
                    good += len(b)
                else:
                    bad += len(b)
        scores.append((good, -bad, f))
    scores.sort(key=lambda t: (t[0], t[1]), reverse=True)
    if not scores or scores[0][0] < 64:
        return None
    if len(scores) > 1 and scores[1][0] * 2 > scores[0][0]:
        return None
    return scores[0][2]


def _match_code(address: int, code: dict[int, bytes], mods: list[Module]) -> tuple[Module, int] | None:
    """The module whose code, loaded page-aligned so that it covers `address`, agrees with what
    QEMU translated around it (no debug log says where DXE drivers were loaded in RELEASE builds)."""
    if not code:
        return None
    scores = []
    for m in mods:
        mem = m.image.memory
        for rva in range(address % 0x1000, len(mem), 0x1000):
            base = address - rva
            good = bad = 0
            for a, b in code.items():
                off = a - base
                if 0 <= off and off + len(b) <= len(mem):
                    if mem[off : off + len(b)] == b:
                        good += len(b)
                    else:
                        bad += len(b)
            if good:
                scores.append((good - bad, good, m, rva))
    scores.sort(key=lambda t: (t[0], t[1]), reverse=True)
    if not scores or scores[0][1] < 16 or scores[0][0] <= scores[0][1] // 2:
        return None
    if len(scores) > 1 and scores[1][0] * 2 > scores[0][0]:
        return None
    return scores[0][2], scores[0][3]


def locate(address: int, root: FlashImage, debug_log: Path, trace: Path | None = None) -> dict:
    """Module, phase, RVA and function of a guest address, as map_to_modules maps executed sites:
    the latest DEBUG-log load over it, else an XIP SEC/PEI module's image, else the flash (the
    code image ends at 4 GiB: address = 2**32 - image size + file offset: the reset vector, SEC),
    else the module whose code matches what QEMU translated around it."""
    mods = list(iter_modules(root))
    hit: tuple[Module, int, str] | None = None
    for base, m in reversed(debug_loads(debug_log, mods)):
        if base <= address < base + m.image.size_of_image:
            hit = (m, address - base, "debug-log")
            break
    if hit is None:
        for m in mods:
            b = m.image.image_base
            if m.phase in ("SEC", "PEI") and b <= address < b + m.image.size_of_image:
                hit = (m, address - b, "xip")
                break
    off = address - (_FOUR_GIB - root.size)
    if hit is None and 0 <= off < root.size:
        for blob in iter_code_blobs(root):
            if blob.abs_offset is not None and blob.abs_offset <= off < blob.abs_offset + blob.size:
                rva = off - blob.abs_offset
                fn = ModuleCode.of_blob(blob.data, blob.entry_offset).function_at(rva)
                f = blob.parent
                return {
                    "module": "ResetVector",
                    "guid": getattr(f, "guid", None),
                    "phase": "RESET",
                    "rva": rva,
                    "function": fn,
                    "mapped_by": "flash",
                }
        for m in mods:
            a = m.image.abs_offset
            if a is not None and a <= off < a + m.image.size:
                rva = _offset_to_rva(m, off - a)
                if rva is not None:
                    hit = (m, rva, "flash")
                    break
    if hit is None and trace is not None:
        mc = _match_code(address, code_near(trace, address), mods)
        if mc is not None:
            hit = (mc[0], mc[1], "code-match")
    if hit is None:
        return {}
    m, rva, how = hit
    return {
        "module": m.name,
        "guid": m.guid,
        "phase": m.phase,
        "rva": rva,
        "function": module_code(m).function_at(rva),
        "mapped_by": how,
    }


def _offset_to_rva(m: Module, off: int) -> int | None:
    for s in m.image.sections:
        if s.raw_offset <= off < s.raw_offset + s.raw_size:
            return s.rva + off - s.raw_offset
    return None  # a header: no code


def stopped_where(end: Ending, root: FlashImage, work: Path) -> StoppedAt:
    """Where the guest was when a boot that did not finish ended: the CPU's address when QEMU
    could be asked, else the last block it translated; mapped to module and function."""
    addr, source, halted = None, None, None
    if end.registers:
        ca = cpu_address(end.registers)
        if ca is not None:
            (addr, halted), source = ca, "cpu"
    code = code_log(work)
    if addr is None:
        blk = last_block(code)
        if blk:
            addr, source = blk[0][0], "last-translated"
    st = StoppedAt(
        addr,
        source,
        halted=halted,
        last_serial=last_line(work / "serial.log"),
        last_debug=last_line(work / "debug.log"),
    )
    if addr is not None:
        for k, v in locate(addr, root, work / "debug.log", code).items():
            setattr(st, k, v)
    return st
