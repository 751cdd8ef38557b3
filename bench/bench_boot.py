"""Time `ovmftool boot-check` to the UEFI shell (target: under 3 minutes on 2 cores) and count
the executed string I/O, on Debian's packaged images (and any images given).

    python bench/bench_boot.py [IMAGE[:VARS] ...] [--runs N]
    python bench/bench_boot.py --vs-plain [IMAGE[:VARS] ...] [--runs N]

--vs-plain (issue 15: boot-check in one boot, target <= 1.3x): alternates the whole
`ovmftool boot-check IMAGE` command (wall time, process start to exit: parse, scan, the boot with
the TCG plugin, mapping) with a plain boot of the same image to the shell: the same QEMU command
line boot-check uses (ovmftool.boot.qemu.Qemu, the same variable store) without any logging or
plugin, killed when "Shell>" appears on serial (QEMU start to kill). Prints the medians and the
ratio; says whether boot-check ran in one boot (no "two boots" note).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def plain_boot(img: Path, vars_file: Path | None) -> float:
    """Seconds from starting QEMU to "Shell>" on serial: boot-check's command line, no log."""
    from ovmftool.boot.qemu import Qemu, wait
    from ovmftool.boot.varstore import plan_vars

    with tempfile.TemporaryDirectory(prefix="bench-plain-") as tmp:
        work = Path(tmp)
        plan = plan_vars(str(img), str(vars_file) if vars_file else None)
        template = plan.template(work)
        t = time.perf_counter()
        q = Qemu(img, template, work / "run")
        end = wait(q, 240)
        dt = time.perf_counter() - t
        if end.verdict != "shell":
            raise SystemExit(f"plain boot of {img} ended {end.verdict}")
        return dt


def vs_plain(images: list[str], runs: int) -> None:
    print("| image | boot-check median s | its boot s | plain boot median s | ratio | one boot | runs |")
    print("|---|---|---|---|---|---|---|")
    for spec in images:
        img, _, vars_file = spec.partition(":")
        bc, boot, plain, notes = [], [], [], set()
        for _ in range(runs):
            cmd = [sys.executable, "-m", "ovmftool", "boot-check", "--format", "json", img]
            if vars_file:
                cmd += ["--vars", vars_file]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            bc.append(time.perf_counter() - t)
            doc = json.loads(r.stdout)
            boot.append(doc["seconds"])
            notes.update(doc["notes"])
            plain.append(plain_boot(Path(img), Path(vars_file) if vars_file else None))
        one = "no (two boots)" if any("two boots" in n for n in notes) else "yes"
        m_bc, m_plain = statistics.median(bc), statistics.median(plain)
        print(
            f"| {Path(img).parent.name}/{Path(img).name} | {m_bc:.2f} | {statistics.median(boot):.1f} | "
            f"{m_plain:.2f} | {m_bc / m_plain:.2f} | {one} | {runs} |"
        )
        print(f"  boot-check: {', '.join(f'{x:.2f}' for x in bc)}; plain: {', '.join(f'{x:.2f}' for x in plain)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "images",
        nargs="*",
        default=[
            str(ROOT / "corpus/images/debian-2022.11/OVMF_CODE_4M.fd"),
            str(ROOT / "corpus/images/debian-2025.02/OVMF_CODE_4M.fd"),
        ],
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vs-plain", action="store_true", help="boot-check against a plain boot to the shell")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    if a.vs_plain:
        vs_plain(a.images if a.images != ap.get_default("images") else a.images[:1], a.runs)
        sys.exit(0)
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
        print(
            f"| {Path(img).parent.name}/{Path(img).name} | {statistics.median(times):.1f} | {a.runs} | "
            f"{doc['ended']} | {len(ex)} | {execs} | {units} | {ports} | {f} |"
        )
