"""The package layout holds: no import circle, and no layer imports from a layer above it.

Every module of ovmftool is read with `ast` (nothing is imported), and every import in it counts:
module-level ones, those inside functions, and those under `if TYPE_CHECKING:`, since an import
moved into a function to dodge a circle is still a circle.

The layers, innermost first (README, docs/architecture.md): model (the image tree and its
parsing) -> ops (operations on the tree) -> scan -> patch, edk2, boot, triage, gate -> report
(all rendering and schemas) -> cli (argument parsing and calls). `ovmftool.errors` and the
package itself (`__version__`) are below all of them; `ovmftool.__main__` is the entry point.
"""

from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

from ovmftool.model import structs as S

PKG = Path(__file__).resolve().parent.parent / "ovmftool"

# What each layer must not import (the layers above it).
FORBIDDEN = {
    "model": {"ops", "scan", "patch", "edk2", "boot", "triage", "gate", "report", "cli"},
    "ops": {"scan", "patch", "edk2", "boot", "triage", "gate", "report", "cli"},
    "scan": {"patch", "edk2", "boot", "triage", "gate", "report", "cli"},
    **{stage: {"report", "cli"} for stage in ("patch", "edk2", "boot", "triage", "gate")},
    "report": {"cli"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """ovmftool module -> the ovmftool modules it imports anywhere in its text."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", node)
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            for n in names:
                while n and n not in mods:  # `import a.b.c` of a name inside a module: its module
                    n = n.rpartition(".")[0]
                if n.startswith("ovmftool") and n != mod:
                    edges.add(n)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A concrete circle inside a component: a -> b -> ... -> a."""
    members = set(comp)
    start = comp[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in path]
        if back:
            return path[path.index(back[0]) :] + [back[0]]
        fresh = [w for w in nxt if w not in seen]
        path.append(fresh[0])
        seen.add(fresh[0])


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_module_list_is_real():
    graph = import_graph()
    # the test reads the package, not an empty directory: the parser and the CLI are there, with edges
    assert "ovmftool.model.parser" in graph and "ovmftool.cli" in graph
    assert "ovmftool.model.node" in graph["ovmftool.model.parser"]
    assert sum(len(e) for e in graph.values()) > 100


def test_no_import_circle():
    graph = import_graph()
    found = cycles(graph)
    text = "\n".join(" -> ".join(_one_cycle(graph, c)) + f"   (component: {', '.join(c)})" for c in found)
    assert not found, f"import circles:\n{text}"


def test_layers_import_only_downwards():
    graph = import_graph()
    bad = []
    for mod, edges in sorted(graph.items()):
        layer = _layer(mod)
        for dep in sorted(edges):
            dl = _layer(dep)
            if dl == "cli" and mod != "ovmftool.__main__":
                bad.append(f"{mod} imports {dep} (nothing imports the CLI)")
            elif dl in FORBIDDEN.get(layer, ()):
                bad.append(f"{mod} imports {dep} ({layer} is below {dl})")
    assert not bad, "\n".join(bad)


def test_model_and_ops_import_ovmftool_only_at_module_level():
    """An import of an ovmftool module inside a function is how a circle hides; the model and
    the operations have none (optional heavy libraries, e.g. brotli, may be imported late)."""
    bad = []
    for mod, path in _modules().items():
        if _layer(mod) not in ("model", "ops"):
            continue
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                bad += [
                    f"{mod}.{fn.name} imports {n}"
                    for n in names
                    if n.startswith("ovmftool") or (isinstance(node, ast.ImportFrom) and node.level)
                ]
    assert not bad, "\n".join(bad)


def test_field_declarations_agree_with_the_header_layouts():
    """Single fields the writers patch (structs.Field) sit where the whole-header layouts put them."""

    def at(fmt: str, index: int) -> int:  # offset of the index-th item of a little-endian struct format
        codes = re.findall(r"\d*[a-zA-Z]", fmt.lstrip("<"))  # "16s" is one item (these formats repeat nothing else)
        return struct.calcsize("<" + "".join(codes[:index]))

    assert S.FV_HEADER_LENGTH.offset == at(S.FV_HEADER.format, 5)
    assert (S.FFS_HEADER_CHECKSUM, S.FFS_FILE_CHECKSUM, S.FFS_SIZE, S.FFS_STATE) == tuple(
        at(S.FFS_HEADER.format, i) for i in (1, 2, 5, 6)
    )
    assert S.FFS_EXTENDED_SIZE.offset == S.FFS_HEADER.size and S.FFS_HEADER2_SIZE == 32
    assert S.SECTION_EXTENDED_SIZE.offset == S.SECTION_HEADER.size and S.SECTION_HEADER2_SIZE == 8
    assert S.SECTION_CRC32.offset == S.SECTION_GUID_DEFINED.size
    assert (S.COFF_NUMBER_OF_SECTIONS.offset, S.COFF_SIZE_OF_OPTIONAL_HEADER.offset) == (
        at(S.COFF_HEADER.format, 1),
        at(S.COFF_HEADER.format, 5),
    )
    assert [
        f.offset
        for f in (
            S.PE_SECTION_VIRTUAL_SIZE,
            S.PE_SECTION_VIRTUAL_ADDRESS,
            S.PE_SECTION_SIZE_OF_RAW_DATA,
            S.PE_SECTION_POINTER_TO_RAW_DATA,
            S.PE_SECTION_CHARACTERISTICS,
        )
    ] == [at(S.PE_SECTION.format, i) for i in (1, 2, 3, 4, 9)]
    assert S.TE_IMAGE_BASE.offset == at(S.TE_HEADER.format, 7)
    # PE32 has BaseOfData (u32) before a u32 ImageBase, PE32+ a u64 ImageBase there; both end at 32
    assert S.OPT_IMAGE_BASE["PE32"].end == S.OPT_IMAGE_BASE["PE32+"].end == S.OPT_SECTION_ALIGNMENT.offset
    assert S.OPT_NUMBER_OF_RVA_AND_SIZES["PE32+"].offset - S.OPT_NUMBER_OF_RVA_AND_SIZES["PE32"].offset == 16


def test_the_checks_catch_what_they_are_for():
    """The cycle finder and the layer rule on a made-up graph: both find what is planted."""
    g = {
        "ovmftool.model.a": {"ovmftool.model.b"},
        "ovmftool.model.b": {"ovmftool.model.c"},
        "ovmftool.model.c": {"ovmftool.model.a", "ovmftool.ops.x"},
        "ovmftool.ops.x": set(),
    }
    assert cycles(g) == [["ovmftool.model.a", "ovmftool.model.b", "ovmftool.model.c"]]
    assert _one_cycle(g, cycles(g)[0]) == [
        "ovmftool.model.a",
        "ovmftool.model.b",
        "ovmftool.model.c",
        "ovmftool.model.a",
    ]
    assert "ops" in FORBIDDEN[_layer("ovmftool.model.c")]
