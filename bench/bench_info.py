"""Time `ovmftool info` on OVMF_CODE_4M.fd (target: median <= 0.3 s wall, peak RSS <= 150 MB).

python bench/bench_info.py [IMAGE] [--runs N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import image_args, report, run  # noqa: E402

if __name__ == "__main__":
    image, runs = image_args(11)
    for fmt in ("text", "json"):
        cmd = [sys.executable, "-m", "ovmftool", "info", "--format", fmt, image]
        report(f"info --format {fmt}", cmd, run(cmd, runs), "median <= 0.3 s, RSS <= 150 MB")
