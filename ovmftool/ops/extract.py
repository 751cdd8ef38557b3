"""`extract`: write every module as NAME_GUID.efi|.te plus manifest.json, atomically."""

from __future__ import annotations

import hashlib
import json
import os
import re

from ovmftool import __version__
from ovmftool.model.ffs import FfsFile
from ovmftool.model.fixups import enclosing, volume_path
from ovmftool.model.node import Node, walk
from ovmftool.model.parser import FlashImage
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.structs import SECTIONED_FILE_TYPES
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_code_blobs, iter_modules
from ovmftool.report.io import check_output_dir, commit_output_dir, discard_output_dir, new_output_dir

EXTRACT_SCHEMA = "ovmftool.extract/1"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTAINER_SECTIONS = {0x01, 0x02, 0x10, 0x11, 0x12, 0x17}  # compression, GUID-defined, PE32, PIC, TE, FV image


def extract(root: FlashImage, out_dir: str) -> dict:
    """Write the modules of `root` into `out_dir` (created; must not exist or be empty).

    Everything is written into a temporary sibling directory first and renamed into place, so
    a failure leaves no partial output. Damaged modules, and damaged containers whose contents
    could not be read, are not written: the manifest lists them under `skipped` (see
    `unextracted`). Returns the manifest.
    """
    check_output_dir(out_dir)
    tmp = new_output_dir(out_dir)
    try:
        manifest = _write(root, tmp)
        commit_output_dir(tmp, out_dir)
    except BaseException:
        discard_output_dir(tmp)
        raise
    return manifest


def _holds_modules(n: Node) -> bool:
    """Whether `n` is a kind of node that modules (or the reset vector) can be read from."""
    if isinstance(n, (Volume, PeImage)):
        return True
    if isinstance(n, FfsFile):
        return n.type in SECTIONED_FILE_TYPES or n.type == 0x01
    return isinstance(n, Section) and n.type in _CONTAINER_SECTIONS


def _place(n: Node, off: int) -> str:
    a = n.space.abs(off)
    return f"0x{a:X}" if a is not None else f"{n.space.label}+0x{off:X}"


def _lost(n: Node) -> str | None:
    """What `n`'s damage loses beyond `n` itself, or None when nothing else is lost: the bytes a
    volume's header claims past the end of the file (or of its container), or everything after
    a file or section whose header is unusable (its size is unknown, so nothing after it in its
    container can be located)."""
    if isinstance(n, Volume) and n.fv_length > n.size:
        missing = n.fv_length - n.size
        return (f"truncated: the volume header says 0x{n.fv_length:X} bytes and 0x{n.size:X} are present; the "
                f"missing 0x{missing:X} bytes from {_place(n, n.end)} on are lost with whatever they held (the rest "
                f"of this volume's files{', and any volume after it' if isinstance(n.parent, FlashImage) else ''})")
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
        out.append({
            "kind": kind,
            "name": getattr(f, "ui_name", None) if isinstance(f, FfsFile) else None,
            "guid": f.guid if isinstance(f, FfsFile) else getattr(n, "name_guid", None),
            "volume": volume_path(n),
            "where": n.problems[0].where,
            "fd_offset": n.abs_offset,
            "reason": f"{reason}: {lost}" if lost else reason,
        })
    return out


def _write(root: FlashImage, tmp: str) -> dict:
    used: set[str] = set()
    entries = []

    def put(stem: str, ext: str, data: bytes) -> str:
        name, i = f"{stem}{ext}", 2
        while name in used:
            name, i = f"{stem}_{i}{ext}", i + 1
        used.add(name)
        with open(os.path.join(tmp, name), "wb") as fh:
            fh.write(data)
        return name

    skipped = unextracted(root)
    for m in iter_modules(root):
        if m.image.problems:
            continue  # listed in skipped
        ext = ".te" if m.image.format == "TE" else ".efi"
        data = m.image.raw
        fname = put(f"{_SAFE.sub('_', m.name)}_{m.guid}", ext, data)
        entries.append({"file": fname, "sha256": hashlib.sha256(data).hexdigest(), **m.as_dict()})
    blobs = []
    for b in iter_code_blobs(root):
        f = b.parent
        data = b.data
        fname = put(f"ResetVector_{getattr(f, 'guid', 'blob')}", ".bin", data)
        blobs.append({"file": fname, "sha256": hashlib.sha256(data).hexdigest(), "fd_offset": b.abs_offset,
                      "size": b.size, **b.summary()})
    manifest = {
        "schema_version": EXTRACT_SCHEMA,
        "tool": {"name": "ovmftool", "version": __version__},
        "image": {"path": root.path, "sha256": root.sha256, "size": root.size},
        "modules": entries,
        "code_blobs": blobs,
        "skipped": skipped,
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return manifest
