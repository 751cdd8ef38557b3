"""`info`: render the image model as an indented text tree or as JSON (schema in docs/)."""

from __future__ import annotations

from typing import Iterator

from ovmftool import __version__
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


def text_lines(root: FlashImage) -> Iterator[str]:
    """The tree, one node a line, with damage marked on the line after its node."""
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


def info_json(root: FlashImage) -> dict:
    """The `info --format json` document."""
    return {
        "schema_version": INFO_SCHEMA,
        "tool": {"name": "ovmftool", "version": __version__},
        "image": {"path": root.path, "sha256": root.sha256, "size": root.size},
        "tree": [node_dict(c) for c in root.children],
        "modules": [m.as_dict() for m in iter_modules(root)],
        "problems": [{"message": p.message, "where": p.where} for p in all_problems(root)],
    }
