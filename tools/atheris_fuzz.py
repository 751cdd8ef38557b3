"""Coverage-guided fuzzing of ovmftool with atheris (libFuzzer), one target at a time, resumable.

    python -m tools.atheris_fuzz TARGET --dir DIR [--runs N | --seconds S] [--sanitized]
    python -m tools.atheris_fuzz TARGET --dir DIR --replay FILE [--sanitized]   # one input again
    python -m tools.atheris_fuzz --list                                         # the targets

Targets (each a function of the input bytes; an OvmfToolError is an expected answer, anything
else is a finding):

  image     model.parser.parse_flash, then everything the model reads lazily (relocations,
            exports, debug paths: scan.verdict.read_lazy_structures), the info tree (text and
            JSON nodes), the module table, code blobs, the verdict rules (check_scannable)
  scan      parse_flash of a module (or a small image), scan.scanner.scan_module of its first
            modules and scan_blobs: signatures, pointer roots and the native walk
  walk      the native walk directly on mutated module memory: codemap.discover (lean and full,
            run twice: the C walk keeps an arena between calls and must give equal maps),
            codemap.pointer_targets (C pointer_roots), the C find_anchors (as signatures.find calls it),
            disasm.disasm_lite; the input is a small header (bits, exec ranges, strong roots,
            relocations, image base) and the memory image (`encode_walk_input`)
  decode    triage.decode: parse_bytes of text (first byte even) or decode of raw bytes (odd),
            16/32/64 bits, find_in_image on a fixed image, both renderings
  log       triage.log.read_log of the bytes as a log file (plain, JSON, gzip/xz/bzip2), both
            renderings, find_in_image
  baseline  gate.baseline.load_baseline_images / load_baseline / load_waivers of the bytes as a
            file, then baseline_for and check against a fixed scan, and the check's lines
  patch     `ovmftool patch --dry-run -j 1 [--format json] FILE` through click (OVMFTOOL_DEBUG=1,
            so an internal error surfaces as its exception); exit codes 0, 1, 2 are answers

The driver (this file without --worker) keeps, under DIR/TARGET/: corpus/ (libFuzzer's, grows and
is reused by the next run: runs resume), seeds/ (made once from the corpus images, small real
modules, tests/fvbuild.py's synthetic images and tools/fuzz.py's structured mutations, imported
from tools/fuzz.py with importlib), crashes/ (libFuzzer's artifacts: crash-*, timeout-*, oom-*,
each with a .txt holding the report), logs/ and a libFuzzer dictionary. Each run is appended to
DIR/totals.json with its executions, coverage (libFuzzer's last `cov:` and `ft:`), exec/s, peak
RSS and crashes; "targets" there sums them per target. A crash ends libFuzzer's process: the
driver records it and starts again for the rest of the budget (--max-restarts).

libFuzzer runs with -timeout=10 (a hang: an input running longer) and -rss_limit_mb=1024 (and
malloc_limit_mb the same), -max_len per target, -print_final_stats=1.

--sanitized loads the native walk built by tools/build_sanitized_walk.sh (built when missing or
older than ovmftool/scan/_walk.c) as ovmftool.scan._walk, with atheris' asan_with_fuzzer.so in
LD_PRELOAD, PYTHONMALLOC=malloc (so ASan sees Python's buffers), ASAN_OPTIONS
detect_leaks=0 and UBSan halting on its first report. capstone loads its library with
RTLD_DEEPBIND, which ASan refuses: the worker removes os.RTLD_DEEPBIND before anything imports
capstone (the only change to the process's behaviour).

Runs on one core as its caller places it: `taskset -c 1 nice -n 10 python -m tools.atheris_fuzz ...`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIMEOUT_S = 10
RSS_MB = 1024
DEFAULT_WALK_BUILD = ROOT / "build" / "sanitized-walk"
FIXTURE_SEED = "repfifo"  # tools/fuzz.py's synthetic image with string I/O sites (decode/log/baseline use it)

MAX_LEN = {
    "image": 256 << 10,
    "scan": 64 << 10,
    "walk": 64 << 10,
    "decode": 4096,
    "log": 16 << 10,
    "baseline": 16 << 10,
    "patch": 64 << 10,
}
TARGETS = tuple(MAX_LEN)


# --- the targets (run in the worker, after the instrumented imports) ------------------------------


class Harness:
    """The fuzz targets. Built once in the worker: fixtures (a parsed image, a scan result) and
    a scratch directory for the targets that take a path."""

    def __init__(self, work: Path, fixture: Path) -> None:
        from ovmftool.model.parser import parse_flash

        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.file = str(work / f"input-{os.getpid()}")
        self.fixture_path = str(fixture)
        self.fixture = parse_flash(fixture.read_bytes(), str(fixture))
        self._scan = None
        self._anchors: dict[int, list[bytes]] = {}

    def _write(self, data: bytes) -> str:
        with open(self.file, "wb") as fh:
            fh.write(data)
        return self.file

    # (a)
    def image(self, data: bytes) -> None:
        from ovmftool.errors import OvmfToolError
        from ovmftool.model.binary import BinaryFile
        from ovmftool.model.node import all_problems
        from ovmftool.model.parser import foreign_machine, parse_flash
        from ovmftool.ops import tree
        from ovmftool.ops.modules import iter_code_blobs, iter_modules
        from ovmftool.report.info_report import render_info
        from ovmftool.scan.verdict import check_scannable, read_lazy_structures, unread_parts

        try:
            root = parse_flash(data, "fuzz.fd")
        except OvmfToolError:
            return
        try:
            read_lazy_structures(root)
            all_problems(root)
            if not isinstance(root, BinaryFile):
                foreign_machine(root)
            json.dumps(tree.node_dict(root))
            for fmt in ("text", "json"):
                for modules_only in (False, True):
                    render_info(root, fmt, modules_only)
            for m in iter_modules(root):
                json.dumps(m.as_dict())
                _ = (m.name, m.phase, m.build_info, m.image.memory, m.image.bits)
            for b in iter_code_blobs(root):
                _ = (b.data, b.mode)
            unread_parts(root)
            check_scannable("fuzz.fd", root)
        except OvmfToolError:
            pass

    # (b)
    def scan(self, data: bytes) -> None:
        from ovmftool.errors import OvmfToolError
        from ovmftool.model.parser import parse_flash
        from ovmftool.ops.modules import iter_modules
        from ovmftool.scan.scanner import scan_blobs, scan_module

        try:
            root = parse_flash(data, "fuzz.efi")
        except OvmfToolError:
            return
        for i, m in enumerate(iter_modules(root)):
            if i == 4:
                break
            try:
                scan_module(m)
            except OvmfToolError:
                pass
        try:
            scan_blobs(root)
        except OvmfToolError:
            pass

    def walk(self, data: bytes) -> None:
        from ovmftool.errors import OvmfToolError
        from ovmftool.model.pe import Relocations
        from ovmftool.scan import signatures as sigs
        from ovmftool.scan.codemap import discover, native_available, pointer_targets
        from ovmftool.scan.disasm import disasm_lite

        w = decode_walk_input(data)
        if w is None:
            return
        bits, lean, signatures, ranges, strong, relocs, base, mem = w
        rel = Relocations()
        for rva, t in relocs:
            rel.add(rva, t)
        weak = pointer_targets(mem, rel, base)
        if signatures:  # the C find_anchors, as signatures.find calls it (not find's Python matching)
            sigs._anchor_positions(mem, ranges, self.anchors(bits))
        disasm_lite(mem[:64], bits)
        roots = [(r, "entry") for r in strong]
        maps = []
        for _ in range(2):
            try:
                maps.append(_map_key(discover(mem, bits, ranges, roots, weak, native=True, lean=lean)))
            except OvmfToolError as e:
                maps.append(("error", str(e)))
        if maps[0] != maps[1]:
            raise AssertionError(
                f"the native walk gave two different maps for one input: {maps[0]!r:.300} != {maps[1]!r:.300}"
            )
        if not native_available():
            raise AssertionError("the native walk is not in use")

    def anchors(self, bits: int) -> list[bytes]:
        """The byte strings signatures.find looks for (each string I/O instruction's encodings)."""
        from ovmftool.scan import signatures as sigs

        if bits in self._anchors:
            return self._anchors[bits]
        arch = "X64" if bits == 64 else "IA32"
        out: dict[bytes, None] = {}
        for sig in sigs.load():
            if sig.arch == arch:
                for off in sig.sites:
                    end = off + 1
                    while sig.code[end - 1] not in (0x6C, 0x6D, 0x6E, 0x6F):
                        end += 1
                    out.update(dict.fromkeys(sigs._encodings(sig.code[off:end])))
        self._anchors[bits] = list(out)
        return self._anchors[bits]

    # (c)
    def decode(self, data: bytes) -> None:
        from ovmftool.errors import OvmfToolError
        from ovmftool.report.decode_report import render
        from ovmftool.triage.decode import decode, find_in_image, parse_bytes

        if not data:
            return
        bits = (16, 32, 64)[data[0] % 3]
        try:
            if data[0] & 1:
                stream = data[1:]
                if not stream:
                    return
            else:
                stream = parse_bytes(data[1:].decode("utf-8", "replace"))
            t = decode(stream, bits)
            find_in_image(t, self.fixture)
            render(t, "text")
            json.dumps(render(t, "json"))
        except OvmfToolError:
            pass

    # (d)
    def log(self, data: bytes) -> None:
        from ovmftool.errors import OvmfToolError
        from ovmftool.report.decode_report import render
        from ovmftool.triage.log import find_in_image, read_log

        try:
            lt = read_log(self._write(data), 64)
            find_in_image(lt, self.fixture)
            render(lt, "text")
            render(lt, "json")
        except OvmfToolError:
            pass

    # (e)
    def baseline(self, data: bytes) -> None:
        from ovmftool.errors import OvmfToolError
        from ovmftool.gate import baseline as G
        from ovmftool.report.gate_report import check_lines

        path = self._write(data)
        r = self.scan_result()
        keys: set[str] = set()
        try:
            entries = G.load_baseline_images(path)
            G.baseline_for(entries, r, True)
            G.baseline_for(entries, r, False)
            keys = G.load_baseline(path)
        except OvmfToolError:
            pass
        try:
            waivers = G.load_waivers(path)
        except OvmfToolError:
            return
        for w in waivers:
            w.describe()
        out = G.check(r, keys, waivers, dt.date(2026, 1, 1))
        check_lines(out)

    def scan_result(self):
        """The fixture image's scan (its sites are what baselines and waivers are checked against)."""
        if self._scan is None:
            from ovmftool.scan.scanner import scan_image

            self._scan = scan_image(self.fixture_path, None, 1, root=self.fixture)
        return self._scan

    # (f)
    def patch(self, data: bytes) -> None:
        from click.testing import CliRunner

        from ovmftool.cli import main

        if not data:
            return
        path = self._write(data)
        argv = ["patch", "--dry-run", "-j", "1", path]
        if data[-1] & 1:
            argv[1:1] = ["--format", "json"]
        r = CliRunner(env={"OVMFTOOL_DEBUG": "1", "OVMFTOOL_NO_CACHE": "1"}).invoke(main, argv, catch_exceptions=True)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        if r.exit_code not in (0, 1, 2):
            raise AssertionError(f"exit code {r.exit_code}: {r.stderr[:300]!r}")
        if "out of memory" in r.stderr or "internal error" in r.stderr:
            raise AssertionError(f"exit code {r.exit_code}: {r.stderr[:300]!r}")


def _map_key(cmap) -> tuple:
    """What a code map holds, to compare two walks' maps."""
    return (
        cmap.lean,
        cmap.code_bytes,
        cmap.function_count,
        [(s.rva, s.size, s.mnemonic, s.function) for s in cmap.sites],
        sorted(cmap.functions),
        list(cmap.calls),
        list(cmap.tails),
        cmap.sizes,
    )


# --- the walk target's input: a header, then the memory image ----------------------------------

# flags (bit 0: 64-bit, bit 1: lean, bit 2: signatures.find too), ranges, strong roots, relocations
_WALK_HEAD = struct.Struct("<BBBB")
REL_HIGHLOW, REL_DIR64 = 3, 10


def encode_walk_input(
    mem: bytes,
    bits: int,
    ranges: list[tuple[int, int]],
    strong: list[int],
    relocs: list[tuple[int, int]],
    base: int,
    lean: bool = True,
    signatures: bool = False,
) -> bytes:
    """The walk target's input for a module (see `decode_walk_input`): at most 4 ranges, 8 strong
    roots and 255 relocations are kept."""
    ranges, strong, relocs = ranges[:4], strong[:8], relocs[:255]
    flags = (bits == 64) | (lean << 1) | (signatures << 2)
    out = bytearray(_WALK_HEAD.pack(flags, len(ranges), len(strong), len(relocs)))
    for lo, hi in ranges:
        out += struct.pack("<II", lo & 0xFFFFFFFF, min(hi, 0xFFFFFFFF))
    for r in strong:
        out += struct.pack("<I", r & 0xFFFFFFFF)
    for rva, t in relocs:
        out += struct.pack("<I", (rva & 0x0FFFFFFF) | ((t == REL_DIR64) << 28))
    out += struct.pack("<Q", base & 0xFFFFFFFFFFFFFFFF)
    return bytes(out) + mem


def decode_walk_input(data: bytes):
    """(bits, lean, signatures, ranges, strong, relocations, base, mem) from the walk target's input, or None
    when the header is cut. Ranges are as `scan.analysis.exec_ranges` makes them: [lo, hi) of
    32-bit values, sorted; relocations are DIR64 or HIGHLOW (bit 28 of the word), rva below 2**28."""
    if len(data) < _WALK_HEAD.size:
        return None
    flags, nr, ns, nrel = _WALK_HEAD.unpack_from(data)
    nr, ns = nr % 5, ns % 9
    need = _WALK_HEAD.size + 8 * nr + 4 * ns + 4 * nrel + 8
    if len(data) < need:
        return None
    p = _WALK_HEAD.size
    ranges = sorted(struct.unpack_from("<II", data, p + 8 * i) for i in range(nr))
    p += 8 * nr
    strong = list(struct.unpack_from(f"<{ns}I", data, p))
    p += 4 * ns
    relocs = [
        (w & 0x0FFFFFFF, REL_DIR64 if w >> 28 & 1 else REL_HIGHLOW) for w in struct.unpack_from(f"<{nrel}I", data, p)
    ]
    p += 4 * nrel
    (base,) = struct.unpack_from("<Q", data, p)
    mem = bytes(data[p + 8 :])
    return (64 if flags & 1 else 32), bool(flags & 2), bool(flags & 4), ranges, strong, relocs, base, mem


# --- the worker: atheris in this process ------------------------------------------------------


def load_sanitized_walk(so: str) -> None:
    """Make `so` (tools/build_sanitized_walk.sh's build) the module ovmftool.scan._walk, before
    anything imports the installed one; and let capstone load without RTLD_DEEPBIND (ASan
    refuses it)."""
    import importlib.util

    if hasattr(os, "RTLD_DEEPBIND"):
        del os.RTLD_DEEPBIND
    spec = importlib.util.spec_from_file_location("ovmftool.scan._walk", so)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {so}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["ovmftool.scan._walk"] = mod


def import_instrumented() -> None:
    """Import every ovmftool module with atheris' bytecode instrumentation (the targets import
    lazily, and a module imported outside the block would give libFuzzer no coverage)."""
    import pkgutil

    import atheris

    # third-party modules first, uninstrumented
    import capstone  # noqa: F401
    import click  # noqa: F401
    import click.testing  # noqa: F401

    with atheris.instrument_imports(include=["ovmftool"]):
        import ovmftool

        for info in pkgutil.walk_packages(ovmftool.__path__, "ovmftool."):
            if ".boot.plugin" in info.name or info.name.endswith("__main__"):
                continue
            try:
                __import__(info.name)
            except Exception as e:  # an optional part that does not import here: said, not fatal
                print(f"atheris_fuzz: not instrumented: {info.name}: {type(e).__name__}: {e}", file=sys.stderr)
    import ovmftool.scan

    walk = sys.modules.get("ovmftool.scan._walk")
    if walk is not None:
        ovmftool.scan._walk = walk


def worker(argv: list[str]) -> None:
    """`--worker TARGET WORK FIXTURE [libFuzzer args...]`: run libFuzzer on TARGET in this process."""
    target, work, fixture, *lf_args = argv
    so = os.environ.get("OVMFTOOL_SANITIZED_WALK")
    if so:
        load_sanitized_walk(so)
    import atheris

    import_instrumented()
    if so:
        from ovmftool.scan import _walk
        from ovmftool.scan.codemap import native_available

        if os.path.realpath(_walk.__file__) != os.path.realpath(so) or not native_available():
            raise SystemExit(f"the sanitized walk is not in use: {_walk.__file__}")
        print(f"atheris_fuzz: native walk: {_walk.__file__} (sanitized)", file=sys.stderr, flush=True)
    h = Harness(Path(work), Path(fixture))
    if target == "baseline":
        h.scan_result()
    known = set(filter(None, os.environ.get("OVMFTOOL_ATHERIS_KNOWN", "").split("\n")))
    atheris.Setup([sys.argv[0], *lf_args], guarded(getattr(h, target), known))
    atheris.Fuzz()


def python_signature(e: BaseException) -> str:
    """An exception's kind and place: its type and the innermost ovmftool frame (else the innermost)."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "/ovmftool/" in f.filename] or frames[-1:]
    if not ours:
        return f"python:{type(e).__name__}"
    f = ours[-1]
    return f"python:{type(e).__name__}:{f.filename.rsplit('/ovmftool/', 1)[-1]}:{f.lineno}:{f.name}"


def guarded(fn, known: set[str]):
    """The target, saying the signature of an exception it lets out on stderr (the driver reads
    it), and letting out none whose signature is in `known` (findings already reported: the
    campaign goes on past them)."""

    def run(data: bytes) -> None:
        try:
            fn(data)
        except Exception as e:
            sig = python_signature(e)
            if sig in known:
                return
            print(f"atheris_fuzz: signature: {sig}", file=sys.stderr, flush=True)
            raise

    return run


# --- seeds ------------------------------------------------------------------------------------


def _tools_fuzz():
    """tools/fuzz.py: its structured mutations seed the corpora."""
    from tools import fuzz  # only the seeding needs it (it builds images with tests/fvbuild.py)

    return fuzz


class Seeds:
    """Seed inputs for each target, made once a driver run (what they need is parsed once)."""

    def __init__(self, mutations: int = 200) -> None:
        self.mutations = mutations
        self.F = _tools_fuzz()
        self._mods = None
        self._synth = None

    @property
    def mods(self) -> dict[str, bytes]:
        if self._mods is None:
            self._mods = self.F._corpus_modules()
        return self._mods

    @property
    def synthetic(self):
        if self._synth is None:
            self._synth = self.F.synthetic_seeds(self.mods)
        return self._synth

    def fixture(self) -> bytes:
        return next(s.data for s in self.synthetic if s.name == FIXTURE_SEED)

    def mutated(self, names: set[str] | None, count: int, max_len: int, seed: int = 1) -> dict[str, bytes]:
        pool = [s for s in self.synthetic if names is None or s.name in names]
        gen = self.F.Generator(seed, pool, 0.0)
        out = {}
        for i in range(count):
            m = gen.make(i)
            if 0 < len(m.data) <= max_len:
                out[f"mut-{seed}-{i}"] = m.data
        return out

    def real_modules(self, max_size: int = 16 << 10, limit: int = 48) -> dict[str, bytes]:
        """Small modules of the corpus images (PE32 and TE, X64 and IA32), distinct bytes."""
        from ovmftool.model.parser import parse_flash
        from ovmftool.ops.modules import iter_modules

        out: dict[str, bytes] = {}
        seen = set()
        for img in ("debian-2022.11/OVMF_CODE.fd", "debian-2026.08/OVMF.amdsev.fd"):
            root = parse_flash((ROOT / "corpus" / "images" / img).read_bytes(), img)
            for m in iter_modules(root):
                raw = m.image.raw
                h = hashlib.sha1(raw).hexdigest()
                if len(raw) <= max_size and h not in seen and len(out) < limit:
                    seen.add(h)
                    out[f"{img.split('/')[0]}-{m.name}"] = raw
        return out

    def corpus_volumes(self, max_size: int) -> dict[str, bytes]:
        """Top-level volumes of the corpus images small enough (SECFV, the 128 KiB variable store)."""
        from ovmftool.model.parser import parse_flash
        from ovmftool.model.volume import Volume

        out = {}
        for img in ("debian-2022.11/OVMF_CODE.fd", "debian-2022.11/OVMF_VARS.fd", "debian-2026.08/OVMF.amdsev.fd"):
            data = (ROOT / "corpus" / "images" / img).read_bytes()
            for c in parse_flash(data, img).children:
                if isinstance(c, Volume) and c.size <= max_size:
                    out[f"{img.replace('/', '-')}-{c.name}"] = data[c.offset : c.end]
        return out

    def for_target(self, target: str) -> dict[str, bytes]:
        max_len = MAX_LEN[target]
        if target == "image":
            out = {f"synth-{s.name}": s.data for s in self.synthetic}
            out.update(self.corpus_volumes(max_len))
            out.update(self.mutated(None, self.mutations, max_len))
            return out
        if target == "scan":
            out = {f"mod-{k}": v for k, v in self.mods.items()}
            out.update({f"real-{k}": v for k, v in self.real_modules().items()})
            out.update({f"synth-{s.name}": s.data for s in self.synthetic if len(s.data) <= 16 << 10})
            out.update(self.mutated({"pe", "te", "pe-dxe", "pe-repfifo", "te-repfifo"}, self.mutations // 2, max_len))
            return out
        if target == "walk":
            return self.walk_seeds()
        if target == "decode":
            return self.decode_seeds()
        if target == "log":
            return log_seeds()
        if target == "baseline":
            return self.baseline_seeds()
        if target == "patch":
            names = {"repfifo", "repfifo-lzma", "plain", "lzma-f86", "pe-repfifo", "te-repfifo", "pe", "te", "tiano"}
            out = {f"synth-{s.name}": s.data for s in self.synthetic if s.name in names}
            out.update(self.mutated(names, self.mutations // 2, max_len))
            return out
        raise ValueError(target)

    def walk_seeds(self) -> dict[str, bytes]:
        from ovmftool.model.parser import parse_flash
        from ovmftool.ops.modules import iter_modules
        from ovmftool.scan.analysis import exec_ranges
        from ovmftool.scan.signatures import find

        out = {}
        raws = {**{f"mod-{k}": v for k, v in self.mods.items()}, **self.real_modules(limit=24)}
        for name, raw in raws.items():
            if raw[:2] not in (b"MZ", b"VZ"):
                continue  # the reset vector: no module
            for m in iter_modules(parse_flash(raw, name)):
                img = m.image
                mem = img.memory
                if len(mem) > MAX_LEN["walk"] - 2048:
                    continue
                ranges = sorted(exec_ranges(img))
                strong = [mt.rva for mt in find(mem, m.arch, ranges)][:6] + [img.entry_rva] + sorted(img.exports)[:1]
                relocs = [(r, t) for r, t in img.relocations if t in (REL_HIGHLOW, REL_DIR64)]
                for lean in (True, False):
                    out[f"{name}-{'lean' if lean else 'full'}"] = encode_walk_input(
                        mem, img.bits, ranges, strong, relocs, img.image_base, lean, not lean
                    )
        # the IoFifo routines alone: every string I/O site shape in one executable range
        code = self.F._iofifo_routines()
        out["iofifo64"] = encode_walk_input(code, 64, [(0, len(code))], [0], [], 0, False, True)
        out["iofifo32"] = encode_walk_input(code, 32, [(0, len(code))], [0], [], 0, False, True)
        return out

    def decode_seeds(self) -> dict[str, bytes]:
        texts = self.F.DECODE_TEXTS + [
            "inst_data: [243, 110, 235, 10, 227, 8, 138, 6, 238, 72, 255, 198, 226, 248, 76], len: 15",
            "[0xf3, 0x6e]",
            "f3,6e,eb,0a",
            "0xf3 0x6c",
            "243 110",
            "10 20",
        ]
        out = {}
        for i, t in enumerate(texts):
            for b in (0, 2, 4):  # even first byte: text; 64, 16, 32 bits
                out[f"text-{i}-{b}"] = bytes([b]) + t.encode()
        doc = json.loads((ROOT / "ovmftool" / "scan" / "signatures.json").read_text())
        for i, r in enumerate(doc["routines"][:40]):
            code = bytes.fromhex(r["bytes"])
            bits = 64 if r["arch"] == "X64" else 32
            first = 5 if bits == 64 else 1  # odd: raw bytes; 5 % 3 == 2: 64 bits, 1 % 3 == 1: 32 bits
            out[f"sig-{i}"] = bytes([first]) + code[:64]
            out[f"sighex-{i}"] = bytes([2 if bits == 64 else 4]) + code[:15].hex(" ").encode()
        return out

    def baseline_seeds(self) -> dict[str, bytes]:
        import tempfile

        from ovmftool.model.parser import parse_flash
        from ovmftool.report.document import to_json
        from ovmftool.report.gate_report import baseline_doc
        from ovmftool.scan.scanner import scan_image

        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "fixture.fd")
            Path(p).write_bytes(self.fixture())
            r = scan_image(p, None, 1, root=parse_flash(self.fixture(), p))
        one = to_json(baseline_doc(r))
        many = to_json(baseline_doc([r, r]))
        f = r.findings[0] if r.findings else None
        waivers = {
            "schema_version": "ovmftool.waivers/1",
            "waivers": [
                {"module": f.module if f else "RepFifoPei", "reason": "known", "expires": "2027-06-30"},
                {"module": f.guid if f else "x", "function": "IoRead*", "instruction": "rep insb", "reason": "r"},
                {"module": "M", "function": None, "instruction": "f36c", "reason": "x", "expires": "2020-01-01"},
            ],
        }
        return {
            "baseline-1": one.encode(),
            "baseline-2": many.encode(),
            "waivers": json.dumps(waivers, indent=1).encode(),
            "waivers-empty": b'{"schema_version": "ovmftool.waivers/1", "waivers": []}',
            "not-object": b"[1, 2]",
        }


def log_seeds() -> dict[str, bytes]:
    import bz2
    import gzip
    import lzma

    crash1 = (
        "vCPU 0: Unhandled VM exit: InstEmul(InstEmul {\n"
        "inst_data: [243, 110, 235, 10, 227, 8, 138, 6, 238, 72, 255, 198, 226, 248, 76],\nlen: 15\n})"
    )
    redacted = "vCPU 0: Unhandled VM exit: InstEmul(InstEmul {\ninst_data: <guest data redacted>,\nlen: 15\n})"
    pretty = (
        "vCPU 0: Unhandled VM exit: InstEmul(\n    InstEmul {\n        inst_data: [\n"
        "            243,\n            110,\n        ],\n        len: 2,\n    },\n)"
    )
    lines = {
        "one-line": "vCPU 2: Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 110, 235, 10], len: 4 })",
        "hex": "Unhandled VM exit: InstEmul(InstEmul { inst_data: [f3, 6e, eb, a, e3, 8], len: 6 })",
        "0x": "Unhandled VM exit: InstEmul(InstEmul { inst_data: [0xf3, 0x6e], len: 0x2 })",
        "string": 'Unhandled VM exit: InstEmul(InstEmul { inst_data: "f36eeb0a", len: 4 })',
        "standalone": "ERRO Unhandled exit @rip:00859f60 InstEmul(InstEmul { inst_data: [243, 108, 235, 10], len: 4 })",
        "crash": crash1,
        "redacted": redacted,
        "pretty": pretty,
        "bad": "x: InstEmul(InstEmul { inst_data: [243, 999], len: 2 })",
        "cut": "vCPU 0: Unhandled VM exit: InstEmul(InstEmul {\ninst_data: [243, 110, 235",
    }
    vm = "0b8e4c2a-7d51-4f0e-9c3b-5a6d7e8f9012"
    out = {}
    for k, v in lines.items():
        out[k] = ("2024-01-05T10:00:01.100Z INFO Starting vCPU thread, vcpu: 0\n" + v + "\nINFO after\n").encode()
    rec = {"msg": lines["one-line"], "v": 0, "time": "2024-01-05T10:00:01.100Z", "instance_id": vm, "vcpu": 2}
    out["bunyan"] = (json.dumps(rec) + "\n" + json.dumps({**rec, "msg": redacted}) + "\n").encode()
    out["mixed"] = out["bunyan"] + crash1.encode() + b"\n"
    out["gzip"] = gzip.compress(out["crash"], mtime=0)
    out["xz"] = lzma.compress(out["one-line"])
    out["bzip2"] = bz2.compress(out["pretty"])
    return out


# --- libFuzzer dictionaries -------------------------------------------------------------------


def _dict_words(target: str) -> list[bytes]:
    from ovmftool.model import structs as S

    guids = [S.guid_bytes(g) for g in (S.FFS2_GUID, S.FFS3_GUID, S.LZMA_GUID, S.LZMA_F86_GUID, S.BROTLI_GUID)]
    guids += [S.guid_bytes(g) for g in (S.TIANO_GUID, S.CRC32_GUID, S.NVRAM_GUID)]
    pe = [b"MZ", b"PE\0\0", b"VZ", b"\x0b\x01", b"\x0b\x02", b"\x64\x86", b"\x4c\x01", b"RSDS", b".text", b".reloc"]
    code = [b"\xf3\x6e", b"\xf3\x6c", b"\xf3\x6f", b"\xf3\x6d", b"\x66\xef", b"\xe8", b"\xc3", b"\x48\x8d\x05"]
    if target in ("image", "patch"):
        return [b"_FVH", b"\xff\xff\xff", *guids, *pe, *code]
    if target in ("scan", "walk"):
        return [*pe, *code, b"\xeb\xfe", b"\xff\x25", b"\x0f\x05", b"\xe2\xf8"]
    if target == "decode":
        return [b"inst_data", b"len", b"0x", b"[", b"]", b", ", b"f3", b"6e", b"243", b"110", *code]
    if target == "log":
        words = ["InstEmul(", "InstEmul {", "inst_data: [", "inst_data: ", "len: ", "vCPU ", "@rip:", "Unhandled"]
        words += ["<guest data redacted>", "instance_id", "propolis_id", '"msg":', "\n", "})", "243, 110", "f3, 6e"]
        return [w.encode() for w in words] + [b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh"]
    if target == "baseline":
        words = ["schema_version", "ovmftool.baseline/1", "ovmftool.baseline/2", "ovmftool.waivers/1", "tool"]
        words += ["images", "image", "path", "sha256", "sites", "key", "module", "arch", "mnemonic", "guid"]
        words += ["function", "bytes", "rva", "waivers", "reason", "expires", "instruction", "2027-06-30"]
        out = [f'"{w}"'.encode() for w in words]
        return out + [b"null", b"true", b"[]", b"{}", b"-1", b"1e400", b'"\\ud800"', b"[[[[[[[[", b'{"a":{']
    raise ValueError(target)


def write_dict(path: Path, target: str) -> None:
    lines = []
    for i, w in enumerate(_dict_words(target)):
        esc = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in w)
        lines.append(f'w{i}="{esc}"')
    path.write_text("\n".join(lines) + "\n")


# --- the driver -------------------------------------------------------------------------------

_PROGRESS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?:.*?exec/s: (\d+))?(?:.*?rss: (\d+)Mb)?")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_KINDS = [
    ("timeout", "ERROR: libFuzzer: timeout"),
    ("rss", "ERROR: libFuzzer: out-of-memory"),
    ("asan", "ERROR: AddressSanitizer"),
    ("ubsan", "runtime error:"),
    ("python", "=== Uncaught Python exception: ==="),
    ("signal", "ERROR: libFuzzer: deadly signal"),
    ("exit", "ERROR: libFuzzer: fuzz target exited"),
    ("malloc", "ERROR: libFuzzer: out-of-memory (malloc"),
]


def parse_output(text: str) -> dict:
    """What one libFuzzer run said: executions, coverage, exec/s, peak RSS, what ended it."""
    res: dict = {"executions": 0, "cov": None, "ft": None, "corpus": None, "exec_per_s": None, "peak_rss_mb": None}
    stats = {}
    for line in text.splitlines():
        m = _PROGRESS.match(line)
        if m:
            res["executions"] = int(m.group(1))
            res["cov"], res["ft"] = int(m.group(3)), int(m.group(4))
            if m.group(5):
                res["exec_per_s"] = int(m.group(5))
            if m.group(6):
                res["peak_rss_mb"] = max(res["peak_rss_mb"] or 0, int(m.group(6)))
            c = re.search(r"corp: (\d+)/", line)
            if c:
                res["corpus"] = int(c.group(1))
            continue
        m = _STAT.match(line)
        if m:
            stats[m.group(1)] = int(m.group(2))
    if "number_of_executed_units" in stats:
        res["executions"] = max(res["executions"], stats["number_of_executed_units"])
    if "average_exec_per_sec" in stats:
        res["exec_per_s"] = stats["average_exec_per_sec"]
    if "peak_rss_mb" in stats:
        res["peak_rss_mb"] = max(res["peak_rss_mb"] or 0, stats["peak_rss_mb"])
    kind = None
    for k, marker in _KINDS:
        if marker in text:
            kind = k if kind is None or k == "malloc" else kind
    art = _ARTIFACT.findall(text)
    res["failure"] = kind
    res["artifact"] = art[-1] if art else None
    return res


def failure_signature(kind: str, text: str) -> str:
    """What makes two failures the same: the Python exception's signature the worker printed
    (`python_signature`), else the innermost ovmftool frame of the traceback, else the first
    frames of the sanitizer's stack in _walk.c, else its summary line."""
    said = re.findall(r"^atheris_fuzz: signature: (\S+)", text, re.M)
    if said:
        return said[-1]
    if kind in ("rss", "malloc"):  # the heap profile that follows names no culprit
        m = re.search(r"out-of-memory \(([^)]*)\)", text)
        return f"{kind}:{m.group(1) if m else ''}"
    frames = re.findall(r'File "([^"]*/ovmftool/[^"]*)", line (\d+), in (\S+)', text)
    if frames:
        f, ln, fn = frames[-1]
        return f"{kind}:{f.rsplit('/ovmftool/', 1)[-1]}:{ln}:{fn}"
    c = re.findall(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S*_walk\.c:\d+)", text)
    if c:
        return f"{kind}:" + "<".join(f"{fn}@{loc.rsplit('/', 1)[-1]}" for fn, loc in c[:3])
    m = re.search(r"(SUMMARY: .*)", text)
    return f"{kind}:{m.group(1)[:120]}" if m else kind


def sanitized_build(build_dir: Path) -> Path:
    """The sanitized walk's .so in `build_dir`, built (tools/build_sanitized_walk.sh) when missing
    or made from another _walk.c."""
    src = ROOT / "ovmftool" / "scan" / "_walk.c"
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    meta = build_dir / "build.json"
    if meta.exists():
        doc = json.loads(meta.read_text())
        if doc.get("source_sha256") == sha and Path(doc["so"]).exists():
            return Path(doc["so"])
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "build_sanitized_walk.sh"), str(build_dir)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"building the sanitized walk failed:\n{r.stderr}")
    return Path(json.loads(meta.read_text())["so"])


def sanitizer_env(so: Path) -> dict[str, str]:
    import atheris

    pre = Path(atheris.path()) / "asan_with_fuzzer.so"
    if not pre.exists():
        raise SystemExit(f"{pre} is missing: atheris' wheel ships it (pip install atheris)")
    return {
        "LD_PRELOAD": str(pre),
        "OVMFTOOL_SANITIZED_WALK": str(so),
        "PYTHONMALLOC": "malloc",
        "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=64:"
        "handle_abort=1:symbolize=1:detect_stack_use_after_return=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:symbolize=1",
    }


class Driver:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.dir = Path(a.dir).resolve()
        self.tdir = self.dir / a.target
        self.corpus, self.seeds, self.crashes = (self.tdir / n for n in ("corpus", "seeds", "crashes"))
        self.logs = self.tdir / "logs"
        self.dict = self.tdir / "dict.txt"
        self.fixture = self.dir / "fixture.fd"
        self.max_len = a.max_len or MAX_LEN[a.target]

    def prepare(self) -> None:
        for d in (self.corpus, self.seeds, self.crashes, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        need_seeds = not any(self.seeds.iterdir())
        if need_seeds or not self.fixture.exists():
            s = Seeds(self.a.seed_mutations)
            if not self.fixture.exists():
                self.fixture.write_bytes(s.fixture())
            if need_seeds:
                for name, data in s.for_target(self.a.target).items():
                    (self.seeds / re.sub(r"[^\w.-]", "_", name)).write_bytes(data[: self.max_len])
        if not self.dict.exists():
            write_dict(self.dict, self.a.target)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OVMFTOOL_PURE_PYTHON", "OVMFTOOL_SANITIZED_WALK")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env["OVMFTOOL_NO_CACHE"] = "1"
        if not self.a.no_skip_known:
            env["OVMFTOOL_ATHERIS_KNOWN"] = "\n".join(sorted(self.known()))
        if self.a.sanitized:
            env.update(sanitizer_env(sanitized_build(Path(self.a.walk_build))))
        return env

    def known(self) -> set[str]:
        """Signatures of the Python exceptions this target's earlier runs found (DIR/totals.json)."""
        path = self.dir / "totals.json"
        if not path.exists():
            return set()
        t = json.loads(path.read_text()).get("targets", {}).get(self.a.target, {})
        return {f["signature"] for f in t.get("findings", []) if f["signature"].startswith("python:")}

    def command(self, extra: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tools.atheris_fuzz",
            "--worker",
            self.a.target,
            str(self.tdir / "tmp"),
            str(self.fixture),
            f"-timeout={self.a.timeout}",
            f"-rss_limit_mb={self.a.rss_mb}",
            f"-malloc_limit_mb={self.a.rss_mb}",
            f"-max_len={self.max_len}",
            f"-dict={self.dict}",
            f"-artifact_prefix={self.crashes}/",
            "-print_final_stats=1",
            *extra,
        ]

    def run_once(self, extra: list[str], log: Path) -> tuple[int, dict, str, float]:
        t0 = time.monotonic()
        with open(log, "w") as fh:
            p = subprocess.run(self.command(extra), env=self.env(), stdout=fh, stderr=subprocess.STDOUT, cwd=self.tdir)
        dt_s = time.monotonic() - t0
        text = log.read_text(errors="replace")
        shutil.rmtree(self.tdir / "tmp", ignore_errors=True)
        return p.returncode, parse_output(text), text, dt_s

    def replay(self, path: str) -> int:
        self.prepare()
        log = self.logs / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.log"
        rc, res, text, _ = self.run_once([str(Path(path).resolve())], log)
        sys.stdout.write(text)
        print(f"replay: exit {rc}, {res['failure'] or 'no failure'}")
        return rc

    def campaign(self) -> int:
        self.prepare()
        a = self.a
        seed = a.seed if a.seed is not None else int(time.time()) & 0x7FFFFFFF
        left_runs, deadline = a.runs, (time.monotonic() + a.seconds if a.seconds else None)
        restarts, total_exec, failures = 0, 0, []
        while True:
            extra = [str(self.corpus), str(self.seeds), f"-seed={seed + restarts}"]
            if left_runs is not None:
                extra.append(f"-runs={left_runs}")
            chunk = a.chunk_seconds or None
            if deadline is not None:
                left_s = max(1, int(deadline - time.monotonic()))
                chunk = min(chunk, left_s) if chunk else left_s
            if chunk:
                extra.append(f"-max_total_time={chunk}")
            log = self.logs / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{restarts}.log"
            rc, res, text, secs = self.run_once(extra, log)
            total_exec += res["executions"]
            failure = None
            if rc != 0 or res["failure"]:
                failure = self.record_failure(res, text, log, rc)
                failures.append(failure)
            self.append_totals(res, secs, seed + restarts, rc, failure, log)
            print(
                f"{a.target}: {res['executions']} executions in {secs:.0f} s ({res['exec_per_s']}/s), "
                f"cov {res['cov']} ft {res['ft']}, corpus {res['corpus']}, peak RSS {res['peak_rss_mb']} MB"
                + (f", FAILURE {failure['kind']} {failure['signature']} -> {failure['input']}" if failure else ""),
                flush=True,
            )
            if failure is not None and (failure["kind"] == "startup" or len(failures) > a.max_restarts):
                break
            if failure is None and (left_runs is None or res["executions"] >= left_runs) and deadline is None:
                break  # done: the runs asked for (a chunk that ran out of time goes on below)
            if left_runs is not None:
                left_runs -= res["executions"]
                if left_runs <= 0:
                    break
            if deadline is not None and time.monotonic() >= deadline - 1:
                break
            if res["executions"] == 0:
                break
            restarts += 1  # a fresh process: after a failure, or the chunk's time is up
        return 1 if failures else 0

    def record_failure(self, res: dict, text: str, log: Path, rc: int) -> dict:
        kind = res["failure"] or ("startup" if res["executions"] == 0 else f"exit-{rc}")
        art = res["artifact"]
        path = (self.tdir / art).resolve() if art else None
        report = path.with_suffix(path.suffix + ".txt") if path else self.crashes / f"{log.stem}.txt"
        start = max(0, text.find("==ERROR") if "==ERROR" in text else -1)
        for marker in ("=== Uncaught Python exception", "ALARM:", "runtime error:", "==ERROR", "ERROR: libFuzzer"):
            i = text.find(marker)
            if i >= 0:
                start = max(0, text.rfind("\n", 0, max(0, i - 2000)) if marker == "runtime error:" else i)
                break
        report.write_text(text[start : start + 20000])
        return {
            "kind": kind,
            "signature": failure_signature(kind, text),
            "input": str(path) if path else None,
            "report": str(report),
            "log": str(log),
            "exit_code": rc,
        }

    def append_totals(self, res: dict, secs: float, seed: int, rc: int, failure: dict | None, log: Path) -> None:
        path = self.dir / "totals.json"
        doc = json.loads(path.read_text()) if path.exists() else {"runs": [], "targets": {}}
        run = {
            "target": self.a.target,
            "sanitized": bool(self.a.sanitized),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "seconds": round(secs, 1),
            "executions": res["executions"],
            "cov": res["cov"],
            "ft": res["ft"],
            "corpus": res["corpus"],
            "exec_per_s": res["exec_per_s"],
            "peak_rss_mb": res["peak_rss_mb"],
            "seed": seed,
            "exit_code": rc,
            "failure": failure,
            "log": str(log),
        }
        doc["runs"].append(run)
        t = doc["targets"].setdefault(
            self.a.target,
            {
                "executions": 0,
                "sanitized_executions": 0,
                "seconds": 0.0,
                "runs": 0,
                "crashes": 0,
                "timeouts": 0,
                "ooms": 0,
                "max_peak_rss_mb": 0,
                "cov": None,
                "ft": None,
                "findings": [],
            },
        )
        t["executions"] += res["executions"]
        t["sanitized_executions"] += res["executions"] if self.a.sanitized else 0
        t["seconds"] = round(t["seconds"] + secs, 1)
        t["runs"] += 1
        t["exec_per_s"] = round(t["executions"] / t["seconds"], 1) if t["seconds"] else None
        t["max_peak_rss_mb"] = max(t["max_peak_rss_mb"], res["peak_rss_mb"] or 0)
        if res["cov"] is not None:
            t["cov"], t["ft"] = max(t["cov"] or 0, res["cov"]), max(t["ft"] or 0, res["ft"])
        if failure is not None:
            key = {"timeout": "timeouts", "rss": "ooms", "malloc": "ooms"}.get(failure["kind"], "crashes")
            t[key] += 1
            t["findings"].append(failure)
        doc["all"] = {
            "executions": sum(x["executions"] for x in doc["targets"].values()),
            "sanitized_executions": sum(x["sanitized_executions"] for x in doc["targets"].values()),
            "seconds": round(sum(x["seconds"] for x in doc["targets"].values()), 1),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("target", nargs="?", choices=TARGETS)
    ap.add_argument("--dir", default="atheris-run", help="campaign directory (DIR/TARGET/..., DIR/totals.json)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--runs", type=int, help="executions for this run (libFuzzer -runs)")
    g.add_argument("--seconds", type=int, help="time for this run (libFuzzer -max_total_time)")
    ap.add_argument("--sanitized", action="store_true", help="use the ASan/UBSan build of the native walk")
    ap.add_argument("--walk-build", default=str(DEFAULT_WALK_BUILD), help="its build directory")
    ap.add_argument("--seed", type=int, help="libFuzzer -seed (default: from the clock)")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds an input may take")
    ap.add_argument("--rss-mb", type=int, default=RSS_MB, help="libFuzzer -rss_limit_mb and -malloc_limit_mb")
    ap.add_argument("--max-len", type=int, help="libFuzzer -max_len (default: per target)")
    ap.add_argument("--max-restarts", type=int, default=10, help="start libFuzzer again after a failure, this often")
    ap.add_argument(
        "--chunk-seconds",
        type=int,
        default=120,
        help="a fresh libFuzzer process at least this often (0: one for the run); an atheris process "
        "grows (instrumentation and ASan bookkeeping, not the inputs) and would reach the RSS limit",
    )
    ap.add_argument(
        "--no-skip-known",
        action="store_true",
        help="stop on Python exceptions found before too (default: those already in totals.json are let pass)",
    )
    ap.add_argument("--seed-mutations", type=int, default=200, help="tools/fuzz.py mutations among the seeds")
    ap.add_argument("--replay", metavar="FILE", help="run one input (a crash artifact) and print what happened")
    ap.add_argument("--list", action="store_true", help="list the targets")
    a = ap.parse_args(argv)
    if a.list:
        for t in TARGETS:
            print(t)
        return 0
    if a.target is None:
        ap.error("give a TARGET (--list names them)")
    if a.runs is None and a.seconds is None and not a.replay:
        ap.error("give --runs N or --seconds S")
    d = Driver(a)
    return d.replay(a.replay) if a.replay else d.campaign()


if __name__ == "__main__":
    sys.exit(main())
