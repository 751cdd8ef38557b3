"""One module's code as the scan's walk finds it — executable ranges, built-in signature matches,
roots and code map — computed once per module image and shared by every command that needs it:
the scan's analysis, the patcher's detours (which must know where branches land), boot-check's
naming of the function it stopped in, and decode.

`module_code(m)` keeps one `ModuleCode` per `PeImage` object for as long as that object lives
(the image a command read once), so a patch that scans and then plans detours in one process
walks each module once. A patched image is a new image: its modules are walked anew.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Sequence

from ovmftool.model.pe import PeImage
from ovmftool.ops.modules import Module
from ovmftool.scan import signatures as sigs
from ovmftool.scan.codemap import CodeMap, discover, pointer_targets


def function_label(start: int) -> str:
    """The name of a function nothing else names: its start RVA, as every output writes it."""
    return f"sub_{start:x}"


def exec_ranges(img: PeImage) -> list[tuple[int, int]]:
    """[start, end) RVAs of the image's executable sections."""
    return [(s.rva, s.rva + (s.virtual_size or s.raw_size)) for s in img.sections if s.executable]


def pointer_roots(img: PeImage, mem: bytes) -> list[int]:
    """Relocated pointers whose value lands inside the module's memory image (codemap.pointer_targets)."""
    return pointer_targets(mem, img.relocations, img.image_base)


class Matches(list[sigs.SignatureMatch]):
    """The module's signature matches (sorted by rva), with the two lookups a site and a caller
    make answered by index instead of a pass over all matches (thousands of routines made a
    scan quadratic)."""

    def __init__(self, matches: Sequence[sigs.SignatureMatch] = (), era: str | None = None) -> None:
        super().__init__(matches)
        self.era = era  # the tree era that names the routines (signatures.Signature.names)
        self._rvas = [mt.rva for mt in self]
        self._longest = max((len(mt.signature.code) for mt in self), default=0)
        self._at: dict[int, str] = {}
        for mt in self:
            self._at.setdefault(mt.rva, mt.signature.names(era)[0])

    def named(self, era: str | None) -> Matches:
        """The same matches with routines named as trees of `era` name them."""
        return self if era == self.era else Matches(self, era)

    def containing(self, rva: int) -> sigs.SignatureMatch | None:
        """The first match (lowest rva) whose routine holds `rva`, or None."""
        i = bisect.bisect_left(self._rvas, rva - self._longest + 1)
        j = bisect.bisect_right(self._rvas, rva)
        return next((mt for mt in self[i:j] if mt.rva <= rva < mt.end), None)

    def routine_at(self, start: int) -> str | None:
        return self._at.get(start)


class ModuleCode:
    """The code of one module (or of a raw 16-bit code blob): what the walk starts from and what
    it found. `code_map(lean=True)` is what a scan needs (counts only when the module has no
    site); `code_map()` is the whole map. Each is walked at most once."""

    def __init__(
        self,
        mem: bytes,
        bits: int,
        ranges: list[tuple[int, int]],
        matches: Matches,
        strong: list[tuple[int, str]],
        weak: list[int],
    ) -> None:
        self.mem, self.bits, self.ranges = mem, bits, ranges
        self.matches, self.strong, self.weak = matches, strong, weak
        self._full: CodeMap | None = None
        self._lean: CodeMap | None = None
        self._tdcall: bool | None = None

    @classmethod
    def of_image(cls, img: PeImage, arch: str) -> ModuleCode:
        mem = img.memory
        ranges = exec_ranges(img)
        matches = Matches(sigs.find(mem, arch, ranges))
        strong = (
            [(mt.rva, "signature") for mt in matches]
            + [(img.entry_rva, "entry")]
            + [(r, "export") for r in sorted(img.exports)]
        )
        return cls(mem, img.bits, ranges, matches, strong, pointer_roots(img, mem))

    @classmethod
    def of_blob(cls, data: bytes, entry: int) -> ModuleCode:
        """A reset-vector blob: real-mode code reached from its entry, nothing else."""
        return cls(data, 16, [(0, len(data))], Matches(), [(entry, "entry")], [])

    def has_tdcall(self) -> bool:
        """Whether the module's code holds TDCALL (a TDX-era tree built it)."""
        if self._tdcall is None:
            self._tdcall = sigs.has_tdcall(self.mem, self.ranges)
        return self._tdcall

    def code_map(self, lean: bool = False) -> CodeMap:
        """The walk's map: whole, or (`lean`) counts only when the module has no site."""
        if self._full is not None:
            return self._full
        if lean and self._lean is not None:
            return self._lean
        cmap = discover(self.mem, self.bits, self.ranges, self.strong, self.weak, lean=lean)
        if cmap.lean:
            self._lean = cmap
        else:
            self._full = cmap
        return cmap

    def function_at(self, rva: int) -> str | None:
        """The routine holding `rva`: a built-in signature's, else the walk's nearest function
        start before it (`sub_…`, as the scan names them); None when `rva` is not in code."""
        mt = self.matches.containing(rva)
        if mt is not None:
            return mt.signature.routine
        if not any(s <= rva < e for s, e in self.ranges):
            return None
        cmap = self.code_map()
        starts = cmap.instruction_starts()
        if not any(a <= rva < a + starts[a] for a in range(max(0, rva - 15), rva + 1) if a in starts):
            return None
        fns = sorted(cmap.functions)
        i = bisect.bisect_right(fns, rva) - 1
        return function_label(fns[i]) if i >= 0 else None


_MEMO: dict[int, ModuleCode] = {}


def module_code(m: Module) -> ModuleCode:
    """The module's `ModuleCode`, made once per image object (kept while the image lives)."""
    img = m.image
    key = id(img)
    mc = _MEMO.get(key)
    if mc is None:
        mc = ModuleCode.of_image(img, m.arch)
        _MEMO[key] = mc
        weakref.finalize(img, _MEMO.pop, key, None)
    return mc
