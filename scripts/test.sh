#!/usr/bin/env bash
# The whole test suite: unit tests and end-to-end tests over real network
# namespaces, TUN devices and processes. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "test: cargo fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "test: running the suite"
cargo nextest run --workspace --no-fail-fast
