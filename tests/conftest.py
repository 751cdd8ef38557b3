"""Shared fixtures: the corpus images and OVMF builds from Debian's edk2 source.

Builds come from corpus/scripts/build-ovmf.sh, which caches them under
${OVMFTOOL_CACHE:-~/.cache/ovmftool}/builds; the first run on a machine builds (minutes), later
runs reuse. Set OVMFTOOL_SKIP_BUILDS=1 to skip the tests that need a build (they are reported
as skipped, never as passed).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
CORPUS_IMAGES = {e["path"]: CORPUS / e["path"] for e in MANIFEST["images"]}
CODE_IMAGES = {k: v for k, v in CORPUS_IMAGES.items() if "_CODE" in k}  # firmware, not variable stores

# (edk2 version, DSC, target, defines): the builds tests use. Debian's Shell patch needs secure boot.
BUILDS = {
    "2022.11-X64-DEBUG": ("2022.11", "OvmfPkg/OvmfPkgX64.dsc", "DEBUG", ["SECURE_BOOT_ENABLE=TRUE"]),
    "2022.11-X64-RELEASE": ("2022.11", "OvmfPkg/OvmfPkgX64.dsc", "RELEASE", ["SECURE_BOOT_ENABLE=TRUE"]),
    "2025.02-X64-DEBUG": ("2025.02", "OvmfPkg/OvmfPkgX64.dsc", "DEBUG", ["SECURE_BOOT_ENABLE=TRUE"]),
    "2022.11-Ia32X64-DEBUG": ("2022.11", "OvmfPkg/OvmfPkgIa32X64.dsc", "DEBUG", ["SECURE_BOOT_ENABLE=TRUE"]),
    "2025.02-Ia32X64-RELEASE": ("2025.02", "OvmfPkg/OvmfPkgIa32X64.dsc", "RELEASE", ["SECURE_BOOT_ENABLE=TRUE"]),
}
# Builds with a patch applied to a copy of the tree (tests/data/*.patch).
VARIANT_BUILDS = {
    # 2025.02 switched to the non-Sev IoLib, whose FIFO routines are C loops (IoLibFifo.c); the
    # INF fix supplies CcProbeLib, which PlatformInitLib uses but only got through the Sev IoLib.
    "2025.02-X64-DEBUG-cloop": ("2025.02", "OvmfPkg/OvmfPkgX64.dsc", "DEBUG", ["SECURE_BOOT_ENABLE=TRUE"],
                                ["edk2-2025.02-c-loop-fifo.patch"]),
    # 2022.11 switched to the non-Sev IoLib: it builds IoFifo.nasm, pure REP string I/O.
    "2022.11-X64-DEBUG-nonsev": ("2022.11", "OvmfPkg/OvmfPkgX64.dsc", "DEBUG", ["SECURE_BOOT_ENABLE=TRUE"],
                                 ["edk2-2022.11-non-sev-iolib.patch"]),
    # The same for OvmfPkgIa32X64: IA32 PEI modules carry Ia32/IoFifo.nasm (the patcher grows them).
    "2022.11-Ia32X64-RELEASE-nonsev": ("2022.11", "OvmfPkg/OvmfPkgIa32X64.dsc", "RELEASE", ["SECURE_BOOT_ENABLE=TRUE"],
                                       ["edk2-2022.11-ia32x64-non-sev-iolib.patch"]),
}
# Builds of other EDK II trees: Oxide's fork (propolis' firmware), based on edk2-stable202105. Its
# X64 Sev FIFO routines are the same code as Debian's, exported under their pre-TDX names.
# Built as the fork's illumos/build.sh builds it (DEBUG), and RELEASE.
OXIDE_DEFS = ["FD_SIZE_2MB", "MPT_SCSI_ENABLE=FALSE"]
OXIDE_SERIES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edk2-patches" / "oxide-edk2-stable202105" / "OvmfPkgX64").glob("0*.patch"))
FORK_BUILDS = {
    "oxide-202105-X64-DEBUG": ("oxide-202105", "OvmfPkg/OvmfPkgX64.dsc", "DEBUG", OXIDE_DEFS),
    "oxide-202105-X64-RELEASE": ("oxide-202105", "OvmfPkg/OvmfPkgX64.dsc", "RELEASE", OXIDE_DEFS),
}
# The committed series for the fork applied to its source (not a fixture of every-build tests).
SERIES_BUILDS = {
    "oxide-202105-X64-DEBUG-series": ("oxide-202105", "OvmfPkg/OvmfPkgX64.dsc", "DEBUG", OXIDE_DEFS, OXIDE_SERIES),
}
_built: dict[str, Path] = {}


def build_dir(key: str) -> Path:
    """Directory of a cached OVMF build (building it first if needed)."""
    if key not in _built:
        ver, dsc, target, defs, *rest = {**BUILDS, **VARIANT_BUILDS, **FORK_BUILDS, **SERIES_BUILDS}[key]
        # patches: tests/data/NAME, or a path from the project root
        patches = [ROOT / p if "/" in p else ROOT / "tests" / "data" / p for p in (rest[0] if rest else [])]
        _built[key] = build_with(ver, dsc, target, defs, patches)
    return _built[key]


def build_with(ver: str, dsc: str, target: str, defs: list[str], patches: list[Path]) -> Path:
    """corpus/scripts/build-ovmf.sh: the build of that tree with those patches (cached, keyed by the
    patches' contents, so a series that is written again the same way is built once)."""
    if os.environ.get("OVMFTOOL_SKIP_BUILDS"):
        pytest.skip("OVMFTOOL_SKIP_BUILDS is set")
    cmd = ["bash", str(CORPUS / "scripts" / "build-ovmf.sh"), ver, dsc, target]
    for d in defs:
        cmd += ["-D", d]
    for p in patches:
        cmd += ["-p", str(p)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"build {ver} {dsc} {target} failed: {res.stderr[-2000:]}")
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.fixture(params=sorted(CODE_IMAGES), ids=lambda p: p.split("/", 1)[1])
def corpus_image(request) -> Path:
    """Each real firmware (code) image in corpus/ in turn."""
    return CODE_IMAGES[request.param]


@pytest.fixture(params=sorted(BUILDS))
def ovmf_build(request) -> Path:
    """Each OVMF build from Debian's edk2 source in turn."""
    return build_dir(request.param)


@pytest.fixture(params=sorted(BUILDS) + sorted(VARIANT_BUILDS) + sorted(FORK_BUILDS))
def any_build(request) -> Path:
    """Every OVMF build of the test suite in turn: Debian's trees, their variants, Oxide's fork."""
    return build_dir(request.param)


@pytest.fixture(autouse=True)
def _result_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own, empty scan result cache (`scan.cache`, under XDG_CACHE_HOME,
    inherited by the commands it runs): the user's cache is never touched, and no test depends
    on what another one cached (nor on code it monkeypatched). OVMF builds are not under it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("OVMFTOOL_NO_CACHE", raising=False)
