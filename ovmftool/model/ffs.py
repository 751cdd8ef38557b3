"""FFS files (PI vol. 3, 2.2.3): headers, large files, states, checksums, alignment, pad files."""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.model import structs as S
from ovmftool.model.checksums import ffs_data_checksum, ffs_header_sum
from ovmftool.model.context import ParseContext
from ovmftool.model.node import Node
from ovmftool.model.volume import FreeSpace, Volume

RESET_VECTOR_GUID = "1ba0062e-c779-4582-8566-336ae8f78f09"


@dataclass(eq=False, repr=False)
class FfsFile(Node):
    """One FFS file. Children are its sections, or a code blob for the raw reset vector."""

    guid: str = ""
    type: int = 0
    attributes: int = 0
    state_raw: int = 0
    header_size: int = 0
    header_checksum_ok: bool = False
    data_checksum_ok: bool | None = None  # None: no checksum kept (fixed 0xAA)
    ui_name: str | None = None  # filled by the fix-up pass from the UI section
    version: str | None = None

    kind = "file"

    @property
    def type_name(self) -> str:
        """Spec name of the file type."""
        return S.file_type_name(self.type)

    @property
    def data_offset(self) -> int:
        """Offset of the file data (past the header) in the space."""
        return self.offset + self.header_size

    @property
    def body(self) -> bytes:
        """File data without the header."""
        return self.space.data[self.data_offset : self.end]

    @property
    def state(self) -> str:
        """The state named by the highest set bit (after applying erase polarity)."""
        st = self.state_raw
        vol = self.parent
        if isinstance(vol, Volume) and vol.erase_byte == 0xFF:
            st = ~st & 0xFF
        for bit, name in S.FILE_STATES:
            if st & bit:
                return name
        return "NONE"

    @property
    def alignment(self) -> int:
        """Required alignment of the file data."""
        table = S.FFS_ALIGNMENTS_2 if self.attributes & S.FFS_ATTRIB_DATA_ALIGNMENT_2 else S.FFS_ALIGNMENTS
        return table[(self.attributes & S.FFS_ATTRIB_DATA_ALIGNMENT) >> 3]

    @property
    def is_pad(self) -> bool:
        return self.type == S.FV_FILETYPE_FFS_PAD


def parse_files(ctx: ParseContext, vol: Volume) -> None:
    """Parse the files of an FFS2/FFS3 volume, then its free space."""
    data, erase = vol.space.data, vol.erase_byte
    large_ok = vol.fs_guid == S.FFS3_GUID
    start, end = vol.offset, vol.end
    pos = start + vol.header_length
    pos += (-(pos - start)) % S.FFS_FILE_ALIGNMENT
    while pos + S.FFS_HEADER.size <= end:
        head = data[pos : pos + S.FFS_HEADER.size]
        if head.count(erase) == len(head):
            break  # free space starts here
        f = _parse_file(ctx, vol, pos, large_ok)
        vol.children.append(f)
        if f.problems and f.size == 0:
            return  # header unusable: nothing after it can be located
        pos = f.end + (-(f.end - start)) % S.FFS_FILE_ALIGNMENT
    pos = min(pos, end)
    tail = data[pos:end]
    clean = tail.count(erase) == len(tail)
    vol.free = FreeSpace(pos, end - pos, clean)
    if not clean:
        vol.damage(f"0x{len(tail) - tail.count(erase):X} non-erased bytes in free space", pos)


def _parse_file(ctx: ParseContext, vol: Volume, pos: int, large_ok: bool) -> FfsFile:
    data, end = vol.space.data, vol.end
    name, hsum, fsum, ftype, attrs, size3, state = S.FFS_HEADER.unpack_from(data, pos)
    f = FfsFile(vol.space, pos, 0, vol)
    f.guid, f.type, f.attributes, f.state_raw = S.guid_str(name), ftype, attrs, state
    ctx.limits.charge_node(vol.space.place(pos))
    size, hsize = S.u24(size3), S.FFS_HEADER.size
    if attrs & S.FFS_ATTRIB_LARGE_FILE and large_ok:
        if pos + S.FFS_HEADER2_SIZE > end:
            f.damage("large-file header runs past the end of the volume")
            return f
        size, hsize = S.FFS_EXTENDED_SIZE.get(data, pos), S.FFS_HEADER2_SIZE
    f.header_size = hsize
    if size < hsize:
        f.damage(f"file size 0x{size:X} is smaller than its header")
        return f
    if pos + size > end:
        f.damage(f"file size 0x{size:X} runs past the end of the volume (0x{end - pos:X} bytes left)")
        return f
    f.size = size
    header = data[pos : pos + hsize]
    f.header_checksum_ok = ffs_header_sum(header, state, fsum) == 0
    if not f.header_checksum_ok:
        f.damage(f"file header checksum 0x{hsum:02X} is wrong")
    if attrs & S.FFS_ATTRIB_CHECKSUM:
        f.data_checksum_ok = ffs_data_checksum(data[pos + hsize : pos + size]) == fsum
        if not f.data_checksum_ok:
            f.damage(f"file data checksum 0x{fsum:02X} is wrong")
    elif fsum != S.FFS_FIXED_CHECKSUM:
        f.data_checksum_ok = False
        f.damage(f"file has no data checksum but its checksum byte is 0x{fsum:02X}, not 0xAA")
    align = f.alignment
    if align > 1 and (pos + hsize - vol.offset) % align:
        f.damage(f"file data is not aligned to its required 0x{align:X}")
    if ftype in S.SECTIONED_FILE_TYPES:
        ctx.sections(f, vol.space, pos + hsize, pos + size)
    elif ftype == S.FV_FILETYPE_RAW and f.guid == RESET_VECTOR_GUID:
        f.children.append(ctx.reset_vector(vol.space, pos + hsize, size - hsize, f))
    return f
