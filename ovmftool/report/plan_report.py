"""`plan`'s output directory: the series, plan.json and SUMMARY.md (rendered from plan.json),
written as one (a directory that appears complete or not at all)."""

from __future__ import annotations

import json
from pathlib import Path

from ovmftool.edk2.plan import command_line, dsc_switch_only, make_plan, parse_defines
from ovmftool.edk2.series import check_applies, write_series
from ovmftool.edk2.verify import check_tools, verify_plan
from ovmftool.report.document import header
from ovmftool.report.io import commit_output_dir, discard_output_dir, new_output_dir

PLAN_SCHEMA = "ovmftool.plan/1"


def write_plan(
    tree: str,
    dsc: str,
    defines,
    arches,
    strategy: str,
    out_dir: str,
    author: str,
    signoff: str | None,
    verification: dict | None = None,
) -> str:
    """Plan, write the series (checked to apply), verify it when `verification` holds the
    arguments of `edk2.verify.verify_plan` (`dsc_switch`: a flag), write plan.json and
    SUMMARY.md, and move the directory into place; returns the summary."""
    defs = parse_defines(defines)
    p = make_plan(Path(tree).resolve(), dsc, defs, list(arches) or None, strategy)
    if verification is not None:
        check_tools(boot=verification["boot"])  # before anything is written or copied
    tmp = Path(new_output_dir(out_dir, parents=True))
    try:
        series = write_series(p.patches, tmp, author, signoff or author)
        check_applies(series, Path(p.tree))
        doc = {**header(PLAN_SCHEMA), **p.as_dict()}
        doc["series"] = [s.name for s in series]
        doc["command"] = command_line(dsc, defs, arches, strategy)
        if verification is not None:
            v = dict(verification)
            v["dsc_switch"] = dsc_switch_only(p) if v["dsc_switch"] else None
            doc["verification"] = verify_plan(p, series, keep_dir=tmp, **v)
        (tmp / "plan.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        summary = plan_summary(doc)
        (tmp / "SUMMARY.md").write_text(summary)
        commit_output_dir(str(tmp), out_dir)
    except BaseException:
        discard_output_dir(str(tmp))
        raise
    return summary


def plan_summary(doc: dict) -> str:
    lines = [f"# ovmftool plan: {doc['dsc']} ({', '.join(doc['arches'])})", "", f"Strategy: **{doc['strategy']}**", ""]
    lines += [f"- {r}" for r in doc["reasons"]] + [""]
    lines += ["## Series", ""] + [f"- `{s}`" for s in doc["series"]] + [""]
    lines += [
        "## Modules affected",
        "",
        f"{len(doc['modules_affected'])} components resolve IoLib to an instance with REP string I/O; each that "
        "links IoLib (directly or through a library) carries the six FIFO routines, one string I/O instruction each.",
        "",
    ]
    for m in doc["modules_affected"][:200]:
        lines.append(f"- {m['inf']} ({m['arch']}, {m['module_type']}): {m['iolib'].rsplit('/', 1)[-1]} {m['fifo']}")
    lines += ["", "Sites expected to remain: 0", ""]
    if doc.get("other_string_io_sources"):
        lines += ["## Other string I/O in sources", ""] + [f"- {h}" for h in doc["other_string_io_sources"]] + [""]
    lines += ["## Trade-offs", ""] + [f"- {t}" for t in doc["tradeoffs"]] + [""]
    if doc.get("verification"):
        lines += _verification(doc["verification"])
    lines += ["Regenerate with:", "", f"    {doc['command']}", ""]
    return "\n".join(lines)


def _verification(v: dict) -> list[str]:
    t = v["target"]
    b = v["before"]
    before = f"- {t} build of the tree as it is: {b['sites']} sites"
    if "build_seconds" in b:
        before += f" (built in {b['build_seconds']} s)"
    elif "sha256" in b:
        before += f" (--before {b['image']}, sha256 {b['sha256']})"
    lines = ["## Verification", ""]
    if "boot" not in v and "dsc_switch" not in v:  # the record of earlier versions
        return lines + [
            f"- target {t}: {v['before']['sites']} sites before, {v['after']['sites']} after "
            f"(image sha256 {v['after']['sha256']})",
            "",
        ]
    lines.append(before)
    if "dsc_switch" in v:
        sw = v["dsc_switch"]
        subjects = ", ".join(f"“{x}”" for x in sw["series"])
        lines.append(
            f"- {t} build with only the DSC switched to the non-Sev IoLib (the dsc-inf strategy's {subjects}, "
            f"without its C loops; built in {sw['build_seconds']} s): {sw['sites']} sites"
            + (" — switching the DSC removes nothing in this tree" if sw["sites"] >= v["before"]["sites"] else "")
        )
    a = v["after"]
    lines.append(
        f"- {t} build with this series: {a['sites']} sites (built in {a['build_seconds']} s; "
        f"image sha256 {a['sha256']})"
    )
    if "boot" in v:
        b = v["boot"]
        lines.append(
            f"- boot of that image under QEMU (TCG, q35, variable store: {b['vars']}): {b['verdict']} in "
            f"{b['seconds']:.0f} s, {b['executed']} string I/O instructions executed"
        )
    return lines + [""]
