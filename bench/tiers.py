"""Time the test suite's tiers (issue 14): what each costs on this machine.

    python bench/tiers.py [--cold] [--jobs N]

- `no builds`: `pytest -m "not build"` with OVMFTOOL_SKIP_BUILDS=1 (corpus images, stored builds
  are not used, hostile inputs, emulation, boots of corpus images);
- `builds`: `pytest -m build` (the stored builds of corpus/builds and the builds made from source:
  the `rebuilt` ones of corpus/builds.json and `plan --verify`'s), on the build cache as it is
  (`warm` once it holds them);
- with `--cold`, `builds` again on an empty build cache (OVMFTOOL_CACHE in a temporary directory:
  EDK II sources fetched and unpacked, BaseTools and every build made from source).

Each tier runs `python -m pytest -q -n JOBS` (JOBS: 2 by default, the README's command) in a fresh
process; the figure is its wall time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import child_env, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def tier(label: str, marker: str, jobs: int, env: dict) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(jobs), "-m", marker]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**child_env(), **env}, capture_output=True, text=True)
    dt = time.perf_counter() - t
    tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"| {label} | `{' '.join(cmd[1:])}` | {dt:.0f} s ({dt / 60:.1f} min) | {r.returncode} | {tail} |")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true", help="also run the build tier on an empty build cache")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    print("## test tiers (issue 14)")
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}\n")
    print("| tier | command | wall | exit | result |")
    print("|---|---|---|---|---|")
    tier("no builds", "not build", a.jobs, {"OVMFTOOL_SKIP_BUILDS": "1"})
    tier("builds, cache as it is", "build", a.jobs, {})
    if a.cold:
        with tempfile.TemporaryDirectory(prefix="ovmftool-cold-") as d:
            tier("builds, cold (empty build cache)", "build", a.jobs, {"OVMFTOOL_CACHE": d})
    return 0


if __name__ == "__main__":
    sys.exit(main())
