#!/usr/bin/env bash
# Generates the Kotlin, Swift and Python bindings of hopwire-ffi from the
# built library (UniFFI library mode, with the uniffi-bindgen of the same
# pinned release) into ffi/bindings/, where they are committed.
#   ffi/generate.sh           write them
#   ffi/generate.sh --check   fail if the committed ones differ from what
#                             the library generates (run by scripts/test.sh)
# Builds the workspace first (a no-op when it is fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
cargo build --workspace --quiet
target=${CARGO_TARGET_DIR:-target}
lib=$target/debug/libhopwire_ffi.so
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for language in kotlin swift python; do
    "$target/debug/uniffi-bindgen" generate "$lib" --language "$language" --no-format \
        --out-dir "$out/$language" >/dev/null
done
if $check; then
    if ! diff -r ffi/bindings "$out" >"$out.diff"; then
        head -40 "$out.diff" >&2
        rm -f "$out.diff"
        echo "ffi/generate.sh: the committed bindings do not match the library; run ffi/generate.sh and commit ffi/bindings" >&2
        exit 1
    fi
    rm -f "$out.diff"
    echo "ffi bindings: match the library"
else
    rm -rf ffi/bindings
    cp -r "$out" ffi/bindings
    echo "ffi bindings written to ffi/bindings/"
fi
