#!/usr/bin/env bash
# Refresh corpus/images/ from Debian's ovmf packages and rewrite corpus/manifest.json.
#   fetch-debian.sh            newest 2022.11-* (bookworm), 2025.02-* (trixie) and 2026.08+* (sid) packages:
#                              ovmf (sid: ovmf-generic, ovmf-amdsev, ovmf-inteltdx) and sid's AArch64
#                              qemu-efi-aarch64 (firmware that is not x86)
# Needs apt (root) with bookworm and trixie sources (apt-sources.sh sets them up).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus=$(dirname "$here")
bash "$here/apt-sources.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Debian 13's sid binaries (edk2 2026.08, NASM 3.01) and AArch64 firmware (the non-x86 test):
# a binary source for sid, pinned at 50 so nothing is upgraded from it.
if ! apt-get indextargets --no-release-info --format '$(RELEASE) $(TARGET_OF)' | grep -qx "sid deb"; then
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    > /etc/apt/sources.list.d/ovmftool-sid-bin.sources
  grep -qsx "Pin: release n=sid" /etc/apt/preferences.d/* || \
    printf 'Package: *\nPin: release n=sid\nPin-Priority: 50\n' > /etc/apt/preferences.d/ovmftool-sid
  apt-get update -qq
fi
# upstream version | suite | package | directory in the package | files
rows=(
  "2022.11|bookworm|ovmf|/usr/share/OVMF|OVMF_CODE.fd OVMF_VARS.fd OVMF_CODE_4M.fd OVMF_VARS_4M.fd"
  "2025.02|trixie|ovmf|/usr/share/OVMF|OVMF_CODE_4M.fd OVMF_VARS_4M.fd"
  "2026.08|sid|ovmf-generic|/usr/share/OVMF|OVMF_CODE_4M.fd OVMF_CODE_4M.secboot.fd OVMF_VARS_4M.fd"
  "2026.08|sid|ovmf-amdsev|/usr/share/ovmf|OVMF.amdsev.fd"
  "2026.08|sid|ovmf-inteltdx|/usr/share/ovmf|OVMF.inteltdx.ms.fd"
  "2026.08|sid|qemu-efi-aarch64|/usr/share/qemu-efi-aarch64|QEMU_EFI.fd"
)
entries=()
for row in "${rows[@]}"; do
  IFS='|' read -r up suite pkg dir files <<<"$row"
  ver=$(apt-cache madison "$pkg" | awk '{print $3}' | grep "^$up[-+]" | sort -V | tail -n 1)
  [ -n "$ver" ] || { echo "fetch-debian.sh: no $pkg $up package visible to apt" >&2; exit 2; }
  (cd "$work" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1)
  deb=$(ls "$work"/"${pkg}"_"${ver//:/%3a}"_all.deb)
  x=$work/x-$pkg-$up; mkdir -p "$x"; dpkg-deb -x "$deb" "$x"
  dest=$corpus/images/debian-$up; mkdir -p "$dest"
  mkdir -p "$corpus/licenses"
  lic=licenses/debian-$pkg-$up.copyright
  [ "$pkg" = ovmf ] || [ "$pkg" = ovmf-generic ] && lic=licenses/debian-ovmf-$up.copyright
  cp "$x/usr/share/doc/$pkg/copyright" "$corpus/$lic"
  debsha=$(sha256sum "$deb" | cut -d' ' -f1)
  for f in $files; do
    cp "$x$dir/$f" "$dest/$f"
    sha=$(sha256sum "$dest/$f" | cut -d' ' -f1)
    entries+=("{\"path\": \"images/debian-$up/$f\", \"package\": \"$pkg\", \"version\": \"$ver\", \"suite\": \"$suite\", \"package_file\": \"$(basename "$deb")\", \"package_sha256\": \"$debsha\", \"source_path\": \"$dir/$f\", \"sha256\": \"$sha\", \"size\": $(stat -c %s "$dest/$f"), \"license\": \"$lic\"}")
  done
done
{ echo '{"schema_version": "ovmftool.corpus/1", "images": ['; (IFS=$'\n'; echo "${entries[*]}" | sed '$!s/$/,/'); echo ']}'; } \
  | python3 -c 'import json,sys
doc = json.load(sys.stdin)
try:  # keep what other scripts recorded (the corpus builds)
    doc["builds"] = json.load(open(sys.argv[1])).get("builds", [])
except (OSError, ValueError):
    pass
json.dump(doc, sys.stdout, indent=2, sort_keys=True); print()' "$corpus/manifest.json" > "$work/manifest.json"
mv "$work/manifest.json" "$corpus/manifest.json"
cat "$corpus/manifest.json"
