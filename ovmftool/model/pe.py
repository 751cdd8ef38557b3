"""PE32/PE32+ and TE images as EDK II's GenFw writes them: headers, sections, base relocations,
the debug directory (CodeView path naming the build directory and INF), exports.

Only headers are read at parse time; relocations, exports and the memory image are decoded
lazily on first use. What the headers declare is bounded before anything is sized from it: the
memory image by a multiple of the file bytes (`Limits.image_memory_cap`; larger is damage), the
section count by the PE/COFF limit, export counts by the 16-bit ordinal space, names and paths
by a length; relocations are stored compactly (9 bytes an entry), so no header field makes a
small image cost much more memory or time than its bytes.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from ovmftool.errors import printable
from ovmftool.model import structs as S
from ovmftool.model.limits import Limits
from ovmftool.model.node import Node, Space

MAX_SECTIONS = 96  # the PE/COFF loader limit (EDK II images have 3 to 6)
MAX_EXPORTS = 0x10000  # export ordinals are 16-bit
MAX_NAME = 256  # bytes read for an export name
MAX_PATH = 1024  # bytes read for a CodeView path
MAX_DEBUG_ENTRIES = 16  # debug directory entries looked at (GenFw writes one or two)


@dataclass(frozen=True)
class PeSection:
    """One section header of a PE/TE image. `raw_offset` is relative to the image's bytes."""

    name: str
    rva: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int

    @property
    def executable(self) -> bool:
        """Contains code or is mapped executable."""
        return bool(self.characteristics & (S.IMAGE_SCN_CNT_CODE | S.IMAGE_SCN_MEM_EXECUTE))


class Relocations:
    """Base relocations as (rva, type) pairs in table order, ABSOLUTE padding dropped. Iterates
    and indexes like a list of tuples; kept as arrays (a table of millions of entries would
    otherwise cost a hundred bytes an entry)."""

    __slots__ = ("rvas", "types", "_keys")

    def __init__(self) -> None:
        self.rvas = array("Q")
        self.types = bytearray()
        self._keys: array[int] | None = None

    def add(self, rva: int, rtype: int) -> None:
        self.rvas.append(rva)
        self.types.append(rtype)

    def __len__(self) -> int:
        return len(self.rvas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.rvas, self.types)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return self.rvas[i], self.types[i]

    def __eq__(self, other: object) -> bool:
        try:
            return bool(list(self) == list(other))  # type: ignore[call-overload]
        except TypeError:
            return NotImplemented

    def __repr__(self) -> str:
        return f"<Relocations {len(self)}>"

    def overlaps(self, lo: int, hi: int) -> bool:
        """True when a relocation patches any byte of [lo, hi) (RVAs)."""
        if self._keys is None:
            self._keys = array("Q", sorted((r << 4) | t for r, t in self))
        keys = self._keys
        i = bisect.bisect_left(keys, max(lo - 7, 0) << 4)
        while i < len(keys) and keys[i] >> 4 < hi:
            rva, t = keys[i] >> 4, keys[i] & 0xF
            width = 8 if t == S.REL_BASED_DIR64 else 4 if t == S.REL_BASED_HIGHLOW else 2
            if rva + width > lo:
                return True
            i += 1
        return False


@dataclass(eq=False, repr=False)
class PeImage(Node):
    """A PE32/PE32+ or TE image inside a PE32/TE/PIC section."""

    format: str = ""  # PE32, PE32+, TE
    machine_code: int = 0
    image_base: int = 0
    entry_rva: int = 0
    size_of_image: int = 0
    section_alignment: int = 0
    file_alignment: int = 0
    subsystem: int = 0
    size_of_headers: int = 0
    te_adjust: int = 0  # TE: StrippedSize - sizeof(TE header); file offset = rva - te_adjust
    sections: list[PeSection] = field(default_factory=list)
    directories: dict[int, tuple[int, int]] = field(default_factory=dict)
    mem_size: int = 0  # bytes of the memory image: SizeOfImage and section extents, capped (parse_image)

    kind = "image"

    @property
    def machine(self) -> str:
        """IA32, X64, ... from the COFF/TE machine field."""
        return S.MACHINES.get(self.machine_code, f"0x{self.machine_code:04X}")

    @property
    def bits(self) -> int:
        """Code width the image runs in."""
        return 64 if self.machine == "X64" else 32

    @property
    def raw(self) -> bytes:
        """The image file bytes."""
        return self.data

    def rva_to_offset(self, rva: int) -> int | None:
        """Offset within the image bytes of the byte at `rva`, or None if it has no file data."""
        for s in self.sections:
            if s.rva <= rva < s.rva + max(s.raw_size, s.virtual_size):
                d = rva - s.rva
                off = s.raw_offset + d
                return off if d < s.raw_size and 0 <= off < self.size else None
        if self.format == "TE":
            off = rva - self.te_adjust
            return off if 0 <= off < min(S.TE_HEADER.size + S.PE_SECTION.size * len(self.sections), self.size) else None
        return rva if 0 <= rva < min(self.size_of_headers, self.size) else None

    def section_at(self, rva: int) -> PeSection | None:
        """The section that holds `rva` in memory."""
        for s in self.sections:
            if s.rva <= rva < s.rva + max(s.virtual_size, s.raw_size):
                return s
        return None

    @cached_property
    def memory(self) -> bytes:
        """The image as loaded: sections placed at their RVAs, zero-filled, base not applied.
        `mem_size` bytes: what the headers declare, capped when that is implausible (damage)."""
        raw = memoryview(self.raw)
        size = self.mem_size
        buf = bytearray(size)
        if self.format != "TE":
            n = min(self.size_of_headers, size, len(raw))
            buf[:n] = raw[:n]
        for s in self.sections:
            if s.raw_offset < 0 or s.rva >= size:
                continue
            n = min(s.raw_size, s.virtual_size or s.raw_size, size - s.rva)
            chunk = raw[s.raw_offset : s.raw_offset + n]
            buf[s.rva : s.rva + len(chunk)] = chunk
        return bytes(buf)

    def relocation_table(self) -> tuple[int, int]:
        """(rva, bytes) of the base relocation table, clipped to the memory image."""
        rva, size = self.directories.get(S.DIR_BASERELOC, (0, 0))
        if not rva or not size or rva >= self.mem_size:
            return rva, 0
        return rva, min(size, self.mem_size - rva)

    LAZY = ("relocations", "exports", "debug_path")  # read on first use; damage there is recorded then

    def read_lazy(self) -> None:
        """Read now what the image reads on first use (`LAZY`), recording any damage found there."""
        for name in self.LAZY:
            getattr(self, name)

    @cached_property
    def relocations(self) -> Relocations:
        """Base relocations as (rva, type), ABSOLUTE padding entries dropped."""
        out = Relocations()
        rva, size = self.relocation_table()
        if not rva or not size:
            return out
        mem = self.memory
        p, end = rva, rva + size
        add_rva, add_type = out.rvas.append, out.types.append
        hsize = S.BASE_RELOCATION_BLOCK.size
        while p + hsize <= end:
            page, bsize = S.BASE_RELOCATION_BLOCK.unpack_from(mem, p)
            if bsize < hsize or p + bsize > end:
                self.damage(f"base relocation block size 0x{bsize:X} is out of range", self.offset)
                break
            n = (bsize - hsize) // 2
            for e in struct.unpack_from(f"<{n}H", mem, p + hsize):
                t = e >> 12
                if t != S.REL_BASED_ABSOLUTE:
                    add_rva(page + (e & 0xFFF))
                    add_type(t)
            p += bsize
        return out

    def relocated_in(self, lo: int, hi: int) -> bool:
        """True when a base relocation covers any byte of [lo, hi) (RVAs)."""
        return self.relocations.overlaps(lo, hi)

    @cached_property
    def debug_path(self) -> str | None:
        """The CodeView PDB/DLL path from the debug directory (names the build dir and INF)."""
        rva, size = self.directories.get(S.DIR_DEBUG, (0, 0))
        if not rva or size < S.DEBUG_DIRECTORY.size:
            return None
        mem = self.memory
        for i in range(min(size // S.DEBUG_DIRECTORY.size, MAX_DEBUG_ENTRIES)):
            q = rva + i * S.DEBUG_DIRECTORY.size
            if q + S.DEBUG_DIRECTORY.size > len(mem):
                return None
            ent = S.DEBUG_DIRECTORY.unpack_from(mem, q)
            dtype, dsize, daddr = ent[4], ent[5], ent[6]
            if dtype != S.IMAGE_DEBUG_TYPE_CODEVIEW or not daddr or daddr + dsize > len(mem):
                continue
            sig = mem[daddr : daddr + 4]
            skip = S.CODEVIEW_PATH_OFFSETS.get(sig)
            if skip is None or dsize < skip:
                continue
            cv = mem[daddr + skip : daddr + min(dsize, skip + MAX_PATH)]
            return printable(cv.split(b"\0", 1)[0].decode("utf-8", errors="replace"))
        return None

    @cached_property
    def exports(self) -> dict[int, str]:
        """Exported functions: rva -> name (EDK II images rarely have any)."""
        rva, size = self.directories.get(S.DIR_EXPORT, (0, 0))
        mem = self.memory
        if not rva or rva + S.EXPORT_DIRECTORY.size > len(mem):
            return {}
        *_, n_funcs, n_names, a_funcs, a_names, a_ords = S.EXPORT_DIRECTORY.unpack_from(mem, rva)
        out: dict[int, str] = {}
        if n_funcs > MAX_EXPORTS or n_names > MAX_EXPORTS:
            return {}  # not a table an image can have: no ordinal reaches past 0xFFFF
        try:
            funcs = struct.unpack_from(f"<{n_funcs}I", mem, a_funcs)
            names = struct.unpack_from(f"<{n_names}I", mem, a_names)
            ords = struct.unpack_from(f"<{n_names}H", mem, a_ords)
        except struct.error:
            return {}
        for nrva, o in zip(names, ords):
            if o < len(funcs) and nrva < len(mem):
                end = mem.find(b"\0", nrva, nrva + MAX_NAME)
                out[funcs[o]] = printable(mem[nrva : end if end >= 0 else nrva + MAX_NAME].decode("ascii", "replace"))
        return out


def parse_image(space: Space, off: int, end: int, parent: Node | None, limits: Limits | None = None) -> PeImage:
    """Parse the PE or TE headers of the image at `space.data[off:end]`.

    The memory image's size is decided here: what SizeOfImage and the section headers declare,
    capped at `limits.image_memory_cap` of the file bytes (more is damage, not an allocation).
    With `limits`, the image's memory and relocation table are charged against the parse's
    totals (LimitExceeded when over)."""
    img = PeImage(space, off, end - off, parent)
    raw = space.data[off:end]
    try:
        if raw[:2] == S.TE_MAGIC:
            _parse_te(img, raw)
        elif raw[:2] == S.DOS_MAGIC:
            _parse_pe(img, raw)
        else:
            img.damage("image has neither an MZ nor a VZ signature")
    except struct.error:
        img.damage("image headers are truncated")
    for s in img.sections:
        if s.raw_offset < 0:
            img.damage(f"section {s.name} raw data starts before the image")
        elif s.raw_offset + s.raw_size > len(raw):
            img.damage(f"section {s.name} raw data runs past the end of the image")
    extent = max([img.size_of_image] + [s.rva + max(s.virtual_size, s.raw_size) for s in img.sections])
    cap = (limits or Limits()).image_memory_cap(len(raw))
    if extent > cap:
        img.damage(
            f"image declares 0x{extent:X} bytes of memory (SizeOfImage, section extents), implausible "
            f"for 0x{len(raw):X} bytes of image; only 0x{cap:X} are loaded"
        )
    img.mem_size = min(extent, cap)
    if limits is not None:
        limits.charge_image(img.mem_size, img.relocation_table()[1], space.place(off))
    return img


_PE_FORMATS = {S.OPT_MAGIC_PE32: "PE32", S.OPT_MAGIC_PE32_PLUS: "PE32+"}


def optional_header(raw: bytes) -> tuple[int, int]:
    """(offset of the COFF header, offset of the optional header) of the PE image `raw`."""
    coff = S.DOS_E_LFANEW.get(raw) + len(S.PE_MAGIC)
    return coff, coff + S.COFF_HEADER.size


def _fields(raw: bytes, base: int, *fields: S.Field) -> tuple[int, ...]:
    """Several fields of one header, all read before any is used (a cut header yields none)."""
    return tuple(f.get(raw, base) for f in fields)


def _parse_pe(img: PeImage, raw: bytes) -> None:
    lfanew = S.DOS_E_LFANEW.get(raw)
    if raw[lfanew : lfanew + len(S.PE_MAGIC)] != S.PE_MAGIC:
        img.damage(f"no PE signature at e_lfanew 0x{lfanew:X}")
        return
    coff, opt = optional_header(raw)
    machine, nsec, _td, _ps, _ns, optsize, _ch = S.COFF_HEADER.unpack_from(raw, coff)
    magic = S.OPT_MAGIC.get(raw, opt)
    img.machine_code = machine
    img.entry_rva = S.OPT_ADDRESS_OF_ENTRY_POINT.get(raw, opt)
    fmt = _PE_FORMATS.get(magic)
    if fmt is None:
        img.damage(f"unknown optional header magic 0x{magic:X}")
        return
    img.format = fmt
    img.image_base = S.OPT_IMAGE_BASE[fmt].get(raw, opt)
    img.section_alignment, img.file_alignment = _fields(raw, opt, S.OPT_SECTION_ALIGNMENT, S.OPT_FILE_ALIGNMENT)
    img.size_of_image, img.size_of_headers = _fields(raw, opt, S.OPT_SIZE_OF_IMAGE, S.OPT_SIZE_OF_HEADERS)
    img.subsystem = S.OPT_SUBSYSTEM.get(raw, opt)
    ndir = S.OPT_NUMBER_OF_RVA_AND_SIZES[fmt].get(raw, opt)
    dirs = opt + S.OPT_NUMBER_OF_RVA_AND_SIZES[fmt].end
    for i in range(min(ndir, S.MAX_DATA_DIRS)):
        va, sz = S.DATA_DIR.unpack_from(raw, dirs + S.DATA_DIR.size * i)
        if va or sz:
            img.directories[i] = (va, sz)
    sec_off = opt + optsize
    for i in range(_section_count(img, nsec)):
        name, vsize, va, rsize, rptr, *_rest, chars = S.PE_SECTION.unpack_from(raw, sec_off + S.PE_SECTION.size * i)
        img.sections.append(PeSection(_name(name), va, vsize, rptr, rsize, chars))


def _name(raw: bytes) -> str:
    return printable(raw.rstrip(b"\0").decode("ascii", "replace"))


def _section_count(img: PeImage, nsec: int) -> int:
    if nsec > MAX_SECTIONS:
        img.damage(f"{nsec} sections, more than the {MAX_SECTIONS} PE/COFF allows; the first {MAX_SECTIONS} are read")
        return MAX_SECTIONS
    return nsec


def _parse_te(img: PeImage, raw: bytes) -> None:
    (_sig, machine, nsec, subsys, stripped, entry, _boc, base, rel_va, rel_sz, dbg_va, dbg_sz) = (
        S.TE_HEADER.unpack_from(raw, 0)
    )
    img.format = "TE"
    img.machine_code, img.subsystem, img.entry_rva, img.image_base = machine, subsys, entry, base
    img.te_adjust = stripped - S.TE_HEADER.size
    if rel_va or rel_sz:
        img.directories[S.DIR_BASERELOC] = (rel_va, rel_sz)
    if dbg_va or dbg_sz:
        img.directories[S.DIR_DEBUG] = (dbg_va, dbg_sz)
    img.size_of_headers = stripped
    top = 0
    for i in range(_section_count(img, nsec)):
        hdr = S.TE_HEADER.size + S.PE_SECTION.size * i
        name, vsize, va, rsize, rptr, *_rest, chars = S.PE_SECTION.unpack_from(raw, hdr)
        sec = PeSection(_name(name), va, vsize, rptr - img.te_adjust, rsize, chars)
        img.sections.append(sec)
        top = max(top, va + max(vsize, rsize))
    img.size_of_image = top
