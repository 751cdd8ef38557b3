"""Damaged and hostile inputs: one line naming what and where, exit code 2, no traceback, no hang."""

import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.node import walk
from ovmftool.model.parser import parse_flash
from tests import fvbuild as B
from tests.clicheck import assert_error
from tests.conftest import CORPUS_IMAGES

MOD = "11111111-2222-3333-4444-555555555555"
MOD2 = "66666666-7777-8888-9999-aaaaaaaaaaaa"


def run_info(tmp_path, data: bytes, name="img.fd"):
    p = tmp_path / name
    p.write_bytes(data)
    r = CliRunner().invoke(main, ["info", str(p)])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


@pytest.fixture(scope="module")
def sample() -> bytes:
    """A small image with a compressed nested volume, a stored section and a CRC32 section."""
    pe = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes()  # any bytes do as a PE body here
    from ovmftool.model.parser import read_image
    from ovmftool.ops.modules import iter_modules

    img = next(
        m
        for m in iter_modules(read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])))
        if m.name == "CpuIo2Dxe"
    ).image.raw
    inner = B.fv([B.ffs(MOD, 0x07, B.sections(B.section(0x10, img), B.ui("CpuIo2Dxe")))], size=0x8000)
    f1 = B.ffs("22222222-2222-2222-2222-222222222222", 0x0B, B.lzma_section(B.fv_section(inner)))
    f2 = B.ffs(
        "33333333-3333-3333-3333-333333333333",
        0x07,
        B.stored_section(B.sections(B.section(0x10, img), B.ui("Stored"))),
        checksum=True,
    )
    f3 = B.ffs("44444444-4444-4444-4444-444444444444", 0x07, B.crc_section(B.sections(B.section(0x10, img))))
    del pe
    return B.fv([f1, f2, f3], size=0x10000, name="48db5e17-707c-472d-91cd-1613e7ef51b0")


def test_sample_is_clean(tmp_path, sample):
    r = run_info(tmp_path, sample)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "data,words",
    [
        (b"", ["empty"]),
        (random.Random(59).randbytes(65536), ["no firmware volume"]),  # seeded: the same test in every worker
        (b"hello, this is not firmware\n" * 100, ["no firmware volume"]),
        (b"\0" * 40 + b"_FVH" + b"\0" * 100, ["no firmware volume"]),
    ],
    ids=["empty", "random", "text", "fvh-signature-only"],
)
def test_not_a_firmware_image(tmp_path, data, words):
    assert_error(run_info(tmp_path, data), *words)


def test_missing_and_directory_inputs(tmp_path):
    r = CliRunner().invoke(main, ["info", str(tmp_path / "nope.fd")])
    assert_error(r, "cannot read", "nope.fd")
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output


def _boundaries(data: bytes) -> list[int]:
    """Every header boundary of every node that has a file offset."""
    root = parse_flash(data, "b")
    cuts = set()
    for n in walk(root):
        a = n.abs_offset
        if a is None or n.kind == "flash":
            continue
        hs = getattr(n, "header_size", 0) or getattr(n, "header_length", 0)
        for c in (a, a + 1, a + 4, a + 23, a + 24, a + hs, a + hs + 1, a + n.size - 1):
            if 0 < c < len(data):
                cuts.add(c)
    return sorted(cuts)


def test_truncation_at_every_header_boundary(tmp_path, sample):
    cuts = _boundaries(sample)
    assert len(cuts) > 20
    for c in cuts:
        r = run_info(tmp_path, sample[:c])
        assert r.exit_code == 2, (c, r.output)
        line = assert_error(r)
        assert " at " in line or "no firmware volume" in line, line


def test_truncated_real_image_still_shows_what_parsed(tmp_path):
    data = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes()
    tops = {v.abs_offset for v in parse_flash(data, "x").children}
    cuts = _boundaries(data)
    for c in cuts:
        r = run_info(tmp_path, data[:c])
        if c in tops:  # cut exactly between volumes: a smaller but valid flash image
            assert r.exit_code == 0, c
            continue
        assert r.exit_code == 2, c
        if c > 0x1000:
            assert "volume FVMAIN_COMPACT" in r.output and "DAMAGE" in r.output


def _patch(data: bytes, off: int, raw: bytes) -> bytes:
    b = bytearray(data)
    b[off : off + len(raw)] = raw
    return bytes(b)


def test_flipped_size_fields(tmp_path, sample):
    root = parse_flash(sample, "s")
    for n in walk(root):
        a = n.abs_offset
        if a is None:
            continue
        if n.kind == "file":
            for v in (0, 1, 0xFFFFFF, n.size + 8, n.size ^ 0x800000):
                r = run_info(tmp_path, _patch(sample, a + 20, v.to_bytes(3, "little")))
                assert_error(r)
        elif n.kind == "section":
            for v in (0, 3, 0xFFFFFE, n.size + 4):
                r = run_info(tmp_path, _patch(sample, a, v.to_bytes(3, "little")))
                assert_error(r)
        elif n.kind == "volume":
            for v in (0, 0x48, 1 << 40, n.size * 2):
                r = run_info(tmp_path, _patch(sample, a + 32, struct.pack("<Q", v)))
                assert_error(r, "volume")


def test_flipped_checksums(tmp_path, sample):
    r = run_info(tmp_path, _patch(sample, 50, bytes([sample[50] ^ 0x5A])))
    assert_error(r, "volume header checksum", "at 0x0")
    root = parse_flash(sample, "s")
    files = [n for n in walk(root) if n.kind == "file" and n.abs_offset is not None]
    for f in files:
        r = run_info(tmp_path, _patch(sample, f.abs_offset + 16, bytes([sample[f.abs_offset + 16] ^ 1])))
        assert_error(r, "file header checksum", f"0x{f.abs_offset:X}")
    # data checksum: flip a byte of the checksummed file's body
    f2 = next(f for f in files if f.guid.startswith("33333333"))
    r = run_info(tmp_path, _patch(sample, f2.abs_offset + 100, bytes([sample[f2.abs_offset + 100] ^ 1])))
    assert_error(r, "data checksum")
    # CRC32 section
    f3 = next(f for f in files if f.guid.startswith("44444444"))
    r = run_info(tmp_path, _patch(sample, f3.end - 8, bytes([sample[f3.end - 8] ^ 1])))
    assert r.exit_code == 2 and "CRC32" in r.output


def test_nesting_loop_is_capped(tmp_path):
    vol = B.fv([B.ffs(MOD, 0x02, B.section(0x19, b"x" * 8))], size=0x400)
    for i in range(20):
        vol = B.fv([B.ffs(f"{i:08x}-0000-0000-0000-000000000000", 0x0B, B.fv_section(vol))], size=len(vol) + 0x100)
    assert_error(run_info(tmp_path, vol), "nesting deeper")


def test_zero_sized_sections_do_not_loop(tmp_path):
    body = b"\0\0\0\x19" * 100  # sections of size 0
    r = run_info(tmp_path, B.fv([B.ffs(MOD, 0x02, body)], size=0x1000))
    assert_error(r, "smaller than its header")


def test_decompression_bombs(tmp_path):
    # Declared size beyond the per-section limit: refused before decoding, as damage (the tree
    # is still shown, the other files read: here a raw section beside it).
    huge = bytearray(B.lzma_alone(b"\0" * 1000))
    huge[5:13] = struct.pack("<Q", 1 << 40)
    files = [B.ffs(MOD, 0x02, B.guided(B.LZMA, bytes(huge))), B.ffs(MOD2, 0x02, B.section(0x19, b"x" * 8))]
    r = run_info(tmp_path, B.fv(files, size=0x2000))
    assert_error(r, f"{tmp_path / 'img.fd'}: damaged image: declared decompressed size {1 << 40}", "per-section limit")
    assert "!! DAMAGE: declared decompressed size" in r.stdout and MOD2 in r.stdout
    # Header lies small, stream expands to 64 MiB: stops at the declared size.
    lie = bytearray(B.lzma_alone(b"\0" * (64 << 20)))
    lie[5:13] = struct.pack("<Q", 1000)
    r = run_info(tmp_path, B.fv([B.ffs(MOD, 0x02, B.guided(B.LZMA, bytes(lie)))], size=0x4000))
    assert_error(r, "LZMA")
    # Many sections that each fit, together over the total cap.
    one = B.lzma_section(b"\0" * (100 << 20))
    files = [B.ffs(f"{i:08x}-1111-1111-1111-111111111111", 0x02, one) for i in range(4)]
    r = run_info(tmp_path, B.fv(files, size=0x20000))
    assert_error(r, "cap")


def test_corrupt_compressed_streams(tmp_path):
    good = B.lzma_alone(b"A" * 5000)
    bad = good[:13] + bytes(b ^ 0xFF for b in good[13:40]) + good[40:]
    r = run_info(tmp_path, B.fv([B.ffs(MOD, 0x02, B.guided(B.LZMA, bad))], size=0x2000))
    assert_error(r, "LZMA")
    for maker in (B.tiano_section, B.efi_section, B.brotli_section):
        sec = bytearray(maker(b"B" * 5000 + os.urandom(300)))
        for i in range(40, min(len(sec), 120)):
            sec[i] ^= 0xA5
        r = run_info(tmp_path, B.fv([B.ffs(MOD, 0x02, bytes(sec))], size=0x4000))
        assert r.exit_code == 2 and "Traceback" not in r.output


def test_subprocess_error_is_one_line_no_traceback(tmp_path):
    p = tmp_path / "junk.fd"
    p.write_bytes(os.urandom(4096))
    r = subprocess.run([sys.executable, "-m", "ovmftool", "info", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ovmftool: error:")


def test_output_to_a_device_or_fifo_is_written_in_place_not_replaced(tmp_path):
    """`-o /dev/null` (or a FIFO) must stay what it is: an atomic rename over it would replace the
    device with a regular file. A symlinked output replaces the link's target and keeps the link."""
    import threading

    from ovmftool.outputs import write_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    img = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]
    r = CliRunner().invoke(main, ["scan", "--format", "json", "-o", str(fifo), str(img)])
    if r.exit_code != 1:  # nothing was written: release the reader rather than wait for it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(30)
    assert r.exit_code == 1 and stat.S_ISFIFO(os.lstat(fifo).st_mode), r.output
    assert json.loads(got[0])["findings"]
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(str(link), b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    with pytest.raises(Exception, match="is a directory"):
        write_atomic(str(tmp_path), b"x")


# --- classes found by fuzzing (tools/fuzz.py), each with its minimal input ----------------------


def _pe64(
    code: bytes,
    *,
    size_of_image: int | None = None,
    nsec: int | None = None,
    vsize: int | None = None,
    relocs: bytes | None = None,
    export: tuple[int, int] | None = None,
    name: bytes = b".text",
) -> bytes:
    """A minimal PE32+ image: 0x200 bytes of headers, `code` as an executable section at rva
    0x1000, optionally a .reloc section after it and an export directory entry."""
    fa = 0x200
    raw = code + b"\0" * (-len(code) % fa)
    rel = b"" if relocs is None else relocs + b"\0" * (-len(relocs) % fa)
    rel_rva = 0x1000 + ((len(raw) + 0xFFF) & ~0xFFF)
    soi = size_of_image if size_of_image is not None else rel_rva + ((len(rel) + 0xFFF) & ~0xFFF)
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    n = nsec if nsec is not None else 1 + (relocs is not None)
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x8664, n, 0, 0, 0, 240, 0x22)
    opt = bytearray(240)
    struct.pack_into("<HBBIIIII", opt, 0, 0x20B, 0, 0, len(raw), 0, 0, 0x1000, 0x1000)
    struct.pack_into("<QII", opt, 24, 0x100000, 0x1000, fa)
    struct.pack_into("<II", opt, 56, soi, 0x200)
    struct.pack_into("<HI", opt, 68, 11, 0)
    struct.pack_into("<I", opt, 108, 16)
    if relocs is not None:
        struct.pack_into("<II", opt, 112 + 8 * 5, rel_rva, len(relocs))
    if export is not None:
        struct.pack_into("<II", opt, 112, *export)
    sec = struct.pack("<8sIIIIIIHHI", name, vsize or len(raw), 0x1000, len(raw), fa, 0, 0, 0, 0, 0x60000020)
    if relocs is not None:
        sec += struct.pack(
            "<8sIIIIIIHHI", b".reloc", len(rel), rel_rva, len(rel), fa + len(raw), 0, 0, 0, 0, 0x42000040
        )
    hdr = bytes(dos) + coff + bytes(opt) + sec
    return hdr + b"\0" * (fa - len(hdr)) + raw + rel


def _image(pe: bytes, compress: bool = True, copies: int = 1, ui: str = "Probe") -> bytes:
    secs = B.sections(B.section(0x10, pe), B.ui(ui))
    if compress:
        secs = B.lzma_section(secs)
    files = [B.ffs(f"{i:08x}-1111-2222-3333-444444444444", 0x07, secs) for i in range(copies)]
    return B.fv(files, size=(sum(len(f) + 8 for f in files) + 0x2000 + 0xFFF) & ~0xFFF)


def _cli(tmp_path, data: bytes, *args: str, name: str = "img.fd"):
    import time

    p = tmp_path / name
    p.write_bytes(data)
    t0 = time.monotonic()
    r = CliRunner().invoke(main, [a if a != "IMG" else str(p) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(r.stderr.splitlines()) <= 1, r.stderr
    return r, time.monotonic() - t0


def test_image_memory_from_header_fields_is_capped_as_damage(tmp_path):
    """SizeOfImage and a section's VirtualSize sized the memory image: 4 GiB for a 12 KiB file."""
    from ovmftool.ops.modules import iter_modules

    for pe in (_pe64(b"\xc3" * 64, size_of_image=0xFFFFF000), _pe64(b"\xc3" * 64, vsize=0xFFFFF000)):
        data = _image(pe, compress=False)
        (m,) = iter_modules(parse_flash(data, "x"))
        assert len(m.image.memory) <= 1 << 20 and m.image.mem_size == len(m.image.memory)
        assert any("implausible" in str(p) for p in m.image.problems)
        for cmd in (
            ["info", "IMG"],
            ["scan", "IMG"],
            ["patch", "--dry-run", "IMG"],
            ["decode", "f3 6e", "--image", "IMG"],
        ):
            r, dt = _cli(tmp_path, data, *cmd)
            assert r.exit_code == 2 and "implausible" in r.stderr and dt < 10, (cmd, r.stderr)


def test_many_small_images_declaring_large_memory_hit_the_total_cap(tmp_path):
    r, dt = _cli(
        tmp_path, _image(_pe64(b"\xc3" * 64, size_of_image=0x100000), compress=False, copies=300), "info", "IMG"
    )
    assert r.exit_code == 2 and "images' memory would exceed the cap" in r.stderr and dt < 10


def test_section_count_is_capped():
    from ovmftool.ops.modules import iter_modules

    (m,) = iter_modules(parse_flash(_image(_pe64(b"\xc3" * 64, nsec=0xFFFF), compress=False), "x"))
    assert len(m.image.sections) <= 96 and any("more than the 96" in str(p) for p in m.image.problems)


def test_relocation_table_amplification(tmp_path):
    """A relocation table inside a small LZMA section: 40 MiB of DIR64 blocks (20 Mi entries,
    GBs as a list of tuples) is refused at parse time; 6 MiB is parsed into compact arrays."""
    blk = struct.pack("<II", 0x1000, 8 + 2 * 2044) + struct.pack("<H", 0xA000) * 2044
    r, dt = _cli(tmp_path, _image(_pe64(b"\xc3" * 64, relocs=blk * ((40 << 20) // len(blk)))), "info", "IMG")
    assert r.exit_code == 2 and "base relocation tables would exceed the cap" in r.stderr and dt < 10
    from ovmftool.ops.modules import iter_modules

    (m,) = iter_modules(parse_flash(_image(_pe64(b"\xc3" * 64, relocs=blk * 1024)), "x"))
    rel = m.image.relocations
    assert len(rel) == 1024 * 2044 and rel[5] == (0x1000, 10) and rel.rvas.itemsize == 8
    assert m.image.relocated_in(0x1000, 0x1001) and not m.image.relocated_in(0x2000, 0x3000)


def test_export_table_amplification(tmp_path):
    """65535 exports named by a region without a NUL: names are bounded, and 65535 export roots
    in a run of REX prefixes no longer make capstone read megabytes per root (hours of scan)."""
    from ovmftool.ops.modules import iter_modules

    n = 0xFFFF
    code = bytearray(b"\x41" * (4 << 20))
    struct.pack_into("<10I", code, 0, 0, 0, 0, 0, 0, n, n, 0x1040, 0x1040 + 4 * n, 0x1040 + 8 * n)
    struct.pack_into(f"<{n}I", code, 0x40, *range(0x101000, 0x101000 + n))
    struct.pack_into(f"<{n}I", code, 0x40 + 4 * n, *([0x201000] * n))
    struct.pack_into(f"<{n}H", code, 0x40 + 8 * n, *range(n))
    data = _image(_pe64(bytes(code), export=(0x1000, 40)))
    (m,) = iter_modules(parse_flash(data, "x"))
    ex = m.image.exports
    assert len(ex) == n and max(len(v) for v in ex.values()) <= 256
    r, dt = _cli(tmp_path, data, "scan", "IMG")
    assert r.exit_code == 0 and dt < 10, (r.stderr, dt)
    huge = bytearray(code[:0x1000])
    struct.pack_into("<10I", huge, 0, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0x1040, 0x1040, 0x1040)
    (m,) = iter_modules(parse_flash(_image(_pe64(bytes(huge), export=(0x1000, 40))), "x"))
    assert m.image.exports == {}


def _bra86(data: bytes, encoding: bool = False) -> bytes:
    """The LZMA SDK's Bra86.c x86_Convert (the 2017 version EDK II builds), transcribed byte by
    byte: the reference for the fast conversions."""
    buf = bytearray(data)
    size = len(buf)
    if size < 5:
        return bytes(buf)
    ip, pos, mask, size = 5, 0, 0, size - 4
    ms = lambda b: ((b + 1) & 0xFE) == 0  # noqa: E731
    while True:
        p = pos
        while p < size and buf[p] & 0xFE != 0xE8:
            p += 1
        d = p - pos
        pos = p
        if p >= size:
            return bytes(buf)
        if d > 2:
            mask = 0
        else:
            mask >>= d
            if mask != 0 and (mask > 4 or mask == 3 or ms(buf[p + (mask >> 1) + 1])):
                mask = (mask >> 1) | 4
                pos += 1
                continue
        if ms(buf[p + 4]):
            v = int.from_bytes(buf[p + 1 : p + 5], "little")
            cur = (ip + pos) & 0xFFFFFFFF
            pos += 5
            v = (v + cur if encoding else v - cur) & 0xFFFFFFFF
            if mask != 0:
                sh = (mask & 6) << 2
                if ms((v >> sh) & 0xFF):
                    v ^= ((0x100 << sh) - 1) & 0xFFFFFFFF
                    v = (v + cur if encoding else v - cur) & 0xFFFFFFFF
                mask = 0
            buf[p + 1 : p + 5] = ((v & 0xFFFFFF) | (0xFF000000 if v & 0x1000000 else 0)).to_bytes(4, "little")
        else:
            mask = (mask >> 1) | 4
            pos += 1


def test_bcj_x86_is_byte_identical_and_fast():
    """The LZMA-F86 branch conversion was a Python loop over every E8/E9 byte (tens of seconds on
    a large decoded section). Now: liblzma's filter for decoding, a loop over convertible bytes
    only for encoding; both byte-identical to Bra86.c on dense random data and real code."""
    import random
    import time

    from ovmftool.model.codecs import bcj_x86_decode, x86_convert

    rng = random.Random(12)
    for trial in range(3000):
        alpha = [[0xE8, 0xE9, 0x00, 0xFF, 0x11], [0xE8, 0, 0, 0, 0xFF, 0x12, 0xE9], list(range(256))][trial % 3]
        d = bytes(rng.choice(alpha) for _ in range(rng.choice([0, 4, 5, 6, 9, 17, 40, 130])))
        ref = _bra86(d)
        assert bcj_x86_decode(d) == ref == bytes(x86_convert(bytearray(d))), d.hex()
        assert bytes(x86_convert(bytearray(d), encoding=True)) == _bra86(d, encoding=True), d.hex()
    code = parse_flash(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes(), "x")
    dec = next(n for n in walk(code) if getattr(n, "decoded", None) is not None).decoded.data[: 1 << 20]
    enc = bytes(x86_convert(bytearray(dec), encoding=True))
    assert enc == _bra86(dec, encoding=True) and bcj_x86_decode(enc) == dec
    for bomb in (b"\xe8\0\0\0\0" * (4 << 20), b"\xe8" * (16 << 20), b"\xe8\0\0" * (6 << 20)):
        t0 = time.monotonic()
        out = bcj_x86_decode(bomb)
        assert len(out) == len(bomb) and time.monotonic() - t0 < 5
    t0 = time.monotonic()
    x86_convert(bytearray(b"\xe8" * (16 << 20)))
    assert time.monotonic() - t0 < 5


def test_lzma_f86_bomb_decodes_in_time(tmp_path):
    sec = B.guided(B.LZMAF86, B.lzma_alone(b"\xe8\0\0\0\0" * ((64 << 20) // 5)))
    r, dt = _cli(tmp_path, B.fv([B.ffs(MOD, 0x07, sec)], size=0x10000), "info", "IMG")
    assert r.exit_code == 2 and dt < 10


def test_errors_and_names_are_one_printable_line(tmp_path):
    """Decoder messages with newlines and raw section names with control characters made errors
    span lines and put terminal escapes into outputs."""
    from ovmftool.errors import OvmfToolError

    assert str(OvmfToolError("Failed to decompress\n) at 0x60\r\n\x1b[2J")) == "Failed to decompress ) at 0x60 \\x1b[2J"
    pe = _pe64(b"\xc3" * 64, name=b"\n\x1b[31m\x7f")
    ui = "evil\n\u202e\x1b]0;title\x07" + "x" * 400
    sec = bytearray(B.tiano_section(b"B" * 5000 + os.urandom(300)))
    for i in range(40, 120):
        sec[i] ^= 0xA5
    images = [
        _image(pe, compress=False, ui=ui),
        B.fv([B.ffs(MOD, 0x07, bytes(sec))], size=0x4000),
        _image(_pe64(b"\xc3" * 64, size_of_image=0xFFFFF000, name=b"\r\n\x00"), compress=False, ui=ui),
    ]
    for data in images:
        for cmd in (
            ["info", "IMG"],
            ["info", "--modules", "IMG"],
            ["scan", "IMG"],
            ["patch", "--dry-run", "IMG"],
            ["extract", "--allow-damaged", "IMG", "-o", str(tmp_path / "x")],
        ):
            r, _dt = _cli(tmp_path, data, *cmd)
            assert r.exit_code in (0, 1, 2), (cmd, r.output)
            for text in (r.stdout, r.stderr):
                assert text.count("\n") == len(text.splitlines()), (cmd, text)
                assert not any(0 < ord(c) < 32 and c != "\n" or c in "\x7f\u202e" for c in text), (cmd, text)
            shutil.rmtree(tmp_path / "x", ignore_errors=True)
    r, _dt = _cli(tmp_path, images[0], "info", "--modules", "IMG")
    assert "evil\\x0a\\u202e\\x1b]0;title\\x07xxx" in r.stdout and "x" * 130 not in r.stdout


def test_patch_with_lzma_parameters_liblzma_cannot_encode(tmp_path):
    """A dictionary size the decoder accepts (4 GiB) made the re-encoder fail: an internal error."""
    from ovmftool.ops.modules import iter_modules

    site = next(
        m
        for m in iter_modules(parse_flash(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes(), "x"))
        if m.name == "CpuIo2Dxe"
    ).image.raw
    inner = B.fv([B.ffs(MOD, 0x07, B.sections(B.section(0x10, site), B.ui("CpuIo2Dxe")))], size=0x4000)
    stream = bytearray(B.lzma_alone(B.fv_section(inner)))
    stream[1:5] = struct.pack("<I", 0xFFFFFFFF)
    data = B.fv([B.ffs("22222222-2222-2222-2222-222222222222", 0x0B, B.guided(B.LZMA, bytes(stream)))], size=0x4000)
    assert all_problems_of(data) == []
    out = tmp_path / "out.fd"
    r, dt = _cli(tmp_path, data, "patch", "IMG", "-o", str(out))
    assert r.exit_code == 0, r.output
    new = parse_flash(out.read_bytes(), "out")
    assert all_problems_of(out.read_bytes()) == []
    lz = next(n for n in walk(new) if getattr(n, "compression", None) == "LZMA")
    assert lz.body[1:5] == b"\xff\xff\xff\xff"  # the firmware's parameters are kept
    from ovmftool.model import encoders

    with pytest.raises(encoders.EncodeError, match="lc=8 lp=4"):
        encoders.encode_lzma(b"x", bytes([8 + 9 * 4]) + b"\0\0\x10\0" + bytes(8))


def all_problems_of(data: bytes) -> list[str]:
    from ovmftool.model.node import all_problems

    return [str(p) for p in all_problems(parse_flash(data, "x"))]


def test_scan_caps_on_hostile_code(tmp_path):
    """A small LZMA section can hold a module of megabytes of calls, string I/O or far calls:
    gigabytes and minutes in the walk. Now refused (exit 2) in seconds; a module of thousands of
    real IoFifo routines (18,000 sites) scans in seconds, not a quadratic minute."""
    cases = [
        b"\xe8\0\0\0\0" * ((15 << 20) // 5) + b"\xc3",  # calls: 3 Mi functions
        b"\xf3\x6e" * ((8 << 20) // 2) + b"\xc3",  # rep outsb: 4 Mi sites
        b"".join(b"\xe8" + struct.pack("<i", 0x40000000 + i * 8) for i in range(100000)) + b"\xc3",
    ]
    for code in cases:
        r, dt = _cli(tmp_path, _image(_pe64(code)), "scan", "IMG")
        assert r.exit_code == 2 and "caps" in r.stderr or "more than" in r.stderr, r.stderr
        assert dt < 10, dt
    r, dt = _cli(tmp_path, _image(_pe64(b"\0" * (40 << 20))), "scan", "IMG")
    assert r.exit_code == 2 and "more than the scanner walks" in r.stderr and dt < 10
    from ovmftool.model.node import Space
    from ovmftool.model.pe import parse_image
    from ovmftool.ops.modules import iter_modules

    site = next(
        m
        for m in iter_modules(parse_flash(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes(), "x"))
        if m.name == "CpuIo2Dxe"
    ).image.raw
    img = parse_image(Space(site, 0, "x"), 0, len(site), None)
    text = next(s for s in img.sections if s.name == ".text")
    body = site[text.raw_offset : text.raw_offset + text.raw_size]
    data = _image(_pe64(body * 1000))
    r, dt = _cli(tmp_path, data, "scan", "--format", "json", "IMG")
    assert r.exit_code == 1 and len(json.loads(r.stdout)["findings"]) == 6000 and dt < 10, dt
    r, dt = _cli(tmp_path, data, "patch", "--dry-run", "IMG")
    assert r.exit_code == 0 and dt < 10, dt


def _site_module() -> bytes:
    from ovmftool.ops.modules import iter_modules

    root = parse_flash(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes(), "x")
    return next(m for m in iter_modules(root) if m.name == "CpuIo2Dxe").image.raw


def test_patch_survives_hostile_routines(tmp_path):
    """Found by fuzzing patch: (1) a REP path with redundant prefixes indexed a NOP table past its
    end (KeyError); (2) an undecodable instruction in a routine's helper: unicorn reports its size
    as 0xF1F1F1F1 and the emulator recorded 4 Gi touched offsets (21 GB, minutes); (3) a module
    whose file alignment is 0x8BA0EA99 was padded to it when grown (7 GB)."""
    from ovmftool.model.node import Space
    from ovmftool.model.pe import parse_image
    from ovmftool.scan.disasm import cs
    from tools import fuzz

    long_rep = bytes.fromhex("85c0750dfcf3f3f3f3f3f36ee903000000e301c390c3")
    data = fuzz._fit([fuzz._module_file(1, 0x07, 0x10, _pe64(long_rep), "LongRep")])
    r, dt = _cli(tmp_path, data, "patch", "--dry-run", "IMG")
    assert r.exit_code == 1 and "REP path of 12 bytes" in r.stdout and dt < 10, r.output

    site = bytearray(_site_module())
    img = parse_image(Space(bytes(site), 0, "x"), 0, len(site), None)
    from ovmftool.scan import signatures as sigs
    from ovmftool.scan.scanner import exec_ranges

    fifo = sigs.find(img.memory, "X64", exec_ranges(img))[0]  # SevIoReadFifo8: it calls SevNoRepIo first
    body = img.memory[fifo.rva : fifo.end]
    call = next(ins for ins in cs(64).disasm_lite(body, fifo.rva) if ins[2] == "call")
    helper = img.rva_to_offset(int(call[3], 16))
    site[helper : helper + 3] = b"\xfc\xfe\x52"  # cld, then an undecodable FE /2
    r, dt = _cli(
        tmp_path, fuzz._fit([fuzz._module_file(1, 0x07, 0x10, bytes(site), "Broken")]), "patch", "--dry-run", "IMG"
    )
    assert r.exit_code == 1 and "did not return (Invalid instruction" in r.stdout and dt < 10, (dt, r.output)

    pe = bytearray(fuzz.pe_xip(b"\xc3" + b"\xcc" * 15 + fuzz._iofifo_routines()))
    struct.pack_into("<I", pe, 0x40 + 24 + 36, 0x8BA0EA99)  # FileAlignment
    r, dt = _cli(tmp_path, bytes(pe), "patch", "--dry-run", "IMG", name="m.efi")
    assert r.exit_code == 1 and "not a power of two" in r.stdout and dt < 10, r.output


def test_emulated_port_accesses_are_capped():
    from ovmftool.patch import emulate

    # in al, dx; jmp back: a port loop the instruction cap ends, recorded up to the port cap
    run = emulate._run(b"\xec\xeb\xfd" + bytes(0x100), 64, 0, 1)
    assert not run.returned and len(run.ports) <= emulate._MAX_PORTS and "port accesses" in run.error


def test_a_routine_that_never_returns_ends_at_the_instruction_cap():
    """Found by the fuzzer (patch of a mutated IoFifo routine, 10 s of emulation): a loop that
    never returns is stopped by the instruction cap, and what it executed is recorded once per
    instruction, not once per execution."""
    from ovmftool.patch import emulate

    run = emulate._run(b"\x90\xeb\xfd" + bytes(0x100), 64, 0, 1)  # nop; jmp back to the nop
    assert not run.returned and run.error is None
    assert run.touched == frozenset({0, 1, 2})
    assert emulate._MAX_INSNS <= 20_000  # each instruction runs a Python hook: keep the cap small


def test_string_io_bytes_no_routine_explains_are_matched_in_linear_time(tmp_path):
    """Found by coverage-guided fuzzing (tools/atheris_fuzz.py, target scan): a module whose code is
    tens of thousands of `rep outsb` byte pairs, under the anchor cap, sent the instruction-level
    signature matcher over every nearby start of every anchor for every routine: 20 s for 16 KiB,
    minutes for 64 KiB. Each start is now decoded once and rejected at its first instruction."""
    for pairs in (8192, 32000):
        r, dt = _cli(tmp_path, _image(_pe64(b"\xc3" + b"\xf3\x6e" * pairs)), "scan", "-j", "1", "IMG")
        assert r.exit_code in (0, 1) and dt < 10, (pairs, dt, r.stderr)


def test_a_damaged_gzip_log_is_one_line(tmp_path):
    """Found by fuzzing (target log): a gzip log whose deflate stream is damaged raised zlib.error,
    which `decode --log` reported as an internal error."""
    import gzip

    raw = bytearray(gzip.compress(b"Unhandled VM exit: InstEmul\n" * 50, mtime=0))
    raw[12:20] = b"\xff" * 8  # inside the deflate stream's block header
    p = tmp_path / "propolis.log.gz"
    p.write_bytes(bytes(raw))
    r = CliRunner().invoke(main, ["decode", "--log", str(p)])
    assert_error(r, f"cannot read {p}: ")


def test_a_deeply_nested_baseline_or_waiver_file_is_one_line(tmp_path):
    """Found by fuzzing (target baseline): `[` 2000 times hit Python's recursion limit in json."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 2000)
    image = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
    r = CliRunner().invoke(main, ["check", "--baseline", str(deep), image])
    assert_error(r, f"baseline {deep} is not JSON this tool reads: nested too deeply")
    r = CliRunner().invoke(main, ["check", "--waivers", str(deep), image])
    assert_error(r, f"waivers {deep} is not JSON this tool reads: nested too deeply")


def test_a_baseline_or_waiver_file_with_a_huge_number_is_one_line(tmp_path):
    """A number of 5,000 digits: Python's int conversion refuses it with a ValueError that is not
    a JSONDecodeError (it was an internal error)."""
    huge = tmp_path / "huge.json"
    huge.write_text('{"sites": [{"rva": ' + "9" * 5000 + "}]}")
    image = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
    for option, what in (("--baseline", "baseline"), ("--waivers", "waivers")):
        r = CliRunner().invoke(main, ["check", option, str(huge), image])
        assert_error(r, f"{what} {huge} is not JSON this tool reads: a number of thousands of digits")


def test_numbers_of_thousands_of_digits_in_decode_input(tmp_path):
    """Python converts at most 4,300 decimal digits: a `len` or a byte value that long was an
    internal error in `decode` and `decode --log`. A huge len cuts nothing; a huge byte is over 255."""
    n = "9" * 5000
    r = CliRunner().invoke(main, ["decode", f"inst_data: [243, 110], len: {n}"])
    assert r.exit_code == 0 and "REP OUTSB" in r.output, r.output
    log = tmp_path / "propolis.log"
    exit_line = "vCPU 0: Unhandled VM exit: InstEmul(InstEmul {{ inst_data: [{}, 110], len: {} }})\n"
    zeros = "0" * 5000 + "243"  # leading zeros count as digits for Python's limit too
    lines = [exit_line.format(zeros, n), exit_line.format(n, 2), exit_line.format("\u00b2", 2)]  # ² is a digit
    log.write_text("".join(lines) + f"vCPU {n}: " + exit_line.format(243, 2).split(": ", 1)[1])
    r = CliRunner().invoke(main, ["decode", "--log", str(log)])
    assert r.exit_code == 1 and "Traceback" not in r.output and "internal error" not in r.output, r.output
    assert "bytes (2): f3 6e" in r.output and "inst_data has values over 255 (1)" in r.output
    assert "inst_data is not a list of byte values (1)" in r.output
    r = CliRunner().invoke(main, ["decode", "[\u00b2, 110]"])
    assert r.exit_code == 2 and "as a list of byte values" in r.output


def test_a_baseline_recording_a_path_with_a_nul_is_matched_by_contents(tmp_path):
    """A path holding NUL names no file (os.path.realpath raised: internal error); the entry
    still applies by the image's contents."""
    image = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
    base = tmp_path / "b.json"
    assert CliRunner().invoke(main, ["baseline", image, "-o", str(base)]).exit_code == 0
    doc = json.loads(base.read_text())
    doc["image"]["path"] = "fw\u0000.fd"
    base.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["check", "--baseline", str(base), image])
    assert r.exit_code == 0 and "internal error" not in r.output and "0 new" in r.output, r.output
