"""`python -m ovmftool.boot.plugin build|path`: build boot-check's TCG plugin for the installed
QEMU into the cache (see the package docstring), or print where it is (exit 1: not built)."""

from __future__ import annotations

import sys

from ovmftool.boot import plugin
from ovmftool.errors import OvmfToolError


def main(argv: list[str]) -> int:
    if argv not in (["build"], ["path"]):
        print("usage: python -m ovmftool.boot.plugin build|path", file=sys.stderr)
        return 2
    try:
        if argv == ["build"]:
            print(plugin.build(log=lambda s: print(s, file=sys.stderr)))
            return 0
        p = plugin.plugin_path()
    except OvmfToolError as e:
        print(f"ovmftool: error: {e}", file=sys.stderr)
        return 2
    if p is None:
        print("not built: python -m ovmftool.boot.plugin build (corpus/scripts/qemu-plugin.sh)", file=sys.stderr)
        return 1
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
