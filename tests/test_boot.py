"""boot-check: real firmware under QEMU (TCG); executed string I/O is a subset of what scan reports."""

import json
import shutil

import jsonschema

import pytest
from click.testing import CliRunner

from ovmftool.cli import main

from conftest import CORPUS_IMAGES, ROOT, build_dir

SCHEMA = json.loads((ROOT / "docs" / "schema" / "boot-check-1.json").read_text())

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86 is installed by .ci/run")

DEB = {
    "2022.11": (CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"], None),  # OVMF_VARS_4M.fd beside it
    "2025.02": (CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"], None),
}


def _boot(image, vars_file=None):
    args = ["boot-check", "--format", "json", "--timeout", "240", str(image)]
    if vars_file:
        args += ["--vars", str(vars_file)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.output)
    jsonschema.validate(doc, SCHEMA)
    return r.exit_code, doc


def _scan_sites(image):
    r = CliRunner().invoke(main, ["scan", "--format", "json", str(image)])
    return {(f["guid"], f["rva"]): f for f in json.loads(r.output)["findings"]}


@pytest.mark.parametrize("ver", ["2022.11", "2025.02"])
def test_debian_release_reads_fw_cfg_with_rep_insb(ver, tmp_path):
    image, vars_file = DEB[ver]
    code, doc = _boot(image, vars_file)
    assert code == 1 and doc["ended"] == "shell"
    assert doc["seconds"] < 180
    first = doc["first"]
    assert first["mnemonic"] == "rep insb" and first["module"] == "PlatformPei"
    assert first["function"] in ("IoReadFifo8", "SevIoReadFifo8")
    mods = {e["module"] for e in doc["executed"] if e["module"]}
    assert {"PlatformPei", "QemuFwCfgAcpiPlatform"} <= mods  # QemuFwCfgLib's callers
    # the second boot: every one ran, on the fw_cfg data port, and moved whole reads
    assert doc["counted"]
    for e in doc["executed"]:
        assert e["port"] == 0x511 and e["executions"] >= 1 and e["units"] >= e["executions"], e
    # every site is attributed to one module (ambiguous page offsets resolved by matching code)
    assert all(e["module"] for e in doc["executed"]), [e["candidates"] for e in doc["executed"]]
    sites = _scan_sites(image)
    for e in doc["executed"]:  # the static scan is a superset of what runs
        if e["module"]:
            assert (e["guid"], e["rva"]) in sites, e
        else:
            assert e["candidates"], e


def test_debug_build_writes_its_log_with_rep_outsb():
    b = build_dir("2022.11-X64-DEBUG") / "FV"
    code, doc = _boot(b / "OVMF_CODE.fd", b / "OVMF_VARS.fd")
    assert code == 1 and doc["ended"] == "shell"
    outsb = [e for e in doc["executed"] if e["mnemonic"] == "rep outsb"]
    assert len(outsb) > 20 and doc["first"]["mnemonic"] == "rep outsb"
    assert {e["port"] for e in outsb} == {0x402}
    # counts are exact: the bytes REP OUTSB sent to the debug port are the debug log, byte for byte
    log = open(doc["logs"]["count_debug"], "rb").read()
    assert sum(e["units"] for e in outsb) == sum(e["iterations"] for e in outsb) == len(log) > 10000
    assert {e["mapped_by"] for e in doc["executed"]} <= {"debug-log", "xip"}  # the DEBUG log maps every one
    sites = _scan_sites(b / "OVMF_CODE.fd")
    assert all((e["guid"], e["rva"]) in sites for e in doc["executed"])


def test_fail_fast_stops_at_the_first(tmp_path):
    image, _ = DEB["2022.11"]
    r = CliRunner().invoke(main, ["boot-check", "--fail-fast", "--timeout", "240", str(image)])
    assert r.exit_code == 1 and "fail-fast" in r.output and "<= first" in r.output


def test_missing_qemu_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    r = CliRunner().invoke(main, ["boot-check", str(DEB["2022.11"][0])])
    assert r.exit_code == 2 and "apt-get install qemu-system-x86" in r.output
