"""Time a full `ovmftool scan` of OVMF_CODE_4M.fd (target: median <= 0.5 s wall, peak RSS <= 200 MB)
and, from the same run, the two naive baselines the scanner replaces:

- byte search: every F3/F2 (+ optional 66/67 prefixes) 6C..6F in executable sections;
- linear sweep: capstone over executable sections, skipping undecodable bytes.

Precision of each is measured against the scanner's findings (which the tests hold equal to
the symbol-table truth on real builds).

    python bench/bench_scan.py [IMAGE ...] [--runs N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import machine, report, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IO = {"insb", "insw", "insd", "outsb", "outsw", "outsd"}
_REP_IO = re.compile(rb"[\xf2\xf3][\x66\x67]{0,2}[\x6c-\x6f]")


def _exec(m):
    mem = m.image.memory
    return mem, [(s.rva, s.rva + s.virtual_size) for s in m.image.sections if s.executable]


def byte_search(mods) -> set:
    out = set()
    for m in mods:
        mem, ranges = _exec(m)
        for lo, hi in ranges:
            for x in _REP_IO.finditer(mem, lo, hi):
                out.add((m.guid, m.volume, x.start()))
    return out


def linear_sweep(mods) -> set:
    import capstone

    out = set()
    for m in mods:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if m.image.bits == 64 else capstone.CS_MODE_32)
        md.skipdata = True
        mem, ranges = _exec(m)
        for lo, hi in ranges:
            for a, _s, mn, _o in md.disasm_lite(mem[lo:hi], lo):
                if mn.split()[-1] in IO:
                    out.add((m.guid, m.volume, a))
    return out


def baselines(image: str, runs: int) -> None:
    from ovmftool.model.parser import read_image
    from ovmftool.ops.modules import iter_modules
    from ovmftool.scan.scanner import scan_image

    root = read_image(image)
    mods = list(iter_modules(root))
    truth = {(f.guid, f.volume, f.rva) for f in scan_image(image, root=root, jobs=1).findings}
    print(f"## baselines on {image} ({len(truth)} true sites, the scanner's findings)")
    print("| method | median s | reported | true positives | precision | recall |")
    print("|---|---|---|---|---|---|")
    for name, fn in (("byte search F3/F2 [66|67] 6C..6F", byte_search), ("capstone linear sweep", linear_sweep)):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            got = fn(mods)
            times.append(time.perf_counter() - t)
        tp = len(got & truth)
        prec = tp / len(got) if got else 1.0
        rec = tp / len(truth) if truth else 1.0
        print(f"| {name} | {statistics.median(times):.3f} | {len(got)} | {tp} | {prec:.3f} | {rec:.3f} |")
    print()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="*", default=[str(ROOT / "corpus/images/debian-2022.11/OVMF_CODE_4M.fd")])
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    print(f"machine: {machine()}\n")
    for image in a.images:
        for jobs in (None, "1", "2"):
            cmd = [sys.executable, "-m", "ovmftool", "scan", "--format", "json", image]
            if jobs:
                cmd[4:4] = ["--jobs", jobs]
            report(
                f"scan {'--jobs ' + jobs if jobs else '(default jobs)'} {Path(image).name}",
                cmd,
                run(cmd, a.runs),
                "median <= 0.5 s, RSS <= 200 MB",
            )
        # for reference: the pure-Python walk (what runs when the extension could not be built)
        cmd = [sys.executable, "-m", "ovmftool", "scan", "--format", "json", image]
        report(
            f"scan, pure-Python walk (OVMFTOOL_PURE_PYTHON=1) {Path(image).name}",
            cmd,
            run(cmd, max(3, a.runs // 2), env={"OVMFTOOL_PURE_PYTHON": "1"}),
            "reference only",
        )
        print()
        baselines(image, max(1, a.runs // 2))
