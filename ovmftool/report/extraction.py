"""`extract`'s manifest.json (schema ovmftool.extract/1) and its stdout; the files are written by
`ops.extract.write_extraction`."""

from __future__ import annotations

from typing import Any

from ovmftool.errors import printable
from ovmftool.model.flash import FlashImage
from ovmftool.report.document import header, image_ref, to_json

EXTRACT_SCHEMA = "ovmftool.extract/1"


def manifest_text(root: FlashImage, body: dict[str, Any]) -> str:
    """manifest.json: the schema header, the image, then what `ops.extract.extraction` lists."""
    return to_json({**header(EXTRACT_SCHEMA, image=image_ref(root)), **body})


def extraction_text(manifest: dict[str, Any], out_dir: str) -> str:
    """`extract`'s stdout: each part skipped, then what was written where."""
    lines = [
        f"skipped {s['kind']} {s['name'] or s['guid'] or '?'} in {s['volume'] or 'the image'} "
        f"at {s['where']}: {s['reason']}"
        for s in manifest["skipped"]
    ]
    lines.append(
        f"wrote {len(manifest['modules'])} modules and {len(manifest['code_blobs'])} code blobs to {printable(out_dir)}"
        + (f"; skipped {len(manifest['skipped'])}" if manifest["skipped"] else "")
    )
    return "".join(x + "\n" for x in lines)
