"""One module analysis shared by every command (`scan.modulecode`): in one process, a module of an
image is walked once, whether the scan, the patcher's detours or boot-check's `locate` asks."""

import hashlib
from collections import Counter

import pytest

from ovmftool.boot.locate import locate
from ovmftool.model.parser import read_image
from ovmftool.ops.assemble import Edit, assemble
from ovmftool.ops.modules import iter_modules
from ovmftool.patch.patcher import patch
from ovmftool.scan import modulecode
from ovmftool.scan.scanner import ModuleKey, function_label, module_code, scan_checked
from tests.conftest import CORPUS_IMAGES, stored

DEB_4M = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]


@pytest.fixture
def walks(monkeypatch):
    """Each code walk's module bytes (by digest; the reset vector's 16-bit code apart) -> how many
    times they were walked."""
    seen: Counter = Counter()
    real = modulecode.discover

    def counting(mem, bits, *args, **kw):
        seen[hashlib.sha256(bytes(mem)).hexdigest() if bits != 16 else "reset vector"] += 1
        return real(mem, bits, *args, **kw)

    monkeypatch.setattr(modulecode, "discover", counting)
    monkeypatch.setenv("OVMFTOOL_NO_CACHE", "1")  # every module is analysed, none read from the cache
    return seen


def test_patch_walks_each_module_once(walks):
    """Detours need every module's whole code map; the scan before them made it: one walk each
    (the modules the patch rewrote are new bytes, walked once more to prove them clean; the
    reset vector is walked in the input and in the patched image)."""
    root = read_image(str(DEB_4M))
    res = patch(str(DEB_4M), root, jobs=1, detour_all=True)
    assert res.output is not None and not res.refusals
    mods = list(iter_modules(root))
    mems = {hashlib.sha256(bytes(m.image.memory)).hexdigest() for m in mods}
    assert walks.pop("reset vector") == 2
    assert walks and max(walks.values()) == 1, walks.most_common(3)
    assert mems <= set(walks)  # every module of the input was walked (by the scan), once
    assert len(walks) > len(mems)  # the rewritten modules' new bytes were walked too


def test_boot_locate_names_with_the_scans_walk(walks, tmp_path):
    """`locate` (where a boot stopped) names the function with the map the scan made: no walk,
    and the same name the scan gives a site's function."""
    root = read_image(str(DEB_4M))
    res = scan_checked(str(DEB_4M), None, jobs=1, root=root)
    before = sum(walks.values())
    mods = {ModuleKey.of(m): m for m in iter_modules(root)}
    checked = 0
    for f in res.findings:
        m = mods.get(ModuleKey.of(f))
        if m is None or m.phase not in ("SEC", "PEI"):
            continue  # locate maps an XIP module's address without a debug log
        where = locate(m.image.image_base + f.rva, root, tmp_path / "none.log")
        assert where["module"] == m.name and where["rva"] == f.rva and where["mapped_by"] == "xip"
        assert where["function"] == f.function
        checked += 1
    assert checked >= 4
    assert sum(walks.values()) == before


def test_function_at_agrees_with_the_scan_on_unnamed_functions(walks, tmp_path):
    """A routine no signature names (the non-Sev 2022.11 build with SecMain's IoReadFifo8 changed,
    as tests/test_detour.py makes it): the scan names its site's function `sub_…`, and boot-check's
    `locate` of that address names it the same (one rule, `function_label`), without a walk."""
    b = stored("2022.11-X64-DEBUG-nonsev")
    root = read_image(str(b.code))
    m = next(m for m in iter_modules(root) if m.name == "SecMain")
    off = m.image.rva_to_offset(0x77A0)
    assert m.image.data[off : off + 13].hex() == "fc4887ca4987f8f36c4c89c7c3"  # IoFifo.nasm's IoReadFifo8
    out, _ = assemble(root, [Edit(m.image, off, b"\xfc", b"\x90")])
    p = tmp_path / "OVMF_CODE.fd"
    p.write_bytes(out)
    root = read_image(str(p))
    res = scan_checked(str(p), None, jobs=1, root=root)
    before = sum(walks.values())
    f = next(f for f in res.findings if f.module == "SecMain" and f.rva == 0x77A7)
    assert (f.function, f.function_source) == (function_label(0x77A1), "analysis")
    sec = next(m for m in iter_modules(root) if m.name == "SecMain")
    assert module_code(sec).function_at(f.rva) == f.function
    where = locate(sec.image.image_base + f.rva, root, tmp_path / "none.log")
    assert (where["module"], where["function"], where["mapped_by"]) == ("SecMain", "sub_77a1", "xip")
    assert sum(walks.values()) == before
