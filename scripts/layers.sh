#!/usr/bin/env bash
# Checks the crate layers with `cargo tree` (normal dependencies, the whole
# tree): the sans-IO protocol crate pulls in no async runtime, QUIC, libp2p,
# sled or socket crate, and no crate depends on a layer above it (see
# "Layers" in DESIGN.md and each crate's opening doc).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# crate  forbidden dependency (anywhere in its tree)...
check() {
    local crate=$1
    shift
    local tree
    tree=$(cargo tree --offline -q -p "$crate" -e normal --prefix none --no-dedupe | awk '{print $1}' | sort -u)
    for bad in "$@"; do
        if grep -qx "$bad" <<<"$tree"; then
            echo "layers: $crate depends on $bad (see its crate doc)" >&2
            cargo tree --offline -q -p "$crate" -e normal -i "$bad" >&2 || true
            fail=1
        fi
    done
}

ours=(hopwire-proto hopwire-net hopwire-sys hopwire-api hopwire-client hopwire-node-runtime)
check hopwire-proto tokio quinn quinn-proto libp2p sled socket2 tun-rs mio "${ours[@]:1}"
check hopwire-sys "${ours[@]:0:1}" hopwire-net hopwire-api hopwire-client hopwire-node-runtime
check hopwire-net hopwire-sys hopwire-api hopwire-client hopwire-node-runtime
check hopwire-api hopwire-net hopwire-sys hopwire-client hopwire-node-runtime quinn libp2p sled
check hopwire-client hopwire-sys hopwire-node-runtime
check hopwire-node-runtime hopwire-client hopwire-api
# The desktop app asks the daemon; it never links the tunnel.
check hopwire-gui hopwire-net hopwire-sys hopwire-client hopwire-node-runtime quinn libp2p sled tun-rs
# The mobile bindings: the OS is the host's (no sys), and no node roles.
check hopwire-ffi hopwire-sys hopwire-node-runtime

if [ "$fail" -ne 0 ]; then
    exit 1
fi
echo "layers: ok (proto is sans-IO; no crate depends on a layer above it)"
