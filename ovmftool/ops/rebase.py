"""Rebase an execute-in-place image, as GenFv does when it places SEC and PEI modules."""

from __future__ import annotations

import struct

from ovmftool.errors import OvmfToolError
from ovmftool.model import structs as S
from ovmftool.model.pe import PeImage, optional_header


def rebase(data: bytes, img: PeImage, delta: int) -> bytes:
    """`data` (the bytes of `img`, possibly grown at its end) moved by `delta`: every base
    relocation of `img` and its ImageBase shifted by `delta`."""
    raw = bytearray(data)
    for rva, t in img.relocations:
        off = img.rva_to_offset(rva)
        if off is None:
            continue
        if t == S.REL_BASED_DIR64:
            v = struct.unpack_from("<Q", raw, off)[0]
            struct.pack_into("<Q", raw, off, (v + delta) & 0xFFFFFFFFFFFFFFFF)
        elif t == S.REL_BASED_HIGHLOW:
            v = struct.unpack_from("<I", raw, off)[0]
            struct.pack_into("<I", raw, off, (v + delta) & 0xFFFFFFFF)
        else:
            raise OvmfToolError(f"relocation type {t} cannot be rebased")
    if img.format == "TE":
        S.TE_IMAGE_BASE.put(raw, 0, (img.image_base + delta) & 0xFFFFFFFFFFFFFFFF)
    else:
        wide = img.format == "PE32+"
        mask = 0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF
        S.OPT_IMAGE_BASE["PE32+" if wide else "PE32"].put(raw, optional_header(raw)[1], (img.image_base + delta) & mask)
    return bytes(raw)
