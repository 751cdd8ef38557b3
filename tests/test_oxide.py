"""Oxide's EDK II fork (propolis' firmware) as a target like Debian's trees: its DEBUG build (as the
fork's illumos/build.sh makes it) and RELEASE build, as the corpus keeps them, are patched,
rescanned and booted; the committed series applies to the fork's source, and the build of it the
corpus keeps (made from exactly these patches) has no site left.

Names and precision/recall against the .debug files are in test_scan_build.py (`any_build`)."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from tests.conftest import OXIDE_SERIES, ROOT, oxide_source_available, store_builds, stored

pytestmark = [pytest.mark.build, pytest.mark.slow]
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 from .ci/run")
FIFO = {f"Io{d}Fifo{w}" for d in ("Read", "Write") for w in (8, 16, 32)}  # the fork's names (pre-TDX)
SERIES_DIR = ROOT / "edk2-patches" / "oxide-edk2-stable202105" / "OvmfPkgX64"


def _boot(image, vars_file):
    r = CliRunner().invoke(
        main, ["boot-check", "--format", "json", "--timeout", "300", "--vars", str(vars_file), str(image)]
    )
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.output)


def _scan(image) -> tuple[int, dict]:
    r = CliRunner().invoke(main, ["scan", "--format", "json", str(image)])
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.output)


@needs_qemu
@pytest.mark.parametrize("key", ["oxide-202105-X64-DEBUG", "oxide-202105-X64-RELEASE"])
def test_fork_build_patched_rescans_clean_and_boots_with_no_string_io(key, tmp_path):
    """boot-check of the stock fork build lists the string I/O that executes (in the FIFO
    routines, named as the fork names them, in scanned sites); `patch` output rescans to 0 and
    boots to the shell with none executed."""
    fv = stored(key).fv
    code, stock = _scan(fv / "OVMF_CODE.fd")
    assert code == 1 and stock["findings"]
    sites = {(f["module"], f["rva"]) for f in stock["findings"]}
    rc, doc = _boot(fv / "OVMF_CODE.fd", fv / "OVMF_VARS.fd")
    assert rc == 1 and doc["verdict"] == "shell" and doc["executed"], doc["verdict"]
    for e in doc["executed"]:
        assert e["function"] in FIFO and (e["module"], e["rva"]) in sites, e
        assert e["executions"] and e["port"] is not None, e
    if "DEBUG" in key:  # DEBUG() output: REP OUTSB to QEMU's debug console port
        assert any(e["function"] == "IoWriteFifo8" and e["port"] == 0x402 for e in doc["executed"])
    out = tmp_path / "OVMF_CODE.fd"
    r = CliRunner().invoke(main, ["patch", "-o", str(out), str(fv / "OVMF_CODE.fd")])
    assert r.exit_code == 0, r.output
    if "DEBUG" in key:  # docs/propolis.md shows this run: its rebuilt and wrote lines are this output's
        shown = r.output.replace(str(fv / "OVMF_CODE.fd"), "OVMF_CODE.fd").replace(str(out), "OVMF_CODE.patched.fd")
        doc_lines = (ROOT / "docs" / "propolis.md").read_text().splitlines()
        for line in shown.splitlines():
            if line.startswith(("rebuilt:", "wrote ", "emulation:", "proof:")) or line.endswith(" refused"):
                assert line in doc_lines, line
    code, after = _scan(out)
    assert code == 0 and after["findings"] == []
    rc, doc = _boot(out, fv / "OVMF_VARS.fd")
    assert rc == 0 and doc["verdict"] == "shell" and doc["executed"] == []


def test_committed_series_applies_to_the_fork_source(tmp_path):
    """The series in edk2-patches/ applies with `git apply` to the fork's source files as shipped
    (the IoLib directory of the tree corpus/scripts/oxide-source.sh unpacks, untouched by its
    build fixes), and `plan` writes the same series for that tree today."""
    if not shutil.which("git"):
        pytest.skip("git from .ci/run")
    if not oxide_source_available():
        pytest.skip("the fork's source is not here (shared/oxide-edk2/ beside the checkout, as CI has it)")
    tree = store_builds.tree_of("oxide-202105")
    work = tmp_path / "t"
    shutil.copytree(
        tree / "MdePkg" / "Library" / "BaseIoLibIntrinsic", work / "MdePkg" / "Library" / "BaseIoLibIntrinsic"
    )
    for p in OXIDE_SERIES:
        r = subprocess.run(["git", "apply", "-p1", str(ROOT / p)], cwd=work, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    nasm = (work / "MdePkg/Library/BaseIoLibIntrinsic/X64/IoFifoSev.nasm").read_text()
    code = [ln.split(";", 1)[0].split() for ln in nasm.splitlines()]
    assert not [c for c in code if c[:1] == ["rep"]]  # no REP instruction left (comments may name it)
    out = tmp_path / "plan"
    r = CliRunner().invoke(
        main,
        [
            "plan",
            "--edk2",
            str(tree),
            "--dsc",
            "OvmfPkg/OvmfPkgX64.dsc",
            "-D",
            "FD_SIZE_2MB",
            "-D",
            "MPT_SCSI_ENABLE=FALSE",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert {p.name: p.read_bytes() for p in out.glob("0*.patch")} == {
        p.name: p.read_bytes() for p in SERIES_DIR.glob("0*.patch")
    }


@needs_qemu
def test_build_of_committed_series_has_no_site_and_boots(tmp_path):
    """corpus/scripts/build-ovmf.sh with the committed series (-p), as the corpus keeps it (built
    from these very patches: their sha256 are its provenance): 0 sites, and the image boots to the
    shell with no string I/O executed."""
    b = stored("oxide-202105-X64-DEBUG-series")
    assert [(p["name"], p["sha256"]) for p in b.meta["patches"]] == [
        (p.name, store_builds.sha256(p)) for p in sorted(SERIES_DIR.glob("0*.patch"))
    ], "the series changed: store its build again (python -m corpus.scripts.store_builds oxide-202105-X64-DEBUG-series)"
    for image in (b.code, b.full(tmp_path)):
        code, doc = _scan(image)
        assert code == 0 and doc["findings"] == [], image.name
    rc, doc = _boot(b.code, b.vars)
    assert rc == 0 and doc["verdict"] == "shell" and doc["executed"] == []


def test_committed_summary_records_the_measured_builds():
    """SUMMARY.md and plan.json of the fork's series carry what `plan --verify --measure-dsc-switch`
    measured: hundreds of sites before, as many with the DSC switched to the non-Sev IoLib
    (IoFifo.nasm is pure REP in 202105), none with the series, and a boot to the shell."""
    v = json.loads((SERIES_DIR / "plan.json").read_text())["verification"]
    assert v["before"]["sites"] >= 600 and v["after"]["sites"] == 0
    assert v["dsc_switch"]["sites"] >= v["before"]["sites"]
    assert v["boot"]["verdict"] == "shell" and v["boot"]["executed"] == 0
    text = (SERIES_DIR / "SUMMARY.md").read_text()
    assert f"{v['dsc_switch']['sites']} sites — switching the DSC removes nothing in this tree" in text
    assert "with this series: 0 sites" in text and "shell in" in text
