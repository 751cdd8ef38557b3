"""On-flash structure layouts from the UEFI PI specification, volume 3, and the PE/COFF and TE
formats. Only layouts and constants live here; parsing logic lives beside each object's model.
"""

from __future__ import annotations

import struct
import uuid

# --- GUID helpers ---------------------------------------------------------------------------


def guid_str(raw: bytes) -> str:
    """Format 16 bytes of an EFI_GUID (mixed-endian) as a lowercase registry string."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def guid_bytes(text: str) -> bytes:
    """The 16 on-flash bytes of a GUID given as a registry string."""
    return uuid.UUID(text).bytes_le


# --- Firmware volume (PI vol. 3, 3.2.1) -----------------------------------------------------

FV_SIGNATURE = b"_FVH"
FV_SIGNATURE_OFFSET = 40
# ZeroVector[16] FileSystemGuid[16] FvLength u64 Signature u32 Attributes u32
# HeaderLength u16 Checksum u16 ExtHeaderOffset u16 Reserved u8 Revision u8
FV_HEADER = struct.Struct("<16s16sQ4sIHHHBB")
FV_BLOCK = struct.Struct("<II")  # NumBlocks, Length
FV_EXT_HEADER = struct.Struct("<16sI")  # FvName, ExtHeaderSize
FV_EXT_ENTRY = struct.Struct("<HH")  # ExtEntrySize, ExtEntryType
EFI_FVB2_ERASE_POLARITY = 0x00000800
EFI_FVB2_ALIGNMENT_SHIFT = 16  # bits 16..20 of Attributes hold log2 of the volume alignment

FFS2_GUID = "8c8ce578-8a3d-4f1c-9935-896185c32dd3"
FFS3_GUID = "5473c07a-3dcb-4dca-bd6f-1e9689e7349a"
NVRAM_GUID = "fff12b8d-7696-4c8b-a985-2747075b4f50"
FILE_SYSTEMS = {FFS2_GUID: "FFS2", FFS3_GUID: "FFS3", NVRAM_GUID: "NVRAM"}

# --- FFS files (PI vol. 3, 2.2.3) -----------------------------------------------------------

# Name[16] IntegrityCheck(Header u8, File u8) Type u8 Attributes u8 Size[3] State u8
FFS_HEADER = struct.Struct("<16sBBBB3sB")
FFS_HEADER2_EXTRA = struct.Struct("<Q")  # ExtendedSize, present when FFS_ATTRIB_LARGE_FILE
FFS_ATTRIB_LARGE_FILE = 0x01
FFS_ATTRIB_DATA_ALIGNMENT_2 = 0x02
FFS_ATTRIB_FIXED = 0x04
FFS_ATTRIB_DATA_ALIGNMENT = 0x38
FFS_ATTRIB_CHECKSUM = 0x40
FFS_FIXED_CHECKSUM = 0xAA
FFS_FILE_ALIGNMENT = 8

FILE_TYPES = {
    0x00: "ALL",
    0x01: "RAW",
    0x02: "FREEFORM",
    0x03: "SECURITY_CORE",
    0x04: "PEI_CORE",
    0x05: "DXE_CORE",
    0x06: "PEIM",
    0x07: "DRIVER",
    0x08: "COMBINED_PEIM_DRIVER",
    0x09: "APPLICATION",
    0x0A: "MM",
    0x0B: "FIRMWARE_VOLUME_IMAGE",
    0x0C: "COMBINED_MM_DXE",
    0x0D: "MM_CORE",
    0x0E: "MM_STANDALONE",
    0x0F: "MM_CORE_STANDALONE",
    0xF0: "FFS_PAD",
}


def file_type_name(code: int) -> str:
    """Spec name of an FFS file type, with the OEM/DEBUG/FFS ranges spelled out."""
    if code in FILE_TYPES:
        return FILE_TYPES[code]
    if 0xC0 <= code <= 0xDF:
        return f"OEM_0x{code:02X}"
    if 0xE0 <= code <= 0xEF:
        return f"DEBUG_0x{code:02X}"
    if 0xF1 <= code <= 0xFF:
        return f"FFS_0x{code:02X}"
    return f"UNKNOWN_0x{code:02X}"


# File types whose data is a sequence of sections.
SECTIONED_FILE_TYPES = frozenset(range(0x02, 0x10)) | frozenset(range(0xC0, 0xF0))

# State bits, in the order the highest set one wins (PI vol. 3, 2.2.3.1).
FILE_STATES = (
    (0x20, "HEADER_INVALID"),
    (0x10, "DELETED"),
    (0x08, "MARKED_FOR_UPDATE"),
    (0x04, "DATA_VALID"),
    (0x02, "HEADER_VALID"),
    (0x01, "HEADER_CONSTRUCTION"),
)

# Data alignment encoded in the attributes: index = (attr >> 3) & 7, plus 8 with ALIGNMENT_2.
FFS_ALIGNMENTS = (1, 16, 128, 512, 1024, 4 * 1024, 32 * 1024, 64 * 1024)
FFS_ALIGNMENTS_2 = (128 * 1024, 256 * 1024, 512 * 1024, 1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20)

# --- Sections (PI vol. 3, 2.2.4) ------------------------------------------------------------

SECTION_HEADER = struct.Struct("<3sB")  # Size[3] Type
SECTION_HEADER2_EXTRA = struct.Struct("<I")  # ExtendedSize when Size == 0xFFFFFF
SECTION_COMPRESSION = struct.Struct("<IB")  # UncompressedLength, CompressionType
SECTION_GUID_DEFINED = struct.Struct("<16sHH")  # SectionDefinitionGuid, DataOffset, Attributes
SECTION_VERSION = struct.Struct("<H")  # BuildNumber
EFI_GUIDED_SECTION_PROCESSING_REQUIRED = 0x01
EFI_GUIDED_SECTION_AUTH_STATUS_VALID = 0x02

SECTION_TYPES = {
    0x01: "COMPRESSION",
    0x02: "GUID_DEFINED",
    0x03: "DISPOSABLE",
    0x10: "PE32",
    0x11: "PIC",
    0x12: "TE",
    0x13: "DXE_DEPEX",
    0x14: "VERSION",
    0x15: "USER_INTERFACE",
    0x16: "COMPATIBILITY16",
    0x17: "FIRMWARE_VOLUME_IMAGE",
    0x18: "FREEFORM_SUBTYPE_GUID",
    0x19: "RAW",
    0x1B: "PEI_DEPEX",
    0x1C: "MM_DEPEX",
}
SECTION_ENCAPSULATION = frozenset((0x01, 0x02))
SECTION_ALIGNMENT = 4

LZMA_GUID = "ee4e5898-3914-4259-9d6e-dc7bd79403cf"
LZMA_F86_GUID = "d42ae6bd-1352-4bfb-909a-ca72a6eae889"
TIANO_GUID = "a31280ad-481e-41b6-95e8-127f4c984779"
BROTLI_GUID = "3d532050-5cda-4fd0-879e-0f7f630d5afb"
CRC32_GUID = "fc1bcdb0-7d31-49aa-936a-a4600d9dd083"
GUIDED_NAMES = {
    LZMA_GUID: "LZMA",
    LZMA_F86_GUID: "LZMAF86",
    TIANO_GUID: "TIANO",
    BROTLI_GUID: "BROTLI",
    CRC32_GUID: "CRC32",
}
COMPRESSION_TYPES = {0: "NONE", 1: "EFI"}

# --- PE/COFF and TE -------------------------------------------------------------------------

DOS_MAGIC = b"MZ"
PE_MAGIC = b"PE\0\0"
TE_MAGIC = b"VZ"
COFF_HEADER = struct.Struct("<HHIIIHH")  # Machine NumSections TimeDate PtrSym NumSym OptSize Chars
PE_SECTION = struct.Struct("<8sIIIIIIHHI")  # Name VSize VAddr RawSize RawPtr Relocs Lines NR NL Chars
# Signature[2] Machine u16 NumberOfSections u8 Subsystem u8 StrippedSize u16 AddressOfEntryPoint u32
# BaseOfCode u32 ImageBase u64 DataDirectory[2] (VirtualAddress u32, Size u32)
TE_HEADER = struct.Struct("<2sHBBHIIQIIII")
DEBUG_DIRECTORY = struct.Struct("<IIHHIIII")
DATA_DIR = struct.Struct("<II")
OPT_MAGIC_PE32 = 0x10B
OPT_MAGIC_PE32_PLUS = 0x20B
DIR_EXPORT, DIR_BASERELOC, DIR_DEBUG = 0, 5, 6
IMAGE_DEBUG_TYPE_CODEVIEW = 2
IMAGE_SCN_CNT_CODE = 0x00000020
IMAGE_SCN_MEM_EXECUTE = 0x20000000
MACHINES = {0x014C: "IA32", 0x8664: "X64", 0x0200: "IPF", 0x0EBC: "EBC", 0x01C2: "ARM", 0xAA64: "AARCH64"}
REL_BASED_ABSOLUTE, REL_BASED_HIGHLOW, REL_BASED_DIR64 = 0, 3, 10


def u24(raw: bytes) -> int:
    """A 3-byte little-endian size field."""
    return raw[0] | (raw[1] << 8) | (raw[2] << 16)
