"""CI gating: SARIF, JUnit, baseline/check/waivers, diff, crash decode, on real images."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan.scanner import scan_image
from tests import fvbuild as B
from tests.conftest import CORPUS_IMAGES, ROOT, stored

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
CRASH_1 = (
    "vCPU 0: Unhandled VM exit: InstEmul(InstEmul { inst_data: "
    "[243, 110, 235, 10, 227, 8, 138, 6, 238, 72, 255, 198, 226, 248, 76], len: 15 })"
)
CRASH_2 = "[243, 110, 76, 137, 198, 195, 252, 72, 135, 202, 73, 135, 240, 243, 102]"
CRASH_1168 = "inst_data: [243, 108, 235, 10, 227, 8, 236, 136, 7, 72, 255, 199, 226, 248]"


def _sarif_schema():
    return json.loads((ROOT / "tests" / "sarif" / "sarif-schema-2.1.0.json").read_text())


@pytest.mark.parametrize("image", [DEB, str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])])
def test_sarif_is_schema_valid_on_real_images(image, tmp_path):
    out = tmp_path / "s.sarif"
    r = CliRunner().invoke(main, ["scan", "--format", "sarif", "-o", str(out), image])
    assert r.exit_code == 1, r.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, _sarif_schema(), format_checker=jsonschema.FormatChecker())
    (run,) = doc["runs"]
    assert {x["id"] for x in run["tool"]["driver"]["rules"]} == {"OVMF-STRING-IO-OUT", "OVMF-STRING-IO-IN"}
    assert len(run["results"]) == len(scan_image(image, jobs=1).findings) >= 90
    for res in run["results"]:
        assert [l["kind"] for l in res["locations"][0]["logicalLocations"]] == ["module", "function"]
        # all inside LZMA: the region is the compressed section (tests/test_scan_gate.py), volume + offset as properties
        assert res["relatedLocations"][0]["physicalLocation"]["region"]["byteLength"] > 2
        assert res["properties"]["compressed"] and res["properties"]["volume"].startswith("FVMAIN_COMPACT/LZMA")
    fps = [res["partialFingerprints"]["ovmftoolSite/v1"] for res in run["results"]]
    assert len(set(fps)) == len(fps)


def test_sarif_physical_location_for_uncompressed_code(tmp_path):
    root = read_image(DEB)
    m = next(m for m in iter_modules(root) if m.name == "PlatformPei")
    img = B.fv([B.ffs(m.guid, 0x06, B.sections(B.section(0x10, m.image.raw), B.ui("PlatformPei")))], size=0x40000)
    p = tmp_path / "flat.fd"
    p.write_bytes(img)
    r = CliRunner().invoke(main, ["scan", "--format", "sarif", str(p)])
    doc = json.loads(r.output)
    jsonschema.validate(doc, _sarif_schema())
    data = p.read_bytes()
    for res in doc["runs"][0]["results"]:
        reg = res["relatedLocations"][0]["physicalLocation"]["region"]
        assert data[reg["byteOffset"] : reg["byteOffset"] + reg["byteLength"]].hex() == res["properties"]["bytes"]


@pytest.mark.build
def test_fingerprints_stable_across_builds_at_new_addresses():
    """The same X64 DXE drivers linked into OvmfPkgX64 and OvmfPkgIa32X64 sit at other RVAs in
    other images; their sites keep their fingerprints."""
    from ovmftool.scan.identity import site_keys

    a = scan_image(str(stored("2022.11-X64-DEBUG").code), jobs=2)
    b = scan_image(str(stored("2022.11-Ia32X64-DEBUG").code), jobs=2)
    ka = {(f.guid, k): f for f, k in zip(a.findings, site_keys(a.findings)) if f.arch == "X64"}
    kb = {(f.guid, k): f for f, k in zip(b.findings, site_keys(b.findings)) if f.arch == "X64"}
    common = {g for g, _ in ka} & {g for g, _ in kb}
    assert len(common) > 50
    moved = 0
    for g in common:
        sa = {k for gg, k in ka if gg == g}
        sb = {k for gg, k in kb if gg == g}
        assert sa == sb, g
        moved += any(ka[(g, k)].rva != kb[(g, k)].rva for k in sa)
    assert moved > 0  # some modules really moved


def test_junit_one_case_per_module():
    r = CliRunner().invoke(main, ["scan", "--format", "junit", DEB])
    assert r.exit_code == 1
    root = ET.fromstring(r.output.split("\n", 1)[1])
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(list(iter_modules(read_image(DEB))))
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 15 == int(suite.get("failures"))
    pei = next(c for c in failed if c.get("name").startswith("PlatformPei "))
    assert "rep insb" in pei.find("failure").text and "IoReadFifo8" in pei.find("failure").text


def _image_with_planted_site(tmp_path, plant: bool):
    """Real modules in a flat volume; with plant=True one more module whose entry is OUTSB; RET."""
    root = read_image(DEB)
    mods = [m for m in iter_modules(root) if m.name in ("PlatformPei", "CpuIo2Dxe", "PcdPeim")]
    files = [B.ffs(m.guid, 0x07, B.sections(B.section(0x10, m.image.raw), B.ui(m.name))) for m in mods]
    extra = next(m for m in iter_modules(root) if m.name == "VirtioRngDxe")
    raw = bytearray(extra.image.raw)
    if plant:
        off = extra.image.rva_to_offset(extra.image.entry_rva)
        raw[off : off + 2] = b"\x6e\xc3"
    files.append(B.ffs(extra.guid, 0x07, B.sections(B.section(0x10, bytes(raw)), B.ui("VirtioRngDxe"))))
    p = tmp_path / ("planted.fd" if plant else "stock.fd")
    p.write_bytes(B.fv(files, size=0x100000))
    return str(p)


def test_baseline_then_check(tmp_path):
    stock = _image_with_planted_site(tmp_path, plant=False)
    planted = _image_with_planted_site(tmp_path, plant=True)
    base = tmp_path / "base.json"
    r = CliRunner().invoke(main, ["baseline", stock, "-o", str(base)])
    assert r.exit_code == 0, r.output
    n_base = len(json.loads(base.read_text())["sites"])
    assert n_base == len(scan_image(stock, jobs=1).findings) == 12  # PlatformPei and CpuIo2Dxe: six each
    r = CliRunner().invoke(main, ["check", stock, "--baseline", str(base)])
    assert r.exit_code == 0 and "check: 0 new" in r.output, r.output
    r = CliRunner().invoke(main, ["check", planted, "--baseline", str(base)])
    assert r.exit_code == 1, r.output
    new = [l for l in r.output.splitlines() if l.startswith("NEW")]
    assert len(new) == 1 and "VirtioRngDxe" in new[0] and " outsb " in new[0]
    # the same check on Debian's real image against that baseline: everything outside it is new
    r = CliRunner().invoke(main, ["check", DEB, "--baseline", str(base)])
    assert r.exit_code == 1 and f"check: {90 - n_base} new" in r.output


def test_waivers(tmp_path):
    stock = _image_with_planted_site(tmp_path, plant=False)
    planted = _image_with_planted_site(tmp_path, plant=True)
    base = tmp_path / "base.json"
    CliRunner().invoke(main, ["baseline", stock, "-o", str(base)])
    w = tmp_path / "w.json"
    w.write_text(
        json.dumps(
            {
                "schema_version": "ovmftool.waivers/1",
                "waivers": [
                    {"module": "VirtioRngDxe", "instruction": "outsb", "reason": "test plant, never runs"},
                    {"module": "Tcg2Dxe", "reason": "not in this image", "expires": "2099-01-01"},
                ],
            }
        )
    )
    r = CliRunner().invoke(main, ["check", planted, "--baseline", str(base), "--waivers", str(w)])
    assert r.exit_code == 0, r.output
    assert "waived  VirtioRngDxe" in r.output and "waiver Tcg2Dxe matched no new site" in r.output
    w.write_text(
        json.dumps(
            {
                "schema_version": "ovmftool.waivers/1",
                "waivers": [{"module": "VirtioRngDxe", "reason": "old", "expires": "2020-01-01"}],
            }
        )
    )
    r = CliRunner().invoke(main, ["check", planted, "--baseline", str(base), "--waivers", str(w)])
    assert r.exit_code == 1 and "expired on 2020-01-01" in r.output
    # a waiver's text is shown on one line, escaped: a newline or a bidi override in it cannot
    # make a line of its own or reorder what a terminal shows
    w.write_text(
        json.dumps(
            {
                "schema_version": "ovmftool.waivers/1",
                "waivers": [
                    {"module": "VirtioRngDxe", "reason": "plant\nNEW  forged \u202eline"},
                    {"module": "Tcg2\u202eDxe", "reason": "not here"},
                ],
            }
        )
    )
    r = CliRunner().invoke(main, ["check", planted, "--baseline", str(base), "--waivers", str(w)])
    assert r.exit_code == 0, r.output
    assert ": plant NEW forged \\u202eline\n" in r.output and "\u202e" not in r.output
    assert "warning: waiver Tcg2\\u202eDxe matched no new site" in r.output
    assert not any(line.startswith("NEW") for line in r.output.splitlines())
    w.write_text("{not json")
    r = CliRunner().invoke(main, ["check", planted, "--waivers", str(w)])
    assert r.exit_code == 2 and "not JSON" in r.output


def test_diff_self_is_empty():
    r = CliRunner().invoke(main, ["diff", DEB, DEB])
    assert r.exit_code == 0 and "diff: 0 added, 0 removed, 90 unchanged" in r.output


@pytest.mark.build
def test_diff_stock_against_c_loop_build_removes_every_site():
    stock = str(stored("2025.02-X64-DEBUG").code)
    cloop = str(stored("2025.02-X64-DEBUG-cloop").code)
    n = len(scan_image(stock, jobs=2).findings)
    assert n > 500
    r = CliRunner().invoke(main, ["scan", cloop])
    assert r.exit_code == 0 and "summary: 0 sites" in r.output  # C loops: nothing to report
    r = CliRunner().invoke(main, ["diff", "--format", "json", stock, cloop])
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert len(doc["removed"]) == n and doc["added"] == [] and doc["unchanged"] == 0


@pytest.mark.parametrize("text,mnem", [(CRASH_1, "rep outsb"), (CRASH_2, "rep outsb"), (CRASH_1168, "rep insb")])
def test_decode_names_the_faulting_instruction(text, mnem):
    r = CliRunner().invoke(main, ["decode", "--format", "json", text])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["instructions"][0]["mnemonic"] == mnem
    assert "DecodeAssist" in doc["explanation"] and "InstEmul" in doc["explanation"]


@pytest.mark.parametrize("text,routine", [(CRASH_1, "SevIoWriteFifo8"), (CRASH_1168, "SevIoReadFifo8")])
def test_decode_finds_the_sev_routine_in_debian_image(text, routine):
    r = CliRunner().invoke(main, ["decode", "--format", "json", "--image", DEB, text])
    doc = json.loads(r.output)
    best = doc["matches"][0]
    assert best["function"] == routine and best["is_site"] and best["matched"] == len(doc["bytes"]) // 2
    assert {m["module"] for m in doc["matches"] if m["function"] == routine} >= {"PlatformDxe"} or len(
        doc["matches"]
    ) > 5


@pytest.mark.build
def test_decode_finds_iofifo_routine_in_non_sev_build():
    img = str(stored("2022.11-X64-DEBUG-nonsev").code)
    r = CliRunner().invoke(main, ["decode", "--format", "json", "--image", img, CRASH_2])
    doc = json.loads(r.output)
    best = doc["matches"][0]
    assert best["function"] == "IoWriteFifo8" and best["matched"] == 15
    res = scan_image(img, jobs=2)
    f = next(f for f in res.findings if f.rva == best["rva"] and f.guid == best["guid"])
    assert f.signature.library == "BaseIoLibIntrinsic" and f.signature.source == "X64/IoFifo.nasm"


def test_decode_bad_input_is_one_line_error():
    r = CliRunner().invoke(main, ["decode", "not bytes at all"])
    assert r.exit_code == 2 and r.output.startswith("ovmftool: error:") and r.output.count("\n") == 1


# -- schemas of diff, baseline and waivers; the loaders agree with them --------------------------

DEB25 = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])


def _schema(name):
    name = name if name[-1].isdigit() else f"{name}-1"  # "baseline" is baseline-1, "baseline-2" as named
    return json.loads((ROOT / "docs" / "schema" / f"{name}.json").read_text())


def _valid(doc, name):
    return jsonschema.Draft202012Validator(_schema(name), format_checker=jsonschema.FormatChecker()).is_valid(doc)


def test_diff_json_validates_on_real_images():
    """2022.11 -> 2025.02: Debian's two packages differ in modules and sites, matched by identity."""
    r = CliRunner().invoke(main, ["diff", "--format", "json", DEB, DEB25])
    doc = json.loads(r.stdout)
    assert _valid(doc, "diff"), list(jsonschema.Draft202012Validator(_schema("diff")).iter_errors(doc))[:3]
    assert r.exit_code == (1 if doc["added"] else 0)
    n_old, n_new = (len(scan_image(p, jobs=1).findings) for p in (DEB, DEB25))
    assert len(doc["removed"]) + doc["unchanged"] == n_old and len(doc["added"]) + doc["unchanged"] == n_new
    assert doc["old"]["path"] == DEB and doc["new"]["sha256"] != doc["old"]["sha256"]
    assert doc["modules_added"] or doc["modules_removed"]
    r = CliRunner().invoke(main, ["diff", "--format", "json", DEB, DEB])
    same = json.loads(r.stdout)
    assert (
        r.exit_code == 0
        and _valid(same, "diff")
        and same["added"] == same["removed"] == []
        and same["unchanged"] == n_old
    )


@pytest.mark.parametrize("image", [DEB, DEB25])
def test_baseline_validates_and_loads(tmp_path, image):
    from ovmftool.gate.baseline import load_baseline

    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["baseline", image, "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert _valid(doc, "baseline")
    assert len(load_baseline(str(out))) == len(doc["sites"]) == len(scan_image(image, jobs=1).findings)


def _ci_md_waivers() -> dict:
    text = (ROOT / "docs" / "ci.md").read_text()
    block = text.split('```json\n{"schema_version": "ovmftool.waivers/1"', 1)[1].split("```", 1)[0]
    return json.loads('{"schema_version": "ovmftool.waivers/1"' + block)


def test_the_documented_waivers_example_validates_and_loads(tmp_path):
    from ovmftool.gate.baseline import load_waivers

    doc = _ci_md_waivers()
    assert _valid(doc, "waivers")
    p = tmp_path / "w.json"
    p.write_text(json.dumps(doc))
    (w,) = load_waivers(str(p))
    assert w.module == "PlatformPei" and w.function == "IoReadFifo8" and str(w.expires) == "2027-06-30"


def _baseline_doc():
    from ovmftool.report.gate_report import baseline_doc

    return baseline_doc(scan_image(DEB, jobs=1))


# (mutation, the field the one-line error must name)
BASELINE_BAD = [
    (lambda d: d.pop("schema_version"), "schema_version: missing"),
    (lambda d: d.update(schema_version="ovmftool.baseline/3"), "schema_version: 'ovmftool.baseline/3' is not"),
    (lambda d: d.pop("sites"), "sites: missing"),
    (lambda d: d.update(sites={}), "sites: {} is not an array"),
    (lambda d: d["sites"].append(7), "sites[90]: is not an object"),
    (lambda d: d["sites"][3].pop("key"), "sites[3].key: missing"),
    (lambda d: d["sites"][3].update(key=""), 'sites[3].key: "" does not match'),
    (lambda d: d["sites"][0].update(rva=-1), "sites[0].rva: -1 is below 0"),
    (lambda d: d["sites"][0].update(rva="0x10"), 'sites[0].rva: "0x10" is not an integer'),
    (lambda d: d["sites"][0].update(rva=True), "sites[0].rva: true is not an integer"),
    (lambda d: d["sites"][1].update(guid="PlatformPei"), 'sites[1].guid: "PlatformPei" does not match'),
    (lambda d: d["sites"][1].update(bytes="F36C"), 'sites[1].bytes: "F36C" does not match'),
    (lambda d: d["sites"][2].update(function=5), "sites[2].function: 5 is not a string or null"),
    (lambda d: d["image"].update(sha256="x"), 'image.sha256: "x" does not match'),
    (lambda d: d.pop("tool"), "tool: missing"),
]


@pytest.mark.parametrize("mutate,field", BASELINE_BAD, ids=[f for _, f in BASELINE_BAD])
def test_load_baseline_rejects_what_the_schema_rejects(tmp_path, mutate, field):
    from ovmftool.errors import OvmfToolError
    from ovmftool.gate.baseline import load_baseline

    doc = _baseline_doc()
    assert _valid(doc, "baseline")
    mutate(doc)
    assert not _valid(doc, "baseline")
    p = tmp_path / "b.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(OvmfToolError) as e:
        load_baseline(str(p))
    assert str(e.value).startswith(f"baseline {p}: {field}") and "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["check", DEB, "--baseline", str(p)])
    assert r.exit_code == 2 and r.stderr == f"ovmftool: error: {e.value}\n"


WAIVER_OK = {
    "module": "PlatformPei",
    "function": "IoReadFifo*",
    "instruction": "rep insb",
    "reason": "r",
    "expires": "2099-12-31",
}
WAIVERS_BAD = [
    ({"waivers": []}, "schema_version: missing"),
    ({"schema_version": "ovmftool.waivers/1"}, "waivers: missing"),
    ({"schema_version": "ovmftool.waivers/1", "waivers": {"module": "x"}}, 'waivers: {"module": "x"} is not an array'),
    ({"schema_version": "ovmftool.waivers/1", "waivers": ["PlatformPei"]}, "waivers[0]: is not an object"),
    ({"schema_version": "ovmftool.waivers/1", "waivers": [WAIVER_OK, {"module": "X"}]}, "waivers[1].reason: missing"),
    ({"schema_version": "ovmftool.waivers/1", "waivers": [{"reason": "r"}]}, "waivers[0].module: missing"),
    (
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": " ", "reason": "r"}]},
        'waivers[0].module: " " does not match',
    ),
    (
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": "X", "reason": "r", "expire": "2020-01-01"}]},
        "waivers[0]: unknown field 'expire'",
    ),
    (
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": "X", "reason": "r", "expires": "30.06.2027"}]},
        'waivers[0].expires: "30.06.2027" does not match',
    ),
    (
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": "X", "reason": "r", "expires": "2027-13-01"}]},
        "waivers[0].expires: '2027-13-01' is not a date (YYYY-MM-DD)",
    ),
    (
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": "X", "reason": "r", "function": ["a"]}]},
        'waivers[0].function: ["a"] is not a string or null',
    ),
    (
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": 3, "reason": "r"}]},
        "waivers[0].module: 3 is not a string",
    ),
]


@pytest.mark.parametrize("doc,field", WAIVERS_BAD, ids=[f for _, f in WAIVERS_BAD])
def test_load_waivers_rejects_what_the_schema_rejects(tmp_path, doc, field):
    from ovmftool.errors import OvmfToolError
    from ovmftool.gate.baseline import load_waivers

    assert not _valid(doc, "waivers")
    p = tmp_path / "w.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(OvmfToolError) as e:
        load_waivers(str(p))
    assert str(e.value).startswith(f"waivers {p}: {field}") and "\n" not in str(e.value)


def test_load_waivers_accepts_what_the_schema_accepts(tmp_path):
    from ovmftool.gate.baseline import load_waivers

    doc = {
        "schema_version": "ovmftool.waivers/1",
        "waivers": [
            WAIVER_OK,
            {
                "module": "222c386d-5abc-4fb4-b124-fbb82488acf4",
                "reason": "by GUID",
                "function": None,
                "instruction": None,
                "expires": None,
            },
        ],
    }
    assert _valid(doc, "waivers")
    p = tmp_path / "w.json"
    p.write_text(json.dumps(doc))
    ws = load_waivers(str(p))
    assert [w.module for w in ws] == ["PlatformPei", "222c386d-5abc-4fb4-b124-fbb82488acf4"]
    assert ws[1].function is None and ws[1].expires is None
    r = CliRunner().invoke(main, ["check", DEB, "--waivers", str(p)])
    assert r.exit_code == 1 and "waived  PlatformPei" in r.stdout  # other modules' sites are still new


def _baseline_doc_2():
    from ovmftool.report.gate_report import baseline_doc

    return baseline_doc([scan_image(DEB, jobs=1), scan_image(DEB25, jobs=1)])


BASELINE_2_BAD = [
    (lambda d: d.pop("images"), "images: missing"),
    (lambda d: d.update(images={}), "images: {} is not an array"),
    (lambda d: d["images"].append(3), "images[2]: is not an object"),
    (lambda d: d["images"][1].pop("image"), "images[1].image: missing"),
    (lambda d: d["images"][1]["image"].update(sha256="x"), 'images[1].image.sha256: "x" does not match'),
    (lambda d: d["images"][0]["sites"][4].update(bytes="zz"), 'images[0].sites[4].bytes: "zz" does not match'),
    (lambda d: d["images"][1].update(sites=None), "images[1].sites: null is not an array"),
]


@pytest.mark.parametrize("mutate,field", BASELINE_2_BAD, ids=[f for _, f in BASELINE_2_BAD])
def test_load_baseline_2_rejects_what_its_schema_rejects(tmp_path, mutate, field):
    from ovmftool.errors import OvmfToolError
    from ovmftool.gate.baseline import load_baseline_images

    doc = _baseline_doc_2()
    assert _valid(doc, "baseline-2"), list(jsonschema.Draft202012Validator(_schema("baseline-2")).iter_errors(doc))[:2]
    mutate(doc)
    assert not _valid(doc, "baseline-2")
    p = tmp_path / "b.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(OvmfToolError) as e:
        load_baseline_images(str(p))
    assert str(e.value).startswith(f"baseline {p}: {field}") and "\n" not in str(e.value)


def test_one_baseline_file_for_several_images(tmp_path):
    """`baseline A B` records both; `check` gives each its own entry by path, else by contents (a
    moved image), and an image with no entry has every site new."""
    from ovmftool.gate.baseline import load_baseline_images

    a, b = tmp_path / "a.fd", tmp_path / "b.fd"
    a.write_bytes(Path(DEB).read_bytes())
    b.write_bytes(Path(DEB25).read_bytes())
    base = tmp_path / "base.json"
    r = CliRunner().invoke(main, ["baseline", str(a), str(b), "-o", str(base)])
    assert r.exit_code == 0 and r.stderr == f"baseline: 198 sites of 2 images recorded in {base}\n"
    doc = json.loads(base.read_text())
    assert _valid(doc, "baseline-2") and doc["schema_version"] == "ovmftool.baseline/2"
    entries = load_baseline_images(str(base))
    assert [(e.path, len(e.keys)) for e in entries] == [(str(a), 90), (str(b), 108)]
    r = CliRunner().invoke(main, ["check", "--baseline", str(base), str(a), str(b)])
    assert r.exit_code == 0 and r.stdout.rstrip().endswith("check: 0 new in 0 of 2 images; 0 errors")
    moved = tmp_path / "moved" / "b.fd"  # another path, the same contents: its entry by sha256
    moved.parent.mkdir()
    moved.write_bytes(b.read_bytes())
    r = CliRunner().invoke(main, ["check", "--baseline", str(base), str(moved)])
    assert r.exit_code == 0 and "108 in baseline" in r.stdout
    other = tmp_path / "other.fd"  # neither path nor contents: every site new, and said so
    other.write_bytes(Path(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]).read_bytes())
    r = CliRunner().invoke(main, ["check", "--baseline", str(base), str(a), str(other)])
    assert r.exit_code == 1
    assert f"{other}: no baseline entry for this image (by path or contents): every site is new" in r.stdout
    assert "check: 90 new in 1 of 2 images; 0 errors" in r.stdout
    # a one-image baseline still applies to the one image checked, wherever it was recorded
    one = tmp_path / "one.json"
    assert CliRunner().invoke(main, ["baseline", str(a), "-o", str(one)]).exit_code == 0
    assert json.loads(one.read_text())["schema_version"] == "ovmftool.baseline/1"
    r = CliRunner().invoke(main, ["check", "--baseline", str(one), str(other)])
    assert (
        r.exit_code == 1 and "check: 6 new, 0 waived, 84 in baseline" in r.stdout
    )  # the 2 MB build's PlatformPei differs


def test_baseline_of_several_images_writes_nothing_when_one_fails(tmp_path):
    bad = tmp_path / "cut.fd"
    bad.write_bytes(Path(DEB).read_bytes()[:100000])
    out = tmp_path / "base.json"
    r = CliRunner().invoke(main, ["baseline", DEB, str(bad), "-o", str(out)])
    assert r.exit_code == 2 and not out.exists()
    assert r.stderr.startswith(f"ovmftool: error: {bad}: damaged image") and r.stderr.count("\n") == 1
    r = CliRunner().invoke(main, ["check", DEB, str(bad)])
    assert r.exit_code == 2 and f"error: {bad}: damaged image" in r.stderr
