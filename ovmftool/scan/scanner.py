"""`scan`: every string port-I/O instruction in a firmware image's code, attributed.

For each PE32/TE module: discover its code (codemap), match built-in signatures, name the
containing function (symbols > signature > analysis), list direct callers, and decide whether
the function is reachable by direct calls from the entry point.
"""

from __future__ import annotations

import bisect
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from ovmftool.errors import ImageError, LimitExceeded, OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.node import Node, all_problems, walk
from ovmftool.model.parser import FlashImage, read_image
from ovmftool.model.ffs import FfsFile
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from ovmftool.model import structs as S
from ovmftool.ops.modules import Module, iter_code_blobs, iter_modules
from ovmftool.scan import signatures as sigs
from ovmftool.scan.codemap import CodeMap, CodeMapLimit, discover
from ovmftool.scan.disasm import string_io
from ovmftool.scan.symbols import BuildSymbols, SymbolTable


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
        return asdict(self)


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

    def as_dict(self) -> dict:
        return asdict(self)


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

    @property
    def exit_code(self) -> int:
        """This image's verdict: 1 when it has sites, else 0 (checked and clean)."""
        return 1 if self.findings else 0


@dataclass
class ScanFailure:
    """An input that could not be scanned (unreadable, damaged, or holding no code): it keeps
    its place in every report, and its verdict is 2."""

    path: str
    message: str

    @property
    def exit_code(self) -> int:
        return 2


def worst_exit(outcomes) -> int:
    """The exit code of a scan of several inputs: the worst of theirs (2 > 1 > 0)."""
    return max((o.exit_code for o in outcomes), default=0)


def exec_ranges(img: PeImage) -> list[tuple[int, int]]:
    """[start, end) RVAs of the image's executable sections."""
    return [(s.rva, s.rva + (s.virtual_size or s.raw_size)) for s in img.sections if s.executable]


def _pointer_roots(img: PeImage, mem: bytes) -> list[int]:
    """Relocated pointers whose value lands in an executable section."""
    out = []
    base, size = img.image_base, len(mem)
    for rva, t in img.relocations:
        if t == S.REL_BASED_DIR64 and rva + 8 <= size:
            v = struct.unpack_from("<Q", mem, rva)[0]
        elif t == S.REL_BASED_HIGHLOW and rva + 4 <= size:
            v = struct.unpack_from("<I", mem, rva)[0]
        else:
            continue
        tgt = (v - base) & 0xFFFFFFFFFFFFFFFF
        if tgt < size:
            out.append(tgt)
    return sorted(set(out))


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
    img = m.image
    place = f"0x{img.abs_offset:X}" if img.abs_offset is not None else f"{img.space.label}+0x{img.offset:X}"
    if img.mem_size > MAX_SCAN_MEMORY:
        raise LimitExceeded(f"module {m.name} is 0x{img.mem_size:X} bytes in memory, more than the scanner walks "
                            f"(0x{MAX_SCAN_MEMORY:X})", place)
    try:
        return _scan_module(m, symbols, era)
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


def _scan_module(m: Module, symbols: BuildSymbols | None, era: str | None) -> _ModuleScan:
    img = m.image
    mem = img.memory
    bits = img.bits
    ranges = exec_ranges(img)
    if era is None and m.arch == "X64" and sigs.has_tdcall(mem, ranges):
        era = sigs.TDX
    matches = _Matches(sigs.find(mem, m.arch, ranges), era)
    strong = [(img.entry_rva, "entry")] + [(r, "export") for r in sorted(img.exports)]
    strong = [(mt.rva, "signature") for mt in matches] + strong
    weak = _pointer_roots(img, mem)
    cmap = discover(mem, bits, ranges, strong, weak)
    text = next((s for s in img.sections if s.name == ".text"), None)
    table: SymbolTable | None = None
    if symbols is not None:
        table = symbols.lookup(m.name, m.guid, m.arch, text.rva if text else None, img.entry_rva)
    reach = cmap.reachable_from(img.entry_rva) if cmap.sites else set()
    starts = _certain_starts(cmap, strong) if cmap.sites else []
    findings = []
    seen = set()
    for site in sorted(cmap.sites, key=lambda s: s.rva):
        if site.rva in seen:
            continue
        seen.add(site.rva)
        findings.append(_finding(m, img, mem, site, cmap, matches, table, reach, starts))
    summary = ModuleSummary(m.name, m.guid, m.file_type, m.arch, m.volume, m.fd_offset, cmap.code_bytes,
                            len(cmap.functions), len(findings), table.source if table else None)
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
            return {"offset": n.abs_offset, "length": n.size, "holder": n.label()}
    return None


def _finding(m: Module, img: PeImage, mem: bytes, site, cmap: CodeMap, matches, table, reach,
             starts: list[int]) -> Finding:
    raw = mem[site.rva : site.rva + site.size]
    sio = string_io(site.mnemonic)
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
                    "trees": list(s.trees)}
    hit = table.function_at(site.rva) if table is not None else None
    if hit is not None:
        fn_rva, fn_name, source = hit[0], hit[1], "symbols"
    elif match is not None:
        fn_rva, fn_name, source = match.rva, sig_info["routine"], "signature"
    elif fn_rva is not None:
        fn_name, source = f"sub_{fn_rva:x}", "analysis"
    cfn = site.function  # the code map's function (what callers and reachability refer to)
    callers = _callers(cfn, cmap, starts, matches, table)
    off = img.rva_to_offset(site.rva)
    fd = img.abs_offset + off if (img.abs_offset is not None and off is not None) else None
    sec = img.section_at(site.rva)
    return Finding(
        module=m.name, guid=m.guid, file_type=m.file_type, arch=m.arch, volume=m.volume, fd_offset=fd,
        container_offset=img.offset + (off or 0), rva=site.rva, pe_section=sec.name if sec else None,
        bytes=raw.hex(), mnemonic=site.mnemonic, width=sio.width, direction=sio.direction, rep=sio.rep,
        function=fn_name, function_rva=fn_rva, function_source=source, signature=sig_info, callers=callers,
        reachable=cfn in reach, fd_region=_fd_region(img, fd, site.size),
    )


# --- whole images ----------------------------------------------------------------------------

_WORK: dict = {}


def _work(i: int) -> _ModuleScan:
    return scan_module(_WORK["modules"][i], _WORK["symbols"], _WORK["era"])


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


def scan_image(path: str, symbols_dir: str | BuildSymbols | None = None, jobs: int = 1,
               root: FlashImage | None = None) -> ScanResult:
    """Scan every module of the image at `path` (parsed here unless `root` is given).

    `symbols_dir`: a build directory, or its already-opened `BuildSymbols` (so a caller that
    needs the symbols too reads each symbol file once)."""
    root = root if root is not None else read_image(path)
    symbols = BuildSymbols(symbols_dir) if isinstance(symbols_dir, str) else symbols_dir
    modules = list(iter_modules(root))
    era = tree_era(modules)
    if jobs > 1 and len(modules) > 8:
        _WORK.update(modules=modules, symbols=symbols, era=era)
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            results = list(ex.map(_work, range(len(modules)), chunksize=max(1, len(modules) // (jobs * 4))))
        _WORK.clear()
    else:
        results = [scan_module(m, symbols, era) for m in modules]
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
                      standalone=isinstance(root, BinaryFile), era=era)


# --- verdicts --------------------------------------------------------------------------------

def read_lazy_structures(root: FlashImage) -> None:
    """Read now what the model reads on first use (base relocations, exports, the debug
    directory, and whatever each node's summary reads), so that damage found there is recorded
    before the verdict: `info` reads the same through the summaries, and scan workers (forked
    processes) would otherwise record it where the parent never sees it."""
    for n in walk(root):
        n.summary()
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


def _where(n: Node) -> str:
    a = n.abs_offset
    return f"0x{a:X}" if a is not None else f"{n.space.label}+0x{n.offset:X}"


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
                out.append(Unread(f"a GUID-defined section with unknown GUID {n.guid}", _where(n),
                                  n.size - n.header_size))
        elif isinstance(n, Volume) and n.fs_guid not in READ_FILE_SYSTEMS and n.size > n.header_length:
            out.append(Unread(f"a firmware volume with unknown file system {n.fs_guid}", _where(n),
                              n.size - n.header_length))
        elif isinstance(n, FfsFile) and _unknown_file_type(n.type) and n.size > n.header_size:
            out.append(Unread(f"FFS file {n.guid} of unknown type 0x{n.type:02X}", _where(n), n.size - n.header_size))
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
            out.append(f"module {m.name} at {_where(img)}: machine {img.machine} is not x86 (IA32/X64), "
                       "its code is not read by this scanner")
        elif not ranges:
            out.append(f"module {m.name} at {_where(img)}: no executable section ({len(img.sections)} "
                       f"section{'s' * (len(img.sections) != 1)}, none marked code or executable)")
        elif not any(lo <= img.entry_rva < hi for lo, hi in ranges):
            out.append(f"module {m.name} at {_where(img)}: entry point rva 0x{img.entry_rva:X} lies outside its "
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
        raise ImageError(f"{path}: no PE/TE modules: {no_code_hint(root)}")
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
                 root: FlashImage | None = None) -> ScanResult:
    """`scan_image` with the verdict rules: damaged images, parts that could hold code left unread,
    inputs without code and modules in which no code was found are errors (ImageError),
    including damage the scan itself comes upon."""
    root = root if root is not None else read_image(path)
    check_scannable(path, root)
    res = scan_image(path, symbols, jobs, root=root)
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


def scan_paths(paths, symbols_dir: str | None = None, jobs: int = 1) -> list[ScanResult | ScanFailure]:
    """Scan each input in turn: its result, or its failure, in the order given.

    An unusable `symbols_dir` is an error of the whole command (raised before any scan); each
    image gets its own index of the build's symbol files (their matches are per image)."""
    first = BuildSymbols(symbols_dir) if symbols_dir is not None else None  # fails once, up front
    out: list[ScanResult | ScanFailure] = []
    for i, p in enumerate(paths):
        symbols = first if i == 0 or first is None else BuildSymbols(symbols_dir)
        try:
            out.append(scan_checked(p, symbols, jobs))
        except OvmfToolError as e:
            out.append(ScanFailure(p, str(e)))
    return out


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


def default_jobs() -> int:
    """Worker processes to use by default: 1 with the native walk (starting workers costs more
    than it saves: measured 0.35 s vs 0.38 s on OVMF_CODE_4M.fd, 0.47 s vs 0.54 s on a DEBUG
    build), else the CPU count, at most 4."""
    from ovmftool.scan.codemap import native_available

    return 1 if native_available() else max(1, min(4, os.cpu_count() or 1))
