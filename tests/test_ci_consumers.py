"""ovmftool's CI outputs read by the tools CI systems use: SARIF through Microsoft's multitool
under GitHub's policy and through sarif-tools, JUnit against Jenkins' and Ant's XSDs and through
junitparser, the Action and the docs' pipeline examples through actionlint and zizmor, and every
ovmftool command of those examples run on a real image."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ovmftool.cli import main
from tests.ci_consumers import ant_xsd, jenkins_xsd, linter, multitool_findings
from tests.conftest import CODE_IMAGES, CORPUS_IMAGES, ROOT

DEB = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]
DEBIAN_CODE = sorted(p for k, p in CODE_IMAGES.items() if k.startswith("images/debian-"))


def _scan(tmp_path: Path, fmt: str, *names: str) -> tuple[int, Path]:
    out = tmp_path / f"out.{fmt}"
    r = CliRunner().invoke(main, ["scan", "--format", fmt, "--sarif-root", str(tmp_path), "-o", str(out), *names])
    return r.exit_code, out


def _copy(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return str(dst)


def _damaged(tmp_path: Path) -> str:
    p = tmp_path / "broken" / "OVMF_CODE.fd"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(DEB.read_bytes()[:100000])  # cut: not a multiple of the flash block
    return str(p)


# --- SARIF ---------------------------------------------------------------------------------


def test_multitool_github_policy_debian_images(tmp_path):
    imgs = [_copy(p, tmp_path / p.parent.name / p.name) for p in DEBIAN_CODE]
    assert len(imgs) >= 4
    code, out = _scan(tmp_path, "sarif", *imgs)
    assert code == 1
    assert multitool_findings(out, tmp_path) == {}  # 0 errors, 0 warnings, 0 notes
    log = json.loads(out.read_text())
    assert len(log["runs"]) == 1 and len(log["runs"][0]["results"]) >= 90 * len(imgs)


def _twenty_five(tmp_path, images: list[str]) -> dict:
    images = images + [_damaged(tmp_path)]
    assert len(images) == 25
    code, out = _scan(tmp_path, "sarif", *images)
    assert code == 2
    assert len(gzip.compress(out.read_bytes())) < 10 * 2**20  # GitHub's limit for one upload, gzipped
    found = multitool_findings(out, tmp_path)
    (run,) = json.loads(out.read_text())["runs"]
    targets = [a for a in run["artifacts"] if "analysisTarget" in a["roles"]]
    assert len(targets) == 25 and [a["properties"]["exitCode"] for a in targets] == [1] * 24 + [2]
    (note,) = run["invocations"][0]["toolExecutionNotifications"]
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "broken/OVMF_CODE.fd"
    return {"found": found, "run": run}


def test_multitool_github_policy_25_modules_with_a_damaged_image(tmp_path):
    """25 inputs in one upload (GitHub refuses more than 20 runs): one run, 24 UEFI drivers
    that hold sites and a damaged image, reported as a notification located at it: nothing to
    report under GitHub's policy."""
    r = CliRunner().invoke(main, ["extract", str(DEB), "-o", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    doc = json.loads(CliRunner().invoke(main, ["scan", "--format", "json", str(DEB)]).output)
    with_sites = sorted({f["module"] for f in doc["findings"]})
    found = sorted(p for p in (tmp_path / "x").rglob("*.efi") if p.stem.split("_")[0] in with_sites)
    mods = [
        _copy(found[i % len(found)], tmp_path / "drivers" / f"{i:02}_{found[i % len(found)].name}") for i in range(24)
    ]
    out = _twenty_five(tmp_path, mods)
    assert out["found"] == {}  # 0 errors, 0 warnings, 0 notes


def test_multitool_github_policy_25_images_with_a_damaged_one(tmp_path):
    """25 whole images: one run of 2,000-odd results. GitHub takes 25,000 results per run (and
    shows the 5,000 most severe); the multitool's GH1004 holds a run to its own default of 1,000
    and says so once — nothing else is reported."""
    imgs = [_copy(DEBIAN_CODE[i % len(DEBIAN_CODE)], tmp_path / "fleet" / f"img{i:02}.fd") for i in range(24)]
    out = _twenty_five(tmp_path, imgs)
    n = len(out["run"]["results"])
    assert 1000 < n <= 5000
    assert out["found"] == {("error", "GH1004"): 1}
    assert {r["properties"]["image"] for r in out["run"]["results"]} == {f"fleet/img{i:02}.fd" for i in range(24)}


def test_multitool_github_policy_error_run(tmp_path):
    code, out = _scan(tmp_path, "sarif", _damaged(tmp_path))
    assert code == 2
    assert multitool_findings(out, tmp_path) == {}
    (run,) = json.loads(out.read_text())["runs"]
    assert run["results"] == [] and run["invocations"][0]["executionSuccessful"] is False


def test_sarif_tools_lists_each_result_at_its_listing_line(tmp_path):
    sarif_cli = linter("sarif")
    img = _copy(DEB, tmp_path / "OVMF_CODE.fd")
    code, out = _scan(tmp_path, "sarif", img)
    assert code == 1
    r = subprocess.run(
        [sarif_cli, "csv", "-o", str(tmp_path / "r.csv"), str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == 90
    assert {row["Location"] for row in rows} == {"OVMF_CODE.fd.sites.txt"}
    assert sorted(int(row["Line"]) for row in rows) == list(range(2, 92))  # a line of its own each, never 1


# --- JUnit ---------------------------------------------------------------------------------


def _junit(tmp_path):
    inputs = [
        _copy(DEB, tmp_path / "a" / "OVMF_CODE.fd"),
        _copy(CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS.fd"], tmp_path / "a" / "OVMF_VARS.fd"),
        str(tmp_path / "a"),
        _damaged(tmp_path),
    ]
    code, out = _scan(tmp_path, "junit", *inputs)
    assert code == 2
    return out


def test_junit_is_valid_against_jenkins_xsd(tmp_path):
    from lxml import etree

    schema = jenkins_xsd()
    doc = etree.parse(str(_junit(tmp_path)))
    assert schema.validate(doc), schema.error_log


def test_junit_is_valid_against_ant_xsd(tmp_path):
    from lxml import etree

    schema = ant_xsd()
    doc = etree.parse(str(_junit(tmp_path)))
    assert schema.validate(doc), schema.error_log


def test_junit_times_and_stamps_as_readers_see_them(tmp_path):
    junitparser = pytest.importorskip("junitparser", reason="junitparser is in the test extras")
    xml = junitparser.JUnitXml.fromfile(str(_junit(tmp_path)))
    suites = list(xml)
    assert [s.name for s in suites][0].endswith("a/OVMF_CODE.fd")
    code = suites[0]
    assert code.time > 0 and code.tests == len(list(code)) and code.failures == 15
    assert all(case.time is not None and case.time >= 0 for case in code)
    assert sum(case.time for case in code) > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", code.timestamp) and code.hostname
    kinds = [(s.errors, s.skipped) for s in suites]
    # the variable store named on the command line is an error; the directory brings in only
    # files named before, so it adds nothing; the cut image is an error
    assert kinds == [(0, 0), (1, 0), (1, 0)]


# --- the Action and the docs' examples -------------------------------------------------------

EXAMPLE = re.compile(r"```(yaml|groovy)\n(?:#|//) ovmftool-example: (\S+)\n(.*?)```", re.S)


def _examples() -> dict[str, str]:
    found = {name: body for _, name, body in EXAMPLE.findall((ROOT / "docs" / "ci.md").read_text())}
    assert set(found) == {"github-workflow", "github-action", "github-matrix", "gitlab", "jenkins"}
    return found


def _workflow_repo(tmp_path: Path, action: str = "./") -> Path:
    """A repository holding this Action at its root and the docs' GitHub examples as workflows,
    the Action referred to as `action`: `./` lets actionlint check their inputs against
    action.yml; zizmor wants a remote action pinned to a commit, as users write it."""
    repo = tmp_path / "repo"
    wf = repo / ".github" / "workflows"
    wf.mkdir(parents=True)
    shutil.copyfile(ROOT / "action.yml", repo / "action.yml")
    for name, body in _examples().items():
        if name.startswith("github-"):
            (wf / f"{name}.yml").write_text(body.replace("OWNER/ovmftool@COMMIT_SHA", action))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def test_actionlint_on_the_action_and_the_examples(tmp_path):
    exe = linter("actionlint")
    repo = _workflow_repo(tmp_path)
    r = subprocess.run([exe, "-no-color"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # and it does check the Action's inputs: a misspelt one is an error
    wf = repo / ".github" / "workflows" / "github-action.yml"
    wf.write_text(wf.read_text().replace("waivers:", "waiver:"))
    r = subprocess.run([exe, "-no-color"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and 'input "waiver" is not defined' in r.stdout


def test_zizmor_on_the_action_and_the_examples(tmp_path):
    exe = linter("zizmor")
    repo = _workflow_repo(tmp_path, "example/ovmftool@" + "0123456789abcdef" * 2 + "01234567")
    r = subprocess.run(
        [exe, "--offline", "--no-progress", "--format", "plain", str(repo)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No findings" in r.stdout + r.stderr


def test_action_uses_pinned_current_actions():
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    uses = [s["uses"] for s in action["runs"]["steps"] if "uses" in s]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", u) for u in uses), uses
    text = (ROOT / "action.yml").read_text()
    assert "upload-sarif@8aad20d150bbac5944a9f9d289da16a4b0d87c1e # v4." in text  # codeql-action v4


def test_gitlab_and_jenkins_examples_read_what_they_write():
    ex = _examples()
    job = yaml.safe_load(ex["gitlab"])["ovmftool"]
    junit = job["artifacts"]["reports"]["junit"]
    assert any(f"--format junit -o {junit}" in line for line in job["script"])
    assert job["artifacts"]["when"] == "always"
    groovy = ex["jenkins"]
    assert "recordIssues(tools: [sarif(pattern: 'ovmftool.sarif')])" in groovy and "-o ovmftool.sarif" in groovy
    assert "junit 'ovmftool-junit.xml'" in groovy and "-o ovmftool-junit.xml" in groovy
    assert groovy.count("{") == groovy.count("}")


def _commands(text: str) -> list[str]:
    """The ovmftool command lines of an example (YAML `run:`/`script:` entries, `sh '...'`)."""
    out = []
    for line in text.splitlines():
        code = line.split(" #")[0]  # not the comments
        out += [c.strip() for c in re.findall(r"(ovmftool (?:scan|check|baseline) [^'\n]*)", code)]
    return out


def test_every_example_command_runs_on_a_real_image(tmp_path):
    """Each ovmftool command of the docs' examples, run in a checkout where the example's image
    paths hold Debian's image, exits as the example expects (`|| test $? -eq 1`: 0 or 1)."""
    fv = tmp_path / "Build" / "OvmfX64" / "RELEASE_GCC5" / "FV"
    _copy(DEB, fv / "OVMF_CODE.fd")
    _copy(DEB, fv / "OVMF.fd")
    (tmp_path / "ci").mkdir()
    ran = 0
    for name, body in _examples().items():
        for cmd in _commands(body):
            tolerant = "|| test $? -eq 1" in cmd
            cmd = cmd.split(" || ")[0]
            if "--baseline" in cmd:  # record the baseline the example names, then check against it
                base = re.search(r"--baseline (\S+)", cmd).group(1)
                imgs = [a for a in cmd.split()[2:] if a.startswith("Build/")]
                r = subprocess.run(
                    [sys.executable, "-m", "ovmftool", "baseline", *imgs, "-o", base],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert r.returncode == 0, (name, r.stderr)
            r = subprocess.run(
                [sys.executable, "-m", "ovmftool", *cmd.split()[1:]],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode in ((0, 1) if tolerant else (0,)), (name, cmd, r.stdout[-500:], r.stderr[-500:])
            ran += 1
    assert ran >= 7
