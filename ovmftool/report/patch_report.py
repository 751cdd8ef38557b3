"""Text rendering of a `patch` result (JSON is `PatchResult.as_dict`, schema ovmftool.patch/1)."""

from __future__ import annotations

from itertools import groupby

from ovmftool.errors import printable
from ovmftool.patch.patcher import PatchResult
from ovmftool.report.document import header, to_json

PATCH_SCHEMA = "ovmftool.patch/1"


def patch_text(res: PatchResult, dry_run: bool) -> str:
    """Rewrites grouped by module, refusals, then the proof."""
    out = [
        f"{printable(res.input_path)}: {res.sites_before} string I/O site(s); {len(res.rewrites)} rewrite(s) planned, "
        f"{len(res.refusals)} refused"
    ]
    for (vol, mod, arch), rows in groupby(res.rewrites, key=lambda r: (r.volume, r.module, r.arch)):
        out.append(f"  {mod} ({arch}, {vol})")
        for r in rows:
            out.append(
                f"    rva 0x{r.rva:06X}  {r.function or '?':<18} {r.mnemonic:<10} {r.old} -> {r.new}  [{r.shape}]"
            )
    if res.refusals:
        out.append("refused (left in place only with --allow-unknown):")
        for r in res.refusals:
            out.append(
                f"  {r.module} ({r.arch}, {r.volume}) rva 0x{r.rva:06X} {r.function or '?'} {r.mnemonic} "
                f"bytes {r.bytes}: {r.shape}: {r.reason}"
            )
    out.append(
        f"emulation: {res.emulated_functions} rewritten routine(s) compared with the original under unicorn "
        f"({res.emulation_runs} emulator runs; identical routines answered from the memo)"
    )
    if dry_run:
        out.append("dry run: nothing assembled or written")
        return "\n".join(out) + "\n"
    for s in res.reencoded:
        out.append(
            f"rebuilt: {s.compression} section at {s.space}+0x{s.offset:X}: {s.old_size} -> "
            f"{s.new_size} bytes (LZMA effort {res.lzma_effort})"
        )
    if res.sites_after is not None:
        out.append(
            f"proof: output re-parsed with every checksum valid; rescan finds {res.sites_after} site(s) "
            f"({res.modules_rescanned} changed module(s) rescanned, the rest byte-identical to clean input "
            "modules)"
        )
    return "\n".join(out) + "\n"


def render_patch(res: PatchResult, fmt: str, dry_run: bool, written: str | None) -> str:
    """`patch` in `fmt` ("text" or "json"); `written`: the output file written, if one was."""
    if fmt == "json":
        return to_json({**header(PATCH_SCHEMA), **res.as_dict(), "written": written})
    text = patch_text(res, dry_run)
    if written:
        text += f"wrote {printable(written)} (sha256 {res.output_sha256})\n"
    elif not dry_run:
        text += "nothing written: refused sites (see above; --allow-unknown leaves them in place)\n"
    return text
