#!/usr/bin/env bash
# Refresh corpus/images/ from Debian's ovmf packages and rewrite corpus/manifest.json.
#   fetch-debian.sh            newest 2022.11-* (bookworm) and 2025.02-* (trixie) packages
# Needs apt (root) with bookworm and trixie sources (apt-sources.sh sets them up).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
corpus=$(dirname "$here")
bash "$here/apt-sources.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
declare -A files=(
  [2022.11]="OVMF_CODE.fd OVMF_VARS.fd OVMF_CODE_4M.fd OVMF_VARS_4M.fd"
  [2025.02]="OVMF_CODE_4M.fd OVMF_VARS_4M.fd"
)
declare -A suite=([2022.11]=bookworm [2025.02]=trixie)
entries=()
for up in 2022.11 2025.02; do
  ver=$(apt-cache madison ovmf | awk '{print $3}' | grep "^$up-" | sort -V | tail -n 1)
  [ -n "$ver" ] || { echo "fetch-debian.sh: no ovmf $up-* package visible to apt" >&2; exit 2; }
  (cd "$work" && apt-get download -q "ovmf=$ver" >/dev/null 2>&1)
  deb=$(ls "$work"/ovmf_"${ver//:/%3a}"_all.deb)
  x=$work/x-$up; mkdir -p "$x"; dpkg-deb -x "$deb" "$x"
  dest=$corpus/images/debian-$up; mkdir -p "$dest"
  mkdir -p "$corpus/licenses"
  cp "$x/usr/share/doc/ovmf/copyright" "$corpus/licenses/debian-ovmf-$up.copyright"
  debsha=$(sha256sum "$deb" | cut -d' ' -f1)
  for f in ${files[$up]}; do
    cp "$x/usr/share/OVMF/$f" "$dest/$f"
    sha=$(sha256sum "$dest/$f" | cut -d' ' -f1)
    entries+=("{\"path\": \"images/debian-$up/$f\", \"package\": \"ovmf\", \"version\": \"$ver\", \"suite\": \"${suite[$up]}\", \"package_file\": \"$(basename "$deb")\", \"package_sha256\": \"$debsha\", \"source_path\": \"/usr/share/OVMF/$f\", \"sha256\": \"$sha\", \"size\": $(stat -c %s "$dest/$f"), \"license\": \"licenses/debian-ovmf-$up.copyright\"}")
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
