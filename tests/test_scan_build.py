"""scan against the ground truth of OVMF builds: the builds the corpus keeps (firmware and the truth
from their .debug files) and, where a build directory is needed (symbols, maps), builds from source."""

import json

import capstone
import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan import signatures as sigs
from ovmftool.scan.scanner import exec_ranges, scan_image, tree_era
from tests.conftest import stored
from tests.truth import debug_file, fifo_sites

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


def test_precision_and_recall_without_symbols(stock_build):
    truth = stock_build.sites()
    res = scan_image(str(stock_build.code), jobs=2)
    got = {(f.guid, f.volume, f.rva): f for f in res.findings}
    assert set(got) == set(truth)  # precision and recall 1.0
    assert len(truth) >= 60  # every build here links the Sev FIFO routines into many modules (RELEASE: fw_cfg)
    for k, f in got.items():
        routine, mnem, _ = truth[k]
        assert f.mnemonic == mnem
        assert f.function_source == "signature"
        assert f.function == routine, (f.module, f.rva)
        assert f.signature.library == "BaseIoLibIntrinsicSev"


def test_with_symbols_names_equal_symbol_table(real_build):
    root, truth = _truth(real_build)
    res = scan_image(str(real_build / "FV" / "OVMF_CODE.fd"), symbols_dir=str(real_build), root=root, jobs=2)
    assert {(f.guid, f.volume, f.rva) for f in res.findings} == set(truth)
    for f in res.findings:
        assert f.function_source == "symbols"
        assert f.function == truth[(f.guid, f.volume, f.rva)][0]


def test_debug_builds_write_debug_output_with_rep_outsb(stock_build):
    res = scan_image(str(stock_build.code), jobs=2)
    outsb = [f for f in res.findings if f.mnemonic == "rep outsb"]
    reach = [f for f in outsb if f.reachable]
    if "DEBUG" in stock_build.key:
        # DEBUG() goes through SevIoWriteFifo8 (port 0x402): reachable from many entry points
        assert len(reach) > 20
    insb = [f for f in res.findings if f.mnemonic == "rep insb" and f.callers]
    assert insb  # fw_cfg reads have direct callers in every build


def test_scan_json_cli_on_build(stock_build, tmp_path):
    out = tmp_path / "scan.json"
    r = CliRunner().invoke(main, ["scan", "--format", "json", "-o", str(out), str(stock_build.code)])
    assert r.exit_code == 1, r.output
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == "ovmftool.scan/1"
    assert doc["summary"]["sites"] == len(doc["findings"]) >= 60


def test_map_files_name_functions_when_no_debug_files(real_build, tmp_path):
    import shutil

    (tmp_path / "X64").mkdir()
    for p in (real_build / "X64").glob("*.map"):
        shutil.copy(p, tmp_path / "X64" / p.name)
    root, truth = _truth(real_build)
    res = scan_image(str(real_build / "FV" / "OVMF_CODE.fd"), symbols_dir=str(tmp_path), root=root, jobs=2)
    named = [f for f in res.findings if f.function_source == "symbols"]
    # The FIFO routines are global, so maps list them; a map that belongs to another build of a
    # module (the build keeps one map per name) is refused and the signature names the routine.
    assert len(named) >= 0.9 * len(truth)
    for f in res.findings:
        assert f.function == truth[(f.guid, f.volume, f.rva)][0]


def test_symbols_dir_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["scan", "--symbols", str(tmp_path), "x.fd"])
    assert r.exit_code == 2 and "Traceback" not in r.output


# --- names without symbols, on every build (Debian's trees, their variants, Oxide's fork) -------


def _is_oxide(build) -> bool:
    """A tree before TDX (Oxide's 202105 fork, Debian's 2020.11): the X64 Sev routines are named
    IoReadFifo8..., and no code has TDCALL."""
    return build.key.startswith(("oxide-", "2020.11-"))


def test_names_without_symbols_are_the_symbol_tables(any_build):
    """Without symbols, every site's function is the name the build's own symbol table gives the
    function holding it (exact; the X64 Sev routines are SevIoReadFifo8... in 2022.11 and 2025.02,
    IoReadFifo8... in Oxide's 202105 fork, the same code), and the sites are the truth's."""
    truth = any_build.sites()
    res = scan_image(str(any_build.code), jobs=2)
    findings = [f for f in res.findings if f.module != "ResetVector"]  # raw code: no symbol file
    assert {(f.guid, f.volume, f.rva) for f in findings} == set(truth)
    for f in findings:
        want = truth[(f.guid, f.volume, f.rva)][2]
        assert f.function == want, (f.module, hex(f.rva), f.function, want)
        assert f.function_source == "signature"
        if f.signature.aliases:  # the routine's name in the other era is kept
            assert f.signature.routine == f.function and f.function not in f.signature.aliases
    if _is_oxide(any_build):
        assert {f.function for f in findings} == {f"Io{d}Fifo{w}" for d in ("Read", "Write") for w in (8, 16, 32)}
    if any_build.meta.get("nasm", "").startswith("NASM version 3") or "nasm3" in any_build.key:
        # NASM 3 writes the REP prefix after the operand-size prefix: the same routines, named as
        # their era names them (2020.11: IoReadFifo8..., 2025.02: SevIoReadFifo8...)
        assert {f.bytes for f in findings if f.width == 16} == {"66f36d", "66f36f"}
        tdx = any_build.key.startswith("2025.")
        assert all(
            f.signature.aliases == ([f.function.removeprefix("Sev")] if tdx else ["Sev" + f.function]) for f in findings
        )


def test_tdcall_tells_the_tree_era(any_build):
    """The evidence that names the routines: wherever TDCALL's bytes occur in code they are the
    instruction (the code of the function holding them decodes up to them exactly: never data
    nor the middle of another instruction), and they are where the .debug files' .text has them;
    some X64 module of every 2022.11/2025.02 build has them, its DXE core among them (also where
    LTO folded the TDX I/O paths away: OvmfPkgIa32X64), Oxide's 202105 fork has them nowhere, and
    each build has its X64 DXE core."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    root = read_image(str(any_build.code))
    modules = list(iter_modules(root))
    truth = {(e["guid"], e["volume"]): {t["rva"]: t for t in e["tdcall"]} for e in any_build.truth["modules"]}
    with_tdcall = set()
    for m in modules:
        img = m.image
        ranges = exec_ranges(img)
        hits = [p for lo, hi in ranges for p in _find_all(img.memory, sigs.TDCALL, lo, hi)]
        want = truth.get((m.guid, m.volume), {})
        assert sorted(hits) == sorted(want), (m.name, [hex(h) for h in hits])
        if not hits:
            continue
        assert m.arch == "X64", m.name
        for p in hits:
            start = want[p]["function_rva"]
            assert start is not None, (m.name, hex(p))
            assert p in _boundaries(md, img.memory, start, p + 1), (m.name, want[p]["function"], hex(p))
        with_tdcall.add(m.name)
    assert any(m.file_type == "DXE_CORE" and m.arch == "X64" for m in modules)
    if _is_oxide(any_build):
        assert not with_tdcall
        assert tree_era(modules) == sigs.PRE_TDX
    else:
        assert "DxeCore" in with_tdcall
        assert tree_era(modules) == sigs.TDX


def _boundaries(md, mem, start, end) -> set[int]:
    """Instruction starts of a linear decode from `start` up to `end`, TDCALL taken as the
    4-byte instruction it is (capstone 5 does not decode it)."""
    out, pos = set(), start
    while pos < end:
        if mem[pos : pos + 4] == sigs.TDCALL:
            size = 4
        else:
            insn = next(md.disasm_lite(mem[pos : pos + 15], pos, 1), None)
            if insn is None:
                break
            size = insn[1]
        out.add(pos)
        pos += size
    return out


def _find_all(mem, needle, lo, hi):
    p = mem.find(needle, lo, hi)
    while p >= 0:
        yield p
        p = mem.find(needle, p + 1, hi)


def test_oxide_fork_sites_and_names_in_every_format(tmp_path):
    """Oxide's fork (edk2-stable202105): its 660 sites in 110 modules (precision and recall 1.0
    against the .debug files), named IoReadFifo8... as its symbol table does, with the later trees'
    SevIoReadFifo8... as alias; text, JSON and SARIF give the same names, and a note says why."""
    build = stored("oxide-202105-X64-DEBUG")
    truth = build.sites()
    assert len(truth) == 660
    fd = str(build.full(tmp_path))
    runner = CliRunner()
    out = {}
    for fmt in ("json", "sarif", "text"):
        r = runner.invoke(main, ["scan", "--format", fmt, "-o", str(tmp_path / fmt), fd])
        assert r.exit_code == 1, r.output
        out[fmt] = (tmp_path / fmt).read_text()
    doc = json.loads(out["json"])
    found = {(f["guid"], f["volume"], f["rva"]): f for f in doc["findings"]}
    assert len(found) == 660 and len({f["module"] for f in doc["findings"]}) == 110
    assert set(found) == set(truth)  # OVMF.fd holds OVMF_CODE.fd's volumes: precision and recall 1.0
    for k, f in found.items():
        assert f["function"] == truth[k][0] and f["mnemonic"] == truth[k][1]
        assert f["signature"]["routine"] == f["function"] and f["signature"]["aliases"] == ["Sev" + f["function"]]
    assert any("without TDX support" in n for n in doc["notes"])
    sarif = json.loads(out["sarif"])["runs"][0]["results"]
    assert [
        (x["properties"]["rva"], x["properties"]["function"], x["locations"][0]["logicalLocations"][-1]["name"])
        for x in sarif
    ] == [(f["rva"], f["function"], f["function"]) for f in doc["findings"]]
    lines = [ln for ln in out["text"].splitlines() if ln.startswith("    rva 0x")]
    assert len(lines) == len(doc["findings"])
    for ln, f in zip(lines, doc["findings"]):
        assert f" {f['function']} [signature] " in ln, ln
    assert "note: routines named as in EDK II trees without TDX support" in out["text"]
