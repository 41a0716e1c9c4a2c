//! End-to-end tests of multi-hop circuits over real namespaces and
//! processes: what crosses three hops and what happens when a relay dies
//! (what each node's links reveal is `privacy.rs`).

use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

const INET_SERVER: &str = "198.18.0.10";

fn pid_of(node: &Value) -> u32 {
    node["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("node without pid: {node}"))
}

fn circuit_ids(st: &Value) -> Vec<String> {
    st["circuit"]
        .as_array()
        .map(|c| c.iter().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn three_hop_download_is_exact_and_full_size_packets_cross() {
    let tn = Testnet::start("hwc1", 8);
    let st = tn.status();
    assert_eq!(circuit_ids(&st).len(), 3, "default circuit has 3 hops: {st}");
    assert_eq!(tn.summary["full_size_packet"]["crossed"], Value::Bool(true));
    let mtu = st["mtu"].as_u64().expect("mtu in status");
    assert!(
        mtu >= 1280,
        "a 3-hop tunnel still carries IPv6-minimum packets: mtu {mtu}"
    );

    // A second download, on the running circuit, is byte-exact too.
    let got = tn.dir.join("three-hop.bin");
    tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), Some(&got), 60)
        .ok();
    assert_eq!(sha256_file(&got), sha256_file(&tn.www().join("test.bin")));
    // The largest packet the tunnel takes crosses all hops unfragmented
    // (don't-fragment set), and one byte more is refused locally.
    let payload = (mtu - 28).to_string();
    ns_exec(
        &tn.ns.client,
        "ping",
        &["-c", "2", "-W", "2", "-M", "do", "-s", &payload, INET_SERVER],
    )
    .ok();
    let too_big = (mtu - 27).to_string();
    let out = ns_exec(
        &tn.ns.client,
        "ping",
        &["-c", "1", "-W", "2", "-M", "do", "-s", &too_big, INET_SERVER],
    );
    assert!(!out.success(), "a packet over the MTU must not be sent: {out}");
}

#[test]
fn killed_middle_mid_download_moves_to_a_new_circuit_and_the_download_completes() {
    let tn = Testnet::start("hwc3", 1);
    let ids = circuit_ids(&tn.status());
    assert_eq!(ids.len(), 3);
    let middle = ids[1].clone();
    // A bigger file, downloaded slowly enough to be mid-flight at the kill.
    let big = tn.www().join("big.bin");
    run(
        "dd",
        &["if=/dev/urandom", &format!("of={}", big.display()), "bs=1M", "count=48"],
    )
    .ok();
    let got = tn.dir.join("big-got.bin");
    let got_s = got.to_string_lossy().into_owned();
    let mut download = Background::start_in_ns(
        "download",
        &tn.ns.client,
        "curl",
        &[
            "-sS",
            "--fail",
            "--limit-rate",
            "6M",
            "--max-time",
            "90",
            "-o",
            &got_s,
            &format!("http://{INET_SERVER}/big.bin"),
        ],
        &tn.dir.join("download.log"),
        &[],
    );
    std::thread::sleep(Duration::from_secs(2));
    kill_and_wait(pid_of(tn.node(&middle)), "KILL");

    let st = tn.wait_status("a circuit without the killed middle", 60, |st| {
        st["state"] == "connected" && circuit_ids(st).len() == 3 && !circuit_ids(st).contains(&middle)
    });
    eprintln!("[e2e] circuit after killing the middle {middle}: {st}");
    let status = poll_until(
        "the download to finish",
        120,
        Duration::from_secs(1),
        || match download.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err("still downloading".into()),
        },
    );
    assert!(
        status.success(),
        "download failed: {}",
        tail(&tn.dir.join("download.log"), 20)
    );
    assert_eq!(
        sha256_file(&got),
        sha256_file(&big),
        "download across the circuit change differs"
    );
    // Same exit, same session: the client kept its inner address.
    assert_eq!(circuit_ids(&st)[2], ids[2], "the exit did not change");
}

#[test]
fn with_no_spare_relay_the_client_says_why() {
    let tn = Testnet::start_with("hwc4", 1, &["--relays", "2"]);
    let ids = circuit_ids(&tn.status());
    assert_eq!(ids.len(), 3);
    kill_and_wait(pid_of(tn.node(&ids[1])), "KILL");
    let st = tn.wait_status("an error naming the missing relay", 60, |st| {
        st["state"] == "reconnecting"
            && st["error"]
                .as_str()
                .is_some_and(|e| e.contains("no usable") && e.contains("relay"))
    });
    eprintln!("[e2e] status with no spare relay: {st}");
    // The tunnel is blocked, not bypassed: nothing reaches the internet.
    let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), None, 3);
    assert!(!out.success(), "traffic leaked around a broken circuit: {out}");
}
