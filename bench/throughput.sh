#!/usr/bin/env bash
# bench/throughput.sh — TCP throughput (download and upload) and round trip
# of several paths on one namespace topology, in interleaved rounds: the bare
# veth path; two userspace WireGuard anchors between the client and the exit
# namespace (wireguard-go and boringtun-cli, with nftables masquerade in the
# exit, as Hopwire does); a stock WireGuard client (wireguard-go) through the
# Hopwire exit's plain-WireGuard mode; and Hopwire circuits of 1 and 3 hops
# (and 2 with --hops) with the nodes charging (paid) and free, as
# interleaved pairs on two testnets. Per row: the median and spread over
# rounds, CPU seconds per Gbit of the tunnel's processes and of the busiest
# one. Plus circuit build time per hop count and relay memory per idle
# circuit (with bench/circuits, the hopwire-bench tool), once. See
# bench/README.md.
#
# It needs root, installs only boringtun-cli (cargo install, when missing),
# and removes every namespace, process, device and nftables table it created
# when it exits (normally, on failure, or on Ctrl-C). It never sends traffic
# outside the namespaces it uses.

set -uo pipefail

# ---------------------------------------------------------------- defaults

SECONDS_PER_TEST=10
PINGS=20
PARALLEL=1
ROUNDS=3
JSON_OUT=""
USE_HOPWIRE=1
PREFIX="hwbench"
SIZE_MB=""
PROFILE="debug"
HOPS_LIST="1 3"     # circuit lengths to measure (each paid and free)
BUILDS=20           # circuit builds per hop count, for the build time
CIRCUITS=500        # idle circuits to hold for the memory figure (0 = skip)
STEP=25             # memory sample every STEP circuits
CLIENT_FUNDS=1000000000000   # the paid testnet's client account: plenty for every round
# Targets (issue 17), on this 2-core machine.
TARGET_1HOP_OVER_WG=2.5          # Hopwire 1 hop / wireguard-go, each direction, at least
TARGET_RATIO_3HOP=0.7            # 3-hop throughput / 1-hop throughput, each direction, at least
TARGET_RATIO_3HOP_CPU=0.6        # 1-hop CPU s/Gbit / 3-hop CPU s/Gbit, each direction, at least
TARGET_PAY_COST_PCT=3            # paid vs free throughput cost in %, under (1 and 3 hops)
TARGET_BUILD_RTTS=3              # circuit build under 3 x path RTT + 20 ms
TARGET_BUILD_EXTRA_MS=20
TARGET_BYTES_PER_CIRCUIT=65536   # middle relay memory per idle circuit, under
METRICS_ADDR="127.0.0.1:9100"    # where restarted relays serve their metrics

SERVER_ADDR="198.18.0.10"       # the pretend internet host, in ns inet
EXIT_UPLINK_ADDR="198.18.1.2"   # exit side of the inet<->exit veth
CLIENT_UPLINK_ADDR="198.18.2.2" # client side of the inet<->client veth
IPERF_PORT=5201
# The two userspace WireGuard anchors, client ns -> exit ns over UDP.
WG_PORT=51821
WG_NET="10.99.0.0/24"
WG_EXIT_ADDR="10.99.0.1"
WG_CLIENT_ADDR="10.99.0.2"
BT_PORT=51822
BT_NET="10.98.0.0/24"
BT_EXIT_ADDR="10.98.0.1"
BT_CLIENT_ADDR="10.98.0.2"
BT_VERSION="0.7.1"
WG_MTU=1420
# The Hopwire exit's plain-WireGuard mode ([wireguard] in node.toml) with a
# stock wireguard-go client: the peer's inner address is inside the exit's
# inner subnet (as in tests/tests/e2e.rs).
STOCK_PORT=51820
STOCK_PEER_ADDR="100.87.255.2"
# wireguard-go and boringtun put their control socket in
# /var/run/wireguard/NAME.sock, which network namespaces do not separate:
# every end needs its own name.
WG_EXIT_IF="wgbench-e"
WG_CLIENT_IF="wgbench-c"
BT_EXIT_IF="btbench-e"
BT_CLIENT_IF="btbench-c"
STOCK_CLIENT_IF="wgbench-s"
ALL_WG_IFS=("$WG_EXIT_IF" "$WG_CLIENT_IF" "$BT_EXIT_IF" "$BT_CLIENT_IF" "$STOCK_CLIENT_IF")
NFT_TABLE="hwbench_nat"
DEV_PREFIX="hwbenchdev"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

usage() {
    cat <<EOF
Usage: $0 [options]

Measures TCP throughput both ways (iperf3 from the client namespace to the
pretend internet server $SERVER_ADDR: upload, and -R download) and ping
round trip, in ROUNDS interleaved rounds (every row once per round, in a
fixed order), for: wireguard-go and boringtun-cli between client and exit
namespaces, a stock wireguard-go client through the Hopwire exit's
plain-WireGuard mode, Hopwire circuits of 1 and 3 hops with the nodes
charging (paid) and free as back-to-back pairs, and the bare veth path.
Prints per row the median and min-max over rounds, CPU s/Gbit of the
tunnel's processes and of the busiest one, and PASS/FAIL for the targets.
Once, outside the rounds: circuit build time per hop count, and the memory
an idle circuit costs the middle relay. Must run as root.

Options:
  --rounds N      interleaved rounds (default $ROUNDS)
  --seconds N     length of each iperf3 test in seconds (default $SECONDS_PER_TEST)
  --pings N       pings per path for the round trip, first round (default $PINGS)
  --parallel N    parallel TCP streams per iperf3 test (default $PARALLEL)
  --json FILE     also write the figures as JSON to FILE
  --no-hopwire    build an own topology (namespaces $DEV_PREFIX-*) and measure
                  only the bare veth path, wireguard-go and boringtun-cli
  --prefix P      prefix of the free testnet (default $PREFIX); the paid one
                  uses P with its 8th character 'p' (default ${PREFIX:0:7}p)
  --size-mb N     size of the test file 'hopwire testnet' downloads
  --release       use target/release instead of target/debug
  --hops LIST     circuit lengths to measure, e.g. 1,2,3 (default 1,3)
  --builds N      circuit builds per hop count for the build time (default $BUILDS)
  --circuits N    idle 3-hop circuits to hold for the relay memory figure
                  (default $CIRCUITS; 0 skips it)
  --step N        sample relay memory every N circuits (default $STEP)
  -h, --help      this text

Environment:
  HOPWIRE_BIN_DIR  directory holding hopwire, hopwire-node and hopwire-bench
                   (default: <repo>/target/debug, or target/release with --release)
EOF
}

# Progress goes to the script's own stderr, kept in LOG_FD, so that it is
# still seen from a trap that fires while a command's output is redirected.
exec {LOG_FD}>&2
log() { printf '[bench] %s\n' "$*" >&"$LOG_FD"; }
die() { printf '[bench] error: %s\n' "$*" >&"$LOG_FD"; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 > 0 )); }

while (( $# > 0 )); do
    case "$1" in
        --rounds)    is_uint "${2:-}" || die "--rounds needs a positive integer"; ROUNDS=$((10#$2)); shift 2 ;;
        --seconds)   is_uint "${2:-}" || die "--seconds needs a positive integer"; SECONDS_PER_TEST=$((10#$2)); shift 2 ;;
        --pings)     is_uint "${2:-}" || die "--pings needs a positive integer"; PINGS=$((10#$2)); shift 2 ;;
        --parallel)  is_uint "${2:-}" || die "--parallel needs a positive integer"; PARALLEL=$((10#$2)); shift 2 ;;
        --json)      [[ -n "${2:-}" ]] || die "--json needs a file name"; JSON_OUT="$2"; shift 2 ;;
        --no-hopwire) USE_HOPWIRE=0; shift ;;
        --prefix)    [[ "${2:-}" =~ ^[a-z0-9]{1,8}$ ]] || die "--prefix needs 1-8 of a-z, 0-9"; PREFIX="$2"; shift 2 ;;
        --size-mb)   is_uint "${2:-}" || die "--size-mb needs a positive integer"; SIZE_MB=$((10#$2)); shift 2 ;;
        --release)   PROFILE="release"; shift ;;
        --hops)      [[ "${2:-}" =~ ^[123](,[123])*$ ]] || die "--hops needs a list of 1, 2, 3 (e.g. 1,2,3)"
                     HOPS_LIST="$(tr ',' '\n' <<<"$2" | sort -un | tr '\n' ' ')"; shift 2 ;;
        --builds)    is_uint "${2:-}" || die "--builds needs a positive integer"; BUILDS=$((10#$2)); shift 2 ;;
        --circuits)  [[ "${2:-}" =~ ^[0-9]+$ ]] || die "--circuits needs an integer (0 skips)"; CIRCUITS=$((10#$2)); shift 2 ;;
        --step)      is_uint "${2:-}" || die "--step needs a positive integer"; STEP=$((10#$2)); shift 2 ;;
        -h|--help)   usage; exit 0 ;;
        *)           usage >&2; die "unknown argument: $1" ;;
    esac
done
# The paid testnet: the same name with 'p' as its 8th character (so neither
# prefix is the other's followed by '-', which 'testnet --down' matches on).
PAID_PREFIX="${PREFIX:0:7}p"
[[ "$PAID_PREFIX" == "$PREFIX" ]] && PAID_PREFIX="${PREFIX:0:7}q"

# ---------------------------------------------------------------- checks

[[ "$(id -u)" == 0 ]] || die "must run as root (network namespaces, TUN devices, nftables)"

missing=(); missing_pkgs=()
need() { # need TOOL APT-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return
    missing+=("'$1' (apt package: $2)")
    [[ " ${missing_pkgs[*]} " == *" $2 "* ]] || missing_pkgs+=("$2")
}
need iperf3 iperf3
need wireguard-go wireguard-go
need wg wireguard-tools
need nft nftables
need ip iproute2
need ping iputils-ping
need jq jq
need timeout coreutils
need flock util-linux
need curl curl
need awk mawk
if (( ${#missing[@]} > 0 )); then
    for m in "${missing[@]}"; do log "missing tool: $m"; done
    die "install the missing packages: apt-get install ${missing_pkgs[*]}"
fi
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (needed by wireguard-go and Hopwire)"

# boringtun-cli, the second anchor: cargo installs it into ~/.cargo/bin.
BT_ERR=""
BORINGTUN="$(command -v boringtun-cli 2>/dev/null || true)"
[[ -z "$BORINGTUN" && -x "$HOME/.cargo/bin/boringtun-cli" ]] && BORINGTUN="$HOME/.cargo/bin/boringtun-cli"
if [[ -z "$BORINGTUN" ]]; then
    if command -v cargo >/dev/null 2>&1; then
        log "boringtun-cli is missing: cargo install boringtun-cli --version $BT_VERSION --locked (a few minutes)"
        if cargo install boringtun-cli --version "$BT_VERSION" --locked >/tmp/hwbench-boringtun-install.log 2>&1; then
            BORINGTUN="$HOME/.cargo/bin/boringtun-cli"
        else
            BT_ERR="cargo install boringtun-cli --version $BT_VERSION failed (see /tmp/hwbench-boringtun-install.log)"
        fi
    else
        BT_ERR="boringtun-cli is missing and there is no cargo to install it"
    fi
fi
if [[ -n "$BORINGTUN" ]]; then
    BT_VERSION_SEEN="$("$BORINGTUN" --version 2>/dev/null | awk '{ print $NF }')"
    [[ "$BT_VERSION_SEEN" == "$BT_VERSION" ]] || log "note: $BORINGTUN is version '${BT_VERSION_SEEN:-unknown}', not $BT_VERSION"
fi
[[ -n "$BT_ERR" ]] && log "boringtun-cli row skipped: $BT_ERR"

HOPWIRE=""
if (( USE_HOPWIRE )); then
    BIN_DIR="${HOPWIRE_BIN_DIR:-$REPO_DIR/target/$PROFILE}"
    BIN_SOURCE="$([[ -n "${HOPWIRE_BIN_DIR:-}" ]] && echo "from HOPWIRE_BIN_DIR" || echo "$PROFILE build")"
    HOPWIRE="$BIN_DIR/hopwire"
    # Measure the source that is checked out, never binaries left from an
    # older build (given binaries are taken as they are).
    if [[ -z "${HOPWIRE_BIN_DIR:-}" ]]; then
        log "building the $PROFILE binaries of this source"
        (cd "$REPO_DIR" && cargo build --quiet $([[ $PROFILE == release ]] && echo --release) \
            -p hopwire -p hopwire-node -p hopwire-bench --bins) || die "building the $PROFILE binaries failed"
    fi
    for b in hopwire hopwire-node hopwire-bench; do
        [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing: run 'cargo build --workspace --bins$([[ $PROFILE == release ]] && echo " --release")' in $REPO_DIR, set HOPWIRE_BIN_DIR, or use --no-hopwire"
    done
fi

# One bench at a time: the wireguard-go sockets and the namespaces are global.
exec {LOCK_FD}>/run/hopwire-bench.lock || die "cannot open /run/hopwire-bench.lock"
flock -n "$LOCK_FD" || die "another bench/throughput.sh is running (lock /run/hopwire-bench.lock)"

WORK="$(mktemp -d /tmp/hwbench.XXXXXX)" || die "mktemp failed"
chmod 700 "$WORK"

# ---------------------------------------------------------------- cleanup

PIDS=()            # processes we started (iperf3 servers, WireGuard ends, restarted nodes)
OWN_NS=()          # namespaces we created ourselves
TESTNETS_UP=()     # prefixes 'hopwire testnet --keep' may have left something under
NFT_NS=""          # namespace holding our nftables table
FWD_NS=""; FWD_OLD=""   # ip_forward we changed, to restore
CLEANED=0

cleanup() {
    (( CLEANED )) && return
    CLEANED=1
    trap '' INT TERM
    local pid ns ifn pfx
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    PIDS=()
    for ifn in "${ALL_WG_IFS[@]}"; do rm -f "/var/run/wireguard/$ifn.sock"; done
    if [[ -n "$NFT_NS" ]]; then
        ip netns exec "$NFT_NS" nft delete table ip "$NFT_TABLE" 2>/dev/null
        NFT_NS=""
    fi
    if [[ -n "$FWD_NS" && -n "$FWD_OLD" ]]; then
        ip netns exec "$FWD_NS" sysctl -qw "net.ipv4.ip_forward=$FWD_OLD" 2>/dev/null
        FWD_NS=""
    fi
    for pfx in "${TESTNETS_UP[@]}"; do
        log "tearing down testnet '$pfx'"
        timeout 120 "$HOPWIRE" testnet --down --prefix "$pfx" >"$WORK/down-$pfx.out" 2>&1 \
            || { log "'hopwire testnet --down --prefix $pfx' failed:"; sed 's/^/    /' "$WORK/down-$pfx.out" >&"$LOG_FD"; }
    done
    TESTNETS_UP=()
    for ns in "${OWN_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    OWN_NS=()
    rm -rf "$WORK"
}

on_signal() {
    log "interrupted ($1), cleaning up"
    cleanup
    trap - "$1"
    exit 130
}

trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# ---------------------------------------------------------------- helpers

# Runs a command in a namespace with a time bound; Ctrl-C reaches it.
nsrun() { # nsrun SECONDS NS CMD...
    local t="$1" ns="$2"; shift 2
    timeout --foreground -k 5 "$t" ip netns exec "$ns" "$@"
}

# The device the namespace would send to ADDR through.
route_dev() { # route_dev NS ADDR
    ip -n "$1" -o route get "$2" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n1
}

wait_for() { # wait_for TENTHS CMD... : polls until CMD succeeds
    local n="$1"; shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

forget_pid() { # forget_pid PID: drops a finished process from PIDS
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

fmt() { # fmt NUMBER DECIMALS -> "n/a" for empty
    if [[ -z "$1" || "$1" == null ]]; then printf 'n/a'; else printf "%.${2}f" "$1"; fi
}

ratio() { # ratio A B -> A/B or empty
    [[ -n "$1" && -n "$2" && "$1" != null && "$2" != null ]] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b }'
}

# ---------------------------------------------------------------- topology

NS_INET=""; NS_EXIT=""; NS_CLIENT=""
CLIENT_UPLINK=""    # client's veth towards inet
TOPOLOGY=""

build_own_topology() {
    NS_INET="$DEV_PREFIX-inet"; NS_EXIT="$DEV_PREFIX-exit"; NS_CLIENT="$DEV_PREFIX-client"
    local ns
    for ns in "$NS_INET" "$NS_EXIT" "$NS_CLIENT"; do
        ip netns del "$ns" 2>/dev/null   # left over from a killed run
        ip netns add "$ns" || return 1
        OWN_NS+=("$ns")
        ip -n "$ns" link set lo up || return 1
    done
    # ns inet: router and the pretend internet host on a dummy device (on
    # loopback where the kernel has no dummy devices).
    if ip -n "$NS_INET" link add srv0 type dummy 2>/dev/null; then
        ip -n "$NS_INET" addr add "$SERVER_ADDR/32" dev srv0 && ip -n "$NS_INET" link set srv0 up || return 1
    else
        ip -n "$NS_INET" addr add "$SERVER_ADDR/32" dev lo || return 1
    fi
    ip netns exec "$NS_INET" sysctl -qw net.ipv4.ip_forward=1 &&
    # inet 198.18.1.1/30 <-> exit 198.18.1.2/30
    ip -n "$NS_INET" link add to-exit type veth peer name uplink netns "$NS_EXIT" &&
    ip -n "$NS_INET" addr add 198.18.1.1/30 dev to-exit &&
    ip -n "$NS_INET" link set to-exit up &&
    ip -n "$NS_EXIT" addr add 198.18.1.2/30 dev uplink &&
    ip -n "$NS_EXIT" link set uplink up &&
    ip -n "$NS_EXIT" route add default via 198.18.1.1 &&
    ip netns exec "$NS_EXIT" sysctl -qw net.ipv4.ip_forward=1 &&
    # inet 198.18.2.1/30 <-> client 198.18.2.2/30
    ip -n "$NS_INET" link add to-client type veth peer name uplink netns "$NS_CLIENT" &&
    ip -n "$NS_INET" addr add 198.18.2.1/30 dev to-client &&
    ip -n "$NS_INET" link set to-client up &&
    ip -n "$NS_CLIENT" addr add 198.18.2.2/30 dev uplink &&
    ip -n "$NS_CLIENT" link set uplink up &&
    ip -n "$NS_CLIENT" route add default via 198.18.2.1 || return 1
    wait_for 30 ip netns exec "$NS_CLIENT" ping -c1 -W1 "$SERVER_ADDR" || { log "own topology: client cannot reach $SERVER_ADDR"; return 1; }
    TOPOLOGY="own ($DEV_PREFIX-*)"
}

# Two kept testnets side by side: 'free' (every node charges nothing) and
# 'paid' (nodes charge on the embedded ledger, the client is funded). Each
# has its own namespaces (PREFIX-*), node directory
# (/run/hopwire-testnet/PREFIX), client socket and ledger (in its own boot
# namespace); the addresses inside are the same, the namespaces keep them
# apart. use_tn selects the one the helpers below work on.
declare -A TN_JSON TN_PREFIX TN_UPLINK
TESTNET_JSON=""; CUR_TN=""
start_testnet() { # start_testnet free|paid
    local tn="$1" pfx
    pfx="$([[ $tn == paid ]] && echo "$PAID_PREFIX" || echo "$PREFIX")"
    TN_PREFIX[$tn]="$pfx"
    log "starting 'hopwire testnet --keep --json --prefix $pfx' ($tn; binaries: $BIN_DIR)"
    # A previous run that was killed may have left this prefix behind.
    timeout 120 "$HOPWIRE" testnet --down --prefix "$pfx" >/dev/null 2>&1
    # Enough nodes for circuits of up to 3 hops with a choice of each hop.
    local args=(testnet --keep --json --prefix "$pfx" --hops 3 --relays 4 --exits 2)
    if [[ $tn == free ]]; then args+=(--free); else args+=(--client-funds "$CLIENT_FUNDS"); fi
    # The nodes' per-circuit and per-neighbour limits (1 and 2 Gbit/s by
    # default) would otherwise be what a fast circuit measures.
    args+=(--no-rate-limits)
    [[ -n "$SIZE_MB" ]] && args+=(--size-mb "$SIZE_MB")
    TESTNETS_UP+=("$pfx")
    local t0=$SECONDS
    # The daemons it leaves running must not inherit our lock and log fds.
    timeout --foreground -k 10 300 "$HOPWIRE" "${args[@]}" >"$WORK/testnet-$tn.json" 2>"$WORK/testnet-$tn.err" \
        {LOCK_FD}>&- {LOG_FD}>&-
    local rc=$?
    if (( rc != 0 )); then
        log "'hopwire ${args[*]}' failed (exit $rc after $((SECONDS - t0)) s); stderr tail:"
        tail -n 30 "$WORK/testnet-$tn.err" | sed 's/^/    /' >&2
        log "stdout tail:"; tail -n 10 "$WORK/testnet-$tn.json" | sed 's/^/    /' >&2
        return 1
    fi
    # One JSON object on stdout; tolerate stray lines before it.
    local obj json
    obj="$(sed -n '/^[[:space:]]*{/,$p' "$WORK/testnet-$tn.json")"
    if ! json="$(jq -ce . <<<"$obj" 2>/dev/null)"; then
        log "'hopwire testnet --json' did not print one JSON object; stdout:"
        sed 's/^/    /' "$WORK/testnet-$tn.json" >&2
        return 1
    fi
    TN_JSON[$tn]="$json"
    log "testnet $pfx up in $((SECONDS - t0)) s"
    use_tn "$tn"
    local ns
    for ns in "$NS_INET" "$NS_EXIT" "$NS_CLIENT"; do
        [[ -n "$ns" ]] && ip netns list | grep -qw -- "$ns" \
            || { log "testnet JSON names namespace '$ns', which does not exist: $TESTNET_JSON"; return 1; }
    done
    [[ -n "$HW_SOCKET" ]] || { log "testnet JSON has no client.socket: $TESTNET_JSON"; return 1; }
    # The device holding the client's own address (the tunnel may own the
    # routes to the exit while a multi-hop circuit is up).
    TN_UPLINK[$tn]="$(ip -n "$NS_CLIENT" -o -4 addr show | awk -v a="$CLIENT_UPLINK_ADDR/" 'index($4, a) == 1 { print $2; exit }')"
    CLIENT_UPLINK="${TN_UPLINK[$tn]}"
}

use_tn() { # use_tn free|paid|own
    CUR_TN="$1"
    [[ "$1" == own ]] && return 0
    TESTNET_JSON="${TN_JSON[$1]}"
    NS_INET="$(jq -r '.namespaces.inet // empty' <<<"$TESTNET_JSON")"
    NS_EXIT="$(jq -r '.namespaces.exit // empty' <<<"$TESTNET_JSON")"
    NS_CLIENT="$(jq -r '.namespaces.client // empty' <<<"$TESTNET_JSON")"
    HW_SOCKET="$(jq -r '.client.socket // empty' <<<"$TESTNET_JSON")"
    NODES_FILE="$(jq -r '.nodes_file // empty' <<<"$TESTNET_JSON")"
    CLIENT_UPLINK="${TN_UPLINK[$1]:-}"
}

# ---------------------------------------------------------------- measuring

start_iperf_server() { # in the current NS_INET
    ip netns exec "$NS_INET" iperf3 -s -B "$SERVER_ADDR" -p "$IPERF_PORT" >"$WORK/iperf3-server-$CUR_TN.log" 2>&1 \
        {LOCK_FD}>&- {LOG_FD}>&- &
    PIDS+=($!)
    wait_for 50 ip netns exec "$NS_INET" sh -c "ss -ltn | grep -q '$SERVER_ADDR:$IPERF_PORT'" \
        || { log "iperf3 server did not start:"; sed 's/^/    /' "$WORK/iperf3-server-$CUR_TN.log" >&2; return 1; }
}

# Per row (first round): the ping round trip and the device used.
declare -A RTT RTT_MIN RTT_MAX DEV ERR
# Per sample, keyed "ROW|DIR|ROUND" (DIR = down or up): Mbit/s, retransmits,
# tunnel CPU % (sum over its processes, 100 = one core), its parts, tunnel
# CPU s per Gbit, the busiest process (name, CPU %, CPU s per Gbit), host CPU %.
declare -A S_MBIT S_RETR S_CPU S_PARTS S_CPG S_MAXNAME S_MAXPCT S_MAXCPG S_HOST

# The tunnel's processes for the next measure, as NAME=PID: their CPU time
# over the iperf3 run is reported (it shows the cost of each hop even when
# other work on the machine takes cores away).
TUNNEL_PIDS=()
cpu_ticks() { # cpu_ticks PID -> utime + stime in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null
}
host_ticks() { # host_ticks -> "busy total" clock ticks of all CPUs
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# ping_row NAME: round trip through the row's current route, and its device.
ping_row() {
    local name="$1" dev
    dev="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
    DEV[$name]="$dev"
    log "[$name] client reaches $SERVER_ADDR via dev '$dev'; ping x$PINGS"
    local pingout
    pingout="$(nsrun $((PINGS + 15)) "$NS_CLIENT" ping -n -q -c "$PINGS" -i 0.2 -W 2 "$SERVER_ADDR" 2>&1)"
    # rtt min/avg/max/mdev = 0.041/0.052/0.080/0.010 ms
    local stats
    stats="$(sed -n 's#^rtt [^=]*= \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\)/.*#\1 \2 \3#p' <<<"$pingout")"
    if [[ -n "$stats" ]]; then
        read -r RTT_MIN[$name] RTT[$name] RTT_MAX[$name] <<<"$stats"
    else
        log "[$name] ping failed:"; sed 's/^/    /' <<<"$pingout" >&2
        ERR[$name]="ping to $SERVER_ADDR failed"
    fi
    local loss
    loss="$(grep -o '[0-9.]*% packet loss' <<<"$pingout")"
    [[ -n "$loss" && "$loss" != "0% packet loss" ]] && log "[$name] ping: $loss"
    [[ -z "${ERR[$name]:-}" ]]
}

# measure_dir NAME DIR ROUND: one iperf3 run, DIR down (-R: the server sends)
# or up (the client sends), with the CPU of TUNNEL_PIDS over it.
measure_dir() {
    local name="$1" dir="$2" round="$3" key="$1|$2|$3"
    local rflag=() what="upload"
    [[ "$dir" == down ]] && rflag=(-R) && what="download"
    local out="$WORK/iperf3-$name-$dir-$round.json"
    local np before=() t0 t1
    for np in "${TUNNEL_PIDS[@]}"; do before+=("$(cpu_ticks "${np#*=}")"); done
    local host0 host1
    host0="$(host_ticks)"
    t0="$(date +%s.%N)"
    nsrun $((SECONDS_PER_TEST + 40)) "$NS_CLIENT" iperf3 -c "$SERVER_ADDR" -p "$IPERF_PORT" "${rflag[@]}" \
        -t "$SECONDS_PER_TEST" -O 1 -P "$PARALLEL" --connect-timeout 5000 -J >"$out" 2>"$out.err"
    local rc=$?
    t1="$(date +%s.%N)"
    host1="$(host_ticks)"
    S_HOST[$key]="$(awk -v a="$host0" -v b="$host1" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); if (y[2] > x[2]) printf "%.0f", 100 * n * (y[1] - x[1]) / (y[2] - x[2]) }')"
    local bps
    bps="$(jq -r '.end.sum_received.bits_per_second // empty' "$out" 2>/dev/null)"
    if (( rc != 0 )) || [[ -z "$bps" ]]; then
        local why
        why="$(jq -r '.error // empty' "$out" 2>/dev/null)"
        [[ -z "$why" ]] && why="$(tail -n 3 "$out.err" "$out" 2>/dev/null | tr '\n' ' ')"
        log "[$name] round $round $what: iperf3 failed (exit $rc): $why"
        ERR[$name]="${ERR[$name]:+${ERR[$name]}; }round $round $what: iperf3 failed: $why"
        return 1
    fi
    S_MBIT[$key]="$(awk -v b="$bps" 'BEGIN { printf "%.1f", b / 1e6 }')"
    S_RETR[$key]="$(jq -r '.end.sum_sent.retransmits // empty' "$out")"
    if (( ${#TUNNEL_PIDS[@]} > 0 )); then
        local i after parts=() total=0 pct tck maxpct=-1 maxname=""
        tck="$(getconf CLK_TCK)"
        for i in "${!TUNNEL_PIDS[@]}"; do
            np="${TUNNEL_PIDS[$i]}"; after="$(cpu_ticks "${np#*=}")"
            [[ -n "$after" && -n "${before[$i]}" ]] || continue
            pct="$(awk -v d=$((after - before[i])) -v k="$tck" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 100 * d / k / (b - a) }')"
            parts+=("${np%=*} $pct%"); total=$((total + pct))
            (( pct > maxpct )) && { maxpct="$pct"; maxname="${np%=*}"; }
        done
        S_CPU[$key]="$total"
        S_PARTS[$key]="$(IFS=,; echo "${parts[*]}")"
        # CPU seconds per Gbit carried: of all the tunnel's processes, and of
        # the busiest one (a deployed relay owns its CPU).
        S_CPG[$key]="$(awk -v c="$total" -v m="${S_MBIT[$key]}" 'BEGIN { if (m > 0) printf "%.2f", c / 100 / (m / 1000) }')"
        if [[ -n "$maxname" ]]; then
            S_MAXNAME[$key]="$maxname"; S_MAXPCT[$key]="$maxpct"
            S_MAXCPG[$key]="$(awk -v c="$maxpct" -v m="${S_MBIT[$key]}" 'BEGIN { if (m > 0) printf "%.2f", c / 100 / (m / 1000) }')"
        fi
    fi
    log "[$name] round $round $what: $(fmt "${S_MBIT[$key]}" 1) Mbit/s${S_CPU[$key]:+, tunnel CPU ${S_CPU[$key]}% (${S_PARTS[$key]}), ${S_CPG[$key]} s/Gbit}"
}

# measure ROW ROUND: ping (first round only), then download, then upload.
measure() {
    local name="$1" round="$2" ok=0
    if (( round == 1 )); then
        ping_row "$name" || ok=1
    elif [[ "$(route_dev "$NS_CLIENT" "$SERVER_ADDR")" != "${DEV[$name]:-}" ]]; then
        log "[$name] round $round: client routes $SERVER_ADDR via '$(route_dev "$NS_CLIENT" "$SERVER_ADDR")', round 1 used '${DEV[$name]:-}'"
    fi
    log "[$name] round $round: iperf3 -R (download) and upload, $SECONDS_PER_TEST s each (+1 s omitted), $PARALLEL stream(s)"
    measure_dir "$name" down "$round" || ok=1
    measure_dir "$name" up "$round" || ok=1
    return "$ok"
}

# ---------------------------------------------------------------- hopwire

HW_SOCKET=""
NODES_FILE=""
hw_status() { # the daemon's status as one JSON line, or nothing
    timeout 20 "$HOPWIRE" --socket "$HW_SOCKET" status --json 2>/dev/null | jq -c . 2>/dev/null
}
hw_state() {
    hw_status | jq -r '.state // empty' 2>/dev/null
}

# node_field NAME-OR-SHORT-ID FIELD: a field of a testnet node, found by its
# name (relay1, exit, …) or its identity.
node_field() {
    jq -r --arg n "$1" --arg f "$2" \
        'first(.nodes[] | select(.name == $n or .identity == $n)) | .[$f] // empty' <<<"$TESTNET_JSON"
}
declare -A NODE_PID   # "testnet:name" -> pid of its hopwire-node now (after a restart)
node_pid() { # node_pid NAME-OR-SHORT-ID
    local name; name="$(node_field "$1" name)"
    [[ -n "$name" && -n "${NODE_PID[$CUR_TN:$name]:-}" ]] && echo "${NODE_PID[$CUR_TN:$name]}" || node_field "$1" pid
}

# restart_node NAME: stops the node of the current testnet and runs it again
# in its namespace with its (edited) node.toml, the same keys and so the
# same record.
restart_node() {
    local name="$1" ns cfg pid log="$WORK/node-$CUR_TN-$1.log"
    ns="$(node_field "$name" namespace)"; cfg="$(node_field "$name" config)"; pid="$(node_pid "$name")"
    [[ -n "$ns" && -f "$cfg" && -n "$pid" ]] || { log "testnet JSON lacks namespace/config/pid of $name"; return 1; }
    # Only the node the testnet (or we) started: check before signalling the pid.
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == hopwire-node ]] \
        || { log "$name: pid $pid is not a hopwire-node process"; return 1; }
    kill -TERM "$pid"
    wait_for 100 sh -c "! kill -0 $pid" || { log "$name (pid $pid) did not stop"; return 1; }
    forget_pid "$pid"
    ip netns exec "$ns" "$BIN_DIR/hopwire-node" run --config "$cfg" >"$log" 2>&1 \
        {LOCK_FD}>&- {LOG_FD}>&- &
    NODE_PID[$CUR_TN:$name]=$!; PIDS+=($!)
    wait_for 100 grep -q "node serving" "$log" \
        || { log "$name did not come back:"; tail -n 10 "$log" | sed 's/^/    /' >&2; return 1; }
}

# restart_with_metrics NAME: turns on the node's Prometheus metrics
# (node.toml [node] metrics_listen) and restarts it.
restart_with_metrics() {
    local name="$1" ns cfg
    ns="$(node_field "$name" namespace)"; cfg="$(node_field "$name" config)"
    [[ -n "$ns" && -f "$cfg" ]] || { log "testnet JSON lacks namespace/config of $name"; return 1; }
    if ! grep -q '^metrics_listen' "$cfg"; then
        sed -i "s|^# metrics_listen = .*|metrics_listen = \"$METRICS_ADDR\"|" "$cfg"
        grep -q '^metrics_listen' "$cfg" || { log "$cfg: no '# metrics_listen' line to turn on"; return 1; }
    fi
    restart_node "$name" &&
    wait_for 50 ip netns exec "$ns" curl -sf --max-time 1 "http://$METRICS_ADDR/" \
        || { log "$name did not come back with metrics"; return 1; }
}

# metric NAME METRIC: a value from the node's metrics, or nothing.
metric() {
    local ns; ns="$(node_field "$1" namespace)"
    ip netns exec "$ns" curl -s --max-time 3 "http://$METRICS_ADDR/" 2>/dev/null \
        | awk -v m="$2" '$1 == m { print $2; exit }'
}

hopwire_disconnect() {
    log "disconnecting Hopwire"
    timeout 30 "$HOPWIRE" --socket "$HW_SOCKET" disconnect >"$WORK/disconnect.out" 2>&1 \
        || { log "'hopwire --socket $HW_SOCKET disconnect' failed:"; sed 's/^/    /' "$WORK/disconnect.out" >&2; }
    local i state dev
    for i in $(seq 1 100); do
        state="$(hw_state)"
        dev="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
        [[ "$state" == disconnected && "$dev" == "$CLIENT_UPLINK" ]] && return 0
        sleep 0.1
    done
    log "after disconnect: state '${state:-unknown}', $SERVER_ADDR routed via '$dev' (uplink is '$CLIENT_UPLINK')"
    [[ "$dev" == "$CLIENT_UPLINK" ]]
}

declare -A HW_STATUS HW_PATH_IDS HW_PATH_NAMES LINK_RTT LINK_RTTS BUILD_JSON
# hopwire_connect N ROW: connects the current testnet's daemon with an N-hop
# circuit chosen from its records and keeps its status under the key
# "<testnet>N" (free1, paid3, ...).
hopwire_connect() {
    local n="$2" name="$1" k="$CUR_TN$2"
    log "[$name] connecting with --hops $n"
    if ! timeout 90 "$HOPWIRE" --socket "$HW_SOCKET" connect --nodes "$NODES_FILE" --hops "$n" \
            >"$WORK/connect-$k.out" 2>&1; then
        ERR[$name]="connect --hops $n failed: $(tail -n 3 "$WORK/connect-$k.out" | tr '\n' ' ')"
        log "[$name] ${ERR[$name]}"; return 1
    fi
    local status hops
    status="$(hw_status)"
    HW_STATUS[$k]="$status"
    if [[ "$(jq -r '.state' <<<"$status")" != connected ]]; then
        ERR[$name]="client state is '$(jq -r '.state // "unknown"' <<<"$status")', not connected: $(jq -r '.error // ""' <<<"$status")"
        log "[$name] ${ERR[$name]}"; return 1
    fi
    hops="$(jq -r '.circuit | length' <<<"$status")"
    if [[ "$hops" != "$n" ]]; then
        ERR[$name]="asked for $n hops, the circuit has $hops"; log "[$name] ${ERR[$name]}"; return 1
    fi
    HW_PATH_IDS[$k]="$(jq -r '[.circuit[].id] | join(",")' <<<"$status")"
    local id names=()
    for id in ${HW_PATH_IDS[$k]//,/ }; do names+=("$(node_field "$id" name)"); done
    HW_PATH_NAMES[$k]="$(IFS=,; echo "${names[*]}")"
    log "[$name] circuit ${HW_PATH_NAMES[$k]} (${HW_PATH_IDS[$k]}), built in $(jq -r '.build_ms' <<<"$status") ms, mtu $(jq -r '.mtu' <<<"$status")"
    local dev
    dev="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
    if [[ -z "$dev" || "$dev" == "$CLIENT_UPLINK" ]]; then
        ERR[$name]="connected, but the client routes $SERVER_ADDR via '$dev' (the uplink), not the tunnel"
        log "[$name] ${ERR[$name]}"; return 1
    fi
}

# ping_avg NS ADDR: average round trip in ms of $PINGS quick pings, or nothing.
ping_avg() {
    nsrun $((PINGS + 10)) "$1" ping -n -q -c "$PINGS" -i 0.05 -W 2 "$2" 2>/dev/null \
        | sed -n 's#^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*#\1#p'
}

# link_rtts N: round trip of each link of the N-hop circuit, outside the
# tunnel (client → guard, guard → middle, …, exit → server), and their sum.
link_rtts() { # link_rtts KEY (free1, ...)
    local k="$1" from="$NS_CLIENT" id addr ns rtt sum=0 parts=() ok=1
    for id in ${HW_PATH_IDS[$k]//,/ }; do
        addr="$(node_field "$id" addr)"; ns="$(node_field "$id" namespace)"
        rtt="$(ping_avg "$from" "$addr")"
        [[ -n "$rtt" ]] || { ok=0; rtt="n/a"; }
        parts+=("$rtt"); [[ "$rtt" != n/a ]] && sum="$(awk -v a="$sum" -v b="$rtt" 'BEGIN { print a + b }')"
        from="$ns"
    done
    rtt="$(ping_avg "$from" "$SERVER_ADDR")"
    [[ -n "$rtt" ]] || { ok=0; rtt="n/a"; }
    parts+=("$rtt"); [[ "$rtt" != n/a ]] && sum="$(awk -v a="$sum" -v b="$rtt" 'BEGIN { print a + b }')"
    LINK_RTTS[$k]="$(IFS=+; echo "${parts[*]}")"
    (( ok )) && LINK_RTT[$k]="$sum"
}

# circuit_builds N: builds $BUILDS circuits along the daemon's N-hop path
# with hopwire-bench (closing each) and keeps its JSON.
circuit_builds() { # circuit_builds KEY N
    local k="$1" n="$2" out="$WORK/builds-$1.json"
    log "[hopwire_${n}hop] $BUILDS circuit builds along ${HW_PATH_NAMES[$k]}"
    if nsrun $((BUILDS * 15 + 30)) "$NS_CLIENT" "$BIN_DIR/hopwire-bench" build --nodes "$NODES_FILE" \
            --path "${HW_PATH_IDS[$k]}" --count "$BUILDS" >"$out" 2>"$out.err" \
            && BUILD_JSON[$k]="$(jq -ce . "$out" 2>/dev/null)"; then
        log "[hopwire_${n}hop] build ms: $(jq -r '.build_ms | "median \(.median), p95 \(.p95), max \(.max)"' <<<"${BUILD_JSON[$k]}"), failed $(jq -r .failed <<<"${BUILD_JSON[$k]}")"
        return 0
    fi
    BUILD_ERR[$k]="hopwire-bench build failed: $(tail -n 3 "$out.err" | tr '\n' ' ')"
    log "[hopwire_${n}hop] ${BUILD_ERR[$k]}"
    return 1
}
declare -A BUILD_ERR BUILD_TARGET BUILD_VERDICT
MEM_VERDICT=""

# ---------------------------------------------------------------- relay memory

MEM_JSON=""; MEM_ERR=""; MEM_PATH_NAMES="relay1,relay2,exit"
declare -A MEM_METRICS   # "<node>_<when>" -> hopwire_circuits
# relay_memory: holds $CIRCUITS idle circuits along relay1 → relay2 → exit
# and reads the nodes' RSS as they pile up (hopwire-bench hold).
relay_memory() {
    local ids=() name pids=() out="$WORK/hold.json" err="$WORK/hold.err" pid
    for name in ${MEM_PATH_NAMES//,/ }; do
        ids+=("$(node_field "$name" identity)")
        pid="$(node_pid "$name")"
        [[ -n "${ids[-1]}" && -n "$pid" ]] || { MEM_ERR="testnet has no node $name"; return 1; }
        pids+=(--pid "$name=$pid")
    done
    for name in relay1 relay2; do
        MEM_METRICS[${name}_before]="$(metric "$name" hopwire_circuits)"
    done
    log "[memory] holding up to $CIRCUITS idle circuits along $MEM_PATH_NAMES (+5 warm-up), RSS every $STEP"
    ip netns exec "$NS_CLIENT" "$BIN_DIR/hopwire-bench" hold --nodes "$NODES_FILE" --path "$(IFS=,; echo "${ids[*]}")" \
        --count "$CIRCUITS" --step "$STEP" --warmup 5 "${pids[@]}" >"$out" 2>"$err" {LOCK_FD}>&- {LOG_FD}>&- &
    local holder=$!
    PIDS+=("$holder")
    # Each build takes milliseconds; a stuck one gives up after 12 s.
    local limit=$(( CIRCUITS / 5 + CIRCUITS / STEP * 3 + 120 ))
    local t0=$SECONDS
    while [[ ! -s "$out" ]] && kill -0 "$holder" 2>/dev/null && (( SECONDS - t0 < limit )); do sleep 0.5; done
    if ! MEM_JSON="$(head -n1 "$out" | jq -ce . 2>/dev/null)"; then
        MEM_JSON=""
        MEM_ERR="hopwire-bench hold gave no result within $limit s: $(tail -n 3 "$err" | tr '\n' ' ')"
        log "[memory] $MEM_ERR"
    else
        for name in relay1 relay2; do
            MEM_METRICS[${name}_held]="$(metric "$name" hopwire_circuits)"
        done
        MEM_METRICS[state_bytes]="$(metric relay2 hopwire_circuit_hop_state_bytes)"
        log "[memory] built $(jq -r .built <<<"$MEM_JSON") (+$(jq -r .warmup <<<"$MEM_JSON") warm-up) of $CIRCUITS; hopwire_circuits now relay1 ${MEM_METRICS[relay1_held]:-?}, relay2 ${MEM_METRICS[relay2_held]:-?}"
        [[ "$(jq -r '.stopped // empty' <<<"$MEM_JSON")" != "" ]] && log "[memory] $(jq -r .stopped <<<"$MEM_JSON")"
    fi
    # Closing: each circuit is destroyed at every hop; check they are gone.
    kill -TERM "$holder" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
    forget_pid "$holder"
    local left
    for _ in $(seq 1 30); do
        left="$(metric relay2 hopwire_circuits)"
        [[ "$left" == 0 && "$(metric relay1 hopwire_circuits)" == 0 ]] && break
        sleep 0.5
    done
    for name in relay1 relay2; do
        MEM_METRICS[${name}_after_close]="$(metric "$name" hopwire_circuits)"
    done
    log "[memory] after closing: hopwire_circuits relay1 ${MEM_METRICS[relay1_after_close]:-?}, relay2 ${MEM_METRICS[relay2_after_close]:-?}"
    [[ -n "$MEM_JSON" ]]
}

# ---------------------------------------------------------------- WireGuard rows

# The WireGuard ends we started: interface name -> pid. They stay up for all
# rounds; a row's turn only points the client's route to $SERVER_ADDR at its
# interface (route_to), and takes it away afterwards (route_off).
declare -A WGEND_PID
start_wgend() { # start_wgend IMPL NS IFNAME: IMPL is wireguard-go or boringtun
    local impl="$1" ns="$2" ifn="$3"
    rm -f "/var/run/wireguard/$ifn.sock"
    if [[ "$impl" == boringtun ]]; then
        ip netns exec "$ns" "$BORINGTUN" --foreground --disable-drop-privileges --log "$WORK/bt-$ifn.out" "$ifn" \
            >"$WORK/wg-$ifn.log" 2>&1 {LOCK_FD}>&- {LOG_FD}>&- &
    else
        ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go "$ifn" >"$WORK/wg-$ifn.log" 2>&1 \
            {LOCK_FD}>&- {LOG_FD}>&- &
    fi
    WGEND_PID[$ifn]=$!; PIDS+=($!)
    wait_for 50 test -S "/var/run/wireguard/$ifn.sock" && wait_for 50 ip -n "$ns" link show "$ifn" \
        || { log "$impl $ifn did not come up in $ns:"; sed 's/^/    /' "$WORK/wg-$ifn.log" >&2; return 1; }
}

wg_keys() { # wg_keys NAME: $WORK/NAME.key and NAME.pub
    ( umask 077; wg genkey >"$WORK/$1.key" ) && wg pubkey <"$WORK/$1.key" >"$WORK/$1.pub"
}

# The exit's forwarding and masquerade for both anchors' tunnel subnets.
setup_exit_nat() {
    local exit_uplink
    exit_uplink="$(route_dev "$NS_EXIT" "$SERVER_ADDR")"
    [[ -n "$exit_uplink" ]] || { log "exit namespace has no route to $SERVER_ADDR"; return 1; }
    FWD_OLD="$(ip netns exec "$NS_EXIT" sysctl -n net.ipv4.ip_forward)"
    FWD_NS="$NS_EXIT"
    ip netns exec "$NS_EXIT" sysctl -qw net.ipv4.ip_forward=1 || return 1
    NFT_NS="$NS_EXIT"
    ip netns exec "$NS_EXIT" nft -f - <<EOF || return 1
table ip $NFT_TABLE {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr { $WG_NET, $BT_NET } oifname "$exit_uplink" masquerade
    }
}
EOF
}

# setup_anchor IMPL EXIT_IF CLIENT_IF PORT EXIT_ADDR CLIENT_ADDR: a userspace
# WireGuard tunnel from the client namespace to the exit namespace (UDP to
# the exit's uplink address), MTU $WG_MTU.
setup_anchor() {
    local impl="$1" eif="$2" cif="$3" port="$4" eaddr="$5" caddr="$6"
    wg_keys "$eif" && wg_keys "$cif" || return 1
    start_wgend "$impl" "$NS_EXIT" "$eif" || return 1
    start_wgend "$impl" "$NS_CLIENT" "$cif" || return 1
    ip netns exec "$NS_EXIT" wg set "$eif" listen-port "$port" private-key "$WORK/$eif.key" \
        peer "$(cat "$WORK/$cif.pub")" allowed-ips "$caddr/32" &&
    ip -n "$NS_EXIT" addr add "$eaddr/24" dev "$eif" &&
    ip -n "$NS_EXIT" link set "$eif" mtu "$WG_MTU" up || return 1
    ip netns exec "$NS_CLIENT" wg set "$cif" private-key "$WORK/$cif.key" \
        peer "$(cat "$WORK/$eif.pub")" endpoint "$EXIT_UPLINK_ADDR:$port" allowed-ips 0.0.0.0/0 &&
    ip -n "$NS_CLIENT" addr add "$caddr/24" dev "$cif" &&
    ip -n "$NS_CLIENT" link set "$cif" mtu "$WG_MTU" up || return 1
    wait_for 50 ip netns exec "$NS_CLIENT" ping -c1 -W1 "$eaddr" \
        || { log "$impl: no handshake/ping to $eaddr"; ip netns exec "$NS_CLIENT" wg show "$cif" >&2; return 1; }
    route_to "$cif" "$caddr" || return 1
    wait_for 30 ip netns exec "$NS_CLIENT" ping -c1 -W1 "$SERVER_ADDR" \
        || { log "$impl: tunnel up but $SERVER_ADDR unreachable through it (forwarding/NAT/filter in $NS_EXIT?)";
             ip netns exec "$NS_EXIT" nft list ruleset >&2; route_off; return 1; }
    route_off
}

# The Hopwire exit's plain-WireGuard mode: [wireguard] listen on the exit's
# uplink and one [[wireguard.peers]] (our stock client), then the exit is
# restarted with it; a wireguard-go client in the client namespace.
setup_stock() {
    local cfg pub
    cfg="$(node_field exit config)"
    pub="$(node_field exit wg_public_key)"
    [[ -f "$cfg" && -n "$pub" ]] || { log "testnet JSON lacks the exit's config or wg_public_key"; return 1; }
    wg_keys "$STOCK_CLIENT_IF" || return 1
    # Our lines go at the end, into the [wireguard] section, which must be
    # the last one (it is in the node.toml 'hopwire-node init' writes).
    [[ "$(grep '^\[' "$cfg" | tail -n1)" == "[wireguard]" ]] || echo '[wireguard]' >>"$cfg"
    grep -q '^listen *=' <(sed -n '/^\[wireguard\]/,$p' "$cfg") \
        && { log "$cfg already sets [wireguard] listen"; return 1; }
    printf 'listen = "%s:%s"\n[[wireguard.peers]]\npublic_key = "%s"\naddress = "%s"\n' \
        "$EXIT_UPLINK_ADDR" "$STOCK_PORT" "$(cat "$WORK/$STOCK_CLIENT_IF.pub")" "$STOCK_PEER_ADDR" >>"$cfg"
    log "restarting the exit of testnet ${TN_PREFIX[$CUR_TN]} with [wireguard] listen = $EXIT_UPLINK_ADDR:$STOCK_PORT and our stock peer"
    restart_node exit || return 1
    start_wgend wireguard-go "$NS_CLIENT" "$STOCK_CLIENT_IF" || return 1
    ip netns exec "$NS_CLIENT" wg set "$STOCK_CLIENT_IF" private-key "$WORK/$STOCK_CLIENT_IF.key" \
        peer "$pub" endpoint "$EXIT_UPLINK_ADDR:$STOCK_PORT" allowed-ips 0.0.0.0/0 &&
    ip -n "$NS_CLIENT" addr add "$STOCK_PEER_ADDR/32" dev "$STOCK_CLIENT_IF" &&
    ip -n "$NS_CLIENT" link set "$STOCK_CLIENT_IF" mtu "$WG_MTU" up || return 1
    route_to "$STOCK_CLIENT_IF" "$STOCK_PEER_ADDR" || return 1
    wait_for 100 ip netns exec "$NS_CLIENT" ping -c1 -W1 "$SERVER_ADDR" \
        || { log "stock WireGuard: $SERVER_ADDR unreachable through the exit's plain-WireGuard mode";
             ip netns exec "$NS_CLIENT" wg show "$STOCK_CLIENT_IF" >&2; tail -n 10 "$WORK/node-$CUR_TN-exit.log" | sed 's/^/    /' >&2
             route_off; return 1; }
    route_off
}

ROUTED_IF=""
route_to() { # route_to IFNAME SRC: the client reaches $SERVER_ADDR through IFNAME
    ip -n "$NS_CLIENT" route replace "$SERVER_ADDR/32" dev "$1" src "$2" && ROUTED_IF="$1"
}
route_off() {
    [[ -n "$ROUTED_IF" ]] && ip -n "$NS_CLIENT" route del "$SERVER_ADDR/32" dev "$ROUTED_IF" 2>/dev/null
    ROUTED_IF=""
    return 0
}

# ---------------------------------------------------------------- run

MACHINE_NPROC="$(nproc)"
MACHINE_KERNEL="$(uname -r)"
MACHINE_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
MACHINE_CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
# Other work on the machine (a cargo build) skews the figures: show the load.
MACHINE_LOAD="$(cut -d' ' -f1 /proc/loadavg)"
# What was measured: the commit, and whether the tree had changes on top.
SOURCE_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)"
[[ -n "$SOURCE_REV" && -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null)" ]] && SOURCE_REV+="+dirty"
MACHINE_LINE="machine: nproc=$MACHINE_NPROC kernel=$MACHINE_KERNEL date=$MACHINE_DATE load1=$MACHINE_LOAD cpu=${MACHINE_CPU:-unknown} source=${SOURCE_REV:-unknown}"
log "$MACHINE_LINE"

FAILED=0
# The rows, in the fixed order every round measures them.
ROWS=(wireguard_go)
if (( USE_HOPWIRE )); then
    for n in $HOPS_LIST; do ROWS+=("hopwire_${n}hop_paid" "hopwire_${n}hop_free"); done
fi
ROWS+=(boringtun)
(( USE_HOPWIRE )) && ROWS+=(stock_wg)
ROWS+=(bare_veth)
declare -A ROW_READY   # row -> 1 when its setup worked
declare -A TN_OK       # free/paid -> 1 when that testnet is up
BASE_TN=own            # the topology of the baselines: the free testnet, or our own

if (( USE_HOPWIRE )); then
    if start_testnet free; then
        TN_OK[free]=1; BASE_TN=free
        TOPOLOGY="hopwire testnets $PREFIX (free) and $PAID_PREFIX (paid)"
    else
        MEM_ERR="'hopwire testnet --keep --free' failed"
        FAILED=1
        log "falling back to an own topology for the baselines"
        timeout 120 "$HOPWIRE" testnet --down --prefix "$PREFIX" >/dev/null 2>&1
        TESTNETS_UP=()
    fi
    if (( ${TN_OK[free]:-0} )) && start_testnet paid; then
        TN_OK[paid]=1
    else
        FAILED=1
    fi
fi
if [[ "$BASE_TN" == own ]]; then
    build_own_topology || die "could not build the own topology"
    use_tn own
    CLIENT_UPLINK="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
    start_iperf_server || die "cannot start the iperf3 server"
fi

for tn in free paid; do
    (( ${TN_OK[$tn]:-0} )) || continue
    use_tn "$tn"
    log "testnet $tn (${TN_PREFIX[$tn]}): namespaces inet=$NS_INET exit=$NS_EXIT client=$NS_CLIENT; uplink '$CLIENT_UPLINK'; records $NODES_FILE"
    start_iperf_server || { log "cannot start the iperf3 server in $NS_INET"; TN_OK[$tn]=0; FAILED=1; continue; }
    # 'hopwire testnet' left the client on a 3-hop circuit: start from none.
    hopwire_disconnect || { log "Hopwire ($tn) did not disconnect"; TN_OK[$tn]=0; FAILED=1; }
done

if (( ${TN_OK[free]:-0} )); then
    use_tn free
    # Fresh guard and middle for the memory figure, with metrics on so the
    # circuits they hold can be counted (free testnet; once, before the rounds).
    for name in relay1 relay2; do
        log "restarting $name with metrics on $METRICS_ADDR"
        restart_with_metrics "$name" || { MEM_ERR="restarting $name with metrics failed"; FAILED=1; }
    done
    if (( CIRCUITS > 0 )) && [[ -z "$MEM_ERR" ]]; then
        relay_memory || FAILED=1
    fi
fi

for n in $HOPS_LIST; do
    for tn in paid free; do
        if (( ${TN_OK[$tn]:-0} )); then ROW_READY[hopwire_${n}hop_$tn]=1
        else ERR[hopwire_${n}hop_$tn]="the $tn testnet is not up"; fi
    done
done

# The WireGuard rows: all set up once on the baseline topology (the free
# testnet), each row routes $SERVER_ADDR through its own interface in turn.
use_tn "$BASE_TN"
log "setting up the exit's masquerade, wireguard-go and boringtun-cli between $NS_CLIENT and $NS_EXIT"
if setup_exit_nat; then
    if setup_anchor wireguard-go "$WG_EXIT_IF" "$WG_CLIENT_IF" "$WG_PORT" "$WG_EXIT_ADDR" "$WG_CLIENT_ADDR"; then
        ROW_READY[wireguard_go]=1
    else
        ERR[wireguard_go]="wireguard-go setup failed"; FAILED=1
    fi
    if [[ -n "$BT_ERR" ]]; then
        ERR[boringtun]="$BT_ERR"; FAILED=1
    elif setup_anchor boringtun "$BT_EXIT_IF" "$BT_CLIENT_IF" "$BT_PORT" "$BT_EXIT_ADDR" "$BT_CLIENT_ADDR"; then
        ROW_READY[boringtun]=1
    else
        ERR[boringtun]="boringtun-cli setup failed"; FAILED=1
    fi
else
    ERR[wireguard_go]="exit masquerade setup failed"; ERR[boringtun]="${BT_ERR:-exit masquerade setup failed}"; FAILED=1
fi
if (( USE_HOPWIRE )); then
    if [[ "$BASE_TN" == free ]] && setup_stock; then
        ROW_READY[stock_wg]=1
    else
        ERR[stock_wg]="stock WireGuard through the Hopwire exit: setup failed"; FAILED=1
    fi
fi
ROW_READY[bare_veth]=1

# run_row ROW ROUND: one turn of a row.
run_row() {
    local row="$1" r="$2" ifn src
    TUNNEL_PIDS=()
    case "$row" in
        hopwire_*hop_*)
            local n="${row#hopwire_}" tn="${row##*_}" id
            n="${n%%hop*}"
            use_tn "$tn"
            if hopwire_connect "$row" "$n"; then
                TUNNEL_PIDS=("client=$(jq -r '.client.pid // empty' <<<"$TESTNET_JSON")")
                for id in ${HW_PATH_IDS[$tn$n]//,/ }; do TUNNEL_PIDS+=("$(node_field "$id" name)=$(node_pid "$id")"); done
                measure "$row" "$r" || FAILED=1
                ROW_PATH[$row|$r]="${HW_PATH_NAMES[$tn$n]}"
            else
                FAILED=1
            fi
            hopwire_disconnect || { log "Hopwire did not disconnect cleanly; what follows may be wrong"; FAILED=1; }
            # Once, outside the rounds' figures: link RTTs and circuit builds
            # along the circuit just measured, after the disconnect (while
            # connected, the daemon's leak protection keeps other programs
            # in the client namespace off the uplink).
            if (( r == 1 )) && [[ "$tn" == free && -n "${HW_PATH_IDS[$tn$n]:-}" ]]; then
                link_rtts "$tn$n"
                circuit_builds "$tn$n" "$n" || FAILED=1
            fi
            TUNNEL_PIDS=(); return ;;
    esac
    use_tn "$BASE_TN"
    case "$row" in
        wireguard_go) ifn="$WG_CLIENT_IF"; src="$WG_CLIENT_ADDR"
                      TUNNEL_PIDS=("wg-client=${WGEND_PID[$WG_CLIENT_IF]}" "wg-exit=${WGEND_PID[$WG_EXIT_IF]}") ;;
        boringtun)    ifn="$BT_CLIENT_IF"; src="$BT_CLIENT_ADDR"
                      TUNNEL_PIDS=("bt-client=${WGEND_PID[$BT_CLIENT_IF]}" "bt-exit=${WGEND_PID[$BT_EXIT_IF]}") ;;
        stock_wg)     ifn="$STOCK_CLIENT_IF"; src="$STOCK_PEER_ADDR"
                      TUNNEL_PIDS=("wg-client=${WGEND_PID[$STOCK_CLIENT_IF]}" "exit=$(node_pid exit)") ;;
        bare_veth)    ifn="$CLIENT_UPLINK"; src="" ;;
    esac
    [[ -n "$src" ]] && { route_to "$ifn" "$src" || { ERR[$row]="cannot route $SERVER_ADDR via $ifn"; FAILED=1; return; }; }
    if [[ "$(route_dev "$NS_CLIENT" "$SERVER_ADDR")" == "$ifn" ]]; then
        measure "$row" "$r" || FAILED=1
    else
        ERR[$row]="client does not route $SERVER_ADDR via '$ifn' but '$(route_dev "$NS_CLIENT" "$SERVER_ADDR")'"
        log "[$row] ${ERR[$row]}"; FAILED=1
    fi
    route_off
    TUNNEL_PIDS=()
}

declare -A ROW_PATH
for r in $(seq 1 "$ROUNDS"); do
    log "===== round $r of $ROUNDS: ${ROWS[*]}"
    for row in "${ROWS[@]}"; do
        if (( ${ROW_READY[$row]:-0} )); then
            run_row "$row" "$r"
        elif (( r == 1 )); then
            log "[$row] skipped: ${ERR[$row]:-not set up}"
        fi
    done
done

# ---------------------------------------------------------------- report

label() {
    case "$1" in
        bare_veth) echo "bare veth" ;;
        wireguard_go) echo "wireguard-go" ;;
        boringtun) echo "boringtun-cli" ;;
        stock_wg) echo "stock WG -> Hopwire exit" ;;
        hopwire_1hop_*) echo "Hopwire 1 hop ${1##*_}" ;;
        hopwire_*) local n="${1#hopwire_}"; echo "Hopwire ${n%%hop*} hops ${1##*_}" ;;
    esac
}

# check A OP B -> PASS / FAIL / n/a
check() {
    [[ -n "$1" && -n "$3" && "$1" != null && "$3" != null ]] || { echo "n/a"; return; }
    awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN { ok = (op == "<") ? (a < b) : (a >= b); print ok ? "PASS" : "FAIL" }'
}

# Every sample as one JSON line; the summary (medians, spreads, ratios,
# costs) is computed from them by jq, for the tables and for --json alike.
SAMPLES="$WORK/samples.jsonl"
: >"$SAMPLES"
for row in "${ROWS[@]}"; do
    for dir in down up; do
        for r in $(seq 1 "$ROUNDS"); do
            k="$row|$dir|$r"
            [[ -n "${S_MBIT[$k]:-}${S_CPU[$k]:-}" ]] || continue
            jq -nc --arg row "$row" --arg dir "$dir" --argjson round "$r" --arg mbit "${S_MBIT[$k]:-}" \
                --arg retr "${S_RETR[$k]:-}" --arg cpu "${S_CPU[$k]:-}" --arg parts "${S_PARTS[$k]:-}" \
                --arg cpg "${S_CPG[$k]:-}" --arg mname "${S_MAXNAME[$k]:-}" --arg mpct "${S_MAXPCT[$k]:-}" \
                --arg mcpg "${S_MAXCPG[$k]:-}" --arg host "${S_HOST[$k]:-}" --arg path "${ROW_PATH[$row|$r]:-}" '
                def num: if . == "" then null else tonumber end;
                def str: if . == "" then null else . end;
                {row: $row, dir: $dir, round: $round, mbit: ($mbit|num), retr: ($retr|num), cpu: ($cpu|num),
                 parts: ($parts|str), cpg: ($cpg|num), maxname: ($mname|str), maxpct: ($mpct|num),
                 maxcpg: ($mcpg|num), host: ($host|num), circuit: ($path|str)}' >>"$SAMPLES"
        done
    done
done
JQ_DEFS='
def med: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def st: map(select(. != null)) | if length == 0 then null else {median: med, min: min, max: max, n: length, samples: .} end;
'
SUMMARY="$(jq -sc "$JQ_DEFS"'
    group_by(.row) | map({key: .[0].row, value: (group_by(.dir) | map({key: .[0].dir, value: {
        mbit_per_s: (map(.mbit) | st), retransmits: (map(.retr) | st),
        tunnel_cpu_percent: (map(.cpu) | st), tunnel_cpu_seconds_per_gbit: (map(.cpg) | st),
        busiest_process: (map(.maxname) | map(select(. != null)) | unique),
        busiest_cpu_percent: (map(.maxpct) | st), busiest_cpu_seconds_per_gbit: (map(.maxcpg) | st),
        host_cpu_percent: (map(.host) | st),
        by_round: map({round, mbit_per_s: .mbit, tunnel_cpu_by_process: .parts, circuit})}}) | from_entries)}) | from_entries' "$SAMPLES")"
[[ -n "$SUMMARY" ]] || SUMMARY='{}'
sget() { # sget ROW DIR JQPATH -> value or empty
    jq -r --arg r "$1" --arg d "$2" ".[\$r][\$d]$3 // empty" <<<"$SUMMARY"
}
# ratio of medians
mratio() { # mratio ROW_A ROW_B DIR FIELD
    ratio "$(sget "$1" "$3" ".$4.median")" "$(sget "$2" "$3" ".$4.median")"
}
# paid_cost N DIR -> "median min max" of the per-round (free - paid) / free in %
paid_cost() {
    jq -r --arg p "hopwire_$1hop_paid" --arg f "hopwire_$1hop_free" --arg d "$2" "$JQ_DEFS"'
        [ (.[$p][$d].by_round // [])[] as $a | (.[$f][$d].by_round // [])[] | select(.round == $a.round)
          | select($a.mbit_per_s != null and .mbit_per_s != null and .mbit_per_s > 0)
          | 100 * (.mbit_per_s - $a.mbit_per_s) / .mbit_per_s ]
        | if length == 0 then empty else "\(med) \(min) \(max) \(length)" end' <<<"$SUMMARY"
}
dirname_of() { [[ "$1" == down ]] && echo download || echo upload; }
spread() { # spread ROW DIR FIELD DECIMALS -> "min–max"
    local lo hi
    lo="$(sget "$1" "$2" ".$3.min")"; hi="$(sget "$1" "$2" ".$3.max")"
    [[ -n "$lo" ]] && printf '%s-%s' "$(fmt "$lo" "$4")" "$(fmt "$hi" "$4")" || printf -- '-'
}

echo
echo "$MACHINE_LINE"
echo "topology: $TOPOLOGY; $ROUNDS interleaved rounds; iperf3 ${SECONDS_PER_TEST}s x$PARALLEL stream(s) to $SERVER_ADDR, download (-R) then upload; ping x$PINGS (round 1)"
(( USE_HOPWIRE )) && echo "hopwire binaries: $BIN_DIR ($BIN_SOURCE)"
echo "row order in every round: ${ROWS[*]}"
echo
printf '%-24s %-4s %9s %-17s %8s %-13s %8s %-17s %8s %8s %6s %8s\n' "path" "dir" "Mbit/s" "(min-max)" \
    "CPU s/Gb" "(min-max)" "tun CPU%" "busiest process" "its CPU%" "its s/Gb" "host%" "RTT ms"
for row in "${ROWS[@]}"; do
    for dir in down up; do
        m="$(sget "$row" "$dir" .mbit_per_s.median)"
        if [[ -z "$m" ]]; then
            [[ "$dir" == down ]] && printf '%-24s %-4s %9s  %s\n' "$(label "$row")" "$dir" "n/a" "${ERR[$row]:-not measured}"
            continue
        fi
        printf '%-24s %-4s %9s %-17s %8s %-13s %8s %-17s %8s %8s %6s %8s\n' "$(label "$row")" "$dir" \
            "$(fmt "$m" 1)" "$(spread "$row" "$dir" mbit_per_s 1)" \
            "$(fmt "$(sget "$row" "$dir" .tunnel_cpu_seconds_per_gbit.median)" 2)" "$(spread "$row" "$dir" tunnel_cpu_seconds_per_gbit 2)" \
            "$(fmt "$(sget "$row" "$dir" .tunnel_cpu_percent.median)" 0)" \
            "$(sget "$row" "$dir" '.busiest_process | join("/")')" \
            "$(fmt "$(sget "$row" "$dir" .busiest_cpu_percent.median)" 0)" \
            "$(fmt "$(sget "$row" "$dir" .busiest_cpu_seconds_per_gbit.median)" 2)" \
            "$(fmt "$(sget "$row" "$dir" .host_cpu_percent.median)" 0)" \
            "$([[ $dir == down ]] && fmt "${RTT[$row]:-}" 3)"
    done
    [[ -n "${ERR[$row]:-}" && -n "$(sget "$row" down .mbit_per_s.median)$(sget "$row" up .mbit_per_s.median)" ]] \
        && echo "    errors: ${ERR[$row]}"
done
echo "(medians over the rounds, (min-max) the spread; down = iperf3 -R, the server sends; up = the client sends."
echo " tun CPU% = CPU of the tunnel's processes during iperf3, 100 = one core: Hopwire client daemon + the circuit's nodes,"
echo " or both WireGuard ends (stock WG: wireguard-go client + the Hopwire exit); CPU s/Gb = those CPU seconds per Gbit"
echo " carried; busiest process = the one that spent most (a relay's own CPU), its CPU% and CPU s per Gbit;"
echo " kernel work in softirq is only partly counted; host% = the whole machine busy, of $(nproc)00)"
if (( USE_HOPWIRE )); then
    echo "circuits (round 1): $(for n in $HOPS_LIST; do for tn in paid free; do
        [[ -n "${ROW_PATH[hopwire_${n}hop_$tn|1]:-}" ]] && printf '%s: client → %s; ' "$(label "hopwire_${n}hop_$tn")" "${ROW_PATH[hopwire_${n}hop_$tn|1]//,/ → }"; done; done)"
    echo "devices: $(for row in "${ROWS[@]}"; do [[ -n "${DEV[$row]:-}" ]] && printf '%s %s; ' "$row" "${DEV[$row]}"; done)"
fi

# Targets.
declare -A VERDICT RATIO PAYCOST
echo
if (( USE_HOPWIRE )); then
echo "Targets (judged on the paid rows, what users run; medians over rounds):"
for dir in down up; do
    d="$(dirname_of "$dir")"
    RATIO[wg_$dir]="$(mratio hopwire_1hop_paid wireguard_go "$dir" mbit_per_s)"
    RATIO[wgfree_$dir]="$(mratio hopwire_1hop_free wireguard_go "$dir" mbit_per_s)"
    RATIO[bt_$dir]="$(mratio hopwire_1hop_paid boringtun "$dir" mbit_per_s)"
    VERDICT[wg_$dir]="$(check "${RATIO[wg_$dir]}" ">=" "$TARGET_1HOP_OVER_WG")"
    echo "  ${VERDICT[wg_$dir]}  1 hop / wireguard-go, $d: $(fmt "${RATIO[wg_$dir]}" 2)x (target >= ${TARGET_1HOP_OVER_WG}x; free 1 hop $(fmt "${RATIO[wgfree_$dir]}" 2)x; paid 1 hop / boringtun-cli $(fmt "${RATIO[bt_$dir]}" 2)x)"
done
if [[ " $HOPS_LIST " == *" 3 "* && " $HOPS_LIST " == *" 1 "* ]]; then
    for dir in down up; do
        d="$(dirname_of "$dir")"
        RATIO[h31_$dir]="$(mratio hopwire_3hop_paid hopwire_1hop_paid "$dir" mbit_per_s)"
        RATIO[h31free_$dir]="$(mratio hopwire_3hop_free hopwire_1hop_free "$dir" mbit_per_s)"
        VERDICT[h31_$dir]="$(check "${RATIO[h31_$dir]}" ">=" "$TARGET_RATIO_3HOP")"
        echo "  ${VERDICT[h31_$dir]}  3 hops / 1 hop, $d: $(fmt "${RATIO[h31_$dir]}" 2)x (target >= ${TARGET_RATIO_3HOP}x; free $(fmt "${RATIO[h31free_$dir]}" 2)x)"
    done
    for dir in down up; do
        d="$(dirname_of "$dir")"
        # The inverse ratio of CPU per Gbit: the 3-hop/1-hop ratio at equal CPU.
        RATIO[c31_$dir]="$(mratio hopwire_1hop_paid hopwire_3hop_paid "$dir" tunnel_cpu_seconds_per_gbit)"
        RATIO[c31free_$dir]="$(mratio hopwire_1hop_free hopwire_3hop_free "$dir" tunnel_cpu_seconds_per_gbit)"
        VERDICT[c31_$dir]="$(check "${RATIO[c31_$dir]}" ">=" "$TARGET_RATIO_3HOP_CPU")"
        echo "  ${VERDICT[c31_$dir]}  3 hops / 1 hop CPU-normalised (1-hop CPU s/Gb / 3-hop CPU s/Gb), $d: $(fmt "${RATIO[c31_$dir]}" 2)x (target >= ${TARGET_RATIO_3HOP_CPU}x; free $(fmt "${RATIO[c31free_$dir]}" 2)x)"
    done
fi
if [[ " $HOPS_LIST " == *" 2 "* && " $HOPS_LIST " == *" 1 "* ]]; then
    for dir in down up; do
        echo "  (info) 2 hops / 1 hop, $(dirname_of "$dir"): paid $(fmt "$(mratio hopwire_2hop_paid hopwire_1hop_paid "$dir" mbit_per_s)" 2)x, free $(fmt "$(mratio hopwire_2hop_free hopwire_1hop_free "$dir" mbit_per_s)" 2)x"
    done
fi
for n in $HOPS_LIST; do
    for dir in down up; do
        PAYCOST[$n$dir]="$(paid_cost "$n" "$dir")"
        c="${PAYCOST[$n$dir]%% *}"
        if [[ "$n" == 2 ]]; then v="(info)"; else v="$(awk -v c="$c" -v t="$TARGET_PAY_COST_PCT" 'BEGIN { if (c == "") print "n/a"; else print (c < t) ? "PASS" : "FAIL" }')"; fi
        VERDICT[pay$n$dir]="$v"
        read -r _ cmin cmax cn <<<"${PAYCOST[$n$dir]:-x}"
        echo "  $v  paying costs at $n hop(s), $(dirname_of "$dir"): $(fmt "$c" 1) % (median of ${cn:-0} paid/free pairs, (free − paid) / free; spread $(fmt "${cmin:-}" 1)…$(fmt "${cmax:-}" 1) %; target < $TARGET_PAY_COST_PCT %)"
    done
done
echo "(Mbit/s ratios move with other load on the machine, see host%; the CPU-normalised ratio is the steadier figure;"
echo " a negative paying cost means the paid run of the pair was the faster one)"
else
    RATIO[bt_wg_down]="$(mratio boringtun wireguard_go down mbit_per_s)"; RATIO[bt_wg_up]="$(mratio boringtun wireguard_go up mbit_per_s)"
    echo "boringtun-cli / wireguard-go: download $(fmt "${RATIO[bt_wg_down]}" 2)x, upload $(fmt "${RATIO[bt_wg_up]}" 2)x (no Hopwire rows: no targets judged)"
fi

if (( USE_HOPWIRE )); then
    echo
    echo "Circuit build time (free testnet, round 1): $BUILDS builds per hop count with hopwire-bench along the daemon's circuit, each closed before the next;"
    echo "target: p95 < ${TARGET_BUILD_RTTS} x path RTT + ${TARGET_BUILD_EXTRA_MS} ms, path RTT = ping RTT through that circuit's tunnel (table above)."
    printf '%-6s %7s %9s %9s %9s %10s %11s %12s %10s  %s\n' "hops" "built" "median" "p95" "max" "daemon" "path RTT" "links RTT" "target" "verdict"

    for n in $HOPS_LIST; do
        k="free$n"
        b="${BUILD_JSON[$k]:-}"
        rtt="${RTT[hopwire_${n}hop_free]:-}"
        target=""
        [[ -n "$rtt" ]] && target="$(awk -v r="$rtt" -v k="$TARGET_BUILD_RTTS" -v e="$TARGET_BUILD_EXTRA_MS" 'BEGIN { printf "%.3f", k * r + e }')"
        BUILD_TARGET[$n]="$target"
        p95="$( [[ -n "$b" ]] && jq -r '.build_ms.p95 // empty' <<<"$b")"
        BUILD_VERDICT[$n]="$(check "$p95" "<" "$target")"
        printf '%-6s %7s %9s %9s %9s %10s %11s %12s %10s  %s\n' "$n" \
            "$( [[ -n "$b" ]] && jq -r '"\(.ok)/\(.count)"' <<<"$b" || echo n/a)" \
            "$(fmt "$( [[ -n "$b" ]] && jq -r '.build_ms.median // empty' <<<"$b")" 2)" \
            "$(fmt "$p95" 2)" \
            "$(fmt "$( [[ -n "$b" ]] && jq -r '.build_ms.max // empty' <<<"$b")" 2)" \
            "$(fmt "$(jq -r '.build_ms // empty' <<<"${HW_STATUS[$k]:-{\}}" 2>/dev/null)" 2)" \
            "$(fmt "$rtt" 3)" \
            "$(fmt "${LINK_RTT[$k]:-}" 3)" \
            "$(fmt "$target" 2)" "${BUILD_VERDICT[$n]}${BUILD_ERR[$k]:+ (${BUILD_ERR[$k]})}"
    done
    echo "(ms; 'daemon' = build_ms of the daemon's own connect; 'links RTT' = sum of ping RTTs outside the tunnel: client → guard → … → exit → server)"

    echo
    if [[ -n "$MEM_JSON" ]]; then
        built="$(jq -r .built <<<"$MEM_JSON")"
        echo "Relay memory per idle circuit (free testnet): $built (+$(jq -r .warmup <<<"$MEM_JSON") warm-up) of $CIRCUITS requested circuits held idle along ${MEM_PATH_NAMES//,/ → } (fresh relay1 and relay2),"
        echo "RSS (VmRSS) sampled every $STEP circuits; per circuit = (after − before) / circuits, and the least-squares slope over all samples."
        [[ -n "$(jq -r '.stopped // empty' <<<"$MEM_JSON")" ]] && echo "  NOTE: $(jq -r .stopped <<<"$MEM_JSON")"
        printf '%-8s %-44s %10s %10s %12s %12s %10s  %s\n' "node" "role" "before KiB" "after KiB" "B/circuit" "slope B/c" "target" "verdict"
        for name in ${MEM_PATH_NAMES//,/ }; do
            m="$(jq -c --arg n "$name" '.memory[$n] // empty' <<<"$MEM_JSON")"
            case "$name" in
                relay1) role="guard (+1 client QUIC connection per circuit)"; target=""; v="(not a target)" ;;
                relay2) role="middle (circuits share one link per side)"; target="$TARGET_BYTES_PER_CIRCUIT"
                        v="$(check "$(jq -r '.bytes_per_circuit_slope // empty' <<<"$m")" "<" "$target")" ;;
                *)      role="exit (one WireGuard session for all)"; target=""; v="(not a target)" ;;
            esac
            [[ "$name" == relay2 ]] && MEM_VERDICT="$v"
            printf '%-8s %-44s %10s %10s %12s %12s %10s  %s\n' "$name" "$role" \
                "$(jq -r '.vm_rss_kib_before // "n/a"' <<<"${m:-{\}}")" "$(jq -r '.vm_rss_kib_after // "n/a"' <<<"${m:-{\}}")" \
                "$(jq -r '.bytes_per_circuit // "n/a"' <<<"${m:-{\}}")" "$(jq -r '.bytes_per_circuit_slope // "n/a"' <<<"${m:-{\}}")" \
                "${target:-—}" "$v"
        done
        echo "build ms while piling up: $(jq -r '.build_ms | "median \(.median), p95 \(.p95), max \(.max)"' <<<"$MEM_JSON")"
        echo "hopwire_circuits (metrics): relay1 ${MEM_METRICS[relay1_before]:-?} before, ${MEM_METRICS[relay1_held]:-?} held, ${MEM_METRICS[relay1_after_close]:-?} after closing; relay2 ${MEM_METRICS[relay2_before]:-?}, ${MEM_METRICS[relay2_held]:-?}, ${MEM_METRICS[relay2_after_close]:-?}; hopwire_circuit_hop_state_bytes says ${MEM_METRICS[state_bytes]:-?} B/circuit"
    elif (( CIRCUITS > 0 )); then
        echo "Relay memory per idle circuit: not measured: ${MEM_ERR:-unknown error}"
    fi
    for tn in free paid; do
        [[ -n "${TN_JSON[$tn]:-}" ]] || continue
        echo "hopwire testnet own check ($tn, 3 hops): download $(jq -r '"\(.download.bytes) bytes in \(.download.seconds) s = \(.download.mbit_per_s) Mbit/s, sha256_ok=\(.download.sha256_ok), rtt_ms=\(.rtt_ms)"' <<<"${TN_JSON[$tn]}" 2>/dev/null)"
    done
fi

if [[ -n "$JSON_OUT" ]]; then
    results='{}'
    for row in "${ROWS[@]}"; do
        hops=""; paid=""; tnet="$BASE_TN"
        if [[ "$row" == hopwire_* ]]; then
            hops="${row#hopwire_}"; hops="${hops%%hop*}"; tnet="${row##*_}"
            paid="$([[ $tnet == paid ]] && echo true || echo false)"
        fi
        results="$(jq -c --arg row "$row" --arg lbl "$(label "$row")" --arg tn "$tnet" --arg pfx "${TN_PREFIX[$tnet]:-}" \
            --arg hops "$hops" --arg paid "$paid" --arg dev "${DEV[$row]:-}" --arg err "${ERR[$row]:-}" \
            --arg rtt "${RTT[$row]:-}" --arg rmin "${RTT_MIN[$row]:-}" --arg rmax "${RTT_MAX[$row]:-}" \
            --argjson s "$(jq -c --arg r "$row" '.[$r] // {}' <<<"$SUMMARY")" '
            def num: if . == "" then null else tonumber end;
            def str: if . == "" then null else . end;
            . + {($row): {"label": $lbl, topology: (if $tn == "own" then "own" else "\($tn) testnet \($pfx)" end),
                          hops: ($hops|num), paid: (if $paid == "" then null else ($paid == "true") end),
                          ok: ($err == "" and $s.down.mbit_per_s != null and $s.up.mbit_per_s != null),
                          error: ($err|str), device: ($dev|str),
                          rtt_ms_avg: ($rtt|num), rtt_ms_min: ($rmin|num), rtt_ms_max: ($rmax|num),
                          download: ($s.down // null), upload: ($s.up // null)}}' <<<"$results")"
    done
    builds='{}'
    for n in $HOPS_LIST; do
        k="free$n"
        builds="$(jq -c --arg n "$n" --arg b "${BUILD_JSON[$k]:-}" --arg rtt "${RTT[hopwire_${n}hop_free]:-}" \
            --arg links "${LINK_RTT[$k]:-}" --arg parts "${LINK_RTTS[$k]:-}" --arg target "${BUILD_TARGET[$n]:-}" \
            --arg verdict "${BUILD_VERDICT[$n]:-}" --arg err "${BUILD_ERR[$k]:-}" '
            def num: if . == "" or . == "n/a" then null else tonumber end;
            . + {($n): {tool: (if $b == "" then null else ($b|fromjson) end),
                        path_rtt_ms_tunnel_ping: ($rtt|num), path_rtt_ms_sum_of_links: ($links|num),
                        link_rtts_ms: (if $parts == "" then null else ($parts|split("+")|map(num)) end),
                        target_ms: ($target|num), verdict_p95: (if $verdict == "" then null else $verdict end),
                        error: (if $err == "" then null else $err end)}}' <<<"$builds")"
    done
    metrics='{}'
    for k in "${!MEM_METRICS[@]}"; do
        metrics="$(jq -c --arg k "$k" --arg v "${MEM_METRICS[$k]}" '. + {($k): (if $v == "" then null else ($v|tonumber) end)}' <<<"$metrics")"
    done
    targets='{}'
    for dir in down up; do
        d="$(dirname_of "$dir")"
        targets="$(jq -c --arg d "$d" --arg wg "${RATIO[wg_$dir]:-}" --arg wgf "${RATIO[wgfree_$dir]:-}" --arg bt "${RATIO[bt_$dir]:-}" \
            --arg h31 "${RATIO[h31_$dir]:-}" --arg h31f "${RATIO[h31free_$dir]:-}" \
            --arg c31 "${RATIO[c31_$dir]:-}" --arg c31f "${RATIO[c31free_$dir]:-}" \
            --arg vwg "${VERDICT[wg_$dir]:-}" --arg vh "${VERDICT[h31_$dir]:-}" --arg vc "${VERDICT[c31_$dir]:-}" '
            def num: if . == "" then null else tonumber end;
            def str: if . == "" or . == "n/a" then null else . end;
            . + {($d): {hopwire_1hop_paid_over_wireguard_go: ($wg|num), hopwire_1hop_free_over_wireguard_go: ($wgf|num),
                        hopwire_1hop_paid_over_boringtun: ($bt|num),
                        hops3_over_1hop_paid: ($h31|num), hops3_over_1hop_free: ($h31f|num),
                        hops3_over_1hop_cpu_normalised_paid: ($c31|num), hops3_over_1hop_cpu_normalised_free: ($c31f|num),
                        verdicts: {hop1_over_wireguard_go: ($vwg|str), hops3_over_1hop: ($vh|str),
                                   hops3_over_1hop_cpu_normalised: ($vc|str)}}}' <<<"$targets")"
    done
    paycost='{}'
    for n in $HOPS_LIST; do
        for dir in down up; do
            read -r c cmin cmax cn <<<"${PAYCOST[$n$dir]:-}"
            paycost="$(jq -c --arg n "$n" --arg d "$(dirname_of "$dir")" --arg c "${c:-}" --arg lo "${cmin:-}" --arg hi "${cmax:-}" \
                --arg cn "${cn:-}" --arg v "${VERDICT[pay$n$dir]:-}" '
                def num: if . == "" then null else tonumber end;
                .[$n] += {($d): {cost_percent_median: ($c|num), cost_percent_min: ($lo|num), cost_percent_max: ($hi|num),
                                 pairs: ($cn|num), verdict: (if $v == "" or $v == "n/a" then null else $v end)}}' <<<"$paycost")"
        done
    done
    testnets='{}'
    for tn in free paid; do
        [[ -n "${TN_JSON[$tn]:-}" ]] || continue
        testnets="$(jq -c --arg tn "$tn" --argjson j "${TN_JSON[$tn]}" '. + {($tn): $j}' <<<"$testnets")"
    done
    if jq -n --argjson results "$results" --arg nproc "$MACHINE_NPROC" --arg kernel "$MACHINE_KERNEL" \
        --arg date "$MACHINE_DATE" --arg cpu "$MACHINE_CPU" --arg load "$MACHINE_LOAD" --arg topo "$TOPOLOGY" \
        --argjson secs "$SECONDS_PER_TEST" --argjson pings "$PINGS" --argjson par "$PARALLEL" --argjson rounds "$ROUNDS" \
        --arg order "${ROWS[*]}" \
        --arg profile "$( (( USE_HOPWIRE )) && echo "$BIN_DIR ($BIN_SOURCE)")" \
        --argjson targets "$targets" --argjson paycost "$paycost" --argjson testnets "$testnets" \
        --argjson builds "$builds" --argjson metrics "$metrics" \
        --arg mem "$MEM_JSON" --arg memerr "$MEM_ERR" --arg memverdict "$MEM_VERDICT" --arg mempath "$MEM_PATH_NAMES" \
        --argjson circuits "$CIRCUITS" --argjson nbuilds "$BUILDS" \
        --arg twg "$TARGET_1HOP_OVER_WG" --arg t31 "$TARGET_RATIO_3HOP" --arg tc31 "$TARGET_RATIO_3HOP_CPU" \
        --arg tpay "$TARGET_PAY_COST_PCT" --arg tk "$TARGET_BUILD_RTTS" --arg te "$TARGET_BUILD_EXTRA_MS" \
        --arg tb "$TARGET_BYTES_PER_CIRCUIT" --arg rev "$SOURCE_REV" --arg bt "${BORINGTUN:-}" --arg btv "${BT_VERSION_SEEN:-}" '
        def num: if . == "" then null else tonumber end;
        {machine: {nproc: ($nproc|tonumber), kernel: $kernel, date: $date, cpu: $cpu, load1_at_start: ($load|num),
                   source: (if $rev == "" then null else $rev end)},
         topology: $topo, server: "'"$SERVER_ADDR"'", rounds: $rounds, row_order: ($order|split(" ")),
         iperf3_seconds: $secs, iperf3_parallel: $par,
         directions: {download: "iperf3 -R from the client namespace (the server sends)", upload: "iperf3 from the client namespace (the client sends)"},
         pings: $pings, pings_note: "first round only",
         statistics: "per row and direction: median, min, max and samples over the rounds",
         hopwire_binaries: (if $profile == "" then null else $profile end),
         boringtun_cli: (if $bt == "" then null else {path: $bt, version: $btv} end),
         results: $results,
         ratios: $targets,
         paying_cost: ($paycost + {method: "per round, (free − paid) / free Mbit/s of the back-to-back pair, in %; median over rounds"}),
         targets: {hopwire_1hop_over_wireguard_go_at_least: ($twg|num), hops3_over_1hop_at_least: ($t31|num),
                   hops3_over_1hop_cpu_normalised_at_least: ($tc31|num), paying_cost_percent_under: ($tpay|num),
                   judged_on: "paid rows, each direction",
                   build_ms_under: "\($tk) x path RTT + \($te) ms (path RTT = ping through the tunnel; judged on p95)",
                   middle_bytes_per_idle_circuit_under: ($tb|num),
                   verdicts: {build: ($builds | map_values(.verdict_p95)),
                              middle_memory: (if $memverdict == "" then null else $memverdict end)}},
         circuit_build: {builds_per_hop_count: $nbuilds, method: "hopwire-bench build along the free testnet daemon circuit of that length (round 1), one at a time, each closed before the next",
                         by_hops: $builds},
         relay_memory: {path: ($mempath|split(",")), requested: $circuits,
                        method: "hopwire-bench hold (free testnet, before the rounds): idle circuits along the path, VmRSS of each node sampled as they pile up (after 5 warm-up circuits)",
                        result: (if $mem == "" then null else ($mem|fromjson) end),
                        hopwire_circuits_metric: $metrics,
                        error: (if $memerr == "" then null else $memerr end)},
         hopwire_testnets: $testnets}' >"$JSON_OUT"; then
        log "wrote $JSON_OUT"
    else
        log "could not write $JSON_OUT"; FAILED=1
    fi
fi

exit "$FAILED"
