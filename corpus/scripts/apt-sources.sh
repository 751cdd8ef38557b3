#!/usr/bin/env bash
# Make Debian's bookworm sources and trixie's (binary + source, pinned low) visible to apt.
#   apt-sources.sh [sid|bullseye]...
# An extra suite named on the command line gets its deb-src (source packages only: nasm 3.01 and
# edk2 2026.08 from sid, edk2 2020.11 from bullseye), pinned at priority 50 so that nothing is
# upgraded from it; a suite whose deb-src apt already has (from any sources file) is left alone.
# Idempotent; needs root. Used by .ci/run (no suite) and by the corpus scripts.
set -euo pipefail
changed=0
for suite in "$@"; do
  case "$suite" in sid|bullseye) ;; *) echo "apt-sources.sh: unknown suite $suite" >&2; exit 2 ;; esac
  if ! apt-get indextargets --no-release-info --format '$(RELEASE) $(TARGET_OF)' | grep -qx "$suite deb-src"; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$suite" > "/etc/apt/sources.list.d/ovmftool-$suite-src.sources"
    changed=1
  fi
  if ! grep -qsx "Pin: release n=$suite" /etc/apt/preferences.d/*; then
    printf 'Package: *\nPin: release n=%s\nPin-Priority: 50\n' "$suite" > "/etc/apt/preferences.d/ovmftool-$suite"
    changed=1
  fi
done
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
