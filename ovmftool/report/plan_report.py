"""`plan`'s documents: plan.json (schema ovmftool.plan/1) and SUMMARY.md, rendered from the plan
`edk2.output.write_plan` made; it writes them with the series into the output directory."""

from __future__ import annotations

import json

from ovmftool.report.document import header

PLAN_SCHEMA = "ovmftool.plan/1"


def plan_files(doc: dict) -> dict[str, str]:
    """The documents of `plan`'s output directory: plan.json (with its header) and SUMMARY.md
    (rendered from it)."""
    full = {**header(PLAN_SCHEMA), **doc}
    return {"plan.json": json.dumps(full, indent=2, sort_keys=True) + "\n", "SUMMARY.md": plan_summary(full)}


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
