"""Shared fixtures: the corpus images, the OVMF builds the corpus keeps, and builds from source.

Stored builds (corpus/builds/KEY: firmware and ground truth) need nothing. Builds from source come
from corpus/scripts/build-ovmf.sh, which caches them under ${OVMFTOOL_CACHE:-~/.cache/ovmftool}/builds;
the first run on a machine builds (minutes), later runs reuse. Set OVMFTOOL_SKIP_BUILDS=1 to skip
the tests that need a build from source (they are reported as skipped, never as passed), and
OVMFTOOL_FROM_SOURCE=1 to run the stored-build tests on fresh builds instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from corpus.scripts import store_builds

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
CORPUS_IMAGES = {e["path"]: CORPUS / e["path"] for e in MANIFEST["images"]}
CODE_IMAGES = {k: v for k, v in CORPUS_IMAGES.items() if "_CODE" in k}  # firmware, not variable stores


def beside_checkout(rel: str) -> Path:
    """shared/REL beside the project root or beside one of its parents (the work area's shared
    folder, for a checkout anywhere inside it), as corpus/scripts/oxide-source.sh looks for it;
    the first candidate when there is none."""
    cands = [p / "shared" / rel for p in ROOT.parents]
    return next((c for c in cands if c.exists()), cands[0])


def oxide_source_available() -> bool:
    """Whether corpus/scripts/oxide-source.sh has the fork's source: its tarball in shared/ beside
    the checkout (CI's copy of shared/), OVMFTOOL_OXIDE_TARBALL or OVMFTOOL_OXIDE_GIT, or a tree
    it unpacked before."""
    cache = Path(os.environ.get("OVMFTOOL_CACHE") or Path.home() / ".cache" / "ovmftool")
    return bool(
        any(beside_checkout("oxide-edk2").glob("edk2-oxide-*.tar.xz"))
        or os.environ.get("OVMFTOOL_OXIDE_TARBALL")
        or os.environ.get("OVMFTOOL_OXIDE_GIT")
        or any((cache / "src").glob("edk2-oxide-*/.ovmftool-ready"))
    )


# The OVMF builds tests use (corpus/builds.json): Debian's trees, variants of them, Oxide's fork,
# and trees with a series applied. Each is kept in corpus/builds/KEY/ (firmware, ground truth from
# its .debug files, provenance) by corpus/scripts/store_builds.py; the ones marked "rebuilt" are
# also built from source by the tests that need a build directory (symbols, maps, build outputs),
# and test_stored_builds.py compares a rebuild with what is stored.
BUILD_DEFS = store_builds.DEFS
STOCK = [
    "2022.11-X64-DEBUG",
    "2022.11-X64-RELEASE",
    "2025.02-X64-DEBUG",
    "2022.11-Ia32X64-DEBUG",
    "2025.02-Ia32X64-RELEASE",
]  # Debian's trees as they are
# builds that stretch the scanner: another toolchain (CLANGDWARF), another assembler (NASM 3:
# prefixes in another order), another era (2020.11: pre-TDX names)
REACH = [
    k
    for k in ("2025.02-X64-DEBUG-clang", "2020.11-X64-DEBUG", "2020.11-X64-DEBUG-nasm3", "2025.02-X64-DEBUG-nasm3")
    if k in BUILD_DEFS
]
STOCK += REACH
TREE_BUILDS = STOCK + [
    "2025.02-X64-DEBUG-cloop",
    "2022.11-X64-DEBUG-nonsev",
    "2022.11-Ia32X64-RELEASE-nonsev",
    "oxide-202105-X64-DEBUG",
    "oxide-202105-X64-RELEASE",
]  # every tree and variant scanned
REBUILT = sorted(k for k, d in BUILD_DEFS.items() if d.get("rebuilt"))
OXIDE_DEFS = BUILD_DEFS["oxide-202105-X64-DEBUG"]["defines"]
OXIDE_SERIES = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / BUILD_DEFS["oxide-202105-X64-DEBUG-series"]["series"]).glob("0*.patch")
)
FROM_SOURCE = bool(os.environ.get("OVMFTOOL_FROM_SOURCE"))  # stored builds made again from source
_built: dict[str, Path] = {}


def build_dir(key: str) -> Path:
    """Directory of a cached OVMF build of corpus/builds.json (building it first if needed)."""
    if key not in _built:
        if os.environ.get("OVMFTOOL_SKIP_BUILDS"):
            pytest.skip("OVMFTOOL_SKIP_BUILDS is set")
        d = BUILD_DEFS[key]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                _built[key] = store_builds.build(d, store_builds.patches_of(d, Path(tmp)))
            except store_builds.BuildFailed as e:
                pytest.fail(str(e))
    return _built[key]


@dataclass
class StoredBuild:
    """A build as corpus/builds/KEY keeps it: `fv` holds OVMF_CODE.fd and OVMF_VARS.fd (or the files
    build.json's "firmware" and "vars" name: `code`, `vars`), `truth` the ground truth from its
    .debug files (tests/truth.py), `meta` its provenance (build.json)."""

    key: str
    fv: Path
    truth: dict
    meta: dict

    @property
    def code(self) -> Path:
        """The firmware: OVMF_CODE.fd, or the file build.json names (CLOUDHV.fd, BHYVE_CODE.fd...)."""
        return self.fv / self.meta.get("firmware", "OVMF_CODE.fd")

    @property
    def vars(self) -> Path | None:
        """The empty variable store: OVMF_VARS.fd, or the file build.json names; None for a
        platform that makes a single image (build.json: "vars": null)."""
        name = self.meta.get("vars", "OVMF_VARS.fd")
        return self.fv / name if name else None

    def sites(self) -> dict[tuple[str, str, int], tuple[str, str, str]]:
        """(guid, volume, rva) -> (routine, mnemonic, function holding it) of every string I/O site."""
        return {
            (m["guid"], m["volume"], s["rva"]): (s["routine"], s["mnemonic"], s["function"])
            for m in self.truth["modules"]
            for s in m["sites"]
        }

    def full(self, tmp: Path) -> Path:
        """OVMF.fd (the variable store, then the code) written under tmp."""
        assert (self.meta["ovmf_fd"] or {}).get("is_vars_then_code"), self.key  # None: a single image
        out = tmp / f"{self.key}-OVMF.fd"
        out.write_bytes(self.vars.read_bytes() + self.code.read_bytes())
        assert hashlib.sha256(out.read_bytes()).hexdigest() == self.meta["ovmf_fd"]["sha256"]
        return out


_stored: dict[str, StoredBuild] = {}


def stored(key: str) -> StoredBuild:
    """The build KEY as the corpus keeps it (no build needed); with OVMFTOOL_FROM_SOURCE=1, built
    from source and its truth derived again."""
    if key not in _stored:
        d = CORPUS / "builds" / key
        meta = json.loads((d / "build.json").read_text())
        if FROM_SOURCE:
            b = build_dir(key)
            _stored[key] = StoredBuild(
                key, b / "FV", store_builds.truth_of(b, meta.get("firmware", "OVMF_CODE.fd")), meta
            )
        else:
            _stored[key] = StoredBuild(key, d, json.loads((d / "truth.json").read_text()), meta)
    return _stored[key]


@pytest.fixture(params=sorted(CODE_IMAGES), ids=lambda p: p.split("/", 1)[1])
def corpus_image(request) -> Path:
    """Each real firmware (code) image in corpus/ in turn."""
    return CODE_IMAGES[request.param]


@pytest.fixture(params=STOCK)
def stock_build(request) -> StoredBuild:
    """Each stored build of Debian's edk2 trees in turn."""
    return stored(request.param)


@pytest.fixture(params=TREE_BUILDS)
def any_build(request) -> StoredBuild:
    """Every stored build of a tree in turn: Debian's trees, their variants, Oxide's fork."""
    return stored(request.param)


@pytest.fixture(params=REBUILT)
def real_build(request) -> Path:
    """Each build the suite makes from source (a build directory: symbols, maps, build outputs)."""
    return build_dir(request.param)


@pytest.fixture(autouse=True)
def _result_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own, empty scan result cache (`scan.cache`, under XDG_CACHE_HOME,
    inherited by the commands it runs): the user's cache is never touched, and no test depends
    on what another one cached (nor on code it monkeypatched). OVMF builds are not under it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("OVMFTOOL_NO_CACHE", raising=False)


def pytest_collection_modifyitems(items):
    """The longest tests first (those marked both `build` and `slow`: builds from source,
    `plan --verify`, the fork's boots), so that with `-n 2` both workers start on them and neither
    is left with a long one at the end. Otherwise the order of collection."""
    items.sort(key=lambda it: 0 if it.get_closest_marker("slow") and it.get_closest_marker("build") else 1)
