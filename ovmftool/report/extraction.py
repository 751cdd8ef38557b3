"""`extract`'s output: the files `ops.extract.extraction` lists and manifest.json, written into a
new directory whole or not at all."""

from __future__ import annotations

import os

from ovmftool.errors import OvmfToolError
from ovmftool.model.flash import FlashImage
from ovmftool.model.node import all_problems
from ovmftool.ops.extract import extraction
from ovmftool.outputs import check_output_dir, commit_output_dir, discard_output_dir, new_output_dir
from ovmftool.report.document import header, image_ref, to_json
from ovmftool.report.info_report import damage_line

EXTRACT_SCHEMA = "ovmftool.extract/1"


def write_extraction(root: FlashImage, out_dir: str) -> dict:
    """Write the modules of `root` into `out_dir` (created; must not exist or be empty).

    Everything is written into a temporary sibling directory first and renamed into place, so
    a failure leaves no partial output. Returns the manifest."""
    check_output_dir(out_dir)
    tmp = new_output_dir(out_dir)
    try:
        files, body = extraction(root)
        manifest = {**header(EXTRACT_SCHEMA, image=image_ref(root)), **body}
        for name, node in files:
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(node.data)
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            fh.write(to_json(manifest))
        commit_output_dir(tmp, out_dir)
    except BaseException:
        discard_output_dir(tmp)
        raise
    return manifest


def extract_checked(image: str, root: FlashImage, out_dir: str, allow_damaged: bool) -> tuple[dict, str | None]:
    """`extract`: a damaged image is refused (nothing written) unless `allow_damaged`. Returns the
    manifest written and, for a damaged image, the error to end with once that is reported."""
    probs = all_problems(root)
    if probs and not allow_damaged:
        raise OvmfToolError(damage_line(image, probs, more=False) + " (use --allow-damaged to extract anyway)")
    manifest = write_extraction(root, out_dir)
    if not probs:
        return manifest, None
    return manifest, f"{damage_line(image, probs)}; extracted what parsed, {len(manifest['skipped'])} part(s) skipped"


def extraction_text(manifest: dict, out_dir: str) -> str:
    """`extract`'s stdout: each part skipped, then what was written where."""
    lines = [
        f"skipped {s['kind']} {s['name'] or s['guid'] or '?'} in {s['volume'] or 'the image'} "
        f"at {s['where']}: {s['reason']}"
        for s in manifest["skipped"]
    ]
    lines.append(
        f"wrote {len(manifest['modules'])} modules and {len(manifest['code_blobs'])} code blobs to {out_dir}"
        + (f"; skipped {len(manifest['skipped'])}" if manifest["skipped"] else "")
    )
    return "".join(x + "\n" for x in lines)
