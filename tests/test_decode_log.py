"""`decode --log`: every InstEmul exit of a propolis/sled-agent log, one verdict per distinct
instruction with counts, plain text and bunyan JSON, redacted bytes, no exits, unreadable logs,
the JSON schema, and matches in a corpus image.

The crash lines are the ones propolis printed in the public write-up that motivated the tool
(shared/background/oxide-at-home-part2-nested-virtualization.txt), copied here as printed; the
lines around them are plausible propolis-server output (slog-term text, bunyan JSON records).
"""

import bz2
import gzip
import json

import jsonschema
import pytest
from click.testing import CliRunner
from referencing import Registry, Resource

from ovmftool.cli import main
from ovmftool.report.decode_report import log_verdict, verdict
from ovmftool.triage.log import MAX_LINE, read_log
from tests.conftest import CORPUS_IMAGES, MANIFEST, ROOT, beside_checkout

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
WRITEUP = beside_checkout("background/oxide-at-home-part2-nested-virtualization.txt")

# The write-up's crashes, verbatim: first with production propolis (bytes redacted), then with a
# debug build (Oxide's OVMF: the Sev IoLib), then after switching the DSC to the non-Sev IoLib of a
# 2021-era tree (IoFifo.nasm, pure REP string I/O; the write-up shows only the inst_data line).
PANIC_AT = "thread 'vcpu-0' panicked at bin/propolis-server/src/lib/vm/state_driver.rs:324:9:"
REDACTED = """vCPU 0: Unhandled VM exit: InstEmul(InstEmul {
inst_data: <guest data redacted>,
len: 15
})"""
CRASH_1 = """vCPU 0: Unhandled VM exit: InstEmul(InstEmul {
inst_data: [243, 110, 235, 10, 227, 8, 138, 6, 238, 72, 255, 198, 226, 248, 76],
len: 15
})"""
CRASH_2_DATA = "inst_data: [243, 110, 76, 137, 198, 195, 252, 72, 135, 202, 73, 135, 240, 243, 102]"
CRASH_2 = f"vCPU 0: Unhandled VM exit: InstEmul(InstEmul {{\n{CRASH_2_DATA},\nlen: 15\n}})"

VERDICT_1 = (
    "REP OUTSB: SevIoWriteFifo8 of BaseIoLibIntrinsicSev (X64/IoFifoSev.nasm, Sev; IoWriteFifo8 before "
    "edk2-stable202205)"
)
VERDICT_2 = "REP OUTSB: IoWriteFifo8 of BaseIoLibIntrinsic (X64/IoFifo.nasm, non-Sev)"
BYTES_1 = "f36eeb0ae3088a06ee48ffc6e2f84c"
BYTES_2 = "f36e4c89c6c3fc4887ca4987f0f366"
VM = "0b8e4c2a-7d51-4f0e-9c3b-5a6d7e8f9012"


def _start(ts):
    return f"{ts} INFO Starting vCPU thread, vcpu: 0, component: vcpu_tasks"


def plain_log() -> str:
    """Three boots of one VM as propolis-server's SMF log shows them (slog-term on a terminal,
    the panic on stderr): redacted, then the Sev crash twice, then the non-Sev crash."""
    out = []
    for ts, crash in (
        ("Jan 05 10:00:01.100", REDACTED),
        ("Jan 05 10:05:01.100", CRASH_1),
        ("Jan 05 10:09:12.900", CRASH_1),
        ("Jan 05 11:30:44.250", CRASH_2),
    ):
        out += [
            f"{ts} INFO Starting instance, reason: ExplicitRequest, component: vm_state_driver",
            _start(ts),
            PANIC_AT,
            crash,
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]
    return "\n".join(out) + "\n"


def _record(msg, time, **fields):
    rec = {"msg": msg, "v": 0, "name": "propolis-server", "level": 30, "time": time, "hostname": "sled-07", "pid": 4242}
    rec.update(fields)
    return json.dumps(rec)


def bunyan_log() -> str:
    """propolis-server's bunyan records (stdout not a terminal) with the panics in a record's
    `msg` and in another field, and one plain panic on stderr between them."""
    return (
        "\n".join(
            [
                _record("Starting instance", "2026-01-05T10:05:01.100Z", component="vm_state_driver", vm_id=VM),
                _record(CRASH_1, "2026-01-05T10:05:02.250Z", component="vcpu_tasks", vcpu=0, vm_id=VM, level=60),
                _record(
                    "vCPU thread failed",
                    "2026-01-05T10:09:13.000Z",
                    component="vcpu_tasks",
                    vm_id=VM,
                    level=50,
                    err=CRASH_1.replace("vCPU 0", "vCPU 1"),
                ),
                PANIC_AT.replace("vcpu-0", "vcpu-1"),
                CRASH_2.replace("vCPU 0", "vCPU 1"),
                _record(
                    "Propolis monitor unexpectedly reported no instance, marking as failed",
                    "2026-01-05T11:30:45.000Z",
                    component="InstanceManager",
                    instance_id=VM,
                    name="sled-agent",
                ),
                _record(REDACTED, "2026-01-05T12:00:00.000Z", component="vcpu_tasks", vcpu=0, vm_id=VM, level=60),
            ]
        )
        + "\n"
    )


def _run(*args, input=None):
    r = CliRunner().invoke(main, ["decode", *args], input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def _write(tmp_path, text, name="propolis.log"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _validate(doc):
    schemas = {n: json.loads((ROOT / "docs" / "schema" / f"{n}-1.json").read_text()) for n in ("decode", "decode-log")}
    reg = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    jsonschema.Draft202012Validator(schemas["decode-log"], registry=reg).validate(doc)


def test_crash_lines_are_the_writeups_verbatim():
    if not WRITEUP.exists():
        pytest.skip(f"{WRITEUP} not found: shared/background is beside no parent of the checkout")
    text = WRITEUP.read_text()
    for s in (PANIC_AT, REDACTED, CRASH_1, CRASH_2_DATA):
        assert s in text


def test_plain_log_one_verdict_per_instruction_with_counts(tmp_path):
    r = _run("--log", _write(tmp_path, plain_log()))
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0] == "4 InstEmul exits in the log: 2 distinct instructions, 1 with the bytes redacted"
    assert f"2 exits: {VERDICT_1}" in lines and f"1 exit: {VERDICT_2}" in lines
    assert lines.index(f"2 exits: {VERDICT_1}") < lines.index(f"1 exit: {VERDICT_2}")  # most exits first
    # where: the line each panic's text starts on (8 lines a boot, the panic text 4th); the panic
    # on stderr carries no time and names no VM (the slog-term lines around it do not count)
    assert "  lines 12, 20; no time on its lines; vCPU 0; VM not named on its lines" in lines
    assert "  line 28; no time on its lines; vCPU 0; VM not named on its lines" in lines
    assert "1 exit with the bytes redacted: the instruction is unknown" in lines
    assert "  line 4; no time on its lines; vCPU 0; VM not named on its lines" in lines
    assert "omicron-build" in r.output and "DISPLAY_GUEST_DATA" in r.output
    assert lines[-1] == f"log: {tmp_path / 'propolis.log'} (32 lines read)"
    # the routine details come from the same decode as `decode TEXT`
    assert "  SevIoWriteFifo8+0x10 (its REP OUTSB): all 15 bytes match; signature from EDK II 2022.11, 2025.02" in lines
    assert any(
        x.startswith(
            "  IoWriteFifo8+0x7 (its REP OUTSB): the routine's last 6 bytes match, then 9 bytes of IoWriteFifo16"
        )
        for x in lines
    )


def test_bunyan_json_log_says_when_and_which_vm(tmp_path):
    lt = read_log(_write(tmp_path, bunyan_log()))
    assert log_verdict(lt) == "4 InstEmul exits in the log: 2 distinct instructions, 1 with the bytes redacted"
    sev, nonsev = lt.instructions
    assert (sev.data.hex(), sev.count, sev.lines, nonsev.data.hex(), nonsev.count, nonsev.lines) == (
        BYTES_1,
        2,
        [2, 3],
        BYTES_2,
        1,
        [5],
    )
    assert verdict(sev.triage) == VERDICT_1 and verdict(nonsev.triage) == VERDICT_2
    assert (sev.first_time, sev.last_time, sev.untimed) == ("2026-01-05T10:05:02.250Z", "2026-01-05T10:09:13.000Z", 0)
    assert sev.vms == {f"vm_id={VM}"} and sev.hosts == {"sled-07"} and sev.vcpus == {0, 1}
    # the plain panic between the records carries no time or VM of its own
    assert (nonsev.first_time, nonsev.untimed, nonsev.vms, nonsev.vcpus) == (None, 1, set(), {1})
    assert (lt.redacted.count, lt.redacted.lines, lt.redacted.first_time) == (1, [10], "2026-01-05T12:00:00.000Z")
    r = _run("--log", _write(tmp_path, bunyan_log()))
    assert r.exit_code == 1
    assert (
        f"  lines 2, 3; first 2026-01-05T10:05:02.250Z, last 2026-01-05T10:09:13.000Z; vCPUs 0, 1; vm_id={VM}; "
        "host sled-07"
    ) in r.output.splitlines()


@pytest.mark.parametrize(
    "text, want",
    [
        # Rust's {:?} on one line (propolis-server before pretty-printing; propolis-standalone)
        ("vCPU 2: Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 110, 235, 10], len: 4 })", "f36eeb0a"),
        # {:#?} without GuestData: one byte a line, trailing commas
        (
            "vCPU 0: Unhandled VM exit: InstEmul(\n    InstEmul {\n        inst_data: [\n"
            "            243,\n            110,\n"
            "        ],\n        len: 2,\n    },\n)",
            "f36e",
        ),
        # {:x?}: hex without 0x (single digits for bytes under 0x10), and {:#x?}
        ("Unhandled VM exit: InstEmul(InstEmul { inst_data: [f3, 6e, eb, a, e3, 8], len: 6 })", "f36eeb0ae308"),
        ("Unhandled VM exit: InstEmul(InstEmul { inst_data: [0xf3, 0x6e], len: 0x2 })", "f36e"),
        # a hex string field
        ('Unhandled VM exit: InstEmul(InstEmul { inst_data: "f36eeb0a", len: 4 })', "f36eeb0a"),
        # len cuts the 15 bytes bhyve copies to the valid ones
        (
            "Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 110, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "
            "len: 2 })",
            "f36e",
        ),
        # propolis-standalone's log line (issue propolis#1168)
        (
            "ERRO Unhandled exit @rip:00859f60 InstEmul(InstEmul { inst_data: [243, 108, 235, 10, 227, 8, 236, 136, 7, "
            "72, 255, 199, 226, 248, 76], len: 15 })",
            "f36ceb0ae308ec880748ffc7e2f84c",
        ),
    ],
)
def test_every_formatting_of_inst_data(tmp_path, text, want):
    lt = read_log(_write(tmp_path, "INFO before\n" + text + "\nINFO after\n"))
    assert [g.data.hex() for g in lt.instructions] == [want] and lt.instructions[0].lines == [2]
    assert lt.redacted.count == lt.unreadable.count == 0


def test_standalone_rip_and_vcpu_are_kept(tmp_path):
    lt = read_log(
        _write(
            tmp_path,
            "vCPU 3: Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 108], len: 2 })\n"
            "ERRO Unhandled exit @rip:00859f60 InstEmul(InstEmul { inst_data: [243, 108], len: 2 })\n",
        )
    )
    (g,) = lt.instructions
    assert (g.count, g.vcpus, g.rips, g.triage.instruction) == (2, {3}, {"859f60"}, "REP INSB")


def test_redacted_only_is_a_finding_with_how_to_get_the_bytes(tmp_path):
    log = "\n".join(["INFO Starting instance", PANIC_AT, REDACTED, PANIC_AT, REDACTED]) + "\n"
    r = _run("--log", _write(tmp_path, log))
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == "2 InstEmul exits in the log: 2 with the bytes redacted"
    assert "2 exits with the bytes redacted: the instruction is unknown" in lines
    assert "omicron-build" in r.output and "lib/propolis/src/common.rs" in r.output
    doc = json.loads(_run("--log", _write(tmp_path, log), "--format", "json").output)
    _validate(doc)
    assert doc["instructions"] == [] and doc["redacted"]["count"] == 2 and doc["redacted"]["lines"] == [3, 8]
    assert "omicron-build" in doc["redacted"]["how_to_get_bytes"]


@pytest.mark.parametrize(
    "text", ["", "INFO Starting vCPU thread\nINFO vCPU paused\n", "vCPU 0: Unhandled VM exit: Paging(0x1000, 1)\n"]
)
def test_no_instemul_exit_is_exit_0(tmp_path, text):
    r = _run("--log", _write(tmp_path, text))
    assert r.exit_code == 0, r.output
    n = text.count("\n")
    assert r.output.splitlines()[0] == f"no InstEmul exits in the log ({n} line{'s' * (n != 1)} read)"
    doc = json.loads(_run("--log", _write(tmp_path, text), "--format", "json").output)
    _validate(doc)
    assert doc["exits"] == 0 and doc["instructions"] == [] and doc["redacted"]["how_to_get_bytes"] is None


def test_cut_off_exit_is_unreadable_not_lost(tmp_path):
    lt = read_log(_write(tmp_path, "vCPU 0: Unhandled VM exit: InstEmul(InstEmul {\ninst_data: [243, 110, 235"))
    assert lt.exits == 1 and lt.unreadable.count == 1 and lt.unreadable.reasons == {"inst_data list is not closed": 1}
    r = _run("--log", _write(tmp_path, "x: InstEmul(InstEmul { inst_data: [243, 999], len: 2 })\n"))
    assert r.exit_code == 1 and "inst_data has values over 255 (1)" in r.output


def test_unreadable_log_is_exit_2_one_line(tmp_path):
    bad_gz = tmp_path / "bad.log.gz"
    bad_gz.write_bytes(gzip.compress(plain_log().encode())[:40])
    for path, words in (
        (str(tmp_path / "missing.log"), "No such file"),
        (str(tmp_path), "directory"),
        (DEB, "not a text log"),
        (str(bad_gz), "cannot read"),
    ):
        r = _run("--log", path)
        assert r.exit_code == 2, (path, r.output)
        assert r.output.count("\n") == 1 and r.output.startswith("ovmftool: error: ") and words in r.output, r.output


def test_compressed_logs_and_stdin(tmp_path):
    gz, bz = tmp_path / "p.log.gz", tmp_path / "p.log.bz2"
    gz.write_bytes(gzip.compress(plain_log().encode()))
    bz.write_bytes(bz2.compress(bunyan_log().encode()))
    first = "4 InstEmul exits in the log: 2 distinct instructions, 1 with the bytes redacted"
    for path in (gz, bz):
        r = _run("--log", str(path))
        assert r.exit_code == 1 and r.output.splitlines()[0] == first
    r = _run("--log", "-", input=plain_log())
    assert r.exit_code == 1 and r.output.splitlines()[0] == first
    assert r.output.splitlines()[-1] == "log: standard input (32 lines read)"
    doc = json.loads(_run("--log", str(gz), "--format", "json").output)
    assert doc["log"]["compression"] == "gzip"


def test_long_lines_are_cut_not_held(tmp_path):
    p = tmp_path / "long.log"
    p.write_bytes(b"x" * (3 * MAX_LINE) + b"\n" + CRASH_1.encode() + b"\n")
    lt = read_log(str(p))
    assert lt.lines_read == 2 + CRASH_1.count("\n") and [g.lines for g in lt.instructions] == [[2]]


def test_log_text_cannot_reach_the_terminal(tmp_path):
    log = _record(CRASH_1, "2026-01-05T10:05:02Z", hostname="sled\x1b[2J\u202e", vm_id="a\nb") + "\n"
    r = _run("--log", _write(tmp_path, log))
    assert r.exit_code == 1 and "\x1b" not in r.output and "\u202e" not in r.output
    assert "vm_id=a b" in r.output


def test_json_validates_and_matches_the_text(tmp_path):
    r = _run("--log", _write(tmp_path, bunyan_log()), "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.output)
    _validate(doc)
    assert doc["verdict"] == "4 InstEmul exits in the log: 2 distinct instructions, 1 with the bytes redacted"
    assert [(i["bytes"], i["count"], i["verdict"]) for i in doc["instructions"]] == [
        (BYTES_1, 2, VERDICT_1),
        (BYTES_2, 1, VERDICT_2),
    ]
    sev = doc["instructions"][0]
    assert sev["decode"]["schema_version"] == "ovmftool.decode/1" and sev["decode"]["bytes"] == BYTES_1
    assert sev["vms"] == [f"vm_id={VM}"] and sev["first_time"] == "2026-01-05T10:05:02.250Z"
    assert doc["image"] is None and sev["decode"]["matches"] is None
    # the schema catches a document that is not of its form
    doc["instructions"][0]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_with_image_finds_the_sev_routine_and_not_iofifo_nasm(tmp_path):
    """Debian's 2022.11 OVMF builds the Sev IoLib: the write-up's first crash is at a scanned site
    in SevIoWriteFifo8 in many modules, all 15 bytes; the second (IoFifo.nasm) is nowhere."""
    r = _run("--log", _write(tmp_path, plain_log()), "--image", DEB, "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.output)
    _validate(doc)
    sha = next(e["sha256"] for e in MANIFEST["images"] if e["path"] == "images/debian-2022.11/OVMF_CODE_4M.fd")
    assert doc["image"] == {"path": DEB, "sha256": sha, "standalone": False}
    sev, nonsev = doc["instructions"]
    ms = sev["decode"]["matches"]
    assert len(ms) > 5 and all(m["matched"] == 15 and m["is_site"] and m["function"] == "SevIoWriteFifo8" for m in ms)
    assert {m["signature"]["source"] for m in ms} == {"X64/IoFifoSev.nasm"}
    assert nonsev["decode"]["matches"] == [] and nonsev["decode"]["shorter_matches"]["count"] > 0
    text = _run("--log", _write(tmp_path, plain_log()), "--image", DEB).output
    assert f"  match 15/15 bytes: {ms[0]['module']} X64 rva 0x{ms[0]['rva']:X}" in text
    assert f"  no code in {DEB} matches these bytes more than the faulting instruction's 2 bytes" in text


def test_damaged_or_codeless_image_with_a_log_is_an_error(tmp_path):
    """Even a log without exits: an --image that cannot be checked is not a clean answer."""
    cut = tmp_path / "cut.fd"
    cut.write_bytes(open(DEB, "rb").read()[: 0x200000 + 123])
    vars_ = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS_4M.fd"])
    for image, words in ((str(cut), "damaged image"), (vars_, "no PE/TE modules")):
        for log in ("INFO nothing here\n", plain_log()):
            r = _run("--log", _write(tmp_path, log), "--image", image)
            assert r.exit_code == 2 and r.output.startswith("ovmftool: error: ") and words in r.output, r.output
            assert r.output.count("\n") == 1


@pytest.mark.parametrize("args", [[], ["f36e", "--log", "x.log"]])
def test_bytes_or_log_not_both_nor_neither(args):
    r = _run(*args)
    assert r.exit_code == 2 and r.output.startswith("ovmftool: error: decode: ") and r.output.count("\n") == 1


def test_distinct_streams_past_the_cap_are_counted_not_held(tmp_path):
    from ovmftool.triage.log import MAX_DISTINCT

    n = MAX_DISTINCT + 44
    log = "".join(
        f"vCPU 0: Unhandled VM exit: InstEmul(InstEmul {{ inst_data: [243, 110, {i // 256}, {i % 256}], len: 4 }})\n"
        for i in range(n)
    )
    r = _run("--log", _write(tmp_path, log), "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.output)
    _validate(doc)
    assert len(doc["instructions"]) == MAX_DISTINCT and doc["more"]["count"] == 44 and doc["exits"] == n
    assert doc["more"]["lines"][0] == MAX_DISTINCT + 1
    assert all(i["verdict"].startswith("REP OUTSB") for i in doc["instructions"])
    assert (
        doc["verdict"] == f"{n} InstEmul exits in the log: {MAX_DISTINCT} distinct instructions, 44 of further "
        "instructions not decoded"
    )


def test_plain_text_time_and_vm_fields_are_read(tmp_path):
    """An ISO time opening the line and slog-term's `key: value` pairs name when and which VM."""
    log = (
        f"2026-01-05T10:05:02.250Z ERRO vCPU 0: Unhandled VM exit: InstEmul(InstEmul {{ inst_data: [243, 110], "
        f"len: 2 }}), instance_id: {VM.upper()}\n"
    )
    (g,) = read_log(_write(tmp_path, log)).instructions
    assert (g.first_time, g.vms, g.untimed) == ("2026-01-05T10:05:02.250Z", {f"instance_id={VM}"}, 0)
