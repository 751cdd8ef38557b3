"""scan on Debian's packaged images and its command-line contract."""

import json

import capstone
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan import signatures as sigs
from ovmftool.scan.scanner import scan_image
from tests import fvbuild as B
from tests.conftest import CORPUS_IMAGES

IO = {"insb", "insw", "insd", "outsb", "outsw", "outsd"}


def _linear_sweep_sites(m):
    """Every string I/O a linear sweep of the executable sections reports (the naive baseline)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if m.image.bits == 64 else capstone.CS_MODE_32)
    md.skipdata = True
    mem = m.image.memory
    out = set()
    for s in m.image.sections:
        if s.executable:
            for a, _sz, mn, _op in md.disasm_lite(mem[s.rva : s.rva + s.virtual_size], s.rva):
                if mn.split()[-1] in IO:
                    out.add(a)
    return out


def test_debian_images_sites_are_exactly_the_fifo_routines(corpus_image):
    root = read_image(str(corpus_image))
    res = scan_image(str(corpus_image), root=root, jobs=2)
    assert res.findings, "Debian's RELEASE images still read fw_cfg with REP INSB"
    by_mod = {}
    for f in res.findings:
        by_mod.setdefault((f.guid, f.volume), []).append(f)
        assert f.function_source == "signature" and f.rep == "rep"
    mods = {(m.guid, m.volume): m for m in iter_modules(root)}
    naive_total = 0
    for key, m in mods.items():
        matches = sigs.find(
            m.image.memory, m.arch, [(s.rva, s.rva + s.virtual_size) for s in m.image.sections if s.executable]
        )
        expected = {mt.rva + off for mt in matches for off in mt.signature.sites}
        got = {f.rva for f in by_mod.get(key, [])}
        assert got == expected, m.name
        sweep = _linear_sweep_sites(m)
        assert expected <= sweep  # the sweep finds the real ones too, buried in false ones
        naive_total += len(sweep)
    # Each module that links the Sev instance carries all six routines.
    assert all(len(v) == 6 for v in by_mod.values())
    assert naive_total > 20 * len(res.findings)  # what a linear sweep would have reported


def test_fw_cfg_rep_insb_is_reachable_in_platform_pei(corpus_image):
    res = scan_image(str(corpus_image), jobs=2)
    pei = [f for f in res.findings if f.module == "PlatformPei" and f.mnemonic == "rep insb"]
    assert len(pei) == 1 and pei[0].reachable and pei[0].callers


def test_exit_codes_text_json_and_several_images(tmp_path):
    a = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
    b = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
    r = CliRunner().invoke(main, ["scan", a])
    assert r.exit_code == 1 and "summary:" in r.output and "rep insb" in r.output
    r = CliRunner().invoke(main, ["scan", "--format", "json", a, b])
    assert r.exit_code == 1
    docs = json.loads(r.output)
    assert [d["image"]["path"] for d in docs] == [a, b]
    for d in docs:
        for f in d["findings"]:
            assert f["guid"] == f["guid"].lower() and f["arch"] in ("X64", "IA32")
            assert isinstance(f["rva"], int) and f["bytes"].startswith("f3")
            assert f["fd_offset"] is None and f["volume"].startswith("FVMAIN_COMPACT/LZMA/")
    # deterministic and independent of --jobs
    r1 = CliRunner().invoke(main, ["scan", "--format", "json", "-j", "1", a])
    r2 = CliRunner().invoke(main, ["scan", "--format", "json", "-j", "2", a])
    assert r1.output == r2.output
    # a bad image among good ones: the good ones are reported, exit 2
    bad = tmp_path / "bad.fd"
    bad.write_bytes(b"\0" * 4096)
    r = CliRunner().invoke(main, ["scan", a, str(bad)])
    assert r.exit_code == 2 and "summary:" in r.output and "no firmware volume" in r.output
    assert f"{bad}\n  error: " in r.output and "total: 90 sites in 1 of 2 images; 1 error" in r.output


def test_scan_json_validates_against_schema():
    import jsonschema

    from tests.conftest import ROOT

    schema = json.loads((ROOT / "docs" / "schema" / "scan-1.json").read_text())
    r = CliRunner().invoke(
        main, ["scan", "--format", "json", str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])]
    )
    jsonschema.validate(json.loads(r.output), schema)


def test_clean_image_exits_zero():
    """Real modules without FIFO routines, in a volume of their own: nothing to report."""
    root = read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]))
    res = {f.guid for f in scan_image("x", root=root, jobs=1).findings}
    clean = [m for m in iter_modules(root) if m.guid not in res and m.arch == "X64"][:12]
    files = [B.ffs(m.guid, 0x07, B.sections(B.section(0x10, m.image.raw), B.ui(m.name))) for m in clean]
    img = B.fv(files, size=0x200000)
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "clean.fd")
        open(p, "wb").write(img)
        r = CliRunner().invoke(main, ["scan", p])
        assert r.exit_code == 0 and "summary: 0 sites in 0 of 12 modules" in r.output


def test_planted_bare_outsb_in_code_is_found():
    """A module whose entry code holds a bare OUTSB (6E) is reported; the same byte in a string is not."""
    root = read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]))
    m = next(m for m in iter_modules(root) if m.name == "CpuIo2Dxe")
    raw = bytearray(m.image.raw)
    off = m.image.rva_to_offset(m.image.entry_rva)
    # entry: outsb; then fall into the original first instruction bytes again is not safe, so
    # plant "outsb; ret" over the entry (the module is never run).
    raw[off : off + 2] = b"\x6e\xc3"
    f = B.ffs(m.guid, 0x07, B.sections(B.section(0x10, bytes(raw)), B.ui("Planted")))
    from ovmftool.model.parser import parse_flash

    r2 = parse_flash(B.fv([f], size=0x100000), "planted.fd")
    res = scan_image("planted.fd", root=r2, jobs=1)
    planted = [(x.rva, x.mnemonic, x.rep, x.function_source) for x in res.findings if x.signature is None]
    assert planted == [(m.image.entry_rva, "outsb", None, "analysis")]
    assert len(res.findings) == 7  # and the module's six FIFO routines, as before
