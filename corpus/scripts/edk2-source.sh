#!/usr/bin/env bash
# Fetch and unpack Debian's edk2 source for one upstream version, patches applied, submodules
# included, BaseTools built. Prints the tree's path on stdout.
#   edk2-source.sh 2022.11|2025.02
# Trees live under ${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}/src and are reused.
set -euo pipefail
ver=${1:?usage: edk2-source.sh 2022.11|2025.02}
here=$(cd "$(dirname "$0")" && pwd)
cache=${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}
tree=$cache/src/edk2-$ver
mkdir -p "$cache/src"
exec 9>"$cache/src/.edk2-$ver.lock"
flock 9
if [ -f "$tree/.ovmftool-ready" ]; then echo "$tree"; exit 0; fi
bash "$here/apt-sources.sh" >&2
need=()
for p in build-essential nasm acpica-tools uuid-dev quilt python3 xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
# Debian revision of that upstream version (newest the archive serves).
deb=$(apt-cache showsrc edk2 | awk '/^Version:/{print $2}' | grep "^$ver-" | sort -V | tail -n 1)
[ -n "$deb" ] || { echo "edk2-source.sh: no Debian source of edk2 $ver (is deb-src enabled?)" >&2; exit 2; }
work=$cache/src/.dl-$ver
rm -rf "$work" "$tree"; mkdir -p "$work"
( cd "$work" && apt-get source --download-only "edk2=$deb" >&2 ) || true
orig=$(ls "$work"/edk2_"$ver".orig.tar.* 2>/dev/null | head -n 1)
debtar=$(ls "$work"/edk2_"$deb".debian.tar.* 2>/dev/null | head -n 1)
[ -n "$orig" ] && [ -n "$debtar" ] || { echo "edk2-source.sh: could not download edk2 $deb source tarballs" >&2; exit 2; }
mkdir -p "$tree"
tar xf "$orig" -C "$tree" --strip-components=1
tar xf "$debtar" -C "$tree"
( cd "$tree" && QUILT_PATCHES=debian/patches quilt push -a -q >&2 )
make -C "$tree/BaseTools" -j"$(nproc)" >"$tree/.basetools.log" 2>&1 || { tail -n 20 "$tree/.basetools.log" >&2; exit 2; }
printf '%s\n' "$deb" > "$tree/.ovmftool-ready"
rm -rf "$work"
echo "$tree"
