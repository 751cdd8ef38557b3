"""The verdict rules: what makes an input one a scan cannot vouch for (damage, parts left
unread that could hold code, no code, modules whose code is not where their headers say), so
that "no sites" always means "checked and clean"."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from ovmftool.errors import ImageError, NothingToCheck, OvmfToolError
from ovmftool.model import structs as S
from ovmftool.model.ffs import FfsFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Node, all_problems, walk
from ovmftool.model.section import Section
from ovmftool.model.validate import validate
from ovmftool.model.volume import Volume
from ovmftool.ops.modules import iter_code_blobs, iter_modules
from ovmftool.scan.modulecode import exec_ranges
from ovmftool.scan.records import ScanResult
from ovmftool.scan.symbols import BuildSymbols

# --- verdicts --------------------------------------------------------------------------------


def read_lazy_structures(root: FlashImage) -> None:
    """Read now what the model reads on first use (`model.validate`), so that damage found there
    is recorded before the verdict (scan workers, forked processes, would otherwise record it
    where the parent never sees it)."""
    validate(root)


def no_code_hint(root: FlashImage) -> str:
    """Why an input without PE/TE modules is likely not what the user meant to scan."""
    vols = [n for n in walk(root) if isinstance(n, Volume)]
    if any(v.fs_guid == S.NVRAM_GUID for v in vols):
        return "is this OVMF_VARS (a variable store)?"
    return (
        f"its {len(vols)} firmware volume{'s' * (len(vols) != 1)} hold no executable code: is this a firmware "
        "code image (OVMF_CODE.fd, OVMF.fd) or a UEFI binary?"
    )


# Volume file systems the model reads (FFS2, FFS3), or that hold variables, not code (NVRAM).
READ_FILE_SYSTEMS = frozenset({S.FFS2_GUID, S.FFS3_GUID, S.NVRAM_GUID})


@dataclass
class Unread:
    """A part of the image that could hold code and that the model did not read."""

    what: str  # "a GUID-defined section with unknown GUID ..."
    where: str  # "0x90", or "FVMAIN_COMPACT/LZMA+0x..." inside decoded data
    size: int  # bytes of it not read

    def __str__(self) -> str:
        return f"0x{self.size:X} bytes in {self.what} at {self.where} (its contents could hold code)"


def unread_parts(root: Node) -> list[Unread]:
    """What the model left unread that could hold code, in flash order: a GUID-defined section
    whose GUID no decoder knows and whose attributes say PROCESSING_REQUIRED (without that bit
    the model reads its data as plain sections), a volume whose file system is neither FFS2,
    FFS3 nor the NVRAM variable store, and an FFS file of a type the PI specification does not
    define (its layout is unknown). Damaged parts are not listed: `all_problems` has them.
    RAW files and RAW sections are data by definition (the reset vector's RAW file is read as
    code) and are not listed."""
    out = []
    for n in walk(root):
        if n.problems:
            continue
        if isinstance(n, Section) and n.type == 0x02 and n.decoded is None and not n.children:
            if n.guided_attributes & S.EFI_GUIDED_SECTION_PROCESSING_REQUIRED and n.size > n.header_size:
                out.append(
                    Unread(f"a GUID-defined section with unknown GUID {n.guid}", n.place, n.size - n.header_size)
                )
        elif isinstance(n, Volume) and n.fs_guid not in READ_FILE_SYSTEMS and n.size > n.header_length:
            out.append(
                Unread(f"a firmware volume with unknown file system {n.fs_guid}", n.place, n.size - n.header_length)
            )
        elif isinstance(n, FfsFile) and _unknown_file_type(n.type) and n.size > n.header_size:
            out.append(Unread(f"FFS file {n.guid} of unknown type 0x{n.type:02X}", n.place, n.size - n.header_size))
    return out


def _unknown_file_type(t: int) -> bool:
    """Neither RAW, a sectioned type (PI vol. 3 2.1.4.1, OEM and debug types included) nor a pad file."""
    return t != 0x01 and t != 0xF0 and t not in S.SECTIONED_FILE_TYPES


def unexecutable_modules(root: Node) -> list[str]:
    """Modules whose code the scan cannot read or find where the headers say it is: a machine that
    is not x86, no executable section, or an entry point outside every executable section (the loader runs the entry
    point whatever
    the section flags say). One line each, naming module and place."""
    out = []
    for m in iter_modules(root):
        img = m.image
        ranges = exec_ranges(img)
        if img.machine not in ("IA32", "X64"):  # EBC byte code, ARM, RISC-V: not x86, so not read here
            out.append(
                f"module {m.name} at {img.place}: machine {img.machine} is not x86 (IA32/X64), "
                "its code is not read by this scanner"
            )
        elif not ranges:
            out.append(
                f"module {m.name} at {img.place}: no executable section ({len(img.sections)} "
                f"section{'s' * (len(img.sections) != 1)}, none marked code or executable)"
            )
        elif not any(lo <= img.entry_rva < hi for lo, hi in ranges):
            out.append(
                f"module {m.name} at {img.place}: entry point rva 0x{img.entry_rva:X} lies outside its "
                "executable sections"
            )
    return out


def _more(items: Sized) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def check_scannable(path: str, root: FlashImage) -> None:
    """Raise ImageError unless a scan of `root` can vouch for it: no damage anywhere (lazily read
    structures included), nothing left unread that could hold code (`unread_parts`), some code
    to scan, and every module's code where its headers say (`unexecutable_modules`). "No sites"
    must mean "checked and clean"."""
    read_lazy_structures(root)
    refuse_damage(path, root)
    unread = unread_parts(root)
    if unread:
        raise ImageError(f"{path}: not checked: {unread[0]}{_more(unread)}")
    if not any(True for _ in iter_modules(root)) and not any(True for _ in iter_code_blobs(root)):
        raise NothingToCheck(f"{path}: no PE/TE modules: {no_code_hint(root)}")
    refuse_codeless(path, unexecutable_modules(root))


def refuse_damage(path: str, root: FlashImage) -> None:
    probs = all_problems(root)
    if probs:
        raise ImageError(f"{path}: damaged image: {probs[0]}")


def refuse_codeless(path: str, modules: list[str]) -> None:
    if modules:
        raise ImageError(f"{path}: {modules[0]}: no executable code found: not checked{_more(modules)}")


def codeless_modules(res: ScanResult) -> list[str]:
    """Modules in which the scan's walk found no instruction at all (code_bytes 0)."""
    return [
        f"module {m.name} at {f'0x{m.fd_offset:X}' if m.fd_offset is not None else m.volume or 'its file'}"
        for m in res.modules
        if m.code_bytes == 0
    ]


def open_symbols(build_dir: str | None, option: str) -> BuildSymbols | None:
    """The build's symbols (None without a directory); an unusable directory is an error naming
    `option` (diff has --symbols-old and --symbols-new) where `BuildSymbols`, whose every error
    starts `--symbols:`, names --symbols. Call before any scan."""
    if build_dir is None:
        return None
    try:
        return BuildSymbols(build_dir)
    except OvmfToolError as e:
        raise OvmfToolError(option + str(e).removeprefix("--symbols")) from None
