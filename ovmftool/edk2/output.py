"""`plan`'s work from start to finish: plan, write the series (checked to apply), verify it when
asked (build, scan, boot), and put the output directory in place as one — it appears complete or
not at all. What the directory's documents say (plan.json's header, SUMMARY.md) is the caller's
`render` (report.plan_report)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ovmftool.edk2.plan import command_line, dsc_switch_only, make_plan, parse_defines
from ovmftool.edk2.series import check_applies, parse_identity, write_series
from ovmftool.edk2.verify import check_tools, verify_plan
from ovmftool.errors import OvmfToolError, require_one_line
from ovmftool.outputs import commit_output_dir, discard_output_dir, new_output_dir


def write_plan(
    tree: str,
    dsc: str,
    defines: Iterable[str],
    arches: Iterable[str],
    strategy: str,
    out_dir: str,
    author: str,
    signoff: str | None,
    render: Callable[[dict[str, Any]], dict[str, str]],
    verification: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan, write the series (checked to apply), verify it when `verification` holds the
    arguments of `edk2.verify.verify_plan` (`dsc_switch`: a flag), write the files `render`
    makes of the plan's document (name -> text), and move the directory into place; returns the
    document."""
    require_one_line(dsc, "--dsc")  # recorded in the regenerate command of SUMMARY.md
    defs = parse_defines(list(defines))
    who = parse_identity(author, "--author")  # before any work: a newline would forge a header
    if signoff:
        parse_identity(signoff, "--signoff")
    scratch = (verification or {}).get("scratch")
    if scratch and Path(scratch).resolve().is_relative_to(Path(tree).resolve()):
        raise OvmfToolError(f"--scratch {scratch} is inside the tree it copies ({tree}): give a directory outside it")
    arches = list(arches)
    p = make_plan(Path(tree).resolve(), dsc, defs, arches or None, strategy)
    if verification is not None:
        check_tools(boot=verification["boot"])  # before anything is written or copied
    tmp = Path(new_output_dir(out_dir, parents=True))
    try:
        series = write_series(p.patches, tmp, who, signoff or author)
        check_applies(series, Path(p.tree))
        doc = p.as_dict()
        doc["series"] = [s.name for s in series]
        doc["command"] = command_line(dsc, defs, arches, strategy)
        if verification is not None:
            v = dict(verification)
            v["dsc_switch"] = dsc_switch_only(p) if v["dsc_switch"] else None
            doc["verification"] = verify_plan(p, series, keep_dir=tmp, **v)
        for name, text in render(doc).items():
            (tmp / name).write_text(text)
        commit_output_dir(str(tmp), out_dir)
    except BaseException:
        discard_output_dir(str(tmp))
        raise
    return doc
