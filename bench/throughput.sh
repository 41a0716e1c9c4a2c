#!/usr/bin/env bash
# bench/throughput.sh — TCP throughput and round trip of several paths on one
# namespace topology: the bare veth path, wireguard-go between the client and
# the exit namespace (with nftables masquerade in the exit, as Hopwire does),
# and Hopwire circuits of 1, 2 and 3 hops; plus circuit build time per hop
# count and relay memory per idle circuit (with bench/circuits, the
# hopwire-bench tool). See bench/README.md.
#
# It needs root, installs nothing, and removes every namespace, process,
# device and nftables table it created when it exits (normally, on failure,
# or on Ctrl-C). It never sends traffic outside the namespaces it uses.

set -uo pipefail

# ---------------------------------------------------------------- defaults

SECONDS_PER_TEST=10
PINGS=20
PARALLEL=1
JSON_OUT=""
USE_HOPWIRE=1
PREFIX="hwbench"
SIZE_MB=""
PROFILE="debug"
HOPS_LIST="1 2 3"   # circuit lengths to measure
BUILDS=20           # circuit builds per hop count, for the build time
CIRCUITS=500        # idle circuits to hold for the memory figure (0 = skip)
STEP=25             # memory sample every STEP circuits
# Targets of the multi-hop issue, on this 2-core machine.
TARGET_RATIO_3HOP=0.5            # 3-hop throughput / 1-hop throughput, at least
TARGET_BUILD_RTTS=3              # circuit build under 3 x path RTT + 20 ms
TARGET_BUILD_EXTRA_MS=20
TARGET_BYTES_PER_CIRCUIT=65536   # middle relay memory per idle circuit, under
METRICS_ADDR="127.0.0.1:9100"    # where restarted relays serve their metrics

SERVER_ADDR="198.18.0.10"       # the pretend internet host, in ns inet
EXIT_UPLINK_ADDR="198.18.1.2"   # exit side of the inet<->exit veth
CLIENT_UPLINK_ADDR="198.18.2.2" # client side of the inet<->client veth
IPERF_PORT=5201
WG_PORT=51821
WG_NET="10.99.0.0/24"
WG_EXIT_ADDR="10.99.0.1"
WG_CLIENT_ADDR="10.99.0.2"
WG_MTU=1420
# wireguard-go puts its control socket in /var/run/wireguard/NAME.sock, which
# network namespaces do not separate: the two ends need different names.
WG_EXIT_IF="wgbench-e"
WG_CLIENT_IF="wgbench-c"
NFT_TABLE="hwbench_nat"
DEV_PREFIX="hwbenchdev"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

usage() {
    cat <<EOF
Usage: $0 [options]

Measures TCP download throughput (iperf3 -R from the client namespace to the
pretend internet server $SERVER_ADDR) and ping round trip for: the bare veth
path, wireguard-go between client and exit namespaces, and Hopwire circuits
of 1, 2 and 3 hops; circuit build time per hop count; and the memory an idle
circuit costs the middle relay. Must run as root.

Options:
  --seconds N     length of each iperf3 test in seconds (default $SECONDS_PER_TEST)
  --pings N       pings per path for the round trip (default $PINGS)
  --parallel N    parallel TCP streams per iperf3 test (default $PARALLEL)
  --json FILE     also write the figures as JSON to FILE
  --no-hopwire    build an own topology (namespaces $DEV_PREFIX-*) and measure
                  only the bare veth path and wireguard-go
  --prefix P      testnet prefix for 'hopwire testnet' (default $PREFIX)
  --size-mb N     size of the test file 'hopwire testnet' downloads
  --release       use target/release instead of target/debug
  --hops LIST     circuit lengths to measure, e.g. 1,3 (default 1,2,3)
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

HOPWIRE=""
if (( USE_HOPWIRE )); then
    BIN_DIR="${HOPWIRE_BIN_DIR:-$REPO_DIR/target/$PROFILE}"
    BIN_SOURCE="$([[ -n "${HOPWIRE_BIN_DIR:-}" ]] && echo "from HOPWIRE_BIN_DIR" || echo "$PROFILE build")"
    HOPWIRE="$BIN_DIR/hopwire"
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

PIDS=()            # processes we started (iperf3 server, wireguard-go)
WG_PIDS=()         # the wireguard-go ones among them
OWN_NS=()          # namespaces we created ourselves
TESTNET_UP=0       # 1 once 'hopwire testnet --keep' may have left something
NFT_NS=""          # namespace holding our nftables table
FWD_NS=""; FWD_OLD=""   # ip_forward we changed, to restore
CLEANED=0

cleanup() {
    (( CLEANED )) && return
    CLEANED=1
    trap '' INT TERM
    local pid ns
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    PIDS=()
    rm -f "/var/run/wireguard/$WG_EXIT_IF.sock" "/var/run/wireguard/$WG_CLIENT_IF.sock"
    if [[ -n "$NFT_NS" ]]; then
        ip netns exec "$NFT_NS" nft delete table ip "$NFT_TABLE" 2>/dev/null
        NFT_NS=""
    fi
    if [[ -n "$FWD_NS" && -n "$FWD_OLD" ]]; then
        ip netns exec "$FWD_NS" sysctl -qw "net.ipv4.ip_forward=$FWD_OLD" 2>/dev/null
        FWD_NS=""
    fi
    if (( TESTNET_UP )); then
        log "tearing down testnet '$PREFIX'"
        timeout 120 "$HOPWIRE" testnet --down --prefix "$PREFIX" >"$WORK/down.out" 2>&1 \
            || { log "'hopwire testnet --down --prefix $PREFIX' failed:"; sed 's/^/    /' "$WORK/down.out" >&"$LOG_FD"; }
        TESTNET_UP=0
    fi
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

TESTNET_JSON=""
start_testnet() {
    log "starting 'hopwire testnet --keep --json --prefix $PREFIX' (binaries: $BIN_DIR)"
    # A previous run that was killed may have left this prefix behind.
    timeout 120 "$HOPWIRE" testnet --down --prefix "$PREFIX" >/dev/null 2>&1
    # Enough nodes for circuits of up to 3 hops with a choice of each hop.
    # Nodes charge nothing here: bench/payments.sh measures what payments cost.
    local args=(testnet --keep --json --prefix "$PREFIX" --hops 3 --relays 4 --exits 2 --free)
    [[ -n "$SIZE_MB" ]] && args+=(--size-mb "$SIZE_MB")
    TESTNET_UP=1
    local t0=$SECONDS
    # The daemons it leaves running must not inherit our lock and log fds.
    timeout --foreground -k 10 300 "$HOPWIRE" "${args[@]}" >"$WORK/testnet.json" 2>"$WORK/testnet.err" \
        {LOCK_FD}>&- {LOG_FD}>&-
    local rc=$?
    if (( rc != 0 )); then
        log "'hopwire ${args[*]}' failed (exit $rc after $((SECONDS - t0)) s); stderr tail:"
        tail -n 30 "$WORK/testnet.err" | sed 's/^/    /' >&2
        log "stdout tail:"; tail -n 10 "$WORK/testnet.json" | sed 's/^/    /' >&2
        return 1
    fi
    # One JSON object on stdout; tolerate stray lines before it.
    local obj
    obj="$(sed -n '/^[[:space:]]*{/,$p' "$WORK/testnet.json")"
    if ! TESTNET_JSON="$(jq -ce . <<<"$obj" 2>/dev/null)"; then
        log "'hopwire testnet --json' did not print one JSON object; stdout:"
        sed 's/^/    /' "$WORK/testnet.json" >&2
        return 1
    fi
    log "testnet up in $((SECONDS - t0)) s"
    NS_INET="$(jq -r '.namespaces.inet // empty' <<<"$TESTNET_JSON")"
    NS_EXIT="$(jq -r '.namespaces.exit // empty' <<<"$TESTNET_JSON")"
    NS_CLIENT="$(jq -r '.namespaces.client // empty' <<<"$TESTNET_JSON")"
    HW_SOCKET="$(jq -r '.client.socket // empty' <<<"$TESTNET_JSON")"
    local ns
    for ns in "$NS_INET" "$NS_EXIT" "$NS_CLIENT"; do
        [[ -n "$ns" ]] && ip netns list | grep -qw -- "$ns" \
            || { log "testnet JSON names namespace '$ns', which does not exist: $TESTNET_JSON"; return 1; }
    done
    [[ -n "$HW_SOCKET" ]] || { log "testnet JSON has no client.socket: $TESTNET_JSON"; return 1; }
    TOPOLOGY="hopwire testnet ($PREFIX)"
}

# ---------------------------------------------------------------- measuring

start_iperf_server() {
    ip netns exec "$NS_INET" iperf3 -s -B "$SERVER_ADDR" -p "$IPERF_PORT" >"$WORK/iperf3-server.log" 2>&1 \
        {LOCK_FD}>&- {LOG_FD}>&- &
    PIDS+=($!)
    wait_for 50 ip netns exec "$NS_INET" sh -c "ss -ltn | grep -q '$SERVER_ADDR:$IPERF_PORT'" \
        || { log "iperf3 server did not start:"; sed 's/^/    /' "$WORK/iperf3-server.log" >&2; return 1; }
}

declare -A MBIT RTT RTT_MIN RTT_MAX RETR CPU_LOCAL CPU_REMOTE DEV ERR TUNNEL_CPU TUNNEL_CPU_PARTS CPU_PER_GBIT

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
declare -A HOST_CPU   # whole machine's busy CPU during the iperf3 run, 100 = one core

# measure NAME EXPECTED_DEV_DESCRIPTION-CHECK-FUNCTION
measure() {
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

    log "[$name] iperf3 -R for $SECONDS_PER_TEST s (+1 s omitted), $PARALLEL stream(s)"
    local out="$WORK/iperf3-$name.json"
    local np before=() t0 t1
    for np in "${TUNNEL_PIDS[@]}"; do before+=("$(cpu_ticks "${np#*=}")"); done
    local host0 host1
    host0="$(host_ticks)"
    t0="$(date +%s.%N)"
    nsrun $((SECONDS_PER_TEST + 40)) "$NS_CLIENT" iperf3 -c "$SERVER_ADDR" -p "$IPERF_PORT" -R \
        -t "$SECONDS_PER_TEST" -O 1 -P "$PARALLEL" --connect-timeout 5000 -J >"$out" 2>"$out.err"
    local rc=$?
    t1="$(date +%s.%N)"
    host1="$(host_ticks)"
    HOST_CPU[$name]="$(awk -v a="$host0" -v b="$host1" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); if (y[2] > x[2]) printf "%.0f", 100 * n * (y[1] - x[1]) / (y[2] - x[2]) }')"
    if (( ${#TUNNEL_PIDS[@]} > 0 )); then
        local i after parts=() total=0 pct tck
        tck="$(getconf CLK_TCK)"
        for i in "${!TUNNEL_PIDS[@]}"; do
            np="${TUNNEL_PIDS[$i]}"; after="$(cpu_ticks "${np#*=}")"
            [[ -n "$after" && -n "${before[$i]}" ]] || continue
            pct="$(awk -v d=$((after - before[i])) -v k="$tck" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 100 * d / k / (b - a) }')"
            parts+=("${np%=*} $pct%"); total=$((total + pct))
        done
        TUNNEL_CPU[$name]="$total"
        TUNNEL_CPU_PARTS[$name]="$(IFS=,; echo "${parts[*]}")"
    fi
    local bps
    bps="$(jq -r '.end.sum_received.bits_per_second // empty' "$out" 2>/dev/null)"
    if (( rc != 0 )) || [[ -z "$bps" ]]; then
        local why
        why="$(jq -r '.error // empty' "$out" 2>/dev/null)"
        [[ -z "$why" ]] && why="$(tail -n 3 "$out.err" "$out" 2>/dev/null | tr '\n' ' ')"
        log "[$name] iperf3 failed (exit $rc): $why"
        ERR[$name]="${ERR[$name]:+${ERR[$name]}; }iperf3 failed: $why"
        return 1
    fi
    MBIT[$name]="$(awk -v b="$bps" 'BEGIN { printf "%.1f", b / 1e6 }')"
    RETR[$name]="$(jq -r '.end.sum_sent.retransmits // empty' "$out")"
    CPU_LOCAL[$name]="$(jq -r '.end.cpu_utilization_percent.host_total // empty' "$out")"
    CPU_REMOTE[$name]="$(jq -r '.end.cpu_utilization_percent.remote_total // empty' "$out")"
    # CPU seconds the tunnel's processes spend per Gbit carried.
    [[ -n "${TUNNEL_CPU[$name]:-}" ]] && \
        CPU_PER_GBIT[$name]="$(awk -v c="${TUNNEL_CPU[$name]}" -v m="${MBIT[$name]}" 'BEGIN { if (m > 0) printf "%.2f", c / 100 / (m / 1000) }')"
    log "[$name] $(fmt "${MBIT[$name]}" 1) Mbit/s, rtt avg $(fmt "${RTT[$name]:-}" 3) ms${TUNNEL_CPU[$name]:+, tunnel CPU ${TUNNEL_CPU[$name]}% (${TUNNEL_CPU_PARTS[$name]})}"
    [[ -z "${ERR[$name]:-}" ]]
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
declare -A NODE_PID   # name -> pid of its hopwire-node now (after a restart)
node_pid() { # node_pid NAME-OR-SHORT-ID
    local name; name="$(node_field "$1" name)"
    [[ -n "$name" && -n "${NODE_PID[$name]:-}" ]] && echo "${NODE_PID[$name]}" || node_field "$1" pid
}

# restart_with_metrics NAME: turns on the node's Prometheus metrics
# (node.toml [node] metrics_listen) and restarts it in its namespace, with
# the same keys and so the same record.
restart_with_metrics() {
    local name="$1" ns cfg pid
    ns="$(node_field "$name" namespace)"; cfg="$(node_field "$name" config)"; pid="$(node_pid "$name")"
    [[ -n "$ns" && -f "$cfg" && -n "$pid" ]] || { log "testnet JSON lacks namespace/config/pid of $name"; return 1; }
    if ! grep -q '^metrics_listen' "$cfg"; then
        sed -i "s|^# metrics_listen = .*|metrics_listen = \"$METRICS_ADDR\"|" "$cfg"
        grep -q '^metrics_listen' "$cfg" || { log "$cfg: no '# metrics_listen' line to turn on"; return 1; }
    fi
    # Only the node the testnet started: check before signalling the pid.
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == hopwire-node ]] \
        || { log "$name: pid $pid is not a hopwire-node process"; return 1; }
    kill -TERM "$pid"
    wait_for 100 sh -c "! kill -0 $pid" || { log "$name (pid $pid) did not stop"; return 1; }
    ip netns exec "$ns" "$BIN_DIR/hopwire-node" run --config "$cfg" >"$WORK/node-$name.log" 2>&1 \
        {LOCK_FD}>&- {LOG_FD}>&- &
    NODE_PID[$name]=$!; PIDS+=($!)
    wait_for 100 grep -q "node serving" "$WORK/node-$name.log" &&
    wait_for 50 ip netns exec "$ns" curl -sf --max-time 1 "http://$METRICS_ADDR/" \
        || { log "$name did not come back with metrics:"; tail -n 10 "$WORK/node-$name.log" | sed 's/^/    /' >&2; return 1; }
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
# hopwire_connect N: connects the daemon with an N-hop circuit chosen from
# the testnet's records and keeps its status.
hopwire_connect() {
    local n="$1" name="hopwire_${1}hop"
    log "[$name] connecting with --hops $n"
    if ! timeout 90 "$HOPWIRE" --socket "$HW_SOCKET" connect --nodes "$NODES_FILE" --hops "$n" \
            >"$WORK/connect-$n.out" 2>&1; then
        ERR[$name]="connect --hops $n failed: $(tail -n 3 "$WORK/connect-$n.out" | tr '\n' ' ')"
        log "[$name] ${ERR[$name]}"; return 1
    fi
    local status hops
    status="$(hw_status)"
    HW_STATUS[$n]="$status"
    if [[ "$(jq -r '.state' <<<"$status")" != connected ]]; then
        ERR[$name]="client state is '$(jq -r '.state // "unknown"' <<<"$status")', not connected: $(jq -r '.error // ""' <<<"$status")"
        log "[$name] ${ERR[$name]}"; return 1
    fi
    hops="$(jq -r '.circuit | length' <<<"$status")"
    if [[ "$hops" != "$n" ]]; then
        ERR[$name]="asked for $n hops, the circuit has $hops"; log "[$name] ${ERR[$name]}"; return 1
    fi
    HW_PATH_IDS[$n]="$(jq -r '[.circuit[].id] | join(",")' <<<"$status")"
    local id names=()
    for id in ${HW_PATH_IDS[$n]//,/ }; do names+=("$(node_field "$id" name)"); done
    HW_PATH_NAMES[$n]="$(IFS=,; echo "${names[*]}")"
    log "[$name] circuit ${HW_PATH_NAMES[$n]} (${HW_PATH_IDS[$n]}), built in $(jq -r '.build_ms' <<<"$status") ms, mtu $(jq -r '.mtu' <<<"$status")"
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
link_rtts() {
    local n="$1" from="$NS_CLIENT" id addr ns rtt sum=0 parts=() ok=1
    for id in ${HW_PATH_IDS[$n]//,/ }; do
        addr="$(node_field "$id" addr)"; ns="$(node_field "$id" namespace)"
        rtt="$(ping_avg "$from" "$addr")"
        [[ -n "$rtt" ]] || { ok=0; rtt="n/a"; }
        parts+=("$rtt"); [[ "$rtt" != n/a ]] && sum="$(awk -v a="$sum" -v b="$rtt" 'BEGIN { print a + b }')"
        from="$ns"
    done
    rtt="$(ping_avg "$from" "$SERVER_ADDR")"
    [[ -n "$rtt" ]] || { ok=0; rtt="n/a"; }
    parts+=("$rtt"); [[ "$rtt" != n/a ]] && sum="$(awk -v a="$sum" -v b="$rtt" 'BEGIN { print a + b }')"
    LINK_RTTS[$n]="$(IFS=+; echo "${parts[*]}")"
    (( ok )) && LINK_RTT[$n]="$sum"
}

# circuit_builds N: builds $BUILDS circuits along the daemon's N-hop path
# with hopwire-bench (closing each) and keeps its JSON.
circuit_builds() {
    local n="$1" out="$WORK/builds-$1.json"
    log "[hopwire_${n}hop] $BUILDS circuit builds along ${HW_PATH_NAMES[$n]}"
    if nsrun $((BUILDS * 15 + 30)) "$NS_CLIENT" "$BIN_DIR/hopwire-bench" build --nodes "$NODES_FILE" \
            --path "${HW_PATH_IDS[$n]}" --count "$BUILDS" >"$out" 2>"$out.err" \
            && BUILD_JSON[$n]="$(jq -ce . "$out" 2>/dev/null)"; then
        log "[hopwire_${n}hop] build ms: $(jq -r '.build_ms | "median \(.median), p95 \(.p95), max \(.max)"' <<<"${BUILD_JSON[$n]}"), failed $(jq -r .failed <<<"${BUILD_JSON[$n]}")"
        return 0
    fi
    BUILD_ERR[$n]="hopwire-bench build failed: $(tail -n 3 "$out.err" | tr '\n' ' ')"
    log "[hopwire_${n}hop] ${BUILD_ERR[$n]}"
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

# ---------------------------------------------------------------- wireguard-go

start_wg() { # start_wg NS IFNAME
    local ns="$1" ifn="$2"
    rm -f "/var/run/wireguard/$ifn.sock"
    ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go "$ifn" >"$WORK/wg-$ifn.log" 2>&1 \
        {LOCK_FD}>&- {LOG_FD}>&- &
    PIDS+=($!); WG_PIDS+=($!)
    wait_for 50 test -S "/var/run/wireguard/$ifn.sock" && wait_for 50 ip -n "$ns" link show "$ifn" \
        || { log "wireguard-go $ifn did not come up in $ns:"; sed 's/^/    /' "$WORK/wg-$ifn.log" >&2; return 1; }
}

setup_wireguard() {
    local exit_uplink
    exit_uplink="$(route_dev "$NS_EXIT" "$SERVER_ADDR")"
    [[ -n "$exit_uplink" ]] || { log "exit namespace has no route to $SERVER_ADDR"; return 1; }
    umask 077
    wg genkey >"$WORK/exit.key" && wg pubkey <"$WORK/exit.key" >"$WORK/exit.pub" &&
    wg genkey >"$WORK/client.key" && wg pubkey <"$WORK/client.key" >"$WORK/client.pub" || return 1
    umask 022

    start_wg "$NS_EXIT" "$WG_EXIT_IF" || return 1
    start_wg "$NS_CLIENT" "$WG_CLIENT_IF" || return 1

    ip netns exec "$NS_EXIT" wg set "$WG_EXIT_IF" listen-port "$WG_PORT" private-key "$WORK/exit.key" \
        peer "$(cat "$WORK/client.pub")" allowed-ips "$WG_CLIENT_ADDR/32" &&
    ip -n "$NS_EXIT" addr add "$WG_EXIT_ADDR/24" dev "$WG_EXIT_IF" &&
    ip -n "$NS_EXIT" link set "$WG_EXIT_IF" mtu "$WG_MTU" up || return 1

    ip netns exec "$NS_CLIENT" wg set "$WG_CLIENT_IF" private-key "$WORK/client.key" \
        peer "$(cat "$WORK/exit.pub")" endpoint "$EXIT_UPLINK_ADDR:$WG_PORT" allowed-ips 0.0.0.0/0 &&
    ip -n "$NS_CLIENT" addr add "$WG_CLIENT_ADDR/24" dev "$WG_CLIENT_IF" &&
    ip -n "$NS_CLIENT" link set "$WG_CLIENT_IF" mtu "$WG_MTU" up &&
    ip -n "$NS_CLIENT" route add "$SERVER_ADDR/32" dev "$WG_CLIENT_IF" src "$WG_CLIENT_ADDR" || return 1

    # Exit: forward and masquerade the tunnel subnet out of the uplink.
    FWD_OLD="$(ip netns exec "$NS_EXIT" sysctl -n net.ipv4.ip_forward)"
    FWD_NS="$NS_EXIT"
    ip netns exec "$NS_EXIT" sysctl -qw net.ipv4.ip_forward=1 || return 1
    NFT_NS="$NS_EXIT"
    ip netns exec "$NS_EXIT" nft -f - <<EOF || return 1
table ip $NFT_TABLE {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr $WG_NET oifname "$exit_uplink" masquerade
    }
}
EOF
    wait_for 50 ip netns exec "$NS_CLIENT" ping -c1 -W1 "$WG_EXIT_ADDR" \
        || { log "wireguard-go: no handshake/ping to $WG_EXIT_ADDR"; ip netns exec "$NS_CLIENT" wg show "$WG_CLIENT_IF" >&2; return 1; }
    wait_for 30 ip netns exec "$NS_CLIENT" ping -c1 -W1 "$SERVER_ADDR" \
        || { log "wireguard-go: tunnel up but $SERVER_ADDR unreachable through it (forwarding/NAT/filter in $NS_EXIT?)";
             ip netns exec "$NS_EXIT" nft list ruleset >&2; return 1; }
}

teardown_wireguard() {
    ip -n "$NS_CLIENT" route del "$SERVER_ADDR/32" dev "$WG_CLIENT_IF" 2>/dev/null
    local pid
    for pid in "${WG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${WG_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    local keep=() p w gone
    for p in "${PIDS[@]}"; do
        gone=0; for w in "${WG_PIDS[@]}"; do [[ "$p" == "$w" ]] && gone=1; done
        (( gone )) || keep+=("$p")
    done
    PIDS=("${keep[@]}"); WG_PIDS=()
    rm -f "/var/run/wireguard/$WG_EXIT_IF.sock" "/var/run/wireguard/$WG_CLIENT_IF.sock"
    [[ -n "$NFT_NS" ]] && ip netns exec "$NFT_NS" nft delete table ip "$NFT_TABLE" 2>/dev/null; NFT_NS=""
    [[ -n "$FWD_NS" ]] && ip netns exec "$FWD_NS" sysctl -qw "net.ipv4.ip_forward=$FWD_OLD" 2>/dev/null; FWD_NS=""
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

PATHS=()
HW_PATHS=()
FAILED=0

if (( USE_HOPWIRE )); then
    for n in $HOPS_LIST; do HW_PATHS+=("hopwire_${n}hop"); done
    if ! start_testnet; then
        for p in "${HW_PATHS[@]}"; do ERR[$p]="'hopwire testnet --keep' failed"; done
        MEM_ERR="'hopwire testnet --keep' failed"
        FAILED=1
        log "falling back to an own topology for the baselines"
        timeout 120 "$HOPWIRE" testnet --down --prefix "$PREFIX" >/dev/null 2>&1
        TESTNET_UP=0
        build_own_topology || die "could not build the own topology"
    fi
else
    build_own_topology || die "could not build the own topology"
fi
log "topology: $TOPOLOGY; namespaces inet=$NS_INET exit=$NS_EXIT client=$NS_CLIENT"

start_iperf_server || die "cannot start the iperf3 server"

if [[ "$TOPOLOGY" == hopwire* ]]; then
    # The device holding the client's own address (the tunnel may own the
    # routes to the exit while a multi-hop circuit is up).
    CLIENT_UPLINK="$(ip -n "$NS_CLIENT" -o -4 addr show | awk -v a="$CLIENT_UPLINK_ADDR/" 'index($4, a) == 1 { print $2; exit }')"
    NODES_FILE="$(jq -r '.nodes_file // empty' <<<"$TESTNET_JSON")"
    log "client uplink device: '$CLIENT_UPLINK'; node records: $NODES_FILE"
    # 'hopwire testnet' left the client on a 3-hop circuit: start from none.
    hopwire_disconnect || { log "Hopwire did not disconnect"; FAILED=1; }
    # Fresh guard and middle for the memory figure, with metrics on so the
    # circuits they hold can be counted.
    for name in relay1 relay2; do
        log "restarting $name with metrics on $METRICS_ADDR"
        restart_with_metrics "$name" || { MEM_ERR="restarting $name with metrics failed"; FAILED=1; }
    done
    if (( CIRCUITS > 0 )) && [[ -z "$MEM_ERR" ]]; then
        relay_memory || FAILED=1
    fi
    for n in $HOPS_LIST; do
        p="hopwire_${n}hop"
        if hopwire_connect "$n"; then
            TUNNEL_PIDS=("client=$(jq -r '.client.pid // empty' <<<"$TESTNET_JSON")")
            for id in ${HW_PATH_IDS[$n]//,/ }; do TUNNEL_PIDS+=("$(node_field "$id" name)=$(node_pid "$id")"); done
            measure "$p" || FAILED=1
            TUNNEL_PIDS=()
            link_rtts "$n"
            circuit_builds "$n" || FAILED=1
        else
            FAILED=1
        fi
        hopwire_disconnect || { log "Hopwire did not disconnect cleanly; what follows may be wrong"; FAILED=1; }
    done
else
    CLIENT_UPLINK="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
fi

PATHS=(bare_veth wireguard_go "${HW_PATHS[@]}")

if [[ "$(route_dev "$NS_CLIENT" "$SERVER_ADDR")" == "$CLIENT_UPLINK" ]]; then
    measure bare_veth || FAILED=1
else
    ERR[bare_veth]="client does not route $SERVER_ADDR via its uplink '$CLIENT_UPLINK'"
    log "[bare_veth] ${ERR[bare_veth]}"; FAILED=1
fi

log "setting up wireguard-go between $NS_CLIENT and $NS_EXIT"
if setup_wireguard; then
    if [[ "$(route_dev "$NS_CLIENT" "$SERVER_ADDR")" == "$WG_CLIENT_IF" ]]; then
        TUNNEL_PIDS=("wg-client=${WG_PIDS[1]:-}" "wg-exit=${WG_PIDS[0]:-}")
        measure wireguard_go || FAILED=1
        TUNNEL_PIDS=()
    else
        ERR[wireguard_go]="client does not route $SERVER_ADDR via $WG_CLIENT_IF"; FAILED=1
    fi
else
    ERR[wireguard_go]="${ERR[wireguard_go]:-wireguard-go setup failed}"; FAILED=1
fi
teardown_wireguard

# ---------------------------------------------------------------- report

label() {
    case "$1" in
        bare_veth) echo "bare veth" ;;
        wireguard_go) echo "wireguard-go" ;;
        hopwire_1hop) echo "Hopwire 1 hop" ;;
        hopwire_*hop) echo "Hopwire ${1//[!0-9]/} hops" ;;
    esac
}

# check A OP B -> PASS / FAIL / n/a
check() {
    [[ -n "$1" && -n "$3" && "$1" != null && "$3" != null ]] || { echo "n/a"; return; }
    awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN { ok = (op == "<") ? (a < b) : (a >= b); print ok ? "PASS" : "FAIL" }'
}

echo
echo "$MACHINE_LINE"
echo "topology: $TOPOLOGY; iperf3 -R ${SECONDS_PER_TEST}s x$PARALLEL stream(s) to $SERVER_ADDR; ping x$PINGS"
(( USE_HOPWIRE )) && echo "hopwire binaries: $BIN_DIR ($BIN_SOURCE)"
echo
printf '%-16s %10s %11s %8s %9s %8s %9s  %s\n' "path" "Mbit/s" "RTT avg ms" "retrans" "tun CPU%" "CPU s/Gb" "host CPU%" "circuit / device / error"
for p in "${PATHS[@]}"; do
    what="${DEV[$p]:-}"
    [[ "$p" == hopwire_* ]] && n="${p//[!0-9]/}" && [[ -n "${HW_PATH_NAMES[$n]:-}" ]] \
        && what="client → ${HW_PATH_NAMES[$n]//,/ → } ($what, mtu $(jq -r .mtu <<<"${HW_STATUS[$n]}"))"
    printf '%-16s %10s %11s %8s %9s %8s %9s  %s\n' "$(label "$p")" "$(fmt "${MBIT[$p]:-}" 1)" "$(fmt "${RTT[$p]:-}" 3)" \
        "${RETR[$p]:-n/a}" "${TUNNEL_CPU[$p]:-—}" "${CPU_PER_GBIT[$p]:-—}" "${HOST_CPU[$p]:-—}" "${ERR[$p]:-$what}"
done
echo "(tun CPU% = CPU of the tunnel's processes during iperf3, 100 = one core: Hopwire client daemon + the circuit's nodes,"
echo " or the two wireguard-go; CPU s/Gb = those CPU seconds per Gbit carried; kernel work in softirq is only partly counted;"
echo " host CPU% = the whole machine busy, of $(nproc)00: the rest is iperf3, the kernel's forwarding, and other work on the machine)"
for p in "${PATHS[@]}"; do
    [[ -n "${TUNNEL_CPU_PARTS[$p]:-}" ]] && echo "  $(label "$p"): ${TUNNEL_CPU_PARTS[$p]//,/, }"
done

RATIO_TP=""; RATIO_RTT=""; RATIO_3_1=""; RATIO_2_1=""; CPU_RATIO_2_1=""; CPU_RATIO_3_1=""
if (( USE_HOPWIRE )); then
    RATIO_TP="$(ratio "${MBIT[hopwire_1hop]:-}" "${MBIT[wireguard_go]:-}")"
    RATIO_RTT="$(ratio "${RTT[hopwire_1hop]:-}" "${RTT[wireguard_go]:-}")"
    RATIO_2_1="$(ratio "${MBIT[hopwire_2hop]:-}" "${MBIT[hopwire_1hop]:-}")"
    RATIO_3_1="$(ratio "${MBIT[hopwire_3hop]:-}" "${MBIT[hopwire_1hop]:-}")"
    echo
    echo "Hopwire 1 hop / wireguard-go: throughput $(fmt "$RATIO_TP" 2)${RATIO_TP:+x}, RTT $(fmt "$RATIO_RTT" 2)${RATIO_RTT:+x} (throughput: higher is better; RTT: lower is better)"
    echo "Hopwire 2 hops / 1 hop: throughput $(fmt "$RATIO_2_1" 2)${RATIO_2_1:+x}"
    echo "Hopwire 3 hops / 1 hop: throughput $(fmt "$RATIO_3_1" 2)${RATIO_3_1:+x} (target >= $TARGET_RATIO_3HOP): $(check "$RATIO_3_1" ">=" "$TARGET_RATIO_3HOP")"
    # The Mbit/s ratio depends on how much CPU each test got while other work
    # shares the machine; the inverse ratio of CPU per Gbit does not.
    CPU_RATIO_2_1="$(ratio "${CPU_PER_GBIT[hopwire_1hop]:-}" "${CPU_PER_GBIT[hopwire_2hop]:-}")"
    CPU_RATIO_3_1="$(ratio "${CPU_PER_GBIT[hopwire_1hop]:-}" "${CPU_PER_GBIT[hopwire_3hop]:-}")"
    echo "CPU-normalised (1-hop CPU s/Gb / N-hop CPU s/Gb, the ratio at equal CPU): 2 hops $(fmt "$CPU_RATIO_2_1" 2)${CPU_RATIO_2_1:+x}, 3 hops $(fmt "$CPU_RATIO_3_1" 2)${CPU_RATIO_3_1:+x}: $(check "$CPU_RATIO_3_1" ">=" "$TARGET_RATIO_3HOP")"
    echo "(the Mbit/s ratio moves with other load on the machine, see host CPU%; the CPU-normalised one is the steadier figure)"

    echo
    echo "Circuit build time: $BUILDS builds per hop count with hopwire-bench along the daemon's circuit, each closed before the next;"
    echo "target: p95 < ${TARGET_BUILD_RTTS} x path RTT + ${TARGET_BUILD_EXTRA_MS} ms, path RTT = ping RTT through that circuit's tunnel (table above)."
    printf '%-6s %7s %9s %9s %9s %10s %11s %12s %10s  %s\n' "hops" "built" "median" "p95" "max" "daemon" "path RTT" "links RTT" "target" "verdict"
    for n in $HOPS_LIST; do
        b="${BUILD_JSON[$n]:-}"
        target=""
        [[ -n "${RTT[hopwire_${n}hop]:-}" ]] && target="$(awk -v r="${RTT[hopwire_${n}hop]}" -v k="$TARGET_BUILD_RTTS" -v e="$TARGET_BUILD_EXTRA_MS" 'BEGIN { printf "%.3f", k * r + e }')"
        BUILD_TARGET[$n]="$target"
        p95="$( [[ -n "$b" ]] && jq -r '.build_ms.p95 // empty' <<<"$b")"
        BUILD_VERDICT[$n]="$(check "$p95" "<" "$target")"
        printf '%-6s %7s %9s %9s %9s %10s %11s %12s %10s  %s\n' "$n" \
            "$( [[ -n "$b" ]] && jq -r '"\(.ok)/\(.count)"' <<<"$b" || echo n/a)" \
            "$(fmt "$( [[ -n "$b" ]] && jq -r '.build_ms.median // empty' <<<"$b")" 2)" \
            "$(fmt "$p95" 2)" \
            "$(fmt "$( [[ -n "$b" ]] && jq -r '.build_ms.max // empty' <<<"$b")" 2)" \
            "$(fmt "$(jq -r '.build_ms // empty' <<<"${HW_STATUS[$n]:-{\}}" 2>/dev/null)" 2)" \
            "$(fmt "${RTT[hopwire_${n}hop]:-}" 3)" \
            "$(fmt "${LINK_RTT[$n]:-}" 3)" \
            "$(fmt "$target" 2)" "${BUILD_VERDICT[$n]}${BUILD_ERR[$n]:+ (${BUILD_ERR[$n]})}"
    done
    echo "(ms; 'daemon' = build_ms of the daemon's own connect; 'links RTT' = sum of ping RTTs outside the tunnel: client → guard → … → exit → server)"

    echo
    if [[ -n "$MEM_JSON" ]]; then
        built="$(jq -r .built <<<"$MEM_JSON")"
        echo "Relay memory per idle circuit: $built (+$(jq -r .warmup <<<"$MEM_JSON") warm-up) of $CIRCUITS requested circuits held idle along ${MEM_PATH_NAMES//,/ → } (fresh relay1 and relay2),"
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
    if [[ -n "$TESTNET_JSON" ]]; then
        echo
        echo "hopwire testnet own check (3 hops): download $(jq -r '"\(.download.bytes) bytes in \(.download.seconds) s = \(.download.mbit_per_s) Mbit/s, sha256_ok=\(.download.sha256_ok), rtt_ms=\(.rtt_ms)"' <<<"$TESTNET_JSON" 2>/dev/null)"
    fi
fi

if [[ -n "$JSON_OUT" ]]; then
    results='{}'
    for p in "${PATHS[@]}"; do
        results="$(jq -c --arg p "$p" \
            --arg mbit "${MBIT[$p]:-}" --arg rtt "${RTT[$p]:-}" --arg rmin "${RTT_MIN[$p]:-}" \
            --arg rmax "${RTT_MAX[$p]:-}" --arg retr "${RETR[$p]:-}" --arg cl "${CPU_LOCAL[$p]:-}" \
            --arg cr "${CPU_REMOTE[$p]:-}" --arg dev "${DEV[$p]:-}" --arg err "${ERR[$p]:-}" \
            --arg tcpu "${TUNNEL_CPU[$p]:-}" --arg tparts "${TUNNEL_CPU_PARTS[$p]:-}" --arg cpg "${CPU_PER_GBIT[$p]:-}" --arg hcpu "${HOST_CPU[$p]:-}" '
            def num: if . == "" then null else tonumber end;
            def str: if . == "" then null else . end;
            . + {($p): {ok: ($err == "" and $mbit != ""), mbit_per_s: ($mbit|num), rtt_ms_avg: ($rtt|num),
                        rtt_ms_min: ($rmin|num), rtt_ms_max: ($rmax|num), retransmits: ($retr|num),
                        cpu_percent_client: ($cl|num), cpu_percent_server: ($cr|num),
                        tunnel_cpu_percent: ($tcpu|num), tunnel_cpu_by_process: ($tparts|str),
                        tunnel_cpu_seconds_per_gbit: ($cpg|num), host_cpu_percent: ($hcpu|num),
                        device: ($dev|str), error: ($err|str)}}' <<<"$results")"
        if [[ "$p" == hopwire_* ]]; then
            n="${p//[!0-9]/}"
            results="$(jq -c --arg p "$p" --argjson hops "$n" --arg names "${HW_PATH_NAMES[$n]:-}" \
                --arg ids "${HW_PATH_IDS[$n]:-}" --arg status "${HW_STATUS[$n]:-}" '
                def list: if . == "" then null else split(",") end;
                .[$p] += {hops: $hops, circuit_nodes: ($names|list), circuit_ids: ($ids|list),
                          daemon_build_ms: (if $status == "" then null else ($status|fromjson).build_ms end),
                          mtu: (if $status == "" then null else ($status|fromjson).mtu end)}' <<<"$results")"
        fi
    done
    builds='{}'
    for n in $HOPS_LIST; do
        builds="$(jq -c --arg n "$n" --arg b "${BUILD_JSON[$n]:-}" --arg rtt "${RTT[hopwire_${n}hop]:-}" \
            --arg links "${LINK_RTT[$n]:-}" --arg parts "${LINK_RTTS[$n]:-}" --arg target "${BUILD_TARGET[$n]:-}" \
            --arg verdict "${BUILD_VERDICT[$n]:-}" --arg err "${BUILD_ERR[$n]:-}" '
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
    jq -n --argjson results "$results" --arg nproc "$MACHINE_NPROC" --arg kernel "$MACHINE_KERNEL" \
        --arg date "$MACHINE_DATE" --arg cpu "$MACHINE_CPU" --arg load "$MACHINE_LOAD" --arg topo "$TOPOLOGY" \
        --argjson secs "$SECONDS_PER_TEST" --argjson pings "$PINGS" --argjson par "$PARALLEL" \
        --arg profile "$( (( USE_HOPWIRE )) && echo "$BIN_DIR ($BIN_SOURCE)")" \
        --arg rtp "$RATIO_TP" --arg rrtt "$RATIO_RTT" --arg testnet "${TESTNET_JSON:-}" \
        --arg r31 "$RATIO_3_1" --arg r21 "$RATIO_2_1" --arg c31 "$CPU_RATIO_3_1" --arg c21 "$CPU_RATIO_2_1" --argjson builds "$builds" --argjson metrics "$metrics" \
        --arg mem "$MEM_JSON" --arg memerr "$MEM_ERR" --arg memverdict "$MEM_VERDICT" --arg mempath "$MEM_PATH_NAMES" \
        --argjson circuits "$CIRCUITS" --argjson nbuilds "$BUILDS" \
        --arg t31 "$TARGET_RATIO_3HOP" --arg tk "$TARGET_BUILD_RTTS" --arg te "$TARGET_BUILD_EXTRA_MS" \
        --arg tb "$TARGET_BYTES_PER_CIRCUIT" --arg rev "$SOURCE_REV" '
        def num: if . == "" then null else tonumber end;
        {machine: {nproc: ($nproc|tonumber), kernel: $kernel, date: $date, cpu: $cpu, load1_at_start: ($load|num),
                   source: (if $rev == "" then null else $rev end)},
         topology: $topo, server: "'"$SERVER_ADDR"'", iperf3_seconds: $secs, iperf3_parallel: $par,
         direction: "download (iperf3 -R from the client namespace)", pings: $pings,
         hopwire_binaries: (if $profile == "" then null else $profile end),
         results: $results,
         ratio_hopwire_over_wireguard_go: {throughput: ($rtp|num), rtt: ($rrtt|num),
                                           note: "Hopwire 1 hop over wireguard-go"},
         ratio_hops_over_1hop: {"2": ($r21|num), "3": ($r31|num)},
         ratio_hops_over_1hop_cpu_normalised: {"2": ($c21|num), "3": ($c31|num),
                                               note: "1-hop tunnel CPU s/Gbit over N-hop tunnel CPU s/Gbit"},
         targets: {throughput_3hop_over_1hop_at_least: ($t31|num),
                   build_ms_under: "\($tk) x path RTT + \($te) ms (path RTT = ping through the tunnel; judged on p95)",
                   middle_bytes_per_idle_circuit_under: ($tb|num),
                   verdicts: {throughput_3hop: (if $r31 == "" then null elif ($r31|num) >= ($t31|num) then "PASS" else "FAIL" end),
                              throughput_3hop_cpu_normalised: (if $c31 == "" then null elif ($c31|num) >= ($t31|num) then "PASS" else "FAIL" end),
                              build: ($builds | map_values(.verdict_p95)),
                              middle_memory: (if $memverdict == "" then null else $memverdict end)}},
         circuit_build: {builds_per_hop_count: $nbuilds, method: "hopwire-bench build along the daemon circuit of that length, one at a time, each closed before the next",
                         by_hops: $builds},
         relay_memory: {path: ($mempath|split(",")), requested: $circuits,
                        method: "hopwire-bench hold: idle circuits along the path, VmRSS of each node sampled as they pile up (after 5 warm-up circuits)",
                        result: (if $mem == "" then null else ($mem|fromjson) end),
                        hopwire_circuits_metric: $metrics,
                        error: (if $memerr == "" then null else $memerr end)},
         hopwire_testnet: (if $testnet == "" then null else ($testnet|fromjson) end)}' >"$JSON_OUT" \
        || { log "could not write $JSON_OUT"; FAILED=1; }
    log "wrote $JSON_OUT"
fi

exit "$FAILED"
