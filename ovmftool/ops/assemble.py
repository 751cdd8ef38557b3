"""Assemble a flash image from the model, with byte edits applied to modules.

Only what an edit touches is rebuilt: the edited (or replaced, e.g. grown) image, the sections
and files that hold it (sizes, CRC32, header and data checksums), the compressed sections above
it (re-encoded), and the volumes whose files changed size (files keep their places where they
can, otherwise move to the next aligned slot; filler pad files are made anew; free space shrinks
or grows). Every other node is copied byte for byte, so assembling with no edits reproduces the
input exactly.

`force=True` rebuilds every container from its children even without edits (compressed
sections keep their stream when the decoded bytes come out unchanged): a self-check of the
layout rules against the input.

Execute-in-place modules (SEC, PEI core, PEIMs) carry their load address: one that moves is
rebased (relocations and ImageBase shifted by the move, as GenFv does). The volume top file
(reset vector) must end its volume: if it would move, assembly fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.errors import OvmfToolError
from ovmftool.model import codecs, encoders
from ovmftool.model import structs as S
from ovmftool.model.binary import BinaryFile
from ovmftool.model.checksums import ffs_data_checksum, ffs_header_sum
from ovmftool.model.ffs import RESET_VECTOR_GUID, FfsFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Node, walk
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from ovmftool.ops.rebase import rebase

XIP_FILE_TYPES = frozenset(
    {S.FV_FILETYPE_SECURITY_CORE, S.FV_FILETYPE_PEI_CORE, S.FV_FILETYPE_PEIM, S.FV_FILETYPE_COMBINED_PEIM_DRIVER}
)


class AssemblyError(OvmfToolError):
    """The edited image cannot be assembled (no room, a module that must not move...)."""


class VolumeFull(AssemblyError):
    """A volume's files no longer fit."""


@dataclass(frozen=True)
class Edit:
    """Replace `old` with `new` (same length) at `offset` within `image`'s bytes."""

    image: PeImage
    offset: int
    old: bytes
    new: bytes


@dataclass(frozen=True)
class Replace:
    """Replace the whole of `image` with `data` (any length: a grown module)."""

    image: PeImage
    data: bytes


def _align(n: int, a: int) -> int:
    return n + (-n) % a


class Assembler:
    """One assembly of `root` with `edits`; `effort` picks the LZMA encoder effort."""

    def __init__(
        self, root: FlashImage, edits: list[Edit | Replace], effort: str = "fast", force: bool = False
    ) -> None:
        self.root = root
        self.effort = effort
        self.force = force
        self.by_image: dict[int, list[Edit]] = {}
        self.replaced: dict[int, bytes] = {}
        self.dirty: set[int] = set()
        self.reencoded: list[tuple[Section, int, int]] = []  # (section, old size, new size)
        self.proven: dict[
            tuple[object, bytes], bytes
        ] = {}  # (decoder, encoded body) -> decoded bytes, for parse_flash's `known`
        self.moved: list[tuple[str, int, int]] = []  # (file, old offset, new offset) within its volume
        self.rebased: list[tuple[str, int]] = []  # (module, delta)
        for e in edits:
            if isinstance(e, Replace):
                self.replaced[id(e.image)] = e.data
            else:
                if len(e.old) != len(e.new):
                    raise AssemblyError("an in-place edit must keep its length")
                at = e.image.offset + e.offset  # read in place: e.image.data would copy the image per edit
                cur = e.image.space.data[at : at + len(e.old)] if e.offset + len(e.old) <= e.image.size else b""
                if cur != e.old:
                    raise AssemblyError(f"edit at image offset 0x{e.offset:X} does not match the image's bytes")
                self.by_image.setdefault(id(e.image), []).append(e)
            n: Node | None = e.image
            while n is not None:
                self.dirty.add(id(n))
                n = n.parent if n.parent is not None else getattr(n.space, "origin", None)
        if force:
            self.dirty |= {id(n) for n in walk(root)}

    # --- entry ---------------------------------------------------------------------------

    def build(self) -> bytes:
        """The assembled image (same size as the input). A standalone PE/TE file is its one
        module's bytes, which may grow."""
        if isinstance(self.root, BinaryFile):
            return self._render(self.root.image)
        out = self._render(self.root)
        if len(out) != self.root.size:
            raise AssemblyError(f"assembled image is {len(out)} bytes, input is {self.root.size}")
        return out

    # --- rendering -----------------------------------------------------------------------

    def _render(self, n: Node) -> bytes:
        if id(n) not in self.dirty:
            return n.data
        if isinstance(n, PeImage):
            return self._image(n)
        if isinstance(n, Section):
            return self._section(n)
        if isinstance(n, FfsFile):
            return self._file(n)
        if isinstance(n, Volume):
            return self._volume(n)
        if isinstance(n, FlashImage):
            return b"".join(self._render(c) for c in n.children)
        return n.data  # gaps, code blobs: never edited

    def _image(self, img: PeImage) -> bytes:
        b = bytearray(self.replaced.get(id(img), img.data))
        for e in self.by_image.get(id(img), ()):
            b[e.offset : e.offset + len(e.new)] = e.new
        return bytes(b)

    def _sequence(self, children: list[Node], start: int, end: int, data: bytes) -> bytes:
        """Children laid out from `start`, each 4-aligned relative to `start`; original padding
        bytes are kept where the layout did not move."""
        out = bytearray()
        for c in children:
            pad = (-len(out)) % S.SECTION_ALIGNMENT
            orig_gap = data[start + len(out) : c.offset] if start + len(out) + pad == c.offset else None
            out += orig_gap if orig_gap is not None else b"\0" * pad
            out += self._render(c)
        last_end = children[-1].end if children else start
        if start + len(out) == last_end:
            out += data[last_end:end]  # trailing bytes of the container, unmoved
        return bytes(out)

    def _section(self, sec: Section) -> bytes:
        data = sec.space.data
        header = bytearray(data[sec.offset : sec.data_offset])
        extended = data[sec.offset : sec.offset + S.SECTION_SIZE_LENGTH] == S.SECTION_EXTENDED.to_bytes(
            S.SECTION_SIZE_LENGTH, "little"
        )
        common = S.SECTION_HEADER2_SIZE if extended else S.SECTION_HEADER.size  # the type-specific header's start
        if sec.decoded is not None:
            dec = sec.decoded
            new_dec = self._sequence(sec.children, 0, len(dec.data), dec.data)
            if new_dec == dec.data:
                body = sec.body
            else:
                body = self._encode(sec, new_dec)
                if sec.type == S.EFI_SECTION_COMPRESSION:
                    S.SECTION_UNCOMPRESSED_LENGTH.put(header, common, len(new_dec))
        elif sec.type == S.EFI_SECTION_FIRMWARE_VOLUME_IMAGE and sec.children:
            vol = sec.children[0]
            body = self._render(vol) + data[vol.end : sec.end]
        elif sec.type in S.IMAGE_SECTION_TYPES and sec.children:  # PE32, PIC, TE
            img = sec.children[0]
            body = self._render(img) + data[img.end : sec.end]
        elif sec.children:  # COMPRESSION(none), CRC32, GUIDed without processing
            body = self._sequence(sec.children, sec.data_offset, sec.end, data)
        else:
            body = sec.body
        if sec.guid == S.CRC32_GUID and sec.type == S.EFI_SECTION_GUID_DEFINED:
            S.SECTION_CRC32.put(header, common, codecs.crc32(body))
        size = len(header) + len(body)
        if extended:
            S.SECTION_EXTENDED_SIZE.put(header, 0, size)
        elif size >= S.SECTION_EXTENDED:
            raise AssemblyError(f"section at {sec.space.label}+0x{sec.offset:X} grows past 16 MiB")
        else:
            header[0 : S.SECTION_SIZE_LENGTH] = size.to_bytes(S.SECTION_SIZE_LENGTH, "little")
        return bytes(header) + body

    def _encode(self, sec: Section, decoded: bytes) -> bytes:
        old = sec.body
        if sec.type == S.EFI_SECTION_COMPRESSION:
            enc, dec = encoders.COMPRESSION_ENCODERS.get(1), codecs.COMPRESSION_DECODERS.get(1)
        else:
            enc, dec = encoders.GUIDED_ENCODERS.get(sec.guid or ""), codecs.GUIDED_DECODERS.get(sec.guid or "")
        if enc is None:
            raise AssemblyError(f"cannot re-encode {sec.compression} section at {sec.space.label}+0x{sec.offset:X}")
        body = enc(decoded, old, self.effort)
        if enc in encoders.PROVEN and dec is not None:
            self.proven[(dec, body)] = decoded
        self.reencoded.append((sec, len(old), len(body)))
        return body

    def _file(self, f: FfsFile) -> bytes:
        data = f.space.data
        header = bytearray(data[f.offset : f.data_offset])
        if f.children and isinstance(f.children[0], Section):
            body = self._sequence(f.children, f.data_offset, f.end, data)
        else:
            body = f.body
        return _file_bytes(header, body, f.attributes, f.ui_name or f.guid)

    def _volume(self, vol: Volume) -> bytes:
        """Files in order. A file stays where it was when the files before it leave room (so
        execute-in-place modules and the volume top file keep their addresses); otherwise it
        moves to the first slot that keeps its data alignment. Gaps become pad files (the
        original pad's bytes where the gap is unchanged). Moved XIP modules are rebased."""
        data, erase = vol.space.data, vol.erase_byte
        files = [c for c in vol.children if isinstance(c, FfsFile)]
        first = files[0].offset if files else (vol.free.offset if vol.free else vol.end)
        out = bytearray(data[vol.offset : first])
        # pad files that only fill space are made anew where needed; pads that hold data (the
        # volume's extended header lives in one) are files like any other
        filler = {id(f) for f in files if f.is_pad and f.body.count(erase) == len(f.body)}
        pads = {f.offset - vol.offset: f for f in files if id(f) in filler}
        pad_state = next((f.state_raw for f in files if f.is_pad), None)
        for f in (f for f in files if id(f) not in filler):
            new = self._render(f)
            cur = _align(len(out), S.FFS_FILE_ALIGNMENT)
            orig = f.offset - vol.offset
            gap = orig - cur
            if gap == 0 or (gap >= S.FFS_HEADER.size and orig % S.FFS_FILE_ALIGNMENT == 0):
                pos = orig
            else:
                pos = self._slot(f, cur)
            out += bytes([erase]) * (cur - len(out))
            if pos > cur:
                old_pad = pads.get(cur)
                if old_pad is not None and old_pad.size == pos - cur and not self.force:
                    out += old_pad.data
                else:
                    out += _pad_file(pos - cur, erase, pad_state)
            if pos != orig:
                new = self._moved(vol, f, new, pos - orig)
            out += new
        end = _align(len(out), S.FFS_FILE_ALIGNMENT) if files else len(out)
        if end > vol.size:
            raise VolumeFull(
                f"volume {vol.name or hex(vol.offset)} needs 0x{end - vol.size:X} more bytes than it has "
                f"(0x{vol.size:X})"
            )
        out += bytes([erase]) * (vol.size - len(out))
        return bytes(out)

    def _slot(self, f: FfsFile, cur: int) -> int:
        """The first position at or after `cur` where `f`'s data is aligned and the gap before it
        is empty or can hold a pad file."""
        a = max(f.alignment, S.FFS_FILE_ALIGNMENT)
        pos = cur
        while True:
            if (pos + f.header_size) % a == 0 and (pos == cur or pos - cur >= S.FFS_HEADER.size):
                return pos
            pos += S.FFS_FILE_ALIGNMENT

    def _moved(self, vol: Volume, f: FfsFile, rendered: bytes, delta: int) -> bytes:
        """A file that moves by `delta`: execute-in-place images inside it are rebased."""
        where = f.ui_name or f.guid
        self.moved.append((where, f.offset - vol.offset, f.offset - vol.offset + delta))
        if f.guid == RESET_VECTOR_GUID:  # the volume top file: it ends the volume
            raise AssemblyError(f"the volume top file would move in volume {vol.name or hex(vol.offset)}")
        if f.type not in XIP_FILE_TYPES:
            return rendered
        body = bytearray(rendered)
        for img in (n for n in walk(f) if isinstance(n, PeImage) and n.space is f.space and n.image_base):
            rel = img.offset - f.offset
            cur = bytes(body[rel : rel + 2])
            if cur not in (S.DOS_MAGIC, S.TE_MAGIC):
                raise AssemblyError(f"cannot locate execute-in-place module {where} to rebase it")
            size = len(self.replaced.get(id(img), img.data))  # edits keep the length
            try:
                body[rel : rel + size] = rebase(bytes(body[rel : rel + size]), img, delta)
            except OvmfToolError as e:
                raise AssemblyError(f"cannot rebase {where}: {e}") from None
            self.rebased.append((where, delta))
        hs = f.header_size
        return _file_bytes(bytearray(body[:hs]), bytes(body[hs:]), f.attributes, where)


def _pad_file(size: int, erase: int, state: int | None) -> bytes:
    """A pad file of `size` bytes (header included), as GenFv writes them."""
    header = bytearray(
        S.FFS_HEADER.pack(
            b"\xff" * 16,
            0,
            S.FFS_FIXED_CHECKSUM,
            S.FV_FILETYPE_FFS_PAD,
            0,
            size.to_bytes(S.FFS_SIZE_LENGTH, "little"),
            state if state is not None else (0xF8 if erase == 0xFF else 0x07),
        )
    )
    return _file_bytes(header, bytes([erase]) * (size - S.FFS_HEADER.size), 0, "pad file")


def _file_bytes(header: bytearray, body: bytes, attributes: int, name: str) -> bytes:
    """An FFS file's bytes with its size and both checksums made right."""
    size = len(header) + len(body)
    if len(header) == S.FFS_HEADER2_SIZE:
        S.FFS_EXTENDED_SIZE.put(header, 0, size)
    elif size >= 1 << (8 * S.FFS_SIZE_LENGTH):
        raise AssemblyError(f"file {name} grows past 16 MiB")
    else:
        header[S.FFS_SIZE : S.FFS_SIZE + S.FFS_SIZE_LENGTH] = size.to_bytes(S.FFS_SIZE_LENGTH, "little")
    state = header[S.FFS_STATE]
    header[S.FFS_HEADER_CHECKSUM] = 0
    if attributes & S.FFS_ATTRIB_CHECKSUM:
        header[S.FFS_FILE_CHECKSUM] = ffs_data_checksum(body)
    fsum = header[S.FFS_FILE_CHECKSUM]
    header[S.FFS_HEADER_CHECKSUM] = -ffs_header_sum(header, state, fsum) & 0xFF
    return bytes(header) + body


def assemble(root: FlashImage, edits: list[Edit | Replace], force: bool = False) -> tuple[bytes, Assembler]:
    """Assemble with the fastest LZMA effort whose output fits (encoders.LZMA_EFFORTS, fastest
    first, EDK II's own last); a volume that overflows even then fails (VolumeFull)."""
    efforts = list(encoders.LZMA_EFFORTS)
    for effort in efforts:
        a = Assembler(root, edits, effort, force)
        try:
            return a.build(), a
        except VolumeFull:
            if effort == efforts[-1] or not a.reencoded:
                raise
