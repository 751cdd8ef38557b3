"""Each encapsulation the model decodes, built with the real compressors."""

import lzma
import os

import pytest

from ovmftool.model.codecs import x86_convert
from ovmftool.model.node import all_problems, walk
from ovmftool.model.parser import parse_flash
from ovmftool.model.section import Section
from ovmftool.ops.modules import iter_modules
from tests import fvbuild as B
from tests.conftest import CORPUS_IMAGES

MOD = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def pe_bytes() -> bytes:
    """A real X64 module (DxeCore's image) from Debian's OVMF."""
    from ovmftool.model.parser import read_image

    root = read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]))
    return next(m for m in iter_modules(root) if m.name == "DxeCore").image.raw


def _wrap(encap, pe: bytes) -> bytes:
    inner = B.sections(B.section(0x10, pe), B.ui("Sample"), B.version(7, "1.0"))
    f = B.ffs(MOD, 0x07, encap(inner))
    return B.fv([f], size=0x200000, name="7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1")


@pytest.mark.parametrize(
    "encap,label",
    [
        (B.lzma_section, "LZMA"),
        (lambda s: B.guided(B.LZMAF86, B.lzma_alone(bytes(x86_convert(bytearray(s), encoding=True)))), "LZMAF86"),
        (B.brotli_section, "BROTLI"),
        (B.tiano_section, "TIANO"),
        (B.efi_section, "EFI"),
        (B.stored_section, "NONE"),
        (B.crc_section, "CRC32"),
    ],
)
def test_each_encapsulation_decodes_to_the_module(encap, label, pe_bytes):
    root = parse_flash(_wrap(encap, pe_bytes), "sample.fd")
    assert all_problems(root) == []
    secs = [n for n in walk(root) if isinstance(n, Section) and n.compression]
    assert secs[0].compression == label
    (m,) = iter_modules(root)
    assert m.name == "Sample" and m.image.raw == pe_bytes and m.arch == "X64"
    assert m.file.version == "1.0"
    if label in ("NONE", "CRC32"):
        assert m.fd_offset is not None and root.space.data[m.fd_offset : m.fd_offset + 2] == b"MZ"
    else:
        assert m.fd_offset is None and m.volume == f"DXEFV/{label}"


def test_bcj_x86_matches_liblzma():
    # liblzma's x86 filter is the same BCJ as the LZMA SDK's Bra86.c that EDK II uses.
    data = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes()[:300000] + os.urandom(5000)
    raw = lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}])
    encoded = lzma.decompress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert bytes(x86_convert(bytearray(data), encoding=True)) == encoded
    assert bytes(x86_convert(bytearray(encoded))) == data


def test_ffs3_large_file_and_nested_volumes(pe_bytes):
    inner_vol = B.fv([B.ffs(MOD, 0x07, B.sections(B.section(0x10, pe_bytes), B.ui("Deep")))], size=0x100000)
    mid = B.fv(
        [B.ffs("22222222-2222-2222-2222-222222222222", 0x0B, B.lzma_section(B.fv_section(inner_vol)))], size=0x100000
    )
    big = B.ffs("33333333-3333-3333-3333-333333333333", 0x0B, B.fv_section(mid), large=True, checksum=True)
    root = parse_flash(B.fv([big], size=0x200000, fs=B.FFS3), "ffs3.fd")
    assert all_problems(root) == []
    (m,) = iter_modules(root)
    assert m.name == "Deep" and m.image.raw == pe_bytes
    f = next(n for n in walk(root) if getattr(n, "guid", None) == "33333333-3333-3333-3333-333333333333")
    assert f.header_size == 32 and f.data_checksum_ok is True


def test_zero_erase_polarity_and_alignment_attributes(pe_bytes):
    f = B.ffs(MOD, 0x07, B.sections(B.section(0x10, pe_bytes), B.ui("Zero")), erase=0x00)
    root = parse_flash(B.fv([f], size=0x100000, erase=0x00), "zero.fd")
    assert all_problems(root) == []
    (file_node,) = [n for n in walk(root) if n.kind == "file"]
    assert file_node.state == "DATA_VALID"
    vol = root.children[0]
    assert vol.erase_byte == 0 and vol.free.clean
