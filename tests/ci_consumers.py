"""The CI report readers the tests run ovmftool's output through, where `tools/ci/consumers.sh`
(run by .ci/run) installed them: Microsoft's SARIF multitool under GitHub's policy and Jenkins'
junit-10.xsd; actionlint and zizmor come with the test extras. Each helper skips its test with
the reason when its reader is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

TOOLS = Path(os.environ.get("OVMFTOOL_CACHE", Path.home() / ".cache" / "ovmftool")) / "tools"
MULTITOOL = TOOLS / "sarif-multitool" / "node_modules" / "@microsoft" / "sarif-multitool-linux" / "Sarif.Multitool"
JENKINS_XSD = TOOLS / "xsd" / "junit-10.xsd"

# GitHub's policy for the multitool: the rule levels of sarif-sdk's policies/github.config.xml
# (microsoft/sarif-sdk), written out here; rule kinds Sarif, Gh and Ghas.
GITHUB_POLICY = {
    "SARIF2007.ExpressPathsRelativeToRepoRoot": "Error",
    "SARIF2012.ProvideHelpUris": "Warning",
    "SARIF2016.FileUrisShouldBeRelative": "Disabled",
    "GH1001.ProvideRequiredLocationProperties": "Error",
    "GH1002.InlineThreadFlowLocations": "Error",
    "GH1003.ProvideRequiredRegionProperties": "Error",
    "GH1004.ReviewArraysThatExceedConfigurableDefaults": "Error",
    "GH1005.LocationsMustBeRelativeUrisOrFilePaths": "Error",
    "GH1006.ProvideCheckoutPath": "Error",
}


def github_policy(path: Path) -> Path:
    rules = "".join(
        f"  <Properties Key='{k}.Options'><Property Key='RuleEnabled' Value='{v}' /></Properties>\n"
        for k, v in GITHUB_POLICY.items()
    )
    path.write_text(f"<?xml version='1.0' encoding='utf-8'?>\n<Properties>\n{rules}</Properties>\n")
    return path


def multitool_findings(sarif: Path, work: Path) -> Counter:
    """`sarif-multitool validate` of `sarif` under GitHub's policy: its results counted by
    (level, rule id). The multitool writes them as a SARIF log of its own."""
    if not os.access(MULTITOOL, os.X_OK):
        pytest.skip(f"sarif-multitool not installed at {MULTITOOL} (tools/ci/consumers.sh installs it)")
    out = work / "validation.sarif"
    r = subprocess.run(
        [
            str(MULTITOOL),
            "validate",
            "--config",
            str(github_policy(work / "github.config.xml")),
            "--rule-kind",
            "Sarif;Gh;Ghas",
            "--log",
            "ForceOverwrite",
            "-o",
            str(out),
            "--max-file-size-in-kb",
            "1000000",
            str(sarif),
        ],  # GitHub limits the gzipped size
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, DOTNET_CLI_TELEMETRY_OPTOUT="1"),
    )
    assert r.returncode == 0 and out.is_file(), r.stdout[-2000:] + r.stderr[-2000:]
    log = json.loads(out.read_text(encoding="utf-8-sig"))
    found = Counter()
    for run in log["runs"]:
        for res in run.get("results", []):
            found[(res.get("level", "warning"), res["ruleId"])] += 1
    return found


def jenkins_xsd():
    """Jenkins' junit-10.xsd as an lxml schema (skips when it was not fetched)."""
    lxml = pytest.importorskip("lxml.etree", reason="lxml is in the test extras")
    if not JENKINS_XSD.is_file():
        pytest.skip(f"junit-10.xsd not fetched to {JENKINS_XSD} (tools/ci/consumers.sh fetches it)")
    return lxml.XMLSchema(lxml.parse(str(JENKINS_XSD)))


def ant_xsd():
    """The Apache Ant JUnit XSD (windyroad JUnit-Schema) as an lxml schema, from the path in
    OVMFTOOL_ANT_JUNIT_XSD: no package registry the project reaches carries it."""
    lxml = pytest.importorskip("lxml.etree", reason="lxml is in the test extras")
    path = os.environ.get("OVMFTOOL_ANT_JUNIT_XSD")
    if not path or not Path(path).is_file():
        pytest.skip(
            "the Ant JUnit XSD is in no package registry this project reaches: set "
            "OVMFTOOL_ANT_JUNIT_XSD to a copy of windyroad JUnit-Schema's JUnit.xsd"
        )
    return lxml.XMLSchema(lxml.parse(path))


def linter(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} not installed (pip install '.[test]' brings it)")
    return exe
