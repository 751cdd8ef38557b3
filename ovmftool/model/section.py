"""Sections (PI vol. 3, 2.2.4): leaf sections and encapsulations (compression, GUID-defined,
firmware volume images), nested to any depth within the parse limits."""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.errors import DecodeError, ImageError, printable
from ovmftool.model import codecs
from ovmftool.model import structs as S
from ovmftool.model.context import ParseContext
from ovmftool.model.node import Node, Space
from ovmftool.model.volume import Volume, looks_like_volume


@dataclass(eq=False, repr=False)
class Section(Node):
    """One section. `header_size` covers the common and the type-specific header.

    Encapsulating sections have children: sections (or a volume for FV image sections) that
    live either in the same space (no compression, CRC32) or in a space of decoded bytes.
    """

    type: int = 0
    header_size: int = 0
    # type-specific
    guid: str | None = None  # GUID_DEFINED definition GUID, FREEFORM_SUBTYPE_GUID subtype
    guided_attributes: int = 0
    compression: str | None = None  # NONE, EFI, LZMA, LZMAF86, TIANO, BROTLI, CRC32 or a GUID
    decoded: Space | None = None  # the space children live in when the data was decoded
    text: str | None = None  # UI name or version string
    build_number: int | None = None
    crc_ok: bool | None = None

    kind = "section"

    @property
    def type_name(self) -> str:
        """Spec name of the section type."""
        return S.SECTION_TYPES.get(self.type, f"0x{self.type:02X}")

    @property
    def data_offset(self) -> int:
        """Offset of the section body in the space."""
        return self.offset + self.header_size

    @property
    def body(self) -> bytes:
        """Section data without its header(s)."""
        return self.space.data[self.data_offset : self.end]


def parse_sections(ctx: ParseContext, parent: Node, space: Space, start: int, end: int) -> None:
    """Parse the sections in `space[start:end]` as children of `parent`."""
    data = space.data
    ctx.enter(parent, space, start)
    try:
        pos = start
        while pos + S.SECTION_HEADER.size <= end:
            size3, stype = S.SECTION_HEADER.unpack_from(data, pos)
            size, hsize = S.u24(size3), S.SECTION_HEADER.size
            sec = Section(space, pos, 0, parent)
            sec.type = stype
            parent.children.append(sec)
            ctx.limits.charge_node(space.place(pos))
            if size == S.SECTION_EXTENDED:
                if pos + S.SECTION_HEADER2_SIZE > end:
                    sec.damage("extended section header runs past its container")
                    return
                size, hsize = S.SECTION_EXTENDED_SIZE.get(data, pos), S.SECTION_HEADER2_SIZE
            if size < hsize:
                sec.damage(f"section size 0x{size:X} is smaller than its header")
                return
            if pos + size > end:
                sec.damage(f"section size 0x{size:X} runs past its container (0x{end - pos:X} bytes left)")
                return
            sec.size, sec.header_size = size, hsize
            _parse_body(ctx, sec)
            pos += size
            pos += (-(pos - start)) % S.SECTION_ALIGNMENT
        # fewer than 4 bytes can remain: alignment padding of the container
    finally:
        ctx.leave()


def _parse_body(ctx: ParseContext, sec: Section) -> None:
    data, space = sec.space.data, sec.space
    t = sec.type
    hs = sec.offset + sec.header_size
    if t == S.EFI_SECTION_COMPRESSION:
        if sec.size < sec.header_size + S.SECTION_COMPRESSION.size:
            sec.damage("compression section shorter than its header")
            return
        ulen, ctype = S.SECTION_COMPRESSION.unpack_from(data, hs)
        sec.header_size += S.SECTION_COMPRESSION.size
        sec.compression = S.COMPRESSION_TYPES.get(ctype, f"0x{ctype:02X}")
        if ctype == 0:
            parse_sections(ctx, sec, space, sec.data_offset, sec.end)
        elif ctype in codecs.COMPRESSION_DECODERS:
            _decode_into(ctx, sec, codecs.COMPRESSION_DECODERS[ctype], expect=ulen)
        else:
            sec.damage(f"unknown compression type 0x{ctype:02X}")
    elif t == S.EFI_SECTION_GUID_DEFINED:
        if sec.size < sec.header_size + S.SECTION_GUID_DEFINED.size:
            sec.damage("GUID-defined section shorter than its header")
            return
        g, doff, attrs = S.SECTION_GUID_DEFINED.unpack_from(data, hs)
        sec.guid, sec.guided_attributes = S.guid_str(g), attrs
        min_hdr = sec.header_size + S.SECTION_GUID_DEFINED.size
        if doff < min_hdr or doff > sec.size:
            sec.damage(f"GUID-defined data offset 0x{doff:X} is out of range")
            return
        sec.header_size = doff
        sec.compression = S.GUIDED_NAMES.get(sec.guid, sec.guid)
        if sec.guid == S.CRC32_GUID:
            stored = S.SECTION_CRC32.get(data, hs) if doff >= hs - sec.offset + S.SECTION_CRC32.end else None
            sec.crc_ok = stored is not None and stored == codecs.crc32(sec.body)
            if not sec.crc_ok:
                sec.damage("CRC32 of GUID-defined section data does not match")
            parse_sections(ctx, sec, space, sec.data_offset, sec.end)
        elif sec.guid in codecs.GUIDED_DECODERS:
            _decode_into(ctx, sec, codecs.GUIDED_DECODERS[sec.guid])
        elif not attrs & S.EFI_GUIDED_SECTION_PROCESSING_REQUIRED:
            parse_sections(ctx, sec, space, sec.data_offset, sec.end)
        # else: an unknown transformation; the data stays opaque
    elif t == S.EFI_SECTION_FIRMWARE_VOLUME_IMAGE:
        if looks_like_volume(data, hs):
            ctx.enter(sec, space, hs)
            try:
                sec.children.append(ctx.volume(space, hs, sec.end, sec))
            finally:
                ctx.leave()
        else:
            sec.damage("firmware volume image section holds no volume header", hs)
    elif t in S.IMAGE_SECTION_TYPES:  # PE32, PIC, TE
        if sec.end > hs:  # an empty one is a placeholder (AmdSev's Grub file before grub.efi is put in)
            sec.children.append(ctx.image(space, hs, sec.end, sec))
    elif t == S.EFI_SECTION_USER_INTERFACE:
        sec.text = _ucs2(data[hs : sec.end])
    elif t == S.EFI_SECTION_VERSION:
        if sec.size >= sec.header_size + 2:
            sec.build_number = S.SECTION_VERSION.unpack_from(data, hs)[0]
            sec.text = _ucs2(data[hs + 2 : sec.end])
    elif t == S.EFI_SECTION_FREEFORM_SUBTYPE_GUID:
        n = S.SECTION_FREEFORM_SUBTYPE_GUID_SIZE
        if sec.size >= sec.header_size + n:
            sec.guid = S.guid_str(data[hs : hs + n])
            sec.header_size += n


def _decode_into(ctx: ParseContext, sec: Section, decoder: codecs.Decoder, expect: int | None = None) -> None:
    where = sec.place
    body = sec.body
    try:
        out = ctx.known.get((decoder, body)) if ctx.known else None
        if out is None:
            out = decoder(body, ctx.limits, where)
    except DecodeError as e:
        sec.damage(str(e).removesuffix(f" at {where}"))
        return
    except ImageError:
        raise  # limits: the whole parse stops
    if expect is not None and expect != len(out):
        sec.damage(f"decoded {len(out)} bytes, section header says {expect}")
    sec.decoded = Space(out, None, _space_label(sec), sec)
    parse_sections(ctx, sec, sec.decoded, 0, len(out))


def _space_label(sec: Section) -> str:
    """Label of the decoded space `sec` produces: the enclosing volume and the encoding, e.g.
    `FVMAIN_COMPACT/LZMA` (names are not resolved yet in pass 1: an unknown volume is `FV@place`)."""
    parts = []
    for n in [sec, *sec.ancestors()]:
        if isinstance(n, Volume):
            parts.append(n.name or f"FV@{n.place}")
            break
    parts.insert(0, sec.compression or "decoded")
    return "/".join(reversed(parts))


MAX_TEXT = 128  # characters kept of a UI name or version string (EDK II's are module base names)


def _ucs2(raw: bytes) -> str:
    """A NUL-terminated UCS-2 string (UI name, version), made printable (`errors.printable`) and
    at most MAX_TEXT characters long (longer ends in "...": a name must fit in a file name)."""
    n = min(len(raw), 2 * MAX_TEXT + 2) & ~1
    s = printable(raw[:n].decode("utf-16-le", errors="replace").split("\0", 1)[0])
    return s[:MAX_TEXT] + "..." if len(s) > MAX_TEXT else s
