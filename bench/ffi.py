"""The mobile library's costs (run by bench/ffi.sh after a release build):

- size: the release cdylib, stripped, for each target built here;
- memory: resident set of a Python host (ffi/tests/python/host.py) with a
  connected 3-hop session, and of the same interpreter with the module
  loaded and no session; the difference is the session's;
- throughput: a download through the testnet's client daemon (the Linux
  platform) against the same download through the Python host's session
  (the file-descriptor platform the phones use), same testnet, 3 hops;
  the daemon's rounds first, then the host's (they share the wallet, so
  they cannot run side by side).

    bench/ffi.py --target-dir DIR [--size-mb N] [--rounds N] [--json FILE]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ffi" / "tests" / "python"))

import conftest  # noqa: E402  (the tests' testnet and host drivers)

INET_SERVER = "198.18.0.10"


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def pss_kib(pid):
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise KeyError("Pss")


def download_mbit(tn, name):
    done = tn.in_client(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", "--max-time", "120", f"http://{INET_SERVER}/{name}"
    )
    if done.returncode != 0:
        raise RuntimeError(f"download failed: {done.stderr}")
    return float(done.stdout) * 8 / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-dir", required=True)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    target = Path(args.target_dir)
    library = target / "release" / "libhopwire_ffi.so"
    conftest.HOPWIRE = target / "release" / "hopwire"

    work = Path(tempfile.mkdtemp(prefix="hopwire-bench-ffi-"))
    stripped = work / "libhopwire_ffi.so"
    subprocess.run(["strip", "-o", str(stripped), str(library)], check=True)
    (work / "hopwire_ffi.py").symlink_to(ROOT / "ffi" / "bindings" / "python" / "hopwire_ffi.py")
    result = {
        "library": {
            "target": "x86_64-unknown-linux-gnu",
            "stripped_mib": round(stripped.stat().st_size / 2**20, 2),
            "unstripped_mib": round(library.stat().st_size / 2**20, 2),
        }
    }

    # The interpreter with the module (and the library) loaded, no session.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hopwire_ffi, re; s = open('/proc/self/status').read(); "
            "print(re.search(r'VmRSS:\\s+(\\d+)', s).group(1))",
        ],
        env=dict(os.environ, PYTHONPATH=str(work)),
        capture_output=True,
        text=True,
        check=True,
    )
    baseline_kib = int(probe.stdout)

    tn = conftest.Testnet("hwfb", size_mb=1)
    host = None
    try:
        src = tn.dir / "www" / "bench.bin"
        with open(src, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mb):
                f.write(block)
        daemon = [download_mbit(tn, "bench.bin") for _ in range(args.rounds)]
        tn.stop_daemon()
        host = conftest.Host(tn, work, work / "host.log", log_filter="warn")
        status = host.call("connect", records=[r["record"] for r in tn.summary["nodes"] if r["role"] in ("relay", "exit")], hops=3)
        assert status["state"] == "connected", status
        time.sleep(2)
        rss_kib = status_kib(host.pid, "VmRSS")
        session_pss_kib = pss_kib(host.pid)
        fd_path = [download_mbit(tn, "bench.bin") for _ in range(args.rounds)]
        rss_after_kib = status_kib(host.pid, "VmRSS")
        host.call("shutdown")
    finally:
        if host:
            host.stop()
        tn.down()
        shutil.rmtree(work, ignore_errors=True)

    def median(xs):
        xs = sorted(xs)
        return round(xs[len(xs) // 2], 1)

    result["memory"] = {
        "host_rss_connected_mib": round(rss_kib / 1024, 1),
        "host_pss_connected_mib": round(session_pss_kib / 1024, 1),
        "host_rss_after_download_mib": round(rss_after_kib / 1024, 1),
        "python_with_module_rss_mib": round(baseline_kib / 1024, 1),
        "session_rss_mib": round((rss_kib - baseline_kib) / 1024, 1),
        "session_rss_after_download_mib": round((rss_after_kib - baseline_kib) / 1024, 1),
    }
    result["throughput"] = {
        "size_mib": args.size_mb,
        "hops": 3,
        "daemon_mbit": [round(x, 1) for x in daemon],
        "python_host_mbit": [round(x, 1) for x in fd_path],
        "daemon_median_mbit": median(daemon),
        "python_host_median_mbit": median(fd_path),
    }
    lib, mem, tp = result["library"], result["memory"], result["throughput"]
    print(f"library:    {lib['stripped_mib']} MiB stripped ({lib['unstripped_mib']} MiB with symbols), {lib['target']} (target < 20 MB)")
    print(
        f"memory:     a connected 3-hop session {mem['session_rss_mib']} MiB resident "
        f"({mem['session_rss_after_download_mib']} MiB after the downloads) above the interpreter with the module loaded "
        f"({mem['python_with_module_rss_mib']} MiB); the host process {mem['host_rss_connected_mib']} MiB RSS, "
        f"{mem['host_pss_connected_mib']} MiB PSS (target < 30 MiB)"
    )
    print(
        f"throughput: {tp['size_mib']} MiB over 3 hops, median of {len(daemon)}: daemon {tp['daemon_median_mbit']} Mbit/s, "
        f"Python host (fd platform) {tp['python_host_median_mbit']} Mbit/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
