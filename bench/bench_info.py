"""Time `ovmftool info` on OVMF_CODE_4M.fd (target: median <= 0.3 s wall, peak RSS <= 150 MB).

    python bench/bench_info.py [IMAGE] [--runs N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import report, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default=str(ROOT / "corpus/images/debian-2022.11/OVMF_CODE_4M.fd"))
    ap.add_argument("--runs", type=int, default=11)
    a = ap.parse_args()
    for fmt in ("text", "json"):
        cmd = [sys.executable, "-m", "ovmftool", "info", "--format", fmt, a.image]
        report(f"info --format {fmt}", cmd, run(cmd, a.runs), "median <= 0.3 s, RSS <= 150 MB")
