"""What to do about the sites a scan found: rewrite them in the image (`ovmftool patch`), or fix
the EDK II source with a series from edk2-patches/ — named only when the image proves it was
built from that series' tree — or one `ovmftool plan` writes for the user's tree.

A series is named when (1) the image is one whose tree is known: its sha256 is listed in
edk2-patches/images.json (Debian's packaged images of that source version, the stored builds of
the tree; `tools/series_images.py` writes it from corpus/), (2) every site lies in a routine a
built-in signature names, (3) the series was made for the image's architectures, and (4) it
removes each site's routine: it patches that routine's source file (`unroll`), or it switches
the DSC from the site's library instance to one whose FIFO routines are C loops (`dsc-inf`).
The FIFO routines assemble to the same code in every tree that has them, so nothing else in an
image shows which tree built it: any other image is told which trees edk2-patches/ covers, and
no series is named for it. A standalone module (an extracted .efi) is never matched.

The DSC the `plan` command names is the platform the image's modules show (`platform_dsc`).

The series are read from edk2-patches/ of the checkout holding the working directory, else of
the package's own source tree (`series_dir`), so that an installed copy advises as an editable
one does when run in the checkout.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ovmftool.scan.scanner import ScanResult, SiteSignature

# The package's own source tree (a checkout, or an editable install); an installed copy
# (`pip install .`) has none: there the series are found from the working directory (`series_dir`).
SOURCE_SERIES_DIR = Path(__file__).resolve().parents[2] / "edk2-patches"
SERIES_REPO_PATH = "edk2-patches/"  # where the series live in ovmftool's source repository
_DSC_FOR_ARCHES = {
    ("X64",): "OvmfPkg/OvmfPkgX64.dsc",
    ("IA32", "X64"): "OvmfPkg/OvmfPkgIa32X64.dsc",
    ("IA32",): "OvmfPkg/OvmfPkgIa32.dsc",
}
# X64 platforms of OvmfPkg told apart by modules only they build (their FDFs, edk2 2022.11 to
# 2025.02): (DSC, modules any of which shows it, modules none of which it has, why)
_X64_PLATFORMS: tuple[tuple[str, set[str], set[str], str], ...] = (
    # XenPlatformPei and XenAcpiPlatform (XenAcpiPlatformDxe's module), not the Xen PV drivers
    # OvmfPkgX64 also carried until 2021 (Debian's 2020.11, Oxide's 202105 fork)
    ("OvmfPkg/OvmfXen.dsc", {"XenPlatformPei", "XenAcpiPlatform", "XenIoPvhDxe"}, set(), "Xen's platform modules"),
    (
        "OvmfPkg/Bhyve/BhyveX64.dsc",
        {"BhyveRfbDxe", "EmuGopDxe", "HpetTimerDxe"},
        set(),
        "bhyve's framebuffer (BhyveRfbDxe, named EmuGopDxe) or the HPET timer driver",
    ),
    ("OvmfPkg/AmdSev/AmdSevX64.dsc", {"SecretPei", "SecretDxe"}, set(), "the SEV launch-secret modules"),
    ("OvmfPkg/Microvm/MicrovmX64.dsc", {"FdtClientDxe", "VirtioFdtDxe"}, set(), "the FDT-described virtio modules"),
    ("OvmfPkg/IntelTdx/IntelTdxX64.dsc", {"TdxDxe"}, {"PeiCore", "DxeIpl", "PlatformPei"}, "TdxDxe with no PEI phase"),
    (
        "OvmfPkg/CloudHv/CloudHvX64.dsc",
        {"SerialDxe"},
        {"PciSioSerialDxe", "XenPlatformPei", "FdtClientDxe"},
        "SerialDxe without the ISA serial driver",
    ),
)


def platform_dsc(arches: tuple[str, ...], modules: set[str]) -> tuple[str, str]:
    """(DSC, why) of the OvmfPkg platform an image with these module arches and names was built
    from; ("YOUR_PLATFORM.dsc", why) when the arches fit none."""
    dsc: str | None
    if arches == ("X64",):
        for dsc, any_of, none_of, why in _X64_PLATFORMS:
            if modules & any_of and not modules & none_of:
                return dsc, why
    dsc = _DSC_FOR_ARCHES.get(arches)
    return (dsc, f"{'/'.join(arches)} modules") if dsc else ("YOUR_PLATFORM.dsc", f"{'/'.join(arches)} modules")


@dataclass
class Series:
    """One verified series of edk2-patches/ (its plan.json)."""

    path: Path
    tree: str  # edk2 version, e.g. "2022.11"
    dsc: str
    arches: tuple[str, ...]
    strategy: str
    patched_files: tuple[str, ...]
    iolib_fifo: dict[str, dict[str, str]]  # library INF -> {arch: kind of its FIFO routines}

    def removes(self, signature: SiteSignature, arch: str) -> bool:
        """True when applying the series removes the routine `signature` describes (for `arch`)."""
        if self.strategy == "unroll":
            return any(f.endswith("/" + signature.source) for f in self.patched_files)
        if self.strategy == "dsc-inf":
            kinds = {inf.rsplit("/", 1)[-1][:-4]: per_arch.get(arch) for inf, per_arch in self.iolib_fifo.items()}
            return kinds.get(signature.library) not in (None, "c-loop") and "c-loop" in kinds.values()
        return False


def _has_series(d: Path) -> bool:
    try:
        return d.is_dir() and any(True for _ in d.glob("*/*/plan.json"))
    except OSError:
        return False


def series_dir(cwd: Path | None = None, source: Path | None = None) -> Path | None:
    """edk2-patches/ of the ovmftool checkout holding the working directory (it or a parent has
    edk2-patches/*/*/plan.json), else of the package's own source tree, else None. The first makes
    the advice the same for `pip install .` (whose package lies in site-packages, away from the
    series) and `pip install -e .` when run in the checkout."""
    try:
        here = (cwd or Path.cwd()).resolve()
    except OSError:  # the working directory was removed
        here = None
    for d in [here, *here.parents] if here is not None else []:
        if _has_series(d / "edk2-patches"):
            return d / "edk2-patches"
    source = source if source is not None else SOURCE_SERIES_DIR
    return source if _has_series(source) else None


def known_images(base: Path | None = None) -> dict[str, dict[str, Any]]:
    """sha256 -> {tree, what} of the images whose tree is known (edk2-patches/images.json)."""
    base = base if base is not None else series_dir()
    try:
        doc = json.loads((base / "images.json").read_text()) if base is not None else {}
        return {e["sha256"]: e for e in doc.get("images", []) if isinstance(e.get("tree"), str)}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}


def known_series(base: Path | None = None) -> list[Series]:
    """Every series under `base` (DIR/debian-VERSION/DSC/plan.json; default `series_dir()`),
    sorted by path."""
    base = base if base is not None else series_dir()
    out = []
    for plan in sorted(base.glob("*/*/plan.json")) if base is not None and base.is_dir() else []:
        try:
            d = json.loads(plan.read_text())
            out.append(
                Series(
                    plan.parent,
                    d["tree"].removeprefix("edk2-"),
                    d["dsc"],
                    tuple(sorted(d["arches"])),
                    d["strategy"],
                    tuple(f for p in d["patches"] for f in p["files"]),
                    d["iolib_fifo"],
                )
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a series this version understands
    return out


@dataclass
class NextSteps:
    """The advice for one image with sites."""

    patch_command: str
    plan_command: str
    matching: Series | None = None
    reason: str = ""


def _out_name(image: str) -> str:
    base, ext = os.path.splitext(image)
    return f"{base}.patched{ext or '.fd'}"


def next_steps(r: ScanResult, base: Path | None = None) -> NextSteps | None:
    """What to do next after `r`, or None when it found nothing. `base`: the series directory
    (default `series_dir()`).

    A standalone module (an extracted .efi) does not tell which platform DSC built it: the plan
    command names none (`--dsc YOUR.dsc`), and no series is named."""
    if not r.findings:
        return None
    arches = tuple(sorted({m.arch for m in r.modules})) or ("X64",)
    dsc = "YOUR.dsc" if r.standalone else platform_dsc(arches, {m.name for m in r.modules})[0]
    steps = NextSteps(
        f"ovmftool patch {shlex.quote(r.path)} -o {shlex.quote(_out_name(r.path))}",
        f"ovmftool plan --edk2 TREE --dsc {dsc} -o DIR",
    )
    base = base if base is not None else series_dir()
    series = known_series(base) if base is not None else []
    if not series:
        steps.reason = (
            f"the verified series are in {SERIES_REPO_PATH} of ovmftool's source repository, which is "
            "not in or above the working directory (run scan in a checkout to match them)"
        )
        return steps
    trees = ", ".join(sorted({s.tree for s in series}))
    known = None if r.standalone else known_images(base).get(r.sha256)
    if known is None:
        steps.reason = (
            "a standalone module does not tell which tree and DSC built it"
            if r.standalone
            else "the image is no build edk2-patches/ knows, and its FIFO routines are the same code in "
            "every tree that has them, so it does not show which tree built it"
        ) + f"; edk2-patches/ has series for edk2 {trees}: `plan` writes the one for your tree"
        return steps
    unnamed = [f for f in r.findings if f.signature is None]
    if unnamed:
        n = len(unnamed)
        steps.reason = (
            f"the image is {known['what']} (edk2 {known['tree']}), but {n} site{'s' * (n != 1)} "
            f"lie{'s' * (n == 1)} in code no built-in signature names; `plan` finds the sources in "
            "your tree"
        )
        return steps
    fit = [
        s
        for s in series
        if s.tree == known["tree"]
        and s.arches == arches
        and s.dsc == dsc
        and all(s.removes(cast(SiteSignature, f.signature), f.arch) for f in r.findings)  # none unnamed
    ]
    if fit:
        steps.matching = fit[0]
        libs = sorted(
            {
                f"{cast(SiteSignature, f.signature).library} {cast(SiteSignature, f.signature).source}"
                for f in r.findings
            }
        )
        steps.reason = (
            f"the image is {known['what']}, built from edk2 {known['tree']}; every site is in "
            f"{', '.join(libs)}, which the series "
            f"{'unrolls' if fit[0].strategy == 'unroll' else 'replaces'}"
        )
    else:
        steps.reason = (
            f"the image is {known['what']} (edk2 {known['tree']}), but no series in edk2-patches/ "
            f"for that tree and {dsc} removes all of them"
        )
    return steps
