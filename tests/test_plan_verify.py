"""End to end: plan, build with the series, scan: zero sites where the stock build has hundreds;
the patched firmware boots to the UEFI shell under QEMU like the stock one."""

import json
import shutil

import pytest
from click.testing import CliRunner

from ovmftool.cli import main

from conftest import ROOT, build_dir
from test_plan import tree

pytestmark = [pytest.mark.build, pytest.mark.slow]

STOCK = {"2022.11": "2022.11-X64-DEBUG", "2025.02": "2025.02-X64-DEBUG"}


@pytest.mark.parametrize("ver", ["2022.11", "2025.02"])
@pytest.mark.parametrize("strategy", ["unroll", "dsc-inf"])
def test_plan_verify_leaves_no_site_and_boots(tmp_path, ver, strategy):
    stock = build_dir(STOCK[ver]) / "FV"
    out = tmp_path / "plan"
    r = CliRunner().invoke(main, ["plan", "--edk2", str(tree(ver)), "--dsc", "OvmfPkg/OvmfPkgX64.dsc",
                                  "-D", "SECURE_BOOT_ENABLE=TRUE", "--strategy", strategy, "-o", str(out),
                                  "--verify", "--before", str(stock / "OVMF_CODE.fd"), "--scratch", str(tmp_path)])
    assert r.exit_code == 0, r.output
    v = json.loads((out / "plan.json").read_text())["verification"]
    assert v["before"]["sites"] > 500 and v["after"]["sites"] == 0
    if shutil.which("qemu-system-x86_64"):
        # boots as far as the stock build does (the UEFI shell, or BDS's boot manager fallback where
        # the build has no shell boot option), and no string I/O executes on the way
        ends = []
        for img in (stock / "OVMF_CODE.fd", out / v["after"]["image"]):
            r = CliRunner().invoke(main, ["boot-check", "--format", "json", "--vars", str(stock / "OVMF_VARS.fd"),
                                          "--timeout", "300", str(img)])
            ends.append((r.exit_code, json.loads(r.output)))
        (stock_rc, stock_doc), (rc, doc) = ends
        assert stock_rc == 1 and stock_doc["executed"]
        assert rc == 0 and doc["executed"] == [], r.output[-2000:]
        assert doc["ended"] == stock_doc["ended"] and doc["ended"] in ("shell", "boot-manager")


def test_committed_series_regenerate_identically(tmp_path):
    """edk2-patches/ holds exactly what the planner writes for Debian's trees today."""
    base = ROOT / "edk2-patches"
    dirs = sorted(d for d in base.glob("debian-*/*") if d.is_dir())
    assert len(dirs) == 4
    for d in dirs:
        ver = d.parent.name.removeprefix("debian-")
        out = tmp_path / d.parent.name / d.name
        r = CliRunner().invoke(main, ["plan", "--edk2", str(tree(ver)), "--dsc", f"OvmfPkg/{d.name}.dsc",
                                      "-D", "SECURE_BOOT_ENABLE=TRUE", "-o", str(out)])
        assert r.exit_code == 0, r.output
        new = {p.name: p.read_bytes() for p in out.glob("*.patch")}
        old = {p.name: p.read_bytes() for p in d.glob("*.patch")}
        assert new == old, d
        committed = json.loads((d / "plan.json").read_text())
        assert committed["verification"]["after"]["sites"] == 0 < committed["verification"]["before"]["sites"]
