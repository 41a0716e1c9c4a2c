#!/usr/bin/env bash
# The whole test suite: formatting and lints, a bounded fuzzing pass, unit
# and pair tests, and end-to-end tests over real network namespaces, TUN
# devices and processes. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "test: cargo fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "test: crate layers"
./scripts/layers.sh
echo "test: a short fuzzing pass over every peer-facing parser"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" ./scripts/fuzz.sh
echo "test: the desktop app's front end (typecheck, screens with the IPC mocked)"
(cd client-gui && npm run --silent typecheck && npm test --silent)
echo "test: the payment-channel contract (the committed ABI and bytecode are what the pinned solc makes)"
(cd contracts && npm run --silent check)
echo "test: the mobile bindings (generated sources match the library; Python against the real library)"
./ffi/generate.sh --check
# Debian's Python, which has Debian's pytest (a pyenv python3 may shadow it).
/usr/bin/python3 -m pytest -q -p no:cacheprovider ffi/tests/python
echo "test: the Debian packages (built, lintian, unit hardening; installed by the packaging tests)"
./scripts/package.sh
echo "test: unit, pair and end-to-end tests"
cargo nextest run --workspace --no-fail-fast
