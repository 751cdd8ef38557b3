"""patch: rewrite string I/O in built images, reassemble, prove (rescan, emulation, boot)."""

import hashlib
import json
import shutil
import struct

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.model.node import all_problems, walk
from ovmftool.model.parser import parse_flash, read_image
from ovmftool.ops.assemble import Edit, assemble
from ovmftool.ops.modules import iter_modules
from ovmftool.patch import detour, emulate, shapes
from ovmftool.patch.patcher import patch
from ovmftool.scan.scanner import scan_image
from tests.conftest import CODE_IMAGES, CORPUS_IMAGES, STOCK, build_dir, stored

DEB_4M = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]


def _mods(root):
    return {(m.volume, m.guid, m.arch): m for m in iter_modules(root)}


def _check_patched(path, out: bytes, res):
    """Independent proof of a patched image: full parse and full scan, and every byte that
    differs inside a module is one of the planned rewrites."""
    new = parse_flash(out, "patched")
    assert all_problems(new) == []
    assert scan_image("patched", jobs=2, root=new).findings == []
    old = read_image(str(path))
    om, nm = _mods(old), _mods(new)
    assert om.keys() == nm.keys()
    planned = {}
    for r in res.rewrites:
        planned.setdefault((r.volume, r.guid, r.arch), []).append(r)
    for k, m in om.items():
        a, b = m.image.memory, nm[k].image.memory
        if k not in planned:
            assert a == b, k
            continue
        assert len(a) == len(b)
        diff = bytearray(a)
        for r in planned[k]:
            old_b, new_b = bytes.fromhex(r.old), bytes.fromhex(r.new)
            assert a[r.rva : r.rva + len(old_b)] == old_b
            diff[r.rva : r.rva + len(new_b)] = new_b
        assert bytes(diff) == b, k  # nothing else changed
    # untouched volumes stay byte-identical (e.g. SECFV when SecMain has no sites)
    touched_tops = {r.volume.split("/")[0] for r in res.rewrites}
    for ov, nv in zip(old.children, new.children):
        if getattr(ov, "name", None) and ov.name not in touched_tops:
            assert ov.data == nv.data, ov.name


# --- assembling ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODE_IMAGES))
def test_rebuild_of_unmodified_image_is_byte_identical(name):
    data = CODE_IMAGES[name].read_bytes()
    root = parse_flash(data, name)
    out, _ = assemble(root, [])
    assert out == data
    out, asm = assemble(root, [], force=True)  # every container re-laid out from its children
    assert out == data and asm.reencoded == []


@pytest.mark.build
@pytest.mark.parametrize("key", STOCK)
def test_rebuild_of_unmodified_build_is_byte_identical(key, tmp_path):
    b = stored(key)
    for fd in (b.code, b.full(tmp_path)):
        data = fd.read_bytes()
        out, _ = assemble(parse_flash(data, fd.name), [], force=True)
        assert out == data


def test_edit_that_does_not_match_the_image_is_refused():
    root = read_image(str(DEB_4M))
    m = next(iter_modules(root))
    with pytest.raises(Exception, match="does not match"):
        assemble(root, [Edit(m.image, 0, b"XX", b"YY")])


def test_recompressed_volume_that_no_longer_fits_fails_clearly():
    root = read_image(str(DEB_4M))
    m = next(m for m in iter_modules(root) if m.image.abs_offset is None)
    # Incompressible bytes in place of a whole module: the LZMA stream grows past the volume.
    import os

    from ovmftool.ops import assemble as A

    edits = []
    for mm in iter_modules(root):
        if mm.image.abs_offset is None and mm.image.size > 0x8000:
            edits.append(Edit(mm.image, 0x400, mm.image.data[0x400 : mm.image.size], os.urandom(mm.image.size - 0x400)))
    assert m is not None and edits
    with pytest.raises(A.VolumeFull, match="needs 0x[0-9A-F]+ more bytes"):
        A.Assembler(root, edits, "fast").build()


def test_an_lzma_effort_that_does_not_fit_gives_way_to_the_next(monkeypatch):
    """The assembler takes the fastest encoder effort whose stream fits: with the fastest made
    useless (a 4 KiB dictionary: the 13 MB DXE stream, 2.5 MB then, no longer fits the 2 MB
    image's 1.7 MB volume), the next one is used and the output is valid; when every effort
    overflows, the volume's error stands."""
    from ovmftool.model import encoders
    from ovmftool.ops import assemble as A

    path = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE.fd"]
    root = read_image(str(path))
    assert patch(str(path), root, jobs=1).lzma_effort == "fast"
    monkeypatch.setitem(encoders.LZMA_EFFORTS, "fast", {**encoders.LZMA_EFFORTS["fast"], "dict_cap": 4096})
    res = patch(str(path), root, jobs=1)
    assert res.lzma_effort == "tight" and res.sites_after == 0
    assert all_problems(parse_flash(res.output, "patched")) == []
    for name in encoders.LZMA_EFFORTS:
        monkeypatch.setitem(encoders.LZMA_EFFORTS, name, {**encoders.LZMA_EFFORTS[name], "dict_cap": 4096})
    with pytest.raises(A.VolumeFull, match="needs 0x[0-9A-F]+ more bytes"):
        patch(str(path), root, jobs=1)


def _guid_names():
    from ovmftool.model import codecs
    from ovmftool.model import structs as S

    return sorted(n for n in dir(S) if n.endswith("_GUID") and getattr(S, n) in codecs.GUIDED_DECODERS)


@pytest.mark.parametrize("guid", _guid_names())
def test_encoders_round_trip_through_the_decoders(guid):
    """Each encoder's output decodes (with the parser's decoders) to its input: real module bytes.
    Every GUID the parser decodes is here, so a decoder without an encoder fails."""
    from ovmftool.model import codecs, encoders
    from ovmftool.model import structs as S
    from ovmftool.model.limits import Limits

    g = getattr(S, guid)
    root = read_image(str(DEB_4M))
    data = b"".join(m.image.data for m in list(iter_modules(root))[:12])
    lzma_sec = next(n for n in walk(root) if getattr(n, "compression", None) == "LZMA")
    old = lzma_sec.body if "LZMA" in guid else struct.pack("<QQ", 0, 1 << 20) if "BROTLI" in guid else b""
    enc = encoders.GUIDED_ENCODERS[g](data, old)
    assert codecs.GUIDED_DECODERS[g](enc, Limits(), "test") == data
    if "LZMA" in guid:
        assert enc[:5] == old[:5] and struct.unpack_from("<Q", enc, 5)[0] == len(data)


def test_efi_encoder_round_trips():
    from ovmftool.model import codecs, encoders
    from ovmftool.model.limits import Limits

    data = b"".join(m.image.data for m in list(iter_modules(read_image(str(DEB_4M))))[:6])
    assert codecs.COMPRESSION_DECODERS[1](encoders.COMPRESSION_ENCODERS[1](data, b""), Limits(), "t") == data


# --- shapes and emulation --------------------------------------------------------------------


def _sev_site(root):
    scan = scan_image("x", jobs=1, root=root)
    mods = _mods(root)
    f = next(f for f in scan.findings if f.function and "ReadFifo8" in f.function and f.arch == "X64")
    return f, mods[(f.volume, f.guid, f.arch)]


def test_sev_rewrite_is_proved_and_a_wrong_one_is_caught():
    root = read_image(str(DEB_4M))
    f, m = _sev_site(root)
    v = shapes.classify(m.image, f.rva, len(bytes.fromhex(f.bytes)))
    assert v.shape == "sev-fifo" and v.rewrite is not None
    orig = bytes(m.image.memory)

    def with_bytes(at, new):
        b = bytearray(orig)
        b[at : at + len(new)] = new
        return bytes(b)

    good = with_bytes(v.rewrite.rva, v.rewrite.new)
    assert emulate.compare(orig, good, 64, f.function_rva, f.function) == []
    # Skipping the transfer altogether (jmp Done) must be caught: no port reads, buffer untouched.
    n = len(v.rewrite.old)
    jmp = bytes([0xEB, (orig[f.rva + n - 1] + n - 2) & 0xFF]) + shapes.NOPS[n - 2]
    bad = emulate.compare(orig, with_bytes(f.rva, jmp), 64, f.function_rva, f.function)
    assert any("ports differ" in p for p in bad) and any("buffer differ" in p for p in bad)
    # Reading the wrong width in the loop (in ax,dx instead of in al,dx) must be caught too.
    loop_in = orig.index(b"\xec", f.rva)
    bad = emulate.compare(
        orig, with_bytes(f.rva, v.rewrite.new)[:loop_in] + b"\xed" + orig[loop_in + 1 :], 64, f.function_rva, f.function
    )
    assert bad


def test_ia32_sev_routines_are_emulated_in_32_bit_mode():
    root = read_image(str(DEB_4M))
    scan = scan_image("x", jobs=1, root=root)
    ia32 = [f for f in scan.findings if f.arch == "IA32"]
    assert ia32
    mods = _mods(root)
    for f in ia32[:6]:
        m = mods[(f.volume, f.guid, f.arch)]
        v = shapes.classify(m.image, f.rva, len(bytes.fromhex(f.bytes)))
        new = bytearray(m.image.memory)
        new[v.rewrite.rva : v.rewrite.rva + len(v.rewrite.new)] = v.rewrite.new
        assert emulate.compare(bytes(m.image.memory), bytes(new), 32, f.function_rva, f.function) == []


# --- whole images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODE_IMAGES))
def test_patch_debian_images(name):
    path = CODE_IMAGES[name]
    root = read_image(str(path))
    res = patch(str(path), root, jobs=2)
    assert res.sites_before > 0 and res.refusals == [] and len(res.rewrites) == res.sites_before
    assert res.sites_after == 0 and res.output is not None
    assert {r.shape for r in res.rewrites} == {"sev-fifo"}
    _check_patched(path, res.output, res)


@pytest.mark.build
@pytest.mark.parametrize("key", STOCK)
def test_patch_builds(key):
    path = stored(key).code
    res = patch(str(path), read_image(str(path)), jobs=2)
    assert res.refusals == [] and res.sites_after == 0 and len(res.rewrites) == res.sites_before > 0
    _check_patched(path, res.output, res)


def _xip_bases(root):
    """For every execute-in-place PE module: image base minus its offset in its volume (the
    volume's load address: one value per volume when every module is placed right)."""
    out = {}
    for m in iter_modules(root):
        img = m.image
        if m.phase in ("PEI", "SEC") and img.image_base:
            vol = m.file.parent
            out.setdefault(m.volume, set()).add(img.image_base - (img.offset - vol.offset))
    return out


@pytest.mark.build
@pytest.mark.parametrize("key", ["2022.11-X64-DEBUG-nonsev", "2022.11-Ia32X64-RELEASE-nonsev"])
def test_non_sev_build_is_patched_by_growing_modules(key, tmp_path):
    """IoFifo.nasm (pure REP): modules grow (new section, or the last section extended where the
    header has no room), volumes are laid out again, moved PEIMs rebased."""
    path = stored(key).code
    root = read_image(str(path))
    res = patch(str(path), root, jobs=2)
    assert res.refusals == [] and res.sites_after == 0 and len(res.rewrites) == res.sites_before > 0
    assert {r.shape for r in res.rewrites} == {"rep-fifo"}
    notes = {r.note.split("(")[1].split(")")[0] for r in res.rewrites}
    if "DEBUG" in key:  # 104 modules get a new section, 4 with full section tables the extended last one
        assert notes == {"new-section", "last-section"}
    if "Ia32X64" in key:  # IA32 PEIMs grown, and their loops are 32-bit code
        assert any(r.arch == "IA32" for r in res.rewrites) and any(r.arch == "X64" for r in res.rewrites)
    assert res.rebased and all(r.delta % 8 == 0 for r in res.rebased)
    new = parse_flash(res.output, "patched")
    assert all_problems(new) == []
    assert scan_image("patched", jobs=2, root=new).findings == []
    before, after = _xip_bases(root), _xip_bases(new)
    assert before == after and all(len(v) == 1 for v in after.values())  # every XIP module at its address
    out = tmp_path / "OVMF_CODE.fd"
    out.write_bytes(res.output)
    if shutil.which("qemu-system-x86_64"):
        code, doc = _boot(out, path.with_name("OVMF_VARS.fd"))
        assert code == 0 and doc["ended"] == "shell" and doc["executed"] == []


def _elf_text_end(build, m) -> int:
    """Where the linker's .text output section of module `m` ends, read straight from its .debug."""
    from elftools.elf.elffile import ELFFile

    cands = [build / m.arch / f"{m.name}.debug"] + list((build / m.arch).glob(f"{m.name}_*.debug"))
    hit = next(p for p in cands if p.exists() and (p.stem == m.name or p.stem.split("_", 1)[1].lower() == m.guid))
    with open(hit, "rb") as fh:
        text = ELFFile(fh).get_section_by_name(".text")
        return text["sh_addr"] + text["sh_size"]


@pytest.mark.build
def test_slack_after_text_is_used_when_the_build_symbols_prove_it(tmp_path):
    """With --symbols, IoFifo loops go into the zero bytes after the linker's .text (GenFw's
    padding up to the section alignment) where they fit: those modules keep their size and
    layout; the others still grow. Without symbols nothing is placed there (see the test above)."""
    from ovmftool.patch import grow
    from ovmftool.scan.symbols import BuildSymbols

    build = build_dir("2022.11-X64-DEBUG-nonsev")
    path = build / "FV" / "OVMF_CODE.fd"
    root = read_image(str(path))
    res = patch(str(path), root, symbols_dir=str(build))
    assert res.refusals == [] and res.sites_after == 0 and len(res.rewrites) == res.sites_before > 0
    placed = {}
    for r in res.rewrites:
        placed.setdefault((r.volume, r.guid, r.arch), set()).add(r.note.split("(")[1].split(")")[0])
    old, new = _mods(root), _mods(parse_flash(res.output, "patched"))
    expected = set()
    for k in placed:
        m = old[k]
        text = next(s for s in m.image.sections if s.name == ".text")
        end = _elf_text_end(build, m)
        pe_end = text.rva + min(text.virtual_size, text.raw_size)
        need = 0
        for r in sorted({(r.rva, r.function) for r in res.rewrites if (r.volume, r.guid, r.arch) == k}):
            io = emulate.routine_io(r[1])
            need += (-need) % 16
            need += len(grow.loop_code(m.arch, *io))
        start = end + (-end) % 16
        if start + need <= pe_end and not any(m.image.memory[end:pe_end]):
            expected.add(k)
    assert len(expected) >= 5  # the 4 KiB-aligned runtime drivers of this build
    assert {k for k, p in placed.items() if p == {"slack"}} == expected
    assert all(p != {"slack"} for k, p in placed.items() if k not in expected)
    for k in expected:
        a, b = old[k].image, new[k].image
        assert a.size == b.size and len(a.memory) == len(b.memory)
        end = _elf_text_end(build, old[k])
        entries = [r for r in res.rewrites if (r.volume, r.guid, r.arch) == k]
        diff = [i for i in range(len(a.memory)) if a.memory[i] != b.memory[i]]
        in_entries = lambda i, entries=entries: any(r.rva <= i < r.rva + len(bytes.fromhex(r.new)) for r in entries)  # noqa: E731
        assert diff and all(in_entries(i) or i >= end for i in diff)  # entries, and loops after .text only
    # the .map gives the same end of .text as the ELF
    sym = BuildSymbols(str(build))
    m = old[next(iter(expected))]
    from ovmftool.scan.symbols import _read_map

    assert _read_map(build / m.arch / f"{m.name}.map").code_end == _elf_text_end(build, m)
    assert sym.lookup(m.name, m.guid, m.arch, None, m.image.entry_rva).code_end == _elf_text_end(build, m)
    # a nonzero byte in the slack (data the symbols do not describe) means no slack
    k = next(iter(expected))
    img = old[k].image
    end = _elf_text_end(build, old[k])
    assert grow.slack_room(img, end) is not None
    from ovmftool.model.node import Space
    from ovmftool.model.pe import parse_image

    data = bytearray(img.data)
    data[img.rva_to_offset(end) + 40] = 0x90
    assert grow.slack_room(parse_image(Space(bytes(data), None, "t"), 0, len(data), None), end) is None
    out = tmp_path / "OVMF_CODE.fd"
    out.write_bytes(res.output)
    if shutil.which("qemu-system-x86_64"):
        code, doc = _boot(out, path.with_name("OVMF_VARS.fd"))
        assert code == 0 and doc["ended"] == "shell" and doc["executed"] == []


@pytest.mark.parametrize("arch", ["X64", "IA32"])
def test_grown_loops_match_every_iofifo_routine(arch):
    """Each IoFifo.nasm routine (from the built-in signatures: assembled from the real sources)
    against its loop, under emulation, as the patcher would lay them out."""
    from ovmftool.patch import grow
    from ovmftool.scan import signatures as sigs

    bits = 64 if arch == "X64" else 32
    routines = [s for s in sigs.load() if s.arch == arch and s.source.endswith("IoFifo.nasm")]
    assert len(routines) == 6
    for s in routines:
        d, w = emulate.routine_io(s.routine)
        orig = bytearray(0x200)
        orig[0x10 : 0x10 + len(s.code)] = s.code
        loop = grow.loop_code(arch, d, w)
        new = bytearray(orig)
        new[0x10 : 0x10 + len(s.code)] = b"\xe9" + (0x100 - 0x15).to_bytes(4, "little") + b"\xcc" * (len(s.code) - 5)
        new[0x100 : 0x100 + len(loop)] = loop
        assert emulate.compare(bytes(orig), bytes(new), bits, 0x10, s.routine) == [], s.routine
        # and a loop that moves one unit too few is caught
        bad = bytearray(new)
        bad[0x100 : 0x100 + len(loop)] = loop.replace(b"\xe2", b"\x90\x90", 1)[: len(loop)]
        assert emulate.compare(bytes(orig), bytes(bad), bits, 0x10, s.routine)
        # the canonical-placement path the patcher uses agrees, both ways
        n = len(s.code)
        assert emulate.compare_redirected(bytes(orig), bytes(new), bits, 0x10, n, 0x100, len(loop), s.routine) == []
        assert emulate.compare_redirected(bytes(orig), bytes(bad), bits, 0x10, n, 0x100, len(loop), s.routine)


# --- command line ------------------------------------------------------------------------------


def test_cli_dry_run_writes_nothing_and_lists_every_rewrite(tmp_path):
    out = tmp_path / "out.fd"
    r = CliRunner().invoke(main, ["patch", "--dry-run", "--format", "json", "-o", str(out), str(DEB_4M)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    import jsonschema

    from tests.conftest import ROOT

    jsonschema.validate(doc, json.loads((ROOT / "docs" / "schema" / "patch-1.json").read_text()))
    assert doc["schema_version"] == "ovmftool.patch/1" and doc["written"] is None
    assert len(doc["rewrites"]) == doc["sites_before"] > 0 and doc["sites_after"] is None
    assert all(set(x) >= {"module", "function", "rva", "old", "new"} for x in doc["rewrites"])
    assert not out.exists()


def test_cli_patch_writes_a_clean_image_and_leaves_the_input(tmp_path):
    before = hashlib.sha256(DEB_4M.read_bytes()).hexdigest()
    out = tmp_path / "OVMF_CODE_4M.fd"
    r = CliRunner().invoke(main, ["patch", "-o", str(out), str(DEB_4M)])
    assert r.exit_code == 0, r.output
    assert "rescan finds 0 site(s)" in r.output and "wrote" in r.output
    assert hashlib.sha256(DEB_4M.read_bytes()).hexdigest() == before
    r = CliRunner().invoke(main, ["scan", str(out)])
    assert r.exit_code == 0, r.output
    # patching a clean image changes nothing
    again = tmp_path / "again.fd"
    r = CliRunner().invoke(main, ["patch", "-o", str(again), str(out)])
    assert r.exit_code == 0 and again.read_bytes() == out.read_bytes()


def test_cli_refusals_write_nothing_unless_allowed(tmp_path, monkeypatch):
    # Sites in PlatformPei treated as an unknown shape: the plumbing of refusals on a real image.
    real = shapes.classify

    def classify(img, rva, size):
        v = real(img, rva, size)
        return shapes.Verdict("unknown", None, "test: treated as unknown") if img.machine == "IA32" else v

    monkeypatch.setattr(shapes, "classify", classify)

    def no_window(*_a, **_k):
        raise detour.CannotDetour("test: no detour either")

    monkeypatch.setattr(detour, "window_at", no_window)  # an unknown site gets a detour: refuse it too
    path = DEB_4M
    out = tmp_path / "o.fd"
    r = CliRunner().invoke(main, ["patch", "-o", str(out), str(path)])
    assert r.exit_code == 1 and "nothing written" in r.output and not out.exists()
    assert "test: no detour either" in r.output and "PlatformPei" in r.output
    r = CliRunner().invoke(main, ["patch", "--allow-unknown", "--format", "json", "-o", str(out), str(path)])
    assert r.exit_code == 1
    doc = json.loads(r.output)
    import jsonschema

    from tests.conftest import ROOT

    jsonschema.validate(doc, json.loads((ROOT / "docs" / "schema" / "patch-1.json").read_text()))
    assert out.exists() and doc["sites_after"] == len(doc["refusals"]) > 0


@pytest.mark.parametrize(
    "args,msg",
    [
        (["-o", "{input}"], "is the input image"),
        ([], "give -o OUTPUT"),
        (["-o", "{tmp}/missing/out.fd"], "No such file or directory"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, msg):
    args = [a.format(input=DEB_4M, tmp=tmp_path) for a in args]
    r = CliRunner().invoke(main, ["patch", *args, str(DEB_4M)])
    assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_cli_damaged_input_is_refused(tmp_path):
    data = bytearray(DEB_4M.read_bytes())
    data[0x78 + 16] ^= 0xFF  # header checksum of the FVMAIN_COMPACT file
    bad = tmp_path / "bad.fd"
    bad.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["patch", "-o", str(tmp_path / "o.fd"), str(bad)])
    assert r.exit_code == 2 and "damaged" in r.output and not (tmp_path / "o.fd").exists()


@pytest.mark.parametrize(
    "vars_image",
    sorted(str(v) for k, v in CORPUS_IMAGES.items() if "OVMF_VARS" in k),
    ids=lambda p: p.split("images/", 1)[1],
)
def test_cli_variable_store_is_no_code_not_nothing_to_patch(tmp_path, vars_image):
    """A variable store has no code: exit 2 as for scan, with or without --dry-run, nothing written."""
    out = tmp_path / "p.fd"
    for args in (["-o", str(out)], ["--dry-run"], ["--dry-run", "--format", "json"]):
        r = CliRunner().invoke(main, ["patch", *args, vars_image])
        assert r.exit_code == 2, (args, r.output)
        assert r.output == f"ovmftool: error: {vars_image}: no PE/TE modules: is this OVMF_VARS (a variable store)?\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []
    from ovmftool.errors import ImageError

    with pytest.raises(ImageError, match="no PE/TE modules"):
        patch(vars_image, read_image(vars_image), dry_run=True)


# --- boots ---------------------------------------------------------------------------------------

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 from .ci/run")


def _boot(image, vars_file):
    r = CliRunner().invoke(
        main, ["boot-check", "--format", "json", "--timeout", "240", "--vars", str(vars_file), str(image)]
    )
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.output)


@needs_qemu
@pytest.mark.parametrize(
    "name", ["debian-2022.11/OVMF_CODE_4M.fd", "debian-2025.02/OVMF_CODE_4M.fd", "debian-2022.11/OVMF_CODE.fd"]
)
def test_patched_debian_image_boots_to_the_shell_without_string_io(name, tmp_path):
    src = CORPUS_IMAGES[f"images/{name}"]
    out = tmp_path / src.name
    assert CliRunner().invoke(main, ["patch", "-o", str(out), str(src)]).exit_code == 0
    code, doc = _boot(out, src.with_name(src.name.replace("CODE", "VARS")))
    assert code == 0 and doc["ended"] == "shell" and doc["executed"] == []


@pytest.mark.build
@needs_qemu
@pytest.mark.parametrize("key", ["2022.11-X64-DEBUG", "2022.11-X64-RELEASE"])
def test_patched_build_boots_to_the_shell_without_string_io(key, tmp_path):
    b = stored(key).fv
    out = tmp_path / "OVMF_CODE.fd"
    assert CliRunner().invoke(main, ["patch", "-o", str(out), str(b / "OVMF_CODE.fd")]).exit_code == 0
    code, doc = _boot(out, b / "OVMF_VARS.fd")
    assert code == 0 and doc["ended"] == "shell" and doc["executed"] == []


def test_re_encoded_stream_is_proven_as_it_is_written():
    """encode_lzma decodes what it writes (the header it writes, the parser's own decoder) while it
    writes it, and fails if that is not the data; the re-parse of the output takes the proven bytes
    and gives the same tree as a parse that decodes everything."""
    import lzma as L

    from ovmftool.model import encoders
    from ovmftool.model.encoders import EncodeError, _Proof

    root = read_image(str(DEB_4M))
    res = patch(str(DEB_4M), root, jobs=1, dry_run=True)
    assert res.rewrites
    from ovmftool.patch.patcher import plan_patch

    _, edits = plan_patch(str(DEB_4M), root)
    out, asm = assemble(root, edits)
    assert len(asm.proven) == 1
    fast, full = parse_flash(out, "p", known=asm.proven), parse_flash(out, "p")
    view = lambda r: [(m.name, m.guid, m.volume, m.image.data) for m in iter_modules(r)]
    assert view(fast) == view(full) and all_problems(fast) == [] and all_problems(full) == []
    data = bytes(range(256)) * 4096
    header = bytes([0x5D, 0, 0, 0, 1]) + len(data).to_bytes(8, "little")
    good = L.compress(data, format=L.FORMAT_ALONE)
    for stream, ok in (
        (good, True),
        (L.compress(data[::-1], format=L.FORMAT_ALONE), False),
        (good[: len(good) // 2], False),
    ):
        p = _Proof(header, data)
        for i in range(0, len(stream), 1000):
            p.put(stream[i : i + 1000])
        if ok:
            p.close()
        else:
            with pytest.raises(EncodeError, match="failed its proof"):
                p.close()
    from ovmftool.model import codecs
    from ovmftool.model.limits import Limits

    assert codecs._lzma(encoders.encode_lzma(data, header), Limits(), "t") == data
    assert encoders.encode_lzma in encoders.PROVEN
