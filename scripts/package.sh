#!/usr/bin/env bash
# Builds Hopwire's two Debian packages with cargo-deb and checks them:
#   hopwire       the client daemon (unit), the CLI, the desktop app
#   hopwire-node  the node (unit and exit drop-in)
# into target/deb/, and a newer build of the same (the next Debian
# revision) into target/deb/upgrade/ for the upgrade test. Then:
# lintian with no errors, and the units' hardening held to the exposure thresholds
# below (systemd-analyze security --offline; 0 is the safest, 10 the
# least safe). Installing them is tests/tests/packaging.rs (in test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# The binaries are built with the release profile (thin LTO).
cargo build --release --locked -p hopwire -p hopwire-node -p hopwire-gui

# The manual pages: the commands' from their own help (clap_mangen), the
# desktop app's written by hand; the packages' assets take them from here.
rm -rf target/release/man
mkdir -p target/release/man/hopwire target/release/man/hopwire-node
target/release/hopwire man target/release/man/hopwire
target/release/hopwire-node man target/release/man/hopwire-node
cp packaging/man/hopwire-gui.1 target/release/man/hopwire/
gzip -9n target/release/man/*/*.1

# The version is the workspace's; the upgrade build is its next revision.
version=$(cargo metadata --no-deps --format-version 1 --locked |
  jq -r '.packages[] | select(.name == "hopwire-node") | .version')
rm -rf target/deb
mkdir -p target/deb/upgrade
for revision in 1 2; do
  out=target/deb
  [ "$revision" = 2 ] && out=target/deb/upgrade
  for package in hopwire hopwire-node; do
    cargo deb --no-build --locked -p "$package" --deb-version "$version-$revision" \
      --strip --fast --output "$out/" >/dev/null
  done
done
for deb in target/deb/*.deb; do
  echo "package: $(basename "$deb"): $(du -h "$deb" | cut -f1) ($(dpkg-deb -f "$deb" Installed-Size) KiB installed)"
done

echo "package: lintian (errors fail; warnings are shown)"
lintian --fail-on error --profile debian target/deb/*.deb

echo "package: unit hardening (systemd-analyze security --offline; lower is safer)"
exposure() { # unit-file threshold (as systemd-analyze prints it, 0.0-10.0)
  local out
  # --threshold counts in tenths.
  if ! out=$(systemd-analyze security --offline=true --threshold="${2/./}" "$1" 2>&1); then
    echo "$out" | grep '✗' >&2 || true
    echo "package: $(basename "$1") is more exposed than $2" >&2
    exit 1
  fi
  echo "  $(echo "$out" | grep 'Overall exposure') (threshold $2)"
}
exposure packaging/systemd/hopwire.service 2.2
exposure packaging/systemd/lockdown/hopwire-lockdown.service 1.9
exposure packaging/systemd/hopwire-node.service 1.4
# The exit: the node's unit with its drop-in.
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
mkdir -p "$units/hopwire-node.service.d"
cp packaging/systemd/hopwire-node.service "$units/"
cp packaging/systemd/hopwire-node-exit.conf "$units/hopwire-node.service.d/exit.conf"
exposure "$units/hopwire-node.service" 2.1
