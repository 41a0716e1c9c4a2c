#!/usr/bin/env bash
# The desktop app's costs: start to first paint, CPU while idle and
# connected, memory of the app and its web processes. Builds a kept
# testnet (connected client), starts Xvfb and the app against the
# testnet's daemon, and measures:
#   - first paint: from exec to the first screenshot of the root window
#     that shows the rendered page (the app's dark background with its
#     state text), polled every 50 ms;
#   - idle CPU: utime+stime of hopwire-gui and its WebKit processes over
#     60 s while connected and no traffic flows (the daemon still pushes
#     one traffic event a second), as % of one core;
#   - memory: the sum of PSS (shared pages split between the processes
#     that map them, so WebKit's libraries count once) and of VmRSS of the
#     same processes after the minute.
# Options: --seconds N (idle window, default 60), --release (the release
# build; default the dev build, whose dependencies are optimised too),
# --json FILE. Targets: < 2 s to a window, < 1 % of a core, < 200 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60 profile=debug json=
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --release) profile=release; shift ;;
        --json) json=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--release] [--json FILE]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench/gui.sh: run as root (the testnet uses namespaces)" >&2; exit 1; }
(cd client-gui && npm run --silent build)
if [ "$profile" = release ]; then
    cargo build --release --workspace --lib --bins --quiet
else
    cargo build --workspace --lib --bins --quiet
fi
bin=target/$profile
prefix=hwgb
display=:71
work=$(mktemp -d)
cleanup() {
    [ -n "${app:-}" ] && kill "$app" 2>/dev/null || true
    [ -n "${xvfb:-}" ] && kill "$xvfb" 2>/dev/null || true
    "$bin/hopwire" testnet --down --prefix "$prefix" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$bin/hopwire" testnet --keep --json --prefix "$prefix" --size-mb 1 >"$work/summary.json"
socket=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client"]["socket"])' "$work/summary.json")
Xvfb "$display" -screen 0 1280x900x24 >/dev/null 2>&1 &
xvfb=$!
sleep 1
mkdir -m 700 "$work/run" "$work/config"
start=$(date +%s.%N)
DISPLAY=$display HOPWIRE_SOCKET=$socket XDG_RUNTIME_DIR=$work/run XDG_CONFIG_HOME=$work/config \
    "$bin/hopwire-gui" >"$work/app.log" 2>&1 &
app=$!
paint=
for _ in $(seq 1 400); do
    DISPLAY=$display import -window root "$work/shot.png" 2>/dev/null || true
    # The page is painted once the window's area is the app's background
    # with text on it, not Xvfb's black.
    mean=$(convert "$work/shot.png" -crop 900x700+10+10 -format '%[fx:mean]' info: 2>/dev/null || echo 0)
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0.05 else 1)' "$mean"; then
        paint=$(python3 -c 'import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 2))' "$(date +%s.%N)" "$start")
        break
    fi
    sleep 0.05
done
[ -n "$paint" ] || { echo "bench/gui.sh: the window never painted; app log:" >&2; cat "$work/app.log" >&2; exit 1; }
sleep 5
python3 - "$app" "$seconds" "$paint" "$json" <<'PY'
import json, os, sys, time
app, seconds, paint, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
tick = os.sysconf("SC_CLK_TCK")

def family(root):
    pids, todo = [], [root]
    while todo:
        p = todo.pop()
        pids.append(p)
        for t in os.listdir(f"/proc/{p}/task"):
            try:
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
            except OSError:
                pass
    return pids

def cpu(pids):
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick

def memory(pids, path, key):
    kib = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/{path}"):
                if line.startswith(key):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024

pids = family(app)
names = sorted({open(f"/proc/{p}/comm").read().strip() for p in pids})
before, t0 = cpu(pids), time.time()
time.sleep(seconds)
used, elapsed = cpu(pids) - before, time.time() - t0
per_process = {}
for p in pids:
    try:
        name = open(f"/proc/{p}/comm").read().strip()
    except OSError:
        continue
    per_process[name] = round(per_process.get(name, 0) + memory([p], "smaps_rollup", "Pss:"), 1)
result = {
    "first_paint_s": paint,
    "idle_cpu_percent_of_core": round(100 * used / elapsed, 2),
    "pss_mib": round(memory(pids, "smaps_rollup", "Pss:"), 1),
    "rss_mib": round(memory(pids, "status", "VmRSS:"), 1),
    "pss_mib_per_process": per_process,
    "processes": names,
    "idle_seconds": seconds,
}
print(f"first paint:  {paint:.2f} s (target < 2 s)")
print(f"idle CPU:     {result['idle_cpu_percent_of_core']:.2f} % of one core over {seconds} s while connected (target < 1 %)")
print(f"memory:       {result['pss_mib']:.1f} MiB PSS ({result['rss_mib']:.1f} MiB RSS summed) for {', '.join(names)} (target < 200 MiB)")
print("              PSS per process: " + ", ".join(f"{n} {m:.1f} MiB" for n, m in sorted(per_process.items())))
if out:
    json.dump(result, open(out, "w"), indent=2)
PY
