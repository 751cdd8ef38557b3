"""The image model against OVMF built from source (the builds the suite makes): the build's own records."""

import re
from pathlib import Path

import pytest

from ovmftool.model.ffs import FfsFile
from ovmftool.model.node import all_problems, walk
from ovmftool.model.parser import read_image
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_modules

pytestmark = pytest.mark.build

_FFS = re.compile(r"/Ffs/([0-9A-Fa-f-]{36})([^/]*)/")


def _inf_files(inf: Path) -> set[tuple[str, str]]:
    out = set()
    for line in inf.read_text().splitlines():
        m = _FFS.search(line)
        if line.startswith("EFI_FILE_NAME") and m:
            out.add((m.group(1).lower(), m.group(2)))
    return out


def test_files_equal_the_fv_inf_lists(real_build):
    ovmf_build = real_build
    root = read_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"))
    assert all_problems(root) == []
    vols = {v.name: v for v in walk(root) if isinstance(v, Volume)}
    for inf in sorted((ovmf_build / "FV").glob("*.inf")):
        expected = _inf_files(inf)
        vol = vols[inf.stem]
        files = [f for f in vol.children if isinstance(f, FfsFile) and not f.is_pad]
        got_guids = {f.guid for f in files}
        assert got_guids == {g for g, _ in expected}, inf.name
        names = dict(expected)
        for f in files:
            if f.ui_name is not None:  # files without a UI section carry the FDF name only in the build
                assert f.ui_name == names[f.guid], (inf.name, f.guid)


def test_dxe_modules_byte_identical_to_build_outputs(real_build):
    ovmf_build = real_build
    root = read_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"))
    checked = 0
    for m in iter_modules(root):
        if m.phase != "DXE":
            continue
        # modules built twice under different FILE_GUIDs are kept as NAME_GUID.efi
        cands = [p for p in (ovmf_build / m.arch).glob(f"{m.name}_*.efi") if p.stem.lower().endswith(m.guid)]
        built = cands[0] if cands else ovmf_build / m.arch / f"{m.name}.efi"
        assert built.is_file(), built
        assert m.image.raw == built.read_bytes(), m.name
        checked += 1
    assert checked > 80


def test_debug_path_names_build_dir_and_inf(real_build):
    ovmf_build = real_build
    root = read_image(str(ovmf_build / "FV" / "OVMF_CODE.fd"))
    mods = {m.name: m for m in iter_modules(root)}
    if "DEBUG" not in ovmf_build.name:
        return
    inf, base = mods["DxeCore"].build_info
    assert inf == "MdeModulePkg/Core/Dxe/DxeMain" and base == "DxeCore"
    assert mods["PlatformPei"].build_info[0] == "OvmfPkg/PlatformPei/PlatformPei"
