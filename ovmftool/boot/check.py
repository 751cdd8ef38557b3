"""`boot-check`: boot the firmware under QEMU (TCG) and report every string port-I/O instruction
that executed — where propolis without DecodeAssist would stop.

QEMU's `-d in_asm` log lists every translated block with guest addresses and bytes: a block that
was translated was about to run. Executed INS/OUTS are mapped back to modules:

- from the DEBUG log on the ISA debug console (port 0x402): `Loading PEIM at …`/`Loading driver
  at …` lines give each image's load address (exact);
- PEI modules that execute in place run at their image base (exact);
- otherwise by the scanner's sites with the same instruction at the same offset within a 4 KiB
  page (images load page-aligned); several candidates are all listed.
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
    port: int | None = None  # not observable from the translation log


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

    def as_dict(self) -> dict:
        return {"schema_version": "ovmftool.boot-check/1", "image": self.image, "ended": self.ended,
                "seconds": round(self.seconds, 1), "executed": [asdict(e) for e in self.executed],
                "first": asdict(self.executed[0]) if self.executed else None,
                "logs": {"serial": self.serial_log, "debug": self.debug_log, "trace": self.trace_log}}


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


def executed_string_io(trace: Path) -> list[Executed]:
    """String I/O instructions in the translation log, in order of first translation."""
    seen: dict[int, Executed] = {}
    with open(trace, errors="replace") as fh:
        for line in fh:
            if "ins" not in line and "outs" not in line:
                continue
            m = _INSN.match(line)
            if not m or not _SIO.search(m.group(3)):
                continue
            a = int(m.group(1), 16)
            if a in seen:
                seen[a].translations += 1
            else:
                seen[a] = Executed(a, m.group(2).replace(" ", ""), m.group(3).split()[0] if not m.group(3).startswith(
                    "rep") else " ".join(m.group(3).split()[:2]), len(seen), 1)
    return list(seen.values())


def map_to_modules(execd: list[Executed], root: FlashImage, scan: ScanResult, debug_log: Path) -> None:
    """Attach module, RVA and function to each executed site (see the module docstring)."""
    mods = list(iter_modules(root))
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
        if len({(f.guid, f.rva) for f in cands}) == 1:
            f = cands[0]
            e.module, e.guid, e.rva, e.function, e.mapped_by = f.module, f.guid, f.rva, f.function, "page-offset"


def boot_check(image: str, root: FlashImage, scan: ScanResult, vars_file: Path, machine: str = "q35",
               timeout: float = 180.0, fail_fast: bool = False, keep: Path | None = None, progress=None) -> BootCheck:
    """Boot, collect executed string I/O, map it to modules."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ovmftool-bootcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    ended, secs = run_boot(Path(image), vars_file, machine, timeout, fail_fast, work, progress)
    execd = executed_string_io(work / "trace.log")
    map_to_modules(execd, root, scan, work / "debug.log")
    return BootCheck(image, ended, secs, execd, str(work / "serial.log"), str(work / "debug.log"),
                     str(work / "trace.log"))
