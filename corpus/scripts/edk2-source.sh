#!/usr/bin/env bash
# Fetch and unpack Debian's edk2 source for one upstream version, patches applied, submodules
# included, BaseTools built. Prints the tree's path on stdout.
#   edk2-source.sh 2020.11|2022.11|2025.02|2026.08
# 2020.11 is bullseye's (2020.11-2+deb11u2), 2022.11 bookworm's, 2025.02 trixie's, 2026.08 sid's
# (2026.08+ds-2: "+ds" is Debian's repack of the upstream tag with its submodules (openssl,
# brotli, ...) in the orig tarball, less the prebuilt binaries debian/copyright's Files-Excluded
# names; nothing else to fetch). bullseye's and sid's deb-src are added by apt-sources.sh, pinned 50.
# 2020.11 was built by Debian with GCC 10: for GCC 12, warnings are not errors for BaseTools and
# for GCC_ALL_CC_FLAGS (as oxide-source.sh does for the 202105 fork), and BaseTools' Python needs
# distutils (python3-distutils); no code change. Each change is recorded in .ovmftool-ready.
# Should the archive serve the orig tarball but not the debian tarball, the tree is the orig
# tarball alone and .ovmftool-ready's first line says so ("... orig only, Debian patches not applied").
# Trees live under ${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}/src and are reused.
set -euo pipefail
ver=${1:?usage: edk2-source.sh 2020.11|2022.11|2025.02|2026.08}
case "$ver" in
  2020.11) suite=bullseye ;;
  2026.08) suite=sid ;;
  2022.11|2025.02) suite="" ;;
  *) echo "edk2-source.sh: edk2 $ver: 2020.11, 2022.11, 2025.02 or 2026.08" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
cache=${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}
tree=$cache/src/edk2-$ver
mkdir -p "$cache/src"
exec 9>"$cache/src/.edk2-$ver.lock"
flock 9
if [ -f "$tree/.ovmftool-ready" ]; then echo "$tree"; exit 0; fi
bash "$here/apt-sources.sh" $suite >&2
need=()
extra=(); [ "$ver" != 2020.11 ] || extra=(python3-distutils)
for p in build-essential nasm acpica-tools uuid-dev quilt python3 xz-utils "${extra[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
# Debian revision of that upstream version (newest the archive serves).
# ("2026.08+ds-2" is upstream 2026.08, repacked: its orig tarball is edk2_2026.08+ds.orig.tar.xz.)
deb=$(apt-cache showsrc edk2 | awk '/^Version:/{print $2}' | grep -E "^$ver(\+ds)?-" | sort -V | tail -n 1)
[ -n "$deb" ] || { echo "edk2-source.sh: no Debian source of edk2 $ver (is deb-src enabled?)" >&2; exit 2; }
upver=${deb%-*}
work=$cache/src/.dl-$ver
rm -rf "$work" "$tree"; mkdir -p "$work"
( cd "$work" && apt-get source --download-only "edk2=$deb" >&2 ) || true
# (2020.11 has a second orig component, qemu-ovmf-secureboot, for enrolling keys: not needed.)
orig=$(ls "$work"/edk2_"$upver".orig.tar.* 2>/dev/null | head -n 1 || true)
debtar=$(ls "$work"/edk2_"$deb".debian.tar.* 2>/dev/null | head -n 1 || true)
[ -n "$orig" ] || { rm -rf "$tree"; echo "edk2-source.sh: the archive did not serve edk2_$upver.orig.tar.* of edk2 $deb (apt-get source --download-only edk2=$deb in $work)" >&2; exit 2; }
# The orig tarball is the one the signed Sources index names. (awk reads to the end: leaving
# early would end apt-cache with SIGPIPE, which pipefail and set -e turn into a silent exit.)
want=$(apt-cache showsrc edk2 | awk -v v="$deb" -v f="$(basename "$orig")" '/^Package:/{ver=""} /^Version:/{ver=$2} /^Checksums-Sha256:/{c=1; next} /^[^ ]/{c=0} c && ver==v && $3==f && !done {print $1; done=1}')
[ -z "$want" ] || [ "$(sha256sum "$orig" | cut -c1-64)" = "$want" ] || { echo "edk2-source.sh: $orig: sha256 differs from the Sources index" >&2; exit 2; }
notes=()
mkdir -p "$tree"
tar xf "$orig" -C "$tree" --strip-components=1
for sub in CryptoPkg/Library/OpensslLib/openssl MdeModulePkg/Library/BrotliCustomDecompressLib/brotli; do
  [ -n "$(ls -A "$tree/$sub" 2>/dev/null)" ] || { echo "edk2-source.sh: $sub is empty in $(basename "$orig")" >&2; exit 2; }
done
if [ -n "$debtar" ]; then
  tar xf "$debtar" -C "$tree"
  ( cd "$tree" && QUILT_PATCHES=debian/patches quilt push -a -q >&2 )
  ready="$deb"
else
  echo "edk2-source.sh: warning: the archive did not serve edk2_$deb.debian.tar.*: the tree is $(basename "$orig") alone, Debian's patches not applied" >&2
  ready="$deb orig only ($(basename "$orig") sha256 $(sha256sum "$orig" | cut -c1-12)), Debian patches not applied: the archive did not serve edk2_$deb.debian.tar.xz"
fi
# Debian's 2020.11 orig tarball leaves out BaseTools/Source/C/BrotliCompress (a bundled brotli)
# and its patches take it out of the BaseTools build; OVMF does not use it (its sections are LZMA).
gm=$tree/BaseTools/Source/C/GNUmakefile
if [ ! -d "$tree/BaseTools/Source/C/BrotliCompress" ] && grep -q '^[[:space:]]*BrotliCompress[[:space:]]*\\[[:space:]]*$' "$gm"; then
  sed -i '/^[[:space:]]*BrotliCompress[[:space:]]*\\[[:space:]]*$/d' "$gm"
  notes+=("BrotliCompress (not in the orig tarball) left out of the BaseTools build")
fi
if [ "$ver" = 2020.11 ]; then  # GCC 10 era: GCC 12's new warnings are not errors (no code change)
  sed -i 's/-Wall -Werror/-Wall -Wno-error/' "$tree/BaseTools/Source/C/Makefiles/header.makefile"
  sed -i '/^DEFINE GCC_ALL_CC_FLAGS /s/-Werror/-Wno-error/' "$tree/BaseTools/Conf/tools_def.template"
  notes+=("-Wno-error for BaseTools and GCC_ALL_CC_FLAGS (GCC 12)")
fi
make -C "$tree/BaseTools" -j"$(nproc)" >"$tree/.basetools.log" 2>&1 || { tail -n 20 "$tree/.basetools.log" >&2; exit 2; }
for n in "${notes[@]}"; do ready="$ready; $n"; done
printf '%s\n' "$ready" > "$tree/.ovmftool-ready"
rm -rf "$work"
echo "$tree"
