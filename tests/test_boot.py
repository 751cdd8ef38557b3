"""boot-check: real firmware under QEMU (TCG); executed string I/O is a subset of what scan reports."""

import json
import shutil
import struct
import tempfile
import zlib

import jsonschema

import pytest
from click.testing import CliRunner

from ovmftool.boot import varstore as vs
from ovmftool.cli import main
from ovmftool.errors import OvmfToolError
from ovmftool.model import structs as S
from ovmftool.model.parser import read_image

from conftest import CORPUS_IMAGES, ROOT, build_dir

SCHEMA = json.loads((ROOT / "docs" / "schema" / "boot-check-1.json").read_text())

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86 is installed by .ci/run")

DEB = {
    "2022.11": (CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"], None),  # OVMF_VARS_4M.fd beside it
    "2025.02": (CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"], None),
}


def _boot(image, vars_file=None, keep=None):
    args = ["boot-check", "--format", "json", "--timeout", "240", str(image)]
    if vars_file:
        args += ["--vars", str(vars_file)]
    if keep:
        args += ["--keep", str(keep)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.output)
    jsonschema.validate(doc, SCHEMA)
    return r.exit_code, doc


def _scan_sites(image):
    r = CliRunner().invoke(main, ["scan", "--format", "json", str(image)])
    return {(f["guid"], f["rva"]): f for f in json.loads(r.output)["findings"]}


@needs_qemu
@pytest.mark.parametrize("ver", ["2022.11", "2025.02"])
def test_debian_release_reads_fw_cfg_with_rep_insb(ver, tmp_path):
    image, vars_file = DEB[ver]
    code, doc = _boot(image, vars_file)
    assert code == 1 and doc["ended"] == doc["verdict"] == "shell" and doc["finished"]
    assert doc["seconds"] < 180 and doc["stopped_at"] is None
    assert doc["vars"]["source"] == "beside" and doc["vars"]["path"].endswith("OVMF_VARS_4M.fd")
    assert doc["kept"] is None and set(doc["logs"].values()) == {None}  # the temporary directory is gone
    first = doc["first"]
    assert first["mnemonic"] == "rep insb" and first["module"] == "PlatformPei"
    assert first["function"] in ("IoReadFifo8", "SevIoReadFifo8")
    mods = {e["module"] for e in doc["executed"] if e["module"]}
    assert {"PlatformPei", "QemuFwCfgAcpiPlatform"} <= mods  # QemuFwCfgLib's callers
    # the second boot: every one ran, on the fw_cfg data port, and moved whole reads
    assert doc["counted"]
    for e in doc["executed"]:
        assert e["port"] == 0x511 and e["executions"] >= 1 and e["units"] >= e["executions"], e
    # every site is attributed to one module (ambiguous page offsets resolved by matching code)
    assert all(e["module"] for e in doc["executed"]), [e["candidates"] for e in doc["executed"]]
    sites = _scan_sites(image)
    for e in doc["executed"]:  # the static scan is a superset of what runs
        if e["module"]:
            assert (e["guid"], e["rva"]) in sites, e
        else:
            assert e["candidates"], e


@needs_qemu
def test_debug_build_writes_its_log_with_rep_outsb(tmp_path):
    b = build_dir("2022.11-X64-DEBUG") / "FV"
    code, doc = _boot(b / "OVMF_CODE.fd", b / "OVMF_VARS.fd", keep=tmp_path / "logs")
    assert code == 1 and doc["ended"] == "shell"
    outsb = [e for e in doc["executed"] if e["mnemonic"] == "rep outsb"]
    assert len(outsb) > 20 and doc["first"]["mnemonic"] == "rep outsb"
    assert {e["port"] for e in outsb} == {0x402}
    # counts are exact: the bytes REP OUTSB sent to the debug port are the debug log, byte for byte
    log = open(doc["logs"]["count_debug"], "rb").read()
    assert sum(e["units"] for e in outsb) == sum(e["iterations"] for e in outsb) == len(log) > 10000
    assert {e["mapped_by"] for e in doc["executed"]} <= {"debug-log", "xip"}  # the DEBUG log maps every one
    sites = _scan_sites(b / "OVMF_CODE.fd")
    assert all((e["guid"], e["rva"]) in sites for e in doc["executed"])


@needs_qemu
def test_fail_fast_stops_at_the_first(tmp_path):
    image, _ = DEB["2022.11"]
    r = CliRunner().invoke(main, ["boot-check", "--fail-fast", "--timeout", "240", str(image)])
    assert r.exit_code == 1 and "fail-fast" in r.output and "<= first" in r.output


def test_missing_qemu_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    r = CliRunner().invoke(main, ["boot-check", str(DEB["2022.11"][0])])
    assert r.exit_code == 2 and "apt-get install qemu-system-x86" in r.output


# --- the variable store: generated when none is given or beside the image -------------------------

VARS_FILES = sorted(k for k in CORPUS_IMAGES if "/OVMF_VARS" in k)


def test_corpus_has_the_stores_compared_below():
    assert VARS_FILES == ["images/debian-2022.11/OVMF_VARS.fd", "images/debian-2022.11/OVMF_VARS_4M.fd",
                          "images/debian-2025.02/OVMF_VARS_4M.fd"]


@pytest.mark.parametrize("key", VARS_FILES)
def test_generated_store_is_debians_empty_store(key):
    deb = CORPUS_IMAGES[key].read_bytes()
    code = CORPUS_IMAGES[key.replace("VARS", "CODE")]
    lay = vs.layout_for_code(code.stat().st_size)
    gen = vs.empty_store(lay)
    # every header field as OVMF declares it (VarStore.fdf.inc), read back from Debian's file
    _z, fs, length, sig, attrs, hlen, _ck, ext, _r, rev = S.FV_HEADER.unpack_from(deb)
    assert (S.guid_str(fs), length, sig, attrs, hlen, ext, rev) == (
        vs.NV_DATA_FV_GUID, lay.vars_size, b"_FVH", 0x0004FEFF, 0x48, 0, 2)
    assert S.FV_BLOCK.unpack_from(deb, 0x38) == (lay.vars_size // 0x1000, 0x1000)
    assert sum(struct.unpack_from("<36H", deb)) & 0xFFFF == 0  # header checksum
    vguid, vsize, fmt, state, _r1, _r2 = vs.VARIABLE_STORE_HEADER.unpack_from(deb, 0x48)
    assert (S.guid_str(vguid), vsize, fmt, state) == (vs.AUTH_VARIABLE_GUID, lay.live_size - 0x48, 0x5A, 0xFE)
    w = lay.working_offset
    wsig, crc, bits, _r3, queue = vs.FTW_WORKING_HEADER.unpack_from(deb, w)
    assert (S.guid_str(wsig), bits, queue) == (vs.WORKING_BLOCK_GUID, 0xFE, 0x1000 - 32)
    assert crc == zlib.crc32(deb[w : w + 16] + b"\xff" * 8 + deb[w + 24 : w + 32])  # Crc and state erased
    # no variables: everything else is erased (live store after the headers, event log, spare)
    assert set(deb[0x48 + 28 : w]) == set(deb[w + 32 :]) == {0xFF} and deb[:16] == b"\0" * 16
    # and the generated store is that, byte for byte
    assert gen == deb and len(gen) == {2048: 0x20000, 4096: 0x84000}[lay.fd_size_kb]
    vol = read_image_bytes(gen)
    assert vol.children[0].file_system == "NVRAM" and vol.children[0].checksum_ok


def read_image_bytes(data):
    with tempfile.NamedTemporaryFile(suffix=".fd") as f:
        f.write(data)
        f.flush()
        return read_image(f.name)


def test_store_plan(tmp_path):
    two, four = (CORPUS_IMAGES[f"images/debian-2022.11/{n}"] for n in ("OVMF_CODE.fd", "OVMF_CODE_4M.fd"))
    # beside the image: the one of the right size (OVMF_VARS.fd for the 2 MB code, *_4M for the 4M)
    assert vs.plan_vars(two, None).path == two.with_name("OVMF_VARS.fd")
    assert vs.plan_vars(four, None).path == four.with_name("OVMF_VARS_4M.fd")
    # alone: generated, sized by the code image's layout
    for src, size in ((two, 0x20000), (four, 0x84000)):
        alone = tmp_path / src.name
        shutil.copyfile(src, alone)
        p = vs.plan_vars(alone, None)
        assert (p.source, p.size, p.path) == ("generated", size, None)
        assert p.template(tmp_path).read_bytes() == vs.empty_store(p.layout)
    # a store of the wrong size is refused before booting, naming both sizes
    with pytest.raises(OvmfToolError, match="131072-byte variable store.*needs 0x84000 bytes"):
        vs.plan_vars(four, two.with_name("OVMF_VARS.fd"))
    odd = tmp_path / "odd.fd"
    odd.write_bytes(b"\xff" * 0x100000 + two.read_bytes()[-0x1000:])
    with pytest.raises(OvmfToolError, match="no OVMF code layout.*give --vars"):
        vs.plan_vars(odd, None)
    # a whole OVMF.fd (store + code) needs no store
    whole = tmp_path / "OVMF.fd"
    whole.write_bytes(two.with_name("OVMF_VARS.fd").read_bytes() + two.read_bytes())
    assert vs.plan_vars(whole, None).source == "embedded"
    with pytest.raises(OvmfToolError, match="holds its own variable store"):
        vs.plan_vars(whole, two.with_name("OVMF_VARS.fd"))


def test_cli_refuses_a_store_of_the_wrong_size():
    four = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]
    r = CliRunner().invoke(main, ["boot-check", "--vars", str(four.with_name("OVMF_VARS.fd")), str(four)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "needs 0x84000 bytes" in r.stderr


@needs_qemu
def test_bare_2mb_code_boots_with_a_generated_store(tmp_path, monkeypatch):
    """OVMF_CODE.fd alone in a directory: an empty store is built; the temporary directory goes."""
    alone = tmp_path / "img" / "OVMF_CODE.fd"
    alone.parent.mkdir()
    shutil.copyfile(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"], alone)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    r = CliRunner().invoke(main, ["boot-check", "--format", "json", "--no-count", str(alone)])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["verdict"] == "shell" and doc["finished"] and doc["first"]["module"] == "PlatformPei"
    assert doc["vars"] == {"source": "generated", "path": None, "size": 0x20000, "layout": "FD_SIZE_IN_KB=2048"}
    assert any("generated empty 128 KiB store" in n for n in doc["notes"])
    assert list(scratch.iterdir()) == [] and sorted(p.name for p in alone.parent.iterdir()) == ["OVMF_CODE.fd"]


@needs_qemu
def test_bare_4m_code_boots_with_a_generated_store_and_keeps_logs(tmp_path):
    alone = tmp_path / "img" / "OVMF_CODE_4M.fd"
    alone.parent.mkdir()
    shutil.copyfile(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"], alone)
    keep = tmp_path / "logs"
    r = CliRunner().invoke(main, ["boot-check", "--no-count", "--keep", str(keep), str(alone)])
    assert r.exit_code == 1, r.output
    assert "boot ended: shell" in r.stdout and "generated empty 528 KiB store (FD_SIZE_IN_KB=4096" in r.stdout
    assert f"logs kept in {keep} " in r.stdout and b"UEFI Interactive Shell" in (keep / "serial.log").read_bytes()
    assert (keep / "vars-empty.fd").read_bytes() == vs.empty_store(vs.LAYOUTS[2])


# --- boots that do not finish are errors that say where they stopped --------------------------------


def _modified(tmp_path, name, patch: bytes):
    """Debian's 2 MB image with its reset vector entry (the flash's last 16 bytes, at 0xFFFFFFF0)
    starting with `patch`; the volume-top file has no data checksum, so the image stays valid."""
    data = bytearray(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes())
    data[-16 : -16 + len(patch)] = patch
    out = tmp_path / name
    out.write_bytes(bytes(data))
    assert CliRunner().invoke(main, ["info", str(out)]).exit_code == 0  # still parses, no damage
    return out


def _fails(args):
    r = CliRunner().invoke(main, ["boot-check", "--format", "json", *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ovmftool: error: ") and "boot did not finish" in r.stderr
    doc = json.loads(r.stdout)  # the JSON is still printed, with the verdict
    jsonschema.validate(doc, SCHEMA)
    assert not doc["finished"] and doc["stopped_at"] is not None
    return r.stderr, doc


@needs_qemu
def test_spinning_reset_vector_is_a_hang(tmp_path):
    img = _modified(tmp_path, "spin.fd", b"\xeb\xfe")  # jmp $
    err, doc = _fails(["--hang-after", "5", "--timeout", "120", str(img)])
    assert doc["verdict"] == "hang" and doc["quiet_seconds"] >= 5 and doc["seconds"] < 15  # long before the timeout
    st = doc["stopped_at"]
    assert (st["address"], st["source"], st["module"], st["phase"], st["mapped_by"]) == (
        0xFFFFFFF0, "cpu", "ResetVector", "RESET", "flash")
    assert st["rva"] == 0x9A0 - 16 and st["function"] == "sub_990" and st["halted"] is False
    assert "hung for 5 s" in err and "in ResetVector (RESET) at rva 0x990" in err and "no serial or debug" in err


@needs_qemu
def test_triple_fault_is_a_reset(tmp_path):
    img = _modified(tmp_path, "tf.fd", bytes.fromhex("0f011e0000" "cc"))  # lidt [0] (limit 0), int3
    err, doc = _fails([str(img)])
    assert (doc["verdict"], doc["detail"]) == ("reset", "triple fault") and doc["seconds"] < 10
    st = doc["stopped_at"]
    assert (st["address"], st["source"], st["module"]) == (0xFFFFFFF0, "last-translated", "ResetVector")
    assert "the guest reset (triple fault)" in err


@needs_qemu
def test_timeout_names_the_module_that_was_running(tmp_path):
    img = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]
    err, doc = _fails(["--timeout", "5", "--no-count", str(img)])
    assert doc["verdict"] == "timeout" and doc["hang_after"] is None  # 30 s is not below 5 s: off
    st = doc["stopped_at"]
    assert st["source"] == "cpu" and st["module"] and st["phase"] in ("SEC", "PEI", "DXE")
    assert st["mapped_by"] in ("xip", "flash", "code-match") and st["rva"] is not None
    assert "still running at the timeout" in err and f"in {st['module']} ({st['phase']})" in err


def test_qemu_exit_is_an_error(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: pflash: cannot open' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    err, doc = _fails([str(DEB["2022.11"][0])])
    assert doc["verdict"] == "qemu-exit" and doc["detail"] == "status 3: qemu-system-x86_64: pflash: cannot open"
    assert "QEMU exited (status 3" in err
