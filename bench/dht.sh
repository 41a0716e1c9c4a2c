#!/usr/bin/env bash
# DHT lookups at scale: builds hopwire-bench (release) and runs
# `hopwire-bench dht` over simulated networks (memory transport, one
# process), then prints a table for both searches (Enough: what connect
# uses; All: what `hopwire nodes` uses). Options: --sizes 100,1000,5000
# --lookups 50 --json FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=100,1000,5000 lookups=50 json=
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes=$2; shift 2 ;;
        --lookups) lookups=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        *) echo "usage: $0 [--sizes LIST] [--lookups N] [--json FILE]" >&2; exit 2 ;;
    esac
done
cargo build --workspace --release --bins
out=$(target/release/hopwire-bench dht --sizes "$sizes" --lookups "$lookups")
[ -n "$json" ] && printf '%s\n' "$out" > "$json"
printf '%s\n' "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
cols = ("nodes", "search", "exits", "found", "prov. med ms", "prov. p95 ms", "prov. req", "all med ms", "all p95 ms", "all req", "join ms", "KiB/node")
print("%6s %7s %5s %6s %12s %12s %9s %10s %10s %8s %8s %9s" % cols)
for r in d["sizes"]:
    for mode in ("enough", "all"):
        m = r[mode]
        print("%6d %7s %5d %6.1f %12.1f %12.1f %9.1f %10.1f %10.1f %8.1f %8.1f %9.1f" % (r["nodes"], mode, r["exits"], m["exits_found_per_lookup"],
              m["provider_ms_median"], m["provider_ms_p95"], m["provider_requests_per_lookup"],
              m["lookup_ms_median"], m["lookup_ms_p95"], m["requests_per_lookup"], m["client_join_ms_median"], r["rss_per_node_kib"]))
for mode in ("enough", "all"):
    print("provider requests per lookup fitted (%s):" % mode, d["fit"][mode]["provider_requests_per_lookup"]["curve"])
'
