"""A flash device image: the root of the model. Its children are its volumes and the gaps
between them, in flash order."""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.model import structs as S
from ovmftool.model.context import ParseContext
from ovmftool.model.gap import parse_gap
from ovmftool.model.node import Node
from ovmftool.model.volume import looks_like_volume

FLASH_BLOCK = 0x1000


@dataclass(eq=False, repr=False)
class FlashImage(Node):
    """The root: a flash device image. Children are its volumes and the gaps between them."""

    path: str = ""
    sha256: str = ""

    kind = "flash"


def parse_flash_contents(ctx: ParseContext, root: FlashImage) -> None:
    """Find the volumes of `root` (an 8-aligned header that looks like one), parse each, and
    record the bytes between them as gaps; a size that is no multiple of the flash block is
    damage (a truncated image)."""
    data = root.space.data
    pos = 0
    while True:
        hit = data.find(S.FV_SIGNATURE, pos + S.FV_SIGNATURE_OFFSET)
        if hit < 0:
            break
        start = hit - S.FV_SIGNATURE_OFFSET
        if start % 8 or not looks_like_volume(data, start):
            pos = start + 1
            continue
        if start > pos:
            root.children.append(parse_gap(root, pos, start))
        vol = ctx.volume(root.space, start, len(data), root)
        root.children.append(vol)
        pos = vol.end if vol.size > 0 else start + 1
    if pos < len(data):
        root.children.append(parse_gap(root, pos, len(data)))
    if len(data) % FLASH_BLOCK:
        root.damage(f"image size 0x{len(data):X} is not a multiple of the 4 KiB flash block (truncated?)", len(data))
