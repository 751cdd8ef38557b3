"""On-flash structure layouts from the UEFI PI specification, volume 3, and the PE/COFF and TE
formats. Only layouts and constants live here; parsing logic lives beside each object's model.

Every on-disk field the tool reads or writes is declared here once: whole headers as
`struct.Struct`, single fields the writers patch in place (and the readers read) as `Field`
(offset from the start of its header, and format). Parsing (`model`) and writing (`ops.assemble`,
`ops.rebase`, `patch.grow`) use the same declarations.
"""

from __future__ import annotations

import struct
import uuid

Buffer = bytes | bytearray | memoryview  # what a field is read from


class Field:
    """One scalar field of an on-disk header: its offset from the header's start and its
    struct format (little-endian)."""

    __slots__ = ("offset", "_st")

    def __init__(self, offset: int, fmt: str) -> None:
        self.offset = offset
        self._st = struct.Struct(fmt)

    @property
    def end(self) -> int:
        """Offset just past the field, from the header's start."""
        return self.offset + self._st.size

    def get(self, buf: Buffer, base: int = 0) -> int:
        """The field of the header at `base` in `buf` (struct.error when `buf` is too short)."""
        value: int = self._st.unpack_from(buf, base + self.offset)[0]
        return value

    def put(self, buf: bytearray | memoryview, base: int, value: int) -> None:
        """Write the field of the header at `base` in the writable `buf`."""
        self._st.pack_into(buf, base + self.offset, value)


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
FV_HEADER_LENGTH = Field(48, "<H")  # HeaderLength, read before the header is known to fit
FV_BLOCK = struct.Struct("<II")  # NumBlocks, Length
FV_EXT_HEADER = struct.Struct("<16sI")  # FvName, ExtHeaderSize
FV_EXT_ENTRY = struct.Struct("<HH")  # ExtEntrySize, ExtEntryType
EFI_FVB2_ERASE_POLARITY = 0x00000800
EFI_FVB2_ALIGNMENT_SHIFT = 16  # bits 16..20 of Attributes hold log2 of the volume alignment

FFS2_GUID = "8c8ce578-8a3d-4f1c-9935-896185c32dd3"
FFS3_GUID = "5473c07a-3dcb-4dca-bd6f-1e9689e7349a"
NVRAM_GUID = "fff12b8d-7696-4c8b-a985-2747075b4f50"
# VARIABLE_STORE_HEADER: Signature (GUID), Size, Format, State, Reserved (UINT16), Reserved1 (UINT32)
VARIABLE_STORE_HEADER = struct.Struct("<16sIBBHI")
# EFI_FAULT_TOLERANT_WORKING_BLOCK_HEADER: Signature, Crc, WorkingBlockValid:1 WorkingBlockInvalid:1
# Reserved:6, Reserved3[3], WriteQueueSize (UINT64)
FTW_WORKING_HEADER = struct.Struct("<16sIB3sQ")
FILE_SYSTEMS = {FFS2_GUID: "FFS2", FFS3_GUID: "FFS3", NVRAM_GUID: "NVRAM"}

# --- FFS files (PI vol. 3, 2.2.3) -----------------------------------------------------------

# Name[16] IntegrityCheck(Header u8, File u8) Type u8 Attributes u8 Size[3] State u8
FFS_HEADER = struct.Struct("<16sBBBB3sB")
# byte offsets in FFS_HEADER of the fields the assembler sets: IntegrityCheck.Header,
# IntegrityCheck.File, Size[3] (FFS_SIZE_LENGTH bytes), State
FFS_HEADER_CHECKSUM, FFS_FILE_CHECKSUM, FFS_SIZE, FFS_STATE = 16, 17, 20, 23
FFS_SIZE_LENGTH = 3
# EFI_FFS_FILE_HEADER2 (FFS3, FFS_ATTRIB_LARGE_FILE): FFS_HEADER, then ExtendedSize u64
FFS_EXTENDED_SIZE = Field(FFS_HEADER.size, "<Q")
FFS_HEADER2_SIZE = FFS_EXTENDED_SIZE.end
FFS_ATTRIB_LARGE_FILE = 0x01
FFS_ATTRIB_DATA_ALIGNMENT_2 = 0x02
FFS_ATTRIB_DATA_ALIGNMENT = 0x38
FFS_ATTRIB_CHECKSUM = 0x40
FFS_FIXED_CHECKSUM = 0xAA
FFS_FILE_ALIGNMENT = 8

# EFI_FV_FILETYPE_*
FV_FILETYPE_RAW = 0x01
FV_FILETYPE_SECURITY_CORE = 0x03
FV_FILETYPE_PEI_CORE = 0x04
FV_FILETYPE_PEIM = 0x06
FV_FILETYPE_COMBINED_PEIM_DRIVER = 0x08
FV_FILETYPE_MM = 0x0A
FV_FILETYPE_MM_CORE = 0x0D
FV_FILETYPE_MM_STANDALONE = 0x0E
FV_FILETYPE_MM_CORE_STANDALONE = 0x0F
FV_FILETYPE_FFS_PAD = 0xF0
FILE_TYPES = {
    0x00: "ALL",
    FV_FILETYPE_RAW: "RAW",
    0x02: "FREEFORM",
    FV_FILETYPE_SECURITY_CORE: "SECURITY_CORE",
    FV_FILETYPE_PEI_CORE: "PEI_CORE",
    0x05: "DXE_CORE",
    FV_FILETYPE_PEIM: "PEIM",
    0x07: "DRIVER",
    FV_FILETYPE_COMBINED_PEIM_DRIVER: "COMBINED_PEIM_DRIVER",
    0x09: "APPLICATION",
    FV_FILETYPE_MM: "MM",
    0x0B: "FIRMWARE_VOLUME_IMAGE",
    0x0C: "COMBINED_MM_DXE",
    FV_FILETYPE_MM_CORE: "MM_CORE",
    FV_FILETYPE_MM_STANDALONE: "MM_STANDALONE",
    FV_FILETYPE_MM_CORE_STANDALONE: "MM_CORE_STANDALONE",
    FV_FILETYPE_FFS_PAD: "FFS_PAD",
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
SECTION_SIZE_LENGTH = 3  # bytes of Size
SECTION_EXTENDED = 0xFFFFFF  # Size when the size is in ExtendedSize (EFI_COMMON_SECTION_HEADER2)
SECTION_EXTENDED_SIZE = Field(SECTION_HEADER.size, "<I")  # ExtendedSize
SECTION_HEADER2_SIZE = SECTION_EXTENDED_SIZE.end
# Type-specific headers follow the common header (offsets below are from their start).
SECTION_COMPRESSION = struct.Struct("<IB")  # UncompressedLength, CompressionType
SECTION_UNCOMPRESSED_LENGTH = Field(0, "<I")
SECTION_GUID_DEFINED = struct.Struct("<16sHH")  # SectionDefinitionGuid, DataOffset, Attributes
SECTION_CRC32 = Field(SECTION_GUID_DEFINED.size, "<I")  # CRC32 sections: the CRC after the GUIDed header
SECTION_VERSION = struct.Struct("<H")  # BuildNumber
SECTION_FREEFORM_SUBTYPE_GUID_SIZE = 16  # SubTypeGuid
EFI_GUIDED_SECTION_PROCESSING_REQUIRED = 0x01

# EFI_SECTION_*
EFI_SECTION_COMPRESSION = 0x01
EFI_SECTION_GUID_DEFINED = 0x02
EFI_SECTION_PE32 = 0x10
EFI_SECTION_PIC = 0x11
EFI_SECTION_TE = 0x12
EFI_SECTION_VERSION = 0x14
EFI_SECTION_USER_INTERFACE = 0x15
EFI_SECTION_FIRMWARE_VOLUME_IMAGE = 0x17
EFI_SECTION_FREEFORM_SUBTYPE_GUID = 0x18
SECTION_TYPES = {
    EFI_SECTION_COMPRESSION: "COMPRESSION",
    EFI_SECTION_GUID_DEFINED: "GUID_DEFINED",
    0x03: "DISPOSABLE",
    EFI_SECTION_PE32: "PE32",
    EFI_SECTION_PIC: "PIC",
    EFI_SECTION_TE: "TE",
    0x13: "DXE_DEPEX",
    EFI_SECTION_VERSION: "VERSION",
    EFI_SECTION_USER_INTERFACE: "USER_INTERFACE",
    0x16: "COMPATIBILITY16",
    EFI_SECTION_FIRMWARE_VOLUME_IMAGE: "FIRMWARE_VOLUME_IMAGE",
    EFI_SECTION_FREEFORM_SUBTYPE_GUID: "FREEFORM_SUBTYPE_GUID",
    0x19: "RAW",
    0x1B: "PEI_DEPEX",
    0x1C: "MM_DEPEX",
}
IMAGE_SECTION_TYPES = frozenset((EFI_SECTION_PE32, EFI_SECTION_PIC, EFI_SECTION_TE))  # hold a PE32/TE image
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

# Headers of the compressed streams inside those sections, as EDK II's compressors write them.
# LZMA (".lzma alone", LzmaCompress): properties byte (lc/lp/pb), DictionarySize u32, decoded size u64
LZMA_HEADER = struct.Struct("<BIQ")
LZMA_DICTIONARY_SIZE = Field(1, "<I")
LZMA_UNCOMPRESSED_SIZE = Field(5, "<Q")
LZMA_PROPERTIES_SIZE = LZMA_DICTIONARY_SIZE.end  # the bytes a re-encoded stream keeps from the old one
EFI_COMPRESS_HEADER = struct.Struct("<II")  # EFI and Tiano: CompSize, OrigSize
BROTLI_HEADER = struct.Struct("<QQ")  # BrotliCompress: decoded size, scratch buffer size

# --- PE/COFF and TE -------------------------------------------------------------------------

DOS_MAGIC = b"MZ"
DOS_E_LFANEW = Field(0x3C, "<I")  # file offset of the PE signature
DOS_HEADER_SIZE = 0x40
PE_MAGIC = b"PE\0\0"  # the signature; the COFF header follows it
TE_MAGIC = b"VZ"
COFF_HEADER = struct.Struct("<HHIIIHH")  # Machine NumSections TimeDate PtrSym NumSym OptSize Chars
COFF_NUMBER_OF_SECTIONS = Field(2, "<H")
COFF_SIZE_OF_OPTIONAL_HEADER = Field(16, "<H")
# The optional header (after the COFF header). PE32 and PE32+ differ in ImageBase (and where the
# data directories start); the fields from SectionAlignment to Subsystem sit at the same offsets.
OPT_MAGIC = Field(0, "<H")
OPT_MAGIC_PE32 = 0x10B
OPT_MAGIC_PE32_PLUS = 0x20B
OPT_SIZE_OF_CODE = Field(4, "<I")
OPT_ADDRESS_OF_ENTRY_POINT = Field(16, "<I")
OPT_IMAGE_BASE = {"PE32": Field(28, "<I"), "PE32+": Field(24, "<Q")}
OPT_SECTION_ALIGNMENT = Field(32, "<I")
OPT_FILE_ALIGNMENT = Field(36, "<I")
OPT_SIZE_OF_IMAGE = Field(56, "<I")
OPT_SIZE_OF_HEADERS = Field(60, "<I")
OPT_SUBSYSTEM = Field(68, "<H")
OPT_NUMBER_OF_RVA_AND_SIZES = {"PE32": Field(92, "<I"), "PE32+": Field(108, "<I")}  # then the directories
DATA_DIR = struct.Struct("<II")  # VirtualAddress, Size
MAX_DATA_DIRS = 16
# Section header: Name VirtualSize VirtualAddress SizeOfRawData PointerToRawData PointerToRelocations
# PointerToLinenumbers NumberOfRelocations NumberOfLinenumbers Characteristics
PE_SECTION = struct.Struct("<8sIIIIIIHHI")
PE_SECTION_VIRTUAL_SIZE = Field(8, "<I")
PE_SECTION_VIRTUAL_ADDRESS = Field(12, "<I")
PE_SECTION_SIZE_OF_RAW_DATA = Field(16, "<I")
PE_SECTION_POINTER_TO_RAW_DATA = Field(20, "<I")
PE_SECTION_CHARACTERISTICS = Field(36, "<I")
# Signature[2] Machine u16 NumberOfSections u8 Subsystem u8 StrippedSize u16 AddressOfEntryPoint u32
# BaseOfCode u32 ImageBase u64 DataDirectory[2] (VirtualAddress u32, Size u32); section headers follow
TE_HEADER = struct.Struct("<2sHBBHIIQIIII")
TE_IMAGE_BASE = Field(16, "<Q")
# Characteristics TimeDateStamp MajorVersion MinorVersion Type SizeOfData AddressOfRawData PointerToRawData
DEBUG_DIRECTORY = struct.Struct("<IIHHIIII")
# CodeView record signatures and the offset of the NUL-terminated path in each
CODEVIEW_PATH_OFFSETS = {b"RSDS": 24, b"NB10": 16, b"MTOC": 20}
# Characteristics TimeDateStamp MajorVersion MinorVersion Name Base NumberOfFunctions NumberOfNames
# AddressOfFunctions AddressOfNames AddressOfNameOrdinals
EXPORT_DIRECTORY = struct.Struct("<IIHHIIIIIII")
BASE_RELOCATION_BLOCK = struct.Struct("<II")  # PageRVA, SizeOfBlock; u16 entries (type << 12 | offset) follow
DIR_EXPORT, DIR_BASERELOC, DIR_DEBUG = 0, 5, 6
IMAGE_DEBUG_TYPE_CODEVIEW = 2
IMAGE_SCN_CNT_CODE = 0x00000020
IMAGE_SCN_CNT_INITIALIZED_DATA = 0x00000040
IMAGE_SCN_CNT_UNINITIALIZED_DATA = 0x00000080
IMAGE_SCN_MEM_DISCARDABLE = 0x02000000
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_READ = 0x40000000
IMAGE_SCN_MEM_WRITE = 0x80000000
MACHINES = {
    0x014C: "IA32",
    0x8664: "X64",
    0x0200: "IPF",
    0x0EBC: "EBC",
    0x01C2: "ARM",
    0xAA64: "AARCH64",
    0x5032: "RISCV32",
    0x5064: "RISCV64",
    0x5128: "RISCV128",
    0x6232: "LOONGARCH32",
    0x6264: "LOONGARCH64",
}
X86_MACHINES = frozenset({"IA32", "X64"})
# PE/TE subsystems of UEFI images (PE/COFF spec, "Windows Subsystem"), and names for the others
EFI_SUBSYSTEMS = {10: "EFI application", 11: "EFI boot service driver", 12: "EFI runtime driver", 13: "EFI ROM"}
OTHER_SUBSYSTEMS = {
    0: "unknown",
    1: "native",
    2: "Windows GUI",
    3: "Windows console",
    5: "OS/2 console",
    7: "POSIX console",
    9: "Windows CE GUI",
    14: "Xbox",
    16: "Windows boot application",
}

# ELF identification and e_machine (System V ABI): a PVH ELF header before the firmware volume
# (OvmfPkg/CloudHv/CloudHvElfHeader.fdf.inc, OvmfXen's generated header), or a whole non-UEFI
# firmware (PowerPC's SLOF and skiboot, RISC-V's OpenSBI) that is ELF.
ELF_MAGIC = b"\x7fELF"
ELF_IDENT_SIZE = 16
ELF_TYPE_MACHINE = struct.Struct("<HH")  # e_type, e_machine, right after e_ident (either class)
ELF_MACHINES = {
    3: "IA32",
    62: "X64",
    20: "PPC",
    21: "PPC64",
    40: "ARM",
    183: "AARCH64",
    243: "RISCV",
    258: "LOONGARCH",
    2: "SPARC",
    8: "MIPS",
    22: "S390",
}
REL_BASED_ABSOLUTE, REL_BASED_HIGHLOW, REL_BASED_DIR64 = 0, 3, 10


def u24(raw: bytes) -> int:
    """A 3-byte little-endian size field."""
    return raw[0] | (raw[1] << 8) | (raw[2] << 16)
