"""EDK II INF files: the sections the planner needs ([Sources.<arch>], [LibraryClasses.<arch>], [Defines])."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.errors import OvmfToolError

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


@dataclass
class Inf:
    """The parts of an INF file the planner uses."""

    path: Path
    defines: dict[str, str] = field(default_factory=dict)
    # section name (lowercase, e.g. "sources", "libraryclasses") -> arch ("common", "x64", ...) -> entries
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def entries(self, section: str, arch: str) -> list[str]:
        """Entries of `section` that apply to `arch` (common ones first)."""
        s = self.sections.get(section.lower(), {})
        return s.get("common", []) + s.get(arch.lower(), [])

    def sources(self, arch: str) -> list[str]:
        """Source file names for `arch` (toolchain tags like `| GCC` dropped)."""
        return [e.split("|")[0].strip() for e in self.entries("sources", arch)]

    def library_classes(self, arch: str) -> list[str]:
        """Library classes the INF depends on for `arch`."""
        return [e.split("|")[0].strip() for e in self.entries("libraryclasses", arch)]


def read_inf(path: Path) -> Inf:
    """Parse an INF file."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise OvmfToolError(f"cannot read {path}: {e.strerror}") from None
    inf = Inf(path)
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _SECTION.match(line)
        if m:
            current = []
            for part in m.group(1).split(","):
                bits = part.strip().split(".")
                current.append((bits[0].lower(), bits[1].lower() if len(bits) > 1 else "common"))
            continue
        for sec, arch in current:
            if sec == "defines":
                if "=" in line:
                    k, v = line.split("=", 1)
                    inf.defines[k.strip()] = v.strip()
            else:
                inf.sections.setdefault(sec, {}).setdefault(arch, []).append(line)
    return inf
