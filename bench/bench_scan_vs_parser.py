"""`ovmftool scan` against uefi-firmware-parser's parse alone (issue 15): CPU and wall time.

The two commands run alternately in one run (a warm-up of each first, then N of each: A B A B
...), so that load on the machine falls on both alike. Each child's CPU time is user + sys from
os.wait4 (the whole process: interpreter start, imports, decompression, everything); the
figures are medians. Target: scan CPU median <= the parser's.

- scan: `python -m ovmftool scan --format json IMAGE` with the result cache off
  (OVMFTOOL_NO_CACHE=1: every run parses the image and analyses every module; a warm cache
  would skip the work, see `--cached`);
- parser: `uefi-firmware-parser -q IMAGE` (parse only, no output, no analysis), the script
  installed beside this interpreter when there is one (the same Python), else the one on PATH.
  (A pyenv shim adds a bash start-up to every run: give the real script with --parser.)

    python bench/bench_scan_vs_parser.py [IMAGE] [--runs N] [--parser PATH] [--cached]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import DEFAULT_IMAGE, child_env, machine  # noqa: E402


def default_parser() -> str | None:
    """uefi-firmware-parser beside this interpreter (same Python), else on PATH."""
    here = Path(sys.executable).parent / "uefi-firmware-parser"
    return str(here) if here.is_file() else shutil.which("uefi-firmware-parser")


def once(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU s = user + sys, wall s, exit code) of one run of `cmd`."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    return ru.ru_utime + ru.ru_stime, wall, os.waitstatus_to_exitcode(status)


def alternate(cmds: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, dict]:
    """Run each command once (warm-up: page cache, bytecode), then `runs` rounds of all in turn."""
    for cmd, env in cmds.values():
        once(cmd, env)
    res = {k: {"cpu": [], "wall": [], "codes": set()} for k in cmds}
    for _ in range(runs):
        for k, (cmd, env) in cmds.items():
            cpu, wall, code = once(cmd, env)
            res[k]["cpu"].append(cpu)
            res[k]["wall"].append(wall)
            res[k]["codes"].add(code)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--parser", default=default_parser(), help="the uefi-firmware-parser script")
    ap.add_argument("--cached", action="store_true", help="also time scan with its result cache on (warm)")
    a = ap.parse_args()
    if not a.parser:
        sys.exit("uefi-firmware-parser not found: pip install uefi-firmware, or give --parser")
    env = child_env()
    cmds = {
        "scan": (
            [sys.executable, "-m", "ovmftool", "scan", "--format", "json", a.image],
            {**env, "OVMFTOOL_NO_CACHE": "1"},
        ),
        "parser": ([a.parser, "-q", a.image], env),
    }
    if a.cached:
        cmds["scan, cache warm"] = (
            [sys.executable, "-m", "ovmftool", "scan", "--format", "json", a.image],
            {k: v for k, v in env.items() if k != "OVMFTOOL_NO_CACHE"},
        )
    res = alternate(cmds, a.runs)
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "unknown"
    print("## scan vs uefi-firmware-parser (issue 15)")
    print(f"machine: {machine()}; load average at the end: {load}")
    print(f"image: {a.image}; {a.runs} alternated runs of each after one warm-up")
    for k, (cmd, _env) in cmds.items():
        print(f"{k}: {' '.join(cmd)}" + ("  (OVMFTOOL_NO_CACHE=1)" if k == "scan" else ""))
    print("| command | CPU median s | CPU min s | wall median s | wall min s | exit codes |")
    print("|---|---|---|---|---|---|")
    med = {}
    for k, r in res.items():
        med[k] = (statistics.median(r["cpu"]), statistics.median(r["wall"]))
        print(
            f"| {k} | {med[k][0]:.3f} | {min(r['cpu']):.3f} | {med[k][1]:.3f} | {min(r['wall']):.3f} "
            f"| {sorted(r['codes'])} |"
        )
    for k in med:
        if k != "parser":
            print(
                f"ratio {k} / parser: CPU {med[k][0] / med['parser'][0]:.2f}, wall {med[k][1] / med['parser'][1]:.2f}"
                f"  (target: CPU <= 1.00)"
            )


if __name__ == "__main__":
    main()
