#!/usr/bin/env bash
# Settlement on an EVM chain: what it costs and how often it happens.
#
# 1. Gas of each contract operation (core/net/examples/evm_gas.rs, on a
#    local anvil): approve (once per client), open, top-up, settle (first to
#    a payee, first of a channel, later), start close, finalize.
# 2. Client sessions of --size-mb (default 1024) through a fixed 3-hop path
#    of a `hopwire testnet --ledger evm` (2 relays and 1 exit, so every
#    session takes the same hops): the on-chain transactions of each session
#    by kind, and what settling cost as a share of what the hops earned, at
#    the chain's measured gas price and at a stated one (--gas-gwei, default
#    1), with the nodes' default settle threshold (100 x the fee).
#
# Needs root (namespaces). Options: --sessions N (default 3) --size-mb N
# --deposit-mib N (default 4096: a channel outlives several sessions)
# --gas-gwei G --json FILE --release.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=3 size=1024 deposit=4096 gwei=1 json= profile=debug
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) sessions=$2; shift 2 ;;
        --size-mb) size=$2; shift 2 ;;
        --deposit-mib) deposit=$2; shift 2 ;;
        --gas-gwei) gwei=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --release) profile=release; shift ;;
        *) echo "usage: $0 [--sessions N] [--size-mb N] [--deposit-mib N] [--gas-gwei G] [--json FILE] [--release]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/settlement.sh needs root (namespaces)" >&2; exit 1; }
flag=()
[ "$profile" = release ] && flag=(--release)
cargo build -q "${flag[@]}" --workspace --bins --examples
bin="target/$profile"
prefix=hwset
out=$(mktemp -d)
trap '"$bin/hopwire" testnet --down --prefix $prefix >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

echo "gas per operation (local anvil) ..." >&2
"$bin/examples/evm_gas" > "$out/ops.json"

echo "session 1: the testnet's own download of $size MiB ..." >&2
"$bin/hopwire" testnet --keep --json --prefix $prefix --ledger evm --exits 1 --relays 2 --hops 3 \
    --size-mb "$size" --deposit-mib "$deposit" > "$out/testnet.json"
get() { python3 -c "import json,sys; d=json.load(open('$out/testnet.json')); print($1)"; }
socket=$(get 'd["client"]["socket"]')
nodes=$(get 'd["nodes_file"]')
ledger=$(get 'd["ledger"]["addr"]')
url=$(get 'd["download"]["url"]')
accounts=$(get '" ".join("--account 0x" + n["payout"][24:] for n in d["nodes"] if n.get("payout"))')
stats() {
    # shellcheck disable=SC2086
    ip netns exec $prefix-boot "$bin/hopwire-node" chain-stats --ledger "$ledger" $accounts
}
settles() { stats | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["gas"].get("settle", [])))'; }
# A session ends: the client disconnects, and the hops settle what it paid
# them (once its circuit is gone; the testnet's nodes look every 2 s).
end_session() {
    local n=$1 before
    before=$(settles)
    "$bin/hopwire" --socket "$socket" disconnect >/dev/null
    for _ in $(seq 1 40); do
        [ "$(settles)" -ge $((before + 3)) ] && break
        sleep 0.5
    done
    stats > "$out/after-$n.json"
}
stats > "$out/after-0-before.json"
end_session 1
for s in $(seq 2 "$sessions"); do
    echo "session $s: $size MiB through the same hops ..." >&2
    "$bin/hopwire" --socket "$socket" connect --hops 3 --nodes "$nodes" >/dev/null
    ip netns exec $prefix-client curl -sS --fail --max-time 600 -o /dev/null "$url"
    end_session "$s"
done

python3 - "$out" "$sessions" "$size" "$gwei" "$deposit" "$json" <<'PY'
import json, sys
out, sessions, size, gwei, deposit, dest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
ops = json.load(open(f"{out}/ops.json"))
for k in ("client_log", "node_log"):
    ops.pop(k)
testnet = json.load(open(f"{out}/testnet.json"))
UNIT_VALUE_WEI = 500_000_000  # the testnet's pay.unit_value_wei
def counts(stats):
    return {k: len(v) for k, v in stats["gas"].items()}
# Session 1 counts from the freshly deployed chain (its opens came before
# the first snapshot); deploys and the testnet's minting are not sessions'.
first = json.load(open(f"{out}/after-1.json"))
start = {"gas": {}, "balances": {a: 0 for a in first["balances"]}}
prev, rows = start, []
for s in range(1, sessions + 1):
    cur = json.load(open(f"{out}/after-{s}.json"))
    before, after = counts(prev), counts(cur)
    txs = {k: after.get(k, 0) - before.get(k, 0) for k in after if k not in ("deploy", "mint_or_transfer")}
    txs = {k: v for k, v in txs.items() if v}
    earned = sum(cur["balances"].values()) - sum(prev["balances"].values())
    rows.append({"session": s, "transactions": txs, "total": sum(txs.values()), "settled_units": earned})
    prev = cur
final = prev
settle_gas = sum(final["gas"].get("settle", []))
settled_units = sum(final["balances"].values()) - sum(start["balances"].values())
earned_wei = settled_units * UNIT_VALUE_WEI
measured_price = final["last_gas_price_wei"]
share = lambda price: 100 * settle_gas * price / earned_wei if earned_wei else None
hops = 3
# At the stated price the nodes' policy settles a channel once it owes more
# than 100 x the fee: each hop then settles every k sessions, and the fee is
# that share of what it collected (what would have happened; modelled from
# the measured gas and earnings, not run).
settle_avg = settle_gas / len(final["gas"].get("settle", [1]))
per_hop = {a: (final["balances"][a] - start["balances"][a]) / sessions for a in final["balances"]}
stated_wei = gwei * 1e9
modelled = {}
for a, earned in per_hop.items():
    if earned <= 0:
        continue
    fee_units = settle_avg * stated_wei / UNIT_VALUE_WEI
    k = max(1, -(-100 * fee_units // earned))
    modelled[a] = {"earned_per_session": earned, "fee_units": round(fee_units), "settles_every_sessions": int(k),
                   "fee_share_percent": round(100 * fee_units / (k * earned), 3)}
result = {
    "gas_per_operation": ops,
    "session_mib": size,
    "deposit_mib": deposit,
    "sessions": rows,
    "transactions_per_hop_per_session_after_the_first": max(r["total"] for r in rows[1:]) / hops if len(rows) > 1 else None,
    "settle_gas_total": settle_gas,
    "settled_units_total": settled_units,
    "unit_value_wei": UNIT_VALUE_WEI,
    "measured_gas_price_wei": measured_price,
    "fee_share_percent_at_measured_price": share(measured_price),
    "stated_gas_gwei": gwei,
    "at_stated_price_per_hop_modelled": modelled,
    "nodes_settle_when_owed_exceeds": "100 x the fee (settle_fee_multiple), and once the session ended",
}
print(json.dumps(result, indent=2))
if dest:
    with open(dest, "w") as f:
        json.dump(result, f, indent=2)
PY
