"""`scan`: every string port-I/O instruction in a firmware image's code, attributed.

For each PE32/TE module: discover its code (codemap), match built-in signatures, name the
containing function (symbols > signature > analysis), list direct callers, and decide whether
the function is reachable by direct calls from the entry point.
"""

from __future__ import annotations

import bisect
import copy
import gc
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from ovmftool.errors import ImageError, LimitExceeded, NothingToCheck, NoVolume, OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.node import Node, all_problems, walk
from ovmftool.model.flash import FlashImage
from ovmftool.model.parser import MAX_IMAGE_SIZE, read_image
from ovmftool.model.ffs import FfsFile
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from ovmftool.model import structs as S
from ovmftool.ops.modules import Module, iter_code_blobs, iter_modules
from ovmftool.ops.tree import label as node_label, summary as node_summary
from ovmftool.scan import signatures as sigs
from ovmftool.scan.codemap import CodeMap, CodeMapLimit, discover, pointer_targets
from ovmftool.scan.disasm import string_io
from ovmftool.scan.symbols import BuildSymbols, SymbolTable


def ProcessPoolExecutor(*args, **kwargs):
    """concurrent.futures.ProcessPoolExecutor, imported on first use: it and multiprocessing cost
    a one-job scan ~10 ms of start-up for nothing."""
    from concurrent.futures import ProcessPoolExecutor as pool

    return pool(*args, **kwargs)

if TYPE_CHECKING:
    from ovmftool.scan.cache import ResultCache


def plain(v):
    """What dataclasses.asdict makes of the scanner's records (dataclasses holding lists, dicts,
    tuples, str, int, bool, None): equal values, without asdict's deep copy of every leaf (a
    fifth of rendering a scan)."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is list:
        return [plain(x) for x in v]
    if t is dict:
        return {k: plain(x) for k, x in v.items()}
    if t is tuple:
        return tuple(plain(x) for x in v)
    names = _FIELD_NAMES.get(t)
    if names is None and hasattr(t, "__dataclass_fields__"):
        names = _FIELD_NAMES[t] = tuple(f.name for f in fields(t))
    if names is None:
        return v
    return {n: plain(getattr(v, n)) for n in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass
class Caller:
    """A direct call to the function holding a site."""

    function: str
    function_rva: int
    call_rva: int
    kind: str  # "call", or "jmp" for a tail call


@dataclass
class Finding:
    """One string I/O instruction in code."""

    module: str
    guid: str
    file_type: str
    arch: str
    volume: str
    fd_offset: int | None
    container_offset: int
    rva: int
    pe_section: str | None
    bytes: str
    mnemonic: str
    width: int
    direction: str
    rep: str | None
    function: str | None
    function_rva: int | None
    function_source: str | None
    signature: dict | None
    callers: list[Caller] = field(default_factory=list)
    reachable: bool = False
    # Where the instruction's bytes are in the file as stored: the instruction itself when it is
    # stored as is, else the (compressed) node that holds it: {"offset", "length", "holder"}.
    fd_region: dict | None = None

    def as_dict(self) -> dict:
        return plain(self)


@dataclass
class ModuleSummary:
    """Per-module scan facts for the report."""

    name: str
    guid: str
    file_type: str
    arch: str
    volume: str
    fd_offset: int | None
    code_bytes: int
    functions: int
    sites: int
    symbols: str | None
    code_end: int | None = None  # with symbols: where the build's .text output section ends (RVA)

    def as_dict(self) -> dict:
        return plain(self)


@dataclass
class ScanResult:
    """Everything `scan` found in one image."""

    path: str
    sha256: str
    size: int
    modules: list[ModuleSummary]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    standalone: bool = False  # a standalone PE32/TE file (an extracted module), not a flash image
    era: str | None = None  # the EDK II tree era the image shows (`tree_era`): names routines, picks series
    # What this run spent (JUnit `time`): per module (parallel with `modules`) and on the whole
    # image; a result the cache served spent nearly nothing. Never part of the JSON report.
    module_seconds: list[float] = field(default_factory=list, compare=False)
    seconds: float = field(default=0.0, compare=False)

    @property
    def exit_code(self) -> int:
        """This image's verdict: 1 when it has sites, else 0 (checked and clean)."""
        return 1 if self.findings else 0


@dataclass
class ScanFailure:
    """An input that could not be scanned (unreadable, damaged, or holding no code): it keeps
    its place in every report, and its verdict is 2. `nothing`: the input holds nothing the
    tool checks (`errors.NothingToCheck`)."""

    path: str
    message: str
    nothing: bool = False

    @property
    def exit_code(self) -> int:
        return 2


@dataclass
class ScanSkipped(ScanFailure):
    """A file a directory or pattern brought in that holds nothing the tool checks (a variable
    store, a blob `extract` wrote, a PE that is no UEFI module, firmware for another
    architecture): listed with the reason, verdict 0. Named on the command line it would be a
    `ScanFailure`."""

    @property
    def exit_code(self) -> int:
        return 0


def worst_exit(outcomes) -> int:
    """The exit code of a scan of several inputs: the worst of theirs (2 > 1 > 0)."""
    return max((o.exit_code for o in outcomes), default=0)


def exec_ranges(img: PeImage) -> list[tuple[int, int]]:
    """[start, end) RVAs of the image's executable sections."""
    return [(s.rva, s.rva + (s.virtual_size or s.raw_size)) for s in img.sections if s.executable]


def _pointer_roots(img: PeImage, mem: bytes) -> list[int]:
    """Relocated pointers whose value lands inside the module's memory image (codemap.pointer_targets)."""
    return pointer_targets(mem, img.relocations, img.image_base)


@dataclass
class _ModuleScan:
    summary: ModuleSummary
    findings: list[Finding]


# The largest memory image the walk takes: its tables cost ~14 bytes a byte (OVMF's largest module
# has 1 MiB; a hostile one may declare up to the per-section decode cap).
MAX_SCAN_MEMORY = 16 << 20


def scan_module(m: Module, symbols: BuildSymbols | None = None, era: str | None = None) -> _ModuleScan:
    """Scan one module. LimitExceeded for a module over the walk's caps (`MAX_SCAN_MEMORY`,
    `codemap.MAX_FUNCS` ...): such a module is refused, never reported as checked.

    `era`: the EDK II tree era that names signature routines (`tree_era`); None: the module's
    own code decides (TDCALL in it: TDX era), else the newest trees' names."""
    return _assemble(m, _analyse_checked(m, symbols, era))


def _analyse_checked(m: Module, symbols: BuildSymbols | None, era: str | None) -> ModuleAnalysis:
    """`analyse_module` within the walk's caps (LimitExceeded naming the module otherwise)."""
    img = m.image
    place = img.place
    if img.mem_size > MAX_SCAN_MEMORY:
        raise LimitExceeded(f"module {m.name} is 0x{img.mem_size:X} bytes in memory, more than the scanner walks "
                            f"(0x{MAX_SCAN_MEMORY:X})", place)
    t0 = time.perf_counter()
    try:
        return replace(analyse_module(m, symbols, era), seconds=time.perf_counter() - t0)
    except CodeMapLimit as e:
        raise LimitExceeded(f"module {m.name}: {e}", place) from None


class _Matches(list):
    """The module's signature matches (sorted by rva), with the two lookups a site and a caller
    make answered by index instead of a pass over all matches (thousands of routines made a
    scan quadratic)."""

    def __init__(self, matches, era: str | None = None) -> None:
        super().__init__(matches)
        self.era = era  # the tree era that names the routines (signatures.Signature.names)
        self._rvas = [mt.rva for mt in self]
        self._longest = max((len(mt.signature.code) for mt in self), default=0)
        self._at: dict[int, str] = {}
        for mt in self:
            self._at.setdefault(mt.rva, mt.signature.names(era)[0])

    def containing(self, rva: int):
        """The first match (lowest rva) whose routine holds `rva`, or None."""
        i = bisect.bisect_left(self._rvas, rva - self._longest + 1)
        j = bisect.bisect_right(self._rvas, rva)
        return next((mt for mt in self[i:j] if mt.rva <= rva < mt.end), None)

    def routine_at(self, start: int) -> str | None:
        return self._at.get(start)


@dataclass
class SiteFacts:
    """One site as the module's own bytes decide it (no place in the image): the unit of the cache."""

    rva: int
    size: int
    mnemonic: str
    bytes: str
    function: str | None
    function_rva: int | None
    function_source: str | None
    signature: dict | None
    callers: list[Caller]
    reachable: bool


@dataclass
class ModuleAnalysis:
    """What a module's code holds, from its bytes, the era and the symbols alone: the code map's
    size and every site (`SiteFacts`, by RVA). `_assemble` places it in the image."""

    code_bytes: int
    functions: int
    sites: list[SiteFacts]
    symbols: str | None = None
    code_end: int | None = None
    seconds: float = field(default=0.0, compare=False)  # what it took this run (JUnit `time`), not cached

    def payload(self) -> dict:
        """JSON data for the cache."""
        return {"code_bytes": self.code_bytes, "functions": self.functions,
                "sites": [{**asdict(s), "callers": [[c.function, c.function_rva, c.call_rva, c.kind] for c in s.callers]}
                          for s in self.sites]}

    @classmethod
    def from_payload(cls, doc, mem: bytes) -> ModuleAnalysis | None:
        """The analysis a cache entry holds, or None unless it has the right shape and each site's
        bytes are `mem`'s at its RVA (a string I/O instruction, in increasing RVA order)."""
        try:
            if set(doc) != {"code_bytes", "functions", "sites"} or not all(
                    _nat(doc[k]) for k in ("code_bytes", "functions")) or not isinstance(doc["sites"], list):
                return None
            sites, last = [], -1
            for d in doc["sites"]:
                if set(d) != _SITE_FIELDS:
                    return None
                rva, size, mn, raw = d["rva"], d["size"], d["mnemonic"], d["bytes"]
                if not (_nat(rva) and rva > last and _nat(size) and 1 <= size <= 15 and isinstance(mn, str)
                        and string_io(mn) is not None and isinstance(raw, str) and rva + size <= len(mem)
                        and mem[rva : rva + size].hex() == raw):
                    return None
                last = rva
                if not (_opt(d["function"], str) and (d["function_rva"] is None or _nat(d["function_rva"]))
                        and d["function_source"] in (None, "signature", "analysis")
                        and isinstance(d["reachable"], bool) and _signature_ok(d["signature"])
                        and isinstance(d["callers"], list)):
                    return None
                callers = []
                for c in d["callers"]:
                    if not (isinstance(c, list) and len(c) == 4 and isinstance(c[0], str) and _nat(c[1])
                            and _nat(c[2]) and c[3] in ("call", "jmp")):
                        return None
                    callers.append(Caller(*c))
                sites.append(SiteFacts(**{**d, "callers": callers}))
            return cls(doc["code_bytes"], doc["functions"], sites)
        except (TypeError, AttributeError, KeyError, ValueError):
            return None


_SITE_FIELDS = frozenset(SiteFacts.__dataclass_fields__)


def _nat(v) -> bool:
    return type(v) is int and v >= 0


def _opt(v, t) -> bool:
    return v is None or isinstance(v, t)


def _signature_ok(sig) -> bool:
    if sig is None:
        return True
    return (isinstance(sig, dict) and set(sig) == {"routine", "library", "source", "aliases", "trees", "rva", "size"}
            and all(isinstance(sig[k], str) for k in ("routine", "library", "source"))
            and _nat(sig["rva"]) and _nat(sig["size"])
            and all(isinstance(sig[k], list) and all(isinstance(x, str) for x in sig[k]) for k in ("aliases", "trees")))


def analyse_module(m: Module, symbols: BuildSymbols | None, era: str | None) -> ModuleAnalysis:
    """The module's analysis (`ModuleAnalysis`): a function of its bytes, `era` and `symbols`
    (looked up by its name, GUID and arch) alone."""
    img = m.image
    mem = img.memory
    bits = img.bits
    ranges = exec_ranges(img)
    if era is None and m.arch == "X64" and sigs.has_tdcall(mem, ranges):
        era = sigs.TDX
    matches = _Matches(sigs.find(mem, m.arch, ranges), era)
    strong, weak = _roots(m, matches)
    cmap = discover(mem, bits, ranges, strong, weak, lean=True)  # lean: only counts without sites
    text = next((s for s in img.sections if s.name == ".text"), None)
    table: SymbolTable | None = None
    if symbols is not None:
        table = symbols.lookup(m.name, m.guid, m.arch, text.rva if text else None, img.entry_rva)
    reach = cmap.reachable_from(img.entry_rva) if cmap.sites else set()
    starts = _certain_starts(cmap, strong) if cmap.sites else []
    sites = []
    seen = set()
    for site in sorted(cmap.sites, key=lambda s: s.rva):
        if site.rva in seen:
            continue
        seen.add(site.rva)
        sites.append(_site_facts(mem, site, cmap, matches, table, reach, starts))
    return ModuleAnalysis(cmap.code_bytes, cmap.function_count, sites, table.source if table else None,
                          table.code_end if table else None)


def _roots(m: Module, matches) -> tuple[list[tuple[int, str]], list]:
    """The walk's strong roots (signature matches, entry point, exports) and weak ones (pointers)."""
    img = m.image
    strong = [(mt.rva, "signature") for mt in matches] + [(img.entry_rva, "entry")] + \
        [(r, "export") for r in sorted(img.exports)]
    return strong, _pointer_roots(img, img.memory)


def code_map(m: Module) -> CodeMap:
    """The module's whole code map (every instruction start, function, call and tail jump), as
    the scan's walk finds it: for the patcher's detours, which must know where branches land."""
    img = m.image
    ranges = exec_ranges(img)
    strong, weak = _roots(m, sigs.find(img.memory, m.arch, ranges))
    return discover(img.memory, img.bits, ranges, strong, weak)


def _assemble(m: Module, a: ModuleAnalysis) -> _ModuleScan:
    """The module's summary and findings: its analysis placed where the module is in the image."""
    img = m.image
    findings = [_finding(m, img, s) for s in a.sites]
    summary = ModuleSummary(m.name, m.guid, m.file_type, m.arch, m.volume, m.fd_offset, a.code_bytes,
                            a.functions, len(findings), a.symbols, a.code_end)
    return _ModuleScan(summary, findings)


def _name_fn(start: int, matches, table: SymbolTable | None) -> str:
    if table is not None:
        n = table.name_of(start)
        if n:
            return n
    routine = matches.routine_at(start) if isinstance(matches, _Matches) else next(
        (mt.signature.routine for mt in matches if mt.rva == start), None)
    return routine or f"sub_{start:x}"


def _certain_starts(cmap: CodeMap, strong: list[tuple[int, str]]) -> list[int]:
    """Sorted function starts the code map is sure of: the strong roots (entry point, exports,
    signatures) and the targets of direct calls and tail jumps. (Its other functions are roots
    found on trial, pointer targets and gap fill, some of which are switch cases inside a function.)"""
    sure = {r for r, _ in strong} | {t for _, _, t in cmap.calls} | {t for _, _, t in cmap.tails}
    return sorted(sure & cmap.functions)


def containing_function(starts: list[int], walk_fn: int, rva: int) -> int:
    """The function holding the instruction at `rva`, by the code map alone.

    The walk attributes code to the function whose descent reached it first, which can be
    another function's code: reached by a jump, or by falling through a call that does not
    return. A function's code starts at its entry, so when a certain function start (`starts`,
    sorted) lies after the walk's function and at or before `rva`, the instruction is in that
    later function; else it is in the walk's function (when that starts at or before `rva`).
    Measured against the symbol tables of edk2 2022.11 DEBUG builds (OvmfPkgX64, OvmfPkgIa32X64):
    this names the function containing 97.7% and 97.6% of all direct calls and tail jumps (the
    walk's function alone: 95.9%, 95.8%), and of every call to a function holding a site
    (tests/test_scan_gate.py)."""
    i = bisect.bisect_right(starts, rva) - 1
    sure = starts[i] if i >= 0 else None
    if walk_fn <= rva and (sure is None or walk_fn > sure):
        return walk_fn
    return walk_fn if sure is None else sure


def _callers(cfn: int, cmap: CodeMap, starts: list[int], matches, table: SymbolTable | None) -> list[Caller]:
    """Direct calls and tail jumps to `cfn`, each named by the function that contains the call
    instruction: the symbol table's function when there is one, else the code map's."""
    out = []
    for walk_fn, call, kind in cmap.callers_of(cfn):
        hit = table.function_at(call) if table is not None else None
        if hit is not None:
            start, name = hit
        else:
            start = containing_function(starts, walk_fn, call)
            name = _name_fn(start, matches, table)
        if kind == "jmp" and start == cfn:
            continue  # a jump inside the function itself, not a tail call
        out.append(Caller(name, start, call, kind))
    return sorted(out, key=lambda c: (c.function_rva, c.call_rva, c.kind))


def _fd_region(node: Node, fd_offset: int | None, length: int) -> dict | None:
    """The stretch of the file that holds an instruction as stored: the instruction itself
    when its bytes are in the file as is, else the nearest enclosing node stored as is (the
    compressed section whose decoding holds it)."""
    if fd_offset is not None:
        return {"offset": fd_offset, "length": length, "holder": "instruction"}
    for n in (node, *node.ancestors()):
        if n.abs_offset is not None:
            return {"offset": n.abs_offset, "length": n.size, "holder": node_label(n)}
    return None


def _site_facts(mem: bytes, site, cmap: CodeMap, matches, table, reach, starts: list[int]) -> SiteFacts:
    raw = mem[site.rva : site.rva + site.size]
    fn_rva: int | None = site.function
    fn_name: str | None = None
    source: str | None = None
    sig_info = None
    match = matches.containing(site.rva) if isinstance(matches, _Matches) else next(
        (mt for mt in matches if mt.rva <= site.rva < mt.end), None)
    if match is not None:
        s = match.signature
        name, others = s.names(getattr(matches, "era", None))
        sig_info = {"routine": name, "library": s.library, "source": s.source, "aliases": list(others),
                    "trees": list(s.trees), "rva": match.rva, "size": match.end - match.rva}
    hit = table.function_at(site.rva) if table is not None else None
    if hit is not None:
        fn_rva, fn_name, source = hit[0], hit[1], "symbols"
    elif match is not None:
        fn_rva, fn_name, source = match.rva, sig_info["routine"], "signature"
    elif fn_rva is not None:
        fn_name, source = f"sub_{fn_rva:x}", "analysis"
    cfn = site.function  # the code map's function (what callers and reachability refer to)
    callers = _callers(cfn, cmap, starts, matches, table)
    return SiteFacts(site.rva, site.size, site.mnemonic, raw.hex(), fn_name, fn_rva, source, sig_info, callers,
                     cfn in reach)


def _finding(m: Module, img: PeImage, s: SiteFacts) -> Finding:
    sio = string_io(s.mnemonic)
    off = img.rva_to_offset(s.rva)
    fd = img.abs_offset + off if (img.abs_offset is not None and off is not None) else None
    sec = img.section_at(s.rva)
    return Finding(
        module=m.name, guid=m.guid, file_type=m.file_type, arch=m.arch, volume=m.volume, fd_offset=fd,
        container_offset=img.offset + (off or 0), rva=s.rva, pe_section=sec.name if sec else None,
        bytes=s.bytes, mnemonic=s.mnemonic, width=sio.width, direction=sio.direction, rep=sio.rep,
        function=s.function, function_rva=s.function_rva, function_source=s.function_source,
        signature=copy.deepcopy(s.signature), callers=list(s.callers), reachable=s.reachable,
        fd_region=_fd_region(img, fd, s.size),
    )


# --- whole images ----------------------------------------------------------------------------

_WORK: dict = {}


def _work(i: int) -> ModuleAnalysis:
    return _analyse_checked(_WORK["modules"][i], _WORK["symbols"], _WORK["era"])


def tree_era(modules: list[Module]) -> str | None:
    """The era of the EDK II tree that built these modules (one image's), for naming routines
    whose name changed while their code did not (signatures.Signature.names):

    - TDX when an X64 module's code holds TDCALL (signatures.TDCALL): only TDX trees have it;
    - PRE_TDX when none does and the modules include an X64 DXE core: in TDX trees the X64 DXE
      core carries TDCALL (LocalApicLib's MSR access calls TdVmCall in a TDX guest, a run-time
      check), in every 2022.11 and 2025.02 build and Debian image, with the TDX I/O paths
      compiled in (OvmfPkgX64) or folded away by LTO (OvmfPkgIa32X64, CcProbeLibNull: most of
      its other modules then hold no TDCALL);
    - None otherwise (a standalone module, a volume without the DXE core): not known.
    A module the scan refuses (over its caps, damaged) gives no evidence here; its scan says why."""
    dxe_core = False
    for m in modules:
        if m.arch != "X64":
            continue
        try:
            img = m.image
            if img.mem_size > MAX_SCAN_MEMORY:
                continue
            if sigs.has_tdcall(img.memory, exec_ranges(img)):
                return sigs.TDX
        except OvmfToolError:
            continue
        dxe_core = dxe_core or m.file_type == "DXE_CORE"
    return sigs.PRE_TDX if dxe_core else None


def _era_note(era: str | None, findings: list[Finding]) -> str | None:
    """What the image says about routine names that differ between EDK II eras, when findings
    carry such a name: which names the report uses, and why."""
    named = [f.signature for f in findings if f.function_source == "signature" and f.signature
             and f.signature["aliases"]]
    if not named:
        return None

    def few(names) -> str:
        names = sorted(set(names))
        return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")

    used, other = few(s["routine"] for s in named), few(a for s in named for a in s["aliases"])
    if era == sigs.PRE_TDX:
        return (f"routines named as in EDK II trees without TDX support ({used}; {other} in later trees, the same "
                "code): no module of the image holds the TDCALL instruction, its X64 DXE core neither")
    if era is None:
        return (f"routines named as in EDK II trees with TDX support ({used}; {other} in older trees such as "
                "edk2-stable202105, the same code): the input does not tell which (no TDCALL instruction, no X64 "
                "DXE core)")
    return None


def _module_key(m: Module, era: str | None) -> str:
    from ovmftool.scan.cache import module_key

    img = m.image
    return module_key(hashlib.sha256(img.raw).hexdigest(), img.mem_size, m.arch, era)


def _analyses(modules: list[Module], symbols: BuildSymbols | None, era: str | None, jobs: int,
              cache: ResultCache | None) -> list[ModuleAnalysis]:
    """Each module's analysis, in order: from the cache when it holds a valid entry (never with
    symbols: their names come from files outside the image), else computed (over `jobs` worker
    processes when there are enough modules) and stored."""
    cache = cache if symbols is None else None
    out: list[ModuleAnalysis | None] = [None] * len(modules)
    keys: list[str] = []
    if cache is not None:
        for i, m in enumerate(modules):
            keys.append(_module_key(m, era))
            t0 = time.perf_counter()
            doc = cache.get(keys[i])
            if doc is not None and m.image.mem_size <= MAX_SCAN_MEMORY:
                out[i] = ModuleAnalysis.from_payload(doc, m.image.memory)
                if out[i] is not None:
                    out[i].seconds = time.perf_counter() - t0
                else:
                    cache.reject()  # whole, but not of this module's shape or bytes: recomputed, rewritten
    todo = [i for i, a in enumerate(out) if a is None]
    pool = _fork_context() if jobs > 1 and len(todo) > 8 else None
    if pool is not None:
        _WORK.update(modules=modules, symbols=symbols, era=era)
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=pool, initializer=_worker_init,
                                     initargs=(os.getpid(),)) as ex:
                done = list(ex.map(_work, todo, chunksize=max(1, len(todo) // (jobs * 4))))
        finally:
            _WORK.clear()
    else:
        done = [_analyse_checked(modules[i], symbols, era) for i in todo]
    for i, a in zip(todo, done):
        out[i] = a
        if cache is not None:
            cache.put(keys[i], a.payload())
    return out


def _worker_init(parent: int) -> None:
    """In each worker: die with the parent (Linux: PR_SET_PDEATHSIG), so a scan killed by a
    signal leaves no worker behind holding its output pipes open."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass  # not Linux: workers end when their queue does
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _fork_context():
    """multiprocessing's fork context (workers inherit the parsed image), or None where there is
    none (then the work runs in this process)."""
    import multiprocessing

    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def scan_image(path: str, symbols_dir: str | BuildSymbols | None = None, jobs: int = 1,
               root: FlashImage | None = None, cache: ResultCache | None = None) -> ScanResult:
    """Scan every module of the image at `path` (parsed here unless `root` is given).

    `symbols_dir`: a build directory, or its already-opened `BuildSymbols` (so a caller that
    needs the symbols too reads each symbol file once). `cache`: module analyses are looked up
    and stored there (`scan.cache`; not with symbols). `jobs` > 1: the modules are analysed in
    that many worker processes."""
    t0 = time.perf_counter()
    root = root if root is not None else read_image(path)
    symbols = BuildSymbols(symbols_dir) if isinstance(symbols_dir, str) else symbols_dir
    modules = list(iter_modules(root))
    era = tree_era(modules)
    analyses = _analyses(modules, symbols, era, jobs, cache)
    results = [_assemble(m, a) for m, a in zip(modules, analyses)]
    findings = [f for r in results for f in r.findings]
    notes = []
    era_note = _era_note(era, findings)
    if era_note:
        notes.append(era_note)
    blobs = list(iter_code_blobs(root))
    if blobs:
        notes.append(f"{len(blobs)} raw code blob(s) (reset vector) checked by recursive descent from the "
                     "16-bit entry")
        findings += scan_blobs(root)
    return ScanResult(path, root.sha256, root.size, [r.summary for r in results], findings, notes,
                      standalone=isinstance(root, BinaryFile), era=era,
                      module_seconds=[a.seconds for a in analyses], seconds=time.perf_counter() - t0)


# --- verdicts --------------------------------------------------------------------------------

def read_lazy_structures(root: FlashImage) -> None:
    """Read now what the model reads on first use (base relocations, exports, the debug
    directory, and whatever each node's summary reads), so that damage found there is recorded
    before the verdict: `info` reads the same through the summaries, and scan workers (forked
    processes) would otherwise record it where the parent never sees it."""
    for n in walk(root):
        node_summary(n)
        if isinstance(n, PeImage):
            for lazy in ("relocations", "exports", "debug_path"):  # cached properties: read once
                getattr(n, lazy)


def no_code_hint(root: FlashImage) -> str:
    """Why an input without PE/TE modules is likely not what the user meant to scan."""
    vols = [n for n in walk(root) if isinstance(n, Volume)]
    if any(v.fs_guid == S.NVRAM_GUID for v in vols):
        return "is this OVMF_VARS (a variable store)?"
    return (f"its {len(vols)} firmware volume{'s' * (len(vols) != 1)} hold no executable code: is this a firmware "
            "code image (OVMF_CODE.fd, OVMF.fd) or a UEFI binary?")


# Volume file systems the model reads (FFS2, FFS3), or that hold variables, not code (NVRAM).
READ_FILE_SYSTEMS = frozenset({S.FFS2_GUID, S.FFS3_GUID, S.NVRAM_GUID})


@dataclass
class Unread:
    """A part of the image that could hold code and that the model did not read."""

    what: str  # "a GUID-defined section with unknown GUID ..."
    where: str  # "0x90", or "FVMAIN_COMPACT/LZMA+0x..." inside decoded data
    size: int  # bytes of it not read

    def __str__(self) -> str:
        return f"0x{self.size:X} bytes in {self.what} at {self.where} (its contents could hold code)"


def unread_parts(root: Node) -> list[Unread]:
    """What the model left unread that could hold code, in flash order: a GUID-defined section
    whose GUID no decoder knows and whose attributes say PROCESSING_REQUIRED (without that bit
    the model reads its data as plain sections), a volume whose file system is neither FFS2,
    FFS3 nor the NVRAM variable store, and an FFS file of a type the PI specification does not
    define (its layout is unknown). Damaged parts are not listed: `all_problems` has them.
    RAW files and RAW sections are data by definition (the reset vector's RAW file is read as
    code) and are not listed."""
    out = []
    for n in walk(root):
        if n.problems:
            continue
        if isinstance(n, Section) and n.type == 0x02 and n.decoded is None and not n.children:
            if n.guided_attributes & S.EFI_GUIDED_SECTION_PROCESSING_REQUIRED and n.size > n.header_size:
                out.append(Unread(f"a GUID-defined section with unknown GUID {n.guid}", n.place,
                                  n.size - n.header_size))
        elif isinstance(n, Volume) and n.fs_guid not in READ_FILE_SYSTEMS and n.size > n.header_length:
            out.append(Unread(f"a firmware volume with unknown file system {n.fs_guid}", n.place,
                              n.size - n.header_length))
        elif isinstance(n, FfsFile) and _unknown_file_type(n.type) and n.size > n.header_size:
            out.append(Unread(f"FFS file {n.guid} of unknown type 0x{n.type:02X}", n.place, n.size - n.header_size))
    return out


def _unknown_file_type(t: int) -> bool:
    """Neither RAW, a sectioned type (PI vol. 3 2.1.4.1, OEM and debug types included) nor a pad file."""
    return t != 0x01 and t != 0xF0 and t not in S.SECTIONED_FILE_TYPES


def unexecutable_modules(root: Node) -> list[str]:
    """Modules whose code the scan cannot read or find where the headers say it is: a machine that
    is not x86, no executable section, or an entry point outside every executable section (the loader runs the entry point whatever
    the section flags say). One line each, naming module and place."""
    out = []
    for m in iter_modules(root):
        img = m.image
        ranges = exec_ranges(img)
        if img.machine not in ("IA32", "X64"):  # EBC byte code, ARM, RISC-V: not x86, so not read here
            out.append(f"module {m.name} at {img.place}: machine {img.machine} is not x86 (IA32/X64), "
                       "its code is not read by this scanner")
        elif not ranges:
            out.append(f"module {m.name} at {img.place}: no executable section ({len(img.sections)} "
                       f"section{'s' * (len(img.sections) != 1)}, none marked code or executable)")
        elif not any(lo <= img.entry_rva < hi for lo, hi in ranges):
            out.append(f"module {m.name} at {img.place}: entry point rva 0x{img.entry_rva:X} lies outside its "
                       "executable sections")
    return out


def _more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def check_scannable(path: str, root: FlashImage) -> None:
    """Raise ImageError unless a scan of `root` can vouch for it: no damage anywhere (lazily read
    structures included), nothing left unread that could hold code (`unread_parts`), some code
    to scan, and every module's code where its headers say (`unexecutable_modules`). "No sites"
    must mean "checked and clean"."""
    read_lazy_structures(root)
    _refuse_damage(path, root)
    unread = unread_parts(root)
    if unread:
        raise ImageError(f"{path}: not checked: {unread[0]}{_more(unread)}")
    if not any(True for _ in iter_modules(root)) and not any(True for _ in iter_code_blobs(root)):
        raise NothingToCheck(f"{path}: no PE/TE modules: {no_code_hint(root)}")
    _refuse_codeless(path, unexecutable_modules(root))


def _refuse_damage(path: str, root: FlashImage) -> None:
    probs = all_problems(root)
    if probs:
        raise ImageError(f"{path}: damaged image: {probs[0]}")


def _refuse_codeless(path: str, modules: list[str]) -> None:
    if modules:
        raise ImageError(f"{path}: {modules[0]}: no executable code found: not checked{_more(modules)}")


def codeless_modules(res: ScanResult) -> list[str]:
    """Modules in which the scan's walk found no instruction at all (code_bytes 0)."""
    return [f"module {m.name} at {f'0x{m.fd_offset:X}' if m.fd_offset is not None else m.volume or 'its file'}"
            for m in res.modules if m.code_bytes == 0]


def scan_checked(path: str, symbols: str | BuildSymbols | None = None, jobs: int = 1,
                 root: FlashImage | None = None, cache: ResultCache | None = None) -> ScanResult:
    """`scan_image` with the verdict rules: damaged images, parts that could hold code left unread,
    inputs without code and modules in which no code was found are errors (ImageError),
    including damage the scan itself comes upon. `cache`: for module analyses (`scan_image`)."""
    root = root if root is not None else read_image(path)
    check_scannable(path, root)
    res = scan_image(path, symbols, jobs, root=root, cache=cache)
    _refuse_damage(path, root)  # damage the scan itself came upon
    _refuse_codeless(path, codeless_modules(res))
    return res


def open_symbols(build_dir: str | None, option: str = "--symbols") -> BuildSymbols | None:
    """The build's symbols (None without a directory); an unusable directory is an error naming
    `option` (diff has --symbols-old and --symbols-new). Call before any scan."""
    if build_dir is None:
        return None
    try:
        return BuildSymbols(build_dir)
    except OvmfToolError as e:
        msg = str(e)
        raise OvmfToolError(option + msg[len("--symbols"):] if msg.startswith("--symbols:") else msg) from None


class Found(str):
    """An input path a directory or a pattern brought in (`scan.inputs`), not one named: when it
    holds nothing the tool checks it is skipped, not an error."""


def _file_size(path: str) -> int | None:
    """The size of the regular file at `path` (within MAX_IMAGE_SIZE), else None: the scan then
    says what is wrong."""
    try:
        size = os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        return None
    return size if size is not None and size <= MAX_IMAGE_SIZE else None


def _sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read(MAX_IMAGE_SIZE + 1)).hexdigest()
    except OSError:
        return None


def _same_contents(items: list) -> dict[int, int]:
    """index -> index of the first input with the same contents, for the inputs that are files;
    only files whose size another shares are read to compare."""
    sizes = {i: _file_size(p) for i, p in enumerate(items) if not isinstance(p, ScanFailure)}
    count: dict[int, int] = {}
    for s in sizes.values():
        if s is not None:
            count[s] = count.get(s, 0) + 1
    first: dict[int, int] = {}
    seen: dict[tuple[int, str], int] = {}
    for i, s in sizes.items():
        if s is None or count[s] < 2:
            continue
        digest = _sha256_of(items[i])
        if digest is not None:
            first[i] = seen.setdefault((s, digest), i)
    return first


def scan_paths(paths, symbols_dir: str | None = None, jobs: int | None = 1,
               cache: ResultCache | None = None) -> list[ScanResult | ScanFailure]:
    """Scan each input (`scan_inputs`), files of identical contents once: each is reported under
    its own name, with a note naming the first. A file a directory or pattern brought in
    (`Found`) that holds nothing the tool checks is `ScanSkipped`, unless every input is: then
    nothing was checked, and each is the error it would be if named."""
    items = list(paths)
    first = _same_contents(items)
    unique = [i for i in range(len(items)) if first.get(i, i) == i]
    done = dict(zip(unique, scan_inputs([items[i] for i in unique], symbols_dir, jobs, cache)))
    out: list[ScanResult | ScanFailure] = []
    for i, p in enumerate(items):
        o = done.get(i)
        if o is None:  # same contents as an input before it
            o0, p0 = done[first[i]], items[first[i]]
            if isinstance(o0, ScanResult):
                o = replace(o0, path=p, notes=o0.notes + [f"same contents as {p0}: scanned once"])
            else:
                o = ScanFailure(p, o0.message.replace(p0, p, 1), o0.nothing)
        if isinstance(o, ScanFailure) and o.nothing and isinstance(p, Found):
            o = ScanSkipped(o.path, o.message, True)
        out.append(o)
    if out and all(isinstance(o, ScanSkipped) for o in out):  # nothing checked at all: not a clean verdict
        out = [ScanFailure(o.path, o.message, True) for o in out]
    return out


def scan_inputs(paths, symbols_dir: str | None = None, jobs: int | None = 1,
                cache: ResultCache | None = None) -> list[ScanResult | ScanFailure]:
    """Scan each input: its result, or its failure, in the order given. `paths` may hold
    ScanFailure entries (inputs that named nothing to scan, `scan.inputs`): kept in their place.

    `jobs`: worker processes (None: `default_jobs(n)` for n images). Several images are spread
    over them, one image to a process (the largest first), each scanned with its modules in
    turn; one image has its modules spread over them (`scan_image`). The result is the same
    whatever the count. `cache`: whole images and module analyses are looked up and stored there
    (`scan.cache`; not with symbols).

    An unusable `symbols_dir` is an error of the whole command (raised before any scan); each
    image gets its own index of the build's symbol files (their matches are per image)."""
    first = BuildSymbols(symbols_dir) if symbols_dir is not None else None  # fails once, up front
    items = list(paths)
    todo = [i for i, p in enumerate(items) if not isinstance(p, ScanFailure)]
    out: list = list(items)
    looked = cache is not None and symbols_dir is None and len(todo) > 1
    if looked:  # images seen before: no worker needed
        for i in todo:
            out[i] = _cached_image(items[i], cache)
        todo = [i for i in todo if out[i] is None]
    jobs = default_jobs(len(todo)) if jobs is None else jobs
    pool = _fork_context() if jobs > 1 and len(todo) > 1 else None
    if pool is None:
        for n, i in enumerate(todo):
            symbols = first if n == 0 or first is None else BuildSymbols(symbols_dir)
            out[i] = _scan_input(items[i], symbols, jobs, cache, lookup=not looked)
            if len(todo) > 1:
                gc.collect()  # the image's tree (parent links: cycles) goes now, not images later
        return out
    for i, res in zip(todo, _scan_spread([items[i] for i in todo], symbols_dir, min(jobs, len(todo)), cache, pool,
                                         not looked)):
        out[i] = res
    return out


def _scan_input(path: str, symbols: str | BuildSymbols | None, jobs: int, cache: ResultCache | None,
                lookup: bool = True) -> ScanResult | ScanFailure:
    """One input's result (from the cache's whole-image entry when it has one, unless `lookup`
    is False: already missed) or its failure."""
    from ovmftool.scan import cache as C

    whole = C.ImageEntry(path, cache) if cache is not None and symbols is None else None
    if whole is not None and lookup:
        res = _cached_image(path, cache, whole)
        if res is not None:
            return res
    try:
        res = scan_checked(path, symbols, jobs, cache=cache)
    except OvmfToolError as e:
        # a flash image's name with no volume in it is a cut image, not a blob: an error anywhere
        cut = isinstance(e, NoVolume) and path.lower().endswith((".fd", ".fv", ".rom"))
        return ScanFailure(path, str(e), isinstance(e, NothingToCheck) and not cut)
    if whole is not None:
        whole.put(res.sha256, res.size, result_payload(res))
    return res


def result_payload(res) -> dict:
    """A checked `ScanResult` as JSON data, without its path."""
    return {"sha256": res.sha256, "size": res.size, "modules": [asdict(m) for m in res.modules],
            "findings": [asdict(f) for f in res.findings], "notes": list(res.notes),
            "standalone": res.standalone, "era": res.era}


_STR, _INT, _OPT_STR, _OPT_INT, _BOOL = "s", "i", "s?", "i?", "b"
_MODULE_FIELDS = {"name": _STR, "guid": _STR, "file_type": _STR, "arch": _STR, "volume": _STR, "fd_offset": _OPT_INT,
                  "code_bytes": _INT, "functions": _INT, "sites": _INT, "symbols": _OPT_STR,
                  "code_end": _OPT_INT}
_FINDING_FIELDS = {"module": _STR, "guid": _STR, "file_type": _STR, "arch": _STR, "volume": _STR,
                   "fd_offset": _OPT_INT, "container_offset": _INT, "rva": _INT, "pe_section": _OPT_STR,
                   "bytes": _STR, "mnemonic": _STR, "width": _INT, "direction": _STR, "rep": _OPT_STR,
                   "function": _OPT_STR, "function_rva": _OPT_INT, "function_source": _OPT_STR,
                   "signature": None, "callers": None, "reachable": _BOOL, "fd_region": None}
_CALLER_FIELDS = {"function": _STR, "function_rva": _INT, "call_rva": _INT, "kind": _STR}
_REGION_FIELDS = {"offset": _INT, "length": _INT, "holder": _STR}


def _typed(d, fields: dict) -> bool:
    if not isinstance(d, dict) or set(d) != set(fields):
        return False
    for k, t in fields.items():
        v = d[k]
        if t is None:
            continue
        if v is None and t.endswith("?"):
            continue
        ok = {"s": isinstance(v, str), "i": type(v) is int and v >= 0, "b": isinstance(v, bool)}[t[0]]
        if not ok:
            return False
    return True


def result_from_payload(doc, path: str, sha256: str, size: int):
    """The `ScanResult` a whole-image entry holds, under `path`, or None unless it is of that
    file (sha256, size) and of the right shape: typed fields, sites a string I/O instruction
    each, every module with code found and no symbols (the cache never serves --symbols)."""
    try:
        if (not isinstance(doc, dict) or set(doc) != {"sha256", "size", "modules", "findings", "notes", "standalone", "era"}
                or doc["sha256"] != sha256 or doc["size"] != size or not isinstance(doc["standalone"], bool)
                or not (doc["era"] is None or isinstance(doc["era"], str))
                or not isinstance(doc["notes"], list) or not all(isinstance(n, str) for n in doc["notes"])
                or not isinstance(doc["modules"], list) or not isinstance(doc["findings"], list)):
            return None
        modules = []
        for m in doc["modules"]:
            if (not _typed(m, _MODULE_FIELDS) or m["code_bytes"] == 0 or m["symbols"] is not None
                    or m["code_end"] is not None):
                return None
            modules.append(ModuleSummary(**m))
        findings = []
        for f in doc["findings"]:
            if (not _typed(f, _FINDING_FIELDS) or string_io(f["mnemonic"]) is None or not _signature_ok(f["signature"])
                    or not isinstance(f["callers"], list) or not all(_typed(c, _CALLER_FIELDS) for c in f["callers"])
                    or not (f["fd_region"] is None or _typed(f["fd_region"], _REGION_FIELDS))):
                return None
            findings.append(Finding(**{**f, "callers": [Caller(**c) for c in f["callers"]]}))
        if sum(m.sites for m in modules) > len(findings):
            return None
        return ScanResult(path, sha256, size, modules, findings, list(doc["notes"]), doc["standalone"], doc["era"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _cached_image(path: str, cache: ResultCache, whole=None) -> ScanResult | None:
    """The cached result of the image at `path` (its whole-image entry, `scan.cache`), or None."""
    from ovmftool.scan import cache as C

    whole = whole or C.ImageEntry(path, cache)
    doc = whole.get()
    if doc is None:
        return None
    res = result_from_payload(doc, path, whole.sha256, whole.size)
    if res is None:
        cache.reject()
    return res


def _spread_work(path: str, symbols_dir: str | None, cache: ResultCache | None,
                 lookup: bool) -> ScanResult | ScanFailure:
    try:
        return _scan_input(path, BuildSymbols(symbols_dir) if symbols_dir is not None else None, 1, cache, lookup)
    finally:
        gc.collect()  # as in scan_paths: a worker holds one image's tree at a time


def _scan_spread(paths: list[str], symbols_dir: str | None, jobs: int, cache: ResultCache | None,
                 ctx, lookup: bool = True) -> list[ScanResult | ScanFailure]:
    """`_scan_input` of each path in `jobs` worker processes, largest file first; in order."""
    from concurrent.futures.process import BrokenProcessPool

    def size(p: str) -> int:
        try:
            return os.stat(p).st_size
        except OSError:
            return 0

    order = sorted(range(len(paths)), key=lambda i: (-size(paths[i]), i))
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = {i: ex.submit(_spread_work, paths[i], symbols_dir, cache, lookup) for i in order}
        return [futures[i].result() for i in range(len(paths))]
    except BrokenProcessPool:
        raise OvmfToolError("a scan worker process died (killed, or out of memory?)") from None
    except BaseException:  # interrupted: no worker goes on scanning
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def scan_blobs(root: FlashImage) -> list[Finding]:
    """The reset vector: recursive descent in real mode from its 16-byte entry."""
    out = []
    for b in iter_code_blobs(root):
        data = b.data
        cmap = discover(data, 16, [(0, len(data))], [(b.entry_offset, "entry")], [])
        for site in sorted(cmap.sites, key=lambda s: s.rva):
            sio = string_io(site.mnemonic)
            f = b.parent
            fd = (b.abs_offset + site.rva) if b.abs_offset is not None else None
            out.append(Finding(
                module="ResetVector", guid=getattr(f, "guid", ""), file_type=getattr(f, "type_name", "RAW"),
                arch="IA32", volume="", fd_offset=fd,
                container_offset=b.offset + site.rva, rva=site.rva, pe_section=None,
                bytes=data[site.rva : site.rva + site.size].hex(), mnemonic=site.mnemonic, width=sio.width,
                direction=sio.direction, rep=sio.rep, function=f"sub_{site.function:x}", function_rva=site.function,
                function_source="analysis", signature=None, callers=[], reachable=True,
                fd_region=_fd_region(b, fd, site.size)))
    return out


def default_jobs(images: int = 1) -> int:
    """Worker processes to use by default. Several images: one each, up to the CPU count, at most
    4. One image: 1 with the native walk (starting workers costs more than it saves: measured
    0.35 s vs 0.38 s on OVMF_CODE_4M.fd, 0.47 s vs 0.54 s on a DEBUG build), else the CPU
    count, at most 4."""
    from ovmftool.scan.codemap import native_available

    cpus = max(1, min(4, os.cpu_count() or 1))
    if images > 1:
        return min(images, cpus)
    return 1 if native_available() else cpus
