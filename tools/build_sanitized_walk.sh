#!/usr/bin/env bash
# Build the native walk (ovmftool/scan/_walk.c) with AddressSanitizer and UndefinedBehaviorSanitizer
# into a directory of its own, for tools/atheris_fuzz.py --sanitized. The installed extension
# (ovmftool/scan/_walk*.so, built by setup.py) is never touched.
#
#   bash tools/build_sanitized_walk.sh [OUT_DIR]      # default: build/sanitized-walk
#
# Writes OUT_DIR/_walk<EXT_SUFFIX> (the same module, PyInit__walk), OUT_DIR/build.json (compiler,
# flags, the source's sha256) and prints the .so's path. CC picks the compiler; by default clang
# when it is installed (apt-get install clang libclang-rt-dev, its sanitizer runtimes): it adds
# -fsanitize=fuzzer-no-link, so libFuzzer also sees the C walk's edges, not only the Python
# code's. With gcc the sanitizers are the same but the C code gives libFuzzer no coverage.
#
# The sanitizer runtime is not linked in: the fuzz run preloads atheris' asan_with_fuzzer.so (ASan,
# UBSan and libFuzzer in one library), as atheris documents for native extensions:
#   LD_PRELOAD="$(python3 -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
# tools/atheris_fuzz.py --sanitized does that, loads this .so as ovmftool.scan._walk (importlib,
# before anything imports the installed one) and sets ASAN_OPTIONS/UBSAN_OPTIONS.
# UBSan does not recover (-fno-sanitize-recover=all): its first report aborts the run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/build/sanitized-walk}"
PY="${PYTHON:-python3}"
SRC="$ROOT/ovmftool/scan/_walk.c"

if [ -z "${CC:-}" ]; then
  if command -v clang >/dev/null 2>&1; then CC=clang; else CC=gcc; fi
fi
INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
SUFFIX="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"

FLAGS=(-std=c11 -O1 -g -fPIC -shared -fno-omit-frame-pointer
  -fsanitize=address,undefined -fno-sanitize-recover=all)
if "$CC" --version 2>/dev/null | grep -qi clang; then
  FLAGS+=(-fsanitize=fuzzer-no-link)
  COVERAGE=libfuzzer
else
  COVERAGE=none
fi

mkdir -p "$OUT"
SO="$OUT/_walk$SUFFIX"
TMP="$SO.tmp.$$"
"$CC" "${FLAGS[@]}" -I"$INCLUDE" "$SRC" -o "$TMP"
mv -f "$TMP" "$SO"
SHA="$(sha256sum "$SRC" | cut -d' ' -f1)"
CCV="$("$CC" --version | head -n1)"
"$PY" - "$OUT/build.json" "$SO" "$SHA" "$CCV" "$COVERAGE" "${FLAGS[@]}" <<'EOF'
import json, sys
out, so, sha, cc, cov, *flags = sys.argv[1:]
doc = {"so": so, "source_sha256": sha, "compiler": cc, "c_coverage": cov, "flags": flags}
open(out, "w").write(json.dumps(doc, indent=1) + "\n")
EOF
echo "$SO"
