"""`patch`: remove every string port-I/O instruction from a built image, and prove it.

1. Parse and scan the input (a damaged input is refused).
2. Match each site to a routine shape (`shapes`): IoFifoSev routines are rewritten in place,
   IoFifo.nasm routines by growing their module (`grow`); in a module with a site of no known
   routine, every site is rewritten by a detour (`detour`: the instructions around it move into
   grown space, the string I/O becomes an IN/OUT loop); a site no detour can take is refused,
   with its reason, unless refusals are allowed.
3. Check every rewrite by emulation (`emulate`): original and rewritten routine (a detour: window)
   must agree.
4. Assemble the output (`ops.assemble`): edited modules, re-encoded sections, checksums.
5. Re-parse the output (no damage allowed) and rescan it: no sites may remain but the ones
   explicitly left in place. Modules byte-identical to an input module that scanned clean are
   not scanned again (the scan is a function of a module's bytes); every other one is.

Nothing is written unless every step holds; the caller writes the bytes atomically.

A standalone PE/TE input (`model.binary`) is one module; the output is that module's bytes. One
that carries an Authenticode signature is not rewritten (the copy's signature would not verify).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ovmftool.errors import OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Space, all_problems
from ovmftool.model.parser import parse_flash
from ovmftool.model.pe import parse_image
from ovmftool.ops.assemble import Assembler, Edit, Replace, assemble
from ovmftool.ops.modules import Module, iter_modules
from ovmftool.patch import detour, emulate, grow, shapes
from ovmftool.scan.scanner import Finding, ModuleKey, code_map, scan_blobs, scan_checked, scan_module
from ovmftool.scan.symbols import BuildSymbols


@dataclass
class PlannedRewrite:
    """One site's rewrite."""

    module: str
    guid: str
    arch: str
    volume: str
    function: str | None
    function_rva: int | None
    rva: int
    fd_offset: int | None
    mnemonic: str
    shape: shapes.Shape
    old: str
    new: str
    note: str


@dataclass
class Refusal:
    """A site no rewrite is known for (or whose rewrite failed its check)."""

    module: str
    guid: str
    arch: str
    volume: str
    function: str | None
    rva: int
    fd_offset: int | None
    mnemonic: str
    bytes: str
    shape: shapes.Shape
    reason: str


@dataclass
class ReencodedSection:
    """A compressed section rebuilt around changed code: where it is, its compression, its size."""

    space: str
    offset: int
    compression: str | None
    old_size: int
    new_size: int


@dataclass
class MovedFile:
    """A file laid out anew in its volume (offsets relative to the volume)."""

    file: str
    old_offset: int
    new_offset: int


@dataclass
class RebasedModule:
    """An execute-in-place module rebased because its file moved."""

    module: str
    delta: int


@dataclass
class PatchResult:
    """Everything `patch` decided and proved."""

    input_path: str
    input_sha256: str
    sites_before: int
    rewrites: list[PlannedRewrite]
    refusals: list[Refusal]
    emulated_functions: int = 0
    emulation_runs: int = 0
    output: bytes | None = None
    output_sha256: str | None = None
    sites_after: int | None = None
    modules_rescanned: int = 0
    reencoded: list[ReencodedSection] = field(default_factory=list)
    lzma_effort: str | None = None
    moved: list[MovedFile] = field(default_factory=list)
    rebased: list[RebasedModule] = field(default_factory=list)
    clean_modules: set[bytes] = field(default_factory=set, repr=False)  # digests of input modules without sites

    def as_dict(self) -> dict:
        """The result's fields (report.patch_report adds the document header)."""
        return {
            "input": {"path": self.input_path, "sha256": self.input_sha256},
            "output": {"sha256": self.output_sha256} if self.output_sha256 else None,
            "sites_before": self.sites_before,
            "sites_after": self.sites_after,
            "emulation": {"functions": self.emulated_functions, "runs": self.emulation_runs},
            "modules_rescanned": self.modules_rescanned,
            "reencoded_sections": [asdict(s) for s in self.reencoded],
            "lzma_effort": self.lzma_effort,
            "moved_files": [asdict(m) for m in self.moved],
            "rebased_modules": [asdict(m) for m in self.rebased],
            "rewrites": [asdict(r) for r in self.rewrites],
            "refusals": [asdict(r) for r in self.refusals],
        }


class PatchFailed(OvmfToolError):
    """The patched image did not pass its proof; nothing was written."""


def _refusal(f: Finding, shape: shapes.Shape, reason: str) -> Refusal:
    return Refusal(
        f.module, f.guid, f.arch, f.volume, f.function, f.rva, f.fd_offset, f.mnemonic, f.bytes, shape, reason
    )


def _emulate_module(
    m: Module, plans: list[tuple[Finding, shapes.Rewrite]], emu: emulate.Emulator
) -> tuple[list[str], int]:
    """Emulate each rewritten function of `m` against the original; (problems, functions checked)."""
    orig = bytes(m.image.memory)
    new = bytearray(orig)
    for _f, rw in plans:
        new[rw.rva : rw.rva + len(rw.new)] = rw.new
    problems, runs = [], 0
    done: set[int] = set()
    new_b = bytes(new)  # once: a copy per function made a module of thousands of routines quadratic
    for f, _rw in plans:
        if f.function_rva is None or f.function_rva in done:
            continue
        done.add(f.function_rva)
        diff = emu.compare(orig, new_b, m.image.bits, f.function_rva, f.function or "")
        runs += 1
        problems += [f"{m.name} {f.function}: {d}" for d in diff]
    return problems, runs


def plan_patch(
    path: str,
    root: FlashImage,
    jobs: int = 1,
    symbols_dir: str | None = None,
    early: Callable[[list], None] | None = None,
    detour_all: bool = False,
) -> tuple[PatchResult, list[Edit | Replace]]:
    """Scan, classify and emulate: the rewrites and refusals, and the edits to apply.

    `symbols_dir`: the image's build directory; its symbols name functions and show where each
    module's `.text` ends, so that IoFifo loops can go into the slack after it. `early`: called
    with the edits every rewrite would make, before emulation checks them (`patch` assembles
    them meanwhile); the edits returned equal those when emulation refuses none.

    A module with a site no known shape covers has every site rewritten by a detour (`detour`);
    `detour_all` does that for every module (the tests prove detours on whole real images)."""
    bad = all_problems(root)
    if bad:
        raise OvmfToolError(f"{path}: image is damaged ({bad[0]}); refusing to patch")
    symbols = BuildSymbols(symbols_dir) if symbols_dir else None
    # scan's verdict rules: an input without code (a variable store), parts left unread that could
    # hold code, or a module in which no code was found is an error, never "nothing to patch"
    scan = scan_checked(path, symbols, jobs=jobs, root=root)
    mods = {ModuleKey.of(m): m for m in iter_modules(root)}
    res = PatchResult(path, root.sha256, len(scan.findings), [], [])
    with_sites = {ModuleKey.of(f) for f in scan.findings}
    res.clean_modules = {_digest(m) for k, m in mods.items() if k not in with_sites}
    per_module: dict[tuple, list[tuple[Finding, shapes.Rewrite]]] = {}
    to_grow: dict[tuple, list[Finding]] = {}
    verdicts = {}
    for f in scan.findings:
        m = mods.get(ModuleKey.of(f))
        size = len(bytes.fromhex(f.bytes))
        verdicts[id(f)] = (
            shapes.classify(m.image, f.rva, size)
            if m is not None
            else shapes.Verdict("unknown", None, "not inside a PE/TE module (raw code)")
        )
    to_detour: dict[tuple, list[Finding]] = {}
    detoured = {
        key
        for f in scan.findings
        if (key := ModuleKey.of(f)) in mods and (detour_all or _needs_detour(f, verdicts[id(f)]))
    }
    for f in scan.findings:
        v = verdicts[id(f)]
        if ModuleKey.of(f) in detoured:
            to_detour.setdefault(ModuleKey.of(f), []).append(f)
            continue
        if v.shape == "rep-fifo" and v.reason is None:
            to_grow.setdefault(ModuleKey.of(f), []).append(f)
            continue
        if v.rewrite is None:
            res.refusals.append(_refusal(f, v.shape, v.reason or ""))
            continue
        per_module.setdefault(ModuleKey.of(f), []).append((f, v.rewrite))
    code_end = {ModuleKey.of(s): s.code_end for s in scan.modules}  # from the scan's symbol tables
    grown = [g for key, finds in to_grow.items() if (g := _prepare_grow(mods[key], finds, res, code_end.get(key)))]
    detours = [
        d
        for key, finds in sorted(to_detour.items())
        if (d := _prepare_detours(mods[key], finds, res, code_end.get(key)))
    ]
    placed = {
        key: [(f, rw, mods[key].image.rva_to_offset(rw.rva)) for f, rw in plans] for key, plans in per_module.items()
    }
    if early is not None:
        early(
            [Replace(g.module.image, g.grown.data) for g in grown]
            + [Replace(d.module.image, d.data) for d in detours]
            + [
                Edit(mods[key].image, off, rw.old, rw.new)
                for key, ps in placed.items()
                for _f, rw, off in ps
                if off is not None
            ]
        )
    edits: list[Edit | Replace] = []
    emu = emulate.Emulator()
    for g in grown:
        if _verify_grow(g, res, emu):
            edits.append(Replace(g.module.image, g.grown.data))
    memo: dict[tuple, list[str]] = {}
    for d in detours:
        if _verify_detours(d, res, memo):
            edits.append(Replace(d.module.image, d.data))
    for key, plans in per_module.items():
        m = mods[key]
        problems, checked = _emulate_module(m, plans, emu)
        res.emulated_functions += checked
        if problems:
            for f, rw in plans:
                res.refusals.append(_refusal(f, rw.shape, "emulation: " + "; ".join(problems[:3])))
            continue
        for f, rw, off in placed[key]:
            if off is None:
                res.refusals.append(_refusal(f, rw.shape, "site has no file bytes"))
                continue
            edits.append(Edit(m.image, off, rw.old, rw.new))
            res.rewrites.append(
                PlannedRewrite(
                    f.module,
                    f.guid,
                    f.arch,
                    f.volume,
                    f.function,
                    f.function_rva,
                    f.rva,
                    f.fd_offset,
                    f.mnemonic,
                    rw.shape,
                    rw.old.hex(),
                    rw.new.hex(),
                    rw.note,
                )
            )
    res.emulation_runs += emu.runs  # the detours counted theirs above
    res.rewrites.sort(key=lambda r: (r.volume, r.module, r.guid, r.rva))
    res.refusals.sort(key=lambda r: (r.volume, r.module, r.guid, r.rva))
    return res, edits


class _Speculation:
    """The assembly of the edits planned before emulation, run in a thread while emulation checks
    them (the LZMA encoder, most of the assembly's time, releases the GIL); used only when the
    edits that passed are exactly those, else the edits are assembled again."""

    def __init__(self, root: FlashImage) -> None:
        self.root = root
        self.edits: list | None = None
        self.thread: threading.Thread | None = None
        self.outcome: tuple | None = None

    def start(self, edits: list) -> None:
        if not edits:
            return
        self.edits = edits

        def run() -> None:
            try:
                self.outcome = (True, assemble(self.root, edits))
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread by take()
                self.outcome = (False, e)

        self.thread = threading.Thread(target=run, name="ovmftool-assemble", daemon=True)
        self.thread.start()

    def take(self, edits: list) -> tuple[bytes, Assembler]:
        if self.thread is not None and edits == self.edits:
            self.thread.join()
            ok, value = self.outcome
            if not ok:
                raise value
            return value
        return assemble(self.root, edits)


_DIR_SECURITY = 4  # the Authenticode certificate table (a file offset, not an RVA)


def _check_unsigned(path: str, root: BinaryFile) -> None:
    """A standalone binary carrying an Authenticode signature is refused: the patched copy's
    signature would no longer verify, and Secure Boot would refuse to load it."""
    off, size = root.image.directories.get(_DIR_SECURITY, (0, 0))
    if off and size:
        raise OvmfToolError(
            f"{path} carries an Authenticode signature (certificate table at file offset 0x{off:X}, "
            f"{size} bytes) that a patched copy would break; remove the signature (e.g. "
            "`sbattach --remove`) and patch the unsigned binary"
        )


def patch(
    path: str,
    root: FlashImage,
    jobs: int = 1,
    allow_unknown: bool = False,
    dry_run: bool = False,
    symbols_dir: str | None = None,
    detour_all: bool = False,
) -> PatchResult:
    """Plan, assemble and prove. `result.output` holds the bytes to write (None for a dry run
    or when sites were refused and not allowed)."""
    spec = None if dry_run else _Speculation(root)
    res, edits = plan_patch(path, root, jobs, symbols_dir, early=spec.start if spec else None, detour_all=detour_all)
    if dry_run or (res.refusals and not allow_unknown):
        return res
    if edits and isinstance(root, BinaryFile):
        _check_unsigned(path, root)
    out, asm = spec.take(edits)
    res.lzma_effort = asm.effort if asm.reencoded else None
    res.reencoded = [ReencodedSection(s.space.label, s.offset, s.compression, a, b) for s, a, b in asm.reencoded]
    res.moved = [MovedFile(n, a, b) for n, a, b in asm.moved]
    res.rebased = [RebasedModule(n, d) for n, d in asm.rebased]
    new_root = parse_flash(out, path, known=asm.proven)  # the re-encoded streams were proven as written
    bad = all_problems(new_root)
    if bad:
        raise PatchFailed(f"the assembled image does not parse cleanly ({bad[0]}); nothing written")
    res.sites_after, res.modules_rescanned = _rescan(res.clean_modules, new_root)
    if res.sites_after != len(res.refusals):
        raise PatchFailed(
            f"rescan of the patched image found {res.sites_after} string I/O sites, expected "
            f"{len(res.refusals)}; nothing written"
        )
    res.output = out
    res.output_sha256 = hashlib.sha256(out).hexdigest()
    return res


def _needs_detour(f: Finding, v: shapes.Verdict) -> bool:
    """A site no tidy rewrite covers: no known shape, or an IoFifo.nasm-like REP routine no
    signature names."""
    return v.shape == "unknown" or (v.shape == "rep-fifo" and _iofifo_routine(f) is None)


@dataclass
class _Detours:
    """A module grown with a detour for each of its sites, before emulation checks them."""

    module: Module
    finds: list[Finding]
    planned: list[tuple[Finding, detour.Window, int, bytes, bytes]]  # finding, window, target, old, new
    data: bytes
    placement: str


def _prepare_detours(m: Module, finds: list[Finding], res: PatchResult, code_end: int | None) -> _Detours | None:
    """Plan a detour for each site of `m` and grow the module with their code; the sites that
    cannot have one are refused, each with its reason."""
    img = m.image
    by_rva = {f.rva: f for f in finds}
    windows, refused = detour.plan_module(img, code_map(m), sorted(by_rva), img.bits)
    res.refusals.extend(_refusal(by_rva[rva], "detour", why) for rva, why in sorted(refused.items()))
    if not windows:
        return None
    make = detour.build(windows, img.bits)
    targets: list[int] = []

    def recorded(start: int):
        code, patches = make(start)
        targets[:] = [int.from_bytes(new[1:5], "little", signed=True) + rva + 5 for rva, new in patches]
        return code, patches

    try:
        data, placement = grow.add_code(img, recorded, code_end)
    except grow.CannotGrow as e:
        res.refusals.extend(_refusal(by_rva[s], "detour", f"cannot grow the module: {e}") for s, _w in windows)
        return None
    planned = [
        (by_rva[s], w, t, bytes(img.memory[w.rva : w.end]), detour.site_bytes(w, t))
        for (s, w), t in zip(windows, targets)
    ]
    return _Detours(m, finds, planned, data, placement)


def _verify_detours(d: _Detours, res: PatchResult, memo: dict) -> bool:
    """Prove each detour against its window by emulation (in canonical places: the same window
    in another module is proved once); the module's rewrites, or refusals for all its sites."""
    bits = d.module.image.bits
    problems = []
    for f, w, _t, old, _new in d.planned:
        key = (bits, old, w.site)
        if key not in memo:
            k = emulate._W_SITE - w.rva
            canon = detour.detour_code(w, bits, emulate._W_NEW - k)
            memo[key] = emulate.compare_window(
                old, detour.site_bytes(w, emulate._W_NEW - k), canon, bits, w.direction, w.rep
            )
            res.emulated_functions += 1
            res.emulation_runs += 2 * len(emulate.WINDOW_COUNTS if w.rep else (1,)) * 2
        problems += [f"{f.module} rva 0x{f.rva:X}: {p}" for p in memo[key]]
    if problems:
        res.refusals.extend(_refusal(f, "detour", "emulation: " + "; ".join(problems[:3])) for f, *_ in d.planned)
        return False
    for f, w, t, old, new in d.planned:
        res.rewrites.append(
            PlannedRewrite(
                f.module,
                f.guid,
                f.arch,
                f.volume,
                f.function,
                f.function_rva,
                f.rva,
                f.fd_offset,
                f.mnemonic,
                "detour",
                old.hex(),
                new.hex(),
                f"{w.size} bytes from rva 0x{w.rva:X} jump to IN/OUT code at rva 0x{t:X} ({d.placement}), which "
                "runs the displaced instructions and jumps back",
            )
        )
    return True


def _iofifo_routine(f: Finding) -> grow.Routine | None:
    """The IoFifo.nasm routine holding the site, as the scan's signature match found it."""
    sig = f.signature
    io = emulate.routine_io(sig.routine) if sig else None
    if sig is None or io is None or not sig.source.endswith("IoFifo.nasm"):
        return None
    if not sig.rva <= f.rva < sig.rva + sig.size:
        return None
    return grow.Routine(sig.rva, sig.size, sig.routine, io[0], io[1])


@dataclass
class _Grow:
    """A module grown with IN/OUT loops for its IoFifo.nasm routines, before emulation checks it."""

    module: Module
    finds: list[Finding]
    owner: dict[int, grow.Routine]  # id(finding) -> its routine
    routines: list[grow.Routine]
    grown: grow.Grown


def _prepare_grow(m: Module, finds: list[Finding], res: PatchResult, code_end: int | None) -> _Grow | None:
    """Grow `m` for the routines holding `finds` (in its slack after `code_end`, where the build's
    .text ends by its symbols, when there is room); sites it cannot take are refused."""
    owner = {id(f): r for f in finds if (r := _iofifo_routine(f)) is not None}
    res.refusals.extend(
        _refusal(f, "rep-fifo", "no IoFifo.nasm signature matches the routine") for f in finds if id(f) not in owner
    )
    finds = [f for f in finds if id(f) in owner]
    if not finds:
        return None
    routines = sorted({owner[id(f)] for f in finds}, key=lambda r: r.rva)
    try:
        g = grow.grow(m.image, m.arch, routines, code_end)
    except grow.CannotGrow as e:
        res.refusals.extend(_refusal(f, "rep-fifo", f"cannot grow the module: {e}") for f in finds)
        return None
    return _Grow(m, finds, owner, routines, g)


def _verify_grow(p: _Grow, res: PatchResult, emu: emulate.Emulator) -> bool:
    """Prove each redirected routine of a grown module by emulation; its rewrites, or refusals."""
    m, g = p.module, p.grown
    new_img = parse_image(Space(g.data, None, "grown"), 0, len(g.data), None)
    orig, new = bytes(m.image.memory), bytes(new_img.memory)
    entries = {rva: (old, new_b, target) for rva, old, new_b, target in g.entries}
    problems = []
    for rt in p.routines:
        loop_len = len(grow.loop_code(m.arch, rt.direction, rt.width))
        problems += emu.compare_redirected(
            orig, new, m.image.bits, rt.rva, rt.length, entries[rt.rva][2], loop_len, rt.name
        )
        res.emulated_functions += 1
    if problems:
        res.refusals.extend(_refusal(f, "rep-fifo", "emulation: " + "; ".join(problems[:3])) for f in p.finds)
        return False
    for f in p.finds:
        rt = p.owner[id(f)]
        old, new_b, target = entries[rt.rva]
        res.rewrites.append(
            PlannedRewrite(
                f.module,
                f.guid,
                f.arch,
                f.volume,
                f.function,
                f.function_rva,
                rt.rva,
                f.fd_offset,
                f.mnemonic,
                "rep-fifo",
                old.hex(),
                new_b.hex(),
                f"entry jumps to an IN/OUT loop at rva 0x{target:X} ({g.placement}); "
                + (
                    "in the slack after the build's .text, the module keeps its size"
                    if g.placement == "slack"
                    else f"the module grows by {len(g.data) - m.image.size} bytes"
                ),
            )
        )
    return True


def _digest(m: Module) -> bytes:
    return hashlib.sha1(m.arch.encode() + m.image.data).digest()


def _rescan(clean: set[bytes], new: FlashImage) -> tuple[int, int]:
    """(sites, modules scanned) in `new`; modules whose bytes equal an input module that
    scanned clean count 0 without a second scan."""
    sites = scanned = 0
    for m in iter_modules(new):
        if _digest(m) in clean:
            continue
        scanned += 1
        sites += len(scan_module(m).findings)
    sites += len(scan_blobs(new))
    return sites, scanned
