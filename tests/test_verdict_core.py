"""The gate's verdict core, edge by edge (waiver matching, expiry on the day itself, baseline
entries by path, real path and contents, several inputs in order): each test here kills mutants
that mutation testing (`mutmut`, bench/RESULTS.md) found surviving the rest of the suite, on
Debian's real 2022.11 image."""

import datetime as dt
import fnmatch
import json
import os
import re
import struct
import subprocess
import sys
from collections import Counter

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.errors import OvmfToolError
from ovmftool.gate.baseline import (
    BaselineImage,
    Waiver,
    baseline_for,
    check,
    check_images,
    load_baseline_images,
    load_waivers,
)
from ovmftool.gate.diff import DiffResult
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.report.gate_report import baseline_doc, baseline_line, check_exit, check_lines, check_report, diff_text
from ovmftool.scan import signatures as sigs
from ovmftool.scan.identity import site_keys
from ovmftool.scan.modulecode import exec_ranges
from ovmftool.scan.scanner import Finding, ScanFailure, ScanResult, ScanSkipped, scan_image
from tests.conftest import CORPUS_IMAGES, ROOT

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
DEB_2M = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"])
TODAY = dt.date(2030, 6, 15)


@pytest.fixture(scope="module")
def scan() -> ScanResult:
    return scan_image(DEB, jobs=1)


def _module_with_two_routines(scan: ScanResult):
    by_module: dict[str, set[str]] = {}
    for f in scan.findings:
        by_module.setdefault(f.module, set()).add(f.function)
    name = next(
        m for m, fns in sorted(by_module.items()) if len(fns) >= 2 and any(fn.startswith("IoRead") for fn in fns)
    )
    return name, [f for f in scan.findings if f.module == name]


def test_waiver_matches_module_function_glob_and_instruction(scan):
    name, sites = _module_with_two_routines(scan)
    reads = [f for f in sites if fnmatch.fnmatchcase(f.function, "*IoRead*")]
    assert 0 < len(reads) < len(sites)
    # the module by name (any case) or by GUID; a function glob narrows it to matching functions
    assert [f for f in sites if Waiver(name.upper(), "r").matches(f)] == sites
    assert [f for f in sites if Waiver(sites[0].guid, "r").matches(f)] == sites
    assert [f for f in sites if Waiver(name, "r", function="*IoRead*").matches(f)] == reads
    assert not any(Waiver(name, "r", function="NoSuchRoutine").matches(f) for f in sites)
    assert not any(Waiver("NoSuchModule", "r").matches(f) for f in sites)
    # the instruction by mnemonic or by bytes, any case
    f = sites[0]
    same = [g for g in sites if g.mnemonic == f.mnemonic]
    assert [g for g in sites if Waiver(name, "r", instruction=f.mnemonic.upper()).matches(g)] == same
    by_bytes = [g for g in sites if g.bytes == f.bytes]
    assert [g for g in sites if Waiver(name, "r", instruction=f.bytes.upper()).matches(g)] == by_bytes
    assert not any(Waiver(name, "r", instruction="insd").matches(g) for g in sites if g.mnemonic != "insd")
    # all three at once: each must hold
    w = Waiver(name, "r", function=f.function, instruction=f.mnemonic)
    assert [g for g in sites if w.matches(g)] == [g for g in same if g.function == f.function]


def test_check_counts_each_kind_and_expires_after_the_day_itself(scan):
    keys = site_keys(scan.findings)
    known = set(keys[::2])
    name, sites = _module_with_two_routines(scan)
    on_the_day = Waiver(name, "expires today: still valid", expires=TODAY)
    expired = Waiver(scan.findings[0].module, "expired yesterday", expires=TODAY - dt.timedelta(days=1))
    never = Waiver("NoSuchModule", "matches nothing", expires=TODAY)
    res = check(scan, known | {"gone-1", "gone-2"}, [expired, on_the_day, never], TODAY)
    assert res.known == len(known) and res.gone == 2
    waived = [f for f, k in zip(scan.findings, keys) if k not in known and f.module == name]
    assert [f for f, _ in res.waived] == waived and all(w is on_the_day for _, w in res.waived)
    assert on_the_day.used == len(waived) > 1 and expired.used == 0 and never.used == 0
    assert res.new == [f for f, k in zip(scan.findings, keys) if k not in known and f.module != name]
    assert res.expired == [expired] and res.unused == [never]
    # the day after, it has expired too
    later = Waiver(name, "r", expires=TODAY)
    res = check(scan, known, [later], TODAY + dt.timedelta(days=1))
    assert res.expired == [later] and later.used == 0 and res.waived == []


def _write(path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_check_images_keeps_failures_in_place_and_judges_on_the_given_day(scan, tmp_path):
    name, sites = _module_with_two_routines(scan)
    waivers = _write(
        tmp_path / "w.json",
        {
            "schema_version": "ovmftool.waivers/1",
            "waivers": [
                {"module": name, "reason": "expires on the day checked", "expires": "2000-01-01"},
                {"module": "NoSuchModule", "reason": "unused, expires that day", "expires": "2000-01-01"},
            ],
        },
    )
    bad = tmp_path / "not-firmware.fd"
    bad.write_bytes(b"\0" * 4096)
    out = check_images([str(bad), DEB], None, waivers, today=dt.date(2000, 1, 1))
    assert len(out) == 2 and isinstance(out[0], ScanFailure) and out[0].path == str(bad)
    c = out[1]
    assert c.path == DEB and c.baseline is None and c.unmatched is False
    assert len(c.result.waived) == len(sites) and {f.module for f in c.result.new} and not c.result.expired
    assert [w.module for w in c.result.unused] == ["NoSuchModule"]
    # a day later both have expired: the module's sites are new
    (c,) = check_images([DEB], None, waivers, today=dt.date(2000, 1, 2))
    assert c.result.waived == [] and len(c.result.expired) == 2 and c.result.unused == []


def test_check_images_uses_the_entry_that_applies(scan, tmp_path):
    base = _write(tmp_path / "b.json", baseline_doc(scan))
    (c,) = check_images([DEB], base)
    assert c.baseline is not None and c.baseline.sha256 == scan.sha256 and c.unmatched is False
    assert c.result.new == [] and c.result.known == len(scan.findings)


def test_baseline_for_by_path_real_path_contents_then_alone(tmp_path, monkeypatch):
    def r(path: str, sha: str) -> ScanResult:
        return ScanResult(path, sha, 1, [], [])

    def e(path: str, sha: str) -> BaselineImage:
        return BaselineImage(path, sha, frozenset())

    a, b = e("build/../a.fd", "1" * 64), e(str(tmp_path / "b.fd"), "2" * 64)
    entries = [a, b]
    # the path as written (normalised), whatever the contents now are
    assert baseline_for(entries, r("a.fd", "9" * 64), alone=False) is a
    # the same file named another way: relative here, absolute in the file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.fd").write_bytes(b"x")
    assert baseline_for(entries, r("b.fd", "9" * 64), alone=False) is b
    assert baseline_for(entries, r(os.path.join("..", tmp_path.name, "b.fd"), "9" * 64), alone=False) is b
    # as written means as written: `sub/../b.fd` is `b.fd` here even where `sub` links elsewhere
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "sub").symlink_to(tmp_path / "elsewhere" / "deep")
    c = e("sub/../c.fd", "3" * 64)
    assert os.path.realpath(c.path) != os.path.realpath("c.fd")
    assert baseline_for([a, c], r("c.fd", "9" * 64), alone=False) is c
    # else the contents, under any name
    assert baseline_for(entries, r("moved.fd", "2" * 64), alone=False) is b
    # else nothing, unless it is the only image checked and the file records one image
    assert baseline_for(entries, r("moved.fd", "9" * 64), alone=True) is None
    assert baseline_for([a], r("moved.fd", "9" * 64), alone=True) is a
    assert baseline_for([a], r("moved.fd", "9" * 64), alone=False) is None


@pytest.mark.parametrize(
    "version,where",
    [("ovmftool.baseline/1", ""), ("ovmftool.baseline/2", "images[1].")],
)
def test_baseline_errors_name_the_field_where_it_is(scan, tmp_path, version, where):
    one = baseline_doc(scan)
    doc = one if version.endswith("/1") else baseline_doc([scan, scan])
    if where:
        doc["images"][1]["image"]["path"] = "other.fd"
    target = doc if not where else doc["images"][1]
    for mutate, field in (
        (lambda t: t["image"].update(path=5), "image.path: 5 is not a string"),
        (lambda t: t["sites"][2].update(module=None), "sites[2].module: null is not a string"),
        (lambda t: t["sites"][2].update(arch=1), "sites[2].arch: 1 is not a string"),
        (lambda t: t["sites"][2].update(mnemonic=[]), "sites[2].mnemonic: [] is not a string"),
    ):
        bad = json.loads(json.dumps(doc))
        mutate(bad if not where else bad["images"][1])
        p = _write(tmp_path / "b.json", bad)
        with pytest.raises(OvmfToolError) as e:
            load_baseline_images(p)
        assert str(e.value) == f"baseline {p}: {where}{field}"
    assert target  # the unmutated document loads
    assert len(load_baseline_images(_write(tmp_path / "ok.json", doc))) == (1 if not where else 2)


def test_baseline_header_errors_name_the_field(scan, tmp_path):
    """The fields every baseline starts with (its schema, the tool that wrote it) are named in full
    when they are wrong (`tool.name`, not `name`); a long value is quoted to 60 characters; an RVA
    is 0 or more."""
    doc = baseline_doc(scan)
    for mutate, field in (
        (lambda d: d.pop("schema_version"), "schema_version: missing"),
        (lambda d: d.update(tool=[]), "tool: [] is not an object"),
        (lambda d: d["tool"].update(name=5), "tool.name: 5 is not a string"),
        (lambda d: d["tool"].pop("version"), "tool.version: missing"),
        (lambda d: d.update(tool="x" * 100), 'tool: "' + "x" * 59 + " is not an object"),  # 60 characters of it
        (
            lambda d: d["image"].update(sha256="z" * 100),
            'image.sha256: "' + "z" * 59 + " does not match ^[0-9a-f]{64}$",
        ),
        (lambda d: d["sites"][0].update(rva=-1), "sites[0].rva: -1 is below 0"),
    ):
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        p = _write(tmp_path / "b.json", bad)
        with pytest.raises(OvmfToolError) as e:
            load_baseline_images(p)
        assert str(e.value) == f"baseline {p}: {field}"
    doc["sites"][0]["rva"] = 0  # the least RVA there is
    assert load_baseline_images(_write(tmp_path / "b.json", doc))[0].keys


def test_baseline_of_several_images_refuses_a_path_recorded_twice(scan, tmp_path):
    """Each image of a baseline/2 file is recorded once, under its path: three different paths load
    as three entries; the same path again (as written or normalised), wherever it comes, is refused
    naming the later field."""
    doc = baseline_doc([scan, scan, scan])

    def load(*paths):
        bad = json.loads(json.dumps(doc))
        for entry, path in zip(bad["images"], paths):
            entry["image"]["path"] = path
        return load_baseline_images(_write(tmp_path / "b.json", bad))

    assert [e.path for e in load("a.fd", "b.fd", "c.fd")] == ["a.fd", "b.fd", "c.fd"]
    for paths, i, again in (
        (("a.fd", "a.fd", "c.fd"), 1, "a.fd"),
        (("a.fd", "b.fd", "./a.fd"), 2, "./a.fd"),
        (("a.fd", "b.fd", "b.fd"), 2, "b.fd"),
    ):
        with pytest.raises(OvmfToolError) as e:
            load(*paths)
        assert str(e.value) == f"baseline {tmp_path / 'b.json'}: images[{i}].image.path: {again!r} is recorded twice"


def test_baseline_and_waivers_files_that_cannot_be_read(tmp_path):
    """What is wrong with the file itself, before any field: it cannot be opened, is not UTF-8,
    is not an object. One line each, naming the file."""
    missing = str(tmp_path / "none.json")
    bad_text = tmp_path / "latin1.json"
    bad_text.write_bytes('{"schema_version": "\u00fc"}'.encode("latin-1"))
    array = tmp_path / "array.json"
    array.write_text("[]")
    for load, what in ((load_baseline_images, "baseline"), (load_waivers, "waivers")):
        for path, message in (
            (missing, f"cannot read {what} {missing}: No such file or directory"),
            (str(bad_text), f"{what} {bad_text} is not JSON: not UTF-8 text"),
            (str(array), f"{what} {array} is not a JSON object"),
        ):
            with pytest.raises(OvmfToolError) as e:
                load(path)
            assert str(e.value) == message


def test_baseline_is_read_as_utf8_whatever_the_locale(scan, tmp_path):
    """Baselines are written as UTF-8 (an image path may hold any character); a CI runner with no
    locale (Python's locale encoding ASCII) reads them the same."""
    doc = baseline_doc(scan)
    doc["image"]["path"] = "Entwürfe/OVMF_CODE.fd"
    p = tmp_path / "b.json"
    p.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(sigs.__file__)))  # the ovmftool imported here
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    code = (
        "import locale, sys\n"
        "from ovmftool.gate.baseline import load_baseline_images\n"
        "enc = locale.getpreferredencoding(False)\n"
        "assert enc.lower() in ('ascii', 'ansi_x3.4-1968'), enc\n"
        "print(ascii(load_baseline_images(sys.argv[1])[0].path))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ascii("Entwürfe/OVMF_CODE.fd")


def test_waivers_file_fields_reach_the_waiver(tmp_path):
    p = _write(
        tmp_path / "w.json",
        {
            "schema_version": "ovmftool.waivers/1",
            "waivers": [
                {
                    "module": "M",
                    "function": "F*",
                    "instruction": "rep insb",
                    "reason": "why",
                    "expires": "2031-02-03",
                },
                {"module": "N", "reason": "no other field"},
            ],
        },
    )
    assert load_waivers(p) == [
        Waiver("M", "why", "F*", "rep insb", dt.date(2031, 2, 3)),
        Waiver("N", "no other field"),
    ]
    assert Counter(w.used for w in load_waivers(p)) == {0: 2}


MATCHER_IMAGES = [
    "images/debian-2022.11/OVMF_CODE_4M.fd",  # NASM 2.15, the Sev routines
    "images/debian-2026.08/OVMF_CODE_4M.fd",  # NASM 3.01: prefixes in the other order
]


def _matches(path: str) -> list[tuple[str, int, str, int, tuple[int, ...]]]:
    root = read_image(path)
    out = []
    for m in iter_modules(root):
        for mt in sigs.find(m.image.memory, m.arch, exec_ranges(m.image)):
            out.append((m.name, mt.rva, mt.signature.routine, mt.end, mt.sites))
    return out


@pytest.mark.parametrize("image", MATCHER_IMAGES)
def test_both_signature_matchers_alone_find_every_routine(image, monkeypatch):
    """`signatures.find` matches a routine by its byte pattern (fast) and, for an anchor no pattern
    explains, instruction by instruction: each alone finds every routine of a real image, so a
    fault in either shows here (the other would otherwise hide it)."""
    path = str(CORPUS_IMAGES[image])
    sigs._pattern.cache_clear()  # the patterns made here, not by an earlier test
    both = _matches(path)
    assert len(both) >= 90
    with monkeypatch.context() as mp:  # the byte patterns alone
        mp.setattr(sigs, "_find_by_instructions", lambda *a: None)
        assert _matches(path) == both
    with monkeypatch.context() as mp:  # the instruction matcher alone
        never = re.compile(b"(?!)")
        mp.setattr(sigs.Signature, "pattern", property(lambda self: never))
        assert _matches(path) == both


def test_check_report_puts_each_line_on_its_stream(scan, tmp_path):
    """Sites and counts on stdout, warnings and errors on stderr (a CI log keeps them apart);
    a skipped input is a line on stdout, an input that could not be scanned an error line."""
    name, sites = _module_with_two_routines(scan)
    other = baseline_doc([scan, scan])  # two other images: neither applies
    for i, entry in enumerate(other["images"]):
        entry["image"]["path"], entry["image"]["sha256"] = f"elsewhere-{i}.fd", str(i) * 64
    waivers = _write(
        tmp_path / "w.json",
        {
            "schema_version": "ovmftool.waivers/1",
            "waivers": [
                {"module": name, "reason": "known", "function": sites[0].function, "instruction": sites[0].mnemonic},
                {"module": "Old", "reason": "expired", "expires": "2000-01-01"},
                {"module": "NoSuchModule", "reason": "unused"},
            ],
        },
    )
    (c,) = check_images([DEB], _write(tmp_path / "b.json", other), waivers)
    assert c.unmatched
    lines = check_report([c])
    assert lines[0] == (f"{DEB}: no baseline entry for this image (by path or contents): every site is new", True)
    streams = {text.split()[0]: err for text, err in lines[1:]}
    assert streams == {"NEW": False, "waived": False, "warning:": True, "check:": False}
    assert any(t.startswith("waived  ") and f" in {sites[0].function}: known" in t for t, _ in lines)
    assert ("warning: waiver Old expired on 2000-01-01", True) in lines
    assert ("warning: waiver NoSuchModule matched no new site (a site the baseline accepts is not new)", True) in lines
    assert lines[-1] == (f"check: {len(c.result.new)} new, 1 waived, 0 in baseline, 0 baseline sites gone", False)
    # several inputs: a block per image, skipped on stdout, errors on stderr, one total
    skipped, failed = ScanSkipped("vars.fd", "a variable store"), ScanFailure("bad.fd", "damaged image")
    lines = check_report([skipped, c, failed])
    assert lines[0] == ("skipped: a variable store", False)
    assert lines[1] == (f"{DEB}:", False)
    assert lines[2] == (f"  {DEB}: no baseline entry for this image (by path or contents): every site is new", False)
    assert ("ovmftool: error: damaged image", True) in lines
    assert lines[-1] == (f"check: {len(c.result.new)} new in 1 of 2 images; 1 error", False)
    assert check_exit([skipped, c]) == 1 and check_exit([skipped]) == 0 and check_exit([c, failed]) == 2


def test_waivers_file_errors_name_the_field(tmp_path):
    def err(doc) -> str:
        p = _write(tmp_path / "w.json", doc)
        with pytest.raises(OvmfToolError) as e:
            load_waivers(p)
        return str(e.value).removeprefix(f"waivers {p}: ")

    ok = {"module": "M", "reason": "why"}
    assert err({"schema_version": "ovmftool.waivers/9", "waivers": []}) == (
        "schema_version: 'ovmftool.waivers/9' is not 'ovmftool.waivers/1'"
    )
    assert err({"schema_version": "ovmftool.waivers/1"}) == "waivers: missing"
    v1 = "ovmftool.waivers/1"
    assert err({"schema_version": v1, "waivers": [ok, {**ok, "reason": "\t"}]}) == (
        'waivers[1].reason: "\\t" does not match \\S'
    )
    assert err({"schema_version": v1, "waivers": [{**ok, "expiry": "2030-01-01"}]}) == (
        "waivers[0]: unknown field 'expiry' (allowed: expires, function, instruction, module, reason)"
    )
    assert err({"schema_version": v1, "waivers": [{**ok, "instruction": 7}]}) == (
        "waivers[0].instruction: 7 is not a string or null"
    )
    assert err({"schema_version": v1, "waivers": [{**ok, "expires": "2030-02-30"}]}) == (
        "waivers[0].expires: '2030-02-30' is not a date (YYYY-MM-DD)"
    )
    assert Waiver("M", "r", "F*", "rep insb").describe() == "M/F*/rep insb"
    assert Waiver("M", "r", instruction="outsb").describe() == "M/outsb"


def test_signature_table_names_and_sites():
    """The table `signatures.load` builds (read afresh here, not from its cache): the X64 Sev
    routines keep their pre-TDX names (`IoReadFifo8`...), no other routine gets one, and each
    routine's string I/O offsets are those of its own INS/OUTS instructions."""
    table = sigs.load.__wrapped__()
    assert table == sigs.load()
    renamed = {s.routine: s.pre_tdx_name for s in table if s.pre_tdx_name}
    assert renamed == {f"SevIo{d}Fifo{w}": f"Io{d}Fifo{w}" for d in ("Read", "Write") for w in (8, 16, 32)}
    for s in table:
        sev_x64 = s.arch == "X64" and s.source.endswith("IoFifoSev.nasm") and s.routine.startswith("SevIo")
        assert (s.pre_tdx_name is not None) == sev_x64 and s.aliases == ((s.pre_tdx_name,) if sev_x64 else ())
        assert s.names(sigs.PRE_TDX) == ((s.pre_tdx_name, (s.routine,)) if sev_x64 else (s.routine, ()))
        for o in s.sites:  # each offset starts an INS/OUTS: legacy prefixes, then its opcode
            i = o
            while s.code[i] in (0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65):
                i += 1
            assert s.code[i] in (0x6C, 0x6D, 0x6E, 0x6F), (s.routine, o)
    # one string I/O instruction in each of the 24 routines that carry one (REP INS/OUTS b/w/d, 4 sources)
    assert sorted(len(s.sites) for s in table if s.sites) == [1] * 24


def _reference_tokens(code: bytes, bits: int) -> list[tuple[int, tuple[int | None, ...], bool]]:
    """Each instruction of `code` as capstone (with detail) decodes it: offset, its bytes with a
    relative branch's displacement as wildcards, and whether it is string I/O."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
    md.detail = True
    out = []
    for i in md.disasm(code, 0):
        raw = tuple(code[i.address : i.address + i.size])
        relative = (capstone.CS_GRP_JUMP in i.groups or capstone.CS_GRP_CALL in i.groups) or i.mnemonic.startswith(
            "loop"
        )
        if relative and i.imm_size and i.op_str.startswith("0x"):
            raw = raw[: i.imm_offset] + (None,) * i.imm_size
        out.append((i.address, raw, re.fullmatch(r"(rep\S* )?(ins|outs)[bwd].*", i.mnemonic + " ") is not None))
    return out


def test_signature_tokens_wildcard_exactly_the_branch_displacements():
    """The byte pattern of every built-in routine: literal bytes but for the displacement of each
    direct branch and call (its width as the encoding has it: short, near, address-size prefixed),
    the string I/O instructions marked, and bytes that do not decode kept as one literal token."""
    for s in sigs.load():
        toks = sigs.tokens(s.code, s.bits)
        ref = _reference_tokens(s.code, s.bits)
        assert [(a, alts[0], site) for (a, alts), site in toks] == ref, s.routine
        assert sum(len(alts[0]) for (_a, alts), _s in toks) == len(s.code)
        assert s.sites == tuple(a for (a, _alts), site in toks if site)
    # short (1-byte) and near (4-byte) displacements, an address-size prefixed JRCXZ (JECXZ)
    assert sigs.tokens(bytes.fromhex("eb05e9000000006" + "7e3fe"), 64) == [
        ((0, ((0xEB, None),)), False),
        ((2, ((0xE9, None, None, None, None),)), False),
        ((7, ((0x67, 0xE3, None),)), False),
    ]
    # any prefix before a short branch (a branch hint, REP, a REX byte) stays literal: its
    # displacement is still one byte; a near Jcc (0F 8x) with a branch hint keeps four
    assert sigs.tokens(bytes.fromhex("f2eb023e740248eb002e0f8400000000"), 64) == [
        ((0, ((0xF2, 0xEB, None),)), False),
        ((3, ((0x3E, 0x74, None),)), False),
        ((6, ((0x48, 0xEB, None),)), False),
        ((9, ((0x2E, 0x0F, 0x84, None, None, None, None),)), False),
    ]
    # the lowest and highest REX bytes, two legacy prefixes, a legacy prefix before a REX byte
    assert sigs.tokens(bytes.fromhex("40eb004feb002e3e7400f248eb00"), 64) == [
        ((0, ((0x40, 0xEB, None),)), False),
        ((3, ((0x4F, 0xEB, None),)), False),
        ((6, ((0x2E, 0x3E, 0x74, None),)), False),
        ((10, ((0xF2, 0x48, 0xEB, None),)), False),
    ]
    # an immediate that is no branch target stays literal (PUSH imm8, MOV r32, imm32)
    assert sigs.tokens(bytes.fromhex("6a10b834120000"), 64) == [
        ((0, ((0x6A, 0x10),)), False),
        ((2, ((0xB8, 0x34, 0x12, 0x00, 0x00),)), False),
    ]
    # bytes that do not decode: one literal token (at the start too)
    assert sigs.tokens(b"\x90\x0f", 64) == [((0, ((0x90,),)), False), ((1, ((0x0F,),)), False)]
    assert sigs.tokens(b"\x0f", 64) == [((0, ((0x0F,),)), False)]


def test_a_function_the_scan_could_not_name():
    """A site whose function is unknown (no symbol, signature or code map function) is `?` in
    the gate's lines, and a waiver that names a function never matches it."""
    f = Finding(
        "M",
        "g",
        "DRIVER",
        "X64",
        "V",
        None,
        0,
        0x10,
        ".text",
        "f36c",
        "rep insb",
        8,
        "in",
        "rep",
        None,
        None,
        None,
        None,
    )
    assert not Waiver("M", "r", function="*X*").matches(f)
    assert Waiver("M", "r").matches(f)
    out = check(ScanResult("x.fd", "0" * 64, 1, [], [f]), set(), [], TODAY)
    (line, err), _count = check_lines(out)
    assert line == "NEW  M g X64 rva 0x10 rep insb f36c in ? [None] (V)" and err is False
    out = check(ScanResult("x.fd", "0" * 64, 1, [], [f]), set(), [Waiver("M", "why")], TODAY)
    assert check_lines(out)[0] == ("waived  M rva 0x10 rep insb in ?: why", False)
    d = DiffResult(added=[f], removed=[f], unchanged=[], modules_added=["A"], modules_removed=["B"])
    assert diff_text(d) == (
        "+ M X64 ? rep insb f36c (rva 0x10)\n- M X64 ? rep insb f36c (rva 0x10)\n+ module A\n- module B\n"
        "diff: 1 added, 1 removed, 0 unchanged; modules 1 added, 1 removed\n"
    )


def test_gate_report_blocks_and_single_image_lines(scan, tmp_path):
    """Several images: each block's lines indented under its path, the waiver warnings once at the
    end; one image that its baseline entry covers: no 'no baseline entry' line."""
    base = _write(tmp_path / "b.json", baseline_doc(scan))
    waivers = _write(
        tmp_path / "w.json",
        {"schema_version": "ovmftool.waivers/1", "waivers": [{"module": "NoSuchModule", "reason": "unused"}]},
    )
    (one,) = check_images([DEB], base, waivers)
    lines = check_report([one])
    assert not one.unmatched and not any("no baseline entry" in t for t, _ in lines)
    assert lines == [
        ("warning: waiver NoSuchModule matched no new site (a site the baseline accepts is not new)", True),
        (f"check: 0 new, 0 waived, {len(scan.findings)} in baseline, 0 baseline sites gone", False),
    ]
    two = check_images([DEB, DEB_2M], base, waivers)
    lines = check_report(two)
    assert [t for t, _ in lines if "matched no new site (a site the baseline accepts is not new)" in t] == [
        "warning: waiver NoSuchModule matched no new site (a site the baseline accepts is not new)"
    ]
    block = lines[: next(i for i, (t, _) in enumerate(lines) if t.startswith(f"{DEB_2M}:"))]
    assert block[0] == (f"{DEB}:", False)
    assert all(t.startswith("  ") and not e for t, e in block[1:])
    assert block[-1][0].startswith("  check: 0 new, 0 waived")
    assert baseline_line([scan], "b.json") == f"baseline: {len(scan.findings)} sites of {DEB} recorded in b.json"
    assert (
        baseline_line([scan, scan], "b.json")
        == f"baseline: {2 * len(scan.findings)} sites of 2 images recorded in b.json"
    )


def test_verdict_messages_count_the_rest(tmp_path):
    """A refusal names the first problem and how many more; an input without code says what it
    is likely to be, with the number of volumes it has."""
    from ovmftool.model.parser import parse_flash
    from ovmftool.scan.verdict import _more, no_code_hint

    assert [_more(list(range(n))) for n in (0, 1, 2, 3)] == ["", "", " (and 1 more)", " (and 2 more)"]
    vars_fd = CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS_4M.fd"]
    assert no_code_hint(read_image(str(vars_fd))) == "is this OVMF_VARS (a variable store)?"
    root = read_image(DEB)
    from ovmftool.model.node import walk
    from ovmftool.model.volume import Volume

    vols = [n for n in walk(root) if isinstance(n, Volume) and n.parent is root]
    one = parse_flash(root.data[vols[0].offset : vols[0].offset + vols[0].size], "one.fd")
    n = sum(1 for x in walk(one) if isinstance(x, Volume))
    hint = no_code_hint(one)
    assert hint.startswith(f"its {n} firmware volume{'s' * (n != 1)} hold no executable code: is this a firmware")
    assert hint.endswith("code image (OVMF_CODE.fd, OVMF.fd) or a UEFI binary?")


@pytest.mark.parametrize("entry,refused", [(0x11FF, False), (0x1200, True), (0x0FFF, True)])
def test_entry_point_at_the_edge_of_the_code(tmp_path, entry, refused):
    """A module's entry point must lie inside an executable section ([start, end)): one byte past
    its end is no code the scan can vouch for (exit 2), the last byte is."""
    from tests.test_hostile import _pe64

    pe = bytearray(_pe64(b"\xc3" * 0x200, vsize=0x200))  # .text: rva 0x1000-0x1200, all RET
    struct.pack_into("<I", pe, 0x40 + 24 + 16, entry)  # AddressOfEntryPoint
    p = tmp_path / "Probe.efi"
    p.write_bytes(bytes(pe))
    r = CliRunner().invoke(main, ["scan", str(p)])
    if refused:
        assert r.exit_code == 2 and f"entry point rva 0x{entry:X} lies outside its executable sections" in r.output
    else:
        assert r.exit_code == 0, r.output


def test_worst_exit_and_module_key():
    """The exit code of several inputs is the worst of theirs, 0 for none; a module's key is its
    volume, file GUID and arch, in that order."""
    from ovmftool.scan.records import ModuleKey, worst_exit

    ok, skipped, failed = ScanResult("a.fd", "0" * 64, 1, [], []), ScanSkipped("v.fd", "vars"), ScanFailure("b", "x")
    assert worst_exit([]) == 0 and worst_exit([ok, skipped]) == 0 and worst_exit([skipped, failed, ok]) == 2
    f = Finding(
        "M",
        "g",
        "DRIVER",
        "X64",
        "FV/LZMA/DXEFV",
        None,
        0,
        0,
        None,
        "6c",
        "insb",
        8,
        "in",
        None,
        None,
        None,
        None,
        None,
    )
    assert ModuleKey.of(f) == ("FV/LZMA/DXEFV", "g", "X64") == (ModuleKey.of(f).volume, f.guid, f.arch)


def test_report_records_are_what_asdict_makes_of_them(scan):
    """The JSON report's sites and modules (`as_dict`, a faster `dataclasses.asdict`) hold every
    field of the record with its value, nested records (signature, callers, region) as dicts."""
    from dataclasses import asdict

    assert scan.findings and scan.modules
    assert [f.as_dict() for f in scan.findings] == [asdict(f) for f in scan.findings]
    assert [m.as_dict() for m in scan.modules] == [asdict(m) for m in scan.modules]
    f = next(f for f in scan.findings if f.signature and f.callers and f.fd_region)
    d = f.as_dict()
    assert type(d["signature"]) is dict and type(d["callers"][0]) is dict and type(d["fd_region"]) is dict
    assert d["signature"]["aliases"] == f.signature.aliases and d["rep"] == f.rep


@pytest.mark.parametrize("body", [b"", b"\x90"])
def test_unread_parts_count_only_what_holds_bytes(body):
    """A part the model cannot read is unread (and the image not checked) only when it holds
    bytes: an empty GUID-defined section, file or volume of an unknown kind hides no code."""
    from ovmftool.model.parser import parse_flash
    from ovmftool.scan.verdict import unread_parts
    from tests import fvbuild as B

    unknown = "11111111-2222-3333-4444-555555555555"
    sec = B.guided(unknown, body, attrs=1)  # PROCESSING_REQUIRED
    data = B.fv([B.ffs("aaaaaaaa-1111-2222-3333-444444444444", 0x07, B.sections(sec, B.ui("Probe")))], size=0x2000)
    parts = unread_parts(parse_flash(data, "t.fd"))
    assert [p.what for p in parts] == ([f"a GUID-defined section with unknown GUID {unknown}"] if body else [])
    if body:
        assert parts[0].size == len(body) and parts[0].where
    typed = B.fv([B.ffs("bbbbbbbb-1111-2222-3333-444444444444", 0xE0 - 0x40, body)], size=0x2000)
    parts = unread_parts(parse_flash(typed, "t.fd"))
    assert [p.size for p in parts] == ([len(body)] if body else []) and all(p.where for p in parts)
    # a volume of an unknown file system: its header alone, or 8 bytes more
    size = 72 + 8 * len(body)
    vol = B.fv([], size=size, fs=unknown, block=size)
    parts = unread_parts(parse_flash(vol, "t.fd"))
    assert [(p.what, p.size) for p in parts] == (
        [(f"a firmware volume with unknown file system {unknown}", 8)] if body else []
    )


def test_signature_instructions_normalised():
    """The instruction-level matcher's view of a routine: NOPs dropped wherever they are, a direct
    branch's target as the index of the instruction it lands on (the next kept one when it lands
    on a NOP; the count of instructions when just past the end; EXTERNAL outside them or inside
    an instruction), other instructions as capstone prints them, at most `limit` of them."""
    n = sigs._normalise
    ext = sigs.EXTERNAL
    assert n(bytes.fromhex("90c3"), 64) == ([("ret ", None)], [(1, 2, "ret")])
    assert n(bytes.fromhex("31c090c3"), 64)[0] == [("xor eax, eax", None), ("ret ", None)]
    assert n(bytes.fromhex("eb0190c3"), 64) == ([("jmp", 1), ("ret ", None)], [(0, 2, "jmp"), (3, 4, "ret")])
    assert n(bytes.fromhex("eb0090c3"), 64)[0] == [("jmp", 1), ("ret ", None)]  # lands on the NOP
    assert n(bytes.fromhex("31c0ebfc"), 64)[0] == [("xor eax, eax", None), ("jmp", 0)]  # backwards
    assert n(bytes.fromhex("eb00"), 64)[0] == [("jmp", 1)]  # just past the end
    assert n(bytes.fromhex("e800100000c3"), 64)[0] == [("call", ext), ("ret ", None)]
    assert n(bytes.fromhex("4831c0ebfc"), 64)[0] == [("xor rax, rax", None), ("jmp", ext)]  # mid-instruction
    assert n(bytes.fromhex("31c0c3c3"), 64, limit=1) == ([("xor eax, eax", None)], [(0, 2, "xor")])
    assert n(bytes.fromhex("6a01c3"), 64)[0] == [("push 1", None), ("ret ", None)]  # an immediate, no target


def test_instruction_matcher_reads_a_padded_routine_to_its_end():
    """A routine in another encoding may be much longer than the signature's bytes: the smallest
    routine of the table (IoReadFifo8 of IoFifo.nasm, 13 bytes) with 30 bytes of NOPs after its
    `rep insb` is 43 bytes, which the byte pattern cannot match and the instruction matcher's
    decode window (4 × 13 + 32 bytes from the start) must still hold to its `ret`."""
    nops = bytes.fromhex("0f1f840000000000") * 3 + bytes.fromhex("660f1f440000")
    routine = bytes.fromhex("fc4887ca4987f8f36c") + nops + bytes.fromhex("4c89c7c3")
    assert len(routine) == 43
    mem = b"\xcc" * 16 + routine + b"\xcc" * 64
    (m,) = sigs.find(mem, "X64", [(0, len(mem))])
    assert (m.signature.routine, m.rva, m.size, m.sites) == ("IoReadFifo8", 16, 43, (16 + 7,))


def test_baseline_names_each_image_by_path_and_sha256_only(scan):
    """A baseline is kept in the firmware's repository: its image records carry what `check`
    matches on (path, sha256) and nothing more, so the file written for an image stays the same
    bytes from release to release (the schemas list exactly these two fields)."""
    one = baseline_doc(scan)
    assert one["image"] == {"path": scan.path, "sha256": scan.sha256}
    several = baseline_doc([scan, scan])
    assert [x["image"] for x in several["images"]] == [{"path": scan.path, "sha256": scan.sha256}] * 2
    for version in (1, 2):
        schema = json.loads((ROOT / "docs" / "schema" / f"baseline-{version}.json").read_text())
        image = (
            schema["properties"]["image"]
            if version == 1
            else schema["properties"]["images"]["items"]["properties"]["image"]
        )
        assert sorted(image["properties"]) == ["path", "sha256"]


def test_instruction_matcher_checks_every_text_and_branch_target():
    """`_compare_at` accepts a routine only when each instruction reads the same and each branch
    lands where the signature's does (on the same instruction inside, or outside for a call out):
    SevIoReadFifo16 (IoFifoSev.nasm) as it is, then with one change each, the length kept."""
    (sig,) = [s for s in sigs.load() if s.routine == "SevIoReadFifo16" and s.arch == "X64"]
    code = bytearray(sig.code)
    assert sigs._compare_at(bytes(code) + b"\xcc" * 64, 0, len(code) + 64, sig) == (38, (16,))
    for at, new, what in (
        (20, b"\x0b", "the jmp past the loop lands on the loop instead"),
        (31, b"\x04", "add rdi, 4 for add rdi, 2"),
        (7, (0x0F - 11).to_bytes(4, "little"), "the call out lands on the cld inside"),
        (22, b"\x0a", "jrcxz lands inside the loop instruction"),
    ):
        changed = code[:at] + new + code[at + len(new) :]
        assert len(changed) == len(code)
        assert sigs._compare_at(bytes(changed) + b"\xcc" * 64, 0, len(code) + 64, sig) is None, what


def test_instruction_matcher_commutes_only_xchg_and_test_of_registers():
    """XCHG and TEST of two registers read the same either way round (assemblers pick either of
    the two encodings); nothing else does, nor a memory operand. IoReadFifo8 of IoFifo.nasm with
    the other XCHG encoding and a NOP, placed at the very start of the code range, is found by
    the instruction matcher; with MOV's operands swapped it is another routine."""
    c = sigs._commuted
    assert c("xchg", "rdx, rcx") == c("xchg", "rcx, rdx") == "rcx, rdx"
    assert c("test", "eax, ecx") == c("test", "ecx, eax") == "eax, ecx"
    assert c("mov", "rdi, r8") == "rdi, r8" and c("mov", "r8, rdi") == "r8, rdi"
    assert c("xchg", "rax, qword ptr [rdi]") == "rax, qword ptr [rdi]"  # sorted, they would swap
    assert c("test", "eax, dword ptr [rcx]") == "eax, dword ptr [rcx]"
    # a NOP after the site keeps the byte pattern (which knows both XCHG encodings) from matching
    other_xchg = bytes.fromhex("fc4887d14987f8f36c904c89c7c3")  # xchg rcx, rdx
    mem = other_xchg + b"\xcc" * 64
    (m,) = sigs.find(mem, "X64", [(0, len(mem))])
    assert (m.signature.routine, m.rva, m.size, m.sites) == ("IoReadFifo8", 0, 14, (7,))
    swapped_mov = bytes.fromhex("fc4887d14987f8f36c904989f8c3")  # mov r8, rdi
    assert sigs.find(swapped_mov + b"\xcc" * 64, "X64", [(0, 78)]) == []


def test_a_routine_lies_inside_its_code_range():
    """Neither matcher takes a routine that runs past the end of its executable range: IoReadFifo8
    exactly as in the table is found when the range holds all 13 bytes, not when it ends before
    the `ret`."""
    routine = bytes.fromhex("fc4887ca4987f8f36c4c89c7c3")
    mem = b"\xcc" * 16 + routine + b"\xcc" * 64
    assert [m.rva for m in sigs.find(mem, "X64", [(0, 16 + 13)])] == [16]
    assert sigs.find(mem, "X64", [(0, 16 + 12)]) == []


def test_equivalent_encodings_of_one_instruction():
    """What the byte patterns and anchors accept for one instruction: its legacy prefixes in every
    order (NASM 3 puts `66` before `F3`, NASM 2 after), a register-register ModRM form's twin
    with REX.R and REX.B swapped along with the registers, nothing else."""

    def hexes(insn: str) -> list[str]:
        return [x.hex() for x in sigs._encodings(bytes.fromhex(insn))]

    assert hexes("f3666d") == ["f3666d", "66f36d"]
    assert hexes("66f36d") == ["66f36d", "f3666d"]
    assert hexes("4987f8") == ["4987f8", "4c87c7"]  # xchg r8, rdi either way round
    assert hexes("4887ca") == ["4887ca", "4887d1"]
    assert hexes("6689c8") == ["6689c8", "668bc1"]  # mov ax, cx: the prefix kept, the twin after it
    assert hexes("4089c8") == ["4089c8", "408bc1"] and hexes("4f89c8") == ["4f89c8", "4f8bc1"]  # REX's bounds
    assert hexes("f36c") == ["f36c"] and hexes("6c") == ["6c"]
    assert hexes("89c1") == ["89c1", "8bc8"]  # mov ecx, eax: an even register field moves to r/m
    assert hexes("85c0") == ["85c0"]  # test eax, eax is its own twin: listed once
    # no twin where the ModRM byte's reg field is part of the opcode (neg eax) or r/m is memory
    assert hexes("f7d8") == ["f7d8"] and hexes("8900") == ["8900"] and hexes("4c8900") == ["4c8900"]


def test_tdcall_is_looked_for_only_inside_the_ranges():
    """TDCALL's bytes decide a TDX-era module: found anywhere inside a [start, end) range, the
    range's first byte included, and nowhere outside the ranges."""
    t = sigs.TDCALL
    mem = t + b"\x90" * 8 + t + b"\x90" * 8  # TDCALL at 0 and at 12
    assert sigs.has_tdcall(mem, [(0, 4)]) and sigs.has_tdcall(mem, [(12, 16)])
    assert not sigs.has_tdcall(mem, [(1, 15)])  # one starts before the range, the other ends past it
    assert sigs.has_tdcall(mem, [(1, 15), (4, 16)]) and not sigs.has_tdcall(mem, [])


def _secfv(pad: tuple[str, ...]) -> bytes:
    """Debian 2022.11's SECFV (SecMain and the reset vector) with the named files made pad files,
    as GenFv writes them."""
    from ovmftool.ops.assemble import _pad_file
    from ovmftool.ops.modules import iter_code_blobs

    root = read_image(DEB)
    vol = next(iter_code_blobs(root)).parent.parent
    fv = bytearray(root.data[vol.offset : vol.offset + vol.size])
    names = {m.file.offset: m.name for m in iter_modules(root)} | {
        b.parent.offset: "reset vector" for b in iter_code_blobs(root)
    }
    assert set(pad) <= {names.get(f.offset) for f in vol.children} == {None, "SecMain", "reset vector"}
    for f in vol.children:
        if names.get(f.offset) in pad:
            o = f.offset - vol.offset
            fv[o : o + f.size] = _pad_file(f.size, 0xFF, fv[o + 0x17])
    return bytes(fv)


def test_a_volume_holding_only_the_reset_vector_is_checked(tmp_path):
    """No PE/TE module but the reset vector: its code is walked from the 16-bit entry and found
    clean (exit 0), not refused as holding nothing; with the reset vector gone too, two such
    volumes hold nothing to check (exit 2, the volumes counted)."""
    p = tmp_path / "secfv.fv"
    p.write_bytes(_secfv(("SecMain",)))
    r = CliRunner().invoke(main, ["scan", str(p)])
    assert r.exit_code == 0, r.output
    assert "summary: 0 sites in 0 of 0 modules" in r.output and "1 raw code blob(s) (reset vector) checked" in r.output
    p.write_bytes(_secfv(("SecMain", "reset vector")) * 2)
    r = CliRunner().invoke(main, ["scan", str(p)])
    assert r.exit_code == 2 and r.stderr == (
        f"ovmftool: error: {p}: no PE/TE modules: its 2 firmware volumes hold no executable code: is this a "
        "firmware code image (OVMF_CODE.fd, OVMF.fd) or a UEFI binary?\n"
    )


def test_codeless_modules_name_each_place():
    """A module the walk found no instruction in is named by its offset in the file, else by the
    volume that holds it compressed, else as its file (a standalone module)."""
    from ovmftool.scan.records import ModuleSummary
    from ovmftool.scan.verdict import codeless_modules

    def mod(name: str, fd: int | None, vol: str, code: int) -> ModuleSummary:
        return ModuleSummary(name, "g", "DRIVER", "X64", vol, fd, code, 0, 0, None)

    mods = [mod("A", 0x1000, "SECFV", 0), mod("B", None, "FV/LZMA/DXEFV", 0), mod("C", None, "", 0), mod("D", 0, "", 9)]
    assert codeless_modules(ScanResult("a.fd", "0" * 64, 1, mods, [])) == [
        "module A at 0x1000",
        "module B at FV/LZMA/DXEFV",
        "module C at its file",
    ]
