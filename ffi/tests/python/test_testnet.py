"""The session on a real tunnel: a host program (host.py) in a testnet's
client namespace makes the TUN device, hands the session its descriptor
and protects the session's sockets with SO_MARK and an ip rule, as
Android's VpnService would. Root is needed (namespaces, TUN).

One testnet serves the module; the test that kills a relay runs last."""

import hashlib
import os
import signal
import subprocess
import time

import pytest

from conftest import MARK, HostError, Testnet, kill_and_wait

INET_SERVER = "198.18.0.10"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and TUN devices")


@pytest.fixture(scope="module")
def testnet():
    tn = Testnet("hwy1")
    try:
        tn.stop_daemon()
        yield tn
    finally:
        tn.down()


def records(tn):
    return [r["record"] for r in tn.summary["nodes"] if r["role"] in ("relay", "exit")]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(tn, name, size_mb, dest):
    src = tn.dir / "www" / name
    if not src.exists():
        src.write_bytes(bytes(i % 251 for i in range(256)) * (size_mb << 12))
    done = tn.in_client("curl", "-sS", "--max-time", "60", "-o", str(dest), f"http://{INET_SERVER}/{name}")
    assert done.returncode == 0, f"curl through the host's tunnel: {done.stderr}"
    assert sha256(dest) == sha256(src), "the download is not byte-exact"


def test_a_bad_descriptor_or_a_failing_provider_is_a_platform_error_and_the_session_recovers(
    testnet, host_factory
):
    host = host_factory(testnet, "bad-fd")
    for mode, says in [
        ("negative", "no descriptor"),
        ("closed", "not open"),
        ("pipe", "not a TUN device"),
        ("throw", "refused the VPN permission"),
    ]:
        host.call("provider", mode=mode)
        with pytest.raises(HostError) as e:
            host.call("connect", records=records(testnet), hops=3)
        assert e.value.kind == "Platform", f"{mode}: {e.value}"
        assert says in e.value.message, f"{mode}: {e.value.message}"
        status = host.call("status")
        assert status["state"] == "error", f"{mode}: {status}"
    # The same session then connects with a good descriptor.
    host.call("provider", mode="tun")
    status = host.call("connect", records=records(testnet), hops=3)
    assert status["state"] == "connected" and len(status["circuit"]) == 3, status
    assert host.call("disconnect")["state"] == "disconnected"
    assert host.proc.poll() is None, "the host died"
    host.call("shutdown")
    with pytest.raises(HostError) as e:
        host.call("status")
    assert e.value.kind == "Closed"


def test_a_protector_that_refuses_fails_the_connect_and_no_tunnel_is_made(testnet, host_factory):
    host = host_factory(testnet, "refuse", protector="refuse")
    with pytest.raises(HostError) as e:
        host.call("connect", records=records(testnet), hops=3)
    # A charging connect's first protected socket is the ledger's (its
    # domain), then the link to the first hop.
    assert e.value.kind in ("Platform", "HopUnreachable", "LedgerUnreachable"), e.value
    assert "bypass the tunnel" in e.value.message, e.value.message
    refused = [n for n in host.snapshot_notes() if n["host"] == "protect"]
    assert refused and not any(n["ok"] for n in refused), refused
    assert not any(n["host"] == "establish" for n in host.snapshot_notes()), "a tunnel was asked for"
    assert host.call("status")["state"] == "error"


def test_three_hops_through_the_host_download_a_lost_relay_and_disconnect(testnet, host_factory, tmp_path):
    tn = testnet
    host = host_factory(tn, "main", bootstrap=[tn.summary["bootstrap"]["dht_addr"]])
    # Found through the DHT (its connections protected), paid on the ledger.
    status = host.call("connect", hops=3)
    assert status["state"] == "connected", status
    assert len(status["circuit"]) == 3, status
    # Events come on the session's own thread: the reply may be first.
    host.wait(lambda: host.states()[:2] == ["connecting", "connected"] or None, 10, "connecting, then connected")
    device = host.wait_note(lambda n: n["host"] == "established", 5)["device"]
    circuit_event = host.wait_event(lambda e: e["type"] == "circuit", 5)
    assert [h["id"] for h in circuit_event["circuit"]] == [h["id"] for h in status["circuit"]]

    # Everything the host's tunnel carries, captured on its device.
    pcap = tmp_path / "tun.pcap"
    capture = subprocess.Popen(
        ["ip", "netns", "exec", tn.client_ns, "tcpdump", "-i", device, "-nn", "-U", "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1)
        download(tn, "ffi.bin", 16, tmp_path / "got.bin")
        host.wait_event(lambda e: e["type"] == "traffic" and e["bytes_received"] > 16 << 20, 10, "traffic")
        paid = host.wait_event(
            lambda e: e["type"] == "traffic" and len(e["payments"]) == 3 and all(p["paid"] > 0 for p in e["payments"]),
            20,
            "a payment to every hop",
        )
        assert paid["spent"] > 0
        sockets = host.call("sockets")
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)
    # Every socket of the session's is protected (carries the mark).
    assert any(s["type"] == "SOCK_DGRAM" for s in sockets), f"no QUIC socket: {sockets}"
    unprotected = [s for s in sockets if s["mark"] != MARK]
    assert not unprotected, f"sockets without the protect mark: {unprotected}"
    protects = [n for n in host.snapshot_notes() if n["host"] == "protect"]
    assert protects and all(n["ok"] for n in protects), protects
    # No packet of the session's own went into the tunnel: only the download.
    read = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    lines = [line for line in read.stdout.splitlines() if line.strip()]
    assert any(INET_SERVER in line for line in lines), f"the capture missed the download: {read.stderr}"
    ours = {n["addr"].split(":")[0] for n in tn.summary["nodes"]}
    ours |= {tn.summary["ledger"]["addr"].split(":")[0], tn.summary["bootstrap"]["addr"]}
    ours |= {h["addr"].rsplit(":", 1)[0] for h in status["circuit"]}
    leaked = [line for line in lines if any(f" {a}." in line or f" {a}:" in line for a in ours)]
    assert not leaked, f"the session's own packets went through its tunnel: {leaked[:5]}"

    # The middle relay dies: reconnecting, then connected over a new path.
    middle = status["circuit"][1]["id"]
    kill_and_wait(tn.node_pid(middle), signal.SIGKILL)
    host.wait_event(lambda e: e["type"] == "state" and e["state"]["type"] == "reconnecting", 30, "reconnecting")
    rebuilt = host.wait_event(
        lambda e: e["type"] == "circuit" and middle not in [h["id"] for h in e["circuit"]], 60, "a new circuit"
    )
    # The new circuit is published just before the state says connected.
    host.wait(lambda: host.states()[-1] == "connected" or None, 10, "connected again")
    reason = next(e for e in host.snapshot_events() if e["type"] == "state" and e["state"]["type"] == "reconnecting")
    assert reason["state"]["reason"], reason
    assert len(rebuilt["circuit"]) == 3
    download(tn, "ffi-after.bin", 2, tmp_path / "got-after.bin")

    # Disconnect: the provider hears teardown, the state says so.
    assert host.call("disconnect")["state"] == "disconnected"
    host.wait_note(lambda n: n["host"] == "teardown", 10, "teardown")
    host.wait(lambda: host.states()[-1] == "disconnected" or None, 10, "the disconnected event")
    wallet = host.call("wallet")
    assert wallet["balance"] is not None and wallet["channels"], wallet
    host.call("shutdown")
    assert host.stop() == 0, host.stderr_tail()
