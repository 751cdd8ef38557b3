"""Outputs: modes under the umask, unwritable -o found before any work, one-line usage errors,
extract --allow-damaged, and the schemas of manifest.json and the committed plan.json files."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.node import walk
from ovmftool.model.parser import read_image
from ovmftool.model.section import Section
from ovmftool.ops.modules import iter_modules
from tests.conftest import CORPUS_IMAGES, ROOT

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
DEB25 = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
CACHE = Path(os.environ.get("OVMFTOOL_CACHE", Path.home() / ".cache" / "ovmftool"))


def _schema(name: str) -> dict:
    return json.loads((ROOT / "docs" / "schema" / f"{name}-1.json").read_text())


def _validate(doc, name: str) -> None:
    jsonschema.Draft202012Validator(_schema(name), format_checker=jsonschema.FormatChecker()).validate(doc)


def _ready_tree() -> Path | None:
    """An EDK II tree corpus/scripts/edk2-source.sh has already unpacked (none is fetched here)."""
    for ver in ("2022.11", "2025.02"):
        t = CACHE / "src" / f"edk2-{ver}"
        if (t / ".ovmftool-ready").is_file():
            return t
    return None


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    """Run a test body under a chosen umask; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


# -- modes ------------------------------------------------------------------------------------

FILE_COMMANDS = {
    "scan": ["scan", "--format", "json", DEB, "-o"],
    "info": ["info", DEB, "-o"],
    "baseline": ["baseline", DEB, "-o"],
    "patch": ["patch", DEB, "-o"],
}


@pytest.mark.parametrize("mask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
@pytest.mark.parametrize("cmd", sorted(FILE_COMMANDS))
def test_file_outputs_honour_the_umask(tmp_path, umask, cmd, mask, fmode, dmode):
    out = tmp_path / "out"
    umask(mask)
    r = CliRunner().invoke(main, FILE_COMMANDS[cmd] + [str(out)])
    assert r.exit_code in (0, 1), r.output  # scan: 1, sites found
    assert out.stat().st_size > 0 and _mode(out) == fmode
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


@pytest.mark.parametrize("mask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_extract_outputs_honour_the_umask(tmp_path, umask, mask, fmode, dmode):
    out = tmp_path / "x"
    umask(mask)
    r = CliRunner().invoke(main, ["extract", DEB, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert _mode(out) == dmode
    files = list(out.iterdir())
    assert len(files) > 100 and {_mode(f) for f in files} == {fmode}


@pytest.mark.parametrize("mask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_plan_outputs_honour_the_umask(tmp_path, umask, mask, fmode, dmode):
    tree = _ready_tree()
    if tree is None:
        pytest.skip("no EDK II tree unpacked under the cache (corpus/scripts/edk2-source.sh)")
    out = tmp_path / "new" / "p"  # plan creates missing parents
    umask(mask)
    r = CliRunner().invoke(main, ["plan", "--edk2", str(tree), "--dsc", "OvmfPkg/OvmfPkgX64.dsc", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert _mode(out) == dmode == _mode(out.parent)
    files = list(out.iterdir())
    assert {f.name for f in files} >= {"plan.json", "SUMMARY.md"} and {_mode(f) for f in files} == {fmode}
    _validate(json.loads((out / "plan.json").read_text()), "plan")


def test_umask_in_a_real_process(tmp_path):
    """The console entry point in a process started with umask 077 (not the test's own umask)."""
    out = tmp_path / "s.json"
    r = subprocess.run(
        [sys.executable, "-m", "ovmftool", "scan", "--format", "json", "-o", str(out), DEB],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o077),
    )
    assert r.returncode == 1, r.stderr
    assert _mode(out) == 0o600 and json.loads(out.read_text())["findings"]


@pytest.mark.parametrize("old_mode", [0o600, 0o664, 0o640])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, old_mode):
    out = tmp_path / "b.json"
    out.write_text("old")
    out.chmod(old_mode)
    umask(0o022)
    r = CliRunner().invoke(main, ["baseline", DEB, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert _mode(out) == old_mode and json.loads(out.read_text())["sites"]


def test_an_existing_empty_output_directory_keeps_its_mode(tmp_path, umask):
    out = tmp_path / "x"
    out.mkdir()
    out.chmod(0o750)
    umask(0o022)
    r = CliRunner().invoke(main, ["extract", DEB, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert _mode(out) == 0o750 and (out / "manifest.json").is_file()


# -- unwritable -o, found before any work -----------------------------------------------------


def _one_line_error(r, text: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.stderr == f"ovmftool: error: {text}\n", r.stderr
    assert r.stdout == ""


# The input does not exist: the output's error comes first, so the output was checked before
# the input was read (and before any scan or patch).
FILE_OUT = {
    "scan": ["scan", "/nonexistent/in.fd", "-o"],
    "info": ["info", "/nonexistent/in.fd", "-o"],
    "baseline": ["baseline", "/nonexistent/in.fd", "-o"],
    "patch": ["patch", "/nonexistent/in.fd", "-o"],
}
DIR_OUT = {
    "extract": ["extract", "/nonexistent/in.fd", "-o"],
    "plan": ["plan", "--edk2", "/", "--dsc", "Nope.dsc", "-o"],
}


@pytest.mark.parametrize("cmd", sorted(FILE_OUT))
def test_unwritable_file_output_is_one_line_before_any_work(tmp_path, cmd):
    argv = FILE_OUT[cmd]
    _one_line_error(
        CliRunner().invoke(main, argv + ["/nonexistent/x.json"]),
        "cannot write /nonexistent/x.json: No such file or directory",
    )
    _one_line_error(CliRunner().invoke(main, argv + [str(tmp_path)]), f"cannot write {tmp_path}: is a directory")
    # /sys refuses new files even to root (os.access would say yes)
    _one_line_error(CliRunner().invoke(main, argv + ["/sys/x.json"]), "cannot write /sys/x.json: Permission denied")
    f = tmp_path / "plain"
    f.write_text("")
    _one_line_error(CliRunner().invoke(main, argv + [f"{f}/x.json"]), f"cannot write {f}/x.json: Not a directory")


@pytest.mark.parametrize("cmd", sorted(FILE_OUT))
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, cmd):
    """`-o` naming the input image (as given, through a symbolic link, as a hard link, or as a
    file a scanned directory brings in) is one line and exit 2; the image is left as it was."""
    image = tmp_path / "fw" / "same.fd"
    image.parent.mkdir()
    image.write_bytes(Path(DEB).read_bytes())
    (tmp_path / "link.fd").symlink_to(image)
    os.link(image, tmp_path / "hard.fd")
    before = image.read_bytes()
    for out, shown in [(image, ""), (tmp_path / "link.fd", f" {image}"), (tmp_path / "hard.fd", f" {image}")]:
        r = CliRunner().invoke(main, FILE_OUT[cmd][:1] + [str(image), "-o", str(out)])
        _one_line_error(r, f"{out} is the input image{shown}; {cmd} never modifies its input")
    if cmd in ("scan", "baseline"):  # a directory's files are inputs too
        r = CliRunner().invoke(main, [cmd, str(image.parent), "-o", str(tmp_path / "hard.fd")])
        _one_line_error(r, f"{tmp_path / 'hard.fd'} is the input image {image}; {cmd} never modifies its input")
    assert image.read_bytes() == before


@pytest.mark.parametrize("cmd", sorted(DIR_OUT))
def test_unwritable_directory_output_is_one_line_before_any_work(tmp_path, cmd):
    argv = DIR_OUT[cmd]
    full = tmp_path / "full"
    full.mkdir()
    (full / "a").write_text("")
    _one_line_error(CliRunner().invoke(main, argv + [str(full)]), f"cannot write {full}: Directory not empty")
    _one_line_error(CliRunner().invoke(main, argv + [str(full / "a")]), f"cannot write {full / 'a'}: Not a directory")
    _one_line_error(CliRunner().invoke(main, argv + ["/sys/x"]), "cannot write /sys/x: Operation not permitted")
    if cmd == "extract":  # plan creates missing parents; extract wants the parent to exist
        _one_line_error(
            CliRunner().invoke(main, argv + ["/nonexistent/x"]),
            "cannot write /nonexistent/x: No such file or directory",
        )
    else:
        _one_line_error(CliRunner().invoke(main, argv + ["/sys/a/b"]), "cannot write /sys/a/b: Operation not permitted")
        r = CliRunner().invoke(main, argv[:2] + [str(tmp_path)] + argv[3:] + [str(tmp_path / "new" / "p")])
        assert r.exit_code == 2 and "not an EDK II tree" in r.stderr
        assert not (tmp_path / "new").exists()  # missing parents are made only once the work is done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no probe left behind


def test_immutable_directory_and_read_only_mount(tmp_path):
    """Root may write anywhere the permission bits say no; an immutable directory (chattr +i) and a
    read-only mount still refuse, and the error says so."""
    d = tmp_path / "imm"
    d.mkdir()
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        _one_line_error(
            CliRunner().invoke(main, ["scan", DEB, "-o", str(d / "x.json")]),
            f"cannot write {d / 'x.json'}: Operation not permitted",
        )
        _one_line_error(
            CliRunner().invoke(main, ["extract", DEB, "-o", str(d / "x")]),
            f"cannot write {d / 'x'}: Operation not permitted",
        )
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        _one_line_error(
            CliRunner().invoke(main, ["baseline", DEB, "-o", str(ro / "b.json")]),
            f"cannot write {ro / 'b.json'}: Read-only file system",
        )
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_output_to_stdout_and_devices_still_work(tmp_path):
    r = CliRunner().invoke(main, ["baseline", DEB, "-o", "-"])
    assert r.exit_code == 0 and json.loads(r.stdout)["schema_version"] == "ovmftool.baseline/1"
    r = CliRunner().invoke(main, ["info", DEB, "-o", "/dev/null"])
    assert r.exit_code == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)


# -- usage errors -----------------------------------------------------------------------------

USAGE = [
    (["scan"], "scan: Missing argument 'IMAGES...'.", "scan"),
    (["scan", "--format", "xml", DEB], "scan: Invalid value for '--format': 'xml' is not one of", "scan"),
    (["scan", "--format"], "scan: Option '--format' requires an argument.", "scan"),
    (["scan", "--bogus", DEB], "scan: No such option '--bogus'", "scan"),
    (["scan", "-j", "0", DEB], "scan: Invalid value for '-j' / '--jobs'", "scan"),
    (["info"], "info: Missing argument 'IMAGE'.", "info"),
    (["extract", DEB], "extract: Missing option '-o' / '--output'.", "extract"),
    (["diff", DEB, DEB, "extra"], "diff: Got unexpected extra argument (extra)", "diff"),
    (["plan", "--dsc", "x.dsc", "-o", "o"], "plan: Missing option '--edk2'.", "plan"),
    (["plan", "--edk2", "/nonexistent", "--dsc", "x", "-o", "o"], "plan: Invalid value for '--edk2'", "plan"),
    (["boot-check", "--timeout", "1", DEB], "boot-check: Invalid value for '--timeout'", "boot-check"),
    # NaN passes a float range (it compares false with both bounds): a boot that never times out
    (
        ["boot-check", "--hang-after", "nan", DEB],
        "boot-check: Invalid value for '--hang-after': 'nan' is not a number of seconds",
        "boot-check",
    ),
    (
        ["boot-check", "--timeout", "-NaN", DEB],
        "boot-check: Invalid value for '--timeout': '-NaN' is not a number of seconds",
        "boot-check",
    ),
    (["decode", "--bits", "12", "f36c"], "decode: Invalid value for '--bits'", "decode"),
    (["scan", DEB, "-o", ""], "scan: Invalid value for '-o' / '--output': an empty file name", "scan"),
    (["extract", DEB, "-o", ""], "extract: Invalid value for '-o' / '--output': an empty directory name", "extract"),
    (["patch"], "patch: Missing argument 'IMAGE'.", "patch"),
    (["nosuch"], "No such command 'nosuch'.", None),
    (["--bogus"], "No such option '--bogus'", None),
]


@pytest.mark.parametrize("argv,msg,cmd", USAGE, ids=[" ".join(a[:3]) for a, _, _ in USAGE])
def test_usage_errors_are_one_line(argv, msg, cmd):
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"ovmftool: error: {msg}"), r.stderr
    assert r.stderr.endswith(f"(see ovmftool {cmd + ' ' if cmd else ''}--help)\n")
    assert "Usage:" not in r.output and "Try " not in r.output


def test_usage_error_from_the_console_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "ovmftool", "scan", "--format", "xml", DEB], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("ovmftool: error: scan: Invalid value for '--format'") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [["--help"], ["scan", "--help"], ["plan", "-h"], ["--version"]])
def test_help_and_version_still_work(argv):
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 0 and r.stderr == ""
    assert ("ovmftool, version" in r.stdout) if argv == ["--version"] else r.stdout.startswith("Usage: ")


# -- extract --allow-damaged ------------------------------------------------------------------


def _damaged_debian(tmp_path, zap_secmain: bool) -> Path:
    """Debian's image with its LZMA stream (PEI and DXE volumes) corrupted, and optionally the
    uncompressed SecMain's MZ signature overwritten."""
    root = read_image(DEB)
    data = bytearray(Path(DEB).read_bytes())
    lz = next(n for n in walk(root) if isinstance(n, Section) and n.decoded is not None and n.abs_offset is not None)
    start = lz.abs_offset + lz.header_size + 64
    for i in range(start, start + 64):
        data[i] ^= 0x5A
    if zap_secmain:
        sec = next(m for m in iter_modules(root) if m.name == "SecMain")
        data[sec.fd_offset : sec.fd_offset + 2] = b"XX"
    p = tmp_path / "damaged.fd"
    p.write_bytes(data)
    return p


def test_extract_refuses_a_damaged_image_without_the_flag(tmp_path):
    img = _damaged_debian(tmp_path, zap_secmain=False)
    r = CliRunner().invoke(main, ["extract", str(img), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "damaged image: LZMA decode failed" in r.stderr and "--allow-damaged" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("zap", [False, True], ids=["lzma", "lzma+secmain"])
def test_extract_allow_damaged_lists_what_it_skipped_and_exits_2(tmp_path, zap):
    img = _damaged_debian(tmp_path, zap_secmain=zap)
    out = tmp_path / "x"
    r = CliRunner().invoke(main, ["extract", str(img), "-o", str(out), "--allow-damaged"])
    assert r.exit_code == 2  # the image is damaged: never "checked and clean"
    assert r.stderr.count("\n") == 1 and "damaged image: LZMA decode failed" in r.stderr
    man = json.loads((out / "manifest.json").read_text())
    _validate(man, "extract")
    skipped = [l for l in r.stdout.splitlines() if l.startswith("skipped ")]
    assert len(skipped) == len(man["skipped"]) == (2 if zap else 1)
    lz = man["skipped"][0]
    assert lz["kind"] == "section" and lz["volume"] == "FVMAIN_COMPACT" and "LZMA decode failed" in lz["reason"]
    assert "LZMA decode failed" in skipped[0] and f"{len(man['skipped'])} part(s) skipped" in r.stderr
    written = sorted(p.name for p in out.iterdir())
    if zap:
        assert man["skipped"][1]["kind"] == "module" and man["skipped"][1]["name"] == "SecMain"
        assert "neither an MZ nor a VZ signature" in man["skipped"][1]["reason"]
        assert man["modules"] == [] and len(written) == 2  # the reset vector and the manifest
    else:
        assert [m["name"] for m in man["modules"]] == ["SecMain"]
        sec = next(m for m in iter_modules(read_image(DEB)) if m.name == "SecMain")
        assert (out / man["modules"][0]["file"]).read_bytes() == sec.image.raw
        assert len(written) == 3
    assert man["code_blobs"] and (out / man["code_blobs"][0]["file"]).is_file()


@pytest.mark.parametrize("image", [DEB, DEB25])
def test_extract_manifest_validates_and_skips_nothing_on_clean_images(tmp_path, image):
    out = tmp_path / "x"
    r = CliRunner().invoke(main, ["extract", image, "-o", str(out), "--allow-damaged"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    man = json.loads((out / "manifest.json").read_text())
    _validate(man, "extract")
    assert man["skipped"] == [] and len(man["modules"]) == len(list(iter_modules(read_image(image))))


def _cut(tmp_path, size: int) -> Path:
    p = tmp_path / f"cut_{size:x}.fd"
    p.write_bytes(Path(DEB).read_bytes()[:size])
    return p


def test_extract_allow_damaged_lists_what_truncation_lost(tmp_path):
    """Cut at 2 MiB: SECFV (SecMain, the reset vector) lies in the missing bytes; only the volume
    header that claims them tells. Cut by the last 4 KiB: SECFV is short and its files after the
    cut are lost, the reset vector among them."""
    whole = read_image(DEB)
    compact, secfv = (v for v in whole.children if getattr(v, "name", "") in ("FVMAIN_COMPACT", "SECFV"))
    out = tmp_path / "a"
    r = CliRunner().invoke(main, ["extract", str(_cut(tmp_path, 0x200000)), "-o", str(out), "--allow-damaged"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "1 part(s) skipped" in r.stderr
    man = json.loads((out / "manifest.json").read_text())
    _validate(man, "extract")
    (lost,) = man["skipped"]
    assert (lost["kind"], lost["volume"], lost["fd_offset"]) == ("volume", "FVMAIN_COMPACT", 0)
    missing = compact.fv_length - 0x200000
    assert (
        f"truncated: the volume header says 0x{compact.fv_length:X} bytes and 0x200000 are present; the missing "
        f"0x{missing:X} bytes from 0x200000 on are lost"
    ) in lost["reason"]
    assert "SecMain" not in {m["name"] for m in man["modules"]} and man["code_blobs"] == []
    assert [l for l in r.stdout.splitlines() if l.startswith("skipped ")] == [
        f"skipped volume {lost['guid']} in FVMAIN_COMPACT at 0x0: {lost['reason']}"
    ]

    out = tmp_path / "b"
    size = whole.size - 0x1000
    r = CliRunner().invoke(main, ["extract", str(_cut(tmp_path, size)), "-o", str(out), "--allow-damaged"])
    assert r.exit_code == 2
    man = json.loads((out / "manifest.json").read_text())
    _validate(man, "extract")
    vol, pad = man["skipped"]
    assert (vol["kind"], vol["volume"], vol["fd_offset"]) == ("volume", "SECFV", secfv.abs_offset)
    assert f"the missing 0x1000 bytes from 0x{size:X} on are lost" in vol["reason"]
    assert pad["kind"] == "file" and pad["volume"] == "SECFV"
    assert (
        "runs past the end of the volume" in pad["reason"]
        and "anything after it in its volume are lost" in pad["reason"]
    )
    reset = next(b for b in walk(whole) if b.kind == "code")
    assert pad["fd_offset"] < reset.abs_offset  # the reset vector came after the unusable file
    assert man["code_blobs"] == [] and "SecMain" in {m["name"] for m in man["modules"]}


@pytest.mark.parametrize("image", [DEB, DEB25])
def test_info_json_validates_in_both_forms(image):
    full = json.loads(CliRunner().invoke(main, ["info", "--format", "json", image]).stdout)
    mods = json.loads(CliRunner().invoke(main, ["info", "--format", "json", "--modules", image]).stdout)
    _validate(full, "info")
    _validate(mods, "info")
    assert mods["schema_version"] == full["schema_version"] == "ovmftool.info/1"
    assert "tree" not in mods and mods == {k: v for k, v in full.items() if k != "tree"}
    assert len(mods["modules"]) == len(list(iter_modules(read_image(image))))
    # the schema still catches a document that is neither form
    for bad in ({k: v for k, v in full.items() if k != "modules"}, {**mods, "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            _validate(bad, "info")


# -- plan.json --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edk2-patches").glob("*/*/plan.json"))
)
def test_committed_plans_validate(plan):
    doc = json.loads((ROOT / plan).read_text())
    _validate(doc, "plan")
    d = (ROOT / plan).parent
    assert sorted(p.name for p in d.glob("0*.patch")) == doc["series"]
    assert doc["verification"]["before"]["sites"] > 500 and doc["verification"]["after"]["sites"] == 0


# -- README -----------------------------------------------------------------------------------


def _readme_rows() -> dict[str, str]:
    """The command table's rows by command, checking it is one table (no line breaks it)."""
    import re

    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| command | what it does | exit codes |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    cells = [re.split(r"(?<!\\)\|", r)[1:-1] for r in rows]
    assert all(len(c) == 3 for c in cells), [r[:60] for r, c in zip(rows, cells) if len(c) != 3]
    out = {}
    for c in cells:
        m = re.match(r"\s*`ovmftool ([a-z-]+)", c[0])
        assert m, c[0]
        out[m.group(1)] = c[0]
    return out


def test_readme_command_table_lists_every_command_and_option():
    import click

    rows = _readme_rows()
    assert set(rows) == set(main.commands)
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name != "help":
                assert any(o in rows[name] for o in p.opts), f"README's {name} row lacks {p.opts}"
            elif isinstance(p, click.Argument):
                assert p.name.upper().rstrip("S") in rows[name], f"README's {name} row lacks {p.name}"
