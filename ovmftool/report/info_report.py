"""Rendering of `info`: the tree as text (`ops.tree`), the module table (`--modules`), or JSON
(schema ovmftool.info/1, docs/schema/info-1.json; with `--modules` the same without `tree`)."""

from __future__ import annotations

from ovmftool.model.flash import FlashImage
from ovmftool.model.node import Problem, all_problems
from ovmftool.ops import tree
from ovmftool.ops.modules import iter_modules
from ovmftool.report.document import header, image_ref, to_json

INFO_SCHEMA = "ovmftool.info/1"


def info_json(root: FlashImage, modules_only: bool = False) -> dict:
    """The `info --format json` document; with `modules_only` (`info --modules`) the same without
    `tree` (docs/schema/info-1.json allows both forms)."""
    doc = {
        **header(INFO_SCHEMA, image=image_ref(root)),
        "modules": [m.as_dict() for m in iter_modules(root)],
        "problems": [{"message": p.message, "where": p.where} for p in all_problems(root)],
    }
    if not modules_only:
        doc["tree"] = [tree.node_dict(c) for c in root.children]
    return doc


def modules_text(root: FlashImage) -> str:
    """`info --modules`: one module a line under a header."""
    rows = [f"{'name':<34} {'guid':<36} {'type':<10} {'arch':<5} {'fmt':<5} {'image_base':>18} {'entry':>8}  volume"]
    for m in iter_modules(root):
        rows.append(
            f"{m.name:<34} {m.guid:<36} {m.file_type:<10} {m.arch:<5} {m.image.format:<5} "
            f"0x{m.image.image_base:016X} 0x{m.image.entry_rva:06X}  {m.volume}"
        )
    return "\n".join(rows) + "\n"


def render_info(root: FlashImage, fmt: str, modules_only: bool = False) -> str:
    """`info` in `fmt` ("text" or "json")."""
    if fmt == "json":
        return to_json(info_json(root, modules_only))
    if modules_only:
        return modules_text(root)
    return "\n".join(tree.text_lines(root)) + "\n"  # looked up at the call: tests replace it


def damage_line(image: str, probs: list[Problem], more: bool = True) -> str:
    """`IMAGE: damaged image: FIRST PROBLEM (and N more)` (without the count when not `more`)."""
    rest = f" (and {len(probs) - 1} more)" if more and len(probs) > 1 else ""
    return f"{image}: damaged image: {probs[0]}{rest}"
