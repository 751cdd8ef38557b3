"""The composite GitHub Action, run as GitHub runs it: each `run:` step in bash with its `env:`
(the `${{ inputs.* }}` GitHub substitutes, given directly), GITHUB_* variables and a
GITHUB_OUTPUT file, in a workspace holding real images; the upload step's condition evaluated
on the Scan step's outputs."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import CORPUS_IMAGES, ROOT

ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
DEB = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]
DEB25 = CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"]
pytestmark = pytest.mark.skipif(shutil.which("ovmftool") is None, reason="needs the console script installed")


def _step(name):
    return next(s for s in ACTION["runs"]["steps"] if s.get("name") == name)


def test_action_shape():
    assert ACTION["runs"]["using"] == "composite"
    assert {"images", "baseline", "waivers", "sarif-file", "category", "matrix"} <= set(ACTION["inputs"])
    upload = _step("Upload SARIF")
    assert upload["uses"].startswith("github/codeql-action/upload-sarif@")
    assert upload["with"]["category"] == "${{ steps.scan.outputs.category }}"
    assert "steps.scan.outputs.scanned == 'true'" in upload["if"]


class Job:
    """One job's workspace: the steps share GITHUB_OUTPUT files per step id, as on a runner."""

    def __init__(self, tmp_path: Path, **inputs: str) -> None:
        self.ws = tmp_path / "workspace"
        self.ws.mkdir(exist_ok=True)
        self.inputs = {k: ACTION["inputs"][k].get("default", "") for k in ACTION["inputs"]}
        self.inputs.update(inputs)
        self.outputs: dict[str, dict[str, str]] = {}

    def run(self, name: str) -> subprocess.CompletedProcess:
        step = _step(name)
        env = {}
        for k, v in step.get("env", {}).items():  # ${{ inputs.X }} as GitHub substitutes it
            key = v.removeprefix("${{ inputs.").removesuffix(" }}")
            env[k] = self.inputs[key] if v.startswith("${{ inputs.") else v
        out = self.ws.parent / f"output-{step.get('id', name)}"
        out.write_text("")
        full = dict(
            os.environ,
            **env,
            GITHUB_OUTPUT=str(out),
            GITHUB_WORKSPACE=str(self.ws),
            GITHUB_ACTIONS="true",
            GITHUB_JOB="firmware",
            GITHUB_REPOSITORY="example/firmware",
            GITHUB_SHA="0" * 40,
            GITHUB_EVENT_NAME="push",
            RUNNER_TEMP=str(self.ws.parent),
        )
        shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]]  # GitHub's bash
        r = subprocess.run(shell, env=full, cwd=self.ws, capture_output=True, text=True, timeout=600)
        if "id" in step:
            self.outputs[step["id"]] = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
        return r

    def uploads(self) -> bool:
        """The upload step's `if:` on what the Scan step wrote (always() holds)."""
        return self.inputs["upload-sarif"] == "true" and self.outputs.get("scan", {}).get("scanned") == "true"

    def put(self, src: Path, rel: str) -> str:
        dst = self.ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return rel


def test_two_images_with_a_two_image_baseline(tmp_path):
    job = Job(tmp_path)
    a, b = job.put(DEB, "build/a/OVMF_CODE.fd"), job.put(DEB25, "build/b/OVMF_CODE.fd")
    job.inputs["images"] = f"{a}\n{b}\n"
    r = job.run("Scan")
    assert r.returncode == 0, r.stderr
    assert job.outputs["scan"] == {"category": "ovmftool", "sites": "198", "scanned": "true"} and job.uploads()
    (run,) = json.loads((job.ws / "ovmftool.sarif").read_text())["runs"]
    assert [x["location"]["uri"] for x in run["artifacts"] if "analysisTarget" in x["roles"]] == [a, b]
    assert f"{a}: 90 string I/O sites (exit 1)" in r.stdout and f"{b}: 108 string I/O sites (exit 1)" in r.stdout
    assert r.stdout.rstrip().endswith("total: 198 sites") and r.stdout.count("\n") < 10  # no second scan
    # no baseline: every site is new
    r = job.run("Gate on new sites")
    assert r.returncode == 1 and "check: 198 new in 2 of 2 images; 0 errors" in r.stdout
    # one baseline file, both images, each under its path: the gate passes
    (job.ws / "ci").mkdir()
    subprocess.run(
        ["ovmftool", "baseline", a, b, "-o", "ci/baseline.json"], cwd=job.ws, check=True, capture_output=True
    )
    job.inputs["baseline"] = "ci/baseline.json"
    r = job.run("Gate on new sites")
    assert r.returncode == 0, r.stdout + r.stderr
    # the two images swap places: each path keeps its own entry, so 2025.02's 18 sites in modules
    # 2022.11 lacks are new at a, and b has 18 entry sites gone (site keys do not hold addresses)
    job.put(DEB25, a)
    job.put(DEB, b)
    r = job.run("Gate on new sites")
    assert r.returncode == 1 and "check: 18 new in 1 of 2 images; 0 errors" in r.stdout
    block_a, block_b = r.stdout.split(f"{b}:")
    assert block_a.count("NEW ") == 18 and "18 baseline sites gone" in block_b


def test_a_directory_and_a_pattern(tmp_path):
    job = Job(tmp_path)
    job.put(DEB, "fw/x64/OVMF_CODE.fd")
    job.put(CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS.fd"], "fw/x64/OVMF_VARS.fd")  # skipped, not an error
    job.put(DEB25, "fw/tdx/OVMF_CODE_4M.fd")
    job.inputs["images"] = "fw/x64 fw/**/OVMF_CODE_4M.fd"
    r = job.run("Scan")
    assert r.returncode == 0, r.stderr
    assert job.outputs["scan"]["sites"] == "198" and job.uploads()
    subprocess.run(
        ["ovmftool", "baseline", "fw/x64", "fw/**/OVMF_CODE_4M.fd", "-o", "b.json"],
        cwd=job.ws,
        check=True,
        capture_output=True,
    )
    job.inputs["baseline"] = "b.json"
    r = job.run("Gate on new sites")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped:" in r.stdout + r.stderr and "0 errors" in r.stdout


def test_a_scan_that_fails_uploads_nothing(tmp_path):
    """A damaged image among good ones: the Scan step fails (2) and the upload's condition is
    false, so no log without that image's results can close its alerts; the gate does not run
    (GitHub skips later steps after a failure), and would also say 2."""
    job = Job(tmp_path)
    good = job.put(DEB, "fw/OVMF_CODE.fd")
    bad = job.ws / "fw" / "CUT.fd"
    bad.write_bytes(DEB.read_bytes()[:100000])
    job.inputs["images"] = f"{good} fw/CUT.fd"
    r = job.run("Scan")
    assert r.returncode == 2 and "::error::" in r.stdout
    assert "scanned" not in job.outputs["scan"] and not job.uploads()
    gate = _step("Gate on new sites")  # skipped after a failed scan, run after a failed upload
    assert gate["if"] == "${{ !cancelled() && steps.scan.outputs.scanned == 'true' }}"
    assert job.run("Gate on new sites").returncode == 2  # and were it run, it would say 2 too


def test_category_from_the_matrix_and_from_the_input(tmp_path):
    job = Job(tmp_path, images=DEB.name)
    job.put(DEB, DEB.name)
    job.inputs["matrix"] = json.dumps({"platform": "X64", "target": "DEBUG"})
    assert job.run("Scan").returncode == 0
    assert job.outputs["scan"]["category"] == "ovmftool/platform:X64,target:DEBUG"
    job.inputs["matrix"] = json.dumps({"os": ["a", "b"], "cfg": {"y": 1}})
    job.run("Scan")
    assert job.outputs["scan"]["category"] == 'ovmftool/cfg:{"y":1},os:["a","b"]'  # no spaces
    job.inputs["matrix"] = "null"  # a job without a matrix
    job.run("Scan")
    assert job.outputs["scan"]["category"] == "ovmftool"
    job.inputs["category"] = "firmware/ovmf"
    job.inputs["matrix"] = json.dumps({"platform": "X64"})
    job.run("Scan")
    assert job.outputs["scan"]["category"] == "firmware/ovmf"
