#!/usr/bin/env bash
# Build OVMF from Debian's edk2 source and keep the FD with its symbol files.
#   build-ovmf.sh VERSION DSC TARGET [-D NAME=VALUE]... [-p PATCH]...
#   e.g. build-ovmf.sh 2022.11 OvmfPkg/OvmfPkgX64.dsc DEBUG -D SECURE_BOOT_ENABLE=TRUE
#        build-ovmf.sh oxide-202105 OvmfPkg/OvmfPkgX64.dsc DEBUG -D FD_SIZE_2MB -D MPT_SCSI_ENABLE=FALSE
# -p applies a patch (git format, -p1) to a copy of the tree kept for that set of patches.
# Output (printed on stdout): ${OVMFTOOL_CACHE:-~/.cache/ovmftool}/builds/<key>/ holding
#   FV/*.fd FV/*.inf, <ARCH>/*.efi *.debug, <ARCH>/*.map, build-report.txt, build.json
# A finished build with the same key is reused. Set OVMFTOOL_EDK2_TREE to build another tree.
set -euo pipefail
ver=${1:?usage: build-ovmf.sh VERSION DSC TARGET [-D NAME=VALUE]...}
dsc=${2:?DSC missing}; target=${3:?TARGET missing}; shift 3
defs=()
patches=()
while [ $# -gt 0 ]; do
  case "$1" in
    -p) patches+=("$(cd "$(dirname "${2:?-p needs a file}")" && pwd)/$(basename "$2")"); shift 2 ;;
    -D) defs+=("-D" "${2:?-D needs NAME=VALUE}"); shift 2 ;;
    -D*) defs+=("-D" "${1#-D}"); shift ;;
    *) echo "build-ovmf.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
cache=${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}
case "$ver" in
  oxide-*) src=(oxide-source.sh) ;;  # Oxide's fork (propolis' firmware), e.g. oxide-202105: one commit
  *) src=(edk2-source.sh "$ver") ;;
esac
tree=${OVMFTOOL_EDK2_TREE:-$(bash "$here/${src[0]}" "${src[@]:1}")}
if [ ${#patches[@]} -gt 0 ]; then
  phash=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
  ptree=$cache/src/edk2-$ver-p$phash
  if [ ! -f "$ptree/.ovmftool-patched" ]; then
    rm -rf "$ptree.tmp"; mkdir -p "$ptree.tmp"
    tar -C "$tree" --exclude=./Build --exclude=./Conf/BuildEnv.sh -cf - . | tar -C "$ptree.tmp" -xf -
    for p in "${patches[@]}"; do
      patch -d "$ptree.tmp" -p1 --batch --forward -s < "$p" >&2 || { echo "build-ovmf.sh: $p does not apply to edk2 $ver" >&2; exit 2; }
    done
    printf '%s\n' "${patches[@]}" > "$ptree.tmp/.ovmftool-patched"
    rm -rf "$ptree"; mv "$ptree.tmp" "$ptree"
  fi
  tree=$ptree
fi
[ -f "$tree/$dsc" ] || { echo "build-ovmf.sh: $dsc not found in $tree" >&2; exit 2; }
key=$(printf '%s|%s|%s|%s|%s' "$ver" "$tree" "$dsc" "$target" "${defs[*]:-}" | sha256sum | cut -c1-12)
out=$cache/builds/$ver-$(basename "$dsc" .dsc)-$target-$key
if [ -f "$out/build.json" ]; then echo "$out"; exit 0; fi
# One build at a time per tree: EDK II builds in place.
exec 9>"$tree/.ovmftool-build.lock"
flock 9
if [ -f "$out/build.json" ]; then echo "$out"; exit 0; fi
archs=(-a X64)
case "$(basename "$dsc")" in
  OvmfPkgIa32X64.dsc) archs=(-a IA32 -a X64) ;;
  OvmfPkgIa32.dsc) archs=(-a IA32) ;;
esac
plat=$(awk -F= '/^[[:space:]]*OUTPUT_DIRECTORY/{gsub(/[[:space:]]/,"",$2); print $2; exit}' "$tree/$dsc")
[ -n "$plat" ] || { echo "build-ovmf.sh: no OUTPUT_DIRECTORY in $dsc" >&2; exit 2; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
start=$(date +%s)
(
  cd "$tree"
  rm -rf "$plat/${target}_GCC5"
  set +u; . ./edksetup.sh >/dev/null; set -u
  build "${archs[@]}" -t GCC5 -p "$dsc" -b "$target" -n "$(nproc)" "${defs[@]}" \
    -Y LIBRARY -Y FLASH -y "$out.tmp/build-report.txt"
) >"$out.tmp/build.log" 2>&1 || { tail -n 30 "$out.tmp/build.log" >&2; echo "build-ovmf.sh: build failed, log in $out.tmp/build.log" >&2; exit 1; }
bdir=$tree/$plat/${target}_GCC5
mkdir -p "$out.tmp/FV"
cp "$bdir"/FV/*.fd "$bdir"/FV/*.inf "$out.tmp/FV/"
for a in IA32 X64; do
  [ -d "$bdir/$a" ] || continue
  mkdir -p "$out.tmp/$a"
  find "$bdir/$a" -maxdepth 1 -type f \( -name '*.efi' -o -name '*.debug' \) -exec cp {} "$out.tmp/$a/" \;
  # A module built twice under different FILE_GUIDs lives in a GUID-named directory: keep its
  # map as NAME_GUID.map, as the build names its .efi and .debug.
  find "$bdir/$a" -path '*/DEBUG/*.map' | while read -r m; do
    d=$(basename "$(dirname "$(dirname "$m")")")
    n=$(basename "$m" .map)
    if [[ $d =~ ^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$ ]]; then
      cp "$m" "$out.tmp/$a/${n}_$d.map"
    else
      cp "$m" "$out.tmp/$a/$n.map"
    fi
  done
done
cat > "$out.tmp/build.json" <<JSON
{"edk2_version": "$ver", "debian_version": "$(head -n 1 "$tree/.ovmftool-ready" 2>/dev/null || echo unknown)",
 "dsc": "$dsc", "target": "$target", "toolchain": "GCC5", "archs": "${archs[*]}",
 "defines": "${defs[*]:-}", "patches": "${patches[*]:-}", "seconds": $(( $(date +%s) - start ))}
JSON
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
