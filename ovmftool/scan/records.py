"""The records a scan produces: a site (`Finding`, with its `Caller`s), a module's summary, one
image's result (`ScanResult`) or failure (`ScanFailure`, `ScanSkipped`), and what a module's
bytes alone decide (`ModuleAnalysis` of `SiteFacts`, the unit of the cache)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple, Protocol

from ovmftool.scan.codemap import Transfer

# What named a site's function: the build's symbols, a built-in signature, or its address (`sub_…`).
FunctionSource = Literal["symbols", "signature", "analysis"]


class _InModule(Protocol):
    volume: str
    guid: str
    arch: str


class ModuleKey(NamedTuple):
    """Which module of an image: the volume that holds it, its file GUID and its architecture
    (one GUID can be built for two architectures, and one module can sit in two volumes)."""

    volume: str
    guid: str
    arch: str

    @classmethod
    def of(cls, x: _InModule) -> ModuleKey:
        """The key of a `Module`, a `Finding` or a `ModuleSummary`."""
        return cls(x.volume, x.guid, x.arch)


def plain(v: Any) -> Any:
    """What dataclasses.asdict makes of the scanner's records (dataclasses holding lists, str,
    int, bool, None): equal values, without asdict's deep copy of every leaf (a fifth of rendering
    a scan). The first test is a fast path only: any other leaf is returned as it is below."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is list:
        return [plain(x) for x in v]
    if hasattr(t, "__dataclass_fields__"):
        return _fields_dict(v)
    return v


def _fields_dict(v: Any) -> dict[str, Any]:
    """A dataclass record's fields, each made `plain`; its field names are read once per type."""
    t = type(v)
    names = _FIELD_NAMES.get(t)
    if names is None:
        names = _FIELD_NAMES[t] = tuple(f.name for f in fields(t))
    return {n: plain(getattr(v, n)) for n in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


class _Rendered:
    """A record the JSON report holds as a dict (`plain`)."""

    def as_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass
class Caller:
    """A direct call to the function holding a site."""

    function: str
    function_rva: int
    call_rva: int
    kind: Transfer  # jmp: a tail call


@dataclass
class SiteSignature:
    """The built-in signature (a byte-exact EDK II routine) that holds a site: the routine as this
    tree era names it (`aliases`: its names in other eras), its library, source file and the trees
    that ship it, and where the matched routine is in the module."""

    routine: str
    library: str
    source: str
    aliases: list[str]
    trees: list[str]
    rva: int
    size: int


@dataclass
class FdRegion:
    """Where an instruction's bytes are in the file as stored: the instruction itself (`holder`
    "instruction") when it is stored as is, else the node that holds it compressed (its label)."""

    offset: int
    length: int
    holder: str


@dataclass
class Finding(_Rendered):
    """One string I/O instruction in code."""

    module: str
    guid: str
    file_type: str
    arch: str
    volume: str
    fd_offset: int | None
    container_offset: int
    rva: int
    pe_section: str | None
    bytes: str
    mnemonic: str
    width: int
    direction: str
    rep: str | None
    function: str | None
    function_rva: int | None
    function_source: FunctionSource | None
    signature: SiteSignature | None
    callers: list[Caller] = field(default_factory=list)
    reachable: bool = False
    fd_region: FdRegion | None = None  # where the instruction's bytes are in the file as stored


@dataclass
class ModuleSummary(_Rendered):
    """Per-module scan facts for the report."""

    name: str
    guid: str
    file_type: str
    arch: str
    volume: str
    fd_offset: int | None
    code_bytes: int
    functions: int
    sites: int
    symbols: str | None
    code_end: int | None = None  # with symbols: where the build's .text output section ends (RVA)


@dataclass
class ScanResult:
    """Everything `scan` found in one image."""

    path: str
    sha256: str
    size: int
    modules: list[ModuleSummary]
    findings: list[Finding]
    code_blobs: int = 0  # raw code blobs (the reset vector) checked by recursive descent from their entry
    standalone: bool = False  # a standalone PE32/TE file (an extracted module), not a flash image
    era: str | None = None  # the EDK II tree era the image shows (`tree_era`): names routines, picks series
    same_as: str | None = None  # an input before this one with the same contents: scanned once, under both names
    # What this run spent (JUnit `time`): per module (parallel with `modules`) and on the whole
    # image; a result the cache served spent nearly nothing. Never part of the JSON report.
    module_seconds: list[float] = field(default_factory=list, compare=False)
    seconds: float = field(default=0.0, compare=False)

    @property
    def exit_code(self) -> int:
        """This image's verdict: 1 when it has sites, else 0 (checked and clean)."""
        return 1 if self.findings else 0


@dataclass
class ScanFailure:
    """An input that could not be scanned (unreadable, damaged, or holding no code): it keeps
    its place in every report, and its verdict is 2. `nothing`: the input holds nothing the
    tool checks (`errors.NothingToCheck`)."""

    path: str
    message: str
    nothing: bool = False

    @property
    def exit_code(self) -> int:
        return 2


@dataclass
class ScanSkipped(ScanFailure):
    """A file a directory or pattern brought in that holds nothing the tool checks (a variable
    store, a blob `extract` wrote, a PE that is no UEFI module, firmware for another
    architecture): listed with the reason, verdict 0. Named on the command line it would be a
    `ScanFailure`."""

    @property
    def exit_code(self) -> int:
        return 0


def worst_exit(outcomes: Iterable[ScanResult | ScanFailure]) -> int:
    """The exit code of a scan of several inputs: the worst of theirs (2 > 1 > 0)."""
    return max((o.exit_code for o in outcomes), default=0)


class Found(str):
    """An input path a directory or a pattern brought in (`scan.inputs`), not one named: when it
    holds nothing the tool checks it is skipped, not an error."""


@dataclass
class SiteFacts:
    """One site as the module's own bytes decide it (no place in the image): the unit of the cache."""

    rva: int
    size: int
    mnemonic: str
    bytes: str
    function: str | None
    function_rva: int | None
    function_source: FunctionSource | None
    signature: SiteSignature | None
    callers: list[Caller]
    reachable: bool


@dataclass
class ModuleAnalysis:
    """What a module's code holds, from its bytes, the era and the symbols alone: the code map's
    size and every site (`SiteFacts`, by RVA). `place_analysis` places it in the image."""

    code_bytes: int
    functions: int
    sites: list[SiteFacts]
    symbols: str | None = None
    code_end: int | None = None
    seconds: float = field(default=0.0, compare=False)  # what it took this run (JUnit `time`), not cached
