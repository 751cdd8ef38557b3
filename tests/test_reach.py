"""Firmware from elsewhere: Debian sid's images (edk2 2026.08, assembled by NASM 3.01, which
orders prefixes 66 F3), platform layouts (AmdSev, IntelTdx, a PVH ELF header), firmware that is
not x86, and inputs that are no UEFI module. All on real images of corpus/images."""

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovmftool.cli import main
from ovmftool.errors import NothingToCheck
from ovmftool.model import structs as S
from ovmftool.model.node import all_problems
from ovmftool.model.parser import parse_flash, read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.patch.patcher import patch
from ovmftool.scan import signatures as sigs
from ovmftool.scan.scanner import scan_checked
from tests.conftest import CORPUS_IMAGES

SID = CORPUS_IMAGES["images/debian-2026.08/OVMF_CODE_4M.fd"]
TRIXIE = CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"]
AMDSEV = CORPUS_IMAGES["images/debian-2026.08/OVMF.amdsev.fd"]
TDX = CORPUS_IMAGES["images/debian-2026.08/OVMF.inteltdx.ms.fd"]
AARCH64 = CORPUS_IMAGES["images/debian-2026.08/QEMU_EFI.fd"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_nasm3_image_every_site_named():
    """sid's image: 114 sites, the 16-bit ones written 66 F3 (NASM 3), every one in a routine the
    signatures name (before instruction-level matching, 38 were `sub_*`)."""
    r = scan_checked(str(SID))
    assert len(r.findings) == 114
    assert {f.bytes for f in r.findings if f.width == 16} == {"66f36d", "66f36f"}
    assert all(f.function_source == "signature" and not f.function.startswith("sub_") for f in r.findings)
    assert {f.function for f in r.findings} == {f"SevIo{d}Fifo{w}" for d in ("Read", "Write") for w in (8, 16, 32)}
    assert r.era == sigs.TDX


def test_nasm3_image_patches_to_zero():
    res = patch(str(SID), read_image(str(SID)), jobs=2)
    assert res.refusals == [] and res.sites_after == 0 and len(res.rewrites) == 114
    assert {r.shape for r in res.rewrites} == {"sev-fifo"}
    new = parse_flash(res.output, "patched")
    assert all_problems(new) == []


def test_diff_trixie_to_sid_shows_only_real_changes():
    """Same routines, other prefix order: unchanged. What is added is a new module's six sites."""
    r = _run("diff", "--format", "json", TRIXIE, SID)
    doc = json.loads(r.stdout)
    assert r.exit_code == 1
    assert (len(doc["removed"]), len(doc["added"]), doc["unchanged"]) == (0, 6, 108)
    assert len(doc["modules_added"]) == 7 and doc["modules_removed"] == []
    text = _run("diff", TRIXIE, SID).stdout
    assert [line.split()[1] for line in text.splitlines() if line.startswith("+ ") and " module " not in line] == [
        "SdMmcPciHcDxe"
    ] * 6


def test_signature_matches_other_encodings(tmp_path):
    """The same routine assembled with near jumps, NOP padding inside it and an imm32 form (what
    another assembler or other options emit): matched by its instructions, its extent and its
    site where they are in this encoding."""
    nasm = shutil.which("nasm")
    if nasm is None:
        pytest.skip("nasm is not installed (.ci/run installs it)")
    src = tmp_path / "v.nasm"
    src.write_text("""BITS 64
Helper:
  xor eax, eax
  ret
align 16
Fifo16:
  xchg rcx, rdx
  xchg rdi, r8
  call strict near Helper
  test eax, eax
  jnz strict near NoRep
  cld
  nop
  rep insw
  jmp strict near Done
NoRep:
  jrcxz Done
Loop:
  in ax, dx
  mov [rdi], ax
  add rdi, strict qword 2
  loop Loop
Done:
  mov rdi, r8
  ret
""")
    subprocess.run([nasm, "-f", "bin", "-o", str(tmp_path / "v.bin"), str(src)], check=True)
    code = (tmp_path / "v.bin").read_bytes()
    (m,) = sigs.find(code, "X64", [(0, len(code))])
    assert m.signature.routine == "SevIoReadFifo16" and m.rva == 0x10 and m.end == len(code)
    assert m.sites == (code.index(b"\xf3\x66\x6d"),) and m.size != len(m.signature.code)
    # the same bytes with one instruction changed: no match
    bad = code.replace(b"\x66\xed", b"\x66\xe5")  # in ax, dx -> in ax, imm8
    assert sigs.find(bad, "X64", [(0, len(bad))]) == []


def test_amdsev_grub_placeholder_is_not_damage():
    """OVMF.amdsev.fd carries an empty PE32 section for Grub (filled in by whoever builds with
    grub.efi): a placeholder, not damage. The advice names the AmdSev DSC."""
    root = read_image(str(AMDSEV))
    assert all_problems(root) == []
    r = _run("scan", AMDSEV)
    assert r.exit_code == 1 and "--dsc OvmfPkg/AmdSev/AmdSevX64.dsc" in r.stdout
    res = patch(str(AMDSEV), root, jobs=2)
    assert res.refusals == [] and res.sites_after == 0


def test_inteltdx_advice_names_its_dsc():
    r = _run("scan", TDX)
    assert r.exit_code == 1 and "--dsc OvmfPkg/IntelTdx/IntelTdxX64.dsc" in r.stdout
    assert "OvmfPkgX64.dsc" not in r.stdout


@pytest.mark.parametrize("cmd", [["info"], ["scan"], ["patch", "--dry-run"], ["extract", "-o", "OUT"]])
def test_aarch64_firmware_is_not_x86(cmd, tmp_path):
    args = [a if a != "OUT" else tmp_path / "out" for a in cmd]
    r = _run(*args[:1], AARCH64, *args[1:])
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"ovmftool: error: {AARCH64}: not x86: AARCH64 firmware: its modules are AARCH64 "
        "(104 modules); ovmftool reads x86 (IA32/X64) firmware"
    )
    assert "damaged" not in r.stderr and not (tmp_path / "out").exists()


def test_elf_executable_for_another_machine_is_not_x86(tmp_path):
    elf = tmp_path / "slof.bin"
    ident = b"\x7fELF\x02\x02\x01" + b"\0" * 9
    elf.write_bytes(ident + struct.pack("<HH", 2, 21) + b"\0" * 4096)
    with pytest.raises(NothingToCheck, match="not x86: an ELF executable for PPC64"):
        read_image(str(elf))


def test_pvh_elf_header_before_the_volume_is_a_layout(tmp_path):
    """CloudHv's and OvmfXen's images start with an ELF header (PVH boot) before the volume:
    a gap holding it is no damage; its machine is shown."""
    code = Path(TRIXIE).read_bytes()
    hdr = bytearray(0x1000)
    hdr[:16] = b"\x7fELF\x02\x01\x01\x03" + b"\0" * 8
    struct.pack_into("<HH", hdr, 16, 2, 62)  # ET_EXEC, EM_X86_64
    img = tmp_path / "CLOUDHV.fd"
    img.write_bytes(bytes(hdr) + code)
    root = read_image(str(img))
    assert all_problems(root) == []
    assert root.children[0].elf_machine == "X64"
    assert _run("info", img).exit_code == 0 and "gap (ELF header, X64)" in _run("info", img).stdout
    assert _run("scan", img).exit_code == 1


def test_windows_dll_is_not_a_uefi_module(tmp_path):
    """A PE whose subsystem is not EFI's (here a module of the corpus image with its subsystem set
    to Windows console) is exit 2, "not a UEFI module", for scan and patch alike."""
    root = read_image(str(TRIXIE))
    m = next(m for m in iter_modules(root) if m.image.format == "PE32+" and m.image.abs_offset is None)
    data = bytearray(m.image.data)
    lfanew = S.DOS_E_LFANEW.get(data)
    opt = lfanew + len(S.PE_MAGIC) + S.COFF_HEADER.size
    sub = opt + 68  # Subsystem: the same offset in PE32 and PE32+ optional headers
    assert struct.unpack_from("<H", data, sub)[0] == m.image.subsystem
    struct.pack_into("<H", data, sub, 3)
    dll = tmp_path / "thing.dll.efi"
    dll.write_bytes(bytes(data))
    for cmd in (["scan"], ["patch", "--dry-run"]):
        r = _run(*cmd, dll)
        assert r.exit_code == 2 and "is not a UEFI module" in r.stderr and "Windows console" in r.stderr


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is installed by .ci/run")
@pytest.mark.parametrize("image", [SID, AMDSEV, TDX], ids=lambda p: Path(p).name)
def test_sid_images_patch_and_boot_with_none_executed(image, tmp_path):
    """sid's generic, AmdSev and IntelTdx images: patch -> rescan 0 -> boot to the end their BDS
    reaches under QEMU (the boot manager fallback: AmdSev says "No bootable option was found.")
    with no string I/O executed; unpatched, the boot executes some."""
    out = tmp_path / "patched.fd"
    assert _run("patch", image, "-o", out).exit_code == 0
    vars_ = ["--vars", CORPUS_IMAGES["images/debian-2026.08/OVMF_VARS_4M.fd"]] if image == SID else []
    r = _run("boot-check", out, *vars_, "--timeout", "120", "--format", "json")
    doc = json.loads(r.stdout)
    assert (
        r.exit_code == 0 and doc["finished"] and doc["ended"] in ("shell", "boot-manager") and doc["executed"] == []
    ), r.stdout
    if image == AMDSEV:
        r = _run("boot-check", image, "--timeout", "120", "--format", "json")
        assert r.exit_code == 1 and json.loads(r.stdout)["executed"]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is installed by .ci/run")
def test_smm_secure_boot_build_boots_to_its_end_without_the_plugin():
    """sid's secure-boot image (SMM) without boot-check's TCG plugin: the translation-log boot
    must not change what the guest does (with `-d …,nochain` QEMU 7.2 hung it at
    PcdCpuSmmStackGuard). It reaches its end, naming the site it executed; the counting boot,
    which needs `nochain`, is given up within its budget and says so."""
    sb = CORPUS_IMAGES["images/debian-2026.08/OVMF_CODE_4M.secboot.fd"]
    vars_ = CORPUS_IMAGES["images/debian-2026.08/OVMF_VARS_4M.fd"]
    r = CliRunner().invoke(
        main,
        ["boot-check", str(sb), "--vars", str(vars_), "--timeout", "120", "--format", "json"],
        env={"OVMFTOOL_BOOT_PLUGIN": "0"},
    )
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["finished"] and doc["ended"] in ("shell", "boot-manager"), r.stdout
    assert doc["first"]["function"] == "SevIoReadFifo8" and doc["first"]["module"] == "PlatformPei"
    assert doc["seconds"] < 30


def test_boot_check_refuses_before_qemu_and_writes_its_json_on_exit_2():
    """Firmware QEMU's x86 machine cannot boot is refused before QEMU starts (fast), and
    `--format json` still writes its document (the error form of its schema)."""
    import time

    import jsonschema

    from tests.conftest import ROOT

    t = time.monotonic()
    r = _run("boot-check", AARCH64, "--format", "json")
    assert r.exit_code == 2 and time.monotonic() - t < 5
    doc = json.loads(r.stdout)
    schema = json.loads((ROOT / "docs/schema/boot-check-1.json").read_text())
    jsonschema.validate(doc, schema)
    assert "not x86: AARCH64" in doc["error"] and doc["image"] == str(AARCH64)
    assert r.stderr.count("\n") == 1 and "not x86" in r.stderr


PLATFORMS = {  # stored build -> (the DSC scan names, how boot-check boots it: "boots" or the refusal's words)
    "2025.02-Ia32-DEBUG": ("OvmfPkg/OvmfPkgIa32.dsc", "boots"),
    "2025.02-IntelTdx-DEBUG": ("OvmfPkg/IntelTdx/IntelTdxX64.dsc", "boots"),
    "2025.02-AmdSev-DEBUG": ("OvmfPkg/AmdSev/AmdSevX64.dsc", "boots"),
    "2025.02-CloudHv-DEBUG": ("OvmfPkg/CloudHv/CloudHvX64.dsc", "a Cloud Hypervisor firmware"),
    "2025.02-Microvm-DEBUG": ("OvmfPkg/Microvm/MicrovmX64.dsc", "boots"),  # on QEMU's microvm machine
    "2025.02-Xen-DEBUG": ("OvmfPkg/OvmfXen.dsc", "a Xen firmware"),
    "2025.02-Bhyve-DEBUG": ("OvmfPkg/Bhyve/BhyveX64.dsc", "a bhyve firmware"),
}


@pytest.mark.parametrize("key", sorted(PLATFORMS))
def test_every_ovmfpkg_platform_scanned_named_patched(key, tmp_path):
    """Each OvmfPkg platform built from Debian's 2025.02 tree: no damage (CloudHv's PVH ELF
    header, AmdSev's Grub placeholder), every site found with its symbol table's name, the
    platform's own DSC advised, patched to 0; booted where QEMU boots it, else refused before
    QEMU with one line naming the platform."""
    from ovmftool.scan.scanner import scan_image
    from tests.conftest import stored

    b = stored(key)
    dsc, boot = PLATFORMS[key]
    root = read_image(str(b.code))
    assert all_problems(root) == []
    truth = b.sites()
    res = scan_image(str(b.code), jobs=2)
    found = {(f.guid, f.volume, f.rva): f.function for f in res.findings if f.module != "ResetVector"}
    assert set(found) == set(truth) and all(found[k] == truth[k][2] for k in found)
    r = _run("scan", b.code)
    assert r.exit_code == 1 and f"--dsc {dsc} " in r.stdout
    p = patch(str(b.code), root, jobs=2)
    assert p.refusals == [] and p.sites_after == 0 and len(p.rewrites) == len(truth)
    if shutil.which("qemu-system-x86_64") is None:
        return
    out = tmp_path / b.code.name
    out.write_bytes(p.output)
    args = ["boot-check", out, "--timeout", "150"] + (["--vars", b.vars] if b.vars else [])
    r = _run(*args)
    if boot == "boots":
        assert r.exit_code == 0 and "0 string I/O instruction(s) executed" in r.stdout, r.stdout + r.stderr
    else:
        assert r.exit_code == 2 and boot in r.stderr and r.stderr.count("\n") == 1 and r.stdout == ""


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is installed by .ci/run")
def test_microvm_firmware_boots_on_its_own_machine():
    """A microvm firmware boots on QEMU's microvm machine (no flash: `-bios`) unless told
    otherwise, and reaches the shell with its sites executed; a machine it was not built for is
    refused either way round, before QEMU starts."""
    from tests.conftest import stored

    mv = stored("2025.02-Microvm-DEBUG").code
    r = _run("boot-check", mv, "--format", "json", "--timeout", "150")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["ended"] == "shell", r.stdout + r.stderr
    assert (doc["first"]["module"], doc["first"]["function"]) == ("SecMain", "SevIoWriteFifo8")
    assert any("QEMU's microvm machine" in n for n in doc["notes"])
    r = _run("boot-check", mv, "--machine", "q35")
    assert r.exit_code == 2 and "boots only on QEMU's microvm machine" in r.stderr and r.stderr.count("\n") == 1
    r = _run("boot-check", SID, "--machine", "microvm")
    assert r.exit_code == 2 and "not a microvm firmware" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("gcc") is None,
    reason="qemu-system-x86 and gcc are installed by .ci/run",
)
def test_plugin_builds_at_first_use_from_the_carried_header(tmp_path, monkeypatch):
    """Without QEMU's source or development files: boot-check's plugin is compiled at first use
    against the qemu-plugin.h this package carries for the installed QEMU (7.2)."""
    from ovmftool.boot import plugin

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    version = plugin.qemu_version()
    if plugin.carried_header(version) is None:
        pytest.skip(f"no carried qemu-plugin.h for QEMU {version}")
    assert plugin.plugin_path(version) is None
    so = plugin.build_at_first_use()
    assert so is not None and so.is_file() and str(so).startswith(str(tmp_path))
    assert not any(tmp_path.rglob("headers"))  # nothing fetched
