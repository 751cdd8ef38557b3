"""Time `ovmftool boot-check` to the UEFI shell (target: under 3 minutes on 2 cores) and count
the executed string I/O, on Debian's packaged images (and any images given).

    python bench/bench_boot.py [IMAGE[:VARS] ...] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="*", default=[str(ROOT / "corpus/images/debian-2022.11/OVMF_CODE_4M.fd"),
                                                  str(ROOT / "corpus/images/debian-2025.02/OVMF_CODE_4M.fd")])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print("| image | median s (both boots) | runs | ended | executed string I/O | executions | units | ports | first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in a.images:
        img, _, vars_file = spec.partition(":")
        times, doc = [], None
        for _ in range(a.runs):
            cmd = [sys.executable, "-m", "ovmftool", "boot-check", "--format", "json", img]
            if vars_file:
                cmd += ["--vars", vars_file]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            doc = json.loads(r.stdout)
        first = doc["first"]
        f = f"{first['mnemonic']} {first['module']}!{first['function']}" if first else "-"
        ex = doc["executed"]
        execs = sum(e["executions"] or 0 for e in ex)
        units = sum(e["units"] or 0 for e in ex)
        ports = ",".join(sorted({f"0x{e['port']:X}" for e in ex if e["port"] is not None})) or "-"
        print(f"| {Path(img).parent.name}/{Path(img).name} | {statistics.median(times):.1f} | {a.runs} | "
              f"{doc['ended']} | {len(ex)} | {execs} | {units} | {ports} | {f} |")
