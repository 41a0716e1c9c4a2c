#!/usr/bin/env bash
# Installs what Hopwire's demo, tests and benchmarks need on Debian 12, then
# builds the workspace. Idempotent: installs only packages that are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  iproute2 nftables iputils-ping curl python3 coreutils procps
  iperf3 wireguard-go wireguard-tools jq util-linux tcpdump
  # The desktop app (Tauri 2 on WebKitGTK) and its window tests.
  build-essential pkg-config libwebkit2gtk-4.1-dev libgtk-3-dev
  libayatana-appindicator3-dev librsvg2-dev xvfb webkit2gtk-driver
  imagemagick x11-utils
  # The mobile bindings' tests: pytest for Python, JNA for Kotlin on the JVM.
  python3-pytest libjna-java
  # The Debian packages (lintian; strace for the units' system-call filter) and the node's container image (podman
  # on runc, a Debian root file system from mmdebstrap).
  lintian podman runc mmdebstrap strace
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and the tests use network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The window test drives the desktop app through WebDriver.
if ! command -v tauri-driver >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/tauri-driver" ]; then
  echo "setup: installing tauri-driver 2.1.0"
  cargo install tauri-driver --version 2.1.0 --locked --quiet
fi

# The Debian packages are built with cargo-deb.
if ! command -v cargo-deb >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/cargo-deb" ]; then
  echo "setup: installing cargo-deb 3.8.0"
  cargo install cargo-deb --version 3.8.0 --locked --quiet
fi

# The desktop app embeds its front end: build it before the workspace.
echo "setup: building the desktop app's front end (client-gui)"
(cd client-gui && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)

# kotlinc (with the Kotlin stdlib and kotlinx-coroutines) for the JVM tests
# of the Kotlin bindings.
echo "setup: installing kotlinc for the Kotlin bindings' tests (ffi/tests/kotlin)"
(cd ffi/tests/kotlin && npm ci --no-audit --no-fund --loglevel=error)

# The pinned Solidity compiler (for the check that the committed contract
# build is current) and anvil, the local EVM chain the tests and
# `hopwire testnet --ledger evm` run.
echo "setup: installing solc and anvil for the EVM ledger (contracts)"
(cd contracts && npm ci --no-audit --no-fund --loglevel=error)

echo "setup: building the workspace"
cargo build --workspace --lib --bins --tests --examples --quiet
