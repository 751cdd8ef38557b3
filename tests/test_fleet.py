"""scan over a fleet: directories and glob patterns as inputs, --jobs across images, the result cache.

All on Debian's packaged images (corpus/images). The cache lives under the per-test
XDG_CACHE_HOME that conftest sets."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.report.scan_notes import scan_notes
from ovmftool.scan import cache as C
from ovmftool.scan import codec
from ovmftool.scan.inputs import expand_inputs
from ovmftool.scan.scanner import ScanFailure, scan_image, scan_paths
from tests.conftest import CORPUS_IMAGES, ROOT

DEB22 = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]
DEB22_4M = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]
DEB25_4M = CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"]
VARS = CORPUS_IMAGES["images/debian-2022.11/OVMF_VARS.fd"]


def _scan(*args, env=None):
    return CliRunner().invoke(main, ["scan", *map(str, args)], env=env)


def _cache_files(kind=None):
    root = Path(C.cache_dir())
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith(".tmp")) if root.is_dir() else []


@pytest.fixture
def fleet(tmp_path):
    """fleet/ with two images in subdirectories, one at the top, and files that are not inputs."""
    d = tmp_path / "fleet"
    (d / "b-2025").mkdir(parents=True)
    (d / "a-2022").mkdir()
    shutil.copy(DEB25_4M, d / "b-2025" / "OVMF_CODE_4M.fd")
    shutil.copy(DEB22, d / "a-2022" / "OVMF_CODE.fd")
    shutil.copy(DEB22_4M, d / "Z.FD")  # the suffix in any case
    (d / "README.txt").write_text("not an input\n")
    (d / "a-2022" / "build.log").write_text("not an input\n")
    return d


def test_directory_and_glob_expansion(fleet, tmp_path):
    a, b, z = str(fleet / "a-2022" / "OVMF_CODE.fd"), str(fleet / "b-2025" / "OVMF_CODE_4M.fd"), str(fleet / "Z.FD")
    # a directory: its image files, recursively, sorted by name (code point: "Z" < "a") level by
    # level; other files are no inputs
    assert expand_inputs([str(fleet)]) == [z, a, b]
    # a quoted glob: sorted, deduplicated, `**` at any depth; inputs keep the argument order, and a
    # file a directory or pattern brings in again is taken once
    assert expand_inputs([str(fleet / "**" / "*.fd"), str(fleet / "*" / "OVMF_CODE*.fd")]) == [a, b]
    assert expand_inputs([str(fleet / "[ab]-*")]) == [a, b]  # matched directories expand as directories
    assert expand_inputs([a, str(fleet)]) == [a, z, b]  # named, then brought in again: once
    assert expand_inputs([a, a]) == [a, a]  # a file named twice is scanned (and reported) twice
    # nothing to scan: a failing input in its place
    (none,) = expand_inputs([str(tmp_path / "nothing*.fd")])
    assert isinstance(none, ScanFailure) and none.message == f"{tmp_path}/nothing*.fd: no file matches"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("x")
    (e,) = expand_inputs([str(empty)])
    assert isinstance(e, ScanFailure) and e.message.startswith(f"{empty}: no firmware image (*.fd, *.fv, ")
    # a path that exists is never a pattern; a link loop ends; a broken link is an input (it fails)
    odd = fleet / "x[1].fd"
    shutil.copy(DEB22, odd)
    assert expand_inputs([str(odd)]) == [str(odd)]
    os.symlink("..", fleet / "a-2022" / "loop")
    os.symlink("missing.fd", fleet / "broken.rom")
    assert expand_inputs([str(fleet)]) == [z, a, b, str(fleet / "broken.rom"), str(odd)]


def test_directory_scan_keeps_input_order_skips_non_code_and_fails_on_damage(fleet):
    """In a directory, a variable store, a blob with no firmware volume, a Windows-style PE and an
    AArch64-style image are skipped with their reason (verdict unchanged); a damaged image is
    still an error (2); identical contents are scanned once and reported under each name."""
    shutil.copy(VARS, fleet / "a-2022" / "OVMF_VARS.fd")
    (fleet / "junk.bin").write_bytes(os.urandom(8192))
    r = _scan("--format", "json", fleet)
    assert r.exit_code == 1, r.stderr
    docs = json.loads(r.stdout)
    paths = [d["image"]["path"] for d in docs]
    assert paths == [
        str(fleet / p)
        for p in ("Z.FD", "a-2022/OVMF_CODE.fd", "a-2022/OVMF_VARS.fd", "b-2025/OVMF_CODE_4M.fd", "junk.bin")
    ]
    assert [len(d.get("findings", [])) for d in docs] == [90, 90, 0, 108, 0]
    assert ["skipped" in d for d in docs] == [False, False, True, False, True]
    assert not any("error" in d for d in docs) and r.stderr == ""
    assert "no PE/TE modules" in docs[2]["skipped"] and "holds no firmware volume" in docs[4]["skipped"]
    r = _scan(fleet)
    assert r.exit_code == 1 and "total: 288 sites in 3 of 3 images; 0 errors; 2 files skipped" in r.stdout
    assert f"{fleet}/a-2022/OVMF_VARS.fd\n  skipped: " in r.stdout
    # named on the command line, the same files are errors
    r = _scan(fleet / "a-2022" / "OVMF_VARS.fd", fleet / "junk.bin")
    assert r.exit_code == 2 and r.stderr.count("ovmftool: error: ") == 2
    # a damaged image among them: 2, named
    data = bytearray(Path(DEB22).read_bytes())
    data[0x1000:0x1010] = b"\0" * 16
    (fleet / "damaged.fd").write_bytes(bytes(data))
    r = _scan(fleet)
    assert r.exit_code == 2 and "damaged.fd" in r.stderr and r.stderr.count("\n") == 1
    os.remove(fleet / "damaged.fd")
    # a directory of nothing but such files checks nothing: each is an error
    only = fleet / "only"
    only.mkdir()
    shutil.copy(VARS, only / "OVMF_VARS.fd")
    r = _scan(only)
    assert r.exit_code == 2 and "OVMF_VARS.fd: no PE/TE modules" in r.stderr
    shutil.rmtree(only)
    # an image cut before its first volume header: no volume, but named as an image: an error
    (fleet / "cut.fd").write_bytes(Path(DEB22).read_bytes()[:0x20])
    r = _scan(fleet)
    assert r.exit_code == 2 and "cut.fd holds no firmware volume" in r.stderr and r.stderr.count("\n") == 1
    os.remove(fleet / "cut.fd")
    # the same contents under two names: scanned once, reported under each
    shutil.copy(DEB22, fleet / "copy.fd")
    r = _scan("--format", "json", "--no-cache", fleet)
    docs = {d["image"]["path"]: d for d in json.loads(r.stdout)}
    a, b = docs[str(fleet / "a-2022/OVMF_CODE.fd")], docs[str(fleet / "copy.fd")]
    assert (
        a["findings"] == b["findings"]
        and b["notes"][-1] == f"same contents as {fleet}/a-2022/OVMF_CODE.fd: scanned once"
    )


def test_empty_glob_and_imageless_directory_exit_2(tmp_path):
    r = _scan(tmp_path / "nothing" / "*.fd")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == f"ovmftool: error: {tmp_path}/nothing/*.fd: no file matches\n"
    (tmp_path / "d").mkdir()
    r = _scan(tmp_path / "d")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "no firmware image" in r.stderr
    # among good inputs: those are still scanned and reported
    r = _scan("--format", "json", DEB22, tmp_path / "nothing*")
    assert r.exit_code == 2 and [("error" in d) for d in json.loads(r.stdout)] == [False, True]


def test_output_identical_across_jobs_and_cache(fleet):
    args = ["--format", "json", fleet, str(fleet / "*" / "*.fd")]
    ref = _scan(*args, "-j", "1", "--no-cache")
    assert ref.exit_code == 1 and len(json.loads(ref.stdout)) == 3  # the pattern brings in no file again
    assert _cache_files() == []  # --no-cache neither reads nor writes
    assert _scan(*args, "-j", "2", "--no-cache").stdout == ref.stdout
    assert _scan(*args, "-j", "1", env={"OVMFTOOL_NO_CACHE": "1"}).stdout == ref.stdout
    assert _cache_files() == []
    cold = _scan(*args, "-j", "2")
    assert cold.stdout == ref.stdout and cold.exit_code == 1
    entries = _cache_files()
    assert len(entries) > 100  # modules and whole images
    for jobs in ("1", "2"):
        warm = _scan(*args, "-j", jobs)
        assert warm.stdout == ref.stdout and warm.exit_code == 1
    assert _cache_files() == entries  # warm runs add nothing
    for fmt in ("text", "sarif", "junit"):

        def same(out, fmt=fmt):  # JUnit carries what this run spent and when: not part of the comparison
            return re.sub(r' (time|timestamp|hostname)="[^"]*"', "", out) if fmt == "junit" else out

        assert same(_scan("--format", fmt, fleet).stdout) == same(_scan("--format", fmt, fleet, "--no-cache").stdout)


def test_cache_serves_images_and_shared_modules(tmp_path):
    cache = C.ResultCache(str(tmp_path / "results"))
    ref = scan_image(str(DEB22))
    (cold,) = scan_paths([str(DEB22)], cache=cache)
    assert (cache.hits, cache.bad) == (0, 0) and cold.findings == ref.findings and cold.modules == ref.modules
    (warm,) = scan_paths([str(DEB22)], cache=cache)
    assert (cache.hits, cache.bad) == (1, 0)  # the whole image, not parsed again
    assert warm.findings == ref.findings and warm.modules == ref.modules and warm.code_blobs == ref.code_blobs == 1
    assert (warm.sha256, warm.size, warm.era, warm.standalone) == (ref.sha256, ref.size, ref.era, ref.standalone)
    # the same image under another name: a new image entry, every module from the cache
    other = tmp_path / "renamed.fd"
    shutil.copy(DEB22, other)
    hits = cache.hits
    (res,) = scan_paths([str(other)], cache=cache)
    assert cache.hits - hits == len(ref.modules) and cache.bad == 0
    assert res.findings == ref.findings and res.path == str(other)
    # another image holding the same modules (OVMF.fd's layout: the variable store, then the code)
    whole = tmp_path / "OVMF.fd"
    whole.write_bytes(VARS.read_bytes() + DEB22.read_bytes())
    hits = cache.hits
    (rw,) = scan_paths([str(whole)], cache=cache)
    assert cache.hits - hits == len(ref.modules) and cache.bad == 0
    assert rw.findings == scan_image(str(whole)).findings and rw.findings != ref.findings  # other fd offsets
    assert [f.rva for f in rw.findings] == [f.rva for f in ref.findings]
    # several images seen before, two jobs: each served whole by this process, in order; the
    # copy of DEB22 is not looked up again (same contents: scanned once, reported under its name)
    hits = cache.hits
    again = scan_paths([str(whole), str(DEB22), str(other)], jobs=2, cache=cache)
    assert cache.hits - hits == 2 and cache.bad == 0
    assert again[2].same_as == str(DEB22) and again[1].same_as is None
    assert scan_notes(again[2]) == scan_notes(ref) + [f"same contents as {DEB22}: scanned once"]
    assert [r.path for r in again] == [str(whole), str(DEB22), str(other)]
    assert [r.findings for r in again] == [rw.findings, ref.findings, res.findings]


def _rewrap(path: Path, payload) -> None:
    """Replace an entry's payload, with a correct digest: damage only validation can catch."""
    doc = json.loads(path.read_text())
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    doc["payload"], doc["sha256"] = body, hashlib.sha256(body.encode()).hexdigest()
    path.write_text(json.dumps(doc))


def test_corrupted_cache_entries_are_ignored_and_rewritten(tmp_path):
    ref = _scan("--format", "json", DEB22, "--no-cache").stdout
    assert _scan("--format", "json", DEB22).stdout == ref
    entries = _cache_files()
    docs = {p: json.loads(json.loads(p.read_text())["payload"]) for p in entries}
    image = [p for p, d in docs.items() if "findings" in d]
    with_sites = [p for p, d in docs.items() if d.get("sites")]
    assert len(image) == 1 and len(with_sites) == sum(1 for m in docs[image[0]]["modules"] if m["sites"]) >= 5
    # the image entry: truncated; module entries: truncated, a flipped payload byte, another key,
    # a site moved by one byte (bytes no longer the module's), a wrong shape
    image[0].write_bytes(image[0].read_bytes()[:100])
    s0, s1, s2, s3, s4 = with_sites[:5]
    s0.write_bytes(s0.read_bytes()[: len(s0.read_bytes()) // 2])
    raw = bytearray(s1.read_bytes())
    raw[raw.index(b'\\"rva\\":') + 8] ^= 1
    s1.write_bytes(bytes(raw))
    wrong = json.loads(s2.read_text())
    wrong["key"] = "0" * 64
    s2.write_text(json.dumps(wrong))
    moved = json.loads(json.dumps(docs[s3]))  # a copy
    moved["sites"][0]["rva"] += 1
    _rewrap(s3, moved)
    _rewrap(s4, {**docs[s4], "sites": "many"})
    damaged = {p: p.read_bytes() for p in (image[0], s0, s1, s2, s3, s4)}
    assert _scan("--format", "json", DEB22).stdout == ref
    for p, before in damaged.items():  # each rewritten whole
        assert p.read_bytes() != before and C._unwrap(p.read_bytes(), p.stem) == docs[p]
    # a forged image entry of the right shape but another file's: not served
    forged = json.loads(json.loads(image[0].read_text())["payload"])
    forged["findings"] = []
    forged["sha256"] = "0" * 64
    _rewrap(image[0], forged)
    cache = C.ResultCache(C.cache_dir())
    (res,) = scan_paths([str(DEB22)], cache=cache)
    assert cache.bad == 1 and len(res.findings) == 90


def test_unusable_cache_directory_changes_nothing(tmp_path, monkeypatch):
    ref = _scan("--format", "json", DEB22, "--no-cache").stdout
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    r = _scan("--format", "json", DEB22)
    assert r.exit_code == 1 and r.stdout == ref and r.stderr == ""
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as the XDG rules say
    assert C.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "ovmftool", "results")


def test_symbols_scans_bypass_the_cache(tmp_path):
    """--symbols names come from files outside the image: such a scan neither reads nor writes
    the cache (an unusable --symbols directory stays an error of the whole command)."""
    r = _scan(DEB22, "--symbols", tmp_path / "nope")
    assert r.exit_code == 2 and r.stderr.startswith("ovmftool: error: --symbols") and _cache_files() == []
    (tmp_path / "build" / "X64").mkdir(parents=True)
    (tmp_path / "build" / "X64" / "Unrelated.map").write_text("")  # a build directory naming no module here
    r = _scan("--format", "json", DEB22, "--symbols", tmp_path / "build")
    assert r.exit_code == 1 and len(json.loads(r.stdout)["findings"]) == 90 and _cache_files() == []


def test_other_commands_take_one_image_file(tmp_path):
    r = CliRunner().invoke(main, ["diff", str(tmp_path), str(DEB22)])
    assert r.exit_code == 2 and "is a directory" in r.stderr and r.stderr.count("\n") == 1
    # check and baseline take what scan takes: an empty directory is an error naming it
    for cmd in (["check", str(tmp_path)], ["baseline", str(tmp_path), "-o", "-"]):
        r = CliRunner().invoke(main, cmd)
        assert r.exit_code == 2 and "no firmware image" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_one_image_with_modules_over_jobs_and_a_partial_cache():
    ref = _scan("--format", "json", DEB22, "--no-cache", "-j", "1").stdout
    assert _scan("--format", "json", DEB22, "-j", "2").stdout == ref  # cold: modules analysed in 2 workers
    entries = _cache_files()
    image = [p for p in entries if "findings" in json.loads(json.loads(p.read_text())["payload"])]
    assert len(image) == 1
    for p in image + entries[::2]:  # the image's entry and half the modules' gone: the rest served, the gaps refilled
        if p.exists():
            p.unlink()
    assert _scan("--format", "json", DEB22, "-j", "2").stdout == ref
    after = _cache_files()
    assert after == entries, (sorted(set(after) - set(entries)), sorted(set(entries) - set(after)))


def _schema_kind(prop: dict, defs: dict):
    """A scan-1.json property as the codec's `Kind`."""
    if "$ref" in prop:
        prop = defs[prop["$ref"].rsplit("/", 1)[1]]
    if "enum" in prop:
        values = [v for v in prop["enum"] if v is not None]
        optional = None in prop["enum"]
        if all(isinstance(v, str) for v in values):
            return (tuple(values), optional)
        return ("i", optional)  # an enum of numbers (width)
    types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    optional = "null" in types
    (t,) = [t for t in types if t != "null"]
    return {"string": ("s", optional), "integer": ("i", optional), "boolean": ("b", optional)}.get(t)


def test_cache_codec_checks_what_the_records_and_schema_declare():
    """The cache codec's field checks are made from the records' annotations (`codec.field_kinds`),
    and agree with docs/schema/scan-1.json field by field (a string enum there: a Literal here, or a
    string the schema narrows further), so that neither is written twice. Each check rejects a value
    of the wrong kind."""
    from ovmftool.scan.records import Caller, FdRegion, Finding, ModuleSummary

    schema = json.loads((ROOT / "docs/schema/scan-1.json").read_text())
    defs = schema["$defs"]
    finding = defs["finding"]
    module = defs["report"]["properties"]["modules"]["items"]
    caller = finding["properties"]["callers"]["items"]
    region = finding["properties"]["fd_region"]
    for cls, obj in ((Finding, finding), (ModuleSummary, module), (Caller, caller), (FdRegion, region)):
        kinds = codec.field_kinds(cls)
        assert list(kinds) == obj["required"], cls
        for name, kind in kinds.items():
            prop = obj["properties"].get(name)
            if prop is None:  # the schema says nothing more of it (a caller's names, a module's name)
                continue
            want = _schema_kind(prop, defs)
            if kind is None:  # a nested record or list
                assert want is None, (cls.__name__, name)
            elif isinstance(want[0], tuple) and not isinstance(kind[0], tuple):
                assert kind == ("s", want[1]), (cls.__name__, name)  # arch, direction, rep: enums of strings
            else:
                assert kind == want, (cls.__name__, name, kind, want)
    f = json.loads(json.dumps(scan_paths([str(DEB22)])[0].findings[0].as_dict()))
    assert codec._typed(f, codec._FINDING_FIELDS)
    for field, bad in (("rva", -1), ("rva", "0x10"), ("reachable", 1), ("function_source", "guess"), ("module", None)):
        assert not codec._typed({**f, field: bad}, codec._FINDING_FIELDS), (field, bad)
    assert codec._typed({**f, "function_source": None, "fd_offset": None}, codec._FINDING_FIELDS)
    assert not codec._typed({**f, "extra": 1}, codec._FINDING_FIELDS)
