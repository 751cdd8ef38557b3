"""TE images, made from real PEIMs by EDK II's own GenFw, parse like the PE they came from."""

import subprocess

import pytest

from ovmftool.model.node import all_problems
from ovmftool.model.parser import parse_flash
from ovmftool.ops.modules import iter_modules
from ovmftool.scan.scanner import scan_image
from tests import fvbuild as B
from tests.conftest import CORPUS, build_dir

pytestmark = pytest.mark.build


def _genfw() -> str:
    tree = (
        subprocess.run(
            ["bash", str(CORPUS / "scripts" / "edk2-source.sh"), "2022.11"], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return f"{tree}/BaseTools/Source/C/bin/GenFw"


@pytest.mark.parametrize("name", ["PlatformPei", "PcdPeim"])
def test_te_from_genfw_matches_its_pe(tmp_path, name):
    build = build_dir("2022.11-X64-DEBUG")
    pe_path = build / "X64" / f"{name}.efi"
    te_path = tmp_path / f"{name}.te"
    subprocess.run([_genfw(), "-t", "-o", str(te_path), str(pe_path)], check=True, capture_output=True)
    pe, te = pe_path.read_bytes(), te_path.read_bytes()
    assert te[:2] == b"VZ"
    files = [
        B.ffs(f"11111111-0000-0000-0000-00000000000{i}", 0x06, B.sections(B.section(sec, body), B.ui(f"{name}{i}")))
        for i, (sec, body) in enumerate(((0x10, pe), (0x12, te)))
    ]
    root = parse_flash(B.fv(files, size=0x100000), "te.fd")
    assert all_problems(root) == []
    m_pe, m_te = list(iter_modules(root))
    assert (m_pe.image.format, m_te.image.format) == ("PE32+", "TE")
    a, b = m_pe.image, m_te.image
    assert b.machine == a.machine and b.entry_rva == a.entry_rva and b.image_base == a.image_base
    assert [(s.name, s.rva, s.virtual_size) for s in b.sections] == [
        (s.name, s.rva, s.virtual_size) for s in a.sections
    ]
    assert sorted(b.relocations) == sorted(a.relocations)
    for s in a.sections:
        n = min(s.virtual_size, s.raw_size)
        assert b.memory[s.rva : s.rva + n] == a.memory[s.rva : s.rva + n], s.name
        assert te[b.rva_to_offset(s.rva)] == pe[a.rva_to_offset(s.rva)]
    res = scan_image("te.fd", root=root, jobs=1)
    by = {}
    for f in res.findings:
        by.setdefault(f.module, []).append((f.rva, f.mnemonic, f.function))
    assert by.get(f"{name}0", []) == by.get(f"{name}1", [])
    if name == "PlatformPei":
        assert len(by[f"{name}1"]) == 6
        assert {f.fd_offset is not None for f in res.findings} == {True}  # uncompressed: file offsets known
        for f in res.findings:
            assert root.space.data[f.fd_offset : f.fd_offset + len(f.bytes) // 2].hex() == f.bytes
