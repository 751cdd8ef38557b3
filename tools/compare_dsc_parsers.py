#!/usr/bin/env python3
"""Compare ovmftool's DSC/INF reader with edk2-pytool-library's DscParser/InfParser (issue #14).

Run it with a Python that has both ovmftool and edk2-pytool-library installed, e.g.

    python3 -m venv /tmp/pytool-venv
    /tmp/pytool-venv/bin/pip install edk2-pytool-library && /tmp/pytool-venv/bin/pip install -e .
    /tmp/pytool-venv/bin/python tools/compare_dsc_parsers.py [--src ~/.cache/ovmftool/src] [--json OUT]

For every tree and DSC it compares
  * the set of (arch, component INF) in [Components] after conditionals,
  * for every non-library component and arch, the instance linked for IoLib, DebugLib, SerialPortLib,
    PcdLib and CcProbeLib (ovmftool: Dsc.resolve; edk2toollib: the resolution its own instanced-INF
    table uses, InstancedInfTable._lib_to_instance, fed with DscParser.ScopedLibraryDict and the
    component's override dictionary),
  * INF sources per arch of the two IoLib INFs (read_inf vs InfParser),
  * wall time of each parser,
and checks both against the build's own resolution where a build report exists
(~/.cache/ovmftool/builds/*/build-report.txt, LIBRARY section). Where no build report is there, a
third resolution is printed for reference: BaseTools' tdict order (override, ARCH.MODULE_TYPE,
ARCH, common.MODULE_TYPE, common) applied to ovmftool's mappings.
Nothing is written into the trees.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ovmftool.edk2.dsc import read_dsc
from ovmftool.edk2.inf import read_inf

TREES = [
    ("edk2-2022.11", {"SECURE_BOOT_ENABLE": "TRUE"}),
    ("edk2-2025.02", {"SECURE_BOOT_ENABLE": "TRUE"}),
    ("edk2-oxide-edd7239108", {"FD_SIZE_2MB": "TRUE", "MPT_SCSI_ENABLE": "FALSE"}),
]
DSCS = ["OvmfPkg/OvmfPkgX64.dsc", "OvmfPkg/OvmfPkgIa32X64.dsc"]
CLASSES = ["IoLib", "DebugLib", "SerialPortLib", "PcdLib", "CcProbeLib"]
IOLIB_INFS = [
    "MdePkg/Library/BaseIoLibIntrinsic/BaseIoLibIntrinsic.inf",
    "MdePkg/Library/BaseIoLibIntrinsic/BaseIoLibIntrinsicSev.inf",
]
REPEAT = 3  # timings: best of REPEAT runs (the machine is shared)


def norm(p: str | None) -> str | None:
    if p is None:
        return None
    return os.path.normpath(p.strip().replace("\\", "/"))


# ---------------------------------------------------------------- ovmftool side


def ovmf_parse(ws: Path, dsc: str, defines: dict[str, str]):
    best, out = None, None
    for _ in range(REPEAT):
        t = time.perf_counter()
        out = read_dsc(ws, dsc, dict(defines))
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return out, best


def ovmf_arches(d) -> list[str]:
    sup = d.defines.get("SUPPORTED_ARCHITECTURES", "X64")
    return [a.strip().upper() for a in sup.split("|") if a.strip()]


def ovmf_components(d) -> set[tuple[str, str]]:
    comps = set()
    for arch, inf in d.components:
        for a in ovmf_arches(d) if arch == "common" else [arch.upper()]:
            comps.add((a, norm(inf)))
    return comps


def tdict_resolve(d, cls: str, arch: str, mtype: str, comp: str):
    """BaseTools' order (WorkspaceCommon/DscBuildData + Misc.tdict: the arch level is looked up
    before the module-type level): override, ARCH.MT, ARCH.common, common.MT, common.common; a later
    line wins within one scope. Dsc.resolve's rule since this comparison found it ranked the
    module type first: applied to ovmftool's mappings (so its conditional handling)."""
    m = ovmf_where(d, cls, arch, mtype, comp)
    return norm(m.instance) if m else None, m


def ovmf_where(d, cls: str, arch: str, mtype: str, comp: str):
    """The Mapping Dsc.resolve picks (its rule, keeping the Mapping)."""
    best, best_rank = None, -1
    for m in d.instances(cls):
        if m.component is not None and norm(m.component) != comp:
            continue
        if m.arch not in ("common", arch.lower()) or m.module_type not in ("common", mtype.lower()):
            continue
        rank = (4 if m.component else 0) + (2 if m.arch != "common" else 0) + (1 if m.module_type != "common" else 0)
        if rank >= best_rank:
            best, best_rank = m, rank
    return best


def lines_of(d, cls: str, inst: str | None) -> list[str]:
    """file:line[scope] of every mapping of cls to inst (to locate edk2toollib's choice)."""
    if inst is None:
        return []
    return [
        f"{m.file}:{m.line}[{m.arch}.{m.module_type}{' <' + m.component + '>' if m.component else ''}]"
        for m in d.instances(cls)
        if norm(m.instance) == inst
    ]


# ---------------------------------------------------------------- edk2toollib side


def tk_parse(ws: Path, dsc: str, defines: dict[str, str]):
    from edk2toollib.uefi.edk2.parsers.dsc_parser import DscParser
    from edk2toollib.uefi.edk2.path_utilities import Edk2Path

    best, best_path, p = None, None, None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        pathobj = Edk2Path(str(ws), [])
        t1 = time.perf_counter()
        p = DscParser().SetEdk2Path(pathobj)
        p.SetInputVars(dict(defines))
        p.ParseFile(dsc)
        t2 = time.perf_counter()
        best = (t2 - t1) if best is None else min(best, t2 - t1)
        best_path = (t1 - t0) if best_path is None else min(best_path, t1 - t0)
    return p, pathobj, best, best_path


class TkResolver:
    """edk2toollib's own library-class resolution (the one its InstancedInfTable database uses)."""

    def __init__(self, pathobj, dsc: str):
        from edk2toollib.database.tables.instanced_inf_table import InstancedInfTable

        self.t = InstancedInfTable()
        self.t.pathobj = pathobj
        self.t.dsc = dsc

    def inf(self, inf: str):
        return self.t.inf(inf)

    def resolve(self, cls: str, scope_arch: str, mtype: str, overrides: dict, library_dict: dict):
        scope = f"{scope_arch}.{mtype.lower()}"  # as InstancedInfTable._build_inf_table builds it
        try:
            return norm(self.t._lib_to_instance(cls.lower(), scope, library_dict, overrides)), None
        except Exception as e:  # report, do not stop the comparison
            return None, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------- build report


def read_build_reports(builds: Path) -> dict[tuple[str, str], dict]:
    """(tree dir name, dsc) -> {"defines": ..., "modules": {(ARCH, inf): {class: instance}}}."""
    out = {}
    for rep in sorted(builds.glob("*/build-report.txt")):
        if rep.parent.name.endswith(".tmp"):
            continue  # build still running
        meta = {}
        bj = rep.parent / "build.json"
        if bj.is_file():
            try:
                meta = json.loads(bj.read_text())
            except ValueError:
                pass
        dsc_path, modules, cur, inst = None, {}, None, None
        arch = inf = None
        for line in rep.read_text(errors="replace").splitlines():
            if line.startswith("Platform DSC Path:"):
                dsc_path = line.split(":", 1)[1].strip()
            elif line.startswith("Module Arch:"):
                arch = line.split(":", 1)[1].strip().upper()
            elif line.startswith("Module INF Path:"):
                inf = norm(line.split(":", 1)[1].strip())
                cur = {}  # one INF can be built twice (e.g. CpuMpPei with another FILE_GUID)
                modules.setdefault((arch, inf), []).append(cur)
            elif cur is not None and line.startswith("/"):
                # the report wraps long paths at 120 columns: a path not yet ending in .inf continues
                inst = inst + line.strip() if inst and not inst.endswith(".inf") else line.strip()
            elif cur is not None and inst and inst.endswith(".inf") and line.startswith("{"):
                cls = line[1:].split(":", 1)[0].split("}", 1)[0].strip()
                cur.setdefault(cls, inst)
                inst = None
        if not dsc_path:
            continue
        p = Path(dsc_path)
        parts = p.parts
        # .../src/<tree>/<Pkg>/<file>.dsc
        tree, dsc = parts[-3], "/".join(parts[-2:])
        ws = str(Path(*parts[:-2]))
        for k, vs in modules.items():
            for v in vs:
                for c, i in list(v.items()):
                    v[c] = norm(os.path.relpath(i, ws)) if i.startswith(ws) else norm(i)
            # {class: set of instances over the module's builds}
            merged = {}
            for v in vs:
                for c, i in v.items():
                    merged.setdefault(c, set()).add(i)
            modules[k] = merged
        if (tree, dsc) in out:
            continue  # keep the first (DEBUG sorts before RELEASE)
        if meta.get("patches"):
            continue  # a patched build is no ground truth for the tree as shipped
        out[(tree, dsc)] = {
            "dir": str(rep.parent),
            "defines": f"{meta.get('defines', '?')}, target {meta.get('target', '?')}",
            "modules": modules,
        }
    return out


# ---------------------------------------------------------------- comparison


def compare(ws: Path, dsc: str, defines: dict[str, str], build: dict | None) -> dict:
    res = {"tree": ws.name, "dsc": dsc, "defines": defines, "disagreements": [], "notes": []}
    od, t_o = ovmf_parse(ws, dsc, defines)
    tp, pathobj, t_t, t_path = tk_parse(ws, dsc, defines)
    res["time_ovmftool_s"] = round(t_o, 4)
    res["time_edk2toollib_s"] = round(t_t, 4)
    res["time_edk2path_s"] = round(t_path, 4)

    # components
    oc = ovmf_components(od)
    tk_comp = {}  # (ARCH, inf) -> (scope arch as edk2toollib keeps it, override dict)
    for inf, arch, ov in tp.Components:
        tk_comp[(arch.split(".")[0].upper(), norm(inf))] = (arch, ov)
    tc = set(tk_comp)
    res["components_ovmftool"] = len(oc)
    res["components_edk2toollib"] = len(tc)
    res["components_both"] = len(oc & tc)
    res["components_only_ovmftool"] = sorted(oc - tc)
    res["components_only_edk2toollib"] = sorted(tc - oc)
    if build:
        bm = {k for k in build["modules"]}
        res["build_report"] = build["dir"]
        res["build_defines"] = build["defines"]
        res["components_build"] = len(bm)
        res["build_only"] = sorted(bm - (oc | tc))
        res["ovmftool_not_built"] = sorted(oc - bm)
        res["edk2toollib_not_built"] = sorted(tc - bm)

    # resolutions
    tr = TkResolver(pathobj, dsc)
    compared = agree = lib_components = 0
    truth_checked = {"ovmftool": [0, 0], "edk2toollib": [0, 0]}  # [right, checked]
    per_class = {c: [0, 0] for c in CLASSES}
    linked = {c: 0 for c in CLASSES}  # (component, arch) pairs whose build links the class
    decided_by = {"override": 0, "arch+module_type": 0, "module_type": 0, "arch": 0, "common": 0}
    mtype_mismatch = []
    for arch, inf in sorted(oc | tc):
        p = ws / inf
        if not p.is_file():
            res["notes"].append(f"{arch} {inf}: INF not found")
            continue
        oi = read_inf(p)
        ti = tr.inf(inf)
        o_mt = oi.defines.get("MODULE_TYPE", "BASE")
        t_mt = ti.Dict.get("MODULE_TYPE", "BASE")
        if o_mt.upper() != t_mt.upper():
            mtype_mismatch.append((arch, inf, o_mt, t_mt))
        if "LIBRARY_CLASS" in oi.defines or "LIBRARY_CLASS" in ti.Dict:
            lib_components += 1  # built stand-alone, links nothing
            continue
        scope_arch, ov = tk_comp.get((arch, inf), (arch.lower(), {"NULL": []}))
        bmods = (build or {}).get("modules", {}).get((arch, inf))
        for cls in CLASSES:
            o = norm(od.resolve(cls, arch, o_mt, inf) if (arch, inf) in oc else None)
            # ovmftool's resolve matches the component by the INF path as written; normalise for lookup
            if (arch, inf) in oc and o is None:
                o = norm(od.resolve(cls, arch, o_mt, next((c for a, c in od.components if norm(c) == inf), inf)))
            t, err = tr.resolve(cls, scope_arch, t_mt, ov, tp.ScopedLibraryDict) if (arch, inf) in tc else (None, None)
            b = bmods.get(cls) if bmods is not None else None  # set of instances the build linked
            if (arch, inf) not in oc or (arch, inf) not in tc:
                continue  # component-set difference is reported above
            compared += 1
            per_class[cls][1] += 1
            if b is not None:
                linked[cls] += 1
            wm = ovmf_where(od, cls, arch, o_mt, inf)
            if wm is not None:
                decided_by[
                    "override"
                    if wm.component
                    else "arch+module_type"
                    if wm.arch != "common" and wm.module_type != "common"
                    else "module_type"
                    if wm.module_type != "common"
                    else "arch"
                    if wm.arch != "common"
                    else "common"
                ] += 1
            for name, v in (("ovmftool", o), ("edk2toollib", t)):
                if b is not None:
                    truth_checked[name][1] += 1
                    truth_checked[name][0] += v in b
            if o == t and (b is None or o in b):
                agree += 1
                per_class[cls][0] += 1
                continue
            if o == t:
                agree += 1
                per_class[cls][0] += 1
            m = ovmf_where(od, cls, arch, o_mt, inf)
            ref, ref_m = tdict_resolve(od, cls, arch, o_mt, inf)
            res["disagreements"].append(
                {
                    "arch": arch,
                    "component": inf,
                    "module_type": o_mt,
                    "class": cls,
                    "ovmftool": o,
                    "ovmftool_line": f"{m.file}:{m.line}[{m.arch}.{m.module_type}]" if m else None,
                    "edk2toollib": t,
                    "edk2toollib_lines": lines_of(od, cls, t),
                    "edk2toollib_error": err,
                    "edk2toollib_scope": f"{scope_arch}.{t_mt.lower()}",
                    "build": sorted(b)
                    if b
                    else "(module does not link the class)"
                    if bmods is not None
                    else "(module not in build report)"
                    if build
                    else "(no build report)",
                    "basetools_order_on_ovmftool_mappings": ref,
                    "basetools_order_line": f"{ref_m.file}:{ref_m.line}[{ref_m.arch}.{ref_m.module_type}]"
                    if ref_m
                    else None,
                    "both_agree_but_build_differs": o == t,
                }
            )
    res["resolutions_compared"] = compared
    res["agreements"] = agree
    res["per_class"] = per_class
    res["linked_per_build"] = linked if build else None
    res["decided_by"] = decided_by
    res["library_components_skipped"] = lib_components
    res["module_type_mismatches"] = mtype_mismatch
    res["vs_build"] = truth_checked

    # every library class the build report shows each component linking (not only CLASSES)
    allc = {"compared": 0, "ovmftool_right": 0, "edk2toollib_right": 0, "wrong": [], "null_linked_skipped": 0}
    null_insts = {norm(m.instance) for m in od.instances("NULL")}
    if build:
        for (arch, inf), bm in sorted(build["modules"].items()):
            if (arch, inf) not in oc or (arch, inf) not in tc or not (ws / inf).is_file():
                continue
            o_mt = read_inf(ws / inf).defines.get("MODULE_TYPE", "BASE")
            t_mt = tr.inf(inf).Dict.get("MODULE_TYPE", "BASE")
            scope_arch, ov = tk_comp[(arch, inf)]
            for cls, insts in sorted(bm.items()):
                if cls.upper().startswith("NULL"):
                    continue
                o = norm(od.resolve(cls, arch, o_mt, inf))
                t, _ = tr.resolve(cls, scope_arch, t_mt, ov, tp.ScopedLibraryDict)
                if o is None and t is None and insts <= null_insts:
                    allc["null_linked_skipped"] += 1  # linked as a NULL| library, not by its class
                    continue
                allc["compared"] += 1
                allc["ovmftool_right"] += o in insts
                allc["edk2toollib_right"] += t in insts
                if o not in insts or t not in insts:
                    m = ovmf_where(od, cls, arch, o_mt, inf)
                    allc["wrong"].append(
                        {
                            "arch": arch,
                            "component": inf,
                            "class": cls,
                            "build": sorted(insts),
                            "ovmftool": o,
                            "ovmftool_line": f"{m.file}:{m.line}" if m else None,
                            "edk2toollib": t,
                            "edk2toollib_lines": lines_of(od, cls, t),
                        }
                    )
    res["all_classes_vs_build"] = allc

    # INF sources of the IoLib INFs
    src = []
    for inf in IOLIB_INFS:
        p = ws / inf
        if not p.is_file():
            continue
        oi, ti = read_inf(p), tr.inf(inf)
        for arch in ("IA32", "X64"):
            o = sorted(norm(s) for s in oi.sources(arch))
            t = sorted(norm(s) for s in ti.get_sources([arch]))
            src.append({"inf": inf, "arch": arch, "same": o == t, "ovmftool": o, "edk2toollib": t})
    res["iolib_sources"] = src
    return res


# ---------------------------------------------------------------- synthetic cases

_SYN_INF_LIB = (
    "[Defines]\n  INF_VERSION = 0x00010005\n  BASE_NAME = {n}\n  FILE_GUID = {g}\n"
    "  MODULE_TYPE = BASE\n  LIBRARY_CLASS = IoLib\n[Sources]\n  {n}.c\n"
)
_SYN_INF_DRV = (
    "[Defines]\n  INF_VERSION = 0x00010005\n  BASE_NAME = Drv\n"
    "  FILE_GUID = 11111111-2222-3333-4444-555555555555\n  MODULE_TYPE = DXE_DRIVER\n"
    "  ENTRY_POINT = Main\n[Sources]\n  Drv.c\n[LibraryClasses]\n  IoLib\n"
)
_SYN_HEAD = (
    "[Defines]\n  PLATFORM_NAME = Syn\n  PLATFORM_GUID = 11111111-2222-3333-4444-000000000000\n"
    "  PLATFORM_VERSION = 1\n  DSC_SPECIFICATION = 0x00010005\n  OUTPUT_DIRECTORY = Build/Syn\n"
    "  SUPPORTED_ARCHITECTURES = X64\n  BUILD_TARGETS = DEBUG\n  SKUID_IDENTIFIER = DEFAULT\n\n"
)
# name -> (DSC body after [Defines], what BaseTools links for Drv.inf (X64, DXE_DRIVER), why)
SYNTHETIC = {
    "arch section vs common.MODULE_TYPE section": (
        "[LibraryClasses.X64]\n  IoLib|Lib/A/A.inf\n[LibraryClasses.common.DXE_DRIVER]\n  IoLib|Lib/B/B.inf\n"
        "[Components.X64]\n  Drv/Drv.inf\n",
        "Lib/A/A.inf",
        "DscBuildData.LibraryClasses looks up tdict[ARCH, MODULE_TYPE, class]: the arch "
        "level first (X64, then COMMON), the module type inside it, so [LibraryClasses.X64] beats "
        "[LibraryClasses.common.DXE_DRIVER]",
    ),
    "[Components] (no arch) with an [LibraryClasses.X64.DXE_DRIVER] mapping": (
        "[LibraryClasses]\n  IoLib|Lib/B/B.inf\n[LibraryClasses.X64.DXE_DRIVER]\n  IoLib|Lib/A/A.inf\n"
        "[Components]\n  Drv/Drv.inf\n",
        "Lib/A/A.inf",
        "the component is built for X64 (SUPPORTED_ARCHITECTURES), so the X64.DXE_DRIVER mapping applies",
    ),
    "class mapped A, B, then A again in the common scope": (
        "[LibraryClasses]\n  IoLib|Lib/A/A.inf\n  IoLib|Lib/B/B.inf\n[LibraryClasses.common]\n"
        "  IoLib|Lib/A/A.inf\n[Components.X64]\n  Drv/Drv.inf\n",
        "Lib/A/A.inf",
        "the last assignment to tdict[COMMON, COMMON, IoLib] wins",
    ),
    "component <LibraryClasses> override": (
        "[LibraryClasses.X64.DXE_DRIVER]\n  IoLib|Lib/A/A.inf\n[Components.X64]\n  Drv/Drv.inf {\n"
        "    <LibraryClasses>\n      IoLib|Lib/C/C.inf\n  }\n",
        "Lib/C/C.inf",
        "a component override wins over every [LibraryClasses] section",
    ),
}


def synthetic() -> list[dict]:
    """Small DSCs for the cases the OVMF trees do not exercise; the expected value is BaseTools'."""
    import tempfile

    out = []
    with tempfile.TemporaryDirectory(prefix="dsc-compare-") as tmp:
        ws = Path(tmp)
        for i, n in enumerate("ABC"):
            (ws / "Lib" / n).mkdir(parents=True)
            (ws / "Lib" / n / f"{n}.inf").write_text(
                _SYN_INF_LIB.format(n=n, g=f"11111111-2222-3333-4444-00000000000{i + 1}")
            )
        (ws / "Drv").mkdir()
        (ws / "Drv" / "Drv.inf").write_text(_SYN_INF_DRV)
        for k, (name, (body, expect, why)) in enumerate(SYNTHETIC.items()):
            dsc = f"Syn{k}.dsc"
            (ws / dsc).write_text(_SYN_HEAD + body)
            od = read_dsc(ws, dsc, {})
            o = norm(od.resolve("IoLib", "X64", "DXE_DRIVER", "Drv/Drv.inf"))
            tp, pathobj, _, _ = tk_parse(ws, dsc, {})
            tr = TkResolver(pathobj, dsc)
            t = err = None
            for inf, arch, ov in tp.Components:
                if norm(inf) == "Drv/Drv.inf":
                    t, err = tr.resolve("IoLib", arch, "DXE_DRIVER", ov, tp.ScopedLibraryDict)
            out.append(
                {
                    "case": name,
                    "basetools": expect,
                    "why": why,
                    "ovmftool": o,
                    "edk2toollib": t,
                    "edk2toollib_error": err,
                }
            )
    return out


def import_cost(python: str) -> dict:
    """Import time of edk2toollib's parsers (and of its database module, which holds the resolution
    used here) in a fresh interpreter, with the third-party top-level packages each pulls in."""
    code = (
        "import time,sys,json;std=set(sys.stdlib_module_names);b=set(sys.modules);t=time.perf_counter();"
        "import edk2toollib.uefi.edk2.parsers.dsc_parser, edk2toollib.uefi.edk2.parsers.inf_parser, "
        "edk2toollib.uefi.edk2.path_utilities;a=time.perf_counter()-t;"
        "m1=sorted({k.split('.')[0] for k in set(sys.modules)-b}-std);b=set(sys.modules);"
        "t=time.perf_counter();import edk2toollib.database.tables.instanced_inf_table;c=time.perf_counter()-t;"
        "m2=sorted({k.split('.')[0] for k in set(sys.modules)-b}-std);print(json.dumps([a,c,m1,m2]))"
    )
    best = None
    for _ in range(REPEAT):
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
        v = json.loads(out)
        best = v if best is None or v[0] + v[1] < best[0] + best[1] else best
    code2 = (
        "import time,sys;t=time.perf_counter();import ovmftool.edk2.dsc, ovmftool.edk2.inf;print(time.perf_counter()-t)"
    )
    o = min(
        float(subprocess.run([python, "-c", code2], capture_output=True, text=True, check=True).stdout)
        for _ in range(REPEAT)
    )
    return {
        "edk2toollib_parsers_import_s": round(best[0], 4),
        "parsers_pull_in": best[2],
        "edk2toollib_database_import_s (after parsers)": round(best[1], 4),
        "database_pulls_in": best[3],
        "ovmftool_reader_import_s": round(o, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(Path.home() / ".cache/ovmftool/src"))
    ap.add_argument("--builds", default=str(Path.home() / ".cache/ovmftool/builds"))
    ap.add_argument("--json", help="also write the full results here")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # edk2toollib warns per unresolved class; the table says it
    from importlib.metadata import version

    print(
        f"ovmftool {version('ovmftool')}, edk2-pytool-library {version('edk2-pytool-library')}, "
        f"Python {sys.version.split()[0]}"
    )
    builds = read_build_reports(Path(args.builds))
    results = []
    for tree, defines in TREES:
        ws = Path(args.src) / tree
        if not (ws / ".ovmftool-ready").is_file():
            print(f"\n== {tree}: not present/ready, skipped")
            results.append({"tree": tree, "skipped": "not ready"})
            continue
        for dsc in DSCS:
            if not (ws / dsc).is_file():
                continue
            r = compare(ws, dsc, defines, builds.get((tree, dsc)))
            results.append(r)
            report(r)
    syn = synthetic()
    print("\n== synthetic DSCs (cases the OVMF trees do not exercise; expected = BaseTools' resolution)")
    for c in syn:
        ok = lambda v, c=c: "ok" if v == c["basetools"] else "WRONG"
        print(
            f"  {c['case']}: BaseTools {c['basetools']} | ovmftool {c['ovmftool']} {ok(c['ovmftool'])} | "
            f"edk2toollib {c['edk2toollib']} {ok(c['edk2toollib'])}"
            + (f" ({c['edk2toollib_error']})" if c["edk2toollib_error"] else "")
        )
        print(f"      why: {c['why']}")
    cost = import_cost(sys.executable)
    print(f"\n== import cost (fresh interpreter, best of {REPEAT})")
    print(json.dumps(cost, indent=1))
    print("\n== summary")
    print(
        f"{'tree':24} {'dsc':22} {'comp o/t/both':>14} {'compared':>8} {'agree':>6} "
        f"{'o=build':>9} {'t=build':>9} {'t_ovmf':>7} {'t_tk':>7}"
    )
    for r in results:
        if "skipped" in r:
            print(f"{r['tree']:24} (skipped: {r['skipped']})")
            continue
        vb = r["vs_build"]
        print(
            f"{r['tree']:24} {Path(r['dsc']).name:22} "
            f"{r['components_ovmftool']:>4}/{r['components_edk2toollib']}/{r['components_both']:<4} "
            f"{r['resolutions_compared']:>8} {r['agreements']:>6} "
            f"{vb['ovmftool'][0]:>4}/{vb['ovmftool'][1]:<4} {vb['edk2toollib'][0]:>4}/{vb['edk2toollib'][1]:<4} "
            f"{r['time_ovmftool_s']:>7.3f} {r['time_edk2toollib_s']:>7.3f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "synthetic": syn, "import": cost}, indent=1, default=list)
        )
    return 0


def report(r: dict) -> None:
    print(f"\n== {r['tree']} {r['dsc']}  -D " + " -D ".join(f"{k}={v}" for k, v in r["defines"].items()))
    print(
        f"  parse time: ovmftool {r['time_ovmftool_s']:.3f}s (incl. FDF)  edk2toollib DscParser "
        f"{r['time_edk2toollib_s']:.3f}s (+ Edk2Path {r['time_edk2path_s']:.3f}s)"
    )
    print(
        f"  components: ovmftool {r['components_ovmftool']}, edk2toollib {r['components_edk2toollib']}, "
        f"both {r['components_both']}" + (f", build report {r['components_build']}" if "components_build" in r else "")
    )
    for k in (
        "components_only_ovmftool",
        "components_only_edk2toollib",
        "build_only",
        "ovmftool_not_built",
        "edk2toollib_not_built",
    ):
        if r.get(k):
            print(f"  {k}: " + ", ".join(f"{a}:{i}" for a, i in r[k]))
    if "build_report" in r:
        print(f"  build report: {r['build_report']} (defines {r['build_defines']})")
    else:
        print("  build report: none for this tree/DSC")
    print(
        f"  resolutions compared: {r['resolutions_compared']} ({len(CLASSES)} classes x non-library components; "
        f"{r['library_components_skipped']} library components skipped), agreements {r['agreements']}"
    )
    print("  per class (agree/compared): " + ", ".join(f"{c} {a}/{n}" for c, (a, n) in r["per_class"].items()))
    print("  ovmftool's winning line came from: " + ", ".join(f"{k} {v}" for k, v in r["decided_by"].items()))
    if r.get("linked_per_build"):
        print(
            "  components whose build actually links the class: "
            + ", ".join(f"{c} {n}/{r['per_class'][c][1]}" for c, n in r["linked_per_build"].items())
        )
    vb = r["vs_build"]
    if vb["ovmftool"][1]:
        print(
            f"  vs build report: ovmftool {vb['ovmftool'][0]}/{vb['ovmftool'][1]}, "
            f"edk2toollib {vb['edk2toollib'][0]}/{vb['edk2toollib'][1]} (where the module links the class)"
        )
    a = r["all_classes_vs_build"]
    if a["compared"]:
        print(
            f"  ALL classes each component links per build report: {a['compared']} resolutions, "
            f"ovmftool right {a['ovmftool_right']}, edk2toollib right {a['edk2toollib_right']} "
            f"({a['null_linked_skipped']} instances linked through NULL| skipped)"
        )
        for w in a["wrong"][:40]:
            print(
                f"    WRONG {w['arch']} {w['component']} {w['class']}: build {w['build']} | ovmftool {w['ovmftool']}"
                f" <- {w['ovmftool_line']} | edk2toollib {w['edk2toollib']} <- "
                f"{', '.join(w['edk2toollib_lines']) or '-'}"
            )
        if len(a["wrong"]) > 40:
            print(f"    ... {len(a['wrong']) - 40} more in --json")
    if r["module_type_mismatches"]:
        print(f"  MODULE_TYPE differs: {r['module_type_mismatches']}")
    for s in r["iolib_sources"]:
        if not s["same"]:
            print(f"  SOURCES differ {s['inf']} {s['arch']}: ovmftool {s['ovmftool']} edk2toollib {s['edk2toollib']}")
    print(f"  IoLib INF sources identical: {sum(s['same'] for s in r['iolib_sources'])}/{len(r['iolib_sources'])}")
    for n in r["notes"]:
        print(f"  note: {n}")
    for d in r["disagreements"]:
        tag = "BOTH vs BUILD" if d["both_agree_but_build_differs"] else "DIFF"
        print(f"  {tag} {d['arch']} {d['component']} ({d['module_type']}) {d['class']}:")
        print(f"      ovmftool    {d['ovmftool']}  <- {d['ovmftool_line']}")
        print(
            f"      edk2toollib {d['edk2toollib']}  <- {', '.join(d['edk2toollib_lines']) or '-'}"
            f"  (scope {d['edk2toollib_scope']}{'; ' + d['edk2toollib_error'] if d['edk2toollib_error'] else ''})"
        )
        print(f"      build       {d['build']}")
        print(
            f"      BaseTools order on ovmftool's mappings: {d['basetools_order_on_ovmftool_mappings']}"
            f"  <- {d['basetools_order_line']}"
        )


if __name__ == "__main__":
    sys.exit(main())
