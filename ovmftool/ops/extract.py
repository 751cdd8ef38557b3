"""`extract`: every module as NAME_GUID.efi|.te, the reset vector, and the manifest that lists
them; and what a damaged image does not let it extract. Writing them (atomically, into a new
directory) is `report.extraction`'s."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

from ovmftool.model import structs as S
from ovmftool.model.ffs import FfsFile
from ovmftool.model.fixups import enclosing, volume_path
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Node, walk
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_code_blobs, iter_modules
from ovmftool.ops.tree import summary
from ovmftool.outputs import check_output_dir, commit_output_dir, discard_output_dir, new_output_dir

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTAINER_SECTIONS = {
    S.EFI_SECTION_COMPRESSION,
    S.EFI_SECTION_GUID_DEFINED,
    S.EFI_SECTION_FIRMWARE_VOLUME_IMAGE,
    *S.IMAGE_SECTION_TYPES,
}


def _holds_modules(n: Node) -> bool:
    """Whether `n` is a kind of node that modules (or the reset vector) can be read from."""
    if isinstance(n, (Volume, PeImage)):
        return True
    if isinstance(n, FfsFile):
        return n.type in S.SECTIONED_FILE_TYPES or n.type == S.FV_FILETYPE_RAW
    return isinstance(n, Section) and n.type in _CONTAINER_SECTIONS


def _lost(n: Node) -> str | None:
    """What `n`'s damage loses beyond `n` itself, or None when nothing else is lost: the bytes a
    volume's header claims past the end of the file (or of its container), or everything after
    a file or section whose header is unusable (its size is unknown, so nothing after it in its
    container can be located)."""
    if isinstance(n, Volume) and n.fv_length > n.size:
        missing = n.fv_length - n.size
        after = ", and any volume after it" if isinstance(n.parent, FlashImage) else ""
        return (
            f"truncated: the volume header says 0x{n.fv_length:X} bytes and 0x{n.size:X} are present; the "
            f"missing 0x{missing:X} bytes from {n.space.place(n.end)} on are lost with whatever they held "
            f"(the rest of this volume's files{after})"
        )
    if isinstance(n, (FfsFile, Section)) and n.size == 0 and n.problems:
        container = "volume" if isinstance(n, FfsFile) else "container"
        return f"its size is unusable, so it and anything after it in its {container} are lost"
    return None


def unextracted(root: FlashImage) -> list[dict]:
    """What extraction cannot write, in flash order: each damaged PE/TE image; each damaged
    volume, file or section whose contents could not be parsed (so any module inside it is
    lost); and what truncation lost: a volume whose header says it is longer than the bytes
    present, and a file or section of any type whose size is unusable, e.g. runs past its
    container (whatever came after it there is lost; `_lost`).

    Damage that loses nothing (a wrong checksum over data that still parsed, non-erased free
    space) is not listed here; `all_problems` has it."""
    out = []
    for n in walk(root):
        if not n.problems:
            continue
        lost = _lost(n)
        if lost is None and (not _holds_modules(n) or (n.children and not isinstance(n, PeImage))):
            continue
        f = enclosing(n, FfsFile)
        kind = "module" if isinstance(n, PeImage) else n.kind
        reason = "; ".join(p.message for p in n.problems)
        out.append(
            {
                "kind": kind,
                "name": getattr(f, "ui_name", None) if isinstance(f, FfsFile) else None,
                "guid": f.guid if isinstance(f, FfsFile) else getattr(n, "name_guid", None),
                "volume": volume_path(n),
                "where": n.problems[0].where,
                "fd_offset": n.abs_offset,
                "reason": f"{reason}: {lost}" if lost else reason,
            }
        )
    return out


def extraction(root: FlashImage) -> tuple[list[tuple[str, Node]], dict]:
    """What `extract` writes for `root`: the files, each as (file name, the node whose bytes it
    holds), in order, and the body of the manifest that lists them (its header is added by
    `report.extraction`).

    Modules are NAME_GUID.efi|.te, the reset vector ResetVector_GUID.bin (a repeated name gets
    _2, _3, ...). Damaged modules, and damaged containers whose contents could not be read, are
    not written: the manifest lists them under `skipped` (see `unextracted`)."""
    used: set[str] = set()
    files: list[tuple[str, Node]] = []
    entries = []

    def put(stem: str, ext: str, node: Node) -> str:
        name, i = f"{stem}{ext}", 2
        while name in used:
            name, i = f"{stem}_{i}{ext}", i + 1
        used.add(name)
        files.append((name, node))
        return name

    skipped = unextracted(root)
    for m in iter_modules(root):
        if m.image.problems:
            continue  # listed in skipped
        ext = ".te" if m.image.format == "TE" else ".efi"
        fname = put(f"{_SAFE.sub('_', m.name)}_{m.guid}", ext, m.image)
        entries.append({"file": fname, "sha256": hashlib.sha256(m.image.raw).hexdigest(), **m.as_dict()})
    blobs = []
    for b in iter_code_blobs(root):
        f = b.parent
        fname = put(f"ResetVector_{getattr(f, 'guid', 'blob')}", ".bin", b)
        blobs.append(
            {
                "file": fname,
                "sha256": hashlib.sha256(b.data).hexdigest(),
                "fd_offset": b.abs_offset,
                "size": b.size,
                **summary(b),
            }
        )
    manifest = {  # its document header is added by report.extraction
        "modules": entries,
        "code_blobs": blobs,
        "skipped": skipped,
    }
    return files, manifest


def write_extraction(root: FlashImage, out_dir: str, manifest: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Write the files `extraction` lists into `out_dir` (created; must not exist or be empty),
    with manifest.json, the text `manifest` makes of the extraction's document (report.extraction).
    Everything is written into a temporary sibling directory first and renamed into place, so a
    failure leaves no partial output. Returns the document."""
    check_output_dir(out_dir)
    tmp = new_output_dir(out_dir)
    try:
        files, body = extraction(root)
        for name, node in files:
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(node.data)
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            fh.write(manifest(body))
        commit_output_dir(tmp, out_dir)
    except BaseException:
        discard_output_dir(tmp)
        raise
    return body
