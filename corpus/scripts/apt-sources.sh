#!/usr/bin/env bash
# Make Debian's bookworm sources and trixie's (binary + source, pinned low) visible to apt.
# Idempotent; needs root. Used by .ci/run and by the corpus scripts.
set -euo pipefail
changed=0
src=/etc/apt/sources.list.d/ovmftool-debian.sources
if [ ! -f "$src" ]; then
  cat > "$src" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  changed=1
fi
pin=/etc/apt/preferences.d/ovmftool-trixie
if [ ! -f "$pin" ]; then
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > "$pin"
  changed=1
fi
stamp=/var/lib/apt/lists/.ovmftool-updated
if [ "$changed" = 1 ] || [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
  apt-get update -qq
  touch "$stamp"
fi
