#!/usr/bin/env bash
# Builds the `alcove` Python wheel (abi3, CPython >= 3.9) with the `alcove`
# executable inside it (alcove/bin/alcove: the program that runs each
# sandbox's process), so `pip install` of the wheel is all a user needs.
#
# Usage: crates/python/build-wheel.sh [--release] OUT_DIR [PYTHON]
#   OUT_DIR  where the .whl goes
#   PYTHON   the interpreter whose maturin builds it (default: python3)
set -euo pipefail
# Paths given relative to the caller's directory.
abspath() { case "$1" in /*) echo "$1" ;; */*) echo "$PWD/$1" ;; *) command -v "$1" ;; esac; }
profile=debug
cargo_flags=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    cargo_flags=(--release)
    shift
fi
out=${1:?usage: build-wheel.sh [--release] OUT_DIR [PYTHON]}
python=$(abspath "${2:-python3}")
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")"
target=${CARGO_TARGET_DIR:-$(cd ../.. && pwd)/target}

cargo build "${cargo_flags[@]}" -p alcove --bin alcove
bundled=python/alcove/bin
mkdir -p "$bundled"
trap 'rm -rf "$bundled"' EXIT
cp "$target/$profile/alcove" "$bundled/alcove"
chmod 0755 "$bundled/alcove"
"$python" -m maturin build "${cargo_flags[@]}" -o "$out" -i "$python" --quiet
