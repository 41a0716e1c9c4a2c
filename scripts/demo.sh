#!/usr/bin/env bash
# The local testnet demo: installs what is missing, builds, then runs
# `hopwire testnet` (a client, an exit and a pretend internet in network
# namespaces; downloads a file through the tunnel and tears it all down).
# Extra arguments go to `hopwire testnet` (e.g. --keep, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec target/debug/hopwire testnet "$@"
