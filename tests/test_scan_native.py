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

from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_code_blobs, iter_modules
from ovmftool.scan import scanner
from ovmftool.scan import signatures as sigs
from ovmftool.scan.codemap import discover, native_available
from ovmftool.scan.disasm import native_decoder
from tests.conftest import CODE_IMAGES, ROOT, stored


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
        yield m.name, mem, img.bits, ranges, strong, scanner.pointer_roots(img, mem)
    for b in iter_code_blobs(root):
        yield "ResetVector", b.data, 16, [(0, len(b.data))], [(b.entry_offset, "entry")], []


def _same_maps(path) -> tuple[int, int, list[str]]:
    modules = sites = 0
    diff = []
    for name, mem, bits, ranges, strong, weak in _inputs(path):
        a = discover(mem, bits, ranges, strong, weak, native=True)
        b = discover(mem, bits, ranges, strong, weak, native=False)
        lean = discover(mem, bits, ranges, strong, weak, native=True, lean=True)
        assert a.sizes is not None and b.sizes is None  # really one of each
        if (a.instruction_starts(), a.functions, sorted(a.calls), sorted(a.tails), a.sites, a.code_bytes) != (
            b.starts,
            b.functions,
            sorted(b.calls),
            sorted(b.tails),
            b.sites,
            b.code_bytes,
        ):
            diff.append(name)
        if (lean.lean, lean.function_count, lean.code_bytes, lean.sites) != (
            not b.sites,
            len(b.functions),
            b.code_bytes,
            b.sites,
        ):
            diff.append(f"{name} (lean)")
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
    modules, sites, diff = _same_maps(stored("2022.11-Ia32X64-DEBUG").code)
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
    code = bytes.fromhex("eb10e9 00010000".replace(" ", "") + "90" * 32)
    handled, bad = _check_fast(code, 64, bytes(kinds))
    assert handled >= 3 and {x[0] for x in bad} == {0, 2}


def test_scan_output_is_the_same_with_either_walk():
    img = str(CODE_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
    out = {}
    for pure in ("", "1"):
        env = {**os.environ, "OVMFTOOL_PURE_PYTHON": pure}
        r = subprocess.run(
            [sys.executable, "-m", "ovmftool", "scan", "--jobs", "1", "--format", "json", img],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert r.returncode == 1, r.stderr
        out[pure] = json.loads(r.stdout)
    assert out[""]["findings"] and out[""] == out["1"]


# --- the scan's other native helpers (issue 15): each equal to its Python reference -----------


def _modules(key="images/debian-2022.11/OVMF_CODE_4M.fd"):
    return [m for m in iter_modules(read_image(str(CODE_IMAGES[key])))]


def test_lean_map_keeps_the_counts_and_drops_the_graph_only_without_sites():
    lean_maps = 0
    for m in _modules():
        img = m.image
        mem, ranges = img.memory, scanner.exec_ranges(img)
        strong = [(mt.rva, "signature") for mt in sigs.find(mem, m.arch, ranges)] + [(img.entry_rva, "entry")]
        weak = scanner.pointer_roots(img, mem)
        full = discover(mem, img.bits, ranges, strong, weak)
        lean = discover(mem, img.bits, ranges, strong, weak, lean=True)
        assert (lean.function_count, lean.code_bytes, lean.sites) == (len(full.functions), full.code_bytes, full.sites)
        assert lean.lean == (not full.sites)
        if lean.lean:
            lean_maps += 1
            assert lean.functions == set() and lean.calls == [] and lean.sizes is None
        else:
            assert (lean.functions, lean.calls, lean.tails) == (full.functions, full.calls, full.tails)
    assert lean_maps > 100  # most modules hold no site


def test_native_anchor_search_equals_python(monkeypatch):
    from ovmftool.scan import _walk

    mods = _modules()
    key = lambda ms: [(x.rva, x.signature.arch, x.signature.source, x.signature.routine) for x in ms]  # noqa: E731
    native = [key(sigs.find(m.image.memory, m.arch, scanner.exec_ranges(m.image))) for m in mods]
    monkeypatch.setenv("OVMFTOOL_PURE_PYTHON", "1")
    python = [key(sigs.find(m.image.memory, m.arch, scanner.exec_ranges(m.image))) for m in mods]
    assert native == python and sum(map(len, native)) >= 40
    # overlapping and self-overlapping anchors, ranges past the end or empty, every limit
    rnd = random.Random(15)
    anchors = [b"\xf3\x6c", b"\xf3\x66\x6d", b"\xf3\xf3", b"\x6c"]
    for _ in range(2000):
        mem = bytes(rnd.choice(b"\xf3\x6c\x66\x6d\x00") for _ in range(rnd.randint(0, 200)))
        ranges = [(rnd.randint(0, 220), rnd.randint(0, 240)) for _ in range(rnd.randint(0, 3))]
        limit = rnd.choice([0, 1, 3, 10, 65536])
        monkeypatch.setattr(sigs, "MAX_ANCHORS", limit)
        want = sigs._anchor_positions(mem, ranges, anchors)  # OVMFTOOL_PURE_PYTHON: the Python loop
        assert _walk.find_anchors(mem, ranges, anchors, limit) == want, (mem, ranges, limit)


def test_native_pointer_targets_equal_python(monkeypatch):
    from ovmftool.model.pe import Relocations
    from ovmftool.scan.codemap import pointer_targets

    mods = [m.image for m in _modules()]
    native = [pointer_targets(img.memory, img.relocations, img.image_base) for img in mods]
    monkeypatch.setenv("OVMFTOOL_PURE_PYTHON", "1")
    assert native == [pointer_targets(img.memory, img.relocations, img.image_base) for img in mods]
    assert sum(map(len, native)) > 10_000
    rnd = random.Random(15)
    for _ in range(2000):
        mem = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
        rel = Relocations()
        for _ in range(rnd.randint(0, 12)):
            rel.add(rnd.choice([rnd.randint(0, 48), 2**64 - 1, 2**64 - 4, 2**63]), rnd.choice([0, 3, 5, 10]))
        base = rnd.choice([0, 1, 0x1000, 2**64 - 1, int.from_bytes(mem[:8], "little")])
        monkeypatch.setenv("OVMFTOOL_PURE_PYTHON", "1")
        want = pointer_targets(mem, rel, base)
        monkeypatch.delenv("OVMFTOOL_PURE_PYTHON")
        assert pointer_targets(mem, rel, base) == want, (mem, list(rel), base)


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_native_disasm_lite_equals_capstone(bits):
    from ovmftool.scan.disasm import cs, disasm_lite

    rnd = random.Random(bits)
    for _ in range(3000):
        code = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 48)))
        assert disasm_lite(code, bits) == list(cs(bits).disasm_lite(code, 0)), code.hex()


def test_native_path_reads_capstone_ids_without_the_package():
    """The native walk's kinds table and handle come without importing the capstone package
    (its import is a tenth of a scan); the ids it reads from x86_const.py are the package's."""
    code = (
        "import sys, json\n"
        "from ovmftool.scan import disasm\n"
        "ids = {k: v for k, v in vars(disasm._x86_const()).items() if k.startswith('X86_INS_')}\n"
        "assert disasm.native_decoder(64) is not None\n"
        "print(json.dumps(['capstone' in sys.modules, ids, sorted(disasm._kinds().items())]))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "OVMFTOOL_PURE_PYTHON"},
    )
    assert r.returncode == 0, r.stderr
    imported, ids, kinds = json.loads(r.stdout)
    from capstone import x86_const

    from ovmftool.scan import disasm

    assert not imported
    assert ids == {k: v for k, v in vars(x86_const).items() if k.startswith("X86_INS_")}
    assert [list(x) for x in sorted(disasm._kinds().items())] == kinds


def test_scan_imports_nothing_it_does_not_use():
    """A one-job scan with the native walk imports neither the capstone package, unicorn,
    jsonschema, multiprocessing, concurrent.futures, shutil nor tempfile (issue 15: start-up is a
    third of a scan) — beyond what the interpreter's own start-up imported (site, .pth files)."""
    img = str(CODE_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
    code = (
        "import sys\n"
        "pre = set(sys.modules)\n"  # what the interpreter's start-up imported (site, .pth files)
        "from ovmftool.cli import main\n"
        f"sys.argv = ['ovmftool', 'scan', '--format', 'json', {img!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "bad = ('capstone', 'unicorn', 'jsonschema', 'multiprocessing', 'concurrent.futures', 'shutil', 'tempfile')\n"
        "print(sorted(m for m in bad if m in sys.modules and m not in pre), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OVMFTOOL_PURE_PYTHON"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**env, "OVMFTOOL_NO_CACHE": "1"}
    )
    assert json.loads(r.stdout)["findings"]
    assert r.stderr.strip().splitlines()[-1] == "[]", r.stderr
