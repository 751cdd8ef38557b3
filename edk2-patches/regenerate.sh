#!/usr/bin/env bash
# Regenerate the verified patch series in this directory from Debian's edk2 source trees.
#   edk2-patches/regenerate.sh [--verify] [CONFIG...]
# CONFIG is VERSION:DSC, e.g. 2022.11:OvmfPkg/OvmfPkgX64.dsc; default: the four Debian ones below;
# oxide-202105:OvmfPkg/OvmfPkgX64.dsc is Oxide's fork (-D FD_SIZE_2MB -D MPT_SCSI_ENABLE=FALSE).
# --verify builds each patched tree (DEBUG, -D SECURE_BOOT_ENABLE=TRUE, as Debian's Shell patch needs),
# scans it and boots it; the unpatched build from corpus/scripts/build-ovmf.sh gives the "before"
# count; where the series unrolls (the DSC switch alone is no fix), a build with the DSC switched
# to the non-Sev IoLib measures what that switch removes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scripts=$here/../corpus/scripts
verify=0
if [ "${1:-}" = "--verify" ]; then verify=1; shift; fi
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(2022.11:OvmfPkg/OvmfPkgX64.dsc 2022.11:OvmfPkg/OvmfPkgIa32X64.dsc
                                     2025.02:OvmfPkg/OvmfPkgX64.dsc 2025.02:OvmfPkg/OvmfPkgIa32X64.dsc)
for c in "${configs[@]}"; do
  ver=${c%%:*}; dsc=${c#*:}
  case "$ver" in
    oxide-202105)  # Oxide's fork, as its illumos/build.sh builds it (propolis' firmware)
      tree=$(bash "$scripts/oxide-source.sh"); defs=(-D FD_SIZE_2MB -D MPT_SCSI_ENABLE=FALSE)
      out=$here/oxide-edk2-stable202105/$(basename "$dsc" .dsc) ;;
    *)
      tree=$(bash "$scripts/edk2-source.sh" "$ver"); defs=(-D SECURE_BOOT_ENABLE=TRUE)
      out=$here/debian-$ver/$(basename "$dsc" .dsc) ;;
  esac
  rm -rf "$out"; mkdir -p "$(dirname "$out")"
  args=(plan --edk2 "$tree" --dsc "$dsc" "${defs[@]}" -o "$out")
  if [ "$verify" = 1 ]; then
    before=$(bash "$scripts/build-ovmf.sh" "$ver" "$dsc" DEBUG "${defs[@]}")/FV/OVMF_CODE.fd
    args+=(--verify --before "$before" --target DEBUG)
    python3 -m ovmftool plan --edk2 "$tree" --dsc "$dsc" "${defs[@]}" -o "$out.probe" > /dev/null
    if grep -q '"strategy": "unroll"' "$out.probe/plan.json"; then args+=(--measure-dsc-switch); fi
    rm -rf "$out.probe"
  fi
  python3 -m ovmftool "${args[@]}" > /dev/null
  # the patched image is evidence, not source: keep its hash (in plan.json), not the file
  rm -f "$out"/*.patched.fd
  echo "$out"
done
