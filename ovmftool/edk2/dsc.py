"""Resolve library-class mappings of an EDK II DSC the way the build does, for the classes the
planner cares about: `!include`, `DEFINE`, `-D` values, `!if`/`!ifdef`/`!ifndef`/`!elseif`/`!else`,
`[LibraryClasses]`, `[LibraryClasses.<ARCH>]`, `[LibraryClasses.<ARCH>.<MODULE_TYPE>]`, and
per-component `<LibraryClasses>` overrides in `[Components]`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.edk2.expr import evaluate
from ovmftool.errors import OvmfToolError

_SECTION = re.compile(r"^\[([^\]]+)\]$")
_VAR = re.compile(r"\$\(([A-Za-z0-9_]+)\)")


@dataclass(frozen=True)
class Mapping:
    """One `Class|Instance.inf` line and where it applies."""

    library_class: str
    instance: str
    arch: str  # "common" or an arch
    module_type: str  # "common" or a module type
    component: str | None  # INF path of the component whose <LibraryClasses> holds it
    file: str
    line: int


@dataclass
class Dsc:
    """What the resolver read."""

    path: Path
    defines: dict[str, str] = field(default_factory=dict)
    mappings: list[Mapping] = field(default_factory=list)
    components: list[tuple[str, str]] = field(default_factory=list)  # (arch, inf path)
    files: list[str] = field(default_factory=list)  # DSC and included files, workspace-relative
    fdf_infs: list[str] = field(default_factory=list)  # INF files the FDF places in flash (empty: no FDF)

    def instances(self, library_class: str) -> list[Mapping]:
        return [m for m in self.mappings if m.library_class == library_class]

    def resolve(self, library_class: str, arch: str, module_type: str, component: str | None = None) -> str | None:
        """The instance a module of that arch and type (and INF) links for `library_class`: the
        component's own <LibraryClasses> first, then [LibraryClasses.ARCH.TYPE],
        [LibraryClasses.ARCH], [LibraryClasses.common.TYPE], [LibraryClasses] (BaseTools looks the
        arch up before the module type); among equals the last line read."""
        best, best_rank = None, -1
        for m in self.instances(library_class):
            if m.component is not None and m.component != component:
                continue
            if m.arch not in ("common", arch.lower()) or m.module_type not in ("common", module_type.lower()):
                continue
            rank = (
                (4 if m.component else 0) + (2 if m.arch != "common" else 0) + (1 if m.module_type != "common" else 0)
            )
            if rank >= best_rank:
                best, best_rank = m.instance, rank
        return best


class _Cond:
    def __init__(self) -> None:
        self.stack: list[list[bool]] = []  # [this branch active, some branch taken]

    @property
    def active(self) -> bool:
        return all(s[0] for s in self.stack)


def _expand(text: str, defines: dict[str, str]) -> str:
    return _VAR.sub(lambda m: defines.get(m.group(1), m.group(0)), text)


def _truth(expr: str, defines: dict[str, str]) -> bool:
    return evaluate(_expand(expr, defines).strip())


def read_dsc(workspace: Path, dsc: str, defines: dict[str, str] | None = None) -> Dsc:
    """Resolve `dsc` (relative to `workspace`) with `-D` style `defines`."""
    path = workspace / dsc
    if not path.is_file():
        raise OvmfToolError(f"DSC {dsc} not found in {workspace}")
    out = Dsc(path, dict(defines or {}))
    out.defines.setdefault("WORKSPACE", str(workspace))
    _read(workspace, path, out, out.defines, state={"sections": [], "component": None}, depth=0)
    fdf = out.defines.get("FLASH_DEFINITION")
    if fdf and (workspace / fdf).is_file():
        files = out.files
        _read(workspace, workspace / fdf, out, out.defines, state={"sections": [], "component": None}, depth=0)
        out.files = files  # only DSC files are candidates for IoLib edits
    return out


def _read(ws: Path, path: Path, out: Dsc, defines: dict[str, str], state: dict, depth: int) -> None:
    if depth > 16:
        raise OvmfToolError(f"!include nesting too deep at {path}")
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise OvmfToolError(f"cannot read {path}: {e.strerror}") from None
    rel = str(path.relative_to(ws)) if path.is_relative_to(ws) else str(path)
    out.files.append(rel)
    cond = _Cond()
    for no, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        low = line.lower()
        if low.startswith("!if ") or low.startswith("!ifdef") or low.startswith("!ifndef"):
            word, _, rest = line.partition(" ")
            if word.lower() == "!ifdef":
                val = rest.strip().strip("$()") in defines
            elif word.lower() == "!ifndef":
                val = rest.strip().strip("$()") not in defines
            else:
                val = _truth(rest, defines)
            cond.stack.append([val, val])
            continue
        if low.startswith("!elseif"):
            if cond.stack:
                top = cond.stack[-1]
                val = not top[1] and _truth(line[7:], defines)
                top[0], top[1] = val, top[1] or val
            continue
        if low.startswith("!else"):
            if cond.stack:
                top = cond.stack[-1]
                top[0], top[1] = not top[1], True
            continue
        if low.startswith("!endif"):
            if cond.stack:
                cond.stack.pop()
            continue
        if not cond.active:
            continue
        if low.startswith("!include"):
            inc = _expand(line.split(None, 1)[1].strip(), defines)
            cand = [ws / inc, path.parent / inc]
            target = next((c for c in cand if c.is_file()), None)
            if target is None:
                raise OvmfToolError(f"{rel}:{no}: !include {inc} not found")
            _read(ws, target, out, defines, state, depth + 1)
            continue
        if low.startswith("define ") or (
            state["sections"] and state["sections"][0][0] == "defines" and "=" in line and not line.startswith("!")
        ):
            body = line[7:] if low.startswith("define ") else line
            if "=" in body:
                k, v = body.split("=", 1)
                defines.setdefault(k.strip(), _expand(v.strip(), defines))  # -D wins over DEFINE
            continue
        m = _SECTION.match(line)
        if m:
            secs = []
            for part in m.group(1).split(","):
                bits = [b.strip().lower() for b in part.strip().split(".")]
                secs.append((bits[0], bits[1] if len(bits) > 1 else "common", bits[2] if len(bits) > 2 else "common"))
            state["sections"] = secs
            state["component"] = None
            continue
        kinds = {s[0] for s in state["sections"]}
        if "fv" in kinds:
            if line.upper().startswith("INF "):
                # options (RuleOverride=..., FILE_GUID = ...) come before the path
                parts = _expand(line[4:], defines).split()
                inf_path = next((w for w in reversed(parts) if w.lower().endswith(".inf")), None)
                if inf_path:
                    out.fdf_infs.append(inf_path)
            continue
        if "libraryclasses" in kinds and "|" in line:
            cls, inst = (x.strip() for x in line.split("|", 1))
            for sec, arch, mtype in state["sections"]:
                if sec == "libraryclasses":
                    out.mappings.append(Mapping(cls, _expand(inst, defines), arch, mtype, None, rel, no))
        elif "components" in kinds:
            if line.endswith("{"):
                inf = _expand(line[:-1].strip(), defines)
                state["component"] = inf
                state["sub"] = None
                for _sec, arch, _m in state["sections"]:
                    out.components.append((arch, inf))
            elif line == "}":
                state["component"] = None
            elif state.get("component"):
                if line.startswith("<"):
                    state["sub"] = line.strip("<>").lower()
                elif state.get("sub") == "libraryclasses" and "|" in line:
                    cls, inst = (x.strip() for x in line.split("|", 1))
                    for _sec, arch, _m in state["sections"]:
                        out.mappings.append(
                            Mapping(cls, _expand(inst, defines), arch, "common", state["component"], rel, no)
                        )
            elif line.lower().endswith(".inf"):
                for _sec, arch, _m in state["sections"]:
                    out.components.append((arch, _expand(line, defines)))
