"""Entry point of the image model: read a flash image into a tree in two passes.

Pass 1 parses structure (volumes, files, sections, images) and records damage where it is
found. Pass 2 (`fixups.resolve`) derives what needs the whole tree: UI names on files, volume
paths, load addresses.

This module is the dispatcher: it imports every object's file and gives each object parser,
through `Parse` (a `context.ParseContext`), the parsers of what the object contains. The object
files import no other object's parser, so the model has no import circle.
"""

from __future__ import annotations

import hashlib
import os

from ovmftool.errors import ImageError, LimitExceeded, NothingToCheck, NoVolume
from ovmftool.model import structs as S
from ovmftool.model.binary import BinaryFile, looks_like_binary, parse_binary
from ovmftool.model.blob import CodeBlob
from ovmftool.model.context import ParseContext
from ovmftool.model.ffs import parse_files
from ovmftool.model.fixups import resolve
from ovmftool.model.flash import FlashImage, parse_flash_contents
from ovmftool.model.gap import Gap, elf_machine
from ovmftool.model.limits import Limits
from ovmftool.model.node import Node, Space, walk
from ovmftool.model.pe import PeImage, parse_image
from ovmftool.model.section import parse_sections
from ovmftool.model.volume import Volume, has_volume, parse_volume

MAX_IMAGE_SIZE = 256 << 20


class Parse(ParseContext):
    """One parse of a flash image: the context every object parser is given, dispatching what a
    container holds to the parser of that object."""

    def volume(self, space: Space, off: int, limit: int, parent: Node | None) -> Volume:
        return parse_volume(self, space, off, limit, parent)

    def files(self, vol: Node) -> None:
        assert isinstance(vol, Volume)
        parse_files(self, vol)

    def sections(self, parent: Node, space: Space, start: int, end: int) -> None:
        parse_sections(self, parent, space, start, end)

    def image(self, space: Space, off: int, end: int, parent: Node) -> PeImage:
        return parse_image(space, off, end, parent, self.limits)

    def reset_vector(self, space: Space, off: int, size: int, parent: Node) -> CodeBlob:
        return CodeBlob.reset_vector(space, off, size, parent)


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
        root = parse_flash(data, path, limits)
    except LimitExceeded as e:  # a cap hit deep in the parse: say which input, as every other error does
        raise LimitExceeded(f"{path}: {e}") from None
    foreign = None if isinstance(root, BinaryFile) else foreign_machine(root)  # a module: scan names its machine
    if foreign:
        raise NothingToCheck(f"{path}: not x86: {foreign}; ovmftool reads x86 (IA32/X64) firmware")
    return root


def foreign_machine(root: FlashImage) -> str | None:
    """What the image is built for when that is not x86: every PE/TE module's machine is another
    (AArch64, RISC-V, LoongArch, ARM...), or the ELF header before its volume names another.
    None for x86 images, mixed ones and images without modules (other rules judge those)."""
    machines: dict[str, int] = {}
    for n in walk(root):
        if isinstance(n, PeImage) and n.format:
            machines[n.machine] = machines.get(n.machine, 0) + 1
    elf = next((c.elf_machine for c in root.children if isinstance(c, Gap) and c.elf_machine), None)
    if elf is not None and elf not in S.X86_MACHINES:
        return f"{elf} firmware (its ELF header's machine)"
    if not machines or any(m in S.X86_MACHINES for m in machines):
        return None
    named = ", ".join(f"{k} ({v} module{'s' * (v != 1)})" for k, v in sorted(machines.items(), key=lambda x: -x[1]))
    return f"{max(machines, key=lambda k: machines[k])} firmware: its modules are {named}"


def parse_flash(
    data: bytes, path: str = "", limits: Limits | None = None, known: dict[tuple[object, bytes], bytes] | None = None
) -> FlashImage:
    """Parse the bytes of a flash image (pass 1, then the fix-ups of pass 2). Bytes that start
    with MZ/VZ and hold no firmware volume are a standalone PE/TE file (`model.binary`).
    `known`: sections' decoded bytes already proven (`ParseContext.known`)."""
    if not data:
        raise ImageError(f"{path or 'input'} is empty")
    if looks_like_binary(data) and not has_volume(data):
        return parse_binary(data, path)
    space = Space(data, 0, os.path.basename(path) or "image")
    root = FlashImage(space, 0, len(data), None)
    root.path, root.sha256 = path, hashlib.sha256(data).hexdigest()
    parse_flash_contents(Parse(limits or Limits(), known=known or {}), root)
    if not any(isinstance(c, Volume) for c in root.children):
        elf = elf_machine(data)
        if elf is not None and elf not in S.X86_MACHINES:
            raise NothingToCheck(f"{path or 'input'}: not x86: an ELF executable for {elf}, not a UEFI flash image")
        raise NoVolume(
            f"{path or 'input'} holds no firmware volume (no _FVH signature) and is not a PE32/TE "
            "image: not a flash image or UEFI binary"
        )
    resolve(root)
    return root
