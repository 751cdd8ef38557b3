"""One module's analysis: discover its code (codemap), match built-in signatures, name the
containing function (symbols > signature > analysis), list direct callers, and decide whether
the function is reachable by direct calls from the entry point; then place it in the image
(`Finding`s). Also the tree era and the raw 16-bit code blobs."""

from __future__ import annotations

import bisect
import copy
import time
from dataclasses import dataclass, replace

from ovmftool.errors import LimitExceeded, OvmfToolError
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Node
from ovmftool.model.pe import PeImage
from ovmftool.ops.modules import Module, iter_code_blobs
from ovmftool.ops.tree import label as node_label
from ovmftool.scan import signatures as sigs
from ovmftool.scan.codemap import CodeMap, CodeMapLimit, Site
from ovmftool.scan.disasm import string_io
from ovmftool.scan.modulecode import Matches, ModuleCode, exec_ranges, function_label, module_code
from ovmftool.scan.records import (
    Caller,
    FdRegion,
    Finding,
    FunctionSource,
    ModuleAnalysis,
    ModuleSummary,
    SiteFacts,
    SiteSignature,
)
from ovmftool.scan.symbols import BuildSymbols, SymbolTable


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
    return place_analysis(m, analyse_checked(m, symbols, era))


def analyse_checked(m: Module, symbols: BuildSymbols | None, era: str | None) -> ModuleAnalysis:
    """`analyse_module` within the walk's caps (LimitExceeded naming the module otherwise)."""
    img = m.image
    place = img.place
    if img.mem_size > MAX_SCAN_MEMORY:
        raise LimitExceeded(
            f"module {m.name} is 0x{img.mem_size:X} bytes in memory, more than the scanner walks "
            f"(0x{MAX_SCAN_MEMORY:X})",
            place,
        )
    t0 = time.perf_counter()
    try:
        return replace(analyse_module(m, symbols, era), seconds=time.perf_counter() - t0)
    except CodeMapLimit as e:
        raise LimitExceeded(f"module {m.name}: {e}", place) from None


def analyse_module(m: Module, symbols: BuildSymbols | None, era: str | None) -> ModuleAnalysis:
    """The module's analysis (`ModuleAnalysis`): a function of its bytes, `era` and `symbols`
    (looked up by its name, GUID and arch) alone."""
    img = m.image
    mc = module_code(m)
    if era is None and m.arch == "X64" and mc.has_tdcall():
        era = sigs.TDX
    matches = mc.matches.named(era)
    cmap = mc.code_map(lean=True)  # lean: only counts without sites
    text = next((s for s in img.sections if s.name == ".text"), None)
    table: SymbolTable | None = None
    if symbols is not None:
        table = symbols.lookup(m.name, m.guid, m.arch, text.rva if text else None, img.entry_rva)
    reach = cmap.reachable_from(img.entry_rva) if cmap.sites else set()
    starts = _certain_starts(cmap, mc.strong) if cmap.sites else []
    sites = []
    seen = set()
    for site in sorted(cmap.sites, key=lambda s: s.rva):
        if site.rva in seen:
            continue
        seen.add(site.rva)
        sites.append(_site_facts(mc.mem, site, cmap, matches, table, reach, starts))
    return ModuleAnalysis(
        cmap.code_bytes, cmap.function_count, sites, table.source if table else None, table.code_end if table else None
    )


def code_map(m: Module) -> CodeMap:
    """The module's whole code map (every instruction start, function, call and tail jump), as
    the scan's walk finds it: for the patcher's detours, which must know where branches land."""
    return module_code(m).code_map()


def place_analysis(m: Module, a: ModuleAnalysis) -> _ModuleScan:
    """The module's summary and findings: its analysis placed where the module is in the image."""
    img = m.image
    findings = [_finding(m, img, s) for s in a.sites]
    summary = ModuleSummary(
        m.name,
        m.guid,
        m.file_type,
        m.arch,
        m.volume,
        m.fd_offset,
        a.code_bytes,
        a.functions,
        len(findings),
        a.symbols,
        a.code_end,
    )
    return _ModuleScan(summary, findings)


def _name_fn(start: int, matches: Matches, table: SymbolTable | None) -> str:
    if table is not None:
        n = table.name_of(start)
        if n:
            return n
    return matches.routine_at(start) or function_label(start)


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


def _callers(cfn: int, cmap: CodeMap, starts: list[int], matches: Matches, table: SymbolTable | None) -> list[Caller]:
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


def _fd_region(node: Node, fd_offset: int | None, length: int) -> FdRegion | None:
    """The stretch of the file that holds an instruction as stored: the instruction itself
    when its bytes are in the file as is, else the nearest enclosing node stored as is (the
    compressed section whose decoding holds it)."""
    if fd_offset is not None:
        return FdRegion(fd_offset, length, "instruction")
    for n in (node, *node.ancestors()):
        if n.abs_offset is not None:
            return FdRegion(n.abs_offset, n.size, node_label(n))
    return None


def _site_facts(
    mem: bytes,
    site: Site,
    cmap: CodeMap,
    matches: Matches,
    table: SymbolTable | None,
    reach: set[int],
    starts: list[int],
) -> SiteFacts:
    raw = mem[site.rva : site.rva + site.size]
    fn_rva: int | None = site.function
    fn_name: str | None = None
    source: FunctionSource | None = None
    sig_info = None
    match = matches.containing(site.rva)
    if match is not None:
        s = match.signature
        name, others = s.names(matches.era)
        sig_info = SiteSignature(
            name, s.library, s.source, list(others), list(s.trees), match.rva, match.end - match.rva
        )
    hit = table.function_at(site.rva) if table is not None else None
    if hit is not None:
        fn_rva, fn_name, source = hit[0], hit[1], "symbols"
    elif match is not None:
        assert sig_info is not None  # made above for every match
        fn_rva, fn_name, source = match.rva, sig_info.routine, "signature"
    elif fn_rva is not None:
        fn_name, source = function_label(fn_rva), "analysis"
    cfn = site.function  # the code map's function (what callers and reachability refer to)
    callers = _callers(cfn, cmap, starts, matches, table)
    return SiteFacts(
        site.rva, site.size, site.mnemonic, raw.hex(), fn_name, fn_rva, source, sig_info, callers, cfn in reach
    )


def _finding(m: Module, img: PeImage, s: SiteFacts) -> Finding:
    sio = string_io(s.mnemonic)
    assert sio is not None  # a site is a string I/O instruction (the walk's, or checked by the cache's codec)
    off = img.rva_to_offset(s.rva)
    fd = img.abs_offset + off if (img.abs_offset is not None and off is not None) else None
    sec = img.section_at(s.rva)
    return Finding(
        module=m.name,
        guid=m.guid,
        file_type=m.file_type,
        arch=m.arch,
        volume=m.volume,
        fd_offset=fd,
        container_offset=img.offset + (off or 0),
        rva=s.rva,
        pe_section=sec.name if sec else None,
        bytes=s.bytes,
        mnemonic=s.mnemonic,
        width=sio.width,
        direction=sio.direction,
        rep=sio.rep,
        function=s.function,
        function_rva=s.function_rva,
        function_source=s.function_source,
        signature=copy.deepcopy(s.signature),
        callers=list(s.callers),
        reachable=s.reachable,
        fd_region=_fd_region(img, fd, s.size),
    )


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


def scan_blobs(root: FlashImage) -> list[Finding]:
    """The reset vector: recursive descent in real mode from its 16-byte entry."""
    out = []
    for b in iter_code_blobs(root):
        data = b.data
        cmap = ModuleCode.of_blob(data, b.entry_offset).code_map()
        for site in sorted(cmap.sites, key=lambda s: s.rva):
            sio = string_io(site.mnemonic)
            assert sio is not None  # the walk's sites are string I/O instructions
            f = b.parent
            fd = (b.abs_offset + site.rva) if b.abs_offset is not None else None
            out.append(
                Finding(
                    module="ResetVector",
                    guid=getattr(f, "guid", ""),
                    file_type=getattr(f, "type_name", "RAW"),
                    arch="IA32",
                    volume="",
                    fd_offset=fd,
                    container_offset=b.offset + site.rva,
                    rva=site.rva,
                    pe_section=None,
                    bytes=data[site.rva : site.rva + site.size].hex(),
                    mnemonic=site.mnemonic,
                    width=sio.width,
                    direction=sio.direction,
                    rep=sio.rep,
                    function=function_label(site.function),
                    function_rva=site.function,
                    function_source="analysis",
                    signature=None,
                    callers=[],
                    reachable=True,
                    fd_region=_fd_region(b, fd, site.size),
                )
            )
    return out
