#!/usr/bin/env bash
# The mobile library's costs: its stripped size, the memory of a connected
# 3-hop session, and throughput through it against the daemon's on the
# same testnet (see bench/ffi.py). Release build. Run as root.
#   bench/ffi.sh [--size-mb N] [--rounds N] [--json FILE]
# Targets: < 20 MB of library, < 30 MiB resident for a connected session.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/ffi.sh: run as root (the testnet uses namespaces)" >&2; exit 1; }
cargo build --release --workspace --lib --bins --quiet
/usr/bin/python3 bench/ffi.py --target-dir "${CARGO_TARGET_DIR:-target}" "$@"
