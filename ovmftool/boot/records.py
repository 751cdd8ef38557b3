"""What `boot-check` reports: each executed string I/O instruction (`Executed`), where a boot
that did not finish stopped (`StoppedAt`), and the outcome of one boot (`BootCheck`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# How an executed site or a stop address was mapped to its module (boot.locate).
MappedBy = Literal["debug-log", "xip", "page-offset", "code-match", "flash"]
# How a boot ended: the shell or the boot manager's fallback (finished), or why not.
Verdict = Literal["shell", "boot-manager", "timeout", "hang", "reset", "qemu-exit", "fail-fast"]


@dataclass
class Executed:
    """A string I/O instruction the guest executed."""

    address: int
    bytes: str
    mnemonic: str  # as QEMU printed it (AT&T)
    order: int  # position among executed string I/O, by first translation
    translations: int
    module: str | None = None
    guid: str | None = None
    rva: int | None = None
    function: str | None = None
    mapped_by: MappedBy | None = None  # None: not mapped (several candidates, or none)
    candidates: list[str] = field(default_factory=list)
    port: int | None = None  # DX on entry (second boot), when the block does not set it first
    ports: list[int] = field(default_factory=list)  # every port seen, when more than one
    executions: int | None = None  # entries into the instruction (second boot)
    iterations: int | None = None  # REP iterations in all (entries + re-executions at the instruction)
    units: int | None = None  # bytes/words/dwords moved: sum of the counts on entry, when known
    blocks: list[tuple[int, bool]] = field(default_factory=list, repr=False)  # (block start, sets dx/cx first)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["blocks"]
        return d


@dataclass
class StoppedAt:
    """Where a boot that did not finish was when it ended."""

    address: int | None  # guest address (linear)
    # cpu (the registers when the guest was stopped), last-translated (QEMU's last new block)
    source: Literal["cpu", "last-translated"] | None
    module: str | None = None
    guid: str | None = None
    phase: str | None = None  # RESET (the reset vector), SEC, PEI, DXE, MM
    rva: int | None = None  # in the module (for the reset vector: offset in its code)
    function: str | None = None
    mapped_by: MappedBy | None = None
    halted: bool | None = None  # the CPU was in HLT
    last_serial: str | None = None
    last_debug: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        """`PlatformPei (PEI) at rva 0x1234 in sub_1200`, or `0x… (in no known module)`."""
        if self.module is None:
            return f"0x{self.address:X} (in no known module)" if self.address is not None else "an unknown place"
        s = f"{self.module} ({self.phase})" if self.phase else self.module
        if self.rva is not None:
            s += f" at rva 0x{self.rva:X}"
        if self.function:
            s += f" in {self.function}"
        return s


@dataclass
class BootCheck:
    """The outcome of one boot."""

    image: str
    verdict: Verdict
    seconds: float
    executed: list[Executed]
    vars: dict[str, Any]  # VarsPlan.as_dict()
    detail: str = ""  # reset: triple fault or not; qemu-exit: status and message
    quiet: float = 0.0  # seconds without new output or code at the end (a hang: at least --hang-after)
    hang_after: float | None = None
    stopped_at: StoppedAt | None = None  # when it did not finish
    counted: bool = False  # the second boot (executions, ports) ran and agreed with the first
    logs: dict[str, Any] = field(default_factory=dict)  # serial, debug, trace, count_debug: paths (None once removed)
    kept: str | None = None  # the directory the logs are in (--keep), None when it was removed
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.verdict in ("shell", "boot-manager")

    @property
    def ended(self) -> str:
        """The `ended` field of earlier versions: the verdict, but the --fail-fast sentence."""
        if self.verdict == "fail-fast":
            return "stopped at the first string I/O (--fail-fast)"
        return self.verdict

    def as_dict(self) -> dict[str, Any]:
        """The check's fields (report.boot_report adds the document header)."""
        return {
            "image": self.image,
            "ended": self.ended,
            "verdict": self.verdict,
            "finished": self.finished,
            "detail": self.detail,
            "seconds": round(self.seconds, 1),
            "quiet_seconds": round(self.quiet, 1),
            "hang_after": self.hang_after,
            "stopped_at": self.stopped_at.as_dict() if self.stopped_at else None,
            "executed": [e.as_dict() for e in self.executed],
            "first": self.executed[0].as_dict() if self.executed else None,
            "counted": self.counted,
            "vars": self.vars,
            "kept": self.kept,
            "notes": self.notes,
            "logs": {k: self.logs.get(k) for k in ("serial", "debug", "trace", "count_debug")},
        }
