"""`validate(root)`: the whole tree read and every problem in it, before anyone rules on it.

The parser records damage as it reads; a PE image reads its base relocations, exports and debug
directory on first use (`PeImage.LAZY`), so damage there would otherwise be found only by
whoever asks first — in a scan, a worker process the caller never hears from.
"""

from __future__ import annotations

from ovmftool.model.node import Node, Problem, all_problems, walk
from ovmftool.model.pe import PeImage


def validate(root: Node) -> list[Problem]:
    """Every problem under `root`, lazily read structures included, in tree order."""
    for n in walk(root):
        if isinstance(n, PeImage):
            n.read_lazy()
    return all_problems(root)
