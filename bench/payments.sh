#!/usr/bin/env bash
# Payment overhead: downloads through a 3-hop testnet circuit with payments
# on (every node charges, the client pays each hop per chunk) and off
# (`hopwire testnet --free`), alternating, and reports the download rate of
# each and the bytes of payment messages per GiB carried. Needs root.
# Options: --runs N (per mode, default 3) --size-mb N (default 256)
# --loss PCT (drop that share of the UDP packets reaching the client during
# each download, a lossy last mile; default 0) --json FILE --release (build
# and use release binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 size=256 loss=0 json= profile=debug
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --size-mb) size=$2; shift 2 ;;
        --loss) loss=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --release) profile=release; shift ;;
        *) echo "usage: $0 [--runs N] [--size-mb N] [--loss PCT] [--json FILE] [--release]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/payments.sh needs root (namespaces)" >&2; exit 1; }
if [ "$profile" = release ]; then cargo build --release --bins; else cargo build --bins; fi
hopwire="target/$profile/hopwire"
out=$(mktemp -d)
trap '"$hopwire" testnet --down --prefix hwpay >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
for i in $(seq 1 "$runs"); do
    for mode in paid free; do
        extra=()
        [ "$mode" = free ] && extra=(--free)
        "$hopwire" testnet --json --prefix hwpay --size-mb "$size" --hops 3 --exits 1 --loss "$loss" "${extra[@]}" \
            > "$out/$mode-$i.json"
        echo "run $i $mode: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["download"]["mbit_per_s"], "Mbit/s")' "$out/$mode-$i.json")" >&2
    done
done
python3 - "$out" "$runs" "$json" <<'PY'
import json, statistics, sys
out, runs, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(mode):
    return [json.load(open(f"{out}/{mode}-{i}.json")) for i in range(1, runs + 1)]
paid, free = load("paid"), load("free")
rate = lambda rs: statistics.median(r["download"]["mbit_per_s"] for r in rs)
per_gib = []
for r in paid:
    carried = sum(p["bytes"] for p in r["payments"]) / len(r["payments"])
    per_gib.append(r["payment_bytes"] / (carried / 2**30))
result = {
    "runs_per_mode": runs,
    "size_mb": paid[0]["download"]["bytes"] / 2**20,
    "mbit_per_s_paid": rate(paid),
    "mbit_per_s_free": rate(free),
    "throughput_cost_percent": 100 * (1 - rate(paid) / rate(free)),
    "payment_bytes_per_gib": statistics.median(per_gib),
    "payment_bytes_percent": 100 * statistics.median(per_gib) / 2**30,
    "loss_percent": paid[0]["loss_percent"],
    "all_hops_within_prepaid": all(p["within_prepaid"] for r in paid for p in r["payments"]),
    # A circuit lost and rebuilt during a download leaves its payments in
    # `spent` but not in the last circuit's `payments`.
    "one_circuit_per_download": all(r["spent"] == sum(p["paid"] for p in r["payments"]) for r in paid),
    # What the client counted as sent back by each hop and lost, of its bytes.
    "lost_percent_of_bytes": statistics.median(100 * p["lost"] / p["bytes"] for r in paid for p in r["payments"]),
    "paid_runs_mbit_per_s": [r["download"]["mbit_per_s"] for r in paid],
    "free_runs_mbit_per_s": [r["download"]["mbit_per_s"] for r in free],
    # Run i paid against run i free (they ran back to back).
    "pair_cost_percent": [round(100 * (1 - p["download"]["mbit_per_s"] / f["download"]["mbit_per_s"]), 1)
                          for p, f in zip(paid, free)],
}
print(json.dumps(result, indent=2))
if dest:
    open(dest, "w").write(json.dumps(result) + "\n")
PY
