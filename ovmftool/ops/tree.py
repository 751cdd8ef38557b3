"""`info`: render the image model as an indented text tree or as JSON (schema in docs/); a standalone
PE32/TE file as its module's headers."""

from __future__ import annotations

from typing import Iterator

from ovmftool import __version__
from ovmftool.model.binary import BinaryFile
from ovmftool.model.ffs import FfsFile
from ovmftool.model.node import Node, all_problems
from ovmftool.model.parser import FlashImage
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_modules

INFO_SCHEMA = "ovmftool.info/1"


def place(n: Node) -> str:
    """Absolute offset, or decoded-space label plus offset."""
    a = n.abs_offset
    return f"0x{a:08X}" if a is not None else f"{n.space.label}+0x{n.offset:X}"


def _status(n: Node) -> str:
    marks = []
    if isinstance(n, Volume):
        marks.append("hdr-csum ok" if n.checksum_ok else "hdr-csum BAD")
        if n.free is not None:
            marks.append(f"free 0x{n.free.size:X}{'' if n.free.clean else ' DIRTY'}")
    elif isinstance(n, FfsFile):
        marks.append(n.state)
        marks.append("hdr-csum ok" if n.header_checksum_ok else "hdr-csum BAD")
        if n.data_checksum_ok is not None:
            marks.append("data-csum ok" if n.data_checksum_ok else "data-csum BAD")
    elif isinstance(n, Section):
        if n.decoded is not None:
            marks.append(f"decoded 0x{len(n.decoded.data):X}")
        if n.crc_ok is not None:
            marks.append("crc ok" if n.crc_ok else "crc BAD")
    elif isinstance(n, PeImage):
        marks.append(f"base 0x{n.image_base:X} entry 0x{n.entry_rva:X}")
        marks.append(" ".join(s.name for s in n.sections))
        marks.append(f"relocs {len(n.relocations)}")
        if n.debug_path:
            marks.append(n.debug_path)
    return "  ".join(m for m in marks if m)


_SUBSYSTEMS = {10: "EFI_APPLICATION", 11: "EFI_BOOT_SERVICE_DRIVER", 12: "EFI_RUNTIME_DRIVER", 13: "EFI_ROM"}


def _section_flags(c: int) -> str:
    flags = [n for bit, n in ((0x20, "code"), (0x40, "data"), (0x80, "bss"), (0x02000000, "discardable"),
                              (0x20000000, "exec"), (0x40000000, "read"), (0x80000000, "write")) if c & bit]
    return ",".join(flags) or "-"


def binary_lines(root: BinaryFile) -> Iterator[str]:
    """A standalone PE32/TE file: the module's facts and every header field the tool uses."""
    yield f"{root.path}  {root.size} bytes  sha256 {root.sha256}"
    for p in root.problems:
        yield f"!! DAMAGE: {p}"
    img = root.image
    for p in img.problems:
        yield f"!! DAMAGE: {p}"
    mods = list(iter_modules(root))
    if mods:
        m = mods[0]
        yield (f"standalone {img.format} {m.arch} module {m.name}  guid {m.guid}  "
               f"(no firmware volume: file offsets are offsets in this file)")
    sub = _SUBSYSTEMS.get(img.subsystem, "unknown")
    yield (f"  machine {img.machine} (0x{img.machine_code:04X})  subsystem {sub} ({img.subsystem})  "
           f"image base 0x{img.image_base:X}  entry rva 0x{img.entry_rva:X}")
    if img.format == "TE":
        yield (f"  TE: stripped size 0x{img.size_of_headers:X} (file offset = rva - 0x{img.te_adjust:X})  "
               f"size of image 0x{img.size_of_image:X}")
    else:
        yield (f"  size of image 0x{img.size_of_image:X}  size of headers 0x{img.size_of_headers:X}  "
               f"section alignment 0x{img.section_alignment:X}  file alignment 0x{img.file_alignment:X}")
    yield f"  {len(img.sections)} sections:"
    for sec in img.sections:
        yield (f"    {sec.name:<8} rva 0x{sec.rva:06X}  virtual 0x{sec.virtual_size:06X}  file 0x{sec.raw_offset:06X} "
               f"+ 0x{sec.raw_size:06X}  0x{sec.characteristics:08X} {_section_flags(sec.characteristics)}")
    yield f"  relocations {len(img.relocations)}  debug path {img.debug_path or '-'}"
    if mods and mods[0].build_info:
        yield f"  inf {mods[0].build_info[0]}"
    probs = all_problems(root)
    yield "1 standalone module, " + (f"{len(probs)} problems" if probs else "no damage")


def text_lines(root: FlashImage) -> Iterator[str]:
    """The tree, one node a line, with damage marked on the line after its node."""
    if isinstance(root, BinaryFile):
        yield from binary_lines(root)
        return
    yield f"{root.path}  {root.size} bytes  sha256 {root.sha256}"

    def rec(n: Node, depth: int) -> Iterator[str]:
        ind = "  " * depth
        st = _status(n)
        yield f"{ind}{place(n)}  size 0x{n.size:X}  {n.label()}" + (f"  [{st}]" if st else "")
        for p in n.problems:
            yield f"{ind}  !! DAMAGE: {p}"
        for c in n.children:
            yield from rec(c, depth + 1)

    for p in root.problems:
        yield f"!! DAMAGE: {p}"
    for c in root.children:
        yield from rec(c, 0)
    mods = list(iter_modules(root))
    probs = all_problems(root)
    yield f"{len([c for c in root.children if isinstance(c, Volume)])} top-level volumes, {len(mods)} modules, " + (
        f"{len(probs)} problems" if probs else "no damage"
    )


def node_dict(n: Node) -> dict:
    """JSON form of a node and its subtree."""
    d = {
        "kind": n.kind,
        "label": n.label(),
        "offset": n.offset,
        "fd_offset": n.abs_offset,
        "container": n.space.label,
        "container_offset": n.container_offset,
        "size": n.size,
    }
    d.update(n.summary())
    if n.problems:
        d["problems"] = [{"message": p.message, "where": p.where} for p in n.problems]
    if n.children:
        d["children"] = [node_dict(c) for c in n.children]
    return d


def info_json(root: FlashImage, modules_only: bool = False) -> dict:
    """The `info --format json` document; with `modules_only` (`info --modules`) the same without
    `tree` (docs/schema/info-1.json allows both forms)."""
    doc = {
        "schema_version": INFO_SCHEMA,
        "tool": {"name": "ovmftool", "version": __version__},
        "image": {"path": root.path, "sha256": root.sha256, "size": root.size},
        "modules": [m.as_dict() for m in iter_modules(root)],
        "problems": [{"message": p.message, "where": p.where} for p in all_problems(root)],
    }
    if not modules_only:
        doc["tree"] = [node_dict(c) for c in root.children]
    return doc
