"""Time a command over repeated runs: wall-clock median and peak RSS of each child (os.wait4)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time


def machine() -> str:
    """One line describing this machine."""
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def child_env() -> dict[str, str]:
    """The environment commands are timed in: this one, but with bytecode caching on.

    An installed ovmftool runs from the bytecode pip compiled at install time. Some sandboxes set
    PYTHONDONTWRITEBYTECODE, which makes every run compile the package's sources again (about
    30 ms); the warm-up run writes the cache so the timed runs measure what users run.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(cmd: list[str], runs: int = 11, warmup: int = 1, env: dict[str, str] | None = None) -> dict:
    """Run `cmd` warmup+runs times; returns wall times (s), peak RSS (MB) and exit codes.
    `env`: variables to set on top of `child_env()`."""
    walls, rss, codes = [], [], set()
    env = {**child_env(), **(env or {})}
    for i in range(warmup + runs):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        if i >= warmup:
            walls.append(dt)
            rss.append(ru.ru_maxrss / 1024)
            codes.add(p.returncode)
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "peak_rss_mb": max(rss),
        "exit_codes": sorted(codes),
        "runs": runs,
    }


def report(title: str, cmd: list[str], res: dict, target: str) -> None:
    """Print one benchmark's figures."""
    print(f"## {title}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(cmd)}")
    print(
        f"runs: {res['runs']}  median {res['median_s']:.3f} s  min {res['min_s']:.3f} s  max {res['max_s']:.3f} s"
        f"  peak RSS {res['peak_rss_mb']:.0f} MB  exit {res['exit_codes']}  (target: {target})"
    )
    sys.stdout.flush()


DEFAULT_IMAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "corpus", "images", "debian-2022.11", "OVMF_CODE_4M.fd"
)


def image_args(runs: int) -> tuple[str, int]:
    """(IMAGE, --runs) from the command line of a single-image benchmark."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--runs", type=int, default=runs)
    a = ap.parse_args()
    return a.image, a.runs
