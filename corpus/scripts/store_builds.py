#!/usr/bin/env python3
"""Keep OVMF builds in the corpus: firmware, ground truth and provenance.

    python -m corpus.scripts.store_builds [KEY ...]      (default: every build of corpus/builds.json)

For each build of corpus/builds.json: build it with corpus/scripts/build-ovmf.sh (reusing a cached
build of the same tree, flags and patches), then write corpus/builds/KEY/:
  OVMF_CODE.fd, OVMF_VARS.fd  the build's firmware and its empty variable store; a platform whose
                              FDs have other names keeps them under their own names (Bhyve:
                              BHYVE_CODE.fd, BHYVE_VARS.fd), and one that makes a single image keeps
                              that alone (CloudHv: CLOUDHV.fd; AmdSev: OVMF.fd); build.json's
                              "firmware" and "vars" name them
  truth.json                  the ground truth from the build's .debug files (tests/truth.py:
                              every FIFO routine's string I/O instruction, where TDCALL is)
  build.json                  provenance: command, source, toolchain, patches and files (sha256)
and record the build in corpus/manifest.json's "builds". A build with a 'strategy' is of the
series `ovmftool plan --strategy S` writes for that tree today; with 'series', of a committed one.
The test suite reads these instead of building (and rebuilds the ones marked 'rebuilt'), through
this module's `patches_of` and `build`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.truth import build_truth  # the ground truth the tests use

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "corpus"
SCRIPTS = CORPUS / "scripts"
DEFS = json.loads((CORPUS / "builds.json").read_text())["builds"]


LICENSES = {
    "2020.11": "licenses/debian-ovmf-2020.11.copyright",
    "2022.11": "licenses/debian-ovmf-2022.11.copyright",
    "2025.02": "licenses/debian-ovmf-2025.02.copyright",
    "2026.08": "licenses/debian-ovmf-2026.08.copyright",
    "oxide-202105": "licenses/oxide-edk2-License.txt",
}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree_of(ver: str) -> Path:
    script = "oxide-source.sh" if ver.startswith("oxide-") else "edk2-source.sh"
    args = ["bash", str(SCRIPTS / script)] + ([] if ver.startswith("oxide-") else [ver])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def patches_of(d: dict, scratch: Path) -> list[Path]:
    """The patches a build applies: listed ones, a committed series, or plan's series for a strategy."""
    if "patches" in d:
        return [ROOT / p for p in d["patches"]]
    if "series" in d:
        return sorted((ROOT / d["series"]).glob("0*.patch"))
    if "strategy" in d:
        out = scratch / "series"
        cmd = [
            sys.executable,
            "-m",
            "ovmftool",
            "plan",
            "--edk2",
            str(tree_of(d["tree"])),
            "--dsc",
            d["dsc"],
            "--strategy",
            d["strategy"],
            "-o",
            str(out),
        ]
        for x in d["defines"]:
            cmd += ["-D", x]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return sorted(out.glob("0*.patch"))
    return []


def tool_args(d: dict) -> list[str]:
    """build-ovmf.sh's -t (a toolchain other than GCC5) and -n (a NASM other than the system's)."""
    return (["-t", d["toolchain"]] if d.get("toolchain", "GCC5") != "GCC5" else []) + (
        ["-n", d["nasm"]] if d.get("nasm") else []
    )


def build_command(d: dict, patches: list[Path]) -> list[str]:
    cmd = ["bash", str(SCRIPTS / "build-ovmf.sh"), d["tree"], d["dsc"], d["target"]]
    for x in d["defines"]:
        cmd += ["-D", x]
    for p in patches:
        cmd += ["-p", str(p)]
    return cmd + tool_args(d)


def firmware_files(fv: Path) -> tuple[str, str | None, str | None]:
    """(firmware, variable store, whole image) of a build's FV directory, by name: OvmfPkg's
    P_CODE.fd, P_VARS.fd and P.fd (OVMF_*, Bhyve's BHYVE_*), or, for a platform that makes a
    single image (CloudHv's CLOUDHV.fd, Microvm's MICROVM.fd, AmdSev's OVMF.fd), that image alone
    (MEMFD.fd, the PEI/DXE memory layout, is no firmware)."""
    fds = sorted(p.name for p in fv.glob("*.fd") if p.name != "MEMFD.fd")
    codes = [n for n in fds if n.endswith("_CODE.fd")]
    if len(codes) == 1:
        prefix = codes[0][: -len("_CODE.fd")]
        vars_, full = f"{prefix}_VARS.fd", f"{prefix}.fd"
        return codes[0], vars_ if vars_ in fds else None, full if full in fds else None
    if len(fds) == 1:
        return fds[0], None, None
    raise BuildFailed(f"{fv}: which FD is the firmware? {', '.join(fds) or 'none'}")


def truth_of(bdir: Path, firmware: str = "OVMF_CODE.fd") -> dict:
    """tests/truth.py's build_truth for a build whose firmware is FV/FIRMWARE (build_truth reads
    FV/OVMF_CODE.fd: another name is given to it as that, beside the build's .debug files)."""
    if firmware == "OVMF_CODE.fd":
        return build_truth(bdir)
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp)
        (view / "FV").mkdir()
        (view / "FV" / "OVMF_CODE.fd").symlink_to(bdir / "FV" / firmware)
        for arch in ("IA32", "X64"):
            if (bdir / arch).is_dir():
                (view / arch).symlink_to(bdir / arch)
        return build_truth(view)


class BuildFailed(Exception):
    pass


def build(d: dict, patches: list[Path]) -> Path:
    """corpus/scripts/build-ovmf.sh for this definition: the build's directory."""
    r = subprocess.run(build_command(d, patches), capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildFailed(f"build {d['tree']} {d['dsc']} {d['target']} failed: {r.stderr[-2000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown"


def toolchain(meta: dict) -> dict:
    """The tools that made the build, as build-ovmf.sh recorded them from the build's own
    environment (`nasm -v` with its PATH and NASM_PREFIX, the compiler and linker of its tag);
    a build cached before it recorded them gets this machine's gcc and nasm."""
    tag = meta.get("toolchain", "GCC5")
    out = {
        "tag": tag,
        "nasm": meta.get("nasm") or _version(["nasm", "-v"]),
        "clang" if tag.startswith("CLANG") else "gcc": meta.get("compiler") or _version(["gcc", "--version"]),
    }
    if meta.get("linker"):
        out["linker"] = meta["linker"]
    out["iasl"] = next(
        (
            ln.strip()
            for ln in subprocess.run(["iasl", "-v"], capture_output=True, text=True).stdout.splitlines()
            if "version" in ln.lower()
        ),
        "unknown",
    )
    return out


def store(key: str) -> dict:
    d = DEFS[key]
    with tempfile.TemporaryDirectory() as tmp:
        patches = patches_of(d, Path(tmp))
        bdir = build(d, patches)
        tree = tree_of(d["tree"])
        out = CORPUS / "builds" / key
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        fv = bdir / "FV"
        code, vars_, whole = firmware_files(fv)
        kept = [code] + ([vars_] if vars_ else [])
        for name in kept:
            shutil.copyfile(fv / name, out / name)
        full = (fv / whole).read_bytes() if whole else None
        truth = truth_of(bdir, code)
        (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
        lic = LICENSES[d["tree"]]
        if not (CORPUS / lic).exists():  # the fork's own License.txt (BSD-2-Clause-Patent)
            shutil.copyfile(tree / "License.txt", CORPUS / lic)
        meta = json.loads((bdir / "build.json").read_text())
        rel = lambda p: (
            str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else f"(plan --strategy {d['strategy']}) {p.name}"
        )
        doc = {
            "schema_version": "ovmftool.corpus-build/1",
            "key": key,
            "what": d["what"],
            "command": " ".join(
                ["corpus/scripts/build-ovmf.sh", d["tree"], d["dsc"], d["target"]]
                + [f"-D {x}" for x in d["defines"]]
                + [f"-p {rel(p)}" for p in patches]
                + tool_args(d)
            ),
            "source": (tree / ".ovmftool-ready").read_text().splitlines()[0],
            "dsc": d["dsc"],
            "target": d["target"],
            "defines": d["defines"],
            "strategy": d.get("strategy"),
            "patches": [{"name": p.name, "path": rel(p), "sha256": sha256(p)} for p in patches],
            "toolchain": toolchain(meta),
            "build_seconds": meta.get("seconds"),
            "stored": datetime.date.today().isoformat(),
            "files": {
                name: {"sha256": sha256(out / name), "size": (out / name).stat().st_size}
                for name in kept + ["truth.json"]
            },
            "ovmf_fd": full
            and {
                "sha256": hashlib.sha256(full).hexdigest(),
                "is_vars_then_code": vars_ is not None
                and full == (out / vars_).read_bytes() + (out / code).read_bytes(),
            },
            "string_io_sites": {"sites": truth["sites"], "modules": truth["modules_with_sites"]},
            "license": lic,
        }
        # which file is the firmware (tests/conftest.py: StoredBuild.code), the variable store (None:
        # a single image) and the whole image (ovmf_fd); a build.json without them: OVMF_CODE.fd, OVMF_VARS.fd
        doc.update(firmware=code, vars=vars_, whole_image=whole)
        if meta.get("grub_efi"):
            doc["grub_efi"] = meta["grub_efi"]
        (out / "build.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return doc


def record_in_manifest() -> None:
    """corpus/manifest.json's "builds": one entry per stored build, from its build.json."""
    path = CORPUS / "manifest.json"
    man = json.loads(path.read_text())
    man["builds"] = [
        {
            "name": k,
            "path": f"builds/{k}",
            **{f: doc[f] for f in ("what", "command", "source", "toolchain", "string_io_sites", "license")},
            "files": {n: v["sha256"] for n, v in doc["files"].items()},
        }
        for k in sorted(DEFS)
        if (doc := _stored(k))
    ]
    path.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")


def _stored(key: str) -> dict | None:
    p = CORPUS / "builds" / key / "build.json"
    return json.loads(p.read_text()) if p.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("keys", nargs="*", help="builds of corpus/builds.json (default: all)")
    keys = ap.parse_args().keys or sorted(DEFS)
    unknown = [k for k in keys if k not in DEFS]
    if unknown:
        raise SystemExit(f"store_builds: not in corpus/builds.json: {', '.join(unknown)}")
    for k in keys:
        try:
            doc = store(k)
        except (BuildFailed, subprocess.CalledProcessError) as e:
            raise SystemExit(f"store_builds: {k}: {e}") from None
        print(f"{k}: {doc['string_io_sites']['sites']} sites in {doc['string_io_sites']['modules']} modules")
    record_in_manifest()


if __name__ == "__main__":
    main()
