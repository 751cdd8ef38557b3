"""`plan`: choose a strategy for a tree and DSC, and describe the patch series that applies it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.edk2 import strategy as S
from ovmftool.edk2.dsc import Dsc, read_dsc
from ovmftool.edk2.inf import read_inf
from ovmftool.errors import OvmfToolError, require_one_line

STRATEGIES = ("auto", "dsc-inf", "unroll")


@dataclass
class Plan:
    """Everything `plan` decided and why."""

    tree: str
    dsc: str
    defines: dict[str, str]
    arches: list[str]
    strategy: str
    reasons: list[str]
    patches: list[S.PatchSpec]
    facts: S.TreeFacts
    modules: list[dict] = field(default_factory=list)  # components linking a REP-carrying IoLib
    tradeoffs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The plan's fields (report.plan_report adds the document header)."""
        return {
            "tree": Path(self.tree).name,
            "tree_version": _tree_version(Path(self.tree)),
            "dsc": self.dsc,
            "defines": self.defines,
            "arches": self.arches,
            "strategy": self.strategy,
            "reasons": self.reasons,
            "tradeoffs": self.tradeoffs,
            "iolib_fifo": self.facts.fifo,
            "dropped_library_classes": self.facts.dropped_classes,
            "other_string_io_sources": self.facts.other_sources,
            "patches": [{"subject": p.subject, "files": [e.path for e in p.edits]} for p in self.patches],
            "modules_affected": self.modules,
            "sites_expected_to_remain": 0,
        }


def _tree_version(tree: Path) -> str | None:
    """Debian's package version of a tree unpacked by corpus/scripts, if known."""
    marker = tree / ".ovmftool-ready"
    return marker.read_text().strip() if marker.is_file() else None


def parse_defines(defines: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`-D` values as EDK II's build reads them: NAME=VALUE, or NAME alone for TRUE."""
    defs = {}
    for d in defines:
        require_one_line(d, "-D")
        k, v = d.split("=", 1) if "=" in d else (d, "TRUE")
        if not k.strip():
            raise OvmfToolError(f"-D {d}: expected NAME or NAME=VALUE")
        defs[k.strip()] = v
    return defs


def command_line(dsc: str, defs: dict[str, str], arches, strategy: str) -> str:
    """The `plan` command that writes this series again (recorded in plan.json and SUMMARY.md)."""
    parts = ["ovmftool plan --edk2 TREE", f"--dsc {shlex.quote(dsc)}"]
    parts += [f"-D {shlex.quote(f'{k}={v}')}" for k, v in sorted(defs.items())]
    parts += [f"--arch {a.upper()}" for a in arches] + [f"--strategy {strategy}"]
    return " ".join(parts) + " -o DIR"


def default_arches(dsc: Dsc) -> list[str]:
    """SUPPORTED_ARCHITECTURES of the DSC."""
    sup = dsc.defines.get("SUPPORTED_ARCHITECTURES", "X64")
    return [a.strip().upper() for a in sup.split("|") if a.strip().upper() in ("IA32", "X64")] or ["X64"]


def make_plan(tree: Path, dsc_rel: str, defines: dict[str, str], arches: list[str] | None, strategy: str) -> Plan:
    """Read the tree and produce the plan (no file is written)."""
    if not (tree / "MdePkg" / "MdePkg.dec").is_file():
        raise OvmfToolError(f"{tree} is not an EDK II tree (no MdePkg/MdePkg.dec)")
    if strategy not in STRATEGIES:
        raise OvmfToolError(f"unknown strategy {strategy}")
    dsc = read_dsc(tree, dsc_rel, defines)
    arches = [a.upper() for a in arches] if arches else default_arches(dsc)
    facts = S.tree_facts(tree, dsc, arches)
    used = {m.instance for m in dsc.instances("IoLib")}
    if not used:
        raise OvmfToolError(f"{dsc_rel} maps no IoLib instance")
    rep_used = {i for i in used if any(k in ("sev-nasm", "rep-nasm") for k in facts.fifo.get(i, {}).values())}
    reasons: list[str] = []
    plain = facts.fifo.get(S.PLAIN_INF, {})
    if strategy == "auto":
        if all(plain.get(a) == "c-loop" for a in arches):
            strategy = "dsc-inf"
            reasons.append(
                f"{S.PLAIN_INF} already builds C FIFO loops (IoLibFifo.c) for {', '.join(arches)} "
                "(trees from edk2-stable202402 on): switching the DSC to it is enough"
            )
        else:
            strategy = "unroll"
            reasons.append(
                f"{S.PLAIN_INF} builds IoFifo.nasm (pure REP INS/OUTS) for "
                f"{', '.join(a for a in arches if plain.get(a) == 'rep-nasm')} in this tree: switching "
                "the DSC to it removes nothing; unrolling the FIFO NASM keeps the Sev instance with its "
                + ("SEV and TDX" if (tree / S.TDX_SOURCE).is_file() else "SEV")
                + " handling and needs no new code"
            )
    else:
        reasons.append(f"strategy {strategy} was asked for")
    patches: list[S.PatchSpec] = []
    tradeoffs: list[str] = []
    if strategy == "unroll":
        patches = _unroll(tree, arches, used, facts)
        tradeoffs.append(
            "FIFO transfers run one IN/OUT per element instead of one REP instruction: each "
            "element is a VM exit either way under a VMM that intercepts the port"
        )
    else:
        patches = _dsc_inf(tree, dsc, arches, facts)
        tradeoffs.append(
            "the non-Sev IoLib drops the Sev instance's handling: SEV guests lose the unrolled "
            "path selection (harmless: the C loops never use string I/O) and TDX guests lose "
            "TDVMCALL-based port I/O in IoLib (port I/O then relies on the #VE handler)"
        )
    if not patches:
        raise OvmfToolError("nothing to change: the IoLib instances this DSC uses carry no string I/O")
    mods = []
    in_flash = set(dsc.fdf_infs)
    for arch, inf in dsc.components:
        a = arch.upper()
        if a != "COMMON" and a not in arches:
            continue
        if in_flash and inf not in in_flash:
            continue  # built but not placed in the image by the FDF
        p = tree / inf
        mtype = read_inf(p).defines.get("MODULE_TYPE", "BASE") if p.is_file() else "BASE"
        for arch_use in [a] if a != "COMMON" else arches:
            inst = dsc.resolve("IoLib", arch_use, mtype, inf)
            if inst in rep_used:
                mods.append(
                    {
                        "inf": inf,
                        "arch": arch_use,
                        "module_type": mtype,
                        "iolib": inst,
                        "fifo": facts.fifo[inst][arch_use],
                    }
                )
    return Plan(str(tree), dsc_rel, defines, arches, strategy, reasons, patches, facts, mods, tradeoffs)


def _unroll(tree: Path, arches: list[str], used: set[str], facts: S.TreeFacts) -> list[S.PatchSpec]:
    edits = []
    for arch in sorted(set(arches)):
        d = S.ARCH_DIR[arch]
        kinds = {facts.fifo.get(i, {}).get(arch) for i in used}
        if "sev-nasm" in kinds:
            rel = f"{S.IOLIB_DIR}/{d}/IoFifoSev.nasm"
            old = (tree / rel).read_bytes()
            edits.append(S.FileEdit(rel, old, S.unroll_sev_nasm(old.decode()).encode()))
        if "rep-nasm" in kinds:
            rel = f"{S.IOLIB_DIR}/{d}/IoFifo.nasm"
            old = (tree / rel).read_bytes()
            edits.append(S.FileEdit(rel, old, S.unroll_rep_nasm(old.decode(), arch).encode()))
    if not edits:
        return []
    files = ", ".join(e.path.rsplit("/", 2)[-2] + "/" + e.path.rsplit("/", 1)[-1] for e in edits)
    body = (
        "REP INSB/INSW/INSD and REP OUTSB/OUTSW/OUTSD cannot be emulated by a VMM that gets no\n"
        "instruction decode assist from the CPU: bhyve without AMD DecodeAssist (any nested\n"
        "virtualization setup) hands the raw bytes to propolis, which panics with\n"
        "'Unhandled VM exit: InstEmul'. Every module linking BaseIoLibIntrinsic carries its own copy\n"
        "of the FIFO routines, so DEBUG output (REP OUTSB to port 0x402) and fw_cfg reads (REP INSB)\n"
        "stop the guest.\n\n"
        f"Make every FIFO routine use its IN/OUT loop ({files}). The Sev routines keep their SEV\n"
        "and TDX handling; SevNoRepIo stays for callers that use it.\n"
    )
    return [S.PatchSpec("MdePkg/BaseIoLibIntrinsic: unroll string I/O in the FIFO routines", body, edits)]


def dsc_switch_only(p: Plan) -> list[S.PatchSpec]:
    """The DSC change of the dsc-inf strategy alone (IoLib mapped to the non-Sev instance, no C
    loops added to it): what `plan --verify --measure-dsc-switch` builds to show what switching
    the DSC removes in this tree."""
    tree = Path(p.tree)
    return _dsc_inf(tree, read_dsc(tree, p.dsc, p.defines), p.arches, p.facts, c_loops=False)


def _dsc_inf(tree: Path, dsc: Dsc, arches: list[str], facts: S.TreeFacts, c_loops: bool = True) -> list[S.PatchSpec]:
    patches = []
    plain = facts.fifo.get(S.PLAIN_INF, {})
    if c_loops and any(plain.get(a) == "rep-nasm" for a in arches):
        edits = S.c_loop_inf(tree)
        if edits:
            patches.append(
                S.PatchSpec(
                    "MdePkg/BaseIoLibIntrinsic: build the FIFO routines as C loops",
                    "BaseIoLibIntrinsic.inf builds X64/IoFifo.nasm and Ia32/IoFifo.nasm, which move FIFO data\n"
                    "with REP INS/OUTS. A VMM without instruction decode assists (bhyve without AMD\n"
                    "DecodeAssist, e.g. under nested virtualization) cannot emulate them.\n\n"
                    "Build IoLibFifoLoop.c instead: the same six routines as loops over IoRead/IoWrite,\n"
                    "as edk2-stable202402 and later do in IoLibFifo.c.\n",
                    edits,
                )
            )
    cls = S.add_dropped_classes(tree, dsc, facts.dropped_classes)
    sw = S.switch_dsc(tree, dsc)
    if cls:
        names = ", ".join(sorted(facts.dropped_classes))
        patches.append(
            S.PatchSpec(
                "OvmfPkg: list library classes that BaseIoLibIntrinsicSev used to provide",
                f"BaseIoLibIntrinsicSev.inf depends on {names}; modules that call those classes' functions\n"
                "without listing them linked only because every module links IoLib. List them explicitly so\n"
                "the modules keep linking when the platform uses another IoLib instance.\n",
                cls,
            )
        )
    if sw:
        patches.append(
            S.PatchSpec(
                "OvmfPkg: use the non-Sev IoLib instance",
                "BaseIoLibIntrinsicSev moves FIFO data with REP INS/OUTS unless plain SEV is active. A VMM\n"
                "without instruction decode assists (bhyve without AMD DecodeAssist, e.g. under nested\n"
                "virtualization) cannot emulate them and stops the guest.\n\n"
                "Map IoLib to BaseIoLibIntrinsic, whose FIFO routines are C loops over single port\n"
                "accesses. This drops the Sev instance's SEV/TDX FIFO handling.\n",
                sw,
            )
        )
    return patches
