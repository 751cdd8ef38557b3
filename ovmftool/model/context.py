"""The state of one parse, and the one interface through which object parsers hand on what they
contain.

Each PI object has its own file (`flash`, `volume`, `ffs`, `section`, `pe`, `blob`) with its node
class and the parser of its own bytes. A container does not import the parser of what it holds:
a volume's files, a file's sections, a section's volume or image are parsed through the
`ParseContext` the parser was given. The entry module (`model.parser`) imports every object's
file and implements the dispatch (`parser.Parse`), so the object files import no parser but
their own and the model has no import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovmftool.model.limits import Limits
from ovmftool.model.node import Node, Space


@dataclass
class ParseContext:
    """Limits and the nesting stack of one parse (for the depth cap and error places), and the
    dispatch to each object's parser (implemented by `model.parser.Parse`)."""

    limits: Limits = field(default_factory=Limits)
    stack: list[tuple[Node, Space, int]] = field(default_factory=list)
    # (decoder, encoded bytes) -> decoded bytes already proven by the encoder that wrote them
    # (`encoders.PROVEN`): the re-parse of an assembled image takes them instead of decoding again
    known: dict[tuple[object, bytes], bytes] = field(default_factory=dict)

    def enter(self, node: Node, space: Space, off: int) -> None:
        """Descend into `node`'s contents; enforces the depth cap."""
        self.stack.append((node, space, off))
        self.limits.check_depth(len(self.stack), space.place(off))

    def leave(self) -> None:
        """Return from the innermost container."""
        self.stack.pop()

    # --- dispatch: what a container holds is parsed by the holder's parser -------------------

    def volume(self, space: Space, off: int, limit: int, parent: Node | None) -> Node:
        """The firmware volume whose header starts at `off` (`volume.parse_volume`)."""
        raise NotImplementedError

    def files(self, vol: Node) -> None:
        """The FFS files of `vol` and its free space (`ffs.parse_files`)."""
        raise NotImplementedError

    def sections(self, parent: Node, space: Space, start: int, end: int) -> None:
        """The sections in `space[start:end]`, as children of `parent` (`section.parse_sections`)."""
        raise NotImplementedError

    def image(self, space: Space, off: int, end: int, parent: Node) -> Node:
        """The PE32/TE image at `space[off:end]` (`pe.parse_image`)."""
        raise NotImplementedError

    def reset_vector(self, space: Space, off: int, size: int, parent: Node) -> Node:
        """The reset vector's code (`blob.CodeBlob.reset_vector`)."""
        raise NotImplementedError
