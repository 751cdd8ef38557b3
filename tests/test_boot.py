"""boot-check: real firmware under QEMU (TCG); executed string I/O is a subset of what scan reports."""

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.boot import plugin
from ovmftool.boot import varstore as vs
from ovmftool.cli import main
from ovmftool.errors import OvmfToolError
from ovmftool.model import structs as S
from ovmftool.model.parser import read_image
from tests.conftest import CORPUS_IMAGES, ROOT, stored

SCHEMA = json.loads((ROOT / "docs" / "schema" / "boot-check-1.json").read_text())

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is installed by .ci/run"
)

DEB = {
    "2022.11": (CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"], None),  # OVMF_VARS_4M.fd beside it
    # given with --vars: the template is copied, never written (checked below)
    "2025.02": (
        CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"],
        CORPUS_IMAGES["images/debian-2025.02/OVMF_VARS_4M.fd"],
    ),
}


_USER_PLUGIN = plugin.plugin_path() if shutil.which("qemu-system-x86_64") else None  # before conftest's XDG_CACHE_HOME


@pytest.fixture(autouse=True)
def _boot_plugin(_result_cache):
    """Boots here run as boot-check runs for the user: in one boot with the TCG plugin when it is
    built (corpus/scripts/qemu-plugin.sh), copied into the test's own cache; else in two boots.
    tests/test_boot_plugin.py compares the two."""
    if _USER_PLUGIN is not None:
        dest = plugin.cache_dir() / _USER_PLUGIN.parent.name / _USER_PLUGIN.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_USER_PLUGIN, dest)


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
    store = vars_file or image.with_name("OVMF_VARS_4M.fd")
    before = hashlib.sha256(store.read_bytes()).hexdigest(), os.stat(store).st_mtime_ns
    code, doc = _boot(image, vars_file)
    assert code == 1 and doc["ended"] == doc["verdict"] == "shell" and doc["finished"]
    assert doc["seconds"] < 180 and doc["stopped_at"] is None
    assert doc["vars"]["source"] == ("given" if vars_file else "beside") and doc["vars"]["path"] == str(store)
    # two boots wrote variables into their copies; the template is untouched
    assert (hashlib.sha256(store.read_bytes()).hexdigest(), os.stat(store).st_mtime_ns) == before
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


@pytest.mark.build
@needs_qemu
def test_debug_build_writes_its_log_with_rep_outsb(tmp_path):
    b = stored("2022.11-X64-DEBUG").fv
    code, doc = _boot(b / "OVMF_CODE.fd", b / "OVMF_VARS.fd", keep=tmp_path / "logs")
    assert code == 1 and doc["ended"] == "shell"
    outsb = [e for e in doc["executed"] if e["mnemonic"] == "rep outsb"]
    assert len(outsb) > 20 and doc["first"]["mnemonic"] == "rep outsb"
    assert {e["port"] for e in outsb} == {0x402}
    # counts are exact: the bytes REP OUTSB sent to the debug port are the debug log, byte for byte
    # (of the boot that counted: the second one, or with the TCG plugin the only one)
    log = open(doc["logs"]["count_debug"] or doc["logs"]["debug"], "rb").read()
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
    assert VARS_FILES == [
        "images/debian-2022.11/OVMF_VARS.fd",
        "images/debian-2022.11/OVMF_VARS_4M.fd",
        "images/debian-2025.02/OVMF_VARS_4M.fd",
        "images/debian-2026.08/OVMF_VARS_4M.fd",
    ]


@pytest.mark.parametrize("key", VARS_FILES)
def test_generated_store_is_debians_empty_store(key):
    deb = CORPUS_IMAGES[key].read_bytes()
    code = CORPUS_IMAGES[key.replace("VARS", "CODE")]
    lay = vs.layout_for_code(code.stat().st_size)
    gen = vs.empty_store(lay)
    # every header field as OVMF declares it (VarStore.fdf.inc), read back from Debian's file
    _z, fs, length, sig, attrs, hlen, _ck, ext, _r, rev = S.FV_HEADER.unpack_from(deb)
    assert (S.guid_str(fs), length, sig, attrs, hlen, ext, rev) == (
        vs.NV_DATA_FV_GUID,
        lay.vars_size,
        b"_FVH",
        0x0004FEFF,
        0x48,
        0,
        2,
    )
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
    with pytest.raises(OvmfToolError, match="neither an OVMF code image.*give --vars"):
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
    # the firmware wrote variables into the copy it booted with (so "the template is never
    # written" is a claim that could fail): the copy is no longer the empty store
    assert (keep / "vars.fd").read_bytes() != vs.empty_store(vs.LAYOUTS[2])


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
        0xFFFFFFF0,
        "cpu",
        "ResetVector",
        "RESET",
        "flash",
    )
    assert st["rva"] == 0x9A0 - 16 and st["function"] == "sub_990" and st["halted"] is False
    assert "hung for 5 s" in err and "in ResetVector (RESET) at rva 0x990" in err and "no serial or debug" in err


@needs_qemu
def test_triple_fault_is_a_reset(tmp_path):
    img = _modified(tmp_path, "tf.fd", bytes.fromhex("0f011e0000cc"))  # lidt [0] (limit 0), int3
    err, doc = _fails([str(img)])
    # at once, not at the 180 s timeout (a loaded machine starts QEMU slowly: no tighter bound)
    assert (doc["verdict"], doc["detail"]) == ("reset", "triple fault") and doc["seconds"] < 60
    st = doc["stopped_at"]
    assert (st["address"], st["source"], st["module"]) == (0xFFFFFFF0, "last-translated", "ResetVector")
    assert "the guest reset (triple fault)" in err


@needs_qemu
def test_timeout_names_the_module_that_was_running(tmp_path, monkeypatch):
    # PlatformPei's entry point made `jmp $`: the boot runs on in PlatformPei until the timeout
    # (hang detection is off: 30 s is not below 5 s); both boot paths
    from ovmftool.ops.assemble import Edit, assemble
    from ovmftool.ops.modules import iter_modules

    root = read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]))
    m = next(m for m in iter_modules(root) if m.name == "PlatformPei")
    off = m.image.rva_to_offset(m.image.entry_rva)
    out, _ = assemble(root, [Edit(m.image, off, bytes(m.image.data[off : off + 2]), b"\xeb\xfe")])
    img = tmp_path / "OVMF_CODE.fd"
    img.write_bytes(out)
    monkeypatch.setenv("OVMFTOOL_BOOT_PLUGIN", "0")
    err, doc = _fails(["--timeout", "5", "--no-count", str(img)])
    assert doc["stopped_at"]["module"] == "PlatformPei"
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


# --- refused before booting ------------------------------------------------------------------------


@pytest.fixture
def no_boot(tmp_path, monkeypatch):
    """A qemu-system-x86_64 on PATH that records being run: the refusals below never start it."""
    d = tmp_path / "fakebin"
    d.mkdir()
    ran = tmp_path / "qemu-ran"
    fake = d / "qemu-system-x86_64"
    fake.write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    yield ran
    assert not ran.exists(), "QEMU was started"


def _refused(args, *words):
    r = CliRunner().invoke(main, ["boot-check", *args])
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("ovmftool: error: "), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def _alone(tmp_path, key, name=None):
    src = CORPUS_IMAGES[key]
    d = tmp_path / "img"
    d.mkdir(exist_ok=True)
    dst = d / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


def test_wrong_size_store_beside_is_refused(tmp_path, no_boot):
    """2022.11's OVMF_VARS_4M.fd renamed OVMF_VARS.fd beside the 2 MB OVMF_CODE.fd: not silently
    replaced by a generated store."""
    code = _alone(tmp_path, "images/debian-2022.11/OVMF_CODE.fd")
    store = _alone(tmp_path, "images/debian-2022.11/OVMF_VARS_4M.fd", "OVMF_VARS.fd")
    _refused([str(code)], f"{store}: a 540672-byte variable store beside {code}", "needs 0x20000 bytes", "give --vars")
    # several candidates, none of the right size: the best is named, the others listed
    four = _alone(tmp_path, "images/debian-2022.11/OVMF_CODE_4M.fd")
    store.unlink()
    _alone(tmp_path, "images/debian-2022.11/OVMF_VARS.fd", "OVMF_VARS_4M.fd")
    _alone(tmp_path, "images/debian-2022.11/OVMF_VARS.fd", "OVMF_VARS.fd")
    _refused(
        [str(four)],
        f"{four.with_name('OVMF_VARS_4M.fd')}: a 131072-byte variable store",
        "needs 0x84000 bytes",
        "also beside it: OVMF_VARS.fd, 131072 bytes",
    )
    # the right size beside: used, whatever else is there
    assert vs.plan_vars(code, None).path == code.with_name("OVMF_VARS.fd")


def test_image_of_no_ovmf_size_is_refused_without_vars(tmp_path, no_boot):
    code = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"].read_bytes()
    d = tmp_path / "img"
    d.mkdir()
    three = d / "three.fd"  # 3 MiB: padding below the whole 2 MB code image
    three.write_bytes(b"\xff" * (0x300000 - len(code)) + code)
    one = d / "one.fd"  # 1 MiB, the size of a whole FD_SIZE_1MB OVMF.fd, but no store at its start
    one.write_bytes(b"\xff" * (0x100000 - 0x34000) + code[-0x34000:])  # SECFV, the last volume
    for img in (three, one):
        assert CliRunner().invoke(main, ["info", str(img)]).exit_code == 0  # parses, undamaged
    _refused([str(three)], "three.fd is 3145728 bytes (0x300000): neither an OVMF code image", "give --vars VARS")
    _refused(
        [str(one)],
        "one.fd is 1048576 bytes (0x100000): the size of a whole 1 MiB OVMF.fd, but it does not "
        "start with its variable store",
        "give --vars VARS",
    )
    # a store beside such an image is not taken on trust: its size cannot be checked
    shutil.copyfile(CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS.fd"], d / "OVMF_VARS.fd")
    _refused([str(three)], "neither an OVMF code image", "give --vars")
    # given: the user's choice (a flash store, a multiple of 4 KiB)
    p = vs.plan_vars(three, d / "OVMF_VARS.fd")
    assert (p.source, p.size, p.layout) == ("given", 0x20000, None)


def test_standalone_module_is_refused(tmp_path, no_boot):
    root = read_image(str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]))
    from ovmftool.ops.modules import iter_modules

    sec = next(m for m in iter_modules(root) if m.name == "SecMain")
    efi = tmp_path / "SecMain.efi"
    efi.write_bytes(sec.image.raw)
    assert type(read_image(str(efi))).__name__ == "BinaryFile"
    err = _refused([str(efi)])
    assert err == (
        f"ovmftool: error: {efi} is a standalone UEFI module, not a flash image: boot-check boots a "
        "firmware image (OVMF_CODE.fd or OVMF.fd)\n"
    )


def test_keep_is_checked_before_any_work(tmp_path, no_boot):
    image = str(DEB["2022.11"][0])
    missing = tmp_path / "missing" / "logs"
    _refused(["--keep", str(missing), image], f"cannot write {missing}: No such file or directory")
    assert not missing.parent.exists()  # no parent made
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    _refused(["--keep", str(full), image], f"cannot write {full}: Directory not empty")
    assert sorted(p.name for p in full.iterdir()) == ["x"]
    afile = tmp_path / "afile"
    afile.write_text("")
    r = CliRunner().invoke(main, ["boot-check", "--keep", str(afile), image])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "afile" in r.stderr


# --- stop signals: QEMU killed, the work directory removed ------------------------------------------


def test_stop_on_signals_raises_terminated_and_respects_nohup():
    from ovmftool.boot.check import Terminated, stop_on_signals

    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's default (the suite may run under nohup)
    try:
        with pytest.raises(Terminated) as ei:
            with stop_on_signals():
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(5)  # interrupted
        assert (ei.value.name, ei.value.exit_code) == ("SIGHUP", 129)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # under nohup: stays ignored
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, inherited)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@needs_qemu
def test_sigterm_kills_qemu_and_removes_the_work_directory(tmp_path):
    """A cancelled CI job: SIGTERM to boot-check (not to QEMU) a couple of seconds into the boot."""
    alone = _alone(tmp_path, "images/debian-2022.11/OVMF_CODE.fd")  # generated store: vars-empty.fd too
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    p = subprocess.Popen(
        [sys.executable, "-m", "ovmftool", "boot-check", "--no-count", str(alone)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        qemu, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            qemu = [c for c in _children(p.pid) if "qemu" in _comm(c)]
            works = list(scratch.glob("ovmftool-bootcheck-*"))
            if qemu and works and (works[0] / "trace.log").is_file() and (works[0] / "trace.log").stat().st_size:
                break
            time.sleep(0.2)
        assert qemu, "QEMU never started"
        assert {x.name for x in works[0].iterdir()} >= {"vars.fd", "vars-empty.fd", "trace.log", "serial.log"}
        time.sleep(2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 143, err
    assert out == "" and err == (
        "ovmftool: terminated by SIGTERM: boot-check stopped, QEMU killed, its work directory removed\n"
    )
    assert list(scratch.iterdir()) == []
    assert "qemu" not in _comm(qemu[0])  # killed, not left running on its own
    assert sorted(x.name for x in alone.parent.iterdir()) == ["OVMF_CODE.fd"]  # nothing beside the image


@needs_qemu
def test_an_image_whose_path_holds_commas_boots(tmp_path):
    """QEMU's -drive option list ends a value at a comma (`file=a,readonly=off.fd` is two
    options): the image's path is written with each comma doubled, and the flash stays read-only."""
    code, vars_file = DEB["2025.02"]
    d = tmp_path / "a,b"
    d.mkdir()
    image = d / "OVMF_CODE,readonly=off.fd"
    shutil.copyfile(code, image)
    before = image.read_bytes()
    rc, doc = _boot(image, vars_file)
    assert doc["verdict"] == "shell" and rc == 1 and doc["executed"]
    assert image.read_bytes() == before
