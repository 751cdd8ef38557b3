"""Coverage-guided fuzzing (tools/atheris_fuzz.py) on bounded, seeded slices: each target runs a
few hundred to a few thousand libFuzzer executions in a subprocess, from seeds made fresh in a
temporary directory, and must end without a finding (an exception other than OvmfToolError, an
input over 10 s, RSS over 1 GiB, a sanitizer report).

The long campaigns run outside CI (`python -m tools.atheris_fuzz TARGET --dir DIR --seconds S`,
resumable). tools/ is no package: the tool is loaded with importlib from its path.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
needs_atheris = pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not importable (pip install atheris)")


def _tool():
    return importlib.import_module("tools.atheris_fuzz")  # not at collection: it imports atheris


def _slice(tmp_path, target: str, runs: int, *extra: str) -> dict:
    d = tmp_path / "campaign"
    cmd = [sys.executable, "-m", "tools.atheris_fuzz", target, "--dir", str(d), "--runs", str(runs), "--seed", "1"]
    cmd += ["--seed-mutations", "20", "--max-restarts", "0", "--no-skip-known", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    totals = json.loads((d / "totals.json").read_text()) if (d / "totals.json").exists() else {}
    t = totals.get("targets", {}).get(target, {})
    reports = "".join(open(f["report"]).read()[:3000] for f in t.get("findings", []) if f.get("report"))
    assert r.returncode == 0, f"{target}: exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}\n{reports}"
    assert t["executions"] >= runs and t["crashes"] == t["timeouts"] == t["ooms"] == 0, t
    assert t["cov"] and t["ft"], t
    return t


# the slices: about ten seconds each, start-up (instrumenting ovmftool, making seeds) included
SLICES = {
    "image": 300,
    "scan": 200,
    "walk": 500,
    "decode": 2000,
    "log": 500,
    "baseline": 1000,
    "patch": 150,
}


@needs_atheris
@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(SLICES))
def test_target_slice_finds_nothing(tmp_path, target):
    _slice(tmp_path, target, SLICES[target])


@needs_atheris
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("clang") is None, reason="no C compiler")
def test_walk_slice_with_the_sanitized_walk(tmp_path):
    """The ASan/UBSan build of _walk.c (tools/build_sanitized_walk.sh, into a directory of its
    own) is the walk the worker uses, and a slice of the walk target finds nothing."""
    build = tmp_path / "walk-build"
    t = _slice(tmp_path, "walk", 300, "--sanitized", "--walk-build", str(build))
    assert t["sanitized_executions"] >= 300
    doc = json.loads((build / "build.json").read_text())
    assert "-fsanitize=address,undefined" in doc["flags"] and "-fno-sanitize-recover=all" in doc["flags"]
    log = next((tmp_path / "campaign" / "walk" / "logs").glob("run-*.log")).read_text()
    assert f"atheris_fuzz: native walk: {doc['so']} (sanitized)" in log


def test_walk_input_round_trip():
    A = _tool()
    mem = bytes(range(256)) * 4
    data = A.encode_walk_input(mem, 64, [(0, 512), (600, 900)], [0, 16], [(8, 10), (16, 3)], 0x100000, False, True)
    bits, lean, sigs, ranges, strong, relocs, base, m = A.decode_walk_input(data)
    assert (bits, lean, sigs, ranges, strong, relocs, base, m) == (
        64,
        False,
        True,
        [(0, 512), (600, 900)],
        [0, 16],
        [(8, 10), (16, 3)],
        0x100000,
        mem,
    )
    assert A.decode_walk_input(data[:10]) is None


def test_libfuzzer_output_is_read():
    A = _tool()
    text = (
        "#2\tINITED cov: 10 ft: 12 corp: 1/1b exec/s: 0 rss: 70Mb\n"
        "#500\tNEW    cov: 40 ft: 90 corp: 9/1Kb lim: 4 exec/s: 250 rss: 80Mb L: 2/4 MS: 1 X-\n"
        "atheris_fuzz: signature: python:error:triage/log.py:205:_lines\n"
        "==1== ERROR: libFuzzer: fuzz target exited\n"
        "Test unit written to /d/crashes/crash-abc\n"
        "stat::number_of_executed_units: 501\nstat::average_exec_per_sec:     250\nstat::peak_rss_mb:              81\n"
    )
    r = A.parse_output(text)
    assert (r["executions"], r["cov"], r["ft"], r["corpus"], r["exec_per_s"], r["peak_rss_mb"]) == (
        501,
        40,
        90,
        9,
        250,
        81,
    )
    assert (r["failure"], r["artifact"]) == ("exit", "/d/crashes/crash-abc")
    assert A.failure_signature("exit", text) == "python:error:triage/log.py:205:_lines"
