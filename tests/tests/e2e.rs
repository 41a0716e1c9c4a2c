//! End-to-end tests: real namespaces, TUN devices, daemons and traffic.
//!
//! Each test builds its own testnet under a unique prefix (`hwt1`, ...) and
//! tears it down in `Drop`, also when it fails. They need root and the built
//! binaries; without either they fail. Run them one at a time (nextest's
//! `e2e` test group, see `.config/nextest.toml`).

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

const INET_SERVER: &str = "198.18.0.10";
const EXIT_UPLINK: &str = "198.18.1.2";
const CLIENT_UPLINK: &str = "198.18.2.2";
const LAN_SERVER: &str = "10.77.0.2";

fn state_is_failure(st: &Value) -> bool {
    let reason = st["error"].as_str().unwrap_or("").trim();
    let state = st["state"].as_str().unwrap_or("");
    (state == "error" || state == "connecting" || state == "reconnecting") && !reason.is_empty()
}

/// 1. A file downloaded through the tunnel is byte-exact, and the pretend
///    internet sees the exit's address, never the client's.
#[test]
fn download_through_tunnel_is_exact_and_seen_from_exit() {
    let tn = Testnet::start("hwt1", 8);
    assert_eq!(tn.field(&["addresses", "inet_server"]), INET_SERVER);
    assert_eq!(tn.field(&["addresses", "exit_uplink"]), EXIT_UPLINK);
    assert_eq!(tn.field(&["addresses", "client_uplink"]), CLIENT_UPLINK);
    assert_eq!(tn.status()["state"], "connected");
    let exit_addr = tn.exit_addr();
    assert!(
        exit_addr.starts_with(&format!("{EXIT_UPLINK}:")),
        "the circuit ends at {exit_addr}, not at the exit {EXIT_UPLINK}"
    );

    let before = tn.access_entries().len();
    let got = tn.dir.join("e2e-download.bin");
    let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), Some(&got), 120);
    assert!(out.success(), "download through the tunnel failed: {out}");
    let want = tn.www().join("test.bin");
    let (got_sum, want_sum) = (sha256_file(&got), sha256_file(&want));
    assert_eq!(got_sum, want_sum, "downloaded test.bin differs from {}", want.display());
    assert_eq!(
        fs::metadata(&got).map(|m| m.len()).ok(),
        fs::metadata(&want).map(|m| m.len()).ok(),
        "downloaded size differs"
    );
    assert_eq!(
        tn.summary["download"]["sha256"].as_str(),
        Some(want_sum.as_str()),
        "testnet summary reports another sha256"
    );

    let entries = tn.access_entries();
    let ours = &entries[before.min(entries.len())..];
    assert!(
        ours.iter()
            .any(|(peer, path)| peer == EXIT_UPLINK && path.contains("/test.bin")),
        "no access-log line `{EXIT_UPLINK} /test.bin` for our download; new lines: {ours:?}"
    );
    for (peer, path) in &entries {
        assert_ne!(
            peer, CLIENT_UPLINK,
            "the pretend internet saw the client's own address for {path}: traffic bypassed the tunnel"
        );
        assert_eq!(
            peer, EXIT_UPLINK,
            "unexpected peer for {path} in the access log: {entries:?}"
        );
    }

    // The bytes counters moved by at least the file we fetched.
    let st = tn.status();
    let received = st["bytes_received"].as_u64().unwrap_or(0);
    let size = fs::metadata(&want).map(|m| m.len()).unwrap_or(0);
    assert!(
        received >= size,
        "status bytes_received {received} is below the {size} bytes downloaded: {st}"
    );
}

/// 2. DNS goes through the tunnel, and resolv.conf is restored on disconnect.
#[test]
fn dns_goes_through_tunnel_and_resolv_conf_is_restored() {
    let tn = Testnet::start("hwt2", 1);
    let inner: Ipv4Addr = tn
        .field(&["client", "inner_addr"])
        .parse()
        .unwrap_or_else(|e| panic!("client.inner_addr is not an IPv4 address: {e}"));

    let check_connected = |when: &str| {
        let resolv = tn.client_resolv();
        let servers = nameservers(&resolv);
        assert!(
            !servers.is_empty(),
            "{when}: client resolv.conf names no nameserver:\n{resolv}"
        );
        for s in &servers {
            let ip: Ipv4Addr = s
                .parse()
                .unwrap_or_else(|e| panic!("{when}: nameserver `{s}` is not IPv4 ({e}):\n{resolv}"));
            assert!(
                in_subnet(ip, Ipv4Addr::new(100, 87, 0, 0), 16) && ip != inner,
                "{when}: while connected the client's resolver should be the exit's inner gateway (in 100.87.0.0/16), got {s}:\n{resolv}"
            );
        }
        // The bind-mounted view inside the namespace agrees.
        let seen = ns_exec(&tn.ns.client, "cat", &["/etc/resolv.conf"]).ok();
        assert_eq!(
            seen.stdout, resolv,
            "{when}: /etc/resolv.conf inside the client ns differs from /etc/netns/.../resolv.conf"
        );
        let out = ns_exec(&tn.ns.client, "getent", &["hosts", "x.hopwire.test"]);
        assert!(
            out.success(),
            "{when}: x.hopwire.test does not resolve in the client ns: {out}"
        );
        assert!(
            out.stdout.split_whitespace().next() == Some(INET_SERVER),
            "{when}: x.hopwire.test resolved to something other than {INET_SERVER}: {out}"
        );
    };
    check_connected("after testnet connect");

    // The state before connecting: what the testnet wrote, pointing at the inet DNS server.
    tn.disconnect();
    let original = fs::read(tn.client_resolv_path()).unwrap_or_else(|e| panic!("read resolv.conf: {e}"));
    let original_text = String::from_utf8_lossy(&original).into_owned();
    assert!(
        nameservers(&original_text).iter().any(|s| s == INET_SERVER),
        "after disconnect the client resolv.conf should name the inet DNS server {INET_SERVER}:\n{original_text}"
    );

    tn.reconnect();
    check_connected("after reconnect");
    // A name that has never been asked before, so no cache can answer it.
    let out = ns_exec(&tn.ns.client, "getent", &["hosts", "fresh-name.hopwire.test"]).ok();
    assert!(out.stdout.starts_with(INET_SERVER), "fresh-name.hopwire.test: {out}");

    tn.disconnect();
    let restored = fs::read(tn.client_resolv_path()).unwrap_or_else(|e| panic!("read resolv.conf: {e}"));
    assert!(
        restored == original,
        "resolv.conf was not restored byte-exact after disconnect\n--- before connect\n{original_text}\n--- after disconnect\n{}",
        String::from_utf8_lossy(&restored)
    );
}

/// 3. The default policy refuses the exit's LAN; an operator rule opens it,
///    and the client reconnects by itself after the exit restarts.
#[test]
fn private_destination_refused_until_policy_allows_it() {
    let mut tn = Testnet::start("hwt3", 1);
    let lan_url = format!("http://{LAN_SERVER}/");
    let out = tn.curl_client(&lan_url, None, 3);
    assert!(
        !out.success(),
        "the exit's LAN {LAN_SERVER} was reachable through the tunnel under the default policy: {out}"
    );
    // The tunnel itself still works: the refusal is the policy, not a broken link.
    let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), None, 60);
    assert!(out.success(), "public destination failed after the refused one: {out}");

    tn.stop_exit("TERM");
    // The client notices the exit is gone before it can come back on its own.
    let st = tn.wait_status("client to notice the stopped exit", 60, |st| st["state"] != "connected");
    eprintln!("[e2e] after stopping the exit: {st}");
    tn.edit_exit_config(|t| {
        let exit = t
            .entry("exit")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let exit = exit.as_table_mut().unwrap_or_else(|| panic!("[exit] is not a table"));
        exit.insert(
            "policy".into(),
            toml::Value::Array(vec![toml::Value::String("accept 10.77.0.0/24:*".into())]),
        );
    });
    tn.restart_exit();
    // The client notices and reconnects on its own; no `connect` from us.
    let st = tn.wait_state("connected", 90);
    eprintln!("[e2e] reconnected by itself: {st}");
    let out = poll_until("the LAN server through the tunnel", 10, Duration::from_secs(1), || {
        let out = tn.curl_client(&lan_url, None, 5);
        if out.success() {
            Ok(out)
        } else {
            Err(out.to_string())
        }
    });
    assert!(out.success());
}

/// 4. A stock WireGuard client (wireguard-go + wg) reaches the internet through the exit.
#[test]
fn stock_wireguard_client_reaches_internet_through_exit() {
    require_tool("wg");
    require_tool("wireguard-go");
    let mut tn = Testnet::start("hwt4", 1);
    let exit_wg_key = tn.field(&["exit", "wg_public_key"]).to_owned();
    let peer_addr = "100.87.255.2";

    // Keys for the stock client.
    let private = run("wg", &["genkey"]).ok().stdout.trim().to_owned();
    let public = {
        let key_file = tn.dir.join("wg-client.key");
        fs::write(&key_file, format!("{private}\n")).unwrap_or_else(|e| panic!("write {}: {e}", key_file.display()));
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("chmod: {e}"));
        let out = run_timeout(
            Command::new("sh")
                .arg("-c")
                .arg(format!("wg pubkey < {}", key_file.display())),
            CMD_TIMEOUT,
        )
        .ok();
        out.stdout.trim().to_owned()
    };
    assert_eq!(public.len(), 44, "wg pubkey gave `{public}`");

    tn.stop_exit("TERM");
    tn.edit_exit_config(|t| {
        let mut peer = toml::Table::new();
        peer.insert("public_key".into(), toml::Value::String(public.clone()));
        peer.insert("address".into(), toml::Value::String(peer_addr.into()));
        let mut wg = toml::Table::new();
        wg.insert("listen".into(), toml::Value::String(format!("{EXIT_UPLINK}:51820")));
        wg.insert("peers".into(), toml::Value::Array(vec![toml::Value::Table(peer)]));
        t.insert("wireguard".into(), toml::Value::Table(wg));
    });
    tn.restart_exit();

    // A fresh namespace hanging off the inet router: 198.18.3.1/30 <-> 198.18.3.2/30.
    let ns = ScratchNs::new("hwt4wg");
    let (veth_inet, veth_wg) = ("hwt4wi", "hwt4wc");
    let _ = ns_exec(&tn.ns.inet, "ip", &["link", "del", veth_inet]);
    ns_exec(
        &tn.ns.inet,
        "ip",
        &[
            "link", "add", veth_inet, "type", "veth", "peer", "name", veth_wg, "netns", &ns.name,
        ],
    )
    .ok();
    ns_exec(&tn.ns.inet, "ip", &["addr", "add", "198.18.3.1/30", "dev", veth_inet]).ok();
    ns_exec(&tn.ns.inet, "ip", &["link", "set", veth_inet, "up"]).ok();
    ns.exec("ip", &["addr", "add", "198.18.3.2/30", "dev", veth_wg]).ok();
    ns.exec("ip", &["link", "set", veth_wg, "up"]).ok();
    ns.exec("ip", &["route", "add", "default", "via", "198.18.3.1"]).ok();
    let ns_name = ns.name.clone();
    tn.extra_ns.push(ns);
    // The plain path works before WireGuard is involved.
    let ping = ns_exec(&ns_name, "ping", &["-c", "1", "-W", "3", EXIT_UPLINK]);
    assert!(
        ping.success(),
        "the new namespace cannot reach the exit's uplink over the inet router: {ping}"
    );

    let dev = "hwt4wg0";
    let wg_log = tn.dir.join("wireguard-go.log");
    let _ = fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
    let mut bg = Background::start_in_ns(
        "wireguard-go",
        &ns_name,
        "wireguard-go",
        &["-f", dev],
        &wg_log,
        &[
            ("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1"),
            ("LOG_LEVEL", "verbose"),
        ],
    );
    poll_until("wireguard-go's device", 40, Duration::from_millis(250), || {
        bg.assert_running();
        let out = ns_exec(&ns_name, "wg", &["show", dev]);
        if out.success() {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    tn.extra.push(bg);
    let key_file = tn.dir.join("wg-client.key");
    let key_file = key_file.to_string_lossy().into_owned();
    let endpoint = format!("{EXIT_UPLINK}:51820");
    ns_exec(
        &ns_name,
        "wg",
        &[
            "set",
            dev,
            "private-key",
            &key_file,
            "peer",
            &exit_wg_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "0.0.0.0/0",
            "persistent-keepalive",
            "5",
        ],
    )
    .ok();
    ns_exec(&ns_name, "ip", &["addr", "add", &format!("{peer_addr}/32"), "dev", dev]).ok();
    ns_exec(&ns_name, "ip", &["link", "set", dev, "up"]).ok();
    ns_exec(
        &ns_name,
        "ip",
        &["route", "add", &format!("{INET_SERVER}/32"), "dev", dev],
    )
    .ok();

    let before = tn.access_entries().len();
    let got = tn.dir.join("wg-download.bin");
    let out = poll_until("a download over stock WireGuard", 5, Duration::from_secs(2), || {
        let out = curl(&ns_name, &format!("http://{INET_SERVER}/test.bin"), Some(&got), 30);
        if out.success() {
            Ok(out)
        } else {
            let wg = ns_exec(&ns_name, "wg", &["show", dev]);
            Err(format!("{out}\n{wg}"))
        }
    });
    assert!(out.success());
    assert_eq!(
        sha256_file(&got),
        sha256_file(&tn.www().join("test.bin")),
        "download over stock WireGuard differs"
    );
    let entries = tn.access_entries();
    let ours = &entries[before.min(entries.len())..];
    assert!(
        ours.iter()
            .any(|(peer, path)| peer == EXIT_UPLINK && path.contains("/test.bin")),
        "no access-log line `{EXIT_UPLINK} /test.bin` for the WireGuard download; new lines: {ours:?}"
    );
    assert!(
        ours.iter().all(|(peer, _)| peer == EXIT_UPLINK),
        "the pretend internet saw a non-exit address for the WireGuard download: {ours:?}"
    );
}

/// 5. Killing the exit puts the client into an error state with a reason.
#[test]
fn killed_exit_puts_client_into_error() {
    let mut tn = Testnet::start("hwt5", 1);
    assert_eq!(tn.status()["state"], "connected");
    tn.stop_exit("KILL");
    let st = tn.wait_status(
        "client to report the lost exit (state error, or connecting with an error)",
        30,
        state_is_failure,
    );
    let reason = st["error"].as_str().unwrap_or("");
    assert!(!reason.trim().is_empty(), "the client gives no reason: {st}");
    eprintln!("[e2e] client after the exit was killed: {st}");
    // And the daemon keeps answering.
    let again = tn.status();
    assert!(again["state"].is_string(), "status after the failure: {again}");
}

/// 6. Disconnect leaves the client namespace's routes and rules as they were.
#[test]
fn disconnect_restores_client_routes() {
    let tn = Testnet::start("hwt6", 1);
    let connected_first = tn.client_routes();
    tn.disconnect();
    let before = tn.client_routes();
    assert_ne!(
        connected_first, before,
        "disconnect changed no route: was the tunnel routed at all?"
    );

    tn.reconnect();
    let connected = tn.client_routes();
    assert_ne!(connected, before, "connect changed no route in the client ns");
    let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), None, 60);
    assert!(out.success(), "download after reconnect failed: {out}");

    tn.disconnect();
    let after = tn.client_routes();
    assert_eq!(
        before, after,
        "routes in the client ns differ after connect + disconnect"
    );
    let st = tn.status();
    assert_eq!(st["state"], "disconnected", "{st}");
}

/// 7a. `hopwire-node run` refuses bad configuration with a clear error and touches nothing.
#[test]
fn node_refuses_bad_config() {
    let _serial = serial();
    require_root();
    let node = node_bin();
    let tmp = TempDir::new("hwt7n");
    let dir = tmp.path().join("node");
    let dir_s = dir.to_string_lossy().into_owned();
    run(&node, &["init", "--dir", &dir_s, "--public-address", "198.18.1.2:4433"]).ok();
    let config = dir.join("node.toml");
    let config_s = config.to_string_lossy().into_owned();
    assert!(config.is_file(), "init wrote no {}", config.display());
    // Everything runs in an empty namespace so a wrongly started node would touch nothing real.
    let ns = ScratchNs::new("hwt7node");
    let run_node = |args: &[&str]| {
        let mut full = vec!["netns", "exec", ns.name.as_str()];
        let node_s = node.to_string_lossy().into_owned();
        full.push(&node_s);
        full.extend_from_slice(args);
        run_timeout(Command::new("ip").args(&full), Duration::from_secs(20))
    };
    let assert_untouched = |what: &str| {
        let links = ns.links();
        assert_eq!(
            links,
            vec!["lo".to_owned()],
            "{what}: the node created interfaces before failing: {links:?}"
        );
    };

    // A typo'd field.
    let good = fs::read_to_string(&config).unwrap_or_else(|e| panic!("read: {e}"));
    assert!(good.contains("\nlisten = "), "template has no `listen =` line:\n{good}");
    let bad = good.replacen("\nlisten = ", "\nlisen = ", 1);
    fs::write(&config, &bad).unwrap_or_else(|e| panic!("write: {e}"));
    let out = run_node(&["run", "--config", &config_s]);
    assert!(!out.timed_out(), "node with a typo'd config did not exit: {out}");
    assert!(
        !out.success(),
        "node accepted a config with the unknown field `lisen`: {out}"
    );
    assert!(
        out.stderr.contains("lisen"),
        "error does not name the bad field `lisen`: {out}"
    );
    assert!(
        out.stderr.contains(&config_s),
        "error does not name the config file: {out}"
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap_or_default(),
        bad,
        "the node rewrote the bad config"
    );
    assert_untouched("typo");
    fs::write(&config, &good).unwrap_or_else(|e| panic!("write: {e}"));

    // A config path that cannot be read.
    let missing = tmp.path().join("no-such-dir/node.toml");
    let missing_s = missing.to_string_lossy().into_owned();
    let out = run_node(&["run", "--config", &missing_s]);
    assert!(
        !out.timed_out() && !out.success(),
        "node ran without a config file: {out}"
    );
    assert!(
        out.stderr.contains(&missing_s),
        "error does not name the missing file: {out}"
    );
    assert!(!missing.exists(), "the node created the missing config");
    assert_untouched("missing config");
    let out = run_node(&["run", "--config", &tmp.path().to_string_lossy()]);
    assert!(
        !out.timed_out() && !out.success(),
        "node ran with a directory as config: {out}"
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "no error message for a directory as config: {out}"
    );

    // A key file that others can read.
    let key = dir.join("identity.key");
    assert!(key.is_file(), "init wrote no {}", key.display());
    let key_bytes = fs::read(&key).unwrap_or_default();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("chmod: {e}"));
    let out = run_node(&["run", "--config", &config_s]);
    assert!(
        !out.timed_out() && !out.success(),
        "node started with a world-readable key file: {out}"
    );
    assert!(
        out.stderr.contains("chmod"),
        "key-mode error does not tell to chmod: {out}"
    );
    let mode = fs::metadata(&key).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode, 0o644, "the node changed the key file's mode itself");
    assert_eq!(
        fs::read(&key).unwrap_or_default(),
        key_bytes,
        "the node rewrote the key file"
    );
    assert_untouched("key mode");

    // And the same files are fine once fixed: show-record works.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("chmod: {e}"));
    let out = run_node(&["show-record", "--config", &config_s, "--json"]).ok();
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("show-record --json is not JSON ({e}): {out}"));
    assert!(
        v["record"].as_str().is_some_and(|r| !r.is_empty()),
        "show-record has no record: {v}"
    );
}

/// 7b. The client refuses garbage, fails (without hanging) on an unreachable
///     exit, and refuses a second daemon on its socket; none of it changes state.
#[test]
fn client_refuses_bad_input() {
    let tn = Testnet::start("hwt7", 1);
    let node = node_bin();
    tn.disconnect();
    let resolv = fs::read(tn.client_resolv_path()).unwrap_or_default();
    let routes = tn.client_routes();

    // Garbage instead of a record.
    let out = tn.cli(&["connect", "garbage"]);
    assert!(!out.timed_out() && !out.success(), "connect accepted `garbage`: {out}");
    assert!(
        out.stderr.to_lowercase().contains("record"),
        "error for `connect garbage` does not mention the record: {out}"
    );
    let st = tn.status();
    assert_eq!(st["state"], "disconnected", "connect garbage changed the state: {st}");

    // A second daemon on the same socket.
    let socket = tn.socket.to_string_lossy().into_owned();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &tn.ns.client])
        .arg(hopwire_bin())
        .args(["daemon", "--socket", &socket]);
    let out = run_timeout(&mut cmd, Duration::from_secs(20));
    assert!(!out.timed_out(), "a second daemon on {socket} kept running: {out}");
    assert!(!out.success(), "a second daemon on {socket} exited 0: {out}");
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("socket") || err.contains("already") || err.contains(&socket),
        "second daemon's error is unclear: {out}"
    );
    let st = tn.status();
    assert_eq!(
        st["state"], "disconnected",
        "first daemon after the second one failed: {st}"
    );

    // A well-formed record of an exit that runs nothing.
    let tmp = TempDir::new("hwt7dead");
    let dead = tmp.path().join("dead");
    let dead_s = dead.to_string_lossy().into_owned();
    run(
        &node,
        &["init", "--dir", &dead_s, "--public-address", "198.18.1.2:4999"],
    )
    .ok();
    let cfg = dead.join("node.toml").to_string_lossy().into_owned();
    let out = run(&node, &["show-record", "--config", &cfg, "--json"]).ok();
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("show-record --json is not JSON ({e}): {out}"));
    let record = v["record"]
        .as_str()
        .unwrap_or_else(|| panic!("show-record has no record: {v}"))
        .to_owned();
    // One hop: straight to the dead exit, no relays to choose among.
    let out = tn.cli(&["connect", "--hops", "1", &record]);
    assert!(!out.timed_out(), "connect to an unreachable exit hung: {out}");
    let st = if out.success() {
        tn.wait_status("client to give up on the unreachable exit", 60, state_is_failure)
    } else {
        // connect itself reported the failure; the daemon must say so too or be back to disconnected.
        assert!(!out.stderr.trim().is_empty(), "failed connect printed no reason: {out}");
        tn.status()
    };
    eprintln!("[e2e] connect to an unreachable exit: {out}\n[e2e] status: {st}");
    assert!(
        state_is_failure(&st) || (st["state"] == "disconnected" && !out.success()),
        "unexpected status after connecting to an unreachable exit: {st}"
    );
    tn.disconnect();
    assert_eq!(
        fs::read(tn.client_resolv_path()).unwrap_or_default(),
        resolv,
        "resolv.conf differs after the failed connect"
    );
    assert_eq!(tn.client_routes(), routes, "routes differ after the failed connect");

    // The user is told which exit could not be reached, not only that none worked.
    let identity = v["identity"].as_str().unwrap_or("(no identity in show-record)");
    let said = format!("{}\n{}", out.stderr, st["error"].as_str().unwrap_or(""));
    assert!(
        said.contains("198.18.1.2:4999") || said.contains(identity),
        "neither connect's stderr nor the status error names the unreachable exit ({identity} at 198.18.1.2:4999):\n{said}"
    );
    tn.reconnect();
}

/// 7c. `hopwire testnet` as an unprivileged user says it needs root and creates nothing.
#[test]
fn testnet_refuses_non_root() {
    let _serial = serial();
    require_root();
    // Copy the binary somewhere the unprivileged user can surely execute it.
    let tmp = TempDir::new("hwt7r");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod: {e}"));
    let copy = tmp.path().join("hopwire");
    fs::copy(hopwire_bin(), &copy).unwrap_or_else(|e| panic!("copy hopwire: {e}"));
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod: {e}"));
    let before = netns_list();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(["testnet", "--json", "--prefix", "hwt7r"])
        .env("HOME", tmp.path())
        .current_dir(tmp.path());
    let out = run_timeout(&mut cmd, Duration::from_secs(30));
    assert!(!out.timed_out(), "testnet as nobody did not exit: {out}");
    assert!(!out.success(), "testnet as nobody exited 0: {out}");
    assert!(
        out.stderr.to_lowercase().contains("root"),
        "testnet as nobody does not say it needs root: {out}"
    );
    let after = netns_list();
    assert_eq!(before, after, "testnet as nobody changed the namespaces");
    assert!(
        !after.iter().any(|n| n.starts_with("hwt7r")),
        "namespaces of the refused testnet exist: {after:?}"
    );
}

/// 8. Killing a relay of the circuit: the client builds a new circuit around
///    it by itself and traffic flows again.
#[test]
fn killed_relay_is_routed_around() {
    let tn = Testnet::start("hwt8", 1);
    let st = tn.status();
    let circuit = st["circuit"].as_array().cloned().unwrap_or_default();
    assert!(circuit.len() >= 2, "the testnet's circuit has no relay to kill: {st}");
    let guard_id = circuit[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("circuit hop without id: {st}"))
        .to_owned();
    let nodes = tn.summary["nodes"].as_array().cloned().unwrap_or_default();
    let guard = nodes
        .iter()
        .find(|n| n["identity"].as_str() == Some(guard_id.as_str()))
        .unwrap_or_else(|| panic!("guard {guard_id} is not among the testnet's nodes: {:#}", tn.summary));
    let pid = guard["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("node without pid: {guard}"));
    kill_and_wait(pid, "KILL");

    let st = tn.wait_status("a new circuit that avoids the killed guard", 90, |st| {
        st["state"] == "connected"
            && st["circuit"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|h| h["id"].as_str() != Some(guard_id.as_str())))
    });
    eprintln!("[e2e] circuit after killing guard {guard_id}: {st}");
    let got = tn.dir.join("after-relay.bin");
    let out = poll_until(
        "a download over the rebuilt circuit",
        10,
        Duration::from_secs(1),
        || {
            let out = tn.curl_client(&format!("http://{INET_SERVER}/test.bin"), Some(&got), 30);
            if out.success() {
                Ok(out)
            } else {
                Err(out.to_string())
            }
        },
    );
    assert!(out.success());
    assert_eq!(
        sha256_file(&got),
        sha256_file(&tn.www().join("test.bin")),
        "download over the rebuilt circuit differs"
    );
}
