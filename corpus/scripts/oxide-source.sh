#!/usr/bin/env bash
# Unpack Oxide's EDK II fork (the firmware propolis boots), make it build with GCC5 on Debian 12,
# and build its BaseTools. Prints the tree's path on stdout.
#   oxide-source.sh [TARBALL]
# Source, in order: TARBALL; $OVMFTOOL_OXIDE_TARBALL; shared/oxide-edk2/edk2-oxide-*.tar.xz
# beside the project root or beside one of its parents (../shared/ for a checkout in the work area); else a clone of $OVMFTOOL_OXIDE_GIT (where a network is available)
# at the pinned commit with its submodules.
# The tree lives under ${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}/src and is reused.
#
# Two build fixes, no code change (both are recorded in the tree's .ovmftool-ready):
# - the fork's commit 4f062e6fa7 "XXX: build-on-illumos fixes" changed the GCC static-library
#   link rule in BaseTools/Conf/build_rule.template for illumos ld; GNU gcc refuses it
#   ("unrecognized option '--start-group'"), so the upstream edk2-stable202105 rule is restored;
# - GCC 12 warns where GCC 7 did not: warnings are not errors for BaseTools and for
#   GCC_ALL_CC_FLAGS.
set -euo pipefail
COMMIT=edd72391086a9a297bf9aa011fe53b449165e556
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}
tree=$cache/src/edk2-oxide-${COMMIT:0:10}
mkdir -p "$cache/src"
exec 9>"$cache/src/.edk2-oxide.lock"
flock 9
if [ -f "$tree/.ovmftool-ready" ]; then echo "$tree"; exit 0; fi
need=()
for p in build-essential nasm acpica-tools uuid-dev python3 xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
tarball=${1:-${OVMFTOOL_OXIDE_TARBALL:-}}
if [ -z "$tarball" ]; then  # shared/oxide-edk2/ beside the project root, or beside any parent of it
  d=$root
  while [ -z "$tarball" ] && [ "$d" != / ]; do
    d=$(dirname "$d")
    tarball=$(ls "$d"/shared/oxide-edk2/edk2-oxide-*.tar.xz 2>/dev/null | head -n 1 || true)
  done
fi
rm -rf "$tree" "$tree.tmp"; mkdir -p "$tree.tmp"
if [ -n "$tarball" ] && [ -f "$tarball" ]; then
  tar xf "$tarball" -C "$tree.tmp" --strip-components=1
  source="tarball $(basename "$tarball") sha256 $(sha256sum "$tarball" | cut -c1-64)"
elif [ -n "${OVMFTOOL_OXIDE_GIT:-}" ]; then
  git clone -q "$OVMFTOOL_OXIDE_GIT" "$tree.tmp"
  git -C "$tree.tmp" checkout -q "$COMMIT"
  git -C "$tree.tmp" submodule update -q --init BaseTools/Source/C/BrotliCompress/brotli \
    MdeModulePkg/Library/BrotliCustomDecompressLib/brotli CryptoPkg/Library/OpensslLib/openssl
  source="git $OVMFTOOL_OXIDE_GIT at $COMMIT"
else
  echo "oxide-source.sh: no source: give the fork's tarball (../shared/oxide-edk2/) or set OVMFTOOL_OXIDE_GIT" >&2
  exit 2
fi
rule=$tree.tmp/BaseTools/Conf/build_rule.template
grep -q -- '--start-group @$(STATIC_LIBRARY_FILES_LIST) --end-group $(DLINK2_FLAGS)' "$rule" || {
  echo "oxide-source.sh: the illumos link rule is not in $rule: is this the fork at $COMMIT?" >&2; exit 2; }
sed -i 's|"$(DLINK)" -o ${dst} $(DLINK_FLAGS) --start-group @$(STATIC_LIBRARY_FILES_LIST) --end-group $(DLINK2_FLAGS)|"$(DLINK)" -o ${dst} $(DLINK_FLAGS) -Wl,--start-group,@$(STATIC_LIBRARY_FILES_LIST),--end-group $(CC_FLAGS) $(DLINK2_FLAGS)|' "$rule"
sed -i 's/-Wall -Werror/-Wall -Wno-error/' "$tree.tmp/BaseTools/Source/C/Makefiles/header.makefile"
sed -i '/^DEFINE GCC_ALL_CC_FLAGS /s/-Werror/-Wno-error/' "$tree.tmp/BaseTools/Conf/tools_def.template"
mv "$tree.tmp" "$tree"
make -C "$tree/BaseTools" -j"$(nproc)" >"$tree/.basetools.log" 2>&1 || {
  tail -n 20 "$tree/.basetools.log" >&2; echo "oxide-source.sh: BaseTools failed to build" >&2; exit 2; }
printf 'oxide-edk2 %s (%s); GCC5 link rule restored, -Wno-error\n' "$COMMIT" "$source" > "$tree/.ovmftool-ready"
echo "$tree"
