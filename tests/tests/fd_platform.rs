//! End to end through the client runtime's file-descriptor platform: a
//! host that makes the TUN device itself and hands the runtime its file
//! descriptor (as Android and iOS do), and protects the runtime's sockets.

use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

const INET_SERVER: &str = "198.18.0.10";

#[test]
fn a_host_given_tun_fd_carries_a_download_protects_its_link_and_looks_up_through_the_tunnel() {
    let tn = Testnet::start("hwf1", 1);
    // The daemon steps aside: the host below takes its wallet and funds.
    tn.cli(&["disconnect"]).ok();
    kill_and_wait(tn.summary["client"]["pid"].as_u64().expect("client pid") as u32, "TERM");
    let route = ns_exec(&tn.ns.client, "ip", &["-j", "route", "get", INET_SERVER]).ok();
    let route: Value = serde_json::from_str(route.stdout.trim()).expect("ip -j route get");
    let uplink = route[0]["dev"].as_str().expect("uplink device").to_owned();
    let protect_log = tn.dir.join("protect.log");
    let log = tn.dir.join("fd-host.log");
    let state_dir = tn.summary["client"]["state_dir"]
        .as_str()
        .expect("state_dir")
        .to_owned();
    let nodes = tn.dir.join("nodes.txt").to_string_lossy().into_owned();
    let ledger = tn.summary["ledger"]["addr"].as_str().expect("ledger addr").to_owned();
    let mut host = Background::start_in_ns(
        "fd host",
        &tn.ns.client,
        example_bin("fd_host"),
        &[
            &state_dir,
            &ledger,
            &nodes,
            "hwfd0",
            &uplink,
            &protect_log.to_string_lossy(),
            tn.summary["bootstrap"]["dht_addr"].as_str().expect("dht_addr"),
        ],
        &log,
        &[],
    );
    let status: Value = poll_until("the fd host to connect", 120, Duration::from_millis(250), || {
        host.assert_running();
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| tail(&log, 5))
    });
    assert_eq!(status["state"], "connected", "{status}");
    assert_eq!(status["circuit"].as_array().map(Vec::len), Some(3), "{status}");

    let www = tn.www().join("fd.bin");
    std::fs::write(&www, (0..16u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<_>>()).expect("write file");
    let got = tn.dir.join("fd-got.bin");
    let out = tn.curl_client(&format!("http://{INET_SERVER}/fd.bin"), Some(&got), 60);
    assert!(out.success(), "download through the host's TUN: {out}");
    assert_eq!(sha256_file(&got), sha256_file(&www), "the download is byte-exact");
    // The pretend internet saw the exit, not the client.
    assert!(
        tn.access_entries()
            .iter()
            .any(|(peer, path)| path.contains("fd.bin") && peer != "198.18.2.2"),
        "the download did not come through the exit"
    );

    // Every protect call succeeded.
    let protected = std::fs::read_to_string(&protect_log).unwrap_or_default();
    assert!(
        protected.lines().count() >= 1 && protected.lines().all(|l| l.ends_with(" true")),
        "protect calls (the first hop's QUIC socket, and the ledger's when a channel is opened): {protected}"
    );
    let pid = host.pid();
    let sockets = ns_exec(&tn.ns.client, "ss", &["-tuanpH"]).ok();
    let mine: Vec<&str> = sockets
        .stdout
        .lines()
        .filter(|l| l.contains("fd_host"))
        .filter(|l| !l.contains("LISTEN"))
        .collect();
    assert!(
        !mine.is_empty(),
        "no socket of the host (pid {pid}) found:\n{}",
        sockets.stdout
    );
    // The QUIC link to the guard (and any ledger call) is protected: bound
    // to the uplink. The DHT lookup made while connected went through the
    // tunnel: its connections start at the inner address, and none leaves
    // from the client's own address.
    let inner = status["inner_addr"].as_str().expect("inner address").to_owned();
    let bound = format!("%{uplink}");
    for line in &mine {
        let through_tunnel = line.starts_with("tcp") && line.contains(&format!(" {inner}:"));
        assert!(
            line.contains(&bound) || through_tunnel,
            "a socket of the runtime neither protected (bound to {uplink}) nor through the tunnel: {line}"
        );
        if line.starts_with("udp") {
            assert!(line.contains(&bound), "the QUIC socket is protected: {line}");
        }
    }
    assert!(
        mine.iter()
            .any(|l| l.starts_with("tcp") && l.contains(&format!(" {inner}:"))),
        "the lookup while connected went through the tunnel:\n{}",
        mine.join("\n")
    );
    eprintln!("[e2e] fd host sockets:\n{}\nprotect log:\n{protected}", mine.join("\n"));
    host.stop();
}
