#!/usr/bin/env bash
# The CI report readers the tests check ovmftool's output with, installed from the registries:
#   - Microsoft's SARIF multitool (npm @microsoft/sarif-multitool, a self-contained binary), into
#     $OVMFTOOL_CACHE/tools/sarif-multitool (tests/ci_consumers.py finds it there);
#   - Jenkins' junit-10.xsd, as shipped in pytest's source distribution (PyPI; MIT), into
#     $OVMFTOOL_CACHE/tools/xsd/junit-10.xsd.
# actionlint, zizmor, junitparser, lxml and sarif-tools come with the test extras (pyproject).
# Idempotent; a reader that cannot be installed is reported and its tests skip, saying so.
set -uo pipefail
cache="${OVMFTOOL_CACHE:-$HOME/.cache/ovmftool}/tools"
mkdir -p "$cache"
SMT_VERSION=5.7.0
PYTEST_SDIST=9.2.0

smt="$cache/sarif-multitool"
bin="$smt/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool"
if [ ! -x "$bin" ]; then
  if command -v npm >/dev/null; then
    mkdir -p "$smt"
    (cd "$smt" && npm install --silent --no-audit --no-fund "@microsoft/sarif-multitool@$SMT_VERSION" >/dev/null 2>&1) \
      && chmod u+x "$bin" 2>/dev/null || echo "consumers.sh: could not install sarif-multitool" >&2
  else
    echo "consumers.sh: no npm: sarif-multitool not installed" >&2
  fi
fi

xsd="$cache/xsd/junit-10.xsd"
if [ ! -s "$xsd" ]; then
  tmp=$(mktemp -d)
  if python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "pytest==$PYTEST_SDIST" >/dev/null 2>&1; then
    mkdir -p "$(dirname "$xsd")"
    tar -xzf "$tmp/pytest-$PYTEST_SDIST.tar.gz" -C "$tmp" "pytest-$PYTEST_SDIST/testing/example_scripts/junit-10.xsd" \
      && cp "$tmp/pytest-$PYTEST_SDIST/testing/example_scripts/junit-10.xsd" "$xsd.part" && mv "$xsd.part" "$xsd"
  else
    echo "consumers.sh: could not fetch pytest's source distribution (junit-10.xsd)" >&2
  fi
  rm -rf "$tmp"
fi
echo "consumers.sh: sarif-multitool $( [ -x "$bin" ] && echo ready || echo missing ), junit-10.xsd $( [ -s "$xsd" ] && echo ready || echo missing )"
