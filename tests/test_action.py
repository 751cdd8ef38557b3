"""The composite GitHub Action: its shell steps run as written against a real image."""

import os
import shutil
import subprocess

import pytest
import yaml

from conftest import CORPUS_IMAGES, ROOT

ACTION = yaml.safe_load((ROOT / "action.yml").read_text())


def _step(name):
    return next(s for s in ACTION["runs"]["steps"] if s.get("name") == name)


def test_action_shape():
    assert ACTION["runs"]["using"] == "composite"
    assert {"images", "baseline", "waivers", "sarif-file"} <= set(ACTION["inputs"])
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif") for s in ACTION["runs"]["steps"])


def _run(step, env, tmp_path):
    script = step["run"]
    full = dict(os.environ, **env, GITHUB_OUTPUT=str(tmp_path / "out"))
    # the expressions GitHub substitutes in env: are given directly here
    return subprocess.run(["bash", "-e", "-c", script], env=full, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(shutil.which("ovmftool") is None, reason="needs the console script installed")
def test_scan_and_gate_steps_run(tmp_path):
    img = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
    r = _run(_step("Scan"), {"IMAGES": img, "SYMBOLS": "", "SARIF": "out.sarif"}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text().strip() == "sites=90"
    assert (tmp_path / "out.sarif").is_file()
    assert "summary: 90 sites" in r.stdout and "next steps:" in r.stdout
    # no baseline: every site is new and the gate fails
    r = _run(_step("Gate on new sites"), {"IMAGES": img, "BASELINE": "", "WAIVERS": "", "SYMBOLS": ""}, tmp_path)
    assert r.returncode == 1 and "check: 90 new" in r.stdout
    subprocess.run(["ovmftool", "baseline", img, "-o", str(tmp_path / "b.json")], check=True, capture_output=True)
    r = _run(_step("Gate on new sites"), {"IMAGES": img, "BASELINE": str(tmp_path / "b.json"), "WAIVERS": "",
                                          "SYMBOLS": ""}, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
