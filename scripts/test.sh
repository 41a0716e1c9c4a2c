#!/usr/bin/env bash
# The whole test suite: formatting and lints, a bounded fuzzing pass, unit
# and pair tests, and end-to-end tests over real network namespaces, TUN
# devices and processes. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step says when it starts: where a cold run's time goes.
step() { echo "test: $* (at $((SECONDS / 60)) min $((SECONDS % 60)) s)"; }
step "setup: packages, tools and the build"
./scripts/setup.sh
step "cargo fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "crate layers"
./scripts/layers.sh
step "a short fuzzing pass over every peer-facing parser"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" ./scripts/fuzz.sh
step "the desktop app's front end (typecheck, screens with the IPC mocked)"
(cd client-gui && npm run --silent typecheck && npm test --silent)
step "the payment-channel contract (the committed ABI and bytecode are what the pinned solc makes)"
(cd contracts && npm run --silent check)
step "the mobile bindings (generated sources match the library; Python against the real library)"
./ffi/generate.sh --check
# Debian's Python, which has Debian's pytest (a pyenv python3 may shadow it).
/usr/bin/python3 -m pytest -q -p no:cacheprovider ffi/tests/python
step "the Debian packages (built, lintian, unit hardening; installed by the packaging tests)"
# Built here without LTO or debug info: the same packages, installed and
# checked the same way, 4 of 12 minutes sooner on two cores. A release is
# `./scripts/package.sh` alone (thin LTO).
CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 \
    ./scripts/package.sh
step "unit, pair and end-to-end tests"
cargo nextest run --workspace --no-fail-fast
step "done"
