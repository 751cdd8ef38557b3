"""Time `ovmftool patch` (scan + rewrite + emulate + rebuild + re-parse + rescan + write) on
OVMF_CODE_4M.fd (target: median <= 3 s wall).

    python bench/bench_patch.py [IMAGE] [--runs N]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import image_args, report, run  # noqa: E402

if __name__ == "__main__":
    image, runs = image_args(7)
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "ovmftool", "patch", "-o", str(Path(d) / "out.fd"), image]
        report("patch", cmd, run(cmd, runs), "median <= 3 s")
