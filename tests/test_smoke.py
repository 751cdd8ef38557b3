"""The smoke tier (`pytest -m smoke`, seconds): every command once on a real image, each asserting
its verdict. plan and boot-check need an EDK II tree or QEMU for real work: here they are run to
the point each refuses a wrong input, which still goes through their argument and input checks."""

import json

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from tests.conftest import CORPUS_IMAGES

pytestmark = pytest.mark.smoke
DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
DEB25 = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
CRASH = "vCPU 0: Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 110, 235, 10], len: 4 })"


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_info():
    r = _run("info", "--modules", DEB)
    assert r.exit_code == 0 and "PlatformPei" in r.stdout


def test_extract(tmp_path):
    r = _run("extract", DEB, "-o", str(tmp_path / "x"))
    assert r.exit_code == 0 and (tmp_path / "x" / "manifest.json").is_file()


def test_scan():
    r = _run("scan", "--format", "json", DEB)
    assert r.exit_code == 1 and json.loads(r.stdout)["summary"]["sites"] == 90


def test_baseline_and_check(tmp_path):
    base = tmp_path / "b.json"
    assert _run("baseline", DEB, "-o", str(base)).exit_code == 0
    assert _run("check", "--baseline", str(base), DEB).exit_code == 0
    assert _run("check", DEB).exit_code == 1


def test_diff():
    r = _run("diff", DEB, DEB25)
    assert r.exit_code == 1 and "added" in r.stdout


def test_patch(tmp_path):
    out = tmp_path / "p.fd"
    r = _run("patch", DEB, "-o", str(out))
    assert r.exit_code == 0 and out.is_file()
    assert _run("scan", str(out)).exit_code == 0  # checked and clean


def test_decode():
    r = _run("decode", CRASH)
    assert r.exit_code == 0 and "REP OUTSB" in r.stdout


def test_plan_refuses_a_directory_that_is_no_edk2_tree(tmp_path):
    r = _run("plan", "--edk2", str(tmp_path), "--dsc", "OvmfPkg/OvmfPkgX64.dsc", "-o", str(tmp_path / "out"))
    assert r.exit_code == 2 and r.stderr.startswith("ovmftool: error:") and r.stderr.count("\n") == 1


def test_boot_check_refuses_what_it_cannot_boot():
    r = _run("boot-check", str(CORPUS_IMAGES["images/debian-2026.08/QEMU_EFI.fd"]))
    assert r.exit_code == 2 and "not x86" in r.stderr and r.stderr.count("\n") == 1
