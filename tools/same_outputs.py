#!/usr/bin/env python3
"""Record, or compare with a record, what `scan` says of every corpus image and stored build:
a structural change must leave every output byte-identical.

    python tools/same_outputs.py record DIR     # before the change
    python tools/same_outputs.py compare DIR    # after it: exit 1 naming each output that differs

For each image: `scan --format json` and `--format sarif` (one file each, run from the checkout
root so that paths are the same), and the exit code. The result cache is off, so both sides are
computed. JUnit is left out: it carries times.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def images() -> list[str]:
    manifest = json.loads((ROOT / "corpus" / "manifest.json").read_text())
    out = [str(Path("corpus") / e["path"]) for e in manifest["images"]]
    for d in sorted((ROOT / "corpus" / "builds").iterdir()):
        meta = json.loads((d / "build.json").read_text()) if (d / "build.json").is_file() else {}
        fw = d / meta.get("firmware", "OVMF_CODE.fd")
        if fw.is_file():
            out.append(str(fw.relative_to(ROOT)))
    return out


def outputs() -> dict[str, bytes]:
    env = dict(os.environ, OVMFTOOL_NO_CACHE="1")
    got: dict[str, bytes] = {}
    for img in images():
        for fmt in ("json", "sarif"):
            r = subprocess.run(
                [sys.executable, "-m", "ovmftool", "scan", "--format", fmt, img],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=600,
            )
            got[f"{img.replace('/', '__')}.{fmt}"] = r.stdout + f"\nexit {r.returncode}\n".encode()
    return got


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: same_outputs.py record|compare DIR", file=sys.stderr)
        return 2
    where = Path(argv[1])
    got = outputs()
    if argv[0] == "record":
        where.mkdir(parents=True, exist_ok=True)
        for name, data in got.items():
            (where / name).write_bytes(data)
        print(f"recorded {len(got)} outputs in {where}")
        return 0
    differ = [n for n, data in got.items() if not (where / n).is_file() or (where / n).read_bytes() != data]
    missing = sorted({p.name for p in where.iterdir()} - set(got))
    for n in differ:
        print(f"differs: {n} ({hashlib.sha256(got[n]).hexdigest()[:12]})")
    for n in missing:
        print(f"no longer produced: {n}")
    print(f"{len(got) - len(differ)} of {len(got)} outputs identical")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
