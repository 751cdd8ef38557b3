"""The image model on Debian's packaged OVMF images."""

import json
import subprocess
import sys

from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.ffs import FfsFile
from ovmftool.model.node import all_problems, walk
from ovmftool.model.parser import read_image
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_code_blobs, iter_modules
from tests.conftest import CORPUS_IMAGES


def test_real_images_parse_without_damage(corpus_image):
    root = read_image(str(corpus_image))
    assert all_problems(root) == []
    names = [v.name for v in walk(root) if isinstance(v, Volume)]
    assert names == ["FVMAIN_COMPACT", "PEIFV", "DXEFV", "SECFV"]
    for f in walk(root):
        if isinstance(f, FfsFile):
            assert f.header_checksum_ok and f.state == "DATA_VALID"


def test_every_module_attributed(corpus_image):
    root = read_image(str(corpus_image))
    mods = list(iter_modules(root))
    assert len(mods) > 100
    for m in mods:
        assert m.name and m.guid == m.guid.lower()
        assert m.arch in ("IA32", "X64")
        assert m.image.entry_rva < m.image.size_of_image
        assert any(s.executable for s in m.image.sections)
        assert m.volume in ("SECFV", "FVMAIN_COMPACT/LZMA/PEIFV", "FVMAIN_COMPACT/LZMA/DXEFV")
    by_name = {m.name: m for m in mods}
    for core in ("SecMain", "PeiCore", "DxeCore", "PlatformPei", "CpuDxe"):
        assert core in by_name
    # Decompressed modules have no file offset; SEC is uncompressed and has one.
    assert by_name["DxeCore"].fd_offset is None
    assert by_name["SecMain"].fd_offset is not None
    assert by_name["DxeCore"].file_type == "DXE_CORE" and by_name["PeiCore"].file_type == "PEI_CORE"


def test_arch_layout_of_the_two_debian_flavours():
    two = list(iter_modules(read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]))))
    assert {m.arch for m in two} == {"X64"}
    four = list(iter_modules(read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]))))
    assert {m.arch for m in four if m.phase in ("SEC", "PEI")} == {"IA32"}
    assert {m.arch for m in four if m.phase == "DXE"} == {"X64"}


def test_sec_code_blob_is_the_reset_vector(corpus_image):
    root = read_image(str(corpus_image))
    blobs = list(iter_code_blobs(root))
    assert len(blobs) == 1
    b = blobs[0]
    assert b.role == "reset-vector" and b.mode == 16
    assert b.abs_offset + b.size == root.size  # ends the flash, mapped below 4 GiB
    assert b.load_address == (1 << 32) - b.size
    # The 16-byte entry at 0xFFFFFFF0 decodes in real mode and leaves by a jump (ResetVectorVtf0.asm).
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
    entry = b.data[b.entry_offset : b.entry_offset + 16]
    mnems = [i.mnemonic for i in md.disasm(entry, b.load_address + b.entry_offset)]
    assert "jmp" in mnems


def test_offsets_are_consistent(corpus_image):
    root = read_image(str(corpus_image))
    data = root.space.data
    for n in walk(root):
        # containment: every child lies inside its parent when they share a space
        if n.parent is not None and n.parent.space is n.space:
            assert n.parent.offset <= n.offset and n.end <= n.parent.end
        if n.abs_offset is not None:
            assert data[n.abs_offset : n.abs_offset + n.size] == n.data


def test_info_text_and_json(corpus_image):
    r = CliRunner().invoke(main, ["info", str(corpus_image)])
    assert r.exit_code == 0, r.output
    assert "volume DXEFV" in r.output and "DxeCore" in r.output and "no damage" in r.output
    r = CliRunner().invoke(main, ["info", "--format", "json", str(corpus_image)])
    doc = json.loads(r.output)
    assert doc["schema_version"] == "ovmftool.info/1"
    assert doc["problems"] == []
    assert len(doc["modules"]) == len(list(iter_modules(read_image(str(corpus_image)))))
    assert [t["name"] for t in doc["tree"] if t["kind"] == "volume"] == ["FVMAIN_COMPACT", "SECFV"]


def test_info_json_validates_against_schema(corpus_image):
    import jsonschema

    from tests.conftest import ROOT

    schema = json.loads((ROOT / "docs" / "schema" / "info-1.json").read_text())
    r = CliRunner().invoke(main, ["info", "--format", "json", str(corpus_image)])
    jsonschema.validate(json.loads(r.output), schema)


def test_extract_writes_modules_and_manifest(tmp_path, corpus_image):
    out = tmp_path / "x"
    r = CliRunner().invoke(main, ["extract", str(corpus_image), "-o", str(out)])
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    root = read_image(str(corpus_image))
    mods = list(iter_modules(root))
    assert len(man["modules"]) == len(mods)
    for entry, m in zip(man["modules"], mods):
        data = (out / entry["file"]).read_bytes()
        assert data == m.image.raw
        assert entry["file"] == f"{m.name}_{m.guid}.efi"
        assert data[:2] == b"MZ"
    # refuses to write into a non-empty directory, and leaves it untouched
    r = CliRunner().invoke(main, ["extract", str(corpus_image), "-o", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output


def test_console_script_and_module_entry_point(corpus_image):
    r = subprocess.run(
        [sys.executable, "-m", "ovmftool", "info", "--modules", str(corpus_image)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "DxeCore" in r.stdout
