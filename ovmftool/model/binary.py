"""A standalone UEFI binary as the root of the model.

Besides flash images, the tool reads a bare PE32/PE32+/TE file: a module extracted from an image
(`ovmftool extract` writes `NAME_GUID.efi` / `.te`), a driver or option ROM image copied from a
disk, a `.efi` build output. Its root is a `BinaryFile` whose one child is the `PeImage` spanning
the whole file, so every offset in it is a file offset (`abs_offset`, and so `fd_offset`, work as
for an image in an uncompressed flash volume). There is no FFS file: the module view takes its
name and GUID from the file (see `ops.modules`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from ovmftool.errors import ImageError, NothingToCheck
from ovmftool.model import structs as S
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Space
from ovmftool.model.pe import MAX_SECTIONS, PeImage, parse_image

NULL_GUID = "00000000-0000-0000-0000-000000000000"
# NAME_GUID.efi | NAME_GUID.te, as `extract` writes them (a repeated name gets _2, _3, ...), and
# names made from them (NAME_GUID.patched.efi)
_EXTRACTED = re.compile(
    r"^(?:(?P<name>.+?)_)?(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?:[._-][^/]*)?\.(?:efi|te|pe|bin)$",
    re.I,
)


def looks_like_binary(data: bytes) -> bool:
    """The file starts like a PE (MZ) or TE (VZ) image."""
    return data[:2] in (S.DOS_MAGIC, S.TE_MAGIC)


@dataclass(eq=False, repr=False)
class BinaryFile(FlashImage):
    """The root when the input is one PE32/PE32+/TE file: its only child is the `PeImage`.

    A kind of `FlashImage` so that everything that takes a parsed input (scan, patch, extract,
    info) takes this too; it has no volumes, gaps or code blobs."""

    guid: str = NULL_GUID  # from the file name when it is NAME_GUID.efi, else the null GUID
    file_name: str | None = None  # NAME of NAME_GUID.efi
    stem: str = ""  # the file name without its extension

    kind = "binary"

    @property
    def image(self) -> PeImage:
        """The module."""
        img = self.children[0]
        assert isinstance(img, PeImage)
        return img


def parse_binary(data: bytes, path: str = "") -> BinaryFile:
    """Parse a standalone PE32/PE32+/TE file. Raises ImageError when the headers are not a PE or
    TE image at all; damage found past that point (truncated headers or sections) is recorded."""
    what = path or "input"
    _check(data, what)
    base = os.path.basename(path)
    space = Space(data, 0, base or "binary")
    root = BinaryFile(space, 0, len(data), None)
    root.path, root.sha256 = path, hashlib.sha256(data).hexdigest()
    root.stem = os.path.splitext(base)[0]
    m = _EXTRACTED.match(base)
    if m:
        root.guid = m.group("guid").lower()
        root.file_name = m.group("name")
    img = parse_image(space, 0, len(data), root)
    if not img.problems and img.subsystem not in S.EFI_SUBSYSTEMS:
        kind = S.OTHER_SUBSYSTEMS.get(img.subsystem, "not a UEFI subsystem")
        raise NothingToCheck(
            f"{what} is not a UEFI module: its {img.format} header names subsystem {img.subsystem} "
            f"({kind}), not an EFI application or driver"
        )
    root.children.append(img)
    if not img.problems:
        if not img.sections:
            img.damage("image has no sections")
        elif img.format != "TE" and img.size_of_headers > len(data):
            img.damage(f"headers are 0x{img.size_of_headers:X} bytes, the file only 0x{len(data):X} (truncated)")
    return root


def _check(data: bytes, what: str) -> None:
    """Refuse, in one line, a file that starts with MZ/VZ but is no PE or TE image."""
    if data[:2] == S.DOS_MAGIC:
        if len(data) < S.DOS_HEADER_SIZE:
            raise ImageError(f"{what} is a truncated PE image: {len(data)} bytes, shorter than the DOS header")
        lfanew = S.DOS_E_LFANEW.get(data)
        if lfanew + len(S.PE_MAGIC) > len(data):
            raise ImageError(
                f"{what} holds no firmware volume and is not a PE image (or is truncated): e_lfanew "
                f"0x{lfanew:X} is past the end of its {len(data)} bytes"
            )
        if data[lfanew : lfanew + len(S.PE_MAGIC)] != S.PE_MAGIC:
            raise ImageError(
                f"{what} holds no firmware volume and is not a PE image: MZ header without a PE "
                f"signature at e_lfanew 0x{lfanew:X}"
            )
        opt = lfanew + len(S.PE_MAGIC) + S.COFF_HEADER.size
        if opt + S.OPT_MAGIC.end > len(data):
            raise ImageError(f"{what} is a truncated PE image: {len(data)} bytes, the COFF header is cut off")
        magic = S.OPT_MAGIC.get(data, opt)
        if magic not in (S.OPT_MAGIC_PE32, S.OPT_MAGIC_PE32_PLUS):
            raise ImageError(
                f"{what} holds no firmware volume and is not a PE32/PE32+ image: optional header magic 0x{magic:X}"
            )
    else:
        if len(data) < S.TE_HEADER.size:
            raise ImageError(f"{what} is a truncated TE image: {len(data)} bytes, shorter than the TE header")
        _sig, machine, nsec, _subsys, stripped = S.TE_HEADER.unpack_from(data, 0)[:5]
        if machine not in S.MACHINES or not 1 <= nsec <= MAX_SECTIONS or stripped < S.TE_HEADER.size:
            raise ImageError(
                f"{what} holds no firmware volume and is not a TE image: VZ header with machine "
                f"0x{machine:04X}, {nsec} sections, stripped size 0x{stripped:X}"
            )
