"""The native walk (ovmftool/scan/_walk.c) against the Python reference walk and capstone.

The C walk must give the same code map as codemap.Discoverer on real modules, and its fast
length decoder must agree with capstone wherever it answers. Both checks run over every module
of the corpus images (IA32 PEI and X64 DXE) and a DEBUG build, and the decoder check also over
random bytes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from conftest import CODE_IMAGES, ROOT, build_dir
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_code_blobs, iter_modules
from ovmftool.scan import scanner, signatures as sigs
from ovmftool.scan.codemap import discover, native_available
from ovmftool.scan.disasm import native_decoder


def test_native_walk_is_built():
    """CI installs with a C compiler, so the extension must be there (else scans are 5x slower)."""
    assert native_available(), "ovmftool.scan._walk was not built (pip install needs a C compiler)"


def _inputs(path):
    root = read_image(str(path))
    for m in iter_modules(root):
        img = m.image
        mem = img.memory
        ranges = scanner.exec_ranges(img)
        strong = [(mt.rva, "signature") for mt in sigs.find(mem, m.arch, ranges)]
        strong += [(img.entry_rva, "entry")] + [(r, "export") for r in sorted(img.exports)]
        yield m.name, mem, img.bits, ranges, strong, scanner._pointer_roots(img, mem)
    for b in iter_code_blobs(root):
        yield "ResetVector", b.data, 16, [(0, len(b.data))], [(b.entry_offset, "entry")], []


def _same_maps(path) -> tuple[int, int, list[str]]:
    modules = sites = 0
    diff = []
    for name, mem, bits, ranges, strong, weak in _inputs(path):
        a = discover(mem, bits, ranges, strong, weak, native=True)
        b = discover(mem, bits, ranges, strong, weak, native=False)
        assert a.sizes is not None and b.sizes is None  # really one of each
        if (a.instruction_starts(), a.functions, sorted(a.calls), sorted(a.tails), a.sites, a.code_bytes) != \
                (b.starts, b.functions, sorted(b.calls), sorted(b.tails), b.sites, b.code_bytes):
            diff.append(name)
        modules += 1
        sites += len(a.sites)
    return modules, sites, diff


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(k for k in CODE_IMAGES if "_4M" in k))
def test_native_walk_equals_python_walk_on_debian_images(key):
    modules, sites, diff = _same_maps(CODE_IMAGES[key])
    assert modules > 100 and sites >= 90
    assert diff == []


@pytest.mark.build
@pytest.mark.slow
def test_native_walk_equals_python_walk_on_debug_build():
    modules, sites, diff = _same_maps(build_dir("2022.11-Ia32X64-DEBUG") / "FV" / "OVMF_CODE.fd")
    assert modules > 100 and sites >= 600
    assert diff == []


def _check_fast(data: bytes, bits: int, kinds: bytes | None = None):
    from ovmftool.scan import _walk

    fn, args = native_decoder(bits)
    if kinds is not None:
        args = args[:-1] + (kinds,)
    return _walk.check_fast(data, bits, *args)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(k for k in CODE_IMAGES if "_4M" in k))
def test_fast_decoder_agrees_with_capstone_at_every_offset(key):
    handled = total = 0
    bad = []
    for m in iter_modules(read_image(str(CODE_IMAGES[key]))):
        img = m.image
        for lo, hi in scanner.exec_ranges(img):
            n, mismatches = _check_fast(img.memory[lo:hi], img.bits)
            handled += n
            total += hi - lo
            bad += [(m.name, lo + x[0]) for x in mismatches]
    assert bad == []
    assert handled > total // 2  # the fast path answers for most offsets, so the check means something


@pytest.mark.parametrize("bits", [32, 64])
def test_fast_decoder_agrees_with_capstone_on_random_bytes(bits):
    rnd = random.Random(bits)
    data = bytes(rnd.getrandbits(8) for _ in range(200_000))
    handled, bad = _check_fast(data, bits)
    assert handled > 50_000 and bad == []


def test_fast_decoder_check_catches_a_difference():
    """A kinds table that calls JMP plain makes capstone's answer differ from the fast path's."""
    from capstone import x86_const as X

    fn, args = native_decoder(64)
    kinds = bytearray(args[-1])
    kinds[X.X86_INS_JMP] = 0
    code = bytes.fromhex("eb10" "e9 00010000".replace(" ", "") + "90" * 32)
    handled, bad = _check_fast(code, 64, bytes(kinds))
    assert handled >= 3 and {x[0] for x in bad} == {0, 2}


def test_scan_output_is_the_same_with_either_walk():
    img = str(CODE_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
    out = {}
    for pure in ("", "1"):
        env = {**os.environ, "OVMFTOOL_PURE_PYTHON": pure}
        r = subprocess.run([sys.executable, "-m", "ovmftool", "scan", "--jobs", "1", "--format", "json", img],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        assert r.returncode == 1, r.stderr
        out[pure] = json.loads(r.stdout)
    assert out[""]["findings"] and out[""] == out["1"]
