//! Leak tests, state by state, in the style of Mullvad's tunnel-state
//! tests: in the client namespace a probe sends TCP, UDP, ICMP and DNS (over
//! IPv4 and IPv6) to the pretend internet *around* the tunnel (bound to the
//! client's uplink, as a program that ignores the routes would), and DNS
//! to a foreign resolver the normal way, while a capture on the internet
//! side counts what arrives from the client's own addresses. Where the
//! state blocks, nothing may arrive; where it does not, the probe must get
//! through, so the test can fail.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hopwire_e2e::*;

const INET_SERVER: &str = "198.18.0.10";
const INET_SERVER_V6: &str = "2001:2::10";
const CLIENT_UPLINK: &str = "198.18.2.2";
const CLIENT_UPLINK_V6: &str = "2001:2:2::2";
/// The first exit's uplink (it has IPv6; the second exit has none).
const EXIT_UPLINK_V6: &str = "2001:2:1::2";
/// A host on the client's own LAN, made by the allow-LAN test.
const LAN_HOST: &str = "192.168.77.2";

/// A DNS client: asks SERVER over udp|tcp for a name under hopwire.test,
/// optionally bound to a device; exit 0 on an answer.
const DNS_QUERY: &str = r#"
import socket, struct, sys
server, proto = sys.argv[1], sys.argv[2]
dev = sys.argv[3] if len(sys.argv) > 3 else None
q = struct.pack("!HHHHHH", 0x4857, 0x0100, 1, 0, 0, 0) + b"\x03www\x07hopwire\x04test\x00" + struct.pack("!HH", 1, 1)
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
s = socket.socket(fam, kind)
s.settimeout(2)
if dev:
    s.setsockopt(socket.SOL_SOCKET, 25, dev.encode())
try:
    if proto == "udp":
        s.sendto(q, (server, 53))
        a = s.recv(4096)
    else:
        s.connect((server, 53))
        s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2))[0]
        a = s.recv(n)
except OSError as e:
    print("no answer:", e)
    sys.exit(1)
sys.exit(0 if a[:2] == q[:2] else 2)
"#;

/// Asks `server` over `proto` from the client namespace; whether it answered.
fn dns_answers(tn: &Testnet, server: &str, proto: &str, dev: Option<&str>) -> bool {
    let mut args = vec!["-c", DNS_QUERY, server, proto];
    args.extend(dev);
    ns_exec_timeout(&tn.ns.client, "python3", &args, Duration::from_secs(6)).success()
}

/// Packets from the client's own addresses that reached the internet host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leaked {
    v4: usize,
    v6: usize,
}

impl Leaked {
    fn none(self) -> bool {
        self.v4 == 0 && self.v6 == 0
    }
}

/// Sends TCP, UDP (DNS over UDP and TCP too), and ICMP to the pretend
/// internet around the tunnel over IPv4 and IPv6, and DNS to the internet's
/// resolver the normal way (through the tunnel while it is up); counts what
/// arrived from the client's own addresses.
fn probe(tn: &Testnet, tag: &str) -> Leaked {
    let pcap = tn.dir.join(format!("leak-{tag}.pcap"));
    let filter = format!(
        "(src host {CLIENT_UPLINK} and dst host {INET_SERVER}) or (src host {CLIENT_UPLINK_V6} and dst host {INET_SERVER_V6})"
    );
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
    let quick = Duration::from_secs(5);
    for url in [
        format!("http://{INET_SERVER}/leak-{tag}"),
        format!("http://[{INET_SERVER_V6}]/leak-{tag}"),
    ] {
        ns_exec_timeout(
            c,
            "curl",
            &["-s", "-o", "/dev/null", "--interface", "eth0", "--max-time", "2", &url],
            quick,
        );
    }
    for server in [INET_SERVER, INET_SERVER_V6] {
        for proto in ["udp", "tcp"] {
            dns_answers(tn, server, proto, Some("eth0"));
        }
    }
    // The normal way: through the tunnel when it is up (to a resolver
    // that is not the tunnel's), directly when it is down.
    for proto in ["udp", "tcp"] {
        dns_answers(tn, INET_SERVER, proto, None);
    }
    ns_exec_timeout(
        c,
        "ping",
        &["-I", "eth0", "-c", "2", "-i", "0.2", "-W", "1", INET_SERVER],
        quick,
    );
    ns_exec_timeout(
        c,
        "ping",
        &["-6", "-I", "eth0", "-c", "2", "-i", "0.2", "-W", "1", INET_SERVER_V6],
        quick,
    );
    std::thread::sleep(Duration::from_millis(500));
    capture.stop();
    let read = run("tcpdump", &["-r", &pcap.to_string_lossy(), "-n"]);
    let lines: Vec<&str> = read.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let v6 = lines.iter().filter(|l| l.contains(" IP6 ")).count();
    let leaked = Leaked {
        v4: lines.len() - v6,
        v6,
    };
    eprintln!(
        "[e2e] leak probe `{tag}`: {} IPv4 and {} IPv6 packets from the client's own addresses reached the internet",
        leaked.v4, leaked.v6
    );
    if !leaked.none() {
        eprintln!(
            "[e2e] {}",
            lines.iter().take(8).copied().collect::<Vec<_>>().join("\n[e2e] ")
        );
    }
    leaked
}

fn nft_table_present(tn: &Testnet) -> bool {
    ns_exec(&tn.ns.client, "nft", &["list", "table", "inet", "hopwire"]).success()
}

fn client_pid(tn: &Testnet) -> u32 {
    match tn.extra.iter().rev().find(|b| b.name == "restarted client daemon") {
        Some(b) => b.pid(),
        None => tn.summary["client"]["pid"].as_u64().expect("pid") as u32,
    }
}

fn state_dir(tn: &Testnet) -> &Path {
    Path::new(tn.field(&["client", "state_dir"]))
}

fn settings(tn: &Testnet, args: &[&str]) {
    let mut full = vec!["settings"];
    full.extend_from_slice(args);
    tn.cli(&full).ok();
}

fn connect_to(tn: &Testnet, country: &str) {
    let out = tn.cli(&["connect", "--hops", "1", "--country", country]);
    assert!(out.success(), "connect --country {country} failed: {out}");
    tn.wait_state("connected", 30);
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
    assert!(probe(&tn, "connected").none(), "leaked while connected");

    // The daemon killed with -9 while connected: the firewall belongs to no
    // process and stays; nothing goes around the dead tunnel.
    kill_and_wait(client_pid(&tn), "KILL");
    assert!(nft_table_present(&tn), "the firewall outlives the killed daemon");
    assert!(probe(&tn, "killed").none(), "leaked after the daemon was killed");

    // Started again (no lockdown): it decides, and lets traffic flow.
    tn.restart_client("client-after-kill.log");
    assert!(
        !nft_table_present(&tn),
        "a daemon starting disconnected removes the firewall"
    );
    let through = probe(&tn, "disconnected");
    assert!(
        through.v4 > 0 && through.v6 > 0,
        "disconnected without lockdown, traffic goes directly over IPv4 and IPv6 (the probe can see a leak): {through:?}"
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
    assert!(probe(&tn, "reconnecting").none(), "leaked while reconnecting");
    tn.cli(&["disconnect"]).ok();
    assert!(!nft_table_present(&tn), "a clean disconnect removes the firewall");
    assert!(
        !probe(&tn, "after-disconnect").none(),
        "disconnected, traffic goes directly"
    );
}

#[test]
fn nothing_leaks_while_connecting_to_an_unreachable_exit_nor_once_connecting_failed() {
    require_tool("tcpdump");
    let tn = Testnet::start_with("hwl3", 1, &["--exits", "2", "--hops", "1"]);
    tn.disconnect();
    // Both exits stop answering: each attempt waits out a QUIC handshake.
    for exit in tn.summary["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "exit")
    {
        let ns = exit["namespace"].as_str().expect("namespace");
        ns_exec(
            ns,
            "nft",
            &[
                "add table inet unreachable; add chain inet unreachable input { type filter hook input priority -10; }; add rule inet unreachable input udp dport 4433 drop",
            ],
        )
        .ok();
    }
    let socket = tn.socket.clone();
    let connect = std::thread::spawn(move || {
        run_timeout(
            Command::new(hopwire_bin())
                .arg("--socket")
                .arg(&socket)
                .args(["connect", "--hops", "1"]),
            Duration::from_secs(90),
        )
    });
    tn.wait_state("connecting", 20);
    assert!(probe(&tn, "connecting").none(), "leaked while connecting");
    let failed = connect.join().expect("the connect thread");
    assert!(!failed.success(), "connecting to unreachable exits fails: {failed}");
    let st = tn.wait_state("error", 60);
    assert_eq!(st["error_kind"], "hop_unreachable", "{st}");
    assert!(nft_table_present(&tn), "the firewall holds in the error state");
    assert!(probe(&tn, "error").none(), "leaked in the error state");
    tn.cli(&["disconnect"]).ok();
    assert!(
        !probe(&tn, "after-error").none(),
        "disconnected after the error, traffic goes directly"
    );
}

#[test]
fn lockdown_blocks_while_disconnected_after_a_kill_a_reboot_and_a_restart_and_bad_files_fail_closed() {
    require_tool("tcpdump");
    let mut tn = Testnet::start("hwl4", 1);
    settings(&tn, &["--lockdown", "on"]);
    assert_eq!(tn.status()["settings"]["lockdown"], true);

    // Disconnected with lockdown: blocked.
    tn.disconnect();
    assert!(nft_table_present(&tn), "lockdown keeps the firewall while disconnected");
    assert!(
        probe(&tn, "lockdown-disconnected").none(),
        "leaked while disconnected in lockdown"
    );

    // Killed while connected, then a "reboot" (the kernel's tables are
    // gone) with the early boot step, then the daemon again: blocked
    // throughout.
    tn.reconnect();
    kill_and_wait(client_pid(&tn), "KILL");
    assert!(probe(&tn, "lockdown-killed").none(), "leaked after a kill in lockdown");
    ns_exec(&tn.ns.client, "nft", &["delete", "table", "inet", "hopwire"]).ok();
    assert!(!nft_table_present(&tn));
    let boot = ns_exec(
        &tn.ns.client,
        hopwire_bin(),
        &["boot-block", "--state-dir", &state_dir(&tn).to_string_lossy()],
    )
    .ok();
    assert!(boot.stdout.contains("blocked"), "{boot}");
    assert!(nft_table_present(&tn), "the boot step blocks before the daemon runs");
    assert!(probe(&tn, "lockdown-boot").none(), "leaked between boot and the daemon");
    tn.restart_client("client-lockdown-restart.log");
    let st = tn.status();
    assert_eq!(
        (st["state"].as_str(), &st["settings"]["lockdown"]),
        (Some("disconnected"), &serde_json::json!(true))
    );
    assert!(
        probe(&tn, "lockdown-restarted").none(),
        "leaked after a restart in lockdown"
    );

    // Lockdown off: disconnected traffic flows directly, as the user asked.
    settings(&tn, &["--lockdown", "off"]);
    assert!(!nft_table_present(&tn));
    assert!(!probe(&tn, "lockdown-off").none(), "without lockdown, traffic flows");

    // A damaged settings file: the daemon starts blocked and says why;
    // setting the settings again ends it.
    kill_and_wait(client_pid(&tn), "KILL");
    std::fs::write(state_dir(&tn).join("settings.json"), "{\"lockdown\": fal").expect("damage the settings");
    tn.restart_client("client-bad-settings.log");
    let st = tn.status();
    let why = st["fail_closed"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("settings.json") && why.contains("blocked"), "{st}");
    assert!(nft_table_present(&tn), "unreadable settings fail closed");
    assert!(probe(&tn, "bad-settings").none(), "leaked with unreadable settings");
    settings(&tn, &["--reset"]);
    assert_eq!(tn.status()["fail_closed"], serde_json::Value::Null);
    assert!(!probe(&tn, "settings-reset").none(), "reset settings let traffic flow");

    // A damaged network state file (left by a daemon killed while
    // connected): blocked until a tunnel is up again.
    tn.reconnect();
    kill_and_wait(client_pid(&tn), "KILL");
    let state_file = tn.socket.with_extension("state.json");
    assert!(state_file.exists(), "a connected daemon records its changes");
    std::fs::write(&state_file, "not json").expect("damage the state file");
    tn.restart_client("client-bad-state.log");
    let st = tn.status();
    assert!(
        st["fail_closed"].as_str().is_some_and(|w| w.contains("network state")),
        "{st}"
    );
    assert!(
        probe(&tn, "bad-state").none(),
        "leaked with an unreadable network state file"
    );
    tn.reconnect();
    tn.disconnect();
    assert_eq!(tn.status()["fail_closed"], serde_json::Value::Null);
    assert!(
        !probe(&tn, "state-recovered").none(),
        "after a tunnel was up again, disconnected traffic flows"
    );
}

#[test]
fn ipv6_goes_through_an_exit_that_has_it_and_nowhere_else_and_the_lan_only_when_allowed() {
    require_tool("tcpdump");
    let mut tn = Testnet::start_with("hwl5", 4, &["--exits", "2", "--hops", "1"]);
    // A host on the client's own LAN.
    let lan = ScratchNs::new("hwl5-clan");
    run(
        "ip",
        &[
            "link",
            "add",
            "lan1",
            "netns",
            &tn.ns.client,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lan.name,
        ],
    )
    .ok();
    ns_exec(&tn.ns.client, "ip", &["addr", "add", "192.168.77.1/24", "dev", "lan1"]).ok();
    ns_exec(&tn.ns.client, "ip", &["link", "set", "lan1", "up"]).ok();
    lan.exec("ip", &["addr", "add", &format!("{LAN_HOST}/24"), "dev", "eth0"])
        .ok();
    lan.exec("ip", &["link", "set", "eth0", "up"]).ok();
    tn.extra_ns.push(lan);
    let lan_reachable = |tn: &Testnet| ns_exec(&tn.ns.client, "ping", &["-c", "1", "-W", "1", LAN_HOST]).success();

    // Through the exit with IPv6 (DE): a byte-exact IPv6 download, seen
    // by the server as coming from the exit's IPv6 address.
    tn.disconnect();
    connect_to(&tn, "DE");
    let st = tn.status();
    let inner_v6 = st["inner_v6"].as_str().unwrap_or_default().to_owned();
    assert!(inner_v6.starts_with("fd68:7769:7200::"), "{st}");
    assert_eq!(st["ipv6_blocked"], serde_json::Value::Null, "{st}");
    let got = tn.dir.join("v6.bin");
    let out = tn.curl_client(&format!("http://[{INET_SERVER_V6}]/test.bin"), Some(&got), 30);
    assert!(out.success(), "IPv6 through the tunnel: {out}");
    assert_eq!(
        sha256_file(&got),
        sha256_file(&tn.www().join("test.bin")),
        "byte-exact over IPv6"
    );
    let seen = tn.access_entries();
    assert_eq!(
        seen.last().map(|(peer, _)| peer.as_str()),
        Some(EXIT_UPLINK_V6),
        "the server sees the exit's IPv6 address: {seen:?}"
    );
    assert!(probe(&tn, "v6-exit").none(), "leaked through an exit with IPv6");

    // The LAN: unreachable unless allowed, and allowing it opens nothing else.
    assert!(!lan_reachable(&tn), "the LAN is blocked by default while connected");
    settings(&tn, &["--allow-lan", "on"]);
    assert!(lan_reachable(&tn), "allow-LAN lets the LAN host be reached");
    assert!(
        probe(&tn, "allow-lan").none(),
        "allow-LAN let the internet around the tunnel"
    );
    settings(&tn, &["--allow-lan", "off"]);
    assert!(!lan_reachable(&tn), "allow-LAN off blocks the LAN again");

    // Through the exit without IPv6 (NL): status says IPv6 is blocked, and
    // no IPv6 packet of the client reaches the internet, through the
    // tunnel or around it.
    tn.disconnect();
    connect_to(&tn, "NL");
    let st = tn.status();
    assert!(
        st["ipv6_blocked"]
            .as_str()
            .is_some_and(|w| w.contains("does not carry IPv6")),
        "{st}"
    );
    assert_eq!(st["inner_v6"], serde_json::Value::Null, "{st}");
    let out = tn.curl_client(&format!("http://[{INET_SERVER_V6}]/test.bin"), None, 5);
    assert!(!out.success(), "IPv6 through an exit without it must fail: {out}");
    let leaked = probe(&tn, "v6-blocked");
    assert!(leaked.none(), "leaked through an exit without IPv6: {leaked:?}");
    let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), None, 30);
    assert!(out.success(), "IPv4 still flows through the tunnel: {out}");
}

#[test]
fn dns_goes_only_to_the_tunnel_resolver_and_through_resolved_where_it_manages_dns() {
    require_tool("tcpdump");
    // A stand-in for resolvectl that records what the daemon asks of it.
    let stub = TempDir::new("resolvectl");
    let calls = stub.path().join("calls.log");
    let script = stub.path().join("resolvectl");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display())).expect("stub");
    run("chmod", &["+x", &script.to_string_lossy()]).ok();
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        stub.path().display()
    );
    let tn = Testnet::start_with_env("hwl6", 1, &[], &[("PATH", &path)]);

    // Connected: the tunnel's resolver answers over UDP and TCP; any other
    // resolver gets nothing, through the tunnel or around it.
    // Without resolved, resolv.conf names the tunnel's resolver.
    let resolv_conf = tn.client_resolv();
    let tunnel_resolver = nameservers(&resolv_conf)
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no nameserver while connected: {resolv_conf}"));
    assert_ne!(tunnel_resolver, INET_SERVER, "{resolv_conf}");
    for proto in ["udp", "tcp"] {
        assert!(
            dns_answers(&tn, &tunnel_resolver, proto, None),
            "the tunnel's resolver {tunnel_resolver} answers over {proto}"
        );
        assert!(
            !dns_answers(&tn, INET_SERVER, proto, None),
            "DNS over {proto} to a resolver that is not the tunnel's must be dropped"
        );
    }
    assert!(probe(&tn, "dns-connected").none());

    // Where systemd-resolved manages DNS (its stub in resolv.conf), the
    // tunnel link gets the resolver and every domain (`~.`), resolv.conf
    // is left alone, and disconnecting reverts the link.
    tn.disconnect();
    let resolv = tn.client_resolv_path();
    std::fs::write(&resolv, "nameserver 127.0.0.53\noptions edns0\n").expect("resolved's stub");
    tn.reconnect();
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(asked.contains("dns hopwire0 "), "{asked}");
    assert!(asked.contains("domain hopwire0 ~."), "{asked}");
    assert!(asked.contains("default-route hopwire0 yes"), "{asked}");
    assert_eq!(
        tn.client_resolv(),
        "nameserver 127.0.0.53\noptions edns0\n",
        "resolv.conf untouched"
    );
    tn.disconnect();
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(asked.contains("revert hopwire0"), "{asked}");
    std::fs::write(&resolv, format!("nameserver {INET_SERVER}\n")).expect("restore resolv.conf");
}
