"""Sites in routines nobody wrote a signature for: found (gap fill past code it refuses) and
rewritten by a detour, each proved by emulation on randomised states, then by the rescan and a
boot. On real builds: the corpus' stored builds, one with a routine changed so no signature knows
it, and every site of whole images forced through detours."""

import shutil
from collections import Counter

import pytest

from ovmftool.model.parser import read_image
from ovmftool.ops.assemble import Edit, assemble
from ovmftool.ops.modules import iter_modules
from ovmftool.patch import detour, emulate
from ovmftool.patch.patcher import patch
from ovmftool.scan.scanner import code_map, scan_image, scan_module
from tests.conftest import CORPUS_IMAGES, stored

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is installed by .ci/run"
)
NONSEV = "2022.11-X64-DEBUG-nonsev"
DEB25 = CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"]


def _clean_and_boots(output: bytes, vars_file, tmp_path, timeout: int = 150) -> None:
    """A patched image: rescan 0, and (where QEMU is installed) a boot to its end with no string
    I/O executed."""
    out = tmp_path / "patched.fd"
    out.write_bytes(output)
    assert scan_image(str(out)).findings == []
    if shutil.which("qemu-system-x86_64"):
        from click.testing import CliRunner

        from ovmftool.cli import main

        args = ["boot-check", str(out), "--vars", str(vars_file), "--timeout", str(timeout)]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and "0 string I/O instruction(s) executed" in r.stdout, r.stdout + r.stderr


@pytest.fixture(scope="module")
def unknown_routine(tmp_path_factory):
    """The non-Sev 2022.11 DEBUG build with SecMain's IoReadFifo8 changed (its CLD made a NOP):
    no signature names it, nothing calls it, and the code before it in its hole (a dead loop, a
    routine with TDCALL, which capstone does not decode) is refused by the walk."""
    b = stored(NONSEV)
    root = read_image(str(b.code))
    m = next(m for m in iter_modules(root) if m.name == "SecMain")
    off = m.image.rva_to_offset(0x77A0)
    assert m.image.data[off : off + 13].hex() == "fc4887ca4987f8f36c4c89c7c3"  # IoFifo.nasm's IoReadFifo8
    out, _ = assemble(root, [Edit(m.image, off, b"\xfc", b"\x90")])
    p = tmp_path_factory.mktemp("unknown") / "OVMF_CODE.fd"
    p.write_bytes(out)
    return p, b


@pytest.mark.parametrize("pure", [False, True], ids=["native", "python"])
def test_gap_fill_finds_a_routine_nothing_calls_past_refused_code(unknown_routine, pure, monkeypatch):
    if pure:
        monkeypatch.setenv("OVMFTOOL_PURE_PYTHON", "1")
    path, b = unknown_routine
    res = scan_image(str(path), jobs=1)
    sec = [f for f in res.findings if f.module == "SecMain"]
    assert len(res.findings) == len(b.sites()) == 648 and len(sec) == 6
    f = next(f for f in sec if f.rva == 0x77A7)
    assert f.function == "sub_77a1" and f.function_source == "analysis" and f.signature is None


def test_unknown_routine_is_patched_by_detours(unknown_routine, tmp_path):
    path, b = unknown_routine
    res = patch(str(path), read_image(str(path)), jobs=2)
    assert res.refusals == [] and res.sites_after == 0 and len(res.rewrites) == 648
    shapes = Counter((r.module == "SecMain", r.shape) for r in res.rewrites)
    assert shapes == {(True, "detour"): 6, (False, "rep-fifo"): 642}  # the module holding it: every site
    _clean_and_boots(res.output, b.vars, tmp_path, 120)


@pytest.mark.parametrize("image", [DEB25, "2022.11-Ia32X64-DEBUG"], ids=["debian-2025.02", "2022.11-Ia32X64-DEBUG"])
def test_every_site_of_a_whole_image_by_detour(image, tmp_path):
    """Every site of real images (the Sev routines: the window starts at the CLD before the REP,
    jumps re-encoded; IA32 and X64 modules) rewritten by detours: none refused, rescan 0; the
    X64 image boots to the shell with none executed."""
    path = str(image if not isinstance(image, str) or image.startswith("/") else stored(image).code)
    res = patch(path, read_image(path), jobs=2, detour_all=True)
    assert res.refusals == [] and res.sites_after == 0 and len(res.rewrites) == res.sites_before > 100
    assert {r.shape for r in res.rewrites} == {"detour"}
    assert res.emulated_functions < 20  # the same window in every module is proved once
    if image == DEB25:
        _clean_and_boots(res.output, CORPUS_IMAGES["images/debian-2025.02/OVMF_VARS_4M.fd"], tmp_path, 120)


def test_clang_build_function_with_an_indirect_jump_is_refused_by_name():
    """CLANG's LTO put a FIFO site into a function with an indirect jump: a detour there is
    refused, naming why (the jump could land in the window)."""
    path = str(stored("2025.02-X64-DEBUG-clang").code)
    res = patch(path, read_image(path), jobs=2, detour_all=True, dry_run=True)
    assert len(res.refusals) == 1 and "an indirect jump in its function" in res.refusals[0].reason
    assert len(res.rewrites) == res.sites_before - 1


def _window_of(module: str, rva: int):
    m = next(m for m in iter_modules(read_image(str(DEB25))) if m.name == module)
    windows, refused = detour.plan_module(m.image, code_map(m), [rva], m.image.bits)
    return m, windows, refused


def test_emulation_catches_a_wrong_detour():
    m, windows, _ = _window_of(
        "CpuIo2Dxe",
        next(
            f.rva
            for f in scan_module(
                next(m for m in iter_modules(read_image(str(DEB25))) if m.name == "CpuIo2Dxe")
            ).findings
        ),
    )
    ((_s, w),) = windows
    old = bytes(m.image.memory[w.rva : w.end])
    k = emulate._W_SITE - w.rva
    good = detour.detour_code(w, 64, emulate._W_NEW - k)
    site = detour.site_bytes(w, emulate._W_NEW - k)
    assert emulate.compare_window(old, site, good, 64, w.direction, w.rep) == []
    bad = bytearray(good)
    bad[bad.index(0x75)] = 0x74  # the direction flag read the wrong way round
    assert any("regs differ" in p for p in emulate.compare_window(old, site, bytes(bad), 64, w.direction, w.rep))
    no_flags = good.replace(b"\x58\x9d", b"\x58\x90")  # flags not restored
    assert any(
        "flags differ" in p or "stack differ" in p or "regs differ" in p
        for p in emulate.compare_window(old, site, no_flags, 64, w.direction, w.rep)
    )


@pytest.mark.parametrize(
    "code, reason",
    [
        (b"\x67\xf3\x6c\x90\x90\x90\xc3", "address-size prefix"),
        (b"\xf2\x6c\x90\x90\x90\xc3", "REPNE"),
        (b"\x64\xf3\x6e\x90\x90\x90\xc3", "segment override other than DS"),
        (b"\xf3\x6c\xc3", "only 3 bytes of code"),
        (b"\xf3\x6c\xf3\x6e\x90\xc3", "another string I/O instruction"),
        (b"\xf3\x6c\x48\x8b\x05\x00\x00\x00\x00\xc3", "RIP-relative operand"),
        (b"\xf3\x6c\xe3\x02\x90\x90\xc3", "jrcxz"),
    ],
)
def test_each_window_refusal_names_its_reason(code, reason):
    site = 0
    with pytest.raises(detour.CannotDetour, match=reason):
        detour.window_at(code, 64, 0, site, len(code))


def test_branch_target_inside_the_window_is_refused():
    code = b"\xf3\x6c\x90\x90\x90\xc3"
    w = detour.window_at(code, 64, 0, 0, len(code))
    with pytest.raises(detour.CannotDetour, match="branch target at rva 0x3 inside the displaced window"):
        detour.check_targets(w, {3})
    detour.check_targets(w, {0, 5})  # the window's start and its end are fine


def test_patch_json_with_detours_validates(unknown_routine):
    import json

    import jsonschema
    from click.testing import CliRunner

    from ovmftool.cli import main
    from tests.conftest import ROOT

    path, _b = unknown_routine
    r = CliRunner().invoke(main, ["patch", "--dry-run", "--format", "json", str(path)])
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, json.loads((ROOT / "docs/schema/patch-1.json").read_text()))
    assert r.exit_code == 0 and sum(1 for x in doc["rewrites"] if x["shape"] == "detour") == 6


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_walk_stops_at_a_string_after_a_call(native):
    """A call that does not return with a string after it (SecMain's entry calling
    SecCoreStartupWithStack, PrintLib's "<null string>" after it, as GCC laid out
    edk2-stable201905/201911): the walk does not fall through into the text, whose l/n/o letters
    would decode as INSB/OUTSB (12 false sites on each of those builds before)."""
    from ovmftool.scan.codemap import discover, native_available

    if native and not native_available():
        pytest.skip("the native walk is not built")
    text = b"<null string>\x00<null guid>\x00<null time>\x00"
    code = b"\x48\x89\xe9" + b"\xe8" + (0x40 - 8).to_bytes(4, "little", signed=True) + text
    code = code.ljust(0x40, b"\xcc") + b"\xc3"  # the callee at 0x40: ret
    cmap = discover(code, 64, [(0, len(code))], [(0, "entry")], [], native=native)
    assert cmap.sites == [] and 0x40 in cmap.functions
    # the same bytes with code after the call instead: walked on
    code2 = code[:8] + b"\xf3\x6c\xc3" + code[11:]
    cmap2 = discover(code2, 64, [(0, len(code2))], [(0, "entry")], [], native=native)
    assert [s.rva for s in cmap2.sites] == [8]


class _Img:
    """A module image stand-in: its memory, one executable section, the relocations asked for."""

    def __init__(self, mem: bytes, relocated: bool = False, fmt: str = "PE32+") -> None:
        self.memory = mem
        self.format = fmt
        self._relocated = relocated

        class _Sec:
            rva, virtual_size, raw_size, executable = 0, len(mem), len(mem), True

        self.sections = [_Sec()]

    def relocated_in(self, lo: int, hi: int) -> bool:
        return self._relocated


@pytest.mark.parametrize(
    "code, relocated, reason",
    [
        (b"\xf3\x6c\x90\x90\x90\xc3", True, "bytes covered by a base relocation"),
        (b"\xf3\x6c\x90\x90\x90\xff\xe0", False, "an indirect jump in its function"),
    ],
)
def test_module_refusals_name_their_reason(code, relocated, reason):
    from ovmftool.scan.codemap import discover

    site = code.index(b"\xf3\x6c")
    cmap = discover(code, 64, [(0, len(code))], [(0, "entry"), (site, "export")], [], native=False)
    windows, refused = detour.plan_module(_Img(code, relocated), cmap, [site], 64)
    assert windows == [] and reason in refused[site]


def test_te_module_cannot_grow_for_a_detour():
    from ovmftool.patch import grow

    with pytest.raises(grow.CannotGrow, match="TE images have no room"):
        grow.add_code(_Img(b"\xc3", fmt="TE"), lambda start: (b"\x90", []))


# A FIFO routine pair nobody wrote a signature for, in the style of the fw_cfg FIFO routines
# OVMF carried before BaseIoLibIntrinsic had them (edk2's QemuFwCfgLib IoLibExAsm.nasm, 2013–2017):
# the same EFIAPI contract as IoFifo.nasm's (RCX port, RDX count, R8 buffer), other instructions
# (RDI/RSI saved on the stack, not in R8).
OWN_FIFO_NASM = """BITS 64
IoReadFifo8:
    push rdi
    mov rdi, r8
    xchg rdx, rcx
    cld
    rep insb
    pop rdi
    ret
IoWriteFifo8:
    push rsi
    mov rsi, r8
    xchg rdx, rcx
    cld
    rep outsb
    pop rsi
    ret
"""


@pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm is installed by .ci/run")
def test_routines_no_signature_knows_assembled_from_source_patch_to_zero(tmp_path):
    """IoReadFifo8 and IoWriteFifo8 of every module of a real build replaced by routines
    assembled with nasm from the source above: every site found (at its new place, its function
    named by address), every one rewritten by a detour proved by emulation, rescan 0, and the
    image boots to the shell with none executed (its debug log and fw_cfg reads go through them)."""
    import subprocess

    src = tmp_path / "fifo.nasm"
    src.write_text(OWN_FIFO_NASM)
    subprocess.run(["nasm", "-f", "bin", "-o", str(tmp_path / "fifo.bin"), str(src)], check=True)
    code = (tmp_path / "fifo.bin").read_bytes()
    own = {"IoReadFifo8": code[:12], "IoWriteFifo8": code[12:]}
    site_at = {"IoReadFifo8": 8, "IoWriteFifo8": 8}  # the REP INSB/OUTSB after PUSH, MOV, XCHG, CLD

    b = stored(NONSEV)
    root = read_image(str(b.code))
    before = scan_image(str(b.code), root=root, jobs=2)
    images = {(m.volume, m.guid): m.image for m in iter_modules(root)}
    edits, expected = [], set()
    for f in before.findings:
        if f.signature is None or f.signature.routine not in own:
            expected.add((f.guid, f.rva))
            continue
        img = images[(f.volume, f.guid)]
        new = own[f.signature.routine]
        off = img.rva_to_offset(f.signature.rva)
        old = img.data[off : off + f.signature.size]
        assert len(new) < len(old) == 13
        edits.append(Edit(img, off, old, new + b"\xcc" * (len(old) - len(new))))
        expected.add((f.guid, f.signature.rva + site_at[f.signature.routine]))
    assert len(edits) == 2 * 108
    out, _ = assemble(root, edits)
    path = tmp_path / "OVMF_CODE.fd"
    path.write_bytes(out)

    res = scan_image(str(path), jobs=2)
    assert {(f.guid, f.rva) for f in res.findings} == expected and len(expected) == 648
    unknown = [f for f in res.findings if f.signature is None]
    assert len(unknown) == 216 and all(f.function.startswith("sub_") for f in unknown)
    p = patch(str(path), read_image(str(path)), jobs=2)
    assert p.refusals == [] and p.sites_after == 0 and len(p.rewrites) == 648
    assert {r.shape for r in p.rewrites} == {"detour"}  # a module with an unknown routine: every site
    assert 0 < p.emulated_functions < 20  # each distinct window proved once, by emulation
    assert p.emulation_runs >= 4 * p.emulated_functions  # (the detours' runs were overwritten, 0)
    _clean_and_boots(p.output, b.vars, tmp_path)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize("unreached", [0, 750], ids=["routines-alone", "after-6KiB-of-code"])
def test_gap_fill_finds_every_unreferenced_routine_in_a_gap_of_any_size(native, unreached):
    """Four FIFO routines nothing calls and no signature names, one after the other, alone in a
    gap or after 6 KiB of code nothing reaches: every site is found, by both walks (the old gap
    fill stopped at two routines a gap and skipped gaps over 4 KiB). Text in a gap of 10 KiB
    (whose l/m/n/o letters decode as INS/OUTS) stays data."""
    from ovmftool.scan.codemap import discover, native_available

    if native and not native_available():
        pytest.skip("the native walk is not built")
    filler = b"\x53\xb8\x01\x00\x00\x00\x5b\xc3"  # push rbx; mov eax, 1; pop rbx; ret
    routines = [
        bytes.fromhex("574c89c74887d1fcf36c5fc3"),  # push rdi ... rep insb ... ret (OWN_FIFO_NASM)
        bytes.fromhex("564c89c64887d1fcf36e5ec3"),  # rep outsb
        bytes.fromhex("fc4887ca4987f8f3666d4c89c7c3"),  # rep insw (IoFifo.nasm)
        bytes.fromhex("574c89c74887d1fcf36d5fc3"),  # rep insd
    ]
    code, sites = b"\xc3" + filler * unreached, []
    for r in routines:
        sites.append(len(code) + r.index(b"\xf3"))
        code += r
    tail = len(code)
    code += b"\xc3"
    cmap = discover(code, 64, [(0, len(code))], [(0, "entry"), (tail, "export")], [], native=native)
    assert sorted(s.rva for s in cmap.sites) == sites
    text = b"Loading driver image... done\x00Boot option not found\x00" * 210
    code = b"\xc3" + text + b"\xc3"
    cmap = discover(code, 64, [(0, len(code))], [(0, "entry"), (len(code) - 1, "export")], [], native=native)
    assert cmap.sites == [] and len(text) > 10240


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_gap_fill_takes_a_section_s_first_and_last_routines(native):
    """A routine nothing calls can be the first or the last object linked into a section: the
    part of an executable range before its first code and after its last is searched like a gap
    (IoMmuDxe's CpuFlushTlb is the last code of Debian 2022.11's module, found so). Text or
    padding at the end stays data."""
    from ovmftool.scan.codemap import discover, native_available

    if native and not native_available():
        pytest.skip("the native walk is not built")
    fifo = bytes.fromhex("574c89c74887d1fcf36c5fc3")  # push rdi ... rep insb ... ret: 8 is the site
    last = b"\xc3" + b"\x90" * 3 + fifo + b"\x00" * 8
    cmap = discover(last, 64, [(0, len(last))], [(0, "entry")], [], native=native)
    assert [s.rva for s in cmap.sites] == [4 + 8]
    first = fifo + b"\xcc" * 4 + b"\xc3"
    cmap = discover(first, 64, [(0, len(first))], [(len(first) - 1, "entry")], [], native=native)
    assert [s.rva for s in cmap.sites] == [8]
    text = b"\xc3" + b"Loading driver image... done\x00" * 4 + b"\x00" * 3
    cmap = discover(text, 64, [(0, len(text))], [(0, "entry")], [], native=native)
    assert cmap.sites == [] and sorted(cmap.functions) == [0]
