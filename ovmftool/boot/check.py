"""`boot-check`: boot the firmware under QEMU (TCG) and report every string port-I/O instruction
that executed — where propolis without DecodeAssist would stop.

QEMU's `-d in_asm` log lists every translated block with guest addresses and bytes: a block that
was translated was about to run. Executed INS/OUTS are mapped back to modules:

- from the DEBUG log on the ISA debug console (port 0x402): `Loading PEIM at …`/`Loading driver
  at …` lines give each image's load address (exact);
- PEI modules that execute in place run at their image base (exact);
- otherwise by the scanner's sites with the same instruction at the same offset within a 4 KiB
  page (images load page-aligned); when several modules qualify, the one whose code matches
  the other blocks QEMU translated around that load address wins (`code-match`); if none
  stands out, all candidates are listed.

A second boot counts executions and reads the I/O port: QEMU logs each execution of the
translated blocks that contain an executed site (`-d exec,cpu,nochain -dfilter`), with the CPU
registers on entry. An entry into the instruction (a block that starts before it) is one
execution, with RCX = count and DX = port when the block does not change them first; QEMU runs
each further REP iteration as a block at the instruction itself, so iterations are counted too.
A block QEMU logged but did not run (an interrupt was taken first: "Stopped execution of TB
chain") is not counted.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovmftool.boot.qemu import launch, wait
from ovmftool.model.parser import FlashImage
from ovmftool.ops.modules import iter_modules
from ovmftool.scan.scanner import ScanResult

_INSN = re.compile(r"^0x([0-9a-f]+):\s+((?:[0-9a-f]{2} )+)\s*(\S.*?)\s*$")
_LOAD = re.compile(r"Loading (?:PEIM|driver) at 0x([0-9A-Fa-f]+) EntryPoint=0x([0-9A-Fa-f]+) (\S+?)\.efi")
_SIO = re.compile(r"\b(rep[a-z]* )?(ins|outs)[bwl]\b")


@dataclass
class Executed:
    """A string I/O instruction the guest executed."""

    address: int
    bytes: str
    mnemonic: str  # as QEMU printed it (AT&T)
    order: int  # position among executed string I/O, by first translation
    translations: int
    module: str | None = None
    guid: str | None = None
    rva: int | None = None
    function: str | None = None
    mapped_by: str | None = None  # debug-log, xip, page-offset, None
    candidates: list[str] = field(default_factory=list)
    port: int | None = None  # DX on entry (second boot), when the block does not set it first
    ports: list[int] = field(default_factory=list)  # every port seen, when more than one
    executions: int | None = None  # entries into the instruction (second boot)
    iterations: int | None = None  # REP iterations in all (entries + re-executions at the instruction)
    units: int | None = None  # bytes/words/dwords moved: sum of the counts on entry, when known
    blocks: list[tuple[int, bool]] = field(default_factory=list, repr=False)  # (block start, sets dx/cx first)

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["blocks"]
        return d


@dataclass
class BootCheck:
    """The outcome of one boot."""

    image: str
    ended: str  # shell, boot-manager (BDS fallback), timeout, exit N, stopped at the first (--fail-fast)
    seconds: float
    executed: list[Executed]
    serial_log: str
    debug_log: str
    trace_log: str
    counted: bool = False  # the second boot (executions, ports) ran and agreed with the first
    count_debug_log: str | None = None  # the second boot's debug console output

    def as_dict(self) -> dict:
        return {"schema_version": "ovmftool.boot-check/1", "image": self.image, "ended": self.ended,
                "seconds": round(self.seconds, 1), "executed": [e.as_dict() for e in self.executed],
                "first": self.executed[0].as_dict() if self.executed else None, "counted": self.counted,
                "logs": {"serial": self.serial_log, "debug": self.debug_log, "trace": self.trace_log,
                         "count_debug": self.count_debug_log}}


def run_boot(code: Path, vars_file: Path, machine: str, timeout: float, fail_fast: bool, work: Path,
             progress=None) -> tuple[str, float]:
    """Boot with the translation log on; stop at the shell, the timeout, or (fail_fast) the first string I/O."""
    proc, serial, _debug, trace = launch(code, vars_file, work, machine, trace=True)
    pos = [0]

    def first_string_io() -> str | None:
        if not fail_fast:
            return None
        with open(trace, "rb") as fh:
            fh.seek(pos[0])
            chunk = fh.read()
        pos[0] += max(0, len(chunk) - 200)
        return "stopped at the first string I/O (--fail-fast)" if _SIO.search(chunk.decode(errors="replace")) else None

    return wait(proc, serial, timeout, first_string_io, progress)


_SETS_DX_CX = re.compile(r"%[er]?[dc]x\s*$|%[dc][lh]\s*$|xchg.*%[er]?[dc]x|\b(call|pop)")


def executed_string_io(trace: Path) -> list[Executed]:
    """String I/O instructions in the translation log, in order of first translation, with the
    blocks that contain them."""
    seen: dict[int, Executed] = {}
    block_start, dirty = None, False
    with open(trace, errors="replace") as fh:
        for line in fh:
            if line.startswith("IN:"):
                block_start, dirty = None, False
                continue
            m = _INSN.match(line)
            if not m:
                continue
            a = int(m.group(1), 16)
            if block_start is None:
                block_start = a
            text = m.group(3)
            if not _SIO.search(text):
                dirty |= bool(_SETS_DX_CX.search(text))
                continue
            if a in seen:
                seen[a].translations += 1
            else:
                seen[a] = Executed(a, m.group(2).replace(" ", ""), text.split()[0] if not text.startswith(
                    "rep") else " ".join(text.split()[:2]), len(seen), 1)
            if (block_start, dirty) not in seen[a].blocks:
                seen[a].blocks.append((block_start, dirty))
            dirty |= True  # a second string I/O in the same block: its entry state is not the block's
    return list(seen.values())


def map_to_modules(execd: list[Executed], root: FlashImage, scan: ScanResult, debug_log: Path,
                   trace: Path | None = None) -> None:
    """Attach module, RVA and function to each executed site (see the module docstring)."""
    mods = list(iter_modules(root))
    code: dict[int, bytes] | None = None  # the whole translation log, read only if a mapping is ambiguous
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
    sites = {(f.guid, f.volume, f.rva): f for f in scan.findings}
    for e in execd:
        hit = None
        # Memory is reused as images are unloaded: of the images ever loaded over this address, the
        # one with this very instruction at that RVA is the one that ran it.
        spans = [(m, e.address - base) for base, m in loads if base <= e.address < base + m.image.size_of_image]
        for m, rva in spans:
            f = sites.get((m.guid, m.volume, rva))
            if f is not None and f.bytes == e.bytes:
                hit = (m, rva, "debug-log")
        if hit is None:
            for m in mods:
                b = m.image.image_base
                if m.phase in ("SEC", "PEI") and b <= e.address < b + m.image.size_of_image:
                    f = sites.get((m.guid, m.volume, e.address - b))
                    if f is not None and f.bytes == e.bytes:
                        hit = (m, e.address - b, "xip")
        if hit is not None:
            m, rva, how = hit
            f = sites.get((m.guid, m.volume, rva))
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


def translated_code(trace: Path) -> dict[int, bytes]:
    """Every instruction QEMU translated: address -> bytes."""
    out: dict[int, bytes] = {}
    with open(trace, errors="replace") as fh:
        for line in fh:
            if line.startswith("0x"):
                m = _INSN.match(line)
                if m:
                    out[int(m.group(1), 16)] = bytes.fromhex(m.group(2).replace(" ", ""))
    return out


def _code_match(e: Executed, cands, mods, code: dict[int, bytes]):
    """Of several candidate sites, the one whose module's code agrees with the other translated
    instructions in the span it would occupy; None when no candidate clearly wins."""
    by_key = {(m.guid, m.volume): m for m in mods}
    scores = []
    for f in cands:
        m = by_key.get((f.guid, f.volume))
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


_TRACE = re.compile(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")
_STOPPED = re.compile(r"\[([0-9a-f]+)\]")
_REGS = re.compile(r"\b[RE]([CD])X=([0-9a-f]+)")


def count_executions(code: Path, vars_file: Path, machine: str, timeout: float, execd: list[Executed],
                     work: Path, progress=None) -> bool:
    """Second boot logging only the blocks that hold executed sites: executions, REP iterations,
    counts and ports. False if that boot did not run the same sites (nothing is attached then)."""
    if not execd:
        return True
    ranges = ",".join(f"0x{min(b for b, _ in e.blocks + [(e.address, False)]):x}..0x{e.address:x}"
                      for e in execd)
    proc, serial, _debug, trace = launch(code, vars_file, work / "count", machine, trace=False,
                                         extra=["-d", "in_asm,exec,cpu,nochain", "-dfilter", ranges])
    ended, _ = wait(proc, serial, timeout, None, progress)
    blocks = {e.address: {b: dirty for b, dirty in e.blocks} for e in execd}
    stats = {e.address: {"entries": 0, "again": 0, "units": 0, "ports": set(), "unknown": False,
                         "rep": e.mnemonic.startswith("rep")} for e in execd}
    owner = {}
    for e in execd:
        for b, _ in e.blocks:
            owner.setdefault(b, []).append(e.address)
    cur: int | None = None
    regs: dict[str, int] = {}
    code_at: dict[int, bytes] = {}  # instruction bytes of the latest translation at each logged address
    valid: dict[int, set[int]] = {}  # block start -> sites it holds with the expected bytes (latest translation)
    want = {e.address: bytes.fromhex(e.bytes) for e in execd}
    block: int | None = None
    with open(trace, errors="replace") as fh:
        for line in fh:
            m = _TRACE.match(line)
            if m:
                _flush(cur, regs, owner, blocks, stats, valid)
                cur, regs, block = int(m.group(1), 16), {}, None
                continue
            if line.startswith("Stopped execution"):  # the block logged last did not run (interrupt)
                sm = _STOPPED.search(line)
                if sm and cur == int(sm.group(1), 16):
                    cur = None
                continue
            if line.startswith("IN:"):
                _flush(cur, regs, owner, blocks, stats, valid)
                cur, block = None, -1
                continue
            if block is not None:
                im = _INSN.match(line)
                if im:
                    a = int(im.group(1), 16)
                    block = a if block == -1 else block
                    code_at[a] = bytes.fromhex(im.group(2).replace(" ", ""))
                    if a in want:  # code at the site changed: other images reuse this memory
                        valid[block] = {s for s in owner.get(block, ()) if code_at.get(s) == want[s]}
                continue
            if cur is not None and ("DX=" in line or "CX=" in line):
                for r, v in _REGS.findall(line):
                    regs[r] = int(v, 16)
    _flush(cur, regs, owner, blocks, stats, valid)
    if ended not in ("shell", "boot-manager") or any(st["entries"] == 0 for st in stats.values()):
        return False
    for e in execd:
        st = stats[e.address]
        e.executions = st["entries"]
        e.iterations = st["entries"] + st["again"] if e.mnemonic.startswith("rep") else st["entries"]
        e.units = None if st["unknown"] else st["units"]
        ports = sorted(st["ports"])
        e.port = ports[0] if len(ports) == 1 else None
        e.ports = ports
    return True


def _flush(pc, regs, owner, blocks, stats, valid) -> None:
    """Account one logged block execution (pc, registers on entry) to the sites it holds (as
    last translated: memory another image reuses runs other code at the same address)."""
    if pc is None:
        return
    for site in owner.get(pc, ()):
        if site not in valid.get(pc, ()):
            continue
        st = stats[site]
        clean = not blocks[site].get(pc, True)
        # QEMU runs each further REP iteration as a block at the instruction itself; when the
        # instruction also sits in a block that starts before it, blocks at it are iterations.
        if st["rep"] and pc == site and any(b < site for b in blocks[site]):
            st["again"] += 1
        else:
            st["entries"] += 1
            if not st["rep"]:
                st["units"] += 1
            elif clean and "C" in regs:
                st["units"] += regs["C"]
            else:
                st["unknown"] = True
        if clean and "D" in regs:
            st["ports"].add(regs["D"] & 0xFFFF)


def boot_check(image: str, root: FlashImage, scan: ScanResult, vars_file: Path, machine: str = "q35",
               timeout: float = 180.0, fail_fast: bool = False, keep: Path | None = None, progress=None,
               count: bool = True) -> BootCheck:
    """Boot, collect executed string I/O, map it to modules; then (unless `fail_fast` or not
    `count`) boot again to count executions and read ports."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ovmftool-bootcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    ended, secs = run_boot(Path(image), vars_file, machine, timeout, fail_fast, work, progress)
    execd = executed_string_io(work / "trace.log")
    map_to_modules(execd, root, scan, work / "debug.log", work / "trace.log")
    counted = False
    if count and not fail_fast and execd and ended in ("shell", "boot-manager"):
        counted = count_executions(Path(image), vars_file, machine, timeout, execd, work, progress)
    return BootCheck(image, ended, secs, execd, str(work / "serial.log"), str(work / "debug.log"),
                     str(work / "trace.log"), counted, str(work / "count" / "debug.log") if counted else None)
