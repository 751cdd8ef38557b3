#!/usr/bin/env bash
# Build NASM 3.01 from Debian's source package (sid's nasm 3.01-1: its binary needs a newer glibc
# than Debian 12's) and print the directory holding its `nasm`:
#   ${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}/tools/nasm-3.01/bin
# build-ovmf.sh -n 3.01 puts that directory first in PATH. NASM 3 puts a REP prefix before the
# operand-size prefix (`rep insw` is 66 F3 6D; NASM 2 writes F3 66 6D). Idempotent: a built nasm
# is reused. Needs root the first time (sid's deb-src, pinned at 50, and build-essential).
set -euo pipefail
VER=3.01 DEB=3.01-1
here=$(cd "$(dirname "$0")" && pwd)
cache=${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}
dest=$cache/tools/nasm-$VER
mkdir -p "$cache/tools"
exec 9>"$cache/tools/.nasm-$VER.lock"
flock 9
if [ -x "$dest/bin/nasm" ] && "$dest/bin/nasm" -v | grep -q "version $VER"; then echo "$dest/bin"; exit 0; fi
bash "$here/apt-sources.sh" sid >&2
need=()
for p in build-essential dpkg-dev xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
work=$cache/tools/.nasm-$VER.build
rm -rf "$work" "$dest"; mkdir -p "$work"
# apt-get source unpacks with dpkg-source (Debian's patches applied: man pages, reproducible
# builds, the install root; none touches the assembler).
( cd "$work" && apt-get source -qq "nasm=$DEB" >&2 ) || {
  echo "nasm3.sh: apt-get source nasm=$DEB failed (is sid's deb-src reachable?)" >&2; exit 2; }
srcdir=$work/nasm-$VER
[ -x "$srcdir/configure" ] || { echo "nasm3.sh: no configure in $srcdir" >&2; exit 2; }
# The release tarball ships configure; autoconf is only needed when it does not.
( cd "$srcdir" && ./configure -q --prefix="$dest" && make -j"$(nproc)" nasm ndisasm ) >"$work/build.log" 2>&1 || {
  tail -n 20 "$work/build.log" >&2; echo "nasm3.sh: build failed, log in $work/build.log" >&2; exit 2; }
mkdir -p "$dest/bin.tmp"
install -m 755 "$srcdir/nasm" "$srcdir/ndisasm" "$dest/bin.tmp/"
"$dest/bin.tmp/nasm" -v | grep -q "version $VER" || { echo "nasm3.sh: built nasm is not $VER" >&2; exit 2; }
printf 'nasm %s from Debian source package nasm %s\n' "$VER" "$DEB" > "$dest/SOURCE"
mv "$dest/bin.tmp" "$dest/bin"
rm -rf "$work"
echo "$dest/bin"
