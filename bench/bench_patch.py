"""Time `ovmftool patch` (scan + rewrite + emulate + rebuild + re-parse + rescan + write) on
OVMF_CODE_4M.fd (target: median <= 3 s wall).

    python bench/bench_patch.py [IMAGE] [--runs N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import report, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default=str(ROOT / "corpus/images/debian-2022.11/OVMF_CODE_4M.fd"))
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "ovmftool", "patch", "-o", str(Path(d) / "out.fd"), a.image]
        report("patch", cmd, run(cmd, a.runs), "median <= 3 s")
