"""OVMF's variable store: which one a code image needs, and an empty one built from its structures.

OVMF's flash is one device split in two files: the variable store (`OVMF_VARS*.fd`) at the
bottom and the code (`OVMF_CODE*.fd`) above it, ending at 4 GiB. QEMU maps pflash unit 0 (the
code) at the top and unit 1 (the variables) right below it, so the store must have exactly the
size the code was built for (OvmfPkg/OvmfPkgDefines.fdf.inc, by FD_SIZE_IN_KB):

| FD_SIZE_IN_KB | code      | variables | live store | event log | FTW working | FTW spare |
|---------------|-----------|-----------|------------|-----------|-------------|-----------|
| 1024          | 0x0E0000  | 0x20000   | 0x0E000    | 0x1000    | 0x1000      | 0x10000   |
| 2048          | 0x1E0000  | 0x20000   | 0x0E000    | 0x1000    | 0x1000      | 0x10000   |
| 4096          | 0x37C000  | 0x84000   | 0x40000    | 0x1000    | 0x1000      | 0x42000   |

An empty store (OvmfPkg/VarStore.fdf.inc) is: a firmware volume header (gEfiSystemNvDataFvGuid,
one block map entry of 4 KiB blocks) followed by a VARIABLE_STORE_HEADER (gEfiAuthenticated-
VariableGuid, formatted and healthy, sized to the live store), erased (0xFF) to the event log;
the fault-tolerant-write working block header at the working area; the spare area erased.
A whole `OVMF.fd` holds its store itself (code + variables in one file): it needs none.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from ovmftool.errors import OvmfToolError
from ovmftool.model import structs as S
from ovmftool.model.volume import volume_header

BLOCK_SIZE = 0x1000
ERASED = 0xFF

NV_DATA_FV_GUID = S.NVRAM_GUID  # gEfiSystemNvDataFvGuid: the variable store's volume
AUTH_VARIABLE_GUID = "aaf32c78-947b-439a-a180-2e144ec37792"  # gEfiAuthenticatedVariableGuid
VARIABLE_GUID = "ddcf3616-3275-4164-98b6-fe85707ffe7d"  # gEfiVariableGuid (stores without authenticated variables)
WORKING_BLOCK_GUID = "9e58292b-7c68-497d-a0ce-6500fd9f1b95"  # gEdkiiWorkingBlockSignatureGuid

# The volume attributes VarStore.fdf.inc declares: read/write enabled and capable, lock capable,
# sticky write, memory mapped, erase polarity 1, alignment 16 (EFI_FVB2_ALIGNMENT_16).
FV_ATTRIBUTES = 0x0004FEFF
FV_REVISION = 2

VARIABLE_STORE_HEADER = S.VARIABLE_STORE_HEADER
VARIABLE_STORE_FORMATTED = 0x5A
VARIABLE_STORE_HEALTHY = 0xFE

FTW_WORKING_HEADER = S.FTW_WORKING_HEADER
FTW_VALID_STATE, FTW_INVALID_STATE = 0, 1


@dataclass(frozen=True)
class VarsLayout:
    """One OVMF flash layout (OvmfPkgDefines.fdf.inc): the code size and its variable store."""

    fd_size_kb: int
    code_size: int
    vars_size: int
    live_size: int  # NV_VARIABLE_STORE (PcdFlashNvStorageVariableSize)
    spare_size: int  # NV_FTW_SPARE
    event_log_size: int = BLOCK_SIZE  # NV_EVENT_LOG
    working_size: int = BLOCK_SIZE  # NV_FTW_WORKING

    @property
    def fw_size(self) -> int:
        """The whole flash (a unified OVMF.fd)."""
        return self.vars_size + self.code_size

    @property
    def working_offset(self) -> int:
        return self.live_size + self.event_log_size

    @property
    def spare_offset(self) -> int:
        return self.working_offset + self.working_size

    def describe(self) -> str:
        return f"FD_SIZE_IN_KB={self.fd_size_kb}: 0x{self.code_size:X}-byte code, 0x{self.vars_size:X}-byte store"


LAYOUTS = (
    VarsLayout(1024, 0x0E0000, 0x20000, 0x0E000, 0x10000),
    VarsLayout(2048, 0x1E0000, 0x20000, 0x0E000, 0x10000),
    VarsLayout(4096, 0x37C000, 0x84000, 0x40000, 0x42000),
)
for _l in LAYOUTS:  # the four areas fill the store
    assert _l.spare_offset + _l.spare_size == _l.vars_size, _l


def layout_for_code(size: int) -> VarsLayout | None:
    """The layout of a code image (OVMF_CODE*.fd) of `size` bytes."""
    return next((lay for lay in LAYOUTS if lay.code_size == size), None)


def ftw_working_header(layout: VarsLayout) -> bytes:
    """The FTW working block header FaultTolerantWriteDxe writes: the CRC32 covers the header with
    Crc and the state bits erased, then the block is marked valid."""
    queue = layout.working_size - FTW_WORKING_HEADER.size
    sig = S.guid_bytes(WORKING_BLOCK_GUID)
    crc = zlib.crc32(FTW_WORKING_HEADER.pack(sig, 0xFFFFFFFF, ERASED, b"\xff" * 3, queue))
    state = (ERASED & ~0b11) | FTW_VALID_STATE | (FTW_INVALID_STATE << 1)
    return FTW_WORKING_HEADER.pack(sig, crc, state, b"\xff" * 3, queue)


def empty_store(layout: VarsLayout, authenticated: bool = True) -> bytes:
    """A fresh, empty, valid variable store for `layout` (what OvmfPkg's VARS file holds)."""
    buf = bytearray([ERASED]) * layout.vars_size
    fv = volume_header(NV_DATA_FV_GUID, layout.vars_size, FV_ATTRIBUTES, FV_REVISION, BLOCK_SIZE)
    buf[: len(fv)] = fv
    vsh = VARIABLE_STORE_HEADER.pack(
        S.guid_bytes(AUTH_VARIABLE_GUID if authenticated else VARIABLE_GUID),
        layout.live_size - len(fv),
        VARIABLE_STORE_FORMATTED,
        VARIABLE_STORE_HEALTHY,
        0,
        0,
    )
    buf[len(fv) : len(fv) + len(vsh)] = vsh
    ftw = ftw_working_header(layout)
    buf[layout.working_offset : layout.working_offset + len(ftw)] = ftw
    return bytes(buf)


def embedded_layout(path: Path) -> VarsLayout | None:
    """The layout of a unified OVMF.fd (variables and code in one file), or None."""
    size = path.stat().st_size
    lay = next((x for x in LAYOUTS if x.fw_size == size), None)
    if lay is None:
        return None
    with open(path, "rb") as fh:
        head = fh.read(S.FV_HEADER.size)
    if len(head) < S.FV_HEADER.size:
        return None
    _zero, fs, length, sig, *_ = S.FV_HEADER.unpack(head)
    ok = sig == S.FV_SIGNATURE and S.guid_str(fs) == NV_DATA_FV_GUID and length == lay.vars_size
    return lay if ok else None


@dataclass
class VarsPlan:
    """Which variable store a boot uses."""

    source: str  # given (--vars), beside (OVMF_VARS*.fd next to the image), generated, embedded (OVMF.fd)
    path: Path | None  # the template (given, beside); None when generated or embedded
    size: int
    layout: VarsLayout | None

    def template(self, work: Path) -> Path | None:
        """The file to copy for each boot (written into `work` when generated); None: embedded."""
        if self.source == "generated":
            assert self.layout is not None
            p = work / "vars-empty.fd"
            p.write_bytes(empty_store(self.layout))
            return p
        return self.path

    def note(self, machine: str = "q35") -> str | None:
        """A line for the text output when the store is not the user's file."""
        if self.source == "generated":
            assert self.layout is not None
            return (
                f"no variable store given or beside the image: booted with a generated empty "
                f"{self.size // 1024} KiB store ({self.layout.describe()})"
            )
        if self.source == "embedded" and machine == "microvm":
            return (
                "booted on QEMU's microvm machine, which has no flash: the image is loaded as a ROM (-bios) "
                "and its variables live in RAM"
            )
        if self.source == "embedded":
            return "the image holds its own variable store (a whole OVMF.fd): booted from a writable copy of it"
        if self.source == "beside":
            return f"variable store: {self.path} (beside the image; a copy is booted)"
        return None

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "size": self.size,
            "layout": f"FD_SIZE_IN_KB={self.layout.fd_size_kb}" if self.layout else None,
        }


def _beside(image: Path) -> list[Path]:
    """Candidate stores beside a code image, best first (OVMF_CODE_4M.secboot.fd ->
    OVMF_VARS_4M.secboot.fd, OVMF_VARS_4M.fd, then OVMF_VARS.fd)."""
    n = image.name
    names = []
    if "CODE" in n:
        v = n.replace("CODE", "VARS")
        names += [v, v.replace(".secboot", "").replace(".ms", "")]
    if "4M" in n:
        names.append("OVMF_VARS_4M.fd")
    names.append("OVMF_VARS.fd")
    return [image.with_name(x) for x in dict.fromkeys(names)]


def _check_size(store: Path, image: Path, layout: VarsLayout | None) -> int:
    size = store.stat().st_size
    if layout is not None and size != layout.vars_size:
        raise OvmfToolError(
            f"{store}: a {size}-byte variable store, but {image} is a 0x{layout.code_size:X}-byte "
            f"OVMF code image ({layout.describe()}): it needs 0x{layout.vars_size:X} bytes"
        )
    if size == 0 or size % BLOCK_SIZE:
        raise OvmfToolError(f"{store}: {size} bytes is not a flash variable store (a multiple of 4 KiB)")
    try:  # it is copied for each boot: unreadable is an error now, not after the scan
        with open(store, "rb") as fh:
            fh.read(1)
    except OSError as e:
        raise OvmfToolError(f"cannot read {store}: {e.strerror or e}") from None
    return size


def _no_layout(image: Path, size: int) -> str:
    """Why a store cannot be chosen for an image of no OVMF size (one line)."""
    codes = ", ".join(f"0x{lay.code_size:X}" for lay in LAYOUTS)
    whole = next((lay for lay in LAYOUTS if lay.fw_size == size), None)
    if whole is not None:
        what = (
            f"the size of a whole {whole.fd_size_kb // 1024} MiB OVMF.fd, but it does not start with its "
            f"variable store (a 0x{whole.vars_size:X}-byte gEfiSystemNvDataFvGuid volume), and no OVMF code image "
            f"({codes} bytes) is that size"
        )
    else:
        fds = ", ".join(f"0x{lay.fw_size:X}" for lay in LAYOUTS)
        what = (
            f"neither an OVMF code image ({codes} bytes) nor a whole OVMF.fd ({fds} bytes, starting with "
            f"its variable store)"
        )
    return (
        f"{image} is {size} bytes (0x{size:X}): {what}, so the variable store it boots with is unknown: "
        "give --vars VARS (the OVMF_VARS*.fd built with it)"
    )


def plan_vars(image: str | Path, vars_file: str | Path | None) -> VarsPlan:
    """The store to boot `image` with: `vars_file`, else the one beside the image of the size the
    image needs, else a generated empty one; none for a unified OVMF.fd. Refused (OvmfToolError,
    before any boot): a store of the wrong size, given or the only kind beside the image; an image
    of no OVMF layout without `vars_file` (a store beside it could not be checked)."""
    image = Path(image)
    size = image.stat().st_size
    code_layout = layout_for_code(size)
    unified = embedded_layout(image)
    if unified is not None:
        if vars_file is not None:
            raise OvmfToolError(
                f"{image} holds its own variable store (a whole {unified.fw_size // 0x100000} MiB "
                "OVMF.fd): --vars does not apply"
            )
        return VarsPlan("embedded", None, unified.vars_size, unified)
    if vars_file is not None:
        p = Path(vars_file)
        return VarsPlan("given", p, _check_size(p, image, code_layout), code_layout)
    if code_layout is None:
        raise OvmfToolError(_no_layout(image, size))
    beside = [c for c in _beside(image) if c.is_file() and c.resolve() != image.resolve()]
    for c in beside:
        if c.stat().st_size == code_layout.vars_size:
            return VarsPlan("beside", c, _check_size(c, image, code_layout), code_layout)
    if beside:  # never silently replaced by a generated one: the user put it there for this image
        c, others = beside[0], beside[1:]
        also = "".join(f"; also beside it: {o.name}, {o.stat().st_size} bytes" for o in others)
        raise OvmfToolError(
            f"{c}: a {c.stat().st_size}-byte variable store beside {image}, a "
            f"0x{code_layout.code_size:X}-byte OVMF code image ({code_layout.describe()}) that needs "
            f"0x{code_layout.vars_size:X} bytes ({code_layout.vars_size}){also}: give --vars with a "
            "store of that size, or move it away to boot with a generated empty one"
        )
    return VarsPlan("generated", None, code_layout.vars_size, code_layout)
