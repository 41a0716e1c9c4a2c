#!/usr/bin/env bash
# bench/throughput.sh — TCP throughput and round trip of three paths on one
# namespace topology: the bare veth path, wireguard-go between the client and
# the exit namespace (with nftables masquerade in the exit, as Hopwire does),
# and Hopwire single hop. See bench/README.md.
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

SERVER_ADDR="198.18.0.10"       # the pretend internet host, in ns inet
EXIT_UPLINK_ADDR="198.18.1.2"   # exit side of the inet<->exit veth
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
path, wireguard-go between client and exit namespaces, and Hopwire single hop.
Must run as root.

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
  -h, --help      this text

Environment:
  HOPWIRE_BIN_DIR  directory holding hopwire and hopwire-node
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
    for b in hopwire hopwire-node; do
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
    local args=(testnet --keep --json --prefix "$PREFIX")
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

declare -A MBIT RTT RTT_MIN RTT_MAX RETR CPU_LOCAL CPU_REMOTE DEV ERR

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
    nsrun $((SECONDS_PER_TEST + 40)) "$NS_CLIENT" iperf3 -c "$SERVER_ADDR" -p "$IPERF_PORT" -R \
        -t "$SECONDS_PER_TEST" -O 1 -P "$PARALLEL" --connect-timeout 5000 -J >"$out" 2>"$out.err"
    local rc=$?
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
    log "[$name] $(fmt "${MBIT[$name]}" 1) Mbit/s, rtt avg $(fmt "${RTT[$name]:-}" 3) ms"
    [[ -z "${ERR[$name]:-}" ]]
}

# ---------------------------------------------------------------- hopwire

HW_SOCKET=""
hw_state() {
    timeout 20 "$HOPWIRE" --socket "$HW_SOCKET" status --json 2>/dev/null | jq -r '.state // empty' 2>/dev/null
}

measure_hopwire() {
    local state
    state="$(hw_state)"
    if [[ "$state" != connected ]]; then
        ERR[hopwire]="client state is '${state:-unknown}', not connected"
        log "[hopwire] ${ERR[hopwire]}; status:"
        timeout 20 "$HOPWIRE" --socket "$HW_SOCKET" status --json 2>&1 | sed 's/^/    /' >&2
        return 1
    fi
    local dev
    dev="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
    if [[ -z "$dev" || "$dev" == "$CLIENT_UPLINK" ]]; then
        ERR[hopwire]="connected, but the client routes $SERVER_ADDR via '$dev' (the uplink), not the tunnel"
        log "[hopwire] ${ERR[hopwire]}"
        return 1
    fi
    measure hopwire
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
MACHINE_LINE="machine: nproc=$MACHINE_NPROC kernel=$MACHINE_KERNEL date=$MACHINE_DATE load1=$MACHINE_LOAD cpu=${MACHINE_CPU:-unknown}"
log "$MACHINE_LINE"

PATHS=()
FAILED=0

if (( USE_HOPWIRE )); then
    PATHS+=(hopwire)
    if ! start_testnet; then
        ERR[hopwire]="'hopwire testnet --keep' failed"
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
    CLIENT_UPLINK="$(route_dev "$NS_CLIENT" "$EXIT_UPLINK_ADDR")"
    log "client uplink device: '$CLIENT_UPLINK'"
    measure_hopwire || FAILED=1
    hopwire_disconnect || { log "Hopwire did not disconnect cleanly; baselines may be wrong"; FAILED=1; }
else
    CLIENT_UPLINK="$(route_dev "$NS_CLIENT" "$SERVER_ADDR")"
fi

PATHS=(bare_veth wireguard_go "${PATHS[@]}")

if [[ "$(route_dev "$NS_CLIENT" "$SERVER_ADDR")" == "$CLIENT_UPLINK" ]]; then
    measure bare_veth || FAILED=1
else
    ERR[bare_veth]="client does not route $SERVER_ADDR via its uplink '$CLIENT_UPLINK'"
    log "[bare_veth] ${ERR[bare_veth]}"; FAILED=1
fi

log "setting up wireguard-go between $NS_CLIENT and $NS_EXIT"
if setup_wireguard; then
    if [[ "$(route_dev "$NS_CLIENT" "$SERVER_ADDR")" == "$WG_CLIENT_IF" ]]; then
        measure wireguard_go || FAILED=1
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
        hopwire) echo "Hopwire (1 hop)" ;;
    esac
}

echo
echo "$MACHINE_LINE"
echo "topology: $TOPOLOGY; iperf3 -R ${SECONDS_PER_TEST}s x$PARALLEL stream(s) to $SERVER_ADDR; ping x$PINGS"
(( USE_HOPWIRE )) && echo "hopwire binaries: $BIN_DIR ($BIN_SOURCE)"
printf '%-16s %12s %12s %10s  %s\n' "path" "Mbit/s" "RTT avg ms" "retrans" "device / error"
for p in "${PATHS[@]}"; do
    printf '%-16s %12s %12s %10s  %s\n' "$(label "$p")" "$(fmt "${MBIT[$p]:-}" 1)" "$(fmt "${RTT[$p]:-}" 3)" \
        "${RETR[$p]:-n/a}" "${ERR[$p]:-${DEV[$p]:-}}"
done
RATIO_TP=""; RATIO_RTT=""
if (( USE_HOPWIRE )); then
    RATIO_TP="$(ratio "${MBIT[hopwire]:-}" "${MBIT[wireguard_go]:-}")"
    RATIO_RTT="$(ratio "${RTT[hopwire]:-}" "${RTT[wireguard_go]:-}")"
    echo "Hopwire / wireguard-go: throughput $(fmt "$RATIO_TP" 2)${RATIO_TP:+x}, RTT $(fmt "$RATIO_RTT" 2)${RATIO_RTT:+x} (throughput: higher is better; RTT: lower is better)"
    if [[ -n "$TESTNET_JSON" ]]; then
        echo "hopwire testnet own check: download $(jq -r '"\(.download.bytes) bytes in \(.download.seconds) s = \(.download.mbit_per_s) Mbit/s, sha256_ok=\(.download.sha256_ok), rtt_ms=\(.rtt_ms)"' <<<"$TESTNET_JSON" 2>/dev/null)"
    fi
fi

if [[ -n "$JSON_OUT" ]]; then
    results='{}'
    for p in "${PATHS[@]}"; do
        results="$(jq -c --arg p "$p" \
            --arg mbit "${MBIT[$p]:-}" --arg rtt "${RTT[$p]:-}" --arg rmin "${RTT_MIN[$p]:-}" \
            --arg rmax "${RTT_MAX[$p]:-}" --arg retr "${RETR[$p]:-}" --arg cl "${CPU_LOCAL[$p]:-}" \
            --arg cr "${CPU_REMOTE[$p]:-}" --arg dev "${DEV[$p]:-}" --arg err "${ERR[$p]:-}" '
            def num: if . == "" then null else tonumber end;
            def str: if . == "" then null else . end;
            . + {($p): {ok: ($err == "" and $mbit != ""), mbit_per_s: ($mbit|num), rtt_ms_avg: ($rtt|num),
                        rtt_ms_min: ($rmin|num), rtt_ms_max: ($rmax|num), retransmits: ($retr|num),
                        cpu_percent_client: ($cl|num), cpu_percent_server: ($cr|num),
                        device: ($dev|str), error: ($err|str)}}' <<<"$results")"
    done
    jq -n --argjson results "$results" --arg nproc "$MACHINE_NPROC" --arg kernel "$MACHINE_KERNEL" \
        --arg date "$MACHINE_DATE" --arg cpu "$MACHINE_CPU" --arg load "$MACHINE_LOAD" --arg topo "$TOPOLOGY" \
        --argjson secs "$SECONDS_PER_TEST" --argjson pings "$PINGS" --argjson par "$PARALLEL" \
        --arg profile "$( (( USE_HOPWIRE )) && echo "$BIN_DIR ($BIN_SOURCE)")" \
        --arg rtp "$RATIO_TP" --arg rrtt "$RATIO_RTT" --arg testnet "${TESTNET_JSON:-}" '
        def num: if . == "" then null else tonumber end;
        {machine: {nproc: ($nproc|tonumber), kernel: $kernel, date: $date, cpu: $cpu, load1_at_start: ($load|num)},
         topology: $topo, server: "'"$SERVER_ADDR"'", iperf3_seconds: $secs, iperf3_parallel: $par,
         direction: "download (iperf3 -R from the client namespace)", pings: $pings,
         hopwire_binaries: (if $profile == "" then null else $profile end),
         results: $results,
         ratio_hopwire_over_wireguard_go: {throughput: ($rtp|num), rtt: ($rrtt|num)},
         hopwire_testnet: (if $testnet == "" then null else ($testnet|fromjson) end)}' >"$JSON_OUT" \
        || { log "could not write $JSON_OUT"; FAILED=1; }
    log "wrote $JSON_OUT"
fi

exit "$FAILED"
