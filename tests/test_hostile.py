"""Damaged and hostile inputs: one line naming what and where, exit code 2, no traceback, no hang."""

import json
import os
import stat
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

import fvbuild as B
from ovmftool.cli import main
from ovmftool.model.node import walk
from ovmftool.model.parser import parse_flash

from conftest import CORPUS_IMAGES

MOD = "11111111-2222-3333-4444-555555555555"


def run_info(tmp_path, data: bytes, name="img.fd"):
    p = tmp_path / name
    p.write_bytes(data)
    r = CliRunner().invoke(main, ["info", str(p)])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


def assert_error(r, *words):
    assert r.exit_code == 2, r.output
    errs = [l for l in r.output.splitlines() if l.startswith("ovmftool: error:")]
    assert len(errs) == 1, r.output
    for w in words:
        assert w in errs[0], errs[0]
    return errs[0]


@pytest.fixture(scope="module")
def sample() -> bytes:
    """A small image with a compressed nested volume, a stored section and a CRC32 section."""
    pe = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes()  # any bytes do as a PE body here
    from ovmftool.model.parser import read_image
    from ovmftool.ops.modules import iter_modules

    img = next(m for m in iter_modules(read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])))
               if m.name == "CpuIo2Dxe").image.raw
    inner = B.fv([B.ffs(MOD, 0x07, B.sections(B.section(0x10, img), B.ui("CpuIo2Dxe")))], size=0x8000)
    f1 = B.ffs("22222222-2222-2222-2222-222222222222", 0x0B, B.lzma_section(B.fv_section(inner)))
    f2 = B.ffs("33333333-3333-3333-3333-333333333333", 0x07,
               B.stored_section(B.sections(B.section(0x10, img), B.ui("Stored"))), checksum=True)
    f3 = B.ffs("44444444-4444-4444-4444-444444444444", 0x07, B.crc_section(B.sections(B.section(0x10, img))))
    del pe
    return B.fv([f1, f2, f3], size=0x10000, name="48db5e17-707c-472d-91cd-1613e7ef51b0")


def test_sample_is_clean(tmp_path, sample):
    r = run_info(tmp_path, sample)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("data,words", [
    (b"", ["empty"]),
    (os.urandom(65536), ["no firmware volume"]),
    (b"hello, this is not firmware\n" * 100, ["no firmware volume"]),
    (b"\0" * 40 + b"_FVH" + b"\0" * 100, ["no firmware volume"]),
])
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
    # Declared size beyond the cap: refused before decoding.
    huge = bytearray(B.lzma_alone(b"\0" * 1000))
    huge[5:13] = struct.pack("<Q", 1 << 40)
    r = run_info(tmp_path, B.fv([B.ffs(MOD, 0x02, B.guided(B.LZMA, bytes(huge)))], size=0x2000))
    assert_error(r, "exceeds the per-section cap")
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

    from ovmftool.report.io import write_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    img = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]
    r = CliRunner().invoke(main, ["scan", "--format", "json", "-o", str(fifo), str(img)])
    reader.join(30)
    assert r.exit_code == 1 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])["findings"]
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(str(link), b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    with pytest.raises(Exception, match="is a directory"):
        write_atomic(str(tmp_path), b"x")
