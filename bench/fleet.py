"""Time `ovmftool scan` over a fleet of images (issue 15): one job, two jobs, and a warm cache.

The fleet: Debian's packaged code images in corpus/images (2022.11: 2 MB and 4 MB; 2025.02:
4 MB), every code image of the newest ovmf 2022.11 and 2025.02 packages (downloaded with apt:
the 4 MB, secure-boot and Microsoft-keys variants; `--no-packages` leaves them out) and every
build the corpus keeps (corpus/builds/KEY: its OVMF_CODE.fd, and OVMF.fd made of its
OVMF_VARS.fd and OVMF_CODE.fd as the build makes it). At least 20 images, or the benchmark refuses.

Each configuration runs `python -m ovmftool scan --format json FLEET_DIR` in a fresh process,
RUNS times (after one warm-up run that is not timed), with its own XDG_CACHE_HOME:

- `1 job, no cache` / `2 jobs, no cache`: `--jobs 1|2 --no-cache` — the speed-up of spreading
  images over processes (target: 2 jobs <= 0.6x one job);
- `1 job, cold cache`: `--jobs 1` with an empty cache directory each run (modules shared by
  images are analysed once);
- `1 job, warm cache`: `--jobs 1` again on the cache the cold run just filled (target: <= 0.3x
  the cold run).

Every run's JSON output must be byte-identical to the first one's, else the benchmark fails.

    python bench/fleet.py [--runs N] [--no-packages]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import child_env, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def fleet_images(work: Path) -> list[tuple[str, str]]:
    """(name in the fleet directory, source path) of every image of the fleet."""
    out = [
        (f"debian/{Path(p).parent.name}/{Path(p).name}", p)
        for p in sorted(glob.glob(str(ROOT / "corpus" / "images" / "*" / "OVMF_CODE*.fd")))
    ]
    for b in sorted((ROOT / "corpus" / "builds").glob("*/OVMF_CODE.fd")):
        full = work / "full" / b.parent.name / "OVMF.fd"
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(b.with_name("OVMF_VARS.fd").read_bytes() + b.read_bytes())
        out += [(f"builds/{b.parent.name}/OVMF.fd", str(full)), (f"builds/{b.parent.name}/OVMF_CODE.fd", str(b))]
    return out


def debian_package_images(work: Path) -> list[tuple[str, str]]:
    """Every code image (2 MB, 4 MB, secure-boot and Microsoft-keys variants) of Debian's newest
    ovmf 2022.11 (bookworm) and 2025.02 (trixie) packages, downloaded with apt into `work`;
    [] with a note when apt cannot get them (corpus/scripts/apt-sources.sh sets up the sources)."""
    out = []
    for up in ("2022.11", "2025.02"):
        r = subprocess.run(["apt-cache", "madison", "ovmf"], capture_output=True, text=True)
        # madison lists the newest version first
        vers = [
            ln.split("|")[1].strip()
            for ln in r.stdout.splitlines()
            if "|" in ln and ln.split("|")[1].strip().startswith(up + "-")
        ][:1]
        if not vers:
            print(f"note: no ovmf {up}-* package visible to apt: its variants are not in the fleet", file=sys.stderr)
            continue
        d = work / f"deb-{up}"
        d.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["apt-get", "download", "-q", f"ovmf={vers[0]}"], cwd=d, capture_output=True).returncode:
            print(f"note: apt-get download ovmf={vers[0]} failed: its variants are not in the fleet", file=sys.stderr)
            continue
        deb = next(d.glob("ovmf_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(d / "x")], check=True)
        for f in sorted((d / "x" / "usr" / "share" / "OVMF").glob("OVMF_CODE*.fd")):
            if f.is_file() and not f.is_symlink():
                out.append((f"debian-package/{up}/{f.name}", str(f)))
    return out


def timed(cmd: list[str], env: dict, out_path: str) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit code) of one run, its stdout written to `out_path`."""
    with open(out_path, "wb") as out:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t
    return dt, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--no-packages",
        action="store_true",
        help="Leave out the variants of Debian's ovmf packages (downloaded with apt otherwise).",
    )
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovmftool-fleet-"))
    try:
        fleet = work / "fleet"
        images = fleet_images(work) + ([] if a.no_packages else debian_package_images(work))
        for name, src in images:
            (fleet / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, fleet / name)
        if len(images) < 20:
            print(f"only {len(images)} images (corpus builds missing?): the fleet needs at least 20", file=sys.stderr)
            return 2
        total = sum(os.path.getsize(fleet / n) for n, _ in images)
        print("## scan over a fleet (issue 15)")
        print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
        print(
            f"fleet: {len(images)} images, {total / 2**20:.0f} MiB ({sum(n.startswith('debian/') for n, _ in images)} "
            f"Debian in corpus/, {sum(n.startswith('debian-package/') for n, _ in images)} from Debian's packages, "
            f"{sum(n.startswith('builds/') for n, _ in images)} from corpus builds)"
        )
        base = [sys.executable, "-m", "ovmftool", "scan", "--format", "json", str(fleet)]
        ref_digest = None
        results = {}

        def config(label: str, args: list[str], fresh_cache: bool, cache_dir: Path | None = None):
            nonlocal ref_digest
            walls, rss, codes = [], [], set()
            for i in range(a.runs + 1):  # run 0: warm-up of the OS file cache and bytecode, not timed
                cdir = cache_dir or work / f"cache-{label.replace(' ', '-').replace(',', '')}-{i}"
                if fresh_cache and cache_dir is None:
                    shutil.rmtree(cdir, ignore_errors=True)
                env = {**child_env(), "XDG_CACHE_HOME": str(cdir)}
                env.pop("OVMFTOOL_NO_CACHE", None)
                out = work / "out.json"
                dt, mb, code = timed(base + args, env, str(out))
                digest = hashlib.sha256(out.read_bytes()).hexdigest()
                if ref_digest is None:
                    ref_digest = digest
                elif digest != ref_digest:
                    raise SystemExit(f"{label}: output differs from the first run's")
                if i:
                    walls.append(dt)
                    rss.append(mb)
                    codes.add(code)
            results[label] = statistics.median(walls)
            print(
                f"| {label} | `{' '.join(args)}` | {a.runs} | {statistics.median(walls):.2f} s | {min(walls):.2f} s | "
                f"{max(walls):.2f} s | {max(rss):.0f} MB | {sorted(codes)} |"
            )
            sys.stdout.flush()

        print("\n| configuration | options | runs | median | min | max | peak RSS | exit |")
        print("|---|---|---|---|---|---|---|---|")
        config("1 job, no cache", ["--jobs", "1", "--no-cache"], False)
        config("2 jobs, no cache", ["--jobs", "2", "--no-cache"], False)
        # cold: each run on an empty cache; warm: runs on the cache one cold run filled
        config("1 job, cold cache", ["--jobs", "1"], True)
        warm_dir = work / "cache-warm"
        shutil.rmtree(warm_dir, ignore_errors=True)
        env = {**child_env(), "XDG_CACHE_HOME": str(warm_dir)}
        timed(base + ["--jobs", "1"], env, str(work / "fill.json"))  # fills it
        config("1 job, warm cache", ["--jobs", "1"], False, warm_dir)
        config("2 jobs, warm cache", ["--jobs", "2"], False, warm_dir)
        one, two = results["1 job, no cache"], results["2 jobs, no cache"]
        cold, warm = results["1 job, cold cache"], results["1 job, warm cache"]
        print(f"\n2 jobs / 1 job (no cache): {two / one:.2f} (target <= 0.6)")
        print(f"cold cache / no cache (1 job): {cold / one:.2f}")
        print(f"warm / cold cache (1 job): {warm / cold:.2f} (target <= 0.3)")
        print(f"load average after: {os.getloadavg()[0]:.2f}; outputs of every run identical")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
