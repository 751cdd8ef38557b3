"""The builds the corpus keeps (corpus/builds/KEY) are what their provenance says, and building one
from source again gives the ground truth that is stored for it."""

import hashlib
import json

import pytest

from ovmftool.scan.scanner import scan_image
from tests.conftest import BUILD_DEFS, CORPUS, MANIFEST, REBUILT, build_dir, stored
from tests.truth import TRUTH_SCHEMA, build_truth


def test_every_build_is_stored_with_its_provenance():
    listed = {e["name"]: e for e in MANIFEST["builds"]}
    assert sorted(listed) == sorted(BUILD_DEFS)  # manifest.json names every stored build
    for key, d in BUILD_DEFS.items():
        meta = json.loads((CORPUS / "builds" / key / "build.json").read_text())
        assert meta["key"] == key and meta["dsc"] == d["dsc"] and meta["target"] == d["target"]
        assert meta["defines"] == d["defines"] and meta.get("strategy") == d.get("strategy")
        for name, f in meta["files"].items():
            data = (CORPUS / "builds" / key / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"], (key, name)
        assert listed[key]["files"] == {n: f["sha256"] for n, f in meta["files"].items()}
        assert (CORPUS / meta["license"]).is_file()
        truth = json.loads((CORPUS / "builds" / key / "truth.json").read_text())
        assert truth["schema_version"] == TRUTH_SCHEMA
        assert truth["sites"] == sum(len(m["sites"]) for m in truth["modules"]) == meta["string_io_sites"]["sites"]
        if "patches" in d:  # listed patches: the stored build was made from these bytes
            assert [p["sha256"] for p in meta["patches"]] == [
                hashlib.sha256((CORPUS.parent / p).read_bytes()).hexdigest() for p in d["patches"]
            ], key


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.parametrize("key", REBUILT)
def test_a_build_from_source_gives_the_stored_truth(key):
    """The stored ground truth is what the build's .debug files give today: the same sites with the
    same routines, mnemonics and functions, the same TDCALLs; and the scan of the fresh image finds
    what the scan of the stored one finds."""
    b = build_dir(key)
    kept = stored(key)
    assert build_truth(b) == kept.truth
    fresh = scan_image(str(b / "FV" / "OVMF_CODE.fd"), jobs=2)
    old = scan_image(str(kept.code), jobs=2)
    view = lambda r: [(f.module, f.guid, f.volume, f.rva, f.mnemonic, f.function, f.reachable) for f in r.findings]
    assert view(fresh) == view(old) and len(fresh.findings) == kept.truth["sites"] > 0
