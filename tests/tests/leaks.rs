//! Leak tests, state by state: in the client namespace a probe sends TCP,
//! UDP and ICMP to the pretend internet *around* the tunnel (bound to the
//! client's uplink, as a program that ignores the routes would), while a
//! capture on the internet side counts what arrives from the client's own
//! address. Where the state blocks, nothing may arrive; where it does not,
//! the probe must get through, so the test can fail.

use std::time::Duration;

use hopwire_e2e::*;

const INET_SERVER: &str = "198.18.0.10";
const CLIENT_UPLINK: &str = "198.18.2.2";

/// Sends one TCP connection, one UDP datagram (to port 53, as DNS would)
/// and two pings to the pretend internet around the tunnel; returns how
/// many packets from the client's own address the internet saw.
fn probe(tn: &Testnet, tag: &str) -> usize {
    let pcap = tn.dir.join(format!("leak-{tag}.pcap"));
    let filter = format!("src host {CLIENT_UPLINK} and dst host {INET_SERVER}");
    let mut capture = Background::start_in_ns(
        "leak capture",
        &tn.ns.inet,
        "tcpdump",
        &["-i", "to-client", "-n", "-U", "-w", &pcap.to_string_lossy(), &filter],
        &tn.dir.join(format!("leak-{tag}.log")),
        &[],
    );
    std::thread::sleep(Duration::from_millis(700));
    let c = &tn.ns.client;
    let url = format!("http://{INET_SERVER}/leak-{tag}");
    ns_exec_timeout(
        c,
        "curl",
        &["-s", "-o", "/dev/null", "--interface", "eth0", "--max-time", "2", &url],
        Duration::from_secs(5),
    );
    let udp = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.setsockopt(socket.SOL_SOCKET, 25, b'eth0'); \
         [s.sendto(b'leak', ('{INET_SERVER}', 53)) for _ in range(3)]"
    );
    ns_exec_timeout(c, "python3", &["-c", &udp], Duration::from_secs(5));
    ns_exec_timeout(
        c,
        "ping",
        &["-I", "eth0", "-c", "2", "-i", "0.2", "-W", "1", INET_SERVER],
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    capture.stop();
    let read = run("tcpdump", &["-r", &pcap.to_string_lossy(), "-n"]);
    let packets = read.stdout.lines().filter(|l| !l.trim().is_empty()).count();
    eprintln!("[e2e] leak probe `{tag}`: {packets} packets from {CLIENT_UPLINK} reached {INET_SERVER}");
    packets
}

fn nft_table_present(tn: &Testnet) -> bool {
    ns_exec(&tn.ns.client, "nft", &["list", "table", "inet", "hopwire"]).success()
}

#[test]
fn nothing_leaks_while_connected_nor_after_the_daemon_is_killed_until_it_starts_again() {
    require_tool("tcpdump");
    let mut tn = Testnet::start("hwl1", 1);

    // Connected: the tunnel carries traffic, nothing goes around it.
    assert_eq!(tn.status()["state"], "connected");
    assert!(nft_table_present(&tn), "the firewall is in place while connected");
    let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), None, 30);
    assert!(out.success(), "traffic through the tunnel flows: {out}");
    assert_eq!(probe(&tn, "connected"), 0, "leaked while connected");

    // The daemon killed with -9 while connected: the firewall belongs to no
    // process and stays; nothing goes around the dead tunnel.
    kill_and_wait(tn.summary["client"]["pid"].as_u64().expect("pid") as u32, "KILL");
    assert!(nft_table_present(&tn), "the firewall outlives the killed daemon");
    assert_eq!(probe(&tn, "killed"), 0, "leaked after the daemon was killed");

    // Started again (no lockdown): it decides, and lets traffic flow.
    tn.restart_client("client-after-kill.log");
    assert!(
        !nft_table_present(&tn),
        "a daemon starting disconnected removes the firewall"
    );
    let through = probe(&tn, "disconnected");
    assert!(
        through > 0,
        "disconnected without lockdown, traffic goes directly (the probe can see a leak)"
    );
}

#[test]
fn nothing_leaks_while_reconnecting_and_traffic_flows_after_disconnect() {
    require_tool("tcpdump");
    // Two relays: once the middle dies, no path is left and the client
    // stays reconnecting.
    let tn = Testnet::start_with("hwl2", 1, &["--relays", "2"]);
    let status = tn.status();
    let middle = status["circuit"][1]["id"].as_str().expect("a middle").to_owned();
    let node = tn.summary["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["identity"].as_str() == Some(middle.as_str())))
        .expect("the middle among the nodes")
        .clone();
    kill_and_wait(node["pid"].as_u64().expect("pid") as u32, "KILL");
    tn.wait_status("the client to reconnect without a usable relay", 60, |st| {
        st["state"] == "reconnecting" && st["error"].as_str().is_some_and(|e| e.contains("no usable"))
    });
    assert_eq!(probe(&tn, "reconnecting"), 0, "leaked while reconnecting");
    tn.cli(&["disconnect"]).ok();
    assert!(!nft_table_present(&tn), "a clean disconnect removes the firewall");
    assert!(
        probe(&tn, "after-disconnect") > 0,
        "disconnected, traffic goes directly"
    );
}
