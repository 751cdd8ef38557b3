"""Differential parsing (tools/differential.py, issue #23): ovmftool's model against UEFIExtract
(UEFITool NE, Debian's uefitool-cli) and uefi-firmware-parser, on every corpus image and every
stored build: the same volumes, files, sections, modules, free space and gaps, at the same places
with the same fields (CRC32 of every item's bytes included, so decoded data is compared too).

Every difference must be explained by a named rule of the tool (a known, documented way the
parsers differ); each rule is shown firing on a real image, exactly where it should, and not on
a near miss. Without UEFIExtract the tests that need it are skipped (never passed)."""

import shutil

import pytest

from tests.conftest import CORPUS
from tools import differential as D

IMAGES = D.default_images()
CODE_4M = str(CORPUS / "images/debian-2022.11/OVMF_CODE_4M.fd")
VARS_4M = str(CORPUS / "images/debian-2022.11/OVMF_VARS_4M.fd")
_results: dict[str, D.Result] = {}


@pytest.fixture
def uefiextract():
    if shutil.which(D.UEFIEXTRACT) is None:
        pytest.skip("UEFIExtract not installed (apt-get install uefitool-cli)")


def result(path: str) -> D.Result:
    """The comparison of one image, made once per session (the sweep and the rule tests share it)."""
    if path not in _results:
        _results[path] = D.run_image(path)
    return _results[path]


def _id(path: str) -> str:
    return D.short(path)


def test_the_sweep_covers_every_corpus_image_and_stored_build():
    listed = {D.short(p) for p in IMAGES}
    assert "images/debian-2026.08/QEMU_EFI.fd" in listed and "images/debian-2022.11/OVMF_VARS.fd" in listed
    assert "builds/2025.02-CloudHv-DEBUG/CLOUDHV.fd" in listed  # build.json's "firmware"
    assert "builds/2025.02-Bhyve-DEBUG/BHYVE_VARS.fd" in listed  # and "vars"
    builds = sorted(p for p in (CORPUS / "builds").iterdir() if (p / "build.json").is_file())
    assert {D.short(p).split("/")[1] for p in IMAGES if D.short(p).startswith("builds/")} == {b.name for b in builds}


@pytest.mark.slow
@pytest.mark.parametrize("path", IMAGES, ids=_id)
def test_no_unexplained_difference(uefiextract, path):
    r = result(path)
    assert [d.describe() for d in r.unexplained] == []
    # the parsers found something to compare: every volume of ovmftool's matched in both others
    for pair in r.pairs:
        assert pair.matched >= r.counts[D.OVMFTOOL]["volume"] > 0, pair.other
    assert r.counts[D.OVMFTOOL]["module"] == r.counts[D.UEFITOOL]["module"]


@pytest.mark.slow
def test_every_field_is_compared_somewhere(uefiextract):
    """No compared field is vacuous: each is seen on both sides of some match over the corpus."""
    seen: dict[str, set] = {o: set() for o in D.OTHERS}
    for path in IMAGES:
        for pair in result(path).pairs:
            seen[pair.other] |= set(pair.compared)
    common = {"size", "type", "guid", "crc32", "name_guid", "compression", "decoded_size"}
    module = {"format", "machine", "entry", "image_base", "sections", "subsystem"}
    assert seen[D.UEFITOOL] == common | module | {"erased"}
    assert seen[D.UFP] == common


# ---------------------------------------------------------------- each rule on a real case

# rule -> (image, places of the differences it explains there)
RULE_CASES = {
    "EXT_HEADER_PAD": (CODE_4M, ["0x48", "0x348048", "0x90>+0xC8", "0x90>+0xE00D8"]),
    "NVRAM_STORE_FREE_SPACE": (VARS_4M, ["0x64", "0x42000"]),
}


def test_every_rule_has_a_real_case():
    assert sorted(RULE_CASES) == sorted(r.name for r in D.RULES)


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule_fires_on_its_real_case(uefiextract, name):
    path, places = RULE_CASES[name]
    r = result(path)
    assert sorted(d.place for d in r.differences if d.rule == name) == sorted(places)
    assert r.unexplained == []


def test_ext_header_pad_explains_only_the_pad_holding_the_extended_header(uefiextract, tmp_path):
    """Moved off its pad file (ExtHeaderOffset pointing elsewhere), the pad is a difference again;
    and a pad file only ovmftool has that is not a volume's first one is one too."""
    ours, _ = D.ovmftool_items(CODE_4M)
    theirs, _ = D.uefiextract_items(CODE_4M, tmp_path)
    vol = next(it for it in ours if it.kind == "volume" and it.space == () and it.offset == 0)
    vol.extra["ext_header"] = 0x1000  # the extended header elsewhere: the pad at 0x48 holds it no more
    pair = D.compare(D.UEFITOOL, ours, theirs)
    D.classify(pair)
    left = [d.place for d in pair.differences if d.rule is None]
    assert left == ["0x48"]
    # a pad file UEFIExtract lists (not the first of its volume) dropped from UEFIExtract's side
    other_pad = next(it for it in theirs if it.kind == "file" and it.type == 0xF0)
    pair = D.compare(D.UEFITOOL, ours, [it for it in theirs if it is not other_pad])
    D.classify(pair)
    assert D.where(other_pad.space, other_pad.offset) in [d.place for d in pair.differences if d.rule is None]


def test_nvram_free_space_explains_only_free_space_in_a_variable_store(uefiextract, tmp_path):
    """Free space UEFIExtract has and ovmftool lacks in a firmware (FFS) volume is a difference."""
    ours, _ = D.ovmftool_items(CODE_4M)
    theirs, _ = D.uefiextract_items(CODE_4M, tmp_path)
    free = next(it for it in ours if it.kind == "free" and it.space == ())
    pair = D.compare(D.UEFITOOL, [it for it in ours if it is not free], theirs)
    D.classify(pair)
    assert D.where(free.space, free.offset) in [d.place for d in pair.differences if d.rule is None]


# ---------------------------------------------------------------- the comparison is not vacuous


def test_a_changed_parse_is_an_unexplained_difference():
    """ovmftool's items altered (a file in decoded data dropped, a section's bytes changed): the
    comparison with uefi_firmware (no UEFIExtract needed) reports each, and no rule explains them."""
    ours, _ = D.ovmftool_items(CODE_4M)
    theirs, _ = D.uefi_firmware_items(CODE_4M)
    clean = D.compare(D.UFP, ours, theirs)
    D.classify(clean)
    assert clean.differences == [] and clean.matched == len(theirs)
    dropped = [it for it in ours if it.kind == "file" and it.space and it.type != 0xF0][10]
    changed = [it for it in ours if it.kind == "section" and it.space][50]
    changed.fields["crc32"] ^= 1
    pair = D.compare(D.UFP, [it for it in ours if it is not dropped], theirs)
    D.classify(pair)
    got = {(d.place, d.kind, d.field) for d in pair.differences if d.rule is None}
    assert got == {
        (D.where(dropped.space, dropped.offset), "file", None),
        (D.where(changed.space, changed.offset), "section", "crc32"),
    }


def test_the_script_exits_1_on_an_unexplained_difference(uefiextract, monkeypatch, capsys):
    assert D.main(["-q", VARS_4M]) == 0
    out = capsys.readouterr().out
    assert "| images/debian-2022.11/OVMF_VARS_4M.fd | 1/1/1 |" in out and "unexplained: 0" in out
    monkeypatch.setattr(D, "RULES", [])  # no rule: the store's free space is unexplained
    assert D.main(["-q", VARS_4M]) == 1
    assert "[UNEXPLAINED] vs UEFIExtract: free at 0x64 only in UEFIExtract" in capsys.readouterr().out
