#!/usr/bin/env bash
# Build OVMF from Debian's edk2 source and keep the FD with its symbol files.
#   build-ovmf.sh VERSION DSC TARGET [-D NAME=VALUE]... [-p PATCH]... [-t TOOLCHAIN] [-n NASM]
#   e.g. build-ovmf.sh 2022.11 OvmfPkg/OvmfPkgX64.dsc DEBUG -D SECURE_BOOT_ENABLE=TRUE
#        build-ovmf.sh oxide-202105 OvmfPkg/OvmfPkgX64.dsc DEBUG -D FD_SIZE_2MB -D MPT_SCSI_ENABLE=FALSE
#        build-ovmf.sh 2025.02 OvmfPkg/OvmfPkgX64.dsc DEBUG -D SECURE_BOOT_ENABLE=TRUE -t CLANGDWARF
# -p applies a patch (git format, -p1) to a copy of the tree kept for that set of patches.
# -t GCC5 (default) or CLANGDWARF (Debian 12's clang 14 and lld, installed when missing:
#    CLANG_BIN=/usr/lib/llvm-14/bin/); the build's directory is then Build/.../TARGET_CLANGDWARF.
# -n 3.01 (or OVMFTOOL_NASM=3.01) assembles with NASM 3.01 built from sid's source by nasm3.sh
#    instead of the system's nasm. build.json records the toolchain and `nasm -v` of the build.
# Output (printed on stdout): ${OVMFTOOL_CACHE:-~/.cache/ovmftool}/builds/<key>/ holding
#   FV/*.fd FV/*.inf, <ARCH>/*.efi *.debug, <ARCH>/*.map, build-report.txt, build.json
# A finished build with the same key is reused. Set OVMFTOOL_EDK2_TREE to build another tree.
set -euo pipefail
ver=${1:?usage: build-ovmf.sh VERSION DSC TARGET [-D NAME=VALUE]...}
dsc=${2:?DSC missing}; target=${3:?TARGET missing}; shift 3
defs=()
patches=()
tc=GCC5
nasmver=${OVMFTOOL_NASM:-}
while [ $# -gt 0 ]; do
  case "$1" in
    -t) tc=${2:?-t needs GCC5 or CLANGDWARF}; shift 2 ;;
    -n) nasmver=${2:?-n needs a NASM version}; shift 2 ;;
    -p) patches+=("$(cd "$(dirname "${2:?-p needs a file}")" && pwd)/$(basename "$2")"); shift 2 ;;
    -D) defs+=("-D" "${2:?-D needs NAME=VALUE}"); shift 2 ;;
    -D*) defs+=("-D" "${1#-D}"); shift ;;
    *) echo "build-ovmf.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
cache=${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}
toolenv=()  # NAME=VALUE for the build's environment
case "$tc" in
  GCC5) ;;
  CLANGDWARF)
    llvm=/usr/lib/llvm-14/bin
    if [ ! -x "$llvm/clang" ] || [ ! -x "$llvm/ld.lld" ] || [ ! -x "$llvm/llvm-ar" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 lld-14 llvm-14 >&2
    fi
    toolenv+=("CLANG_BIN=$llvm/" "CLANG_HOST_BIN=") ;;
  *) echo "build-ovmf.sh: toolchain $tc: GCC5 or CLANGDWARF" >&2; exit 2 ;;
esac
case "$nasmver" in
  "") ;;
  3.01) nbin=$(bash "$here/nasm3.sh" | tail -n 1)
        toolenv+=("NASM_PREFIX=$nbin/" "PATH=$nbin:$PATH") ;;
  *) echo "build-ovmf.sh: NASM $nasmver: only 3.01 (nasm3.sh) or the system's" >&2; exit 2 ;;
esac
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
# The key of a GCC5 build with the system's nasm is what it always was (warm caches stay valid);
# another toolchain or assembler is part of the key and of the directory's name.
kx=""; nx=""
if [ "$tc" != GCC5 ] || [ -n "$nasmver" ]; then kx="|$tc|nasm-${nasmver:-system}"; fi
[ "$tc" = GCC5 ] || nx="$nx-$tc"
[ -z "$nasmver" ] || nx="$nx-nasm$nasmver"
key=$(printf '%s|%s|%s|%s|%s%s' "$ver" "$tree" "$dsc" "$target" "${defs[*]:-}" "$kx" | sha256sum | cut -c1-12)
out=$cache/builds/$ver-$(basename "$dsc" .dsc)-$target$nx-$key
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
# AmdSevX64 embeds OvmfPkg/AmdSev/Grub/grub.efi, which its PREBUILD (grub.sh) would make with
# grub-mkimage and GRUB's sevsecret module: no Debian grub has that module (bookworm's
# grub-efi-amd64-bin 2.06-13 neither). Debian's rules for ovmf-amdsev use an empty grub.efi, which
# grub.sh keeps (sid's changelog: "Remove empty OvmfPkg/AmdSev/Grub/grub.efi on clean"; sid's
# OVMF.amdsev.fd has an empty PE32 section there). So do we.
extra=""
case "$(basename "$dsc")" in
  AmdSevX64.dsc) : > "$tree/OvmfPkg/AmdSev/Grub/grub.efi"
                 extra=', "grub_efi": "empty placeholder (as Debian'"'"'s ovmf-amdsev)"' ;;
esac
plat=$(awk -F= '/^[[:space:]]*OUTPUT_DIRECTORY/{gsub(/[[:space:]]/,"",$2); print $2; exit}' "$tree/$dsc")
[ -n "$plat" ] || { echo "build-ovmf.sh: no OUTPUT_DIRECTORY in $dsc" >&2; exit 2; }
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
start=$(date +%s)
(
  cd "$tree"
  rm -rf "$plat/${target}_$tc"
  [ ${#toolenv[@]} -eq 0 ] || export "${toolenv[@]}"
  set +u; . ./edksetup.sh >/dev/null; set -u
  # The assembler and compiler this build really runs, for build.json.
  { "${NASM_PREFIX:-}nasm" -v | head -n 1
    if [ "$tc" = CLANGDWARF ]; then "${CLANG_BIN}clang" --version | head -n 1; "${CLANG_BIN}ld.lld" --version | head -n 1
    else gcc --version | head -n 1; ld --version | head -n 1; fi; } > "$out.tmp/tools.txt"
  build "${archs[@]}" -t "$tc" -p "$dsc" -b "$target" -n "$(nproc)" "${defs[@]}" \
    -Y LIBRARY -Y FLASH -y "$out.tmp/build-report.txt"
) >"$out.tmp/build.log" 2>&1 || { tail -n 30 "$out.tmp/build.log" >&2; echo "build-ovmf.sh: build failed, log in $out.tmp/build.log" >&2; exit 1; }
bdir=$tree/$plat/${target}_$tc
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
 "dsc": "$dsc", "target": "$target", "toolchain": "$tc", "archs": "${archs[*]}",
 "nasm": "$(sed -n 1p "$out.tmp/tools.txt")", "compiler": "$(sed -n 2p "$out.tmp/tools.txt")",
 "linker": "$(sed -n 3p "$out.tmp/tools.txt")",
 "defines": "${defs[*]:-}", "patches": "${patches[*]:-}", "seconds": $(( $(date +%s) - start ))$extra}
JSON
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
