"""What every versioned JSON output of ovmftool starts with, built once: `schema_version`, the
`tool` that wrote it and (for most) the `image` it describes; and how a document is written."""

from __future__ import annotations

import json

from ovmftool import __version__


def header(schema: str, **fields) -> dict:
    """`{"schema_version": schema, "tool": {...}, **fields}`: the head of a JSON document
    (`fields` is usually `image=image_ref(...)`)."""
    return {"schema_version": schema, "tool": {"name": "ovmftool", "version": __version__}, **fields}


def image_ref(obj, size: bool = True) -> dict:
    """`{"path", "sha256"[, "size"]}` of a parsed image or a scan result."""
    ref = {"path": obj.path, "sha256": obj.sha256}
    if size:
        ref["size"] = obj.size
    return ref


def to_json(doc) -> str:
    """The document as written everywhere: indented, keys sorted, one final newline."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
