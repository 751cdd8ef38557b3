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

With the TCG plugin built (`ovmftool/boot/plugin`: `corpus/scripts/qemu-plugin.sh`) all of this
comes from ONE boot without `-d in_asm`: the plugin records the string I/O sites QEMU translates,
counts their executions and memory accesses, has boot-check read RDX/RCX at each entry (QMP
`info registers` while it waits) and dumps the translated code (`code.bin`) for mapping and hang
detection. Without it (or with OVMFTOOL_BOOT_PLUGIN=0) the two boots above run, and a note says so.

A boot that does not reach the shell (or the boot manager's fallback) is not a pass: a hang (no
new serial, debug-console output or translated code for a while), a reset (triple fault), QEMU
exiting or the timeout each get a verdict and `StoppedAt`: the CPU's address (or the last block
QEMU translated) mapped to module, phase and function (`locate`).
"""

from __future__ import annotations

import bisect
import contextlib
import re
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovmftool.boot import plugin
from ovmftool.boot.qemu import Ending, Qemu, close_all, qemu_binary, wait
from ovmftool.boot.varstore import VarsPlan, plan_vars
from ovmftool.errors import OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import Module, iter_code_blobs, iter_modules
from ovmftool.scan import signatures as sigs
from ovmftool.scan.advice import platform_dsc
from ovmftool.scan.codemap import discover
from ovmftool.scan.scanner import ScanResult, default_jobs, exec_ranges, pointer_roots, scan_checked

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
class StoppedAt:
    """Where a boot that did not finish was when it ended."""

    address: int | None  # guest address (linear)
    source: str | None  # cpu (the registers when the guest was stopped), last-translated (QEMU's last new block)
    module: str | None = None
    guid: str | None = None
    phase: str | None = None  # RESET (the reset vector), SEC, PEI, DXE, MM
    rva: int | None = None  # in the module (for the reset vector: offset in its code)
    function: str | None = None
    mapped_by: str | None = None  # debug-log, xip, flash, code-match
    halted: bool | None = None  # the CPU was in HLT
    last_serial: str | None = None
    last_debug: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def where(self) -> str:
        """`PlatformPei (PEI) at rva 0x1234 in sub_1200`, or `0x… (in no known module)`."""
        if self.module is None:
            return f"0x{self.address:X} (in no known module)" if self.address is not None else "an unknown place"
        s = f"{self.module} ({self.phase})" if self.phase else self.module
        if self.rva is not None:
            s += f" at rva 0x{self.rva:X}"
        if self.function:
            s += f" in {self.function}"
        return s


@dataclass
class BootCheck:
    """The outcome of one boot."""

    image: str
    verdict: str  # shell, boot-manager, timeout, hang, reset, qemu-exit or fail-fast
    seconds: float
    executed: list[Executed]
    vars: dict  # VarsPlan.as_dict()
    detail: str = ""  # reset: triple fault or not; qemu-exit: status and message
    quiet: float = 0.0  # seconds without new output or code at the end (a hang: at least --hang-after)
    hang_after: float | None = None
    stopped_at: StoppedAt | None = None  # when it did not finish
    counted: bool = False  # the second boot (executions, ports) ran and agreed with the first
    logs: dict = field(default_factory=dict)  # serial, debug, trace, count_debug: paths (None once removed)
    kept: str | None = None  # the directory the logs are in (--keep), None when it was removed
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.verdict in ("shell", "boot-manager")

    @property
    def ended(self) -> str:
        """The `ended` field of earlier versions: the verdict, but the --fail-fast sentence."""
        if self.verdict == "fail-fast":
            return "stopped at the first string I/O (--fail-fast)"
        return self.verdict

    def as_dict(self) -> dict:
        """The check's fields (report.boot_report adds the document header)."""
        return {
            "image": self.image,
            "ended": self.ended,
            "verdict": self.verdict,
            "finished": self.finished,
            "detail": self.detail,
            "seconds": round(self.seconds, 1),
            "quiet_seconds": round(self.quiet, 1),
            "hang_after": self.hang_after,
            "stopped_at": self.stopped_at.as_dict() if self.stopped_at else None,
            "executed": [e.as_dict() for e in self.executed],
            "first": self.executed[0].as_dict() if self.executed else None,
            "counted": self.counted,
            "vars": self.vars,
            "kept": self.kept,
            "notes": self.notes,
            "logs": {k: self.logs.get(k) for k in ("serial", "debug", "trace", "count_debug")},
        }


# The first boot logs translations only (`in_asm`: a block is logged when translated, chained or
# not); `nochain` there changed what QEMU 7.2 executes in SMM builds (they hung at
# PcdCpuSmmStackGuard: Debian's secure-boot images), and in_asm does not need it.
FIRST_BOOT_LOG = ["-d", "in_asm,cpu_reset"]  # cpu_reset: QEMU names a triple fault
COUNT_SLOWDOWN, COUNT_MIN_SECONDS = 10.0, 30.0  # the counting boot's budget: times the first boot's, at least


def run_boot(
    code: Path,
    vars_file: Path | None,
    machine: str,
    timeout: float,
    fail_fast: bool,
    work: Path,
    progress=None,
    hang_after: float | None = None,
) -> Ending:
    """Boot with the translation log on; stop at the shell, the timeout, a hang, or (fail_fast)
    the first string I/O."""
    q = Qemu(code, vars_file, work, machine, log=FIRST_BOOT_LOG)
    trace = q.trace
    pos = [0]

    def first_string_io() -> str | None:
        if not fail_fast:
            return None
        with open(trace, "rb") as fh:
            fh.seek(pos[0])
            chunk = fh.read()
        pos[0] += max(0, len(chunk) - 200)
        return "fail-fast" if _SIO.search(chunk.decode(errors="replace")) else None

    return wait(q, timeout, hang_after, first_string_io, progress)


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
                seen[a] = Executed(
                    a,
                    m.group(2).replace(" ", ""),
                    text.split()[0] if not text.startswith("rep") else " ".join(text.split()[:2]),
                    len(seen),
                    1,
                )
            if (block_start, dirty) not in seen[a].blocks:
                seen[a].blocks.append((block_start, dirty))
            dirty |= True  # a second string I/O in the same block: its entry state is not the block's
    return list(seen.values())


def map_to_modules(
    execd: list[Executed], root: FlashImage, scan: ScanResult, debug_log: Path, trace: Path | None = None
) -> None:
    """Attach module, RVA and function to each executed site (see the module docstring)."""
    mods = list(iter_modules(root))
    code: dict[int, bytes] | None = None  # the whole translation log, read only if a mapping is ambiguous
    loads = debug_loads(debug_log, mods)
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


def translated_code(trace: Path) -> dict[int, bytes]:
    """Every instruction QEMU translated: address -> bytes (the latest translation at each)."""
    if trace.suffix == ".bin":  # the plugin's code dump
        return {a: b for _, insns in plugin.iter_blocks(trace) for a, b in insns}
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


def count_executions(
    code: Path, vars_file: Path | None, machine: str, timeout: float, execd: list[Executed], work: Path, progress=None
) -> bool:
    """Second boot logging only the blocks that hold executed sites: executions, REP iterations,
    counts and ports. False if that boot did not run the same sites (nothing is attached then)."""
    if not execd:
        return True
    ranges = ",".join(f"0x{min(b for b, _ in e.blocks + [(e.address, False)]):x}..0x{e.address:x}" for e in execd)
    q = Qemu(code, vars_file, work / "count", machine, log=["-d", "in_asm,exec,cpu,nochain", "-dfilter", ranges])
    trace = q.trace
    ended = wait(q, timeout, None, None, progress).verdict
    blocks = {e.address: {b: dirty for b, dirty in e.blocks} for e in execd}
    stats = {
        e.address: {
            "entries": 0,
            "again": 0,
            "units": 0,
            "ports": set(),
            "unknown": False,
            "rep": e.mnemonic.startswith("rep"),
        }
        for e in execd
    }
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


# --- one boot with the TCG plugin ---------------------------------------------------------------

PLUGIN_BOOT_LOG = ["-d", "cpu_reset"]  # QEMU still names a triple fault; no translation log


def code_log(work: Path) -> Path:
    """The record of translated code of a boot in `work`: the plugin's dump, else QEMU's log."""
    return work / "code.bin" if (work / "code.bin").is_file() else work / "trace.log"


def run_plugin_boot(
    code: Path,
    vars_file: Path | None,
    machine: str,
    timeout: float,
    fail_fast: bool,
    work: Path,
    so: Path,
    query: bool,
    progress=None,
    hang_after: float | None = None,
) -> tuple[Ending, plugin.Table | None, list]:
    """Boot once with the plugin; stop as run_boot does (fail_fast: at the first string I/O the
    plugin saw execute). The plugin's table (None: it did not start) and the registers read at
    each entry (`query`)."""
    table_path = work / "strio-table.bin"
    for f in (table_path, work / "code.bin"):
        f.unlink(missing_ok=True)
    resp = plugin.Responder() if query else None
    try:
        fd = resp.theirs.fileno() if resp else None
        q = Qemu(
            code,
            vars_file,
            work,
            machine,
            log=PLUGIN_BOOT_LOG,
            extra=plugin.plugin_args(so, work, fd),
            watch=work / "code.bin",
            pass_fds=(fd,) if resp else (),
        )
        if resp:
            resp.start(q)

        def first_string_io() -> str | None:
            return "fail-fast" if fail_fast and plugin.executed_any(table_path) else None

        end = wait(q, timeout, hang_after, first_string_io, progress)
    finally:
        if resp:
            resp.close()
    return end, plugin.read_table(table_path), resp.answers if resp else []


def executed_from_plugin(table: plugin.Table, answers: list, counted: bool) -> tuple[list[Executed], list[str]]:
    """Executed sites from the plugin's table, in order of first translation; with executions,
    iterations, units and ports when `counted`. Notes on anything that limits them."""
    notes = []
    sites = plugin.sites_with_registers(table, answers)
    out = []
    for i, s in enumerate(sites):
        e = Executed(s.address, s.bytes, s.mnemonic, i, s.translations)
        if counted:
            e.executions, e.iterations, e.units = s.executions, s.iterations, s.accesses
            plain_outs = not s.rep and int(s.bytes[-2:], 16) >= 0x6E
            ports = set() if plain_outs else {r["D"] & 0xFFFF for r in s.entry_regs() if "D" in r}
            e.ports = sorted(ports)
            e.port = e.ports[0] if len(e.ports) == 1 else None
        out.append(e)
    if table.overflow:
        notes.append("more string I/O sites than the plugin's table holds: the list is cut short")
    if counted and table.query_failed:
        notes.append(
            "ports are from the entries whose registers could be read "
            + (
                f"(the plugin's limit of {plugin.MAX_QUERIES} reads was reached)"
                if table.query_failed & 2
                else "(boot-check stopped answering the plugin)"
            )
        )
    return out, notes


# --- where a boot that did not finish stopped ----------------------------------------------------

_FOUR_GIB = 1 << 32
_RIP = re.compile(r"\b([RE])IP=([0-9a-f]+)")
_CS_BASE = re.compile(r"^CS =[0-9a-f]{4} ([0-9a-f]+)", re.M)
_HLT = re.compile(r"\bHLT=([01])")
_ANSI = re.compile(r"\x1b\[[0-9;?=>]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def cpu_address(regs: str) -> tuple[int, bool] | None:
    """(linear address of the next instruction, halted) from `info registers`: CS base + RIP/EIP."""
    m, c = _RIP.search(regs), _CS_BASE.search(regs)
    if m is None:
        return None
    base = int(c.group(1), 16) if c else 0
    mask = (1 << 64) - 1 if m.group(1) == "R" else 0xFFFFFFFF
    h = _HLT.search(regs)
    return (base + int(m.group(2), 16)) & mask, bool(h and h.group(1) == "1")


def last_block(trace: Path, tail: int = 1 << 18) -> list[tuple[int, bytes]]:
    """The instructions of the last block QEMU translated (the last new code the guest ran)."""
    if trace.suffix == ".bin":
        return plugin.last_block(trace)
    try:
        with open(trace, "rb") as fh:
            fh.seek(max(0, trace.stat().st_size - tail))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    i = text.rfind("\nIN:")
    out = []
    for line in text[i + 1 if i >= 0 else 0 :].splitlines()[1:]:
        m = _INSN.match(line)
        if m:
            out.append((int(m.group(1), 16), bytes.fromhex(m.group(2).replace(" ", ""))))
        elif out and not line.strip():
            break
    return out


def _code_near(trace: Path, address: int, span: int = 0x400) -> dict[int, bytes]:
    """Instructions QEMU translated within `span` bytes of `address` (the latest at each address)."""
    if trace.suffix == ".bin":
        return {a: b for _, insns in plugin.iter_blocks(trace) for a, b in insns if abs(a - address) <= span}
    out: dict[int, bytes] = {}
    try:
        fh = open(trace, errors="replace")
    except OSError:
        return out
    with fh:
        for line in fh:
            if line.startswith("0x"):
                m = _INSN.match(line)
                if m and abs(int(m.group(1), 16) - address) <= span:
                    out[int(m.group(1), 16)] = bytes.fromhex(m.group(2).replace(" ", ""))
    return out


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


def _function_name(
    mem: bytes, bits: int, ranges: list[tuple[int, int]], strong, weak, rva: int, matches=()
) -> str | None:
    """The routine holding `rva`: a built-in signature's, else the analysis' nearest function start
    before it (`sub_…`, as scan names them), None when `rva` is not in code the analysis found."""
    for mt in matches:
        if mt.rva <= rva < mt.end:
            return mt.signature.routine
    if not any(s <= rva < e for s, e in ranges):
        return None
    cmap = discover(mem, bits, ranges, strong, weak)
    starts = cmap.instruction_starts()
    if not any(a <= rva < a + starts[a] for a in range(max(0, rva - 15), rva + 1) if a in starts):
        return None
    fns = sorted(cmap.functions)
    i = bisect.bisect_right(fns, rva) - 1
    return f"sub_{fns[i]:x}" if i >= 0 else None


def _module_function(m: Module, rva: int) -> str | None:
    img = m.image
    mem = img.memory
    ranges = exec_ranges(img)
    matches = sigs.find(mem, m.arch, ranges)
    strong = (
        [(mt.rva, "signature") for mt in matches]
        + [(img.entry_rva, "entry")]
        + [(r, "export") for r in sorted(img.exports)]
    )
    return _function_name(mem, img.bits, ranges, strong, pointer_roots(img, mem), rva, matches)


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
                fn = _function_name(blob.data, 16, [(0, blob.size)], [(blob.entry_offset, "entry")], [], rva)
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
        mc = _match_code(address, _code_near(trace, address), mods)
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
        "function": _module_function(m, rva),
        "mapped_by": how,
    }


def _offset_to_rva(m: Module, off: int) -> int | None:
    for s in m.image.sections:
        if s.raw_offset <= off < s.raw_offset + s.raw_size:
            return s.rva + off - s.raw_offset
    return None  # a header: no code


def last_line(path: Path, tail: int = 8192) -> str | None:
    """The last non-empty line of a console log, without terminal escapes, at most 200 characters."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - tail))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    lines = [x.strip() for x in re.split(r"[\r\n]+", _ANSI.sub(" ", text)) if x.strip()]
    return lines[-1][:200] if lines else None


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


# --- the whole check ------------------------------------------------------------------------------


# OvmfPkg platforms whose firmware QEMU's q35/pc machines do not boot: why, and what does
_OTHER_VMM = {
    "OvmfPkg/CloudHv/CloudHvX64.dsc": "a Cloud Hypervisor firmware (CloudHvX64: a PVH ELF image): boot it with "
    "cloud-hypervisor",
    "OvmfPkg/OvmfXen.dsc": "a Xen firmware (OvmfXen): it boots as a Xen HVM/PVH guest's firmware",
    "OvmfPkg/Bhyve/BhyveX64.dsc": "a bhyve firmware (BhyveX64: bhyve's devices and ACPI): boot it with bhyve",
    "OvmfPkg/Microvm/MicrovmX64.dsc": "a microvm firmware (MicrovmX64): QEMU boots it only as `-M microvm -bios`, "
    "without the flash and debug port boot-check relies on",
}


def check_bootable(image: str, root: FlashImage) -> None:
    """Refuse (before any work) an input boot-check cannot boot: a standalone module, the
    firmware of a platform QEMU's q35/pc machines do not boot (named by its modules, as `scan`'s
    advice names the DSC)."""
    if isinstance(root, BinaryFile):
        raise OvmfToolError(
            f"{image} is a standalone UEFI module, not a flash image: boot-check boots a firmware "
            "image (OVMF_CODE.fd or OVMF.fd)"
        )
    mods = list(iter_modules(root))
    dsc, why = platform_dsc(tuple(sorted({m.arch for m in mods})), {m.name for m in mods})
    if dsc in _OTHER_VMM:
        raise OvmfToolError(
            f"{image} is {_OTHER_VMM[dsc]} ({why}); boot-check boots firmware for QEMU's q35 and pc machines"
        )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a cancelled CI job, a closed terminal
_CLEANUP_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


class Terminated(BaseException):
    """A stop signal (SIGTERM, SIGHUP) arrived while `stop_on_signals` was active. A BaseException,
    like KeyboardInterrupt, so that no `except Exception` swallows it on its way out: every
    `finally` on the way kills QEMU and removes the work directory."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as the shell reports a process the signal ended: 143 for SIGTERM


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Turn SIGTERM and SIGHUP into `Terminated` (as SIGINT is KeyboardInterrupt) for the duration.
    A signal the process ignores (nohup) stays ignored; a second one while the first unwinds is
    dropped, so it cannot cut the cleanup short. Only in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, _frame):
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    old = {}
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGTERM, SIGHUP and SIGINT back (delivered when this ends) so a cleanup runs whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _InBackground:
    """`fn()` in a thread — the static scan while QEMU boots (TCG keeps one core busy, the scan
    the other); `result()` waits for it and re-raises what it raised."""

    def __init__(self, fn) -> None:
        self._out, self._err = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="ovmftool-scan", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self._err = e

    def result(self):
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out


def boot_check(
    image: str,
    root: FlashImage,
    scan,
    vars_plan: VarsPlan,
    machine: str = "q35",
    timeout: float = 180.0,
    fail_fast: bool = False,
    keep: Path | None = None,
    progress=None,
    count: bool = True,
    hang_after: float | None = 30.0,
) -> BootCheck:
    """Boot, collect executed string I/O, map it to modules; then (unless `fail_fast` or not
    `count`) boot again to count executions and read ports. A boot that does not reach the shell
    (or the boot manager's fallback) says where it stopped. The work directory (logs, the copy of
    the variable store) is removed at the end unless `keep` names it (created if absent; its
    parent must exist): also on an error, Ctrl-C, or `Terminated` (see `stop_on_signals`); every
    QEMU started is killed first. `scan`: the image's ScanResult, or a function returning it (run
    while the first boot runs)."""
    notes = [n] if (n := vars_plan.note()) else []
    if hang_after is not None and hang_after >= timeout:
        notes.append(f"hang detection off: --hang-after {hang_after:g} is not below --timeout {timeout:g}")
        hang_after = None
    work: Path | None = None
    try:
        with _signals_held():  # no signal between creating the directory and knowing to remove it
            work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ovmftool-bootcheck-"))
        work.mkdir(exist_ok=True)
        template = vars_plan.template(work)
        pending = _InBackground(scan) if callable(scan) else None
        so = plugin.build_at_first_use() if plugin.enabled() else None
        end = None
        if so is not None:
            end, table, answers = run_plugin_boot(
                Path(image),
                template,
                machine,
                timeout,
                fail_fast,
                work,
                so,
                count and not fail_fast,
                progress,
                hang_after,
            )
            if table is None:  # the plugin did not load: QEMU refused it
                notes.append(f"the boot-check TCG plugin did not load ({end.detail or end.verdict}): two boots")
                end = None
                (work / "code.bin").unlink(missing_ok=True)
        elif plugin.enabled():
            notes.append(
                "two boots (the second counts executions and reads ports): the boot-check TCG plugin "
                "could not be built for this QEMU (a C compiler and its qemu-plugin.h are needed: "
                "corpus/scripts/qemu-plugin.sh)"
            )
        counted = False
        if end is not None:  # one boot: the plugin counted
            counted = count and not fail_fast and end.finished
            execd, more = executed_from_plugin(table, answers, counted)
            notes += more
            counted = counted and bool(execd)
            scan = pending.result() if pending else scan
            map_to_modules(execd, root, scan, work / "debug.log", work / "code.bin")
            stopped = None if end.finished else stopped_where(end, root, work)
        else:
            end = run_boot(Path(image), template, machine, timeout, fail_fast, work, progress, hang_after)
            execd = executed_string_io(work / "trace.log")
            scan = pending.result() if pending else scan
            map_to_modules(execd, root, scan, work / "debug.log", work / "trace.log")
            stopped = None if end.finished else stopped_where(end, root, work)
            if count and not fail_fast and execd and end.finished:
                # the counting boot logs every execution of the sites' blocks (no TB chaining): a
                # few times slower than the first; past COUNT_SLOWDOWN times, it is given up (SMM
                # builds under QEMU 7.2 do not finish without chaining), and the sites are listed
                # uncounted
                budget = min(timeout, max(COUNT_MIN_SECONDS, COUNT_SLOWDOWN * end.seconds))
                counted = count_executions(Path(image), template, machine, budget, execd, work, progress)
        logs = {}
        if keep:
            logs = {
                "serial": str(work / "serial.log"),
                "debug": str(work / "debug.log"),
                "trace": str(work / "trace.log"),
                "count_debug": str(work / "count" / "debug.log") if counted and (work / "count").is_dir() else None,
                "code": str(work / "code.bin") if (work / "code.bin").is_file() else None,
            }  # text only
        return BootCheck(
            image,
            end.verdict,
            end.seconds,
            execd,
            vars_plan.as_dict(),
            end.detail,
            end.quiet,
            hang_after,
            stopped,
            counted,
            logs,
            str(work) if keep else None,
            notes,
        )
    finally:
        with _signals_held():  # a second signal waits until QEMU is gone and the directory removed
            close_all()
            if work is not None and not keep:
                shutil.rmtree(work, ignore_errors=True)


def boot_image(
    image: str,
    vars_file: str | None = None,
    machine: str = "q35",
    timeout: float = 180.0,
    fail_fast: bool = False,
    keep: Path | None = None,
    progress=None,
    count: bool = True,
    hang_after: float | None = 30.0,
    scan: ScanResult | None = None,
) -> BootCheck:
    """`boot-check` of the file `image`: the refusals first (not an image that boots, a store of
    the wrong size, no QEMU), before anything boots; then `boot_check`, with the image scanned
    while QEMU boots unless `scan` is the image's result already."""
    root = read_image(image)
    check_bootable(image, root)
    plan = plan_vars(image, vars_file)
    qemu_binary()
    todo = scan if scan is not None else (lambda: scan_checked(image, None, default_jobs(), root=root))
    return boot_check(
        image, root, todo, plan, machine, timeout, fail_fast, keep, progress, count=count, hang_after=hang_after
    )
