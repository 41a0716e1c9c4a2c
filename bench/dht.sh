#!/usr/bin/env bash
# DHT lookups at scale: builds hopwire-bench (release) and runs
# `hopwire-bench dht` over simulated networks (memory transport, one
# process), then prints a table. Options: --sizes 100,1000,5000
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
print(f"{\"nodes\":>6} {\"exits\":>5} {\"found\":>6} {\"median ms\":>10} {\"p95 ms\":>8} {\"requests\":>9} {\"KiB/node\":>9} {\"settle s\":>9}")
for r in d["sizes"]:
    print(f"{r[\"nodes\"]:>6} {r[\"exits\"]:>5} {r[\"exits_found_per_lookup\"]:>6.1f} {r[\"lookup_ms_median\"]:>10.1f} {r[\"lookup_ms_p95\"]:>8.1f} {r[\"requests_per_lookup\"]:>9.1f} {r[\"rss_per_node_kib\"]:>9.1f} {r[\"settle_s\"]:>9.1f}")
print("requests per lookup fitted:", d["fit_requests_per_lookup"]["curve"])
'
