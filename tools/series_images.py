#!/usr/bin/env python3
"""Write edk2-patches/images.json: the images whose EDK II tree is known, for `scan`'s advice.

    python tools/series_images.py

An image proves which tree built it only by being a known build of that tree: Debian's packaged
images of a source version (corpus/manifest.json "images") and the corpus' stored builds made
from a tree without patches (corpus/builds.json). `scan` names a series of edk2-patches/ only
for an image listed here (ovmftool/scan/advice.py).
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the corpus' tree names -> the series' (plan.json "tree" without "edk2-")
SERIES_TREE = {"oxide-202105": "oxide-edd7239108"}


def main() -> None:
    manifest = json.loads((ROOT / "corpus/manifest.json").read_text())
    defs = json.loads((ROOT / "corpus/builds.json").read_text())["builds"]
    out = []
    for im in manifest["images"]:
        if "_VARS" in im["path"] or not im["package"].startswith("ovmf"):
            continue
        tree = im["version"].split("-")[0].split("+")[0]
        out.append({"sha256": im["sha256"], "tree": tree, "what": f"Debian's ovmf {im['version']} {im['source_path']}"})
    for b in manifest.get("builds", []):
        d = defs.get(b["name"], {})
        firmware = [f for f in b["files"] if f.endswith(".fd") and "VARS" not in f]
        if any(k in d for k in ("patches", "series", "strategy")) or len(firmware) != 1:
            continue
        tree = SERIES_TREE.get(d["tree"], d["tree"])
        out.append(
            {"sha256": b["files"][firmware[0]], "tree": tree, "what": f"the corpus build {b['name']} ({b['command']})"}
        )
    out.sort(key=lambda e: (e["tree"], e["what"]))
    doc = {
        "schema_version": "ovmftool.series-images/1",
        "about": "Images whose EDK II tree is known (tools/series_images.py writes this from corpus/): scan "
        "names a series of edk2-patches/ only for these.",
        "images": out,
    }
    (ROOT / "edk2-patches/images.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} images")


if __name__ == "__main__":
    main()
