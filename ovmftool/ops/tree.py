"""`info`: render the image model as an indented text tree or as JSON nodes (the document is
`report.info_report`'s); a standalone PE32/TE file as its module's headers. The model's nodes
know no rendering: each node's line (`label`) and JSON fields (`summary`) are made here."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ovmftool.errors import printable
from ovmftool.model import structs as S
from ovmftool.model.binary import BinaryFile
from ovmftool.model.blob import CodeBlob
from ovmftool.model.ffs import FfsFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.gap import Gap
from ovmftool.model.node import Node, all_problems
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_modules


def label(n: Node) -> str:
    """A node's short description, as trees and paths show it."""
    if isinstance(n, BinaryFile):
        return f"binary {os.path.basename(n.path) or '<bytes>'} ({n.size} bytes)"
    if isinstance(n, FlashImage):
        return f"flash {os.path.basename(n.path) or '<bytes>'} ({n.size} bytes)"
    if isinstance(n, Gap):
        if n.elf_machine is not None:
            return f"gap (ELF header, {n.elf_machine})"
        return "gap (erased)" if n.erased else "gap (data)"
    if isinstance(n, Volume):
        return f"volume {n.name}"
    if isinstance(n, FfsFile):
        nm = f" {n.ui_name}" if n.ui_name else ""
        return f"file {n.guid} {n.type_name}{nm}"
    if isinstance(n, Section):
        extra = ""
        if n.compression:
            extra = f" {n.compression}"
        elif n.text is not None:
            extra = f" {n.text!r}"
        elif n.guid:
            extra = f" {n.guid}"
        return f"section {n.type_name}{extra}"
    if isinstance(n, PeImage):
        return f"{n.format} {n.machine}"
    if isinstance(n, CodeBlob):
        return f"code {n.role} ({n.mode}-bit entry)"
    return n.kind


def summary(n: Node) -> dict:
    """A node's kind-specific fields for reports (JSON-safe); reads what the model reads lazily
    (a PE image's relocations and debug directory)."""
    if isinstance(n, FlashImage):  # a BinaryFile too
        return {"path": n.path, "sha256": n.sha256, "size": n.size}
    if isinstance(n, Gap):
        return {"erased": n.erased, "elf_machine": n.elf_machine}
    if isinstance(n, Volume):
        d = {
            "name": n.name,
            "name_guid": n.name_guid,
            "file_system": n.file_system,
            "fv_length": n.fv_length,
            "header_length": n.header_length,
            "revision": n.revision,
            "attributes": f"0x{n.attributes:08X}",
            "erase_polarity": 1 if n.erase_byte == 0xFF else 0,
            "block_map": [list(b) for b in n.block_map],
            "checksum_ok": n.checksum_ok,
        }
        if n.free is not None:
            d["free_space"] = {"offset": n.free.offset - n.offset, "size": n.free.size, "clean": n.free.clean}
        return d
    if isinstance(n, FfsFile):
        return {
            "guid": n.guid,
            "name": n.ui_name,
            "type": n.type_name,
            "state": n.state,
            "attributes": f"0x{n.attributes:02X}",
            "alignment": n.alignment,
            "header_size": n.header_size,
            "large": bool(n.attributes & S.FFS_ATTRIB_LARGE_FILE) and n.header_size == S.FFS_HEADER2_SIZE,
            "header_checksum_ok": n.header_checksum_ok,
            "data_checksum_ok": n.data_checksum_ok,
        }
    if isinstance(n, Section):
        d = {"type": n.type_name, "header_size": n.header_size}
        if n.guid:
            d["guid"] = n.guid
        if n.compression:
            d["compression"] = n.compression
        if n.decoded is not None:
            d["decoded_size"] = len(n.decoded.data)
        if n.text is not None:
            d["text"] = n.text
        if n.build_number is not None:
            d["build_number"] = n.build_number
        if n.crc_ok is not None:
            d["crc_ok"] = n.crc_ok
        return d
    if isinstance(n, PeImage):
        return {
            "format": n.format,
            "machine": n.machine,
            "image_base": n.image_base,
            "entry_rva": n.entry_rva,
            "size_of_image": n.size_of_image,
            "sections": [
                {
                    "name": s.name,
                    "rva": s.rva,
                    "virtual_size": s.virtual_size,
                    "raw_size": s.raw_size,
                    "characteristics": f"0x{s.characteristics:08X}",
                }
                for s in n.sections
            ],
            "relocations": len(n.relocations),
            "debug_path": n.debug_path,
        }
    if isinstance(n, CodeBlob):
        return {
            "role": n.role,
            "mode": n.mode,
            "entry_offset": n.entry_offset,
            "load_address": n.load_address,
        }
    return {}


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
    flags = [
        n
        for bit, n in (
            (S.IMAGE_SCN_CNT_CODE, "code"),
            (S.IMAGE_SCN_CNT_INITIALIZED_DATA, "data"),
            (S.IMAGE_SCN_CNT_UNINITIALIZED_DATA, "bss"),
            (S.IMAGE_SCN_MEM_DISCARDABLE, "discardable"),
            (S.IMAGE_SCN_MEM_EXECUTE, "exec"),
            (S.IMAGE_SCN_MEM_READ, "read"),
            (S.IMAGE_SCN_MEM_WRITE, "write"),
        )
        if c & bit
    ]
    return ",".join(flags) or "-"


def binary_lines(root: BinaryFile) -> Iterator[str]:
    """A standalone PE32/TE file: the module's facts and every header field the tool uses."""
    yield f"{printable(root.path)}  {root.size} bytes  sha256 {root.sha256}"
    for p in root.problems:
        yield f"!! DAMAGE: {p}"
    img = root.image
    for p in img.problems:
        yield f"!! DAMAGE: {p}"
    mods = list(iter_modules(root))
    if mods:
        m = mods[0]
        yield (
            f"standalone {img.format} {m.arch} module {m.name}  guid {m.guid}  "
            f"(no firmware volume: file offsets are offsets in this file)"
        )
    sub = _SUBSYSTEMS.get(img.subsystem, "unknown")
    yield (
        f"  machine {img.machine} (0x{img.machine_code:04X})  subsystem {sub} ({img.subsystem})  "
        f"image base 0x{img.image_base:X}  entry rva 0x{img.entry_rva:X}"
    )
    if img.format == "TE":
        yield (
            f"  TE: stripped size 0x{img.size_of_headers:X} (file offset = rva - 0x{img.te_adjust:X})  "
            f"size of image 0x{img.size_of_image:X}"
        )
    else:
        yield (
            f"  size of image 0x{img.size_of_image:X}  size of headers 0x{img.size_of_headers:X}  "
            f"section alignment 0x{img.section_alignment:X}  file alignment 0x{img.file_alignment:X}"
        )
    yield f"  {len(img.sections)} sections:"
    for sec in img.sections:
        yield (
            f"    {sec.name:<8} rva 0x{sec.rva:06X}  virtual 0x{sec.virtual_size:06X}  file 0x{sec.raw_offset:06X} "
            f"+ 0x{sec.raw_size:06X}  0x{sec.characteristics:08X} {_section_flags(sec.characteristics)}"
        )
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
    yield f"{printable(root.path)}  {root.size} bytes  sha256 {root.sha256}"

    def rec(n: Node, depth: int) -> Iterator[str]:
        ind = "  " * depth
        st = _status(n)
        yield f"{ind}{n.space.place(n.offset, 8)}  size 0x{n.size:X}  {label(n)}" + (f"  [{st}]" if st else "")
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
        "label": label(n),
        "offset": n.offset,
        "fd_offset": n.abs_offset,
        "container": n.space.label,
        "container_offset": n.container_offset,
        "size": n.size,
    }
    d.update(summary(n))
    if n.problems:
        d["problems"] = [{"message": p.message, "where": p.where} for p in n.problems]
    if n.children:
        d["children"] = [node_dict(c) for c in n.children]
    return d
