"""scan against the ground truth of OVMF builds from Debian's edk2 source."""

import json

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan.scanner import scan_image

from truth import debug_file, fifo_sites

pytestmark = pytest.mark.build


def _truth(build):
    root = read_image(str(build / "FV" / "OVMF_CODE.fd"))
    truth = {}
    for m in iter_modules(root):
        dbg = debug_file(build, m.arch, m.name, m.guid)
        assert dbg is not None, m.name
        for rva, (routine, mnem) in fifo_sites(dbg, m.image.bits).items():
            truth[(m.guid, m.volume, rva)] = (routine, mnem)
    return root, truth


def test_precision_and_recall_without_symbols(ovmf_build):
    root, truth = _truth(ovmf_build)
    res = scan_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"), root=root, jobs=2)
    got = {(f.guid, f.volume, f.rva): f for f in res.findings}
    assert set(got) == set(truth)  # precision and recall 1.0
    assert len(truth) >= 60  # every build here links the Sev FIFO routines into many modules (RELEASE: fw_cfg)
    for k, f in got.items():
        routine, mnem = truth[k]
        assert f.mnemonic == mnem
        assert f.function_source == "signature"
        assert f.function == routine, (f.module, f.rva)
        assert f.signature["library"] == "BaseIoLibIntrinsicSev"


def test_with_symbols_names_equal_symbol_table(ovmf_build):
    root, truth = _truth(ovmf_build)
    res = scan_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"), symbols_dir=str(ovmf_build), root=root, jobs=2)
    assert {(f.guid, f.volume, f.rva) for f in res.findings} == set(truth)
    for f in res.findings:
        assert f.function_source == "symbols"
        assert f.function == truth[(f.guid, f.volume, f.rva)][0]


def test_debug_builds_write_debug_output_with_rep_outsb(ovmf_build):
    res = scan_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"), jobs=2)
    outsb = [f for f in res.findings if f.mnemonic == "rep outsb"]
    reach = [f for f in outsb if f.reachable]
    if "DEBUG" in ovmf_build.name:
        # DEBUG() goes through SevIoWriteFifo8 (port 0x402): reachable from many entry points
        assert len(reach) > 20
    insb = [f for f in res.findings if f.mnemonic == "rep insb" and f.callers]
    assert insb  # fw_cfg reads have direct callers in every build


def test_scan_json_cli_on_build(ovmf_build, tmp_path):
    out = tmp_path / "scan.json"
    r = CliRunner().invoke(main, ["scan", "--format", "json", "-o", str(out), str(ovmf_build / "FV" / "OVMF_CODE.fd")])
    assert r.exit_code == 1, r.output
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == "ovmftool.scan/1"
    assert doc["summary"]["sites"] == len(doc["findings"]) >= 60


def test_map_files_name_functions_when_no_debug_files(ovmf_build, tmp_path):
    import shutil

    (tmp_path / "X64").mkdir()
    for p in (ovmf_build / "X64").glob("*.map"):
        shutil.copy(p, tmp_path / "X64" / p.name)
    root, truth = _truth(ovmf_build)
    res = scan_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"), symbols_dir=str(tmp_path), root=root, jobs=2)
    named = [f for f in res.findings if f.function_source == "symbols"]
    # The FIFO routines are global, so maps list them; a map that belongs to another build of a
    # module (the build keeps one map per name) is refused and the signature names the routine.
    assert len(named) >= 0.9 * len(truth)
    for f in res.findings:
        assert f.function == truth[(f.guid, f.volume, f.rva)][0]


def test_symbols_dir_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["scan", "--symbols", str(tmp_path), "x.fd"])
    assert r.exit_code == 2 and "Traceback" not in r.output
