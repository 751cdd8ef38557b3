"""What to do about the sites a scan found: rewrite them in the image (`ovmftool patch`), or fix
the EDK II source with a series from edk2-patches/ — named as matching only when it provably
removes every site of this image — or one `ovmftool plan` writes for the user's tree.

A series matches when (1) every site lies in a routine a built-in signature names, (2) every
site's signature was generated from the series' tree (`signature.trees`), and only one tree
fits, (3) the series was made for the image's architectures, and (4) the series removes each
site's routine: it patches that routine's source file (`unroll`), or it switches the DSC from
the site's library instance to one whose FIFO routines are C loops (`dsc-inf`). The FIFO
routines of BaseIoLibIntrinsicSev assemble to the same bytes in edk2 2022.11 and 2025.02, so an
image built from either tree fits both trees' series: that is reported as such, never as a match.
A standalone module (an extracted .efi) never matches: it does not tell which DSC built it.

The series are read from edk2-patches/ of the checkout holding the working directory, else of
the package's own source tree (`series_dir`), so that an installed copy advises as an editable
one does when run in the checkout.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.scan import signatures as sigs
from ovmftool.scan.scanner import ScanResult

# The package's own source tree (a checkout, or an editable install); an installed copy
# (`pip install .`) has none: there the series are found from the working directory (`series_dir`).
SOURCE_SERIES_DIR = Path(__file__).resolve().parents[2] / "edk2-patches"
SERIES_REPO_PATH = "edk2-patches/"  # where the series live in ovmftool's source repository
_DSC_FOR_ARCHES = {("X64",): "OvmfPkg/OvmfPkgX64.dsc", ("IA32", "X64"): "OvmfPkg/OvmfPkgIa32X64.dsc",
                   ("IA32",): "OvmfPkg/OvmfPkgIa32.dsc"}


@dataclass
class Series:
    """One verified series of edk2-patches/ (its plan.json)."""

    path: Path
    tree: str  # edk2 version, e.g. "2022.11"
    dsc: str
    arches: tuple[str, ...]
    strategy: str
    patched_files: tuple[str, ...]
    iolib_fifo: dict

    @property
    def era(self) -> str:
        """The tree era of the series (`signatures.TDX` or `PRE_TDX`): Oxide's fork is based on
        edk2-stable202105, before TDX; Debian's 2022.11 and 2025.02 trees have it."""
        return sigs.PRE_TDX if self.tree.startswith("oxide") else sigs.TDX

    def removes(self, signature: dict, arch: str) -> bool:
        """True when applying the series removes the routine `signature` describes (for `arch`)."""
        if self.strategy == "unroll":
            return any(f.endswith("/" + signature["source"]) for f in self.patched_files)
        if self.strategy == "dsc-inf":
            kinds = {inf.rsplit("/", 1)[-1][:-4]: per_arch.get(arch) for inf, per_arch in self.iolib_fifo.items()}
            return kinds.get(signature["library"]) not in (None, "c-loop") and "c-loop" in kinds.values()
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
    for d in ([here, *here.parents] if here is not None else []):
        if _has_series(d / "edk2-patches"):
            return d / "edk2-patches"
    source = source if source is not None else SOURCE_SERIES_DIR
    return source if _has_series(source) else None


def known_series(base: Path | None = None) -> list[Series]:
    """Every series under `base` (DIR/debian-VERSION/DSC/plan.json; default `series_dir()`),
    sorted by path."""
    base = base if base is not None else series_dir()
    out = []
    for plan in sorted(base.glob("*/*/plan.json")) if base is not None and base.is_dir() else []:
        try:
            d = json.loads(plan.read_text())
            out.append(Series(plan.parent, d["tree"].removeprefix("edk2-"), d["dsc"], tuple(sorted(d["arches"])),
                              d["strategy"], tuple(f for p in d["patches"] for f in p["files"]), d["iolib_fifo"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a series this version understands
    return out


@dataclass
class NextSteps:
    """The advice for one image with sites."""

    patch_command: str
    plan_command: str
    matching: Series | None = None
    candidates: list[Series] = field(default_factory=list)  # fit, but the image cannot tell them apart
    reason: str = ""


def _out_name(image: str) -> str:
    base, ext = os.path.splitext(image)
    return f"{base}.patched{ext or '.fd'}"


def next_steps(r: ScanResult, base: Path | None = None) -> NextSteps | None:
    """What to do next after `r`, or None when it found nothing. `base`: the series directory
    (default `series_dir()`).

    A standalone module (an extracted .efi) does not tell which platform DSC built it: the plan
    command names none (`--dsc YOUR.dsc`), and a series is at most a candidate (its tree fits, it
    was made for the module's arch and removes every site), never a match."""
    if not r.findings:
        return None
    arches = tuple(sorted({m.arch for m in r.modules})) or ("X64",)
    dsc = "YOUR.dsc" if r.standalone else _DSC_FOR_ARCHES.get(arches, "YOUR_PLATFORM.dsc")
    steps = NextSteps(f"ovmftool patch {shlex.quote(r.path)} -o {shlex.quote(_out_name(r.path))}",
                      f"ovmftool plan --edk2 TREE --dsc {dsc} -o DIR")
    base = base if base is not None else series_dir()
    series = known_series(base) if base is not None else []
    unnamed = [f for f in r.findings if f.signature is None]
    if unnamed:
        n = len(unnamed)
        steps.reason = (f"{n} site{'s' * (n != 1)} lie{'s' * (n == 1)} in code no built-in signature names, "
                        "so no series can be matched; `plan` finds the sources in your tree")
        return steps
    trees = set.intersection(*(set(f.signature["trees"]) for f in r.findings))
    fits_arch = (lambda s: set(arches) <= set(s.arches)) if r.standalone else (lambda s: s.arches == arches)
    # The Sev routines are the same bytes in every tree (`signature.trees` names those they were
    # generated from); the image's era (TDCALL in its code, or not) tells pre-TDX trees apart.
    if r.era == sigs.PRE_TDX:
        fits_tree = lambda s: s.era == sigs.PRE_TDX  # noqa: E731
    else:
        fits_tree = lambda s: s.tree in trees and s.era == sigs.TDX  # noqa: E731
    fit = [s for s in series if fits_arch(s) and fits_tree(s)
           and all(s.removes(f.signature, f.arch) for f in r.findings)]
    if fit and r.standalone:
        steps.candidates = fit
        trees_fit = sorted({s.tree for s in fit})
        steps.reason = ("a standalone module does not tell which platform DSC built it"
                        + (f" (nor, for these routines, which of edk2 {' and '.join(trees_fit)})"
                           if len(trees_fit) > 1 else ""))
    elif len(fit) == 1:
        steps.matching = fit[0]
        libs = sorted({f"{f.signature['library']} {f.signature['source']}" for f in r.findings})
        steps.reason = (f"every site is in {', '.join(libs)} as built from edk2 {fit[0].tree} "
                        f"({'/'.join(arches)}), which it {'unrolls' if fit[0].strategy == 'unroll' else 'replaces'}")
    elif fit:
        steps.candidates = fit
        steps.reason = (f"the routines of these sites are the same code in edk2 "
                        f"{' and '.join(sorted({s.tree for s in fit}))}, so the image does not tell which tree it "
                        "was built from")
    elif not series:
        steps.reason = (f"the verified series are in {SERIES_REPO_PATH} of ovmftool's source repository, which is "
                        "not in or above the working directory (run scan in a checkout to match them)")
    else:
        steps.reason = (f"no series in edk2-patches/ removes all of them (trees {', '.join(sorted(trees)) or 'none'}, "
                        f"arches {'/'.join(arches)})")
    return steps
