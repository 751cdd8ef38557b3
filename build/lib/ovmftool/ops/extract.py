"""`extract`: write every module as NAME_GUID.efi|.te plus manifest.json, atomically."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile

from ovmftool import __version__
from ovmftool.errors import OvmfToolError
from ovmftool.model.parser import FlashImage
from ovmftool.ops.modules import iter_code_blobs, iter_modules

EXTRACT_SCHEMA = "ovmftool.extract/1"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def extract(root: FlashImage, out_dir: str) -> dict:
    """Write the modules of `root` into `out_dir` (created; must not exist or be empty).

    Everything is written into a temporary sibling directory first and renamed into place, so
    a failure leaves no partial output. Returns the manifest.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise OvmfToolError(f"output directory {out_dir} exists and is not empty")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise OvmfToolError(f"parent directory {parent} does not exist")
    tmp = tempfile.mkdtemp(prefix=".ovmftool-extract-", dir=parent)
    try:
        manifest = _write(root, tmp)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


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

    for m in iter_modules(root):
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
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return manifest
