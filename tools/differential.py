#!/usr/bin/env python3
"""Differential parsing (issue #23): ovmftool's firmware parser against two independent ones.

    python3 -m tools.differential                 # every corpus image and every stored build
    python3 -m tools.differential IMAGE...        # the given images
    python3 -m tools.differential --json OUT      # also write every item count and difference
    python3 -m tools.differential -q              # list only the unexplained differences

The other parsers:
  * UEFIExtract (UEFITool NE, Debian package uefitool-cli 0.28.0): `UEFIExtract COPY all` on a
    copy of the image in a temporary directory (the input is never written to) gives the report
    table (COPY.report.txt: type, subtype, base, size, CRC32, name of every item) and a dump tree
    (COPY.dump/, one info.txt per item: offset in its parent, header size, GUIDs, compression,
    PE/TE header fields). The two are read together (the same items in the same order).
  * uefi-firmware-parser (PyPI uefi-firmware, module uefi_firmware, already a dependency): its
    volume search (what `uefi-firmware-parser --brute` does), each volume's files and sections.
    It keeps no offsets: they are recomputed here from its sizes with its own stepping rules
    (files 8-aligned from the end of the volume header, sections 4-aligned in their container).
    It reads no PE/TE headers: modules are compared with UEFIExtract only.

Each parser's tree becomes a list of items: top-level gaps (bytes between volumes), volumes, FFS
files, sections, PE/TE modules and volume free space, each placed by (space, offset). The space
is the image file, or the decoded bytes of a compressed section (named by that section's place):
an item inside decoded data is placed by its offset in those bytes (`0x90>+0xE008C`). Items are
matched by place and kind; for every match the fields both parsers give are compared: size,
file/section type, GUIDs (volume file system, file name, GUID-defined and subtype GUIDs), volume
name GUID, CRC32 of the item's bytes (for decoded data that proves both decoders produced the
same bytes), compression, decoded size, a gap's erased state, and for modules format, machine,
entry point, image base, number of sections, subsystem. An item only one parser has, and a field
that differs, is a difference. Items ovmftool has no counterpart for (UEFIExtract's variable
stores, variables, FTW stores, padding inside them) are counted, not compared.

A difference is explained when one of the RULES below says why: each is named, documented (its
docstring; `--rules` prints them) and a predicate on the difference and the two trees, never a
blanket ignore. Today: EXT_HEADER_PAD (UEFIExtract folds the pad file holding a volume's extended
header into the volume header) and NVRAM_STORE_FREE_SPACE (UEFIExtract parses variable stores,
ovmftool stops at the NVRAM volume). Every other difference is unexplained, and the exit status
is 1 (2: UEFIExtract is not installed). tests/test_differential.py shows each rule firing on a
real image, and not on a near miss.

UEFIExtract's dump goes to /dev/shm when there is one (see `scratch`); UEFIEXTRACT=PATH picks
another binary. The whole corpus takes about 35 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.errors import NothingToCheck
from ovmftool.model import structs as S
from ovmftool.model.ffs import FfsFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.gap import Gap
from ovmftool.model.node import Node, all_problems, walk
from ovmftool.model.parser import parse_flash, read_image
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume

ROOT = Path(__file__).resolve().parent.parent

UEFIEXTRACT = os.environ.get("UEFIEXTRACT", "UEFIExtract")
UEFIEXTRACT_TIMEOUT = 300

OVMFTOOL, UEFITOOL, UFP = "ovmftool", "UEFIExtract", "uefi_firmware"
OTHERS = (UEFITOOL, UFP)
KINDS = ("gap", "volume", "file", "section", "module", "free")
# what each parser reports (a kind is compared between two parsers when both report it)
REPORTS = {
    OVMFTOOL: set(KINDS),
    UEFITOOL: set(KINDS),
    UFP: {"volume", "file", "section"},  # no PE/TE reader, no free-space or gap item
}

Space = tuple  # () for the image file, else the key of the section whose decoded bytes it is


# ---------------------------------------------------------------------------------------- items


@dataclass(eq=False, repr=False)
class Item:
    """One volume, file, section, module or free-space area as one parser sees it."""

    kind: str
    space: Space
    offset: int  # in its space
    size: int
    type: int | None = None  # FFS file type, section type
    guid: str | None = None  # volume: file system; file: name; section: GUID-defined or subtype GUID
    fields: dict[str, object] = field(default_factory=dict)  # other compared fields (None: not given)
    extra: dict[str, int] = field(default_factory=dict)  # facts the rules read, not compared
    parent: Item | None = None
    children: list[Item] = field(default_factory=list)
    label: str = ""  # what the parser calls it, for listings

    @property
    def key(self) -> tuple[Space, int, str]:
        return (self.space, self.offset, self.kind)

    @property
    def end(self) -> int:
        return self.offset + self.size

    def ancestors(self) -> Iterator[Item]:
        p = self.parent
        while p is not None:
            yield p
            p = p.parent

    def __repr__(self) -> str:
        return f"<{self.kind} {where(self.space, self.offset)} size 0x{self.size:X} {self.label}>"


def where(space: Space, offset: int) -> str:
    """A place for people: `0x90` in the file, `0x90>+0xE008C` at 0xE008C in the bytes the section
    at 0x90 decodes to (nesting adds another `>+...`)."""
    if not space:
        return f"0x{offset:X}"
    return f"{where(space[0], space[1])}>+0x{offset:X}"


def add(items: list[Item], it: Item, parent: Item | None) -> Item:
    it.parent = parent
    if parent is not None:
        parent.children.append(it)
    items.append(it)
    return it


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def guid_of(b: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(b)))


# ------------------------------------------------------------------------------------- ovmftool


def ovmftool_items(path: str) -> tuple[list[Item], dict]:
    """ovmftool's model of `path` (model.parser.read_image), as items. A non-x86 image (QEMU_EFI.fd,
    AArch64) is refused by read_image before any command sees it; its parse (parse_flash, what
    read_image runs before that check) is compared all the same."""
    try:
        root = read_image(path)
        note = ""
    except NothingToCheck as e:
        root = parse_flash(Path(path).read_bytes(), path)
        note = f"read_image refuses it ({e}); parse_flash compared"
    items: list[Item] = []
    made: dict[int, Item] = {}

    def place(n: Node) -> tuple[Space, int]:
        if n.space.abs_base is not None:
            return (), n.abs_offset  # type: ignore[return-value]
        return made[id(n.space.origin)].key, n.offset

    def parent_item(n: Node) -> Item | None:
        return next((made[id(a)] for a in n.ancestors() if id(a) in made), None)

    for n in walk(root):
        if isinstance(n, FlashImage):
            continue
        sp, off = place(n)
        it: Item | None = None
        if isinstance(n, Gap):  # bytes between top-level volumes
            it = Item("gap", sp, off, n.size, label="gap")
            it.fields = {"erased": n.erased, "crc32": crc(n.data)}
        elif isinstance(n, Volume):
            it = Item("volume", sp, off, n.size, guid=n.fs_guid, label=n.name or "volume")
            it.fields = {"name_guid": n.name_guid, "crc32": crc(n.data)}
            if len(n.data) >= S.FV_HEADER.size:  # ExtHeaderOffset, for the rules (the model keeps the name GUID)
                it.extra["ext_header"] = S.FV_HEADER.unpack_from(n.data)[7]
            if n.free is not None and n.free.size:  # the erased tail after the last file
                free = Item("free", sp, off + n.free.offset - n.offset, n.free.size, label="free space")
                free.fields = {"crc32": crc(n.space.data[n.free.offset : n.free.offset + n.free.size])}
                free.parent = it
                it.children.append(free)
        elif isinstance(n, FfsFile):
            it = Item("file", sp, off, n.size, type=n.type, guid=n.guid, label=n.ui_name or n.type_name)
            it.fields = {"crc32": crc(n.data)}
        elif isinstance(n, Section):
            it = Item("section", sp, off, n.size, type=n.type, guid=n.guid, label=n.type_name)
            it.fields = {"crc32": crc(n.data)}
            if n.decoded is not None:
                it.fields["compression"] = n.compression
                it.fields["decoded_size"] = len(n.decoded.data)
            elif n.type == S.EFI_SECTION_COMPRESSION and n.compression == "NONE":
                it.fields["compression"] = "NONE"
        elif isinstance(n, PeImage):
            it = Item("module", sp, off, n.size, label=f"{n.format} {n.machine}")
            it.fields = {
                "format": n.format,
                "machine": n.machine_code,
                "entry": n.entry_rva,
                "image_base": n.image_base,
                "sections": len(n.sections),
                "subsystem": n.subsystem,
            }
        if it is not None:
            add(items, it, parent_item(n))
            made[id(n)] = it
            items += [c for c in it.children if c.kind == "free"]
    damage = [str(p) for p in all_problems(root)]
    return items, {"note": note, "damage": damage}


# ---------------------------------------------------------------------------------- UEFIExtract

# UEFIExtract's "Compression algorithm" -> ovmftool's name of the encoding
UEFITOOL_ALGORITHMS = {"None": "NONE", "EFI 1.1": "EFI", "Tiano": "TIANO", "LZMA": "LZMA", "LZMAF86": "LZMAF86"}
# UEFIExtract's machine names (UEFITool common/peimage.cpp machineTypeToUString) -> PE machine codes
UEFITOOL_MACHINES = {
    "x86": 0x014C,
    "x86-64": 0x8664,
    "AArch64": 0xAA64,
    "ARM": 0x01C0,
    "ARMv7": 0x01C4,
    "ARM Thumb": 0x01C2,
    "EBC": 0x0EBC,
    "IA64": 0x0200,
    "RISC-V 32-bit": 0x5032,
    "RISC-V 64-bit": 0x5064,
    "RISC-V 128-bit": 0x5128,
}
UEFITOOL_KINDS = {"Volume": "volume", "File": "file", "Section": "section", "Free space": "free", "Padding": "gap"}


def uefiextract_version() -> str | None:
    """UEFIExtract's banner (`UEFIExtract NE alpha 62 (Nov 29 2022)`), None when it is not installed."""
    exe = shutil.which(UEFIEXTRACT)
    if exe is None:
        return None
    out = subprocess.run([exe], capture_output=True, text=True, timeout=60).stdout
    return out.strip().splitlines()[0] if out.strip() else "UEFIExtract"


def _info(path: Path) -> dict[str, list[str]]:
    """An info.txt of UEFIExtract's dump: `Key: value` lines; a key can repeat (`Type: File`, then
    the file's `Type: 03h`), so every value is kept in order."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def _hex(v: str) -> int:
    """`2E84h (11908)` or `10h` -> the number."""
    return int(v.split()[0].rstrip("h"), 16)


@dataclass
class _Dumped:
    info: dict[str, list[str]]
    parent: int | None  # index of the parent record


def _dump_tree(d: Path) -> list[_Dumped]:
    """The dump's items in pre-order (the report's order): each directory holds info.txt and
    one sub-directory `N name` per child item, N its index."""
    out: list[_Dumped] = []

    def rec(p: Path, parent: int | None) -> None:
        out.append(_Dumped(_info(p / "info.txt"), parent))
        me = len(out) - 1
        subs = [c for c in p.iterdir() if c.is_dir()]
        for c in sorted(subs, key=lambda c: int(c.name.split(" ", 1)[0])):
            rec(c, me)

    rec(d, None)
    return out


def _report_rows(path: Path) -> list[dict[str, str]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines()[1:]:
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 6:
            rows.append({"type": cells[0], "subtype": cells[1], "base": cells[2], "size": cells[3], "crc32": cells[4]})
    return rows


def uefiextract_items(path: str, tmp: Path) -> tuple[list[Item], dict]:
    """UEFIExtract's tree of `path`: `UEFIExtract COPY all` on a copy in `tmp`."""
    exe = shutil.which(UEFIEXTRACT)
    if exe is None:
        raise RuntimeError("UEFIExtract not installed (apt-get install uefitool-cli)")
    copy = tmp / Path(path).name
    shutil.copyfile(path, copy)
    run = subprocess.run([exe, str(copy), "all"], capture_output=True, text=True, cwd=tmp, timeout=UEFIEXTRACT_TIMEOUT)
    messages = [m for m in run.stdout.splitlines() if m.strip()]
    if run.returncode:
        raise RuntimeError(f"{path}: UEFIExtract exited {run.returncode}: {run.stdout[-500:]}{run.stderr[-500:]}")
    dumped = _dump_tree(Path(f"{copy}.dump"))
    rows = _report_rows(Path(f"{copy}.report.txt"))
    if len(rows) != len(dumped):
        raise RuntimeError(f"{path}: UEFIExtract's report has {len(rows)} items, its dump {len(dumped)}")
    for row, d in zip(rows, dumped):
        if row["type"] != d.info["Type"][0] or int(row["size"], 16) != _hex(d.info["Full size"][0]):
            raise RuntimeError(f"{path}: UEFIExtract's report and dump disagree at {row}")
    items: list[Item] = []
    place: list[tuple[Space, int]] = []  # of every record, items or not
    made: dict[int, Item] = {}
    other: Counter = Counter()  # items of kinds ovmftool has no counterpart for (variable stores...)
    for i, (row, d) in enumerate(zip(rows, dumped)):
        info = d.info
        rel = _hex(info["Offset"][0])
        if d.parent is None:
            sp, off = (), 0
        elif dumped[d.parent].parent is None:  # under the image: offsets are file offsets
            sp, off = (), rel
        else:
            up = dumped[d.parent].info
            psp, poff = place[d.parent]
            alg = up.get("Compression algorithm", ["None"])[0]
            if d.parent in made and alg not in ("None", "unknown") and "Base" not in info:
                # the parent decoded its body: offsets are past its header, in the decoded bytes
                sp, off = made[d.parent].key, rel - _hex(up["Header size"][0])
            else:
                sp, off = psp, poff + rel
        if "Base" in info and sp == () and _hex(info["Base"][0]) != off:
            raise RuntimeError(f"{path}: UEFIExtract base {info['Base'][0]} is not offset 0x{off:X}")
        place.append((sp, off))
        kind = UEFITOOL_KINDS.get(info["Type"][0])
        if kind == "gap" and (d.parent is None or dumped[d.parent].parent is not None):
            kind = None  # padding inside a volume or store, not between top-level volumes
        if kind is None:
            if d.parent is not None:
                other[info["Type"][0]] += 1
            continue
        parent = next((made[p] for p in _up(dumped, d.parent) if p in made), None)
        size = _hex(info["Full size"][0])
        it = Item(kind, sp, off, size, label=f"{info['Type'][0]} {info.get('Subtype', [''])[0]}".strip())
        it.fields = {"crc32": int(row["crc32"], 16)}
        types = info.get("Type", [])
        if kind == "gap":
            it.fields["erased"] = info.get("Subtype", [""])[0].startswith("Empty")
        elif kind == "volume":
            it.guid = info.get("FileSystem GUID", [None])[0]
            it.fields["name_guid"] = info.get("Volume GUID", [None])[0]
            it.extra["header_size"] = _hex(info["Header size"][0])
        elif kind == "file":
            it.type = _hex(types[1])
            it.guid = info["File GUID"][0]
            if info.get("Text"):
                it.label += f" {info['Text'][0]}"
        elif kind == "section":
            it.type = _hex(types[1])
            it.guid = (info.get("Section GUID") or info.get("Subtype GUID") or [None])[0]
            alg = info.get("Compression algorithm", [None])[0]
            if alg is not None:
                it.fields["compression"] = UEFITOOL_ALGORITHMS.get(alg, alg)
                if "Decompressed size" in info and alg not in ("None", "unknown"):
                    size_key = "Actual decompressed size" if "Actual decompressed size" in info else "Decompressed size"
                    it.fields["decoded_size"] = _hex(info[size_key][0])
        if it.guid:
            it.guid = it.guid.lower()
        if isinstance(it.fields.get("name_guid"), str):
            it.fields["name_guid"] = str(it.fields["name_guid"]).lower()
        add(items, it, parent)
        made[i] = it
        if kind == "section" and "Machine type" in info:  # a PE32/TE image section's image
            hs = _hex(info["Header size"][0])
            mod = Item("module", sp, off + hs, size - hs, label=f"{it.label} image")
            te = "Stripped size" in info
            opt = info.get("Optional header signature", [""])[0]
            mod.fields = {
                "format": "TE" if te else {"010Bh": "PE32", "020Bh": "PE32+"}.get(opt),
                "machine": UEFITOOL_MACHINES.get(info["Machine type"][0], info["Machine type"][0]),
                "entry": _hex(info["Address of entry point"][0]) if "Address of entry point" in info else None,
                "image_base": _hex(info["Image base"][0]) if "Image base" in info else None,
                "sections": int(info["Number of sections"][0]),
                "subsystem": _hex(info["Subsystem"][0]) if "Subsystem" in info else None,
            }
            add(items, mod, it)
    return items, {"messages": messages, "not_compared": dict(other)}


def _up(dumped: list[_Dumped], i: int | None) -> Iterator[int]:
    while i is not None:
        yield i
        i = dumped[i].parent


# -------------------------------------------------------------------------- uefi-firmware-parser


def uefi_firmware_items(path: str) -> tuple[list[Item], dict]:
    """uefi-firmware-parser's tree of `path`: the volumes its search finds (utils.search_firmware_volumes,
    what `uefi-firmware-parser --brute` parses), each processed; a volume inside an earlier one is
    that one's (its FV image section's) and not listed again."""
    import uefi_firmware.uefi as U
    from uefi_firmware.utils import search_firmware_volumes

    data = Path(path).read_bytes()
    items: list[Item] = []
    top: list[Item] = []
    for idx in search_firmware_volumes(data):
        start = idx - 40
        if any(t.offset <= start < t.end for t in top):
            continue
        fv = U.FirmwareVolume(data[start:], name=start)
        if not fv.valid_header:
            continue
        fv.process()
        top.append(_ufp_volume(items, fv, (), start, None))
    return items, {}


def _ufp_volume(items: list[Item], fv, sp: Space, off: int, parent: Item | None) -> Item:
    it = add(items, Item("volume", sp, off, fv.size, guid=guid_of(fv.guid), label="FirmwareVolume"), parent)
    it.fields = {"name_guid": guid_of(fv.fvname) if hasattr(fv, "fvname") else None, "crc32": crc(fv._data)}
    pos = off + fv.hdrlen
    for ffs, (count, length) in zip(fv.firmware_filesystems, fv.blocks):
        fpos = pos
        for f in ffs.files:
            _ufp_file(items, f, sp, fpos, it)
            fpos += (f.size + 7) & ~7
        pos += count * length
    return it


def _ufp_file(items: list[Item], f, sp: Space, off: int, parent: Item) -> None:
    import uefi_firmware.uefi as U

    it = add(items, Item("file", sp, off, f.size, type=f.type, guid=guid_of(f.guid), label="FirmwareFile"), parent)
    it.fields = {"crc32": crc(f._data)}
    pos = off + 24
    for s in f.sections:
        _ufp_section(items, s, sp, pos, it)
        pos += (s.size + 3) & ~3
    for blob in f.raw_blobs:  # a raw file's volume: found in the file's data by its own search
        at = f.data.find(blob._data[: blob.hdrlen]) if isinstance(blob, U.FirmwareVolume) else -1
        if at >= 0:
            _ufp_volume(items, blob, sp, off + 24 + at, it)


def _ufp_section(items: list[Item], s, sp: Space, off: int, parent: Item) -> None:
    import uefi_firmware.uefi as U

    it = add(items, Item("section", sp, off, s.size, type=s.type, label="FirmwareFileSystemSection"), parent)
    it.fields = {"crc32": crc(s._data)}
    hs = 8 if s.large_header else 4
    po = s.parsed_object
    if isinstance(po, U.CompressedSection):
        if po.type == 0:
            it.fields["compression"] = "NONE"
            _ufp_subsections(items, po.subsections, sp, off + hs + 5, it)
        elif po.data is not None:
            names = {(1, 1): "EFI", (1, 2): "TIANO", (2, 1): "LZMA", (2, 2): "TIANO", (2, 3): "EFI"}
            it.fields["compression"] = names.get((po.type, po.subtype), f"type {po.type}")
            it.fields["decoded_size"] = len(po.data)
            _ufp_subsections(items, po.subsections, it.key, 0, it)
    elif isinstance(po, U.GuidDefinedSection):
        it.guid = guid_of(po.guid)
        if hasattr(po, "subtype"):  # decoded (decompress_guid, zlib, gzip)
            it.fields["compression"] = S.GUIDED_NAMES.get(it.guid, it.guid)
            it.fields["decoded_size"] = len(po.data)
            _ufp_subsections(items, po.subsections, it.key, 0, it)
        else:
            _ufp_subsections(items, po.subsections, sp, off + po.offset, it)
    elif isinstance(po, U.FirmwareVolume):  # at the start of the body, or 4 bytes in (its FFSv3 fallback)
        at = s.data.find(po._data[: po.hdrlen])
        if at >= 0:
            _ufp_volume(items, po, sp, off + hs + at, it)
    elif isinstance(po, U.FreeformGuidSection):
        it.guid = guid_of(po.guid)


def _ufp_subsections(items: list[Item], subs, sp: Space, base: int, parent: Item) -> None:
    """Sections a compressed or GUID-defined section holds, where its process_subsections put them:
    4-aligned from the start of its data; a volume (parse_volume) at the start of the data."""
    import uefi_firmware.uefi as U

    pos = 0
    for s in subs:
        if isinstance(s, U.FirmwareFileSystemSection):
            pos += -pos % 4
            _ufp_section(items, s, sp, base + pos, parent)
            pos += s.size
        elif isinstance(s, U.FirmwareVolume):
            _ufp_volume(items, s, sp, base, parent)


# ------------------------------------------------------------------------------------ comparing


@dataclass
class Difference:
    """One item only one parser has (`field` None), or one field two parsers see differently."""

    other: str  # the parser ovmftool is compared with
    kind: str
    space: Space
    offset: int
    field: str | None
    ours: object  # ovmftool's item (presence) or value (field)
    theirs: object
    rule: str | None = None

    @property
    def place(self) -> str:
        return where(self.space, self.offset)

    def describe(self) -> str:
        if self.field is None:
            who = OVMFTOOL if self.ours is not None else self.other
            it = self.ours if self.ours is not None else self.theirs
            return f"{self.kind} at {self.place} only in {who}: {it!r}"
        ours, theirs = _show(self.ours), _show(self.theirs)
        return f"{self.kind} at {self.place} {self.field}: {OVMFTOOL} {ours}, {self.other} {theirs}"


def _show(v: object) -> str:
    return f"0x{v:X}" if isinstance(v, int) and not isinstance(v, bool) else repr(v)


@dataclass
class Pair:
    """ovmftool's items and another parser's, indexed by key."""

    other: str
    ours: dict
    theirs: dict
    matched: int = 0
    differences: list[Difference] = field(default_factory=list)
    compared: Counter = field(default_factory=Counter)  # field -> how many matched items had it on both sides


def compare(other: str, ours: list[Item], theirs: list[Item]) -> Pair:
    """Match two parsers' items by key; every item only one has and every field they give
    differently is a Difference (unclassified: see `classify`)."""
    kinds = REPORTS[OVMFTOOL] & REPORTS[other]
    a = {it.key: it for it in ours if it.kind in kinds}
    b = {it.key: it for it in theirs if it.kind in kinds}
    pair = Pair(other, a, b)
    for key in sorted(set(a) | set(b), key=_order):
        x, y = a.get(key), b.get(key)
        sp, off, kind = key
        if x is None or y is None:
            pair.differences.append(Difference(other, kind, sp, off, None, x, y))
            continue
        diffs = []
        both = [(n, getattr(x, n), getattr(y, n)) for n in ("size", "type", "guid")]
        both += [(n, x.fields[n], y.fields[n]) for n in sorted(set(x.fields) & set(y.fields))]
        for name, u, v in both:
            if u is None or v is None:
                continue
            pair.compared[name] += 1
            if u != v:
                diffs.append(Difference(other, kind, sp, off, name, u, v))
        pair.differences += diffs
        pair.matched += not diffs
    return pair


def _order(key: tuple) -> tuple:
    sp, off, kind = key
    return (_flat(sp), off, KINDS.index(kind))


def _flat(sp: Space) -> tuple:
    return () if not sp else (*_flat(sp[0]), sp[1], KINDS.index(sp[2]))


# ---------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """A known difference: its name, which parser it concerns, why it is not a bug (the doc),
    and the predicate that recognises it."""

    name: str
    other: str
    doc: str
    test: Callable[[Difference, Pair], bool]


RULES: list[Rule] = []


def rule(name: str, other: str) -> Callable[[Callable[[Difference, Pair], bool]], Callable[[Difference, Pair], bool]]:
    def deco(fn: Callable[[Difference, Pair], bool]) -> Callable[[Difference, Pair], bool]:
        RULES.append(Rule(name, other, " ".join((fn.__doc__ or "").split()), fn))
        return fn

    return deco


@rule("EXT_HEADER_PAD", UEFITOOL)
def _ext_header_pad(d: Difference, pair: Pair) -> bool:
    """The pad file that holds a volume's extended header. EDK II's GenFv writes the
    EFI_FIRMWARE_VOLUME_EXT_HEADER (the volume's name GUID) as the data of an FFS pad file, the
    volume's first file: the header's ExtHeaderOffset (PI spec vol. 3, EFI_FIRMWARE_VOLUME_HEADER)
    points past the header, into the file area. ovmftool lists that file (FFS_PAD, as
    uefi_firmware does); UEFIExtract counts it as part of the volume header (the volume's "Header
    size" runs to the end of the pad file: 0x78 in OVMF's volumes) and has no item for it.
    Recognised: a pad file only ovmftool has, whose data holds its volume's extended header,
    inside UEFIExtract's header of the same volume."""
    f = d.ours
    if d.field is not None or d.kind != "file" or not isinstance(f, Item) or f.type != S.FV_FILETYPE_FFS_PAD:
        return False
    vol = f.parent
    if vol is None or vol.kind != "volume" or "ext_header" not in vol.extra:
        return False
    theirs = pair.theirs.get(vol.key)
    ext = vol.offset + vol.extra["ext_header"]
    return (
        theirs is not None
        and f.offset + S.FFS_HEADER.size <= ext < f.end
        and f.end - vol.offset <= theirs.extra.get("header_size", 0)
    )


@rule("NVRAM_STORE_FREE_SPACE", UEFITOOL)
def _nvram_free_space(d: Difference, pair: Pair) -> bool:
    """Free space inside a variable store. UEFIExtract parses the contents of an NVRAM volume
    (file system EFI_SYSTEM_NV_DATA_FV_GUID, fff12b8d-...: OVMF_VARS.fd, and the store at the start
    of the single-image builds OVMF.fd/MICROVM.fd and Debian's amdsev/inteltdx images): its VSS2
    store, variables, padding, FTW store, and the free space after the variables and after the
    FTW store. ovmftool's model stops at the volume: a variable store holds no firmware file (no
    code to scan or patch), so the model has no item inside it and no free space there.
    Recognised: a free-space item only UEFIExtract has, inside an NVRAM volume that both have."""
    it = d.theirs
    if d.field is not None or d.kind != "free" or d.ours is not None or not isinstance(it, Item):
        return False
    vol = next((a for a in it.ancestors() if a.kind == "volume"), None)
    return vol is not None and vol.guid == S.NVRAM_GUID and vol.key in pair.ours


def classify(pair: Pair) -> None:
    for d in pair.differences:
        d.rule = next((r.name for r in RULES if r.other == pair.other and r.test(d, pair)), None)


# ------------------------------------------------------------------------------------- running


@dataclass
class Result:
    image: str
    counts: dict[str, Counter]  # parser -> kind -> count
    pairs: list[Pair]
    seconds: dict[str, float]
    notes: dict[str, dict]

    @property
    def differences(self) -> list[Difference]:
        return [d for p in self.pairs for d in p.differences]

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if d.rule is None]


def run_image(path: str, tmp_root: Path | None = None) -> Result:
    """Parse `path` with the three parsers and compare ovmftool with each of the others."""
    seconds: dict[str, float] = {}
    notes: dict[str, dict] = {}
    trees: dict[str, list[Item]] = {}
    with tempfile.TemporaryDirectory(prefix="differential-", dir=tmp_root or scratch()) as tmp:
        for name, fn in (
            (OVMFTOOL, lambda: ovmftool_items(path)),
            (UEFITOOL, lambda: uefiextract_items(path, Path(tmp))),
            (UFP, lambda: uefi_firmware_items(path)),
        ):
            t = time.perf_counter()
            trees[name], notes[name] = fn()
            seconds[name] = time.perf_counter() - t
    pairs = []
    for other in OTHERS:
        pair = compare(other, trees[OVMFTOOL], trees[other])
        classify(pair)
        pairs.append(pair)
    counts = {k: Counter(it.kind for it in v) for k, v in trees.items()}
    return Result(path, counts, pairs, seconds, notes)


def scratch() -> str | None:
    """Where UEFIExtract's dump goes: /dev/shm when it is there (a dump is 60-130 MB of small files,
    written and deleted for each image: on a disk that triples UEFIExtract's time), else the
    system's temporary directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def default_images() -> list[str]:
    """Every corpus image (corpus/manifest.json) and every file of every stored build's firmware
    (corpus/builds/KEY/build.json: the code and the variable store it lists)."""
    manifest = json.loads((ROOT / "corpus" / "manifest.json").read_text())
    out = [str(ROOT / "corpus" / e["path"]) for e in manifest["images"]]
    for d in sorted((ROOT / "corpus" / "builds").iterdir()):
        meta_path = d / "build.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        for name in (meta.get("firmware", "OVMF_CODE.fd"), meta.get("vars", "OVMF_VARS.fd")):
            if name and (d / name).is_file():
                out.append(str(d / name))
    return out


def short(path: str) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT / "corpus"))
    except ValueError:
        return str(path)


def table(results: list[Result]) -> list[str]:
    """The per-image table: items each parser found (ovmftool/UEFIExtract/uefi_firmware; `-` where
    a parser does not report that kind), items matched in all fields, differences explained by a
    rule and unexplained."""
    head = "| image | volumes | files | sections | modules | matched | explained | unexplained |"
    lines = [head, "|" + "---|" * 8]
    for r in results:
        cells = [short(r.image)]
        for kind in ("volume", "file", "section", "module"):
            cells.append("/".join(str(r.counts[p][kind]) if kind in REPORTS[p] else "-" for p in (OVMFTOOL, *OTHERS)))
        diffs = r.differences
        expl = sum(d.rule is not None for d in diffs)
        cells += [
            " + ".join(str(p.matched) for p in r.pairs),
            str(expl),
            str(len(diffs) - expl),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("images", nargs="*", help="images (default: every corpus image and stored build)")
    ap.add_argument("-q", "--quiet", action="store_true", help="list only unexplained differences")
    ap.add_argument("--json", metavar="OUT", help="write counts and every difference as JSON")
    ap.add_argument("--rules", action="store_true", help="print the known-difference rules and exit")
    args = ap.parse_args(argv)
    if args.rules:
        for r in RULES:
            print(f"{r.name} ({OVMFTOOL} vs {r.other}): {r.doc}\n")
        return 0
    version = uefiextract_version()
    if version is None:
        print("UEFIExtract not installed (apt-get install uefitool-cli)", file=sys.stderr)
        return 2
    images = args.images or default_images()
    results = []
    for path in images:
        t = time.perf_counter()
        r = run_image(path)
        results.append(r)
        print(
            f"{short(path)}: {len(r.differences)} differences, {len(r.unexplained)} unexplained "
            f"({time.perf_counter() - t:.1f} s)",
            file=sys.stderr,
        )
    import uefi_firmware

    print(f"# ovmftool vs {version} and uefi_firmware {uefi_firmware.__version__}\n")
    print("counts: ovmftool/UEFIExtract/uefi_firmware; matched: items equal in every field (vs UEFIExtract + vs")
    print("uefi_firmware); explained/unexplained: differences, each classified by a rule or not\n")
    print("\n".join(table(results)))
    print()
    by_rule = Counter(d.rule for r in results for d in r.differences)
    for r in results:
        shown = [d for d in r.differences if d.rule is None or not args.quiet]
        notes = [f"{k}: {v['note']}" for k, v in r.notes.items() if v.get("note")]
        notes += [f"{OVMFTOOL} damage: {m}" for m in r.notes[OVMFTOOL].get("damage", [])]
        notes += [f"{UEFITOOL} says: {m}" for m in r.notes[UEFITOOL].get("messages", [])]
        skipped = r.notes[UEFITOOL].get("not_compared")
        if skipped:
            notes.append(
                f"{UEFITOOL} items with no ovmftool counterpart, not compared: "
                + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
            )
        if not shown and not notes:
            continue
        print(f"## {short(r.image)}")
        for n in notes:
            print(f"  note {n}")
        for d in shown:
            print(f"  [{d.rule or 'UNEXPLAINED'}] vs {d.other}: {d.describe()}")
        print()
    print("## rules")
    for ru in RULES:
        print(f"  {ru.name} ({OVMFTOOL} vs {ru.other}): {by_rule.get(ru.name, 0)} differences")
    unexplained = by_rule.get(None, 0)
    print(f"  unexplained: {unexplained}")
    for other in OTHERS:
        seen = sum((p.compared for r in results for p in r.pairs if p.other == other), Counter())
        shown = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
        print(f"\nfields compared on matched items, vs {other}: {shown}")
    times = {p: statistics.fmean(r.seconds[p] for r in results) for p in (OVMFTOOL, *OTHERS)}
    print("\nmean seconds per image: " + ", ".join(f"{p} {t:.2f}" for p, t in times.items()))
    if args.json:
        doc = {
            "uefiextract": version,
            "images": [
                {
                    "image": short(r.image),
                    "counts": {p: dict(c) for p, c in r.counts.items()},
                    "matched": {p.other: p.matched for p in r.pairs},
                    "compared": {p.other: dict(p.compared) for p in r.pairs},
                    "not_compared": r.notes[UEFITOOL].get("not_compared", {}),
                    "seconds": r.seconds,
                    "differences": [
                        {"rule": d.rule, "other": d.other, "text": d.describe(), "kind": d.kind, "field": d.field}
                        for d in r.differences
                    ],
                }
                for r in results
            ],
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
