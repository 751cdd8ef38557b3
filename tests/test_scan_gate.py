"""scan verdicts and CI formats: no code is not clean, several inputs keep their places, damage
found late still fails, callers are the functions containing the calls, SARIF for GitHub code
scanning, and what to do next."""

import hashlib
import json
import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model import structs as S
from ovmftool.model.node import all_problems
from ovmftool.model.parser import parse_flash, read_image
from ovmftool.model.validate import validate
from ovmftool.ops.modules import iter_modules
from ovmftool.ops.tree import label
from ovmftool.scan import advice
from ovmftool.scan.advice import known_series, next_steps
from ovmftool.scan.scanner import Caller, Finding, ModuleSummary, ScanResult, SiteSignature, scan_image
from tests import fvbuild as B
from tests.conftest import CORPUS_IMAGES, ROOT

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
DEB_2M = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
NEW = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
VARS = sorted(str(v) for k, v in CORPUS_IMAGES.items() if "OVMF_VARS" in k)
SCAN_SCHEMA = json.loads((ROOT / "docs" / "schema" / "scan-1.json").read_text())
SARIF_SCHEMA = json.loads((ROOT / "tests" / "sarif" / "sarif-schema-2.1.0.json").read_text())


def _run(*args):
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def _stdout(r):
    """stdout alone (the runner may mix stderr in)."""
    try:
        return r.stdout
    except ValueError:
        return r.output


def _errors(r):
    return [l for l in r.output.splitlines() if l.startswith("ovmftool: error:")]


def _clean_image(tmp_path) -> str:
    """Real X64 modules without FIFO routines, in a volume of their own."""
    root = read_image(DEB_2M)
    dirty = {f.guid for f in scan_image("x", root=root, jobs=1).findings}
    clean = [m for m in iter_modules(root) if m.guid not in dirty and m.arch == "X64"][:6]
    files = [B.ffs(m.guid, 0x07, B.sections(B.section(0x10, m.image.raw), B.ui(m.name))) for m in clean]
    p = tmp_path / "clean.fd"
    p.write_bytes(B.fv(files, size=0x100000))
    return str(p)


# --- 1. no code is not clean ------------------------------------------------------------------


@pytest.mark.parametrize("vars_image", VARS, ids=lambda p: p.split("images/", 1)[1])
def test_variable_store_is_an_error_with_a_hint(vars_image):
    r = _run("scan", vars_image)
    assert r.exit_code == 2
    (err,) = _errors(r)
    assert err == f"ovmftool: error: {vars_image}: no PE/TE modules: is this OVMF_VARS (a variable store)?"
    for fmt in ("json", "sarif", "junit"):
        assert _run("scan", "--format", fmt, vars_image).exit_code == 2
    # the gate commands built on scan agree
    assert _run("check", vars_image).exit_code == 2


def test_volume_without_code_gets_the_generic_hint(tmp_path):
    raw = B.ffs("12345678-1234-1234-1234-123456789abc", 0x01, B.sections(B.section(0x19, b"just data" * 50)))
    p = tmp_path / "data.fd"
    p.write_bytes(B.fv([raw], size=0x10000))
    r = _run("scan", str(p))
    assert r.exit_code == 2
    (err,) = _errors(r)
    assert f"{p}: no PE/TE modules: " in err and "variable store" not in err and "firmware code image" in err


# --- 3. damage read late still fails the scan, as info fails --------------------------------


def _image_with_bad_relocations(tmp_path) -> tuple[str, str]:
    """Ten real X64 modules (enough for worker processes); the fourth has a base relocation block
    whose size runs past the directory, which the model reads only on first use."""
    root = read_image(DEB_2M)
    mods = [
        m
        for m in iter_modules(root)
        if m.arch == "X64" and m.image.format != "TE" and m.image.directories.get(S.DIR_BASERELOC, (0, 0))[1]
    ][:10]
    files = []
    for i, m in enumerate(mods):
        raw = bytearray(m.image.raw)
        if i == 3:
            rva, _size = m.image.directories[S.DIR_BASERELOC]
            struct.pack_into("<I", raw, m.image.rva_to_offset(rva) + 4, 0x7FFFFFF0)
        files.append(B.ffs(m.guid, 0x07, B.sections(B.section(0x10, bytes(raw)), B.ui(m.name))))
    p = tmp_path / "badreloc.fd"
    p.write_bytes(B.fv(files, size=0x400000))
    return str(p), mods[3].name


def test_damage_found_while_scanning_is_exit_2_like_info(tmp_path):
    img, _name = _image_with_bad_relocations(tmp_path)
    root = parse_flash(Path(img).read_bytes(), img)
    assert all_problems(root) == []  # the parse itself sees nothing
    (p,) = validate(root)  # reading what the model reads on first use finds it
    assert "base relocation block size 0x7FFFFFF0 is out of range" in str(p) and all_problems(root) == [p]
    assert scan_image(img, jobs=1).findings  # without the verdict rules this image scans as "sites found"
    info = _run("info", img)
    assert info.exit_code == 2 and "base relocation block size 0x7FFFFFF0 is out of range" in info.output
    for jobs in ("1", "2"):  # 2: modules are scanned in forked workers
        r = _run("scan", "-j", jobs, img)
        assert r.exit_code == 2, (jobs, r.output)
        (err,) = _errors(r)
        assert "damaged image: base relocation block size 0x7FFFFFF0 is out of range" in err
    assert _run("baseline", img, "-o", str(tmp_path / "b.json")).exit_code == 2


# --- 2. several inputs: order, places, worst exit code ------------------------------------


def test_several_inputs_keep_their_places_in_every_format(tmp_path):
    clean = _clean_image(tmp_path)
    imgs = [DEB_2M, VARS[0], clean]
    want_codes = [1, 2, 0]

    r = _run("scan", *imgs)
    assert r.exit_code == 2
    assert _errors(r) == [f"ovmftool: error: {VARS[0]}: no PE/TE modules: is this OVMF_VARS (a variable store)?"]
    out = _stdout(r)
    heads = [out.index(p) for p in imgs]
    assert heads == sorted(heads)  # sections in the order given
    assert f"{VARS[0]}\n  error: {VARS[0]}: no PE/TE modules" in out
    assert out.rstrip().splitlines()[-1] == "total: 90 sites in 1 of 3 images; 1 error"

    r = _run("scan", "--format", "json", *imgs)
    assert r.exit_code == 2
    docs = json.loads(_stdout(r))
    jsonschema.validate(docs, SCAN_SCHEMA)
    assert [d["image"]["path"] for d in docs] == imgs
    assert "error" not in docs[0] and docs[0]["summary"]["sites"] == 90
    assert docs[1] == {
        "schema_version": "ovmftool.scan/1",
        "tool": docs[0]["tool"],
        "image": {"path": VARS[0]},
        "error": f"{VARS[0]}: no PE/TE modules: is this OVMF_VARS (a variable store)?",
    }
    assert docs[2]["findings"] == [] and docs[2]["summary"]["modules_scanned"] == 6

    r = _run("scan", "--format", "sarif", *imgs)
    assert r.exit_code == 2
    log = json.loads(_stdout(r))
    jsonschema.validate(log, SARIF_SCHEMA, format_checker=jsonschema.FormatChecker())
    (run,) = log["runs"]  # one run for every image: GitHub takes at most 20 runs in one upload

    def uri(p):  # relative to the working directory under it, else an absolute file URI
        rel = os.path.relpath(os.path.realpath(p))
        return Path(p).resolve().as_uri() if rel.startswith("..") else rel

    targets = [a for a in run["artifacts"] if "analysisTarget" in a["roles"]]
    assert [a["location"]["uri"] for a in targets] == [uri(p) for p in imgs]
    assert [a["properties"]["exitCode"] for a in targets] == want_codes
    inv = run["invocations"][0]
    assert inv["exitCode"] == 2 and inv["executionSuccessful"] is False
    (note,) = inv["toolExecutionNotifications"]  # per image that failed, located at it
    assert note["level"] == "error" and "variable store" in note["message"]["text"]
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == uri(imgs[1])
    assert len(run["results"]) == 90 and "automationDetails" not in run  # the upload's category applies
    assert {r["properties"]["image"] for r in run["results"]} == {uri(imgs[0])}

    r = _run("scan", "--format", "junit", *imgs)
    assert r.exit_code == 2
    suites = ET.fromstring(_stdout(r).split("\n", 1)[1])
    got = suites.findall("testsuite")
    assert [s.get("name") for s in got] == imgs
    assert [s.get("errors") for s in got] == ["0", "1", "0"] and suites.attrib == {}  # the Ant XSD allows none
    err = got[1].find("testcase/error")
    assert err is not None and "variable store" in err.get("message")
    assert int(got[0].get("failures")) == 15 and got[2].get("failures") == "0"


def test_exit_code_is_the_worst_of_the_inputs(tmp_path):
    clean = _clean_image(tmp_path)
    assert _run("scan", clean).exit_code == 0
    assert _run("scan", clean, clean).exit_code == 0
    assert _run("scan", clean, DEB_2M).exit_code == 1
    assert _run("scan", DEB_2M, clean, str(tmp_path / "missing.fd")).exit_code == 2
    r = _run("scan", clean, clean)
    assert _stdout(r).rstrip().splitlines()[-1] == "total: 0 sites in 0 of 2 images; 0 errors"
    assert "next steps" not in _stdout(r)  # nothing to do on clean images


def test_single_failed_input_prints_one_line_and_no_text_report(tmp_path):
    r = _run("scan", VARS[0])
    assert r.exit_code == 2 and _stdout(r) == "" and len(_errors(r)) == 1


def test_bad_symbols_dir_is_one_line_before_any_scan(tmp_path):
    r = _run("scan", "--symbols", str(tmp_path), DEB, DEB_2M)
    assert r.exit_code == 2 and len(_errors(r)) == 1 and "--symbols" in _errors(r)[0]
    # check reads the same directory (not ignored: an unusable one is still an error)
    r = _run("check", "--symbols", str(tmp_path), DEB)
    assert r.exit_code == 2 and len(_errors(r)) == 1 and "--symbols" in _errors(r)[0]


# --- 5. SARIF for GitHub code scanning ---------------------------------------------------


def test_sarif_results_have_listing_lines_regions_and_addresses():
    r = _run("scan", "--format", "sarif", DEB)
    assert r.exit_code == 1
    log = json.loads(_stdout(r))
    jsonschema.validate(log, SARIF_SCHEMA, format_checker=jsonschema.FormatChecker())
    (run,) = log["runs"]
    assert "automationDetails" not in run  # the upload action's category applies
    assert run["invocations"] == [
        {"executionSuccessful": True, "exitCode": 1, "exitCodeDescription": "string I/O sites found"}
    ]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == Path(os.getcwd()).resolve().as_uri() + "/"
    assert run["columnKind"] == "unicodeCodePoints"
    for rule in run["tool"]["driver"]["rules"]:
        assert rule["help"]["text"] and "ovmftool patch" in rule["help"]["markdown"]
    image, listing = run["artifacts"]
    assert image["location"] == {"uri": os.path.relpath(DEB), "uriBaseId": "%SRCROOT%"}
    assert image["hashes"]["sha-256"] == hashlib.sha256(Path(DEB).read_bytes()).hexdigest()
    assert listing["location"] == {"uri": os.path.relpath(DEB) + ".sites.txt", "uriBaseId": "%SRCROOT%"}
    assert listing["properties"]["listingOf"] == 0 and listing["roles"] == ["resultFile"]
    assert listing["mimeType"] == "text/plain" and listing["description"]["text"].endswith(f"of {DEB}, one a line")
    lines = listing["contents"]["text"].splitlines()
    assert lines[0].startswith("# ovmftool") and len(lines) == 91
    root = read_image(DEB)
    lzma = {n.abs_offset: n for m in iter_modules(root) for n in m.image.ancestors() if n.abs_offset is not None}
    data = Path(DEB).read_bytes()
    addrs = run["addresses"]
    assert len(run["results"]) == 90
    for n, res in enumerate(run["results"]):
        props = res["properties"]
        primary = res["locations"][0]["physicalLocation"]
        assert primary["artifactLocation"] == {**listing["location"], "index": 1}
        reg = primary["region"]  # a real line of the listing: the one naming this site
        assert reg["startLine"] == n + 2 and reg["snippet"]["text"] == lines[n + 1]
        assert reg["endColumn"] == len(lines[n + 1]) + 1
        assert f"rva 0x{props['rva']:X}" in lines[n + 1] and props["bytes"] in lines[n + 1]
        assert lines[n + 1].startswith(f"{props['module']}!{props['function']}+0x")
        (rel,) = res["relatedLocations"]
        assert rel["id"] == 1 and "(1)" in res["message"]["text"]
        phys = rel["physicalLocation"]
        assert phys["artifactLocation"] == {"uri": os.path.relpath(DEB), "uriBaseId": "%SRCROOT%", "index": 0}
        byte_reg = phys["region"]
        holder = lzma[byte_reg["byteOffset"]]  # every site of this image is in the LZMA-compressed FVMAIN_COMPACT
        assert label(holder) == "section GUID_DEFINED LZMA" and byte_reg["byteLength"] == holder.size
        assert data[byte_reg["byteOffset"] + 3] == 0x02  # EFI_SECTION_GUID_DEFINED
        assert "startLine" not in byte_reg  # a binary region: lines would have to name the same bytes
        ins = addrs[phys["address"]["index"]]
        assert ins == phys["address"] and ins["kind"] == "instruction" and ins["relativeAddress"] == props["rva"]
        fn = addrs[ins["parentIndex"]]
        assert fn["kind"] == "function" and fn["name"] == props["function"]
        assert fn["relativeAddress"] + ins["offsetFromParent"] == props["rva"]
        mod = addrs[fn["parentIndex"]]
        assert mod["kind"] == "module" and mod["name"] == props["module"] and "parentIndex" not in mod
        assert res["partialFingerprints"]["primaryLocationLineHash"] == res["partialFingerprints"]["ovmftoolSite/v1"]
        logical = [run["logicalLocations"][x["index"]] for x in res["locations"][0]["logicalLocations"]]
        assert [x["kind"] for x in logical] == ["module", "function"] and logical[1]["parentIndex"] == logical[0][
            "index"
        ]
        assert props["module"] in res["message"]["text"] and f"0x{props['rva']:X}" in res["message"]["text"]


def test_sarif_region_is_the_instruction_when_stored_uncompressed(tmp_path):
    root = read_image(DEB_2M)
    m = next(m for m in iter_modules(root) if m.name == "PlatformPei")
    p = tmp_path / "flat.fd"
    p.write_bytes(
        B.fv([B.ffs(m.guid, 0x06, B.sections(B.section(0x10, m.image.raw), B.ui("PlatformPei")))], size=0x40000)
    )
    log = json.loads(_stdout(_run("scan", "--format", "sarif", "--sarif-root", str(tmp_path), str(p))))
    jsonschema.validate(log, SARIF_SCHEMA)
    data = p.read_bytes()
    assert log["runs"][0]["results"]
    for res in log["runs"][0]["results"]:
        phys = res["relatedLocations"][0]["physicalLocation"]
        assert phys["artifactLocation"]["uri"] == "flat.fd"
        reg = phys["region"]
        assert data[reg["byteOffset"] : reg["byteOffset"] + reg["byteLength"]].hex() == res["properties"]["bytes"]
        assert "message" not in reg
        assert f"fd 0x{reg['byteOffset']:X}" in res["locations"][0]["physicalLocation"]["region"]["snippet"]["text"]


def test_sarif_root_option(tmp_path):
    r = _run("scan", "--format", "sarif", "--sarif-root", str(ROOT / "corpus" / "images"), DEB)
    (run,) = json.loads(_stdout(r))["runs"]
    assert run["artifacts"][0]["location"] == {"uri": "debian-2022.11/OVMF_CODE_4M.fd", "uriBaseId": "%SRCROOT%"}
    assert run["artifacts"][1]["location"] == {
        "uri": "debian-2022.11/OVMF_CODE_4M.fd.sites.txt",
        "uriBaseId": "%SRCROOT%",
    }
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == (ROOT / "corpus" / "images").resolve().as_uri() + "/"
    # an image outside the root: an absolute file URI, with no base id (which only goes with a relative one)
    r = _run("scan", "--format", "sarif", "--sarif-root", str(tmp_path), DEB)
    (run,) = json.loads(_stdout(r))["runs"]
    loc = run["results"][0]["relatedLocations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": Path(DEB).resolve().as_uri(), "index": 0} and "originalUriBaseIds" not in run
    jsonschema.validate(json.loads(_stdout(r)), SARIF_SCHEMA, format_checker=jsonschema.FormatChecker())


def _fingerprints(image):
    (run,) = json.loads(_stdout(_run("scan", "--format", "sarif", image)))["runs"]
    return {r["partialFingerprints"]["ovmftoolSite/v1"]: r["properties"] for r in run["results"]}


def test_fingerprints_are_stable_across_scans_and_flash_layouts():
    a = _fingerprints(DEB_2M)
    assert _fingerprints(DEB_2M).keys() == a.keys() and len(a) == 90  # two scans
    b = _fingerprints(DEB)
    # Debian builds OVMF_CODE.fd (2 MB) and OVMF_CODE_4M.fd from one source: the same modules sit
    # elsewhere, and the X64 PlatformPei of the 2 MB image is an IA32 PEIM in the 4 MB one.
    same = {(p["guid"], p["arch"]) for p in a.values()} & {(p["guid"], p["arch"]) for p in b.values()}
    assert len(same) == 14
    for fp in set(a) ^ set(b):
        p = a.get(fp) or b[fp]
        assert (p["guid"], p["arch"]) not in same and p["module"] == "PlatformPei"
    common = set(a) & set(b)
    assert len(common) == 84 == sum(1 for p in a.values() if (p["guid"], p["arch"]) in same)
    assert all(
        a[fp]["rva"] != b[fp]["rva"] and a[fp]["containerOffset"] != b[fp]["containerOffset"] for fp in common
    )  # every one of them moved, and kept its fingerprint
    assert all((a[fp]["function"], a[fp]["bytes"]) == (b[fp]["function"], b[fp]["bytes"]) for fp in common)


# --- 6. next steps --------------------------------------------------------------------------


def test_text_ends_with_next_steps_naming_a_series_only_for_a_known_image(tmp_path):
    """Debian's packaged 2022.11 image is a known build of that tree (edk2-patches/images.json):
    its series is named. The same image with one byte changed is no known build: the routines are
    the same code in every tree, so no series is named, only the trees edk2-patches/ covers."""
    out = _stdout(_run("scan", DEB))
    tail = " ".join(out[out.index("next steps:") :].split())
    assert f"ovmftool patch {DEB} -o {DEB[:-3]}.patched.fd" in tail
    assert "ovmftool plan --edk2 TREE --dsc OvmfPkg/OvmfPkgIa32X64.dsc -o DIR" in tail
    assert "fix the source: edk2-patches/debian-2022.11/OvmfPkgIa32X64" in tail
    assert (
        "the image is Debian's ovmf 2022.11-6+deb12u2 /usr/share/OVMF/OVMF_CODE_4M.fd, built from edk2 2022.11" in tail
    )
    assert out.endswith(")\n") and out.count("next steps:") == 1
    other = tmp_path / "other.fd"
    other.write_bytes(Path(DEB).read_bytes() + b"\xff" * 0x1000)  # one more erased block: another file
    r = _run("scan", str(other))
    tail = " ".join(_stdout(r)[_stdout(r).index("next steps:") :].split())
    assert "edk2-patches/debian" not in tail and "no series named: the image is no build edk2-patches/ knows" in tail
    assert "edk2-patches/ has series for edk2 2022.11, 2025.02, oxide-edd7239108" in tail


def _result(sigs: list[tuple[str, str, str, list[str]]], sha256: str = "0" * 64) -> ScanResult:
    """A scan result whose sites lie in routines with these (arch, library, source, trees)."""
    fs = []
    for i, (arch, lib, src, trees) in enumerate(sigs):
        fs.append(
            Finding(
                module="M",
                guid="00000000-0000-0000-0000-000000000001",
                file_type="DRIVER",
                arch=arch,
                volume="V",
                fd_offset=None,
                container_offset=0,
                rva=i,
                pe_section=".text",
                bytes="f36c",
                mnemonic="rep insb",
                width=8,
                direction="in",
                rep="rep",
                function="IoReadFifo8",
                function_rva=0,
                function_source="signature",
                signature=SiteSignature("IoReadFifo8", lib, src, [], trees, 0, 13),
                callers=[Caller("f", 0, 0, "call")],
            )
        )
    arches = sorted({a for a, *_ in sigs})
    mods = [ModuleSummary("M", "g", "DRIVER", a, "V", None, 1, 1, 1, None) for a in arches]
    return ScanResult("img.fd", sha256, 1, mods, fs)


def test_a_series_is_matching_only_for_a_known_image_when_it_removes_every_site():
    assert sorted(str(s.path.relative_to(ROOT / "edk2-patches")) for s in known_series()) == [
        "debian-2022.11/OvmfPkgIa32X64",
        "debian-2022.11/OvmfPkgX64",
        "debian-2025.02/OvmfPkgIa32X64",
        "debian-2025.02/OvmfPkgX64",
        "oxide-edk2-stable202105/OvmfPkgX64",
    ]
    known = advice.known_images()
    deb22 = next(k for k, e in known.items() if e["tree"] == "2022.11" and "OVMF_CODE.fd" in e["what"])
    deb25 = next(k for k, e in known.items() if e["tree"] == "2025.02" and "OVMF_CODE_4M.fd" in e["what"])
    sev = ("X64", "BaseIoLibIntrinsicSev", "X64/IoFifoSev.nasm", ["2022.11", "2025.02"])
    ia32 = ("IA32", "BaseIoLibIntrinsicSev", "Ia32/IoFifoSev.nasm", ["2022.11", "2025.02"])
    # an image of unknown provenance: no series, whatever its routines
    s = next_steps(_result([sev]))
    assert s.matching is None and "does not show which tree built it" in s.reason
    # a known 2022.11 image: 2022.11's X64 series (unroll)
    s = next_steps(_result([sev], deb22))
    assert s.matching is not None and s.matching.path.parts[-2:] == ("debian-2022.11", "OvmfPkgX64")
    s = next_steps(_result([sev], deb25))  # dsc-inf: the switch away from the Sev instance removes it
    assert s.matching is not None and s.matching.path.parts[-2:] == ("debian-2025.02", "OvmfPkgX64")
    # IoFifo.nasm (the non-Sev instance): 2022.11's series unrolls only IoFifoSev.nasm: no match
    s = next_steps(_result([("X64", "BaseIoLibIntrinsic", "X64/IoFifo.nasm", ["2022.11"])], deb22))
    assert (
        s.matching is None
        and "no series in edk2-patches/ for that tree and OvmfPkg/OvmfPkgX64.dsc removes all of them" in s.reason
    )
    # an IA32 + X64 image needs the Ia32X64 series
    s = next_steps(_result([sev, ia32], deb22))
    assert s.matching is not None and s.matching.path.name == "OvmfPkgIa32X64"
    assert "OvmfPkgIa32X64.dsc" in s.plan_command
    # a site no signature names: no series can be matched
    r = _result([sev], deb22)
    r.findings[0].signature = None
    s = next_steps(r)
    assert s.matching is None and "no built-in signature" in s.reason
    # nothing found: nothing to do
    assert next_steps(ScanResult("x", "0" * 64, 1, [], [])) is None


# --- 4. callers are the functions that contain the calls (needs an OVMF build) ----------------


def _func_symbols(debug: Path) -> list[tuple[int, int, str]]:
    """(start, size, name) of every STT_FUNC symbol in the .debug file's .text, sorted."""
    from elftools.elf.elffile import ELFFile

    with open(debug, "rb") as fh:
        elf = ELFFile(fh)
        secs = list(elf.iter_sections())
        ti = next(i for i, s in enumerate(secs) if s.name == ".text")
        return sorted(
            (s["st_value"], s["st_size"], s.name)
            for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s["st_shndx"] == ti and s["st_info"]["type"] == "STT_FUNC" and s.name
        )


def _holding(funcs, rva):
    hits = [f for f in funcs if f[0] <= rva < f[0] + max(f[1], 1)]
    return max(hits) if hits else None


@pytest.mark.build
def test_callers_are_the_functions_that_contain_the_calls(real_build):
    ovmf_build = real_build
    from tests.truth import debug_file

    fd = str(ovmf_build / "FV" / "OVMF_CODE.fd")
    root = read_image(fd)
    plain = scan_image(fd, root=root, jobs=2)
    named = scan_image(fd, symbols_dir=str(ovmf_build), root=root, jobs=2)
    assert [(f.guid, f.volume, f.rva) for f in plain.findings] == [(f.guid, f.volume, f.rva) for f in named.findings]
    tables: dict = {}
    checked = 0
    for f, g in zip(plain.findings, named.findings):
        key = (f.guid, f.arch)
        if key not in tables:
            tables[key] = _func_symbols(debug_file(ovmf_build, f.arch, f.module, f.guid))
        assert [c.call_rva for c in f.callers] == [c.call_rva for c in g.callers]
        for c, cs in zip(f.callers, g.callers):
            hold = _holding(tables[key], c.call_rva)
            assert hold is not None, (f.module, hex(c.call_rva))
            # without symbols: the code map's containing function starts where the symbol does
            assert c.function_rva == hold[0] <= c.call_rva, (f.module, f.function, hex(c.call_rva), c, hold)
            # with symbols: the symbol table's function, by name
            assert (cs.function, cs.function_rva) == (hold[2], hold[0]), (f.module, cs, hold)
            checked += 1
    assert checked >= 10, checked  # RELEASE builds inline most callers: 12 calls in 2022.11 X64 RELEASE


# --- 7. parts the tool cannot read are "not checked", never clean ---------------------------

UNKNOWN_GUID = "67452301-ab89-efcd-0123-456789abcdef"


def _lzma_section(root):
    """The LZMA GUID-defined section of FVMAIN_COMPACT that holds PEI and DXE (stored at 0x90)."""
    from ovmftool.model.node import walk
    from ovmftool.model.section import Section

    return next(n for n in walk(root) if isinstance(n, Section) and n.compression == "LZMA" and n.abs_offset)


def _opaque_image(tmp_path, attrs: int | None = None) -> tuple[str, int]:
    """DEB with the GUID of that LZMA section changed to an unknown one (optionally its attributes too)."""
    root = read_image(DEB)
    sec = _lzma_section(root)
    data = bytearray(Path(DEB).read_bytes())
    data[sec.abs_offset + 4 : sec.abs_offset + 20] = B.g(UNKNOWN_GUID)
    if attrs is not None:
        struct.pack_into("<H", data, sec.abs_offset + 22, attrs)
    p = tmp_path / "opaque.fd"
    p.write_bytes(data)
    return str(p), sec.size - sec.header_size


def _unknown_fs_image(tmp_path) -> str:
    """DEB with FVMAIN_COMPACT's file-system GUID changed to an unknown one, header checksum fixed."""
    root = read_image(DEB)
    vol = next(v for v in root.children if getattr(v, "name", "") == "FVMAIN_COMPACT")
    data = bytearray(Path(DEB).read_bytes())
    o = vol.abs_offset
    data[o + 16 : o + 32] = B.g(UNKNOWN_GUID)
    struct.pack_into("<H", data, o + 50, 0)
    hlen = vol.header_length
    struct.pack_into("<H", data, o + 50, (-sum(struct.unpack_from(f"<{hlen // 2}H", data, o))) & 0xFFFF)
    p = tmp_path / "unkfs.fd"
    p.write_bytes(data)
    return str(p)


def test_unknown_guided_section_is_not_checked_everywhere_a_verdict_is_given(tmp_path):
    img, body = _opaque_image(tmp_path)
    root = read_image(img)
    assert all_problems(root) == []  # not damage: the model keeps the section opaque
    assert len(scan_image(img, root=root).modules) == 1  # without the rule: "0 sites in 0 of 1 modules", exit 0
    want = (
        f"{img}: not checked: 0x{body:X} bytes in a GUID-defined section with unknown GUID {UNKNOWN_GUID} "
        "at 0x90 (its contents could hold code)"
    )
    r = _run("scan", img)
    assert r.exit_code == 2 and _errors(r) == [f"ovmftool: error: {want}"] and _stdout(r) == ""
    doc = json.loads(_stdout(_run("scan", "--format", "json", img)))
    jsonschema.validate(doc, SCAN_SCHEMA)
    assert doc["error"] == want and "findings" not in doc
    log = json.loads(_stdout(_run("scan", "--format", "sarif", img)))
    jsonschema.validate(log, SARIF_SCHEMA)
    inv = log["runs"][0]["invocations"][0]
    assert inv["exitCode"] == 2 and inv["toolExecutionNotifications"][0]["message"]["text"] == want
    out = tmp_path / "p.fd"
    for args in (
        ["check", img],
        ["baseline", img, "-o", str(tmp_path / "b.json")],
        ["diff", DEB, img],
        ["diff", img, DEB],
        ["patch", img, "-o", str(out)],
        ["patch", img, "--dry-run"],
        ["decode", "--image", img, "f3 6e eb 0a"],
    ):
        r = _run(*args)
        assert r.exit_code == 2 and _errors(r) == [f"ovmftool: error: {want}"], (args, r.output)
    assert not out.exists() and not (tmp_path / "b.json").exists()


def test_unknown_guided_section_without_processing_required_is_read_as_sections(tmp_path):
    root = read_image(DEB_2M)
    dirty = {f.guid for f in scan_image("x", root=root, jobs=1).findings}
    m = next(m for m in iter_modules(root) if m.guid not in dirty and m.arch == "X64")
    inner = B.sections(B.section(0x10, m.image.raw), B.ui(m.name))
    for attrs, code in ((0, 0), (1, 2)):
        p = tmp_path / f"guided{attrs}.fd"
        p.write_bytes(B.fv([B.ffs(m.guid, 0x07, B.guided(UNKNOWN_GUID, inner, attrs=attrs))], size=0x40000))
        r = _run("scan", str(p))
        assert r.exit_code == code, (attrs, r.output)
        if code == 0:
            assert "summary: 0 sites in 0 of 1 modules" in _stdout(r)
        else:
            (err,) = _errors(r)
            assert f"not checked: 0x{len(inner):X} bytes in a GUID-defined section with unknown GUID" in err
    # the real section with its PROCESSING_REQUIRED bit cleared: LZMA bytes read as sections are damage
    img, _ = _opaque_image(tmp_path, attrs=0)
    r = _run("scan", img)
    assert r.exit_code == 2 and "damaged image" in _errors(r)[0]


def test_volume_with_unknown_file_system_is_not_checked(tmp_path):
    img = _unknown_fs_image(tmp_path)
    root = read_image(img)
    assert all_problems(root) == []
    vol = root.children[0]
    r = _run("scan", img)
    assert r.exit_code == 2
    assert _errors(r) == [
        f"ovmftool: error: {img}: not checked: 0x{vol.size - vol.header_length:X} bytes in a "
        f"firmware volume with unknown file system {UNKNOWN_GUID} at 0x0 (its contents could hold "
        "code)"
    ]
    assert _run("check", img).exit_code == 2 and _run("patch", img, "--dry-run").exit_code == 2


def test_file_of_undefined_type_is_not_checked(tmp_path):
    root = read_image(DEB_2M)
    dirty = {f.guid for f in scan_image("x", root=root, jobs=1).findings}
    m = next(m for m in iter_modules(root) if m.guid not in dirty and m.arch == "X64")
    mod = B.ffs(m.guid, 0x07, B.sections(B.section(0x10, m.image.raw), B.ui(m.name)))
    odd = B.ffs("12345678-1234-1234-1234-123456789abc", 0x30, m.image.raw)
    p = tmp_path / "odd.fd"
    p.write_bytes(B.fv([mod, odd], size=0x40000))
    r = _run("scan", str(p))
    assert r.exit_code == 2
    (err,) = _errors(r)
    assert "not checked: " in err and "FFS file 12345678-1234-1234-1234-123456789abc of unknown type 0x30" in err


@pytest.mark.parametrize("image", [DEB, DEB_2M, NEW], ids=lambda p: p.split("images/", 1)[1])
def test_real_images_have_no_unread_part_and_scan_as_before(image):
    from ovmftool.scan.scanner import codeless_modules, scan_checked, unexecutable_modules, unread_parts

    root = read_image(image)
    assert unread_parts(root) == [] and unexecutable_modules(root) == []
    res = scan_checked(image, root=root)
    assert codeless_modules(res) == [] and min(m.code_bytes for m in res.modules) > 0
    assert res.exit_code == 1 and len(res.findings) == {DEB: 90, DEB_2M: 90, NEW: 108}[image]
    assert _run("scan", image).exit_code == 1


def test_variable_store_volume_is_known_not_unread():
    from ovmftool.scan.scanner import unread_parts

    for v in VARS:
        assert unread_parts(read_image(v)) == []  # NVRAM holds variables: "no PE/TE modules", not "not checked"


def test_diff_names_the_symbols_option_before_any_scan(tmp_path):
    missing = str(tmp_path / "missing.fd")  # a scan of OLD would fail on it first
    for opt in ("--symbols-old", "--symbols-new"):
        r = _run("diff", opt, str(tmp_path / "nope"), missing, missing)
        assert r.exit_code == 2
        assert _errors(r) == [f"ovmftool: error: {opt}: {tmp_path / 'nope'} is not a directory"], r.output
    r = _run("diff", "--symbols-new", str(tmp_path), missing, missing)  # a directory without symbol files
    assert _errors(r) == [
        f"ovmftool: error: --symbols-new: no .debug or .map files under {tmp_path} (expected <ARCH>/*.debug)"
    ]


# --- 8. where the series are found -----------------------------------------------------------


def test_series_are_found_from_the_working_directory_as_after_pip_install(tmp_path, monkeypatch):
    """`pip install .` puts the package in site-packages, where no edk2-patches/ lies beside it:
    run in the checkout, it advises as the editable install does."""
    from ovmftool.report.scan_report import next_steps_lines
    from ovmftool.scan import advice

    res = scan_image(DEB)
    monkeypatch.chdir(ROOT)
    editable = next_steps_lines(next_steps(res))
    monkeypatch.setattr(advice, "SOURCE_SERIES_DIR", tmp_path / "site-packages" / "edk2-patches")
    assert advice.series_dir() == ROOT / "edk2-patches"
    assert next_steps_lines(next_steps(res)) == editable
    monkeypatch.chdir(ROOT / "corpus" / "images")  # anywhere in the checkout
    assert advice.series_dir() == ROOT / "edk2-patches"
    monkeypatch.chdir(tmp_path)  # outside any checkout: says where the series live
    assert advice.series_dir() is None and advice.known_series() == []
    s = next_steps(res)
    assert s.matching is None
    assert "edk2-patches/ of ovmftool's source repository" in s.reason and "not in or above" in s.reason


@pytest.mark.build
def test_oxide_image_matches_the_oxide_series_and_debian_images_do_not():
    """The Sev FIFO routines are the same bytes in every tree; an image without TDCALL (Oxide's
    edk2-stable202105 fork) is matched to the series made for that fork, never to Debian's."""
    from ovmftool.scan import advice
    from ovmftool.scan import signatures as sigs
    from ovmftool.scan.scanner import scan_checked
    from tests.conftest import stored

    fd = stored("oxide-202105-X64-DEBUG").code
    r = scan_checked(str(fd))
    assert r.era == sigs.PRE_TDX and len(r.findings) == 660
    steps = advice.next_steps(r, ROOT / "edk2-patches")
    assert (
        steps.matching is not None and steps.matching.path == ROOT / "edk2-patches/oxide-edk2-stable202105/OvmfPkgX64"
    )
    deb = scan_checked(str(ROOT / "corpus/images/debian-2022.11/OVMF_CODE.fd"))
    assert deb.era == sigs.TDX
    steps = advice.next_steps(deb, ROOT / "edk2-patches")
    assert steps.matching is not None and steps.matching.path == ROOT / "edk2-patches/debian-2022.11/OvmfPkgX64"


def test_a_file_name_that_is_not_utf8_is_scanned_in_every_format(tmp_path, monkeypatch):
    """A name with a byte that is no UTF-8 (Linux allows any byte but / and NUL) is an image like
    any other: the result cache's key, SARIF's URI (percent-encoded byte) and its listing (U+FFFD)
    used to raise an internal error on it."""
    raw = os.fsencode(tmp_path) + b"/fw\xff.fd"
    with open(raw, "wb") as fh:
        fh.write(Path(DEB).read_bytes())
    name = os.fsdecode(raw)
    monkeypatch.chdir(tmp_path)
    for fmt in ("text", "json", "sarif", "junit"):
        r = _run("scan", "--format", fmt, name)
        assert r.exit_code == 1 and not _errors(r), (fmt, r.output[-300:])
    log = json.loads(_stdout(_run("scan", "--format", "sarif", name)))
    jsonschema.validate(log, SARIF_SCHEMA, format_checker=jsonschema.FormatChecker())
    uris = sorted(a["location"]["uri"] for a in log["runs"][0]["artifacts"])
    assert uris == ["fw%FF.fd", "fw%FF.fd.sites.txt"]
    assert "fw\ufffd.fd" in log["runs"][0]["artifacts"][1]["contents"]["text"].splitlines()[0]
    suites = ET.fromstring(_stdout(_run("scan", "--format", "junit", name)).encode())  # UTF-8 XML
    assert suites[0].get("name").endswith("/fw\\udcff.fd")  # shown escaped, as in the text output
    assert _stdout(_run("scan", name)).startswith(f"{tmp_path}/fw\\udcff.fd  sha256 ")
    doc = json.loads(_stdout(_run("scan", "--format", "json", name)))
    assert doc["image"]["path"] == name and doc["summary"]["sites"] == 90
    r = _run("baseline", name, "-o", str(tmp_path / "b.json"))
    assert r.exit_code == 0 and json.loads((tmp_path / "b.json").read_text())["image"]["path"] == name
    assert _run("check", "--baseline", str(tmp_path / "b.json"), name).exit_code == 0


def test_a_file_name_with_control_characters_cannot_forge_output_lines(tmp_path):
    """A newline, an escape or a bidi override in an image's name is shown escaped in every text
    output (scan, check, baseline's line, JUnit: a control character made its XML ill-formed)."""
    name = str(tmp_path / "x\novmftool: clean\x1b[2J\u202e.fd")
    Path(name).write_bytes(Path(DEB).read_bytes())
    shown = name.replace("\n", "\\x0a").replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")
    r = _run("scan", name)
    assert (
        r.exit_code == 1
        and _stdout(r).splitlines()[0] == f"{shown}  sha256 {hashlib.sha256(Path(DEB).read_bytes()).hexdigest()}"
    )
    for args in (
        ["scan", name, str(DEB)],
        ["check", name, str(DEB)],
        ["baseline", name, "-o", str(tmp_path / "b.json")],
    ):
        out = _run(*args).output
        assert "\x1b" not in out and "\u202e" not in out and "ovmftool: clean" not in out.splitlines(), args
    suites = ET.fromstring(_stdout(_run("scan", "--format", "junit", name)).encode())
    assert suites[0].get("name") == shown
