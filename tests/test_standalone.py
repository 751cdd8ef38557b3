"""A standalone PE32/PE32+/TE file as input: scan, info, patch, extract and decode treat it as one
module. The modules come from the real corpus image by `ovmftool extract`."""

import json
import os
import struct

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.binary import NULL_GUID, BinaryFile
from ovmftool.model.node import all_problems
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan import signatures as sigs
from ovmftool.scan.scanner import scan_image
from tests.clicheck import assert_error as _one_error
from tests.conftest import CORPUS_IMAGES, ROOT

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])


def _run(*args):
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """DEB extracted by the CLI: (directory, manifest)."""
    d = tmp_path_factory.mktemp("x") / "mods"
    r = _run("extract", DEB, "-o", str(d))
    assert r.exit_code == 0, r.output
    return d, json.loads((d / "manifest.json").read_text())


@pytest.fixture(scope="module")
def image_scan():
    return scan_image(DEB)


def _sites(findings):
    return sorted((f.rva, f.bytes, f.mnemonic, f.function, f.function_source) for f in findings)


def test_every_extracted_module_parses_as_that_module(extracted):
    d, man = extracted
    assert len(man["modules"]) > 100
    for e in man["modules"]:
        root = read_image(str(d / e["file"]))
        assert isinstance(root, BinaryFile) and all_problems(root) == [], e["file"]
        (m,) = iter_modules(root)
        assert (m.name, m.guid, m.arch, m.image.format) == (e["name"], e["guid"], e["arch"], e["format"])
        assert (m.volume, m.fd_offset, m.file_type) == ("", 0, "TE" if e["format"] == "TE" else "PE32")
        assert (m.image.entry_rva, m.image.image_base, m.image.size_of_image) == (
            e["entry_rva"],
            e["image_base"],
            e["size_of_image"],
        )
        assert len(m.image.relocations) == e["relocations"] and m.image.debug_path == e["debug_path"]


def test_every_extracted_module_scans_to_the_same_sites_as_in_the_image(extracted, image_scan):
    d, man = extracted
    in_image = {}
    for f in image_scan.findings:
        in_image.setdefault((f.guid, f.arch, f.module), []).append(f)
    with_sites = 0
    for e in man["modules"]:
        path = str(d / e["file"])
        res = scan_image(path)
        want = _sites(in_image.get((e["guid"], e["arch"], e["name"]), []))
        assert _sites(res.findings) == want, e["file"]
        for f in res.findings:  # file offsets: the bytes are there in the file
            assert f.fd_offset is not None and f.volume == "" and f.guid == e["guid"]
            raw = open(path, "rb").read()
            assert raw[f.fd_offset : f.fd_offset + len(f.bytes) // 2].hex() == f.bytes
        with_sites += bool(want)
    assert with_sites == len({(f.guid, f.arch) for f in image_scan.findings}) >= 15
    assert sum(len(v) for v in in_image.values()) == len(image_scan.findings) == 90


def test_scan_cli_exit_codes_on_standalone_modules(extracted):
    d, man = extracted
    dirty = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    clean = next(e for e in man["modules"] if e["name"] == "PlatformDxe")
    r = _run("scan", str(d / dirty["file"]))
    assert r.exit_code == 1 and "summary: 6 sites in 1 of 1 modules" in r.output, r.output
    assert "CpuIo2Dxe  a19b1fe7-c1bc-49f8-875f-54a5d542443f  PE32 X64" in r.output
    r = _run("scan", str(d / clean["file"]))
    assert r.exit_code == 0 and "summary: 0 sites in 0 of 1 modules" in r.output, r.output


def test_patch_of_every_extracted_module_rescans_to_zero(extracted, image_scan, tmp_path):
    """Each module with sites, patched on its own: 0 sites after, the input untouched, only the
    rewritten bytes changed, and the output byte-identical to that module in the patched image."""
    from ovmftool.patch.patcher import patch

    d, man = extracted
    root = read_image(DEB)
    whole = patch(DEB, root)
    patched_image = tmp_path / "patched.fd"
    patched_image.write_bytes(whole.output)
    in_patched = {(m.guid, m.arch): m.image.raw for m in iter_modules(read_image(str(patched_image)))}
    schema = json.loads((ROOT / "docs" / "schema" / "patch-1.json").read_text())
    dirty = {(f.guid, f.arch) for f in image_scan.findings}
    done = 0
    for e in man["modules"]:
        if (e["guid"], e["arch"]) not in dirty:
            continue
        src = d / e["file"]
        before = src.read_bytes()
        out = tmp_path / e["file"]
        r = _run("patch", str(src), "-o", str(out), "--format", "json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        jsonschema.validate(doc, schema)
        assert doc["sites_before"] == 6 and doc["sites_after"] == 0 and len(doc["rewrites"]) == 6, e["file"]
        assert {w["shape"] for w in doc["rewrites"]} == {"sev-fifo"}
        assert src.read_bytes() == before  # the input is never modified
        new = out.read_bytes()
        assert len(new) == len(before)  # in place
        changed = [i for i in range(len(new)) if new[i] != before[i]]
        sites = {w["rva"] for w in doc["rewrites"]}
        assert changed and all(any(s <= i < s + 5 for s in sites) for i in changed)  # rva == file offset here
        assert new == in_patched[(e["guid"], e["arch"])], e["file"]
        assert scan_image(str(out)).findings == []
        done += 1
    assert done == len(dirty) == 15
    r = _run("scan", str(out))
    assert r.exit_code == 0, r.output


def _with_iofifo(raw: bytes) -> tuple[bytes, int]:
    """`raw` (an X64 module with the Sev IoLib) with its SevIoWriteFifo8 replaced by IoFifo.nasm's
    IoWriteFifo8 (REP only, no room for a loop in place), INT3-padded: (bytes, routine rva)."""
    by = {(s.source, s.routine): s for s in sigs.load() if s.arch == "X64"}
    sev, rep = by[("X64/IoFifoSev.nasm", "SevIoWriteFifo8")], by[("X64/IoFifo.nasm", "IoWriteFifo8")]
    m = sev.pattern.search(raw)
    assert m is not None
    b = bytearray(raw)
    b[m.start() : m.start() + len(sev.code)] = rep.code + b"\xcc" * (len(sev.code) - len(rep.code))
    return bytes(b), m.start()


def test_patch_grows_a_standalone_module_for_iofifo_nasm(extracted, tmp_path):
    """The grow path works on a bare PE: the IoFifo.nasm routine's loop goes into a new section
    and the file grows; the Sev routines beside it are rewritten in place; the output rescans clean."""
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    raw, rva = _with_iofifo((d / e["file"]).read_bytes())
    src = tmp_path / e["file"]
    src.write_bytes(raw)
    res = scan_image(str(src))
    f = next(f for f in res.findings if f.mnemonic == "rep outsb")
    assert f.signature.source == "X64/IoFifo.nasm" and f.function == "IoWriteFifo8"
    out = tmp_path / "grown.efi"
    r = _run("patch", str(src), "-o", str(out), "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    shapes = sorted(w["shape"] for w in doc["rewrites"])
    assert shapes == ["rep-fifo"] + ["sev-fifo"] * 5 and doc["sites_after"] == 0
    grown = next(w for w in doc["rewrites"] if w["shape"] == "rep-fifo")
    assert grown["rva"] == rva and grown["new"].startswith("e9")
    new = out.read_bytes()
    assert len(new) > len(raw)
    root = read_image(str(out))
    assert isinstance(root, BinaryFile) and all_problems(root) == []
    (m,) = iter_modules(root)
    assert [s.name for s in m.image.sections][-1] == ".sioloop" and m.guid == NULL_GUID
    assert scan_image(str(out)).findings == []


def _te_from_pe(pe: bytes) -> bytes:
    """The TE image GenFw would make of a PE32 image: the headers before the section table
    replaced by a TE header (sections keep their file bytes)."""
    lfanew = struct.unpack_from("<I", pe, 0x3C)[0]
    coff = lfanew + 4
    machine, nsec, _t, _p, _n, optsize, _c = struct.unpack_from("<HHIIIHH", pe, coff)
    opt = coff + 20
    magic = struct.unpack_from("<H", pe, opt)[0]
    entry, base_of_code = struct.unpack_from("<II", pe, opt + 16)
    base = struct.unpack_from("<I", pe, opt + 28)[0] if magic == 0x10B else struct.unpack_from("<Q", pe, opt + 24)[0]
    subsystem = struct.unpack_from("<H", pe, opt + 68)[0]
    ddir = opt + (96 if magic == 0x10B else 112)
    rel = struct.unpack_from("<II", pe, ddir + 8 * 5)
    dbg = struct.unpack_from("<II", pe, ddir + 8 * 6)
    table = opt + optsize
    hdr = struct.pack("<2sHBBHIIQIIII", b"VZ", machine, nsec, subsystem, table, entry, base_of_code, base, *rel, *dbg)
    return hdr + pe[table:]


def test_te_file_scans_like_its_pe(extracted, tmp_path):
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "PlatformPei")
    pe = (d / e["file"]).read_bytes()
    te = tmp_path / f"PlatformPei_{e['guid']}.te"
    te.write_bytes(_te_from_pe(pe))
    root = read_image(str(te))
    assert all_problems(root) == []
    (m,) = iter_modules(root)
    assert (m.image.format, m.file_type, m.name, m.guid, m.arch) == ("TE", "TE", "PlatformPei", e["guid"], "IA32")
    res_te, res_pe = scan_image(str(te)), scan_image(str(d / e["file"]))
    assert _sites(res_te.findings) == _sites(res_pe.findings) and len(res_te.findings) == 6
    for f in res_te.findings:
        assert te.read_bytes()[f.fd_offset : f.fd_offset + len(f.bytes) // 2].hex() == f.bytes
    r = _run("info", str(te))
    assert r.exit_code == 0 and "standalone TE IA32 module PlatformPei" in r.output and "TE: stripped size" in r.output


def test_info_shows_the_headers(extracted):
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    r = _run("info", str(d / e["file"]))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].startswith(f"standalone PE32+ X64 module CpuIo2Dxe  guid {e['guid']}")
    assert "subsystem EFI_BOOT_SERVICE_DRIVER (11)" in r.output and f"entry rva 0x{e['entry_rva']:X}" in r.output
    for s in e["sections"]:
        assert any(l.split()[:3] == [s["name"], "rva", f"0x{s['rva']:06X}"] for l in lines), s
    assert f"relocations {e['relocations']}" in r.output and lines[-1] == "1 standalone module, no damage"
    r = _run("info", "--format", "json", str(d / e["file"]))
    assert r.exit_code == 0
    doc = json.loads(r.output)
    jsonschema.validate(doc, json.loads((ROOT / "docs" / "schema" / "info-1.json").read_text()))
    (mod,) = doc["modules"]
    for k in ("name", "guid", "arch", "format", "entry_rva", "image_base", "sections", "relocations", "size"):
        assert mod[k] == e[k], k
    assert [n["kind"] for n in doc["tree"]] == ["image"]
    r = _run("info", "--modules", str(d / e["file"]))
    assert r.exit_code == 0 and "CpuIo2Dxe" in r.output.splitlines()[1]


def test_extract_of_a_standalone_module_round_trips(extracted, tmp_path):
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    out = tmp_path / "again"
    r = _run("extract", str(d / e["file"]), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert (out / e["file"]).read_bytes() == (d / e["file"]).read_bytes()


def test_name_from_the_file_when_not_extracted(extracted, tmp_path):
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    p = tmp_path / "driver.efi"
    p.write_bytes((d / e["file"]).read_bytes())
    (m,) = iter_modules(read_image(str(p)))
    assert (m.name, m.guid) == ("driver", NULL_GUID)  # RELEASE build: no debug path


def test_patched_copy_named_after_the_module_diffs_as_that_module(extracted, tmp_path):
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    out = tmp_path / f"CpuIo2Dxe_{e['guid']}.patched.efi"
    assert _run("patch", str(d / e["file"]), "-o", str(out)).exit_code == 0
    (m,) = iter_modules(read_image(str(out)))
    assert (m.name, m.guid) == ("CpuIo2Dxe", e["guid"])
    r = _run("diff", str(d / e["file"]), str(out))
    assert r.exit_code == 0 and "diff: 0 added, 6 removed, 0 unchanged; modules 0 added, 0 removed" in r.output


def _truncations(raw: bytes) -> list[int]:
    lfanew = struct.unpack_from("<I", raw, 0x3C)[0]
    return sorted({2, 0x3C, 0x40, lfanew + 2, lfanew + 24, lfanew + 0x80, 0x200, 0x241, len(raw) // 2, len(raw) - 1})


def test_truncated_pe_is_one_line_exit_2_everywhere(extracted, tmp_path):
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    raw = (d / e["file"]).read_bytes()
    for cut in _truncations(raw):
        p = tmp_path / f"cut{cut}.efi"
        p.write_bytes(raw[:cut])
        for args in (
            ["info", str(p)],
            ["scan", str(p)],
            ["patch", str(p), "--dry-run"],
            ["decode", "--image", str(p), "f36e"],
        ):
            _one_error(_run(*args))
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))


@pytest.mark.parametrize(
    "data,words",
    [
        (b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40) + b"NOPE" + b"\0" * 200, ["no firmware volume", "not a PE"]),
        (b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x7FFFFFF0) + b"\0" * 200, ["no firmware volume", "not a PE"]),
        (b"VZ" + b"\xff" * 100, ["no firmware volume", "not a TE"]),
        (b"hello, this is not firmware\n" * 100, ["no firmware volume", "not a PE32/TE"]),
    ],
)
def test_non_firmware_garbage_is_one_line_exit_2(tmp_path, data, words):
    p = tmp_path / "junk.bin"
    p.write_bytes(data)
    for cmd in ("info", "scan"):
        _one_error(_run(cmd, str(p)), *words)


def test_signed_binary_is_not_patched(extracted, tmp_path):
    """An Authenticode signature would not verify on the patched copy: refused, nothing written."""
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "CpuIo2Dxe")
    raw = bytearray((d / e["file"]).read_bytes())
    lfanew = struct.unpack_from("<I", raw, 0x3C)[0]
    opt = lfanew + 24
    assert struct.unpack_from("<I", raw, opt + 108)[0] > 4  # NumberOfRvaAndSizes (PE32+)
    struct.pack_into("<II", raw, opt + 112 + 8 * 4, len(raw), 16)
    raw += struct.pack("<IHH", 16, 0x200, 2) + b"\0" * 8  # a WIN_CERTIFICATE header
    src = tmp_path / "signed.efi"
    src.write_bytes(bytes(raw))
    out = tmp_path / "out.efi"
    _one_error(_run("patch", str(src), "-o", str(out)), "Authenticode")
    assert not out.exists()
    r = _run("patch", str(src), "--dry-run")
    assert r.exit_code == 0 and "6 rewrite(s) planned" in r.output


def check_build_outputs(build) -> tuple[int, int]:
    """Each `.efi` an EDK II build writes (X64/NAME.efi) scans on its own to the same sites as
    the module of that name inside the build's FD (XIP modules there are rebased: same sites).
    Returns (modules compared, sites)."""
    fd = str(build / "FV" / "OVMF_CODE.fd")
    root = read_image(fd)
    res = scan_image(fd, root=root)
    per = {}
    for f in res.findings:
        per.setdefault((f.guid, f.arch, f.volume), []).append(f)
    by_name = {}
    for m in iter_modules(root):
        by_name.setdefault(m.name, []).append(_sites(per.get((m.guid, m.arch, m.volume), [])))
    compared = sites = 0
    for p in sorted((build / "X64").glob("*.efi")):
        (m,) = iter_modules(read_image(str(p)))
        if m.name not in by_name:
            continue  # not in this FD (e.g. EnrollDefaultKeys, a shell application)
        got = _sites(scan_image(str(p)).findings)
        assert got in by_name[m.name], p.name
        compared += 1
        sites += len(got)
    return compared, sites


@pytest.mark.build
def test_build_outputs_scan_like_their_modules_in_the_fd():
    from tests.conftest import build_dir

    compared, sites = check_build_outputs(build_dir("2022.11-X64-DEBUG"))
    assert compared >= 100 and sites >= 600


# --- a module whose code the scan cannot find is not checked ----------------------------------


def _section_headers(raw: bytes) -> tuple[int, dict[str, int]]:
    """(offset of AddressOfEntryPoint, {section name: offset of its header}) of a PE file."""
    pe = struct.unpack_from("<I", raw, 0x3C)[0]
    nsec, opt_size = struct.unpack_from("<H", raw, pe + 6)[0], struct.unpack_from("<H", raw, pe + 20)[0]
    table = pe + 24 + opt_size
    names = {raw[table + 40 * i : table + 40 * i + 8].rstrip(b"\0").decode(): table + 40 * i for i in range(nsec)}
    return pe + 24 + 16, names


def _crafted(extracted, tmp_path, name: str, how: str) -> tuple[str, dict]:
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == name)
    raw = bytearray((d / e["file"]).read_bytes())
    entry_at, hdrs = _section_headers(bytes(raw))
    if how == "noexec":  # .text marked as initialised data, read/write
        struct.pack_into("<I", raw, hdrs[".text"] + 36, 0xC0000040)
    elif how == "entry-in-data":
        struct.pack_into("<I", raw, entry_at, struct.unpack_from("<I", raw, hdrs[".data"] + 12)[0])
    elif how == "ebc":  # the COFF machine says EFI byte code: not x86, whatever the bytes are
        struct.pack_into("<H", raw, struct.unpack_from("<I", raw, 0x3C)[0] + 4, 0x0EBC)
    elif how == "no-instruction":  # .text still executable, but 0xD6 is no instruction in 64-bit mode
        size, off = struct.unpack_from("<II", raw, hdrs[".text"] + 16)
        raw[off : off + size] = b"\xd6" * size
    p = tmp_path / e["file"]
    p.write_bytes(raw)
    return str(p), e


@pytest.mark.parametrize(
    "name,how,words",
    [
        ("PlatformPei", "noexec", "no executable section (3 sections, none marked code or executable)"),
        ("StatusCodeHandlerRuntimeDxe", "noexec", "no executable section (2 sections, none marked code or executable)"),
        ("PlatformPei", "entry-in-data", "lies outside its executable sections"),
        ("CpuIo2Dxe", "no-instruction", "module CpuIo2Dxe at 0x0"),
        # it has sites: scanned as x86 it says 6
        ("CpuIo2Dxe", "ebc", "machine EBC is not x86 (IA32/X64), its code is not read by this scanner"),
    ],
)
def test_module_without_executable_code_is_not_checked(extracted, tmp_path, name, how, words):
    p, e = _crafted(extracted, tmp_path, name, how)
    assert all_problems(read_image(p)) == []
    if how == "no-instruction":
        (m,) = scan_image(p).modules
        assert m.code_bytes == 0  # without the rule: "0 sites", exit 0
    r = _run("scan", p)
    _one_error(r, f"{p}: module {name} at 0x0: ", words, "no executable code found: not checked")
    assert r.stdout == ""
    for args in (["check", p], ["patch", p, "--dry-run"], ["baseline", p, "-o", str(tmp_path / "b.json")]):
        _one_error(_run(*args), "no executable code found: not checked")
    if how != "no-instruction":  # decode --image searches executable sections: none to search, or not the entry's
        _one_error(_run("decode", "--image", p, "f3 6e"), "no executable code found: not checked")


def test_every_real_module_has_code_at_its_entry(image_scan):
    """No module of the corpus image is refused by the rule above (none is resource-only)."""
    from ovmftool.scan.scanner import unexecutable_modules

    assert unexecutable_modules(read_image(DEB)) == []
    assert len(image_scan.modules) == 124 and min(m.code_bytes for m in image_scan.modules) > 0


def test_standalone_module_advice_names_no_dsc(extracted):
    """Inside the 4 MB image PlatformPei is an IA32 PEIM of an Ia32X64 build; extracted, nothing
    tells which DSC built it: no DSC is guessed and no series claimed as matching."""
    d, man = extracted
    e = next(e for e in man["modules"] if e["name"] == "PlatformPei")
    assert e["arch"] == "IA32"
    out = _run("scan", str(d / e["file"])).stdout
    tail = " ".join(out[out.index("next steps:") :].split())
    assert "ovmftool plan --edk2 TREE --dsc YOUR.dsc -o DIR" in tail and "OvmfPkgIa32.dsc" not in tail
    assert "edk2-patches/debian" not in tail  # no series named
    assert "no series named: a standalone module does not tell which tree and DSC built it" in tail
    whole = _run("scan", DEB).stdout
    assert "--dsc OvmfPkg/OvmfPkgIa32X64.dsc" in whole  # the image tells: IA32 and X64 modules
