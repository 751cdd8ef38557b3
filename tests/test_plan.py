"""The EDK II patch planner on Debian's edk2 trees."""

import json
import subprocess

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.edk2 import strategy as S
from ovmftool.edk2.dsc import read_dsc
from tests.conftest import CORPUS, build_dir

pytestmark = pytest.mark.build


def tree(ver: str):
    from pathlib import Path

    out = (
        subprocess.run(
            ["bash", str(CORPUS / "scripts" / "edk2-source.sh"), ver], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return Path(out)


@pytest.mark.parametrize("ver,expected", [("2022.11", "unroll"), ("2025.02", "dsc-inf")])
@pytest.mark.parametrize(
    "dsc",
    [
        "OvmfPkg/OvmfPkgX64.dsc",
        "OvmfPkg/OvmfPkgIa32X64.dsc",
        "OvmfPkg/OvmfPkgIa32.dsc",
        "OvmfPkg/Bhyve/BhyveX64.dsc",
        "OvmfPkg/AmdSev/AmdSevX64.dsc",
    ],
)
def test_plan_writes_a_series_that_applies(tmp_path, ver, expected, dsc):
    t = tree(ver)
    out = tmp_path / "p"
    r = CliRunner().invoke(
        main,
        [
            "plan",
            "--edk2",
            str(t),
            "--dsc",
            dsc,
            "-D",
            "SECURE_BOOT_ENABLE=TRUE",
            "-o",
            str(out),
            "--author",
            "A U Thor <a@example.org>",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "plan.json").read_text())
    assert doc["strategy"] == expected and doc["reasons"]
    series = sorted(out.glob("0*.patch"))
    assert [p.name for p in series] == doc["series"] and series
    for p in series:
        text = p.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 ")
        assert "Signed-off-by: A U Thor <a@example.org>" in text
        subj = next(l for l in text.splitlines() if l.startswith("Subject: "))
        assert "MdePkg/BaseIoLibIntrinsic:" in subj or "OvmfPkg:" in subj
    # git am on a git checkout of the tree's touched files, and git apply --check on the tree itself
    for p in series:
        subprocess.run(["git", "apply", "--check", "-p1", str(p)], cwd=t, check=True)
    # no REP string I/O left in any FIFO source the DSC builds, once applied
    scratch = tmp_path / "t"
    files = {l.split(" b/")[-1] for p in series for l in p.read_text().splitlines() if l.startswith("diff --git")}
    for f in files:
        (scratch / f).parent.mkdir(parents=True, exist_ok=True)
        if (t / f).is_file():
            (scratch / f).write_bytes((t / f).read_bytes())
    for p in series:
        subprocess.run(["git", "apply", "-p1", str(p)], cwd=scratch, check=True)
    for f in files:
        if f.endswith(".nasm"):
            assert not S._REP_IO.search((scratch / f).read_text()), f


def test_plan_is_deterministic(tmp_path):
    t = tree("2022.11")
    outs = []
    for i in range(2):
        o = tmp_path / f"p{i}"
        CliRunner().invoke(main, ["plan", "--edk2", str(t), "--dsc", "OvmfPkg/OvmfPkgX64.dsc", "-o", str(o)])
        outs.append({p.name: p.read_bytes() for p in o.iterdir()})
    assert outs[0] == outs[1]


def test_dsc_resolution_matches_the_build_report():
    """IoLib as the build resolved it (build -Y LIBRARY) equals what read_dsc resolves."""
    b = build_dir("2022.11-X64-DEBUG")
    report = (b / "build-report.txt").read_text(errors="replace")
    assert "BaseIoLibIntrinsicSev.inf" in report
    d = read_dsc(tree("2022.11"), "OvmfPkg/OvmfPkgX64.dsc", {"SECURE_BOOT_ENABLE": "TRUE"})
    assert d.resolve("IoLib", "X64", "DXE_DRIVER") == S.SEV_INF
    assert "BaseIoLibIntrinsic.inf" not in report.replace("BaseIoLibIntrinsicSev.inf", "")


def test_plan_errors(tmp_path):
    r = CliRunner().invoke(main, ["plan", "--edk2", str(tmp_path), "--dsc", "X.dsc", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not an EDK II tree" in r.output
    r = CliRunner().invoke(
        main, ["plan", "--edk2", str(tree("2022.11")), "--dsc", "Nope.dsc", "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "Nope.dsc not found" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--target", "FOO"], "Invalid value for '--target': 'FOO' is not one of 'DEBUG', 'RELEASE', 'NOOPT'."),
        (["--target", "RELEASE"], "--target, --before, --scratch, --measure-dsc-switch and --no-boot go with --verify"),
        (["--before", "{img}"], "--target, --before, --scratch, --measure-dsc-switch and --no-boot go with --verify"),
        (["--scratch", "{tmp}"], "--target, --before, --scratch, --measure-dsc-switch and --no-boot go with --verify"),
        # a newline would add a header to each patch, forge a second trailer, or a line of SUMMARY.md
        (["--author", "Evil <a@b>\nSubject: injected"], "--author must be one line without control characters"),
        (["--signoff", "X <x@y>\nSigned-off-by: F <f@f>"], "--signoff must be one line without control characters"),
        (["--signoff", "X\t<x@y>"], "--signoff must be one line without control characters"),
        (["-D", "X=a\n# forged"], "-D must be one line without control characters"),
        (["--author", "N\udcff <a@b>"], "--author must be UTF-8 text, not 'N\\udcff <a@b>'"),  # a byte no UTF-8
        (["-D", "X=\udcff"], "-D must be UTF-8 text"),
        (["--author", "nobody"], "--author must look like 'Name <mail@example.org>', not 'nobody'"),
        (["--author", "A <a@b> <c@d>"], "--author must look like 'Name <mail@example.org>'"),
        (
            ["--verify", "--no-boot", "--scratch", "{tmp}/scratch"],
            "--scratch {tmp}/scratch is inside the tree it copies",
        ),
    ],
)
def test_plan_options_are_checked_before_any_work(tmp_path, args, msg):
    """Each is one line and exit 2 before the tree is read (the tree here is not one)."""
    args = [a.format(img=tmp_path / "i.fd", tmp=tmp_path) for a in args]
    msg = msg.format(tmp=tmp_path)
    (tmp_path / "i.fd").write_bytes(b"")
    r = CliRunner().invoke(main, ["plan", "--edk2", str(tmp_path), "--dsc", "X.dsc", "-o", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and r.stderr.startswith("ovmftool: error: ") and msg in r.stderr, r.output
    assert r.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("ver", ["2022.11", "2025.02"])
def test_series_applies_with_git_am(tmp_path, ver):
    """The committed series for OvmfPkgX64 goes through `git am --keep-cr` (EDK II files are CRLF; EDK II's
    SetupGit.py sets am.keepcr) on a git checkout of the files."""
    from tests.conftest import ROOT

    t = tree(ver)
    series = sorted((ROOT / "edk2-patches" / f"debian-{ver}" / "OvmfPkgX64").glob("0*.patch"))
    files = {l.split(" b/")[-1] for p in series for l in p.read_text().splitlines() if l.startswith("diff --git")}
    repo = tmp_path / "repo"
    for f in files:
        if (t / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / f).write_bytes((t / f).read_bytes())
    env = {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "PATH": "/usr/bin:/bin",
    }
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "core.autocrlf", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "stock"],
        ["git", "am", "-q", "--keep-cr", *map(str, series)],
    ):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    log = subprocess.run(["git", "log", "--format=%s"], cwd=repo, env=env, capture_output=True, text=True).stdout
    assert len(log.splitlines()) == len(series) + 1


def test_verify_names_missing_toolchain_packages(tmp_path, monkeypatch):
    """--verify without nasm/iasl on PATH says which apt packages to install, before any build."""
    t = tree("2022.11")
    monkeypatch.setenv("PATH", "/nonexistent")
    r = CliRunner().invoke(
        main, ["plan", "--edk2", str(t), "--dsc", "OvmfPkg/OvmfPkgX64.dsc", "-o", str(tmp_path / "o"), "--verify"]
    )
    assert r.exit_code == 2 and "apt-get install" in r.output and "nasm" in r.output and "acpica-tools" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dsc", ["OvmfPkg/OvmfPkgX64.dsc", "OvmfPkg/OvmfPkgIa32X64.dsc"])
def test_plan_json_validates_against_the_schema(tmp_path, dsc):
    import jsonschema

    from tests.conftest import ROOT

    out = tmp_path / "p"
    r = CliRunner().invoke(
        main, ["plan", "--edk2", str(tree("2022.11")), "--dsc", dsc, "-D", "SECURE_BOOT_ENABLE=TRUE", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "plan.json").read_text())
    schema = json.loads((ROOT / "docs" / "schema" / "plan-1.json").read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
    assert doc["strategy"] == "unroll" and doc["modules_affected"] and "verification" not in doc
    # the committed series for this DSC was made by the same command (plus --verify) on this Debian revision
    committed = json.loads(
        (ROOT / "edk2-patches" / "debian-2022.11" / dsc.split("/")[1][:-4] / "plan.json").read_text()
    )
    if committed["tree_version"] == doc["tree_version"]:
        assert {k: v for k, v in committed.items() if k != "verification"} == doc
