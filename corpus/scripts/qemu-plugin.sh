#!/usr/bin/env bash
# Build boot-check's TCG plugin (ovmftool/boot/plugin/strio.c) for the installed QEMU into
#   ${XDG_CACHE_HOME:-~/.cache}/ovmftool/plugin/qemu-<version>-<source hash>/strio.so
# and print its path. Idempotent (nothing to do when it is built). Needs gcc and QEMU's
# qemu-plugin.h: the system's if installed, else extracted (that one file, into the cache) from
# Debian's source package of the installed QEMU with `apt-get source --download-only`
# (deb-src: corpus/scripts/apt-sources.sh). With the plugin built, `ovmftool boot-check` needs one
# boot instead of two; without it, it runs the two boots and says so in a note.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
exec "$PY" -m ovmftool.boot.plugin build
