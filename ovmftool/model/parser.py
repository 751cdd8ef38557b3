"""Entry point of the image model: read a flash image into a tree in two passes.

Pass 1 parses structure (volumes, files, sections, images) and records damage where it is
found. Pass 2 (`fixups.resolve`) derives what needs the whole tree: UI names on files, volume
paths, load addresses.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field

from ovmftool.errors import ImageError, LimitExceeded
from ovmftool.model.limits import Limits
from ovmftool.model.node import Node, Space
from ovmftool.model.volume import Volume, looks_like_volume, parse_volume
from ovmftool.model import structs as S

MAX_IMAGE_SIZE = 256 << 20
FLASH_BLOCK = 0x1000


@dataclass(eq=False, repr=False)
class FlashImage(Node):
    """The root: a flash device image. Children are its volumes and the gaps between them."""

    path: str = ""
    sha256: str = ""

    kind = "flash"

    def label(self) -> str:
        return f"flash {os.path.basename(self.path) or '<bytes>'} ({self.size} bytes)"

    def summary(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(eq=False, repr=False)
class Gap(Node):
    """Bytes between volumes that belong to no volume."""

    erased: bool = True

    kind = "gap"

    def label(self) -> str:
        return "gap (erased)" if self.erased else "gap (data)"

    def summary(self) -> dict:
        return {"erased": self.erased}


@dataclass
class ParseContext:
    """State shared by one parse: limits and the nesting stack (for depth and error places)."""

    limits: Limits = field(default_factory=Limits)
    stack: list[tuple[Node, Space, int]] = field(default_factory=list)

    def enter(self, node: Node, space: Space, off: int) -> None:
        """Descend into `node`'s contents; enforces the depth cap."""
        self.stack.append((node, space, off))
        self.limits.check_depth(len(self.stack), self.where(space, off))

    def leave(self) -> None:
        """Return from the innermost container."""
        self.stack.pop()

    @staticmethod
    def where(space: Space, off: int) -> str:
        """A place for error messages: absolute offset, or decoded space label and offset."""
        a = space.abs(off)
        return f"0x{a:X}" if a is not None else f"{space.label}+0x{off:X}"

    @staticmethod
    def space_label(node: Node) -> str:
        """Label for a decoded space produced by `node`: the volume path down to it."""
        parts = []
        for n in [node, *node.ancestors()]:
            if isinstance(n, Volume):
                parts.append(n.name or f"FV@{ParseContext.where(n.space, n.offset)}")
                break
        comp = getattr(node, "compression", None)
        parts.insert(0, comp or "decoded")
        return "/".join(reversed(parts))


def read_image(path: str, limits: Limits | None = None) -> FlashImage:
    """Read and parse a flash image file, or a standalone PE32/PE32+/TE file (then the root is a
    `model.binary.BinaryFile`). Raises ImageError for anything that is neither."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    if not os.path.isfile(path):
        raise ImageError(f"{path} is not a regular file")
    if st.st_size > MAX_IMAGE_SIZE:
        raise ImageError(f"{path} is {st.st_size} bytes, larger than any flash image ({MAX_IMAGE_SIZE})")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    try:
        return parse_flash(data, path, limits)
    except LimitExceeded as e:  # a cap hit deep in the parse: say which input, as every other error does
        raise LimitExceeded(f"{path}: {e}") from None


def parse_flash(data: bytes, path: str = "", limits: Limits | None = None) -> FlashImage:
    """Parse the bytes of a flash image (pass 1, then the fix-ups of pass 2). Bytes that start
    with MZ/VZ and hold no firmware volume are a standalone PE/TE file (`model.binary`)."""
    from ovmftool.model.binary import looks_like_binary, parse_binary
    from ovmftool.model.fixups import resolve

    if not data:
        raise ImageError(f"{path or 'input'} is empty")
    if looks_like_binary(data) and not _has_volume(data):
        return parse_binary(data, path)
    space = Space(data, 0, os.path.basename(path) or "image")
    root = FlashImage(space, 0, len(data), None)
    root.path, root.sha256 = path, hashlib.sha256(data).hexdigest()
    ctx = ParseContext(limits or Limits())
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
            _gap(root, pos, start)
        vol = parse_volume(ctx, space, start, len(data), root)
        root.children.append(vol)
        pos = vol.end if vol.size > 0 else start + 1
    if not any(isinstance(c, Volume) for c in root.children):
        raise ImageError(f"{path or 'input'} holds no firmware volume (no _FVH signature) and is not a PE32/TE "
                         "image: not a flash image or UEFI binary")
    if pos < len(data):
        _gap(root, pos, len(data))
    if len(data) % FLASH_BLOCK:
        root.damage(f"image size 0x{len(data):X} is not a multiple of the 4 KiB flash block (truncated?)", len(data))
    resolve(root)
    return root


def _has_volume(data: bytes) -> bool:
    """Some offset of `data` holds a firmware volume header whose checksum holds (stricter than
    the parse's cheap test: a PE's code can hold the bytes `_FVH`, e.g. DxeCore comparing them)."""
    pos = 0
    while True:
        hit = data.find(S.FV_SIGNATURE, pos + S.FV_SIGNATURE_OFFSET)
        if hit < 0:
            return False
        start = hit - S.FV_SIGNATURE_OFFSET
        if start % 8 == 0 and looks_like_volume(data, start):
            hlen = int.from_bytes(data[start + 48 : start + 50], "little")
            hdr = data[start : start + hlen]
            if len(hdr) == hlen and hlen % 2 == 0 and sum(struct.unpack(f"<{hlen // 2}H", hdr)) & 0xFFFF == 0:
                return True
        pos = start + 1


def _gap(root: FlashImage, start: int, end: int) -> None:
    chunk = root.space.data[start:end]
    g = Gap(root.space, start, end - start, root)
    g.erased = chunk.count(0xFF) == len(chunk) or chunk.count(0) == len(chunk)
    if not g.erased:
        g.damage(f"0x{end - start:X} bytes outside any volume are not erased")
    root.children.append(g)
