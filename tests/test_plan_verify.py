"""End to end: plan, build with the series, scan: zero sites where the stock build has hundreds;
the patched firmware boots to the UEFI shell under QEMU like the stock one."""

import json
import shutil

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from tests.conftest import ROOT, store_builds, stored
from tests.test_plan import tree

pytestmark = [pytest.mark.build, pytest.mark.slow]

STOCK = {"2022.11": "2022.11-X64-DEBUG", "2025.02": "2025.02-X64-DEBUG"}
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 from .ci/run")


def _boot(image, vars_file):
    r = CliRunner().invoke(
        main, ["boot-check", "--format", "json", "--vars", str(vars_file), "--timeout", "300", str(image)]
    )
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.output)


@needs_qemu
def test_plan_verify_builds_scans_and_boots(tmp_path):
    """`plan --verify` end to end (its own scratch build, not a cached one): 0 sites after, the
    boot of the patched build reaches the shell with none executed, all recorded in plan.json
    and SUMMARY.md; the stock build boots as far and does execute string I/O."""
    stock = stored(STOCK["2022.11"]).fv
    out = tmp_path / "plan"
    r = CliRunner().invoke(
        main,
        [
            "plan",
            "--edk2",
            str(tree("2022.11")),
            "--dsc",
            "OvmfPkg/OvmfPkgX64.dsc",
            "-D",
            "SECURE_BOOT_ENABLE=TRUE",
            "-o",
            str(out),
            "--verify",
            "--before",
            str(stock / "OVMF_CODE.fd"),
            "--scratch",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output[-3000:]
    v = json.loads((out / "plan.json").read_text())["verification"]
    assert v["before"]["sites"] > 500 and v["after"]["sites"] == 0
    assert v["boot"]["finished"] and v["boot"]["executed"] == 0 and v["boot"]["verdict"] == "shell"
    assert "0 string I/O instructions executed" in (out / "SUMMARY.md").read_text()
    assert [p for p in tmp_path.glob("edk2-*") if p.is_dir()] == []  # scratch copies removed
    rc, doc = _boot(stock / "OVMF_CODE.fd", stock / "OVMF_VARS.fd")
    assert rc == 1 and doc["executed"] and doc["verdict"] == v["boot"]["verdict"]


@needs_qemu
@pytest.mark.parametrize("ver,strategy", [("2022.11", "dsc-inf"), ("2025.02", "unroll"), ("2025.02", "dsc-inf")])
def test_series_build_leaves_no_site_and_boots(tmp_path, ver, strategy):
    """Each strategy's series on each tree (2022.11's unroll is the series `plan --verify` builds
    above): the build of it the corpus keeps was made from the series `plan` writes today (the
    patches' sha256 are its provenance); it has 0 sites, and it boots as far as the stock build
    does (the UEFI shell, or the boot manager) with no string I/O executed."""
    out = tmp_path / "plan"
    r = CliRunner().invoke(
        main,
        [
            "plan",
            "--edk2",
            str(tree(ver)),
            "--dsc",
            "OvmfPkg/OvmfPkgX64.dsc",
            "-D",
            "SECURE_BOOT_ENABLE=TRUE",
            "--strategy",
            strategy,
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    key = f"{ver}-X64-DEBUG-{strategy}"
    b = stored(key)
    assert [(p["name"], p["sha256"]) for p in b.meta["patches"]] == [
        (p.name, store_builds.sha256(p)) for p in sorted(out.glob("0*.patch"))
    ], f"plan writes another series now: store its build again (python -m corpus.scripts.store_builds {key})"
    r = CliRunner().invoke(main, ["scan", "--format", "json", str(b.code)])
    assert r.exit_code == 0 and json.loads(r.output)["findings"] == [], r.output[-2000:]
    rc, doc = _boot(b.code, b.vars)
    assert rc == 0 and doc["executed"] == [] and doc["verdict"] == _stock_verdict(ver)


_STOCK_VERDICT: dict[str, str] = {}


def _stock_verdict(ver: str) -> str:
    """How far the stock build boots: the UEFI shell, or BDS's boot manager fallback where the
    build has no shell boot option (2025.02 with these options); and it executes string I/O."""
    if ver not in _STOCK_VERDICT:
        stock = stored(STOCK[ver]).fv
        rc, doc = _boot(stock / "OVMF_CODE.fd", stock / "OVMF_VARS.fd")
        assert rc == 1 and doc["executed"] and doc["verdict"] in ("shell", "boot-manager")
        _STOCK_VERDICT[ver] = doc["verdict"]
    return _STOCK_VERDICT[ver]


def test_committed_series_regenerate_identically(tmp_path):
    """edk2-patches/ holds exactly what the planner writes for Debian's trees today."""
    base = ROOT / "edk2-patches"
    dirs = sorted(d for d in base.glob("debian-*/*") if d.is_dir())
    assert len(dirs) == 4
    for d in dirs:
        ver = d.parent.name.removeprefix("debian-")
        out = tmp_path / d.parent.name / d.name
        r = CliRunner().invoke(
            main,
            [
                "plan",
                "--edk2",
                str(tree(ver)),
                "--dsc",
                f"OvmfPkg/{d.name}.dsc",
                "-D",
                "SECURE_BOOT_ENABLE=TRUE",
                "-o",
                str(out),
            ],
        )
        assert r.exit_code == 0, r.output
        new = {p.name: p.read_bytes() for p in out.glob("*.patch")}
        old = {p.name: p.read_bytes() for p in d.glob("*.patch")}
        assert new == old, d
        committed = json.loads((d / "plan.json").read_text())
        assert committed["verification"]["after"]["sites"] == 0 < committed["verification"]["before"]["sites"]
