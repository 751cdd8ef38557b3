"""`decode`: the verdict line from the built-in signatures alone, matches in images, the JSON schema.

The two crash lines are the ones propolis printed in the public write-up that motivated the tool
(shared/background/oxide-at-home-part2-nested-virtualization.txt), copied here as printed.
"""

import json

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.report.decode_report import verdict
from ovmftool.scan import signatures as sigs
from ovmftool.scan.scanner import scan_image
from ovmftool.triage.decode import decode, parse_bytes
from tests.conftest import CODE_IMAGES, CORPUS_IMAGES, ROOT

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
VARS = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS_4M.fd"])

# The write-up's first crash (Oxide's OVMF: the Sev IoLib) and second (after switching a 2022-era
# tree to the non-Sev IoLib, whose IoFifo.nasm is pure REP string I/O), verbatim.
WRITEUP_CRASH_1 = """vCPU 0: Unhandled VM exit: InstEmul(InstEmul {
inst_data: [243, 110, 235, 10, 227, 8, 138, 6, 238, 72, 255, 198, 226, 248, 76],
len: 15
})"""
WRITEUP_CRASH_2 = "inst_data: [243, 110, 76, 137, 198, 195, 252, 72, 135, 202, 73, 135, 240, 243, 102]"

VERDICT_1 = (
    "REP OUTSB: SevIoWriteFifo8 of BaseIoLibIntrinsicSev (X64/IoFifoSev.nasm, Sev; IoWriteFifo8 before "
    "edk2-stable202205)"
)
VERDICT_2 = "REP OUTSB: IoWriteFifo8 of BaseIoLibIntrinsic (X64/IoFifo.nasm, non-Sev)"


def _schema():
    return json.loads((ROOT / "docs" / "schema" / "decode-1.json").read_text())


def _run(*args):
    r = CliRunner().invoke(main, ["decode", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def _json(*args):
    r = _run("--format", "json", *args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    jsonschema.validate(doc, _schema())
    return doc


def test_writeup_lines_are_read_as_propolis_prints_them():
    assert parse_bytes(WRITEUP_CRASH_1).hex(" ") == "f3 6e eb 0a e3 08 8a 06 ee 48 ff c6 e2 f8 4c"
    assert parse_bytes(WRITEUP_CRASH_2).hex(" ") == "f3 6e 4c 89 c6 c3 fc 48 87 ca 49 87 f0 f3 66"


@pytest.mark.parametrize("text,verdict", [(WRITEUP_CRASH_1, VERDICT_1), (WRITEUP_CRASH_2, VERDICT_2)])
def test_first_line_is_the_verdict_without_an_image(text, verdict):
    r = _run(text)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == verdict


def test_writeup_crash_1_is_the_sev_routine_over_all_15_bytes():
    doc = _json(WRITEUP_CRASH_1)
    assert doc["instruction"] == "REP OUTSB" and doc["verdict"] == VERDICT_1
    (m,) = doc["signature_matches"]
    assert (m["routine"], m["library"], m["source"], m["variant"]) == (
        "SevIoWriteFifo8",
        "BaseIoLibIntrinsicSev",
        "X64/IoFifoSev.nasm",
        "Sev",
    )
    assert m["aliases"] == ["IoWriteFifo8"] and m["at_site"] and m["complete"]
    assert m["offset"] == 0x10 and m["matched"] == m["explained"] == 15 and m["followed_by"] == []
    # the other REP OUTSB routines agree on fewer bytes: counted, not listed
    short = doc["shorter_signature_matches"]
    assert short["count"] >= 2 and all(int(n) < 15 for n in short["by_length"])
    assert doc["image"] is None and doc["matches"] is None and doc["shorter_matches"] is None


def test_writeup_crash_2_is_iofifo_nasm_running_into_the_next_routine():
    """IoFifo.nasm's IoWriteFifo8 from its REP OUTSB to its RET (6 bytes), then the first 9 bytes
    of IoWriteFifo16, which follows it in the source file."""
    doc = _json(WRITEUP_CRASH_2)
    assert doc["verdict"] == VERDICT_2
    (m,) = doc["signature_matches"]
    assert (m["routine"], m["library"], m["source"], m["variant"]) == (
        "IoWriteFifo8",
        "BaseIoLibIntrinsic",
        "X64/IoFifo.nasm",
        "non-Sev",
    )
    assert m["offset"] == 7 and m["matched"] == 6 and m["at_site"] and m["complete"]
    assert m["followed_by"] == [{"routines": ["IoWriteFifo16"], "matched": 9}] and m["explained"] == 15
    assert "Sev" not in m["library"]
    r = _run(WRITEUP_CRASH_2)
    assert "then 9 bytes of IoWriteFifo16" in r.output.splitlines()[1]
    assert "shorter signature matches of only the first 2 bytes" in r.output


@pytest.mark.parametrize("sig", [s for s in sigs.load() if s.sites], ids=lambda s: f"{s.arch}-{s.source}-{s.routine}")
def test_every_signature_site_is_named_from_its_own_bytes(sig):
    """A stream that starts at a routine's string I/O instruction names exactly that routine."""
    off = sig.sites[0]
    t = decode(sig.code[off : off + 15], 64 if sig.arch == "X64" else 32)
    assert [(r.arch, r.source, r.routine) for r in t.routines] == [(sig.arch, sig.source, sig.routine)]
    assert t.routines[0].at_site and t.routines[0].offset == off
    assert verdict(t).startswith(t.instruction + ": " + sig.routine + " of " + sig.library + " (" + sig.source)


@pytest.mark.parametrize("image", sorted(CODE_IMAGES), ids=lambda p: p.split("/", 1)[1])
def test_every_real_site_is_named_from_15_bytes_at_its_rip(image):
    """What propolis would print for each string I/O site of the corpus images (15 bytes from the
    instruction) names the routine the scanner's signature match found there."""
    path = str(CODE_IMAGES[image])
    root = read_image(path)
    mods = {(m.volume, m.guid, m.arch): m for m in iter_modules(root)}
    res = scan_image(path, root=root)
    assert len(res.findings) >= 90
    for f in res.findings:
        mem = mods[(f.volume, f.guid, f.arch)].image.memory
        t = decode(mem[f.rva : f.rva + 15], 64 if f.arch == "X64" else 32)
        want = (f.arch, f.signature.source, f.signature.routine)
        assert [(r.arch, r.source, r.routine) for r in t.routines] == [want], (f.module, hex(f.rva), verdict(t))
        assert t.routines[0].library == f.signature.library


def test_too_few_bytes_list_every_routine_they_fit():
    doc = _json("f3 6e")
    assert {(m["arch"], m["routine"]) for m in doc["signature_matches"]} == {
        ("X64", "IoWriteFifo8"),
        ("X64", "SevIoWriteFifo8"),
        ("IA32", "IoWriteFifo8"),
    }
    assert len(doc["signature_matches"]) == 4  # IA32: IoFifo.nasm and IoFifoSev.nasm
    assert doc["verdict"].startswith("REP OUTSB: ") and doc["verdict"].count(" or ") == 3
    assert doc["signature_matches"][0]["arch"] == "X64"  # the decoding's arch first


def test_bits_32_orders_ia32_first_and_names_the_ia32_sev_routine():
    ia32 = next(
        s for s in sigs.load() if s.arch == "IA32" and s.source == "Ia32/IoFifoSev.nasm" and s.routine == "IoWriteFifo8"
    )
    data = ia32.code[ia32.sites[0] :]
    doc = _json("--bits", "32", data.hex())
    assert doc["verdict"] == "REP OUTSB: IoWriteFifo8 of BaseIoLibIntrinsicSev (Ia32/IoFifoSev.nasm, Sev)"


@pytest.mark.parametrize(
    "text,head",
    [
        ("af af af af af af af af af af af af af af af", "SCASD (not string port I/O): no built-in signature matches"),
        ("d6", "undecodable as 64-bit code: no built-in signature matches"),
    ],
)
def test_no_match_says_so_on_the_first_line(text, head):
    r = _run(text)
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith(head), r.output
    doc = _json(text)
    assert doc["signature_matches"] == [] and doc["verdict"].startswith(head)


def test_a_stream_that_differs_names_the_closest_routine_as_such():
    data = bytearray(parse_bytes(WRITEUP_CRASH_1))
    data[10] ^= 1  # inc rsi -> a different instruction
    doc = _json(data.hex())
    assert doc["verdict"].startswith(
        "REP OUTSB: no built-in signature matches all 15 bytes; closest (10 bytes): "
        "SevIoWriteFifo8 of BaseIoLibIntrinsicSev"
    )
    (m,) = doc["signature_matches"]
    assert m["matched"] == 10 and not m["complete"]


def test_image_search_lists_full_matches_and_counts_the_rest():
    doc = _json("--image", DEB, WRITEUP_CRASH_1)
    assert doc["verdict"] == VERDICT_1 and doc["image"]["standalone"] is False
    assert doc["matches"] and all(
        m["matched"] == 15
        and m["is_site"]
        and m["function"] == "SevIoWriteFifo8"
        and m["signature"]["source"] == "X64/IoFifoSev.nasm"
        for m in doc["matches"]
    )
    assert len({m["module"] for m in doc["matches"]}) == len(doc["matches"]) >= 10
    short = doc["shorter_matches"]
    assert short["count"] > 0 and set(short["by_length"]) == {"2"}  # only the REP OUTSB's own bytes
    r = _run("--image", DEB, WRITEUP_CRASH_1)
    lines = r.output.splitlines()
    assert lines[0] == VERDICT_1
    assert sum(l.startswith("match ") for l in lines) == len(doc["matches"])
    assert f"and {short['count']} shorter matches of only the first 2 bytes" in lines


def test_image_without_the_routine_reports_no_match_beyond_the_instruction():
    """Debian's 2022.11 image carries IoFifoSev.nasm only: the IoFifo.nasm crash matches nowhere
    beyond its REP OUTSB, and the verdict still names IoFifo.nasm from the signatures."""
    doc = _json("--image", DEB, WRITEUP_CRASH_2)
    assert doc["verdict"] == VERDICT_2 and doc["matches"] == [] and doc["shorter_matches"]["count"] > 0
    r = _run("--image", DEB, WRITEUP_CRASH_2)
    assert r.output.splitlines()[0] == VERDICT_2
    assert f"no code in {DEB} matches these bytes more than the faulting instruction's 2 bytes" in r.output
    assert not any(l.startswith("match ") for l in r.output.splitlines())


def test_damaged_or_codeless_image_is_an_error_not_no_match(tmp_path):
    bad = tmp_path / "cut.fd"
    bad.write_bytes(open(DEB, "rb").read()[: 0x200000 + 123])
    for image, words in (
        (str(bad), "damaged image"),
        (VARS, "no PE/TE modules"),
        (str(tmp_path / "missing.fd"), "cannot read"),
    ):
        r = _run("--image", image, WRITEUP_CRASH_1)
        assert r.exit_code == 2, r.output
        errs = [l for l in r.output.splitlines() if l.startswith("ovmftool: error:")]
        assert len(errs) == 1 and words in errs[0], r.output
        assert "match" not in r.output.replace("ovmftool: error:", "")


def test_standalone_module_as_image(tmp_path):
    """An extracted module is searched like an image; offsets are file offsets."""
    root = read_image(DEB)
    m = next(m for m in iter_modules(root) if m.name == "CpuIo2Dxe")
    p = tmp_path / f"CpuIo2Dxe_{m.guid}.efi"
    p.write_bytes(m.image.raw)
    doc = _json("--image", str(p), WRITEUP_CRASH_1)
    assert doc["image"]["standalone"] is True
    (hit,) = doc["matches"]
    assert (hit["module"], hit["guid"], hit["volume"], hit["function"]) == ("CpuIo2Dxe", m.guid, "", "SevIoWriteFifo8")
    assert hit["fd_offset"] == m.image.rva_to_offset(hit["rva"])
    assert p.read_bytes()[hit["fd_offset"] : hit["fd_offset"] + 15] == parse_bytes(WRITEUP_CRASH_1)
    r = _run("--image", str(p), WRITEUP_CRASH_1)
    assert f"(file 0x{hit['fd_offset']:X})" in r.output


def test_bad_input_is_one_line_error():
    for text in ("not bytes at all", "[1, 2, 300]", "f3 6"):
        r = _run(text)
        assert r.exit_code == 2 and r.output.startswith("ovmftool: error:") and r.output.count("\n") == 1, r.output


# --- how bytes are read ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,want",
    [
        ("243,110", "f3 6e"),  # decimal without brackets: three digits are decimal
        ("243 110", "f3 6e"),
        ("243, 110, 235, 10", "f3 6e eb 0a"),  # the two-digit 10 reads as the other tokens do
        ("[243, 110, 235, 10]", "f3 6e eb 0a"),
        ("[243 110]", "f3 6e"),
        ("inst_data: [243, 110, 235, 10], len: 2", "f3 6e"),
        ("f3 6e eb 0a", "f3 6e eb 0a"),  # the write-up's hex with spaces
        ("f36eeb0a", "f3 6e eb 0a"),
        ("0xf3 0x6e", "f3 6e"),
        ("0xf3,0x6e,0x10", "f3 6e 10"),
        ("f3:6e:08", "f3 6e 08"),
        ("10 8", "0a 08"),  # a one-digit token is no hex byte: decimal
        ("1011", "10 11"),  # no separators: a hex string
        ("05 07", "05 07"),  # the same bytes either way
    ],
)
def test_bytes_are_read_unambiguously(text, want):
    assert parse_bytes(text).hex(" ") == want


def test_decimal_arguments_are_decimal_on_the_command_line():
    for args in (["243,110"], ["243 110"], ["243", "110"]):
        doc = _json(*args)
        assert doc["bytes"] == "f36e" and doc["instruction"] == "REP OUTSB", args


@pytest.mark.parametrize(
    "args,words",
    [
        (
            ["10 11"],
            "'10 11' could be hex or decimal bytes: give 0x-prefixed hex (0x10 0x11), hex without separators "
            "(1011), or decimal in brackets ([10, 11])",
        ),
        (["10", "11"], "could be hex or decimal bytes"),
        (["24"], "'24' could be hex or decimal bytes: give 0x-prefixed hex (0x24) or decimal in brackets ([24])"),
        (["243 6e"], "'243 6e' mixes decimal (243) and hex (6e) bytes"),
        (["f3 6"], "cannot read '6' in 'f3 6' as a byte: hex bytes have two digits"),
        (["f36"], "hex bytes have two digits"),
        (["[]"], "no instruction bytes given"),
        (["inst_data: []"], "no instruction bytes given"),
        (["[1, 2, 300]"], "instruction bytes must be values 0..255 (300 is not)"),
        (["300"], "(300 is not)"),
    ],
)
def test_ambiguous_or_empty_input_is_one_line_naming_it(args, words):
    r = _run(*args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("ovmftool: error: ") and words in r.output, r.output


def test_listing_shows_the_bytes_that_do_not_decode():
    lines = _run(WRITEUP_CRASH_1).output.splitlines()
    assert "   +14  4c                   (1 byte that does not decode: a truncated instruction)" in lines
    lines = _run(WRITEUP_CRASH_2).output.splitlines()
    assert "   +13  f366                 (2 bytes that do not decode: a truncated instruction)" in lines
    lines = _run("d6").output.splitlines()  # nothing decodes at all
    assert "=> +0   d6                   (1 byte that does not decode: not a valid instruction)" in lines
    # a stream that ends on an instruction boundary has no such line
    assert "do not decode" not in _run("f3 6e").output and "does not decode" not in _run("f3 6e").output
