"""Every versioned JSON output starts with the same header (`schema_version`, `tool`, and `image`
where it has one), built once in `report.document`; the CLI's commands render through `report`."""

import ast
import json
from pathlib import Path

from click.testing import CliRunner

from ovmftool import __version__
from ovmftool.cli import main
from tests.conftest import CORPUS_IMAGES, ROOT

DEB = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
DEB25 = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])
TOOL = {"name": "ovmftool", "version": __version__}
CRASH = "vCPU 0: Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 110, 235, 10], len: 4 })\n"


def _json(args, code=(0, 1)):
    r = CliRunner().invoke(main, args)
    assert r.exit_code in code, r.output
    return json.loads(r.stdout)


def test_every_json_output_has_the_one_header(tmp_path):
    log = tmp_path / "propolis.log"
    log.write_text(CRASH)
    out = tmp_path / "x"
    assert CliRunner().invoke(main, ["extract", DEB25, "-o", str(out)]).exit_code == 0
    docs = {
        "scan": _json(["scan", "--format", "json", DEB]),
        "info": _json(["info", "--format", "json", DEB]),
        "info-modules": _json(["info", "--format", "json", "--modules", DEB25]),
        "baseline": _json(["baseline", DEB, "-o", "-"]),
        "diff": _json(["diff", "--format", "json", DEB, DEB25]),
        "decode": _json(["decode", "f36eeb0a", "--image", DEB, "--format", "json"]),
        "decode-log": _json(["decode", "--log", str(log), "--format", "json"]),
        "extract": json.loads((out / "manifest.json").read_text()),
        "patch": _json(["patch", DEB, "--dry-run", "--format", "json"]),
        "boot-check": _json(["boot-check", str(tmp_path / "missing.fd"), "--format", "json"], code=(2,)),
    }
    for name, doc in docs.items():
        assert doc["tool"] == TOOL, name
        assert doc["schema_version"] == f"ovmftool.{name.removesuffix('-modules')}/1", name
    sha = {DEB: docs["scan"]["image"]["sha256"], DEB25: docs["info-modules"]["image"]["sha256"]}
    assert (
        docs["scan"]["image"]
        == docs["info"]["image"]
        == {"path": DEB, "sha256": sha[DEB], "size": Path(DEB).stat().st_size}
    )
    assert docs["extract"]["image"] == docs["info-modules"]["image"]
    assert docs["baseline"]["image"] == {"path": DEB, "sha256": sha[DEB]}
    assert docs["diff"]["old"] == {"path": DEB, "sha256": sha[DEB]} and docs["diff"]["new"]["sha256"] == sha[DEB25]
    assert docs["decode"]["image"]["path"] == DEB and docs["decode-log"]["image"] is None


def test_the_header_is_built_in_one_place():
    """No module but report/document.py spells out the `tool` object of a header."""
    holders = []
    for p in sorted((ROOT / "ovmftool").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "tool" and isinstance(v, ast.Dict)
                for k, v in zip(node.keys, node.values)
            ):
                holders.append(str(p.relative_to(ROOT)))  # (SARIF's `tool` is its own object, from a call)
    assert holders == ["ovmftool/report/document.py"], holders


def test_only_report_writes_a_schema_version():
    """Documents are headed in report/ alone: no dict outside it has a `schema_version` key (the
    gate's loaders read the key of the files users give; they write none)."""
    writers = []
    for p in sorted((ROOT / "ovmftool").rglob("*.py")):
        if p.parent.name == "report":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "schema_version" for k in node.keys
            ):
                writers.append(str(p.relative_to(ROOT)))
    assert writers == [], writers
