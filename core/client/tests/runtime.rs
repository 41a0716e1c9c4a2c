//! The client runtime in one process, with no root and no namespaces: an
//! embedded ledger, three relays and an exit on loopback (each in its own
//! 127.N/16, so path selection accepts them), the exit's uplink and the
//! client's interface on in-memory packet channels.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hopwire_api::{Event, State, TunnelState};
use hopwire_client::platform::{MemoryPeer, MemoryPlatform};
use hopwire_client::runtime::{Client, ClientConfig, ConnectRequest};
use hopwire_net::keys::{self, NodeKeys};
use hopwire_net::ledger::EmbeddedLedger;
use hopwire_node_runtime::config::NodeConfig;
use hopwire_node_runtime::exit::MemoryInternet;
use hopwire_node_runtime::{own_record, NodeRuntime};
use hopwire_proto::onion::keys::OnionKeys;
use hopwire_proto::pay::Quote;
use hopwire_proto::time::unix_now;
use tokio::sync::{broadcast, oneshot};

const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const WAIT: Duration = Duration::from_secs(30);
/// Every node's price per GiB, and the chunk its clients prepay.
const PRICE: u64 = 1_000_000;
const CHUNK: u64 = 1 << 20;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hopwire-runtime-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free UDP port on `ip` (the node binds QUIC there; its DHT takes any TCP port).
fn free_port(ip: Ipv4Addr) -> u16 {
    let s = std::net::UdpSocket::bind((ip, 0)).expect("bind a free port");
    s.local_addr().expect("addr").port()
}

struct Node {
    record: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Configures and starts one node at `ip`; with `exit`, its uplink is the
/// returned pretend internet.
async fn start_node(dir: &Path, ip: Ipv4Addr, exit: bool, ledger: SocketAddr) -> (Node, Option<MemoryInternet>) {
    std::fs::create_dir_all(dir).expect("node dir");
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    keys.save(dir, false).expect("keys");
    keys::save_onion_keys(dir, &OnionKeys::generate(&mut rand::rngs::OsRng, unix_now())).expect("onion keys");
    let addr = SocketAddr::from((ip, free_port(ip)));
    let role = if exit { "exit" } else { "relay" };
    let text = hopwire_node_runtime::config::template(Some(addr))
        .replace("listen = \"0.0.0.0:4433\"\n", &format!("listen = \"{addr}\"\n"))
        .replace("roles = [\"relay\", \"exit\"]", &format!("roles = [\"{role}\"]"))
        .replace("region = \"ZZ\"", "region = \"DE\"")
        .replace("dns_upstream = []", "dns_upstream = [\"127.0.0.1:9\"]")
        .replace("price_per_gib = 0", &format!("price_per_gib = {PRICE}"))
        .replace("chunk_mib = 4", "chunk_mib = 1")
        .replace("grace_mib = 4", "grace_mib = 1")
        .replace("# ledger = \"203.0.113.9:7300\"", &format!("ledger = \"{ledger}\""));
    let text = text.replacen(
        "[dht]\n",
        &format!("[dht]\nlisten = \"{}\"\n", SocketAddr::from((ip, 0))),
        1,
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, strip_second_dht_listen(&text)).expect("node.toml");
    let loaded = NodeConfig::load(&path).expect("node.toml loads");
    let onion = keys::load_onion_keys(&loaded.key_dir, unix_now()).expect("onion keys");
    let record = own_record(&loaded, &keys, &onion, unix_now())
        .expect("record")
        .to_signed_string(&keys.identity);
    let runtime = NodeRuntime::new(loaded, keys);
    let (runtime, internet) = if exit {
        let (r, i) = runtime.with_memory_uplink();
        (r, Some(i))
    } else {
        (runtime, None)
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = runtime
            .run(async {
                let _ = stopped.await;
            })
            .await
        {
            panic!("node at {addr} failed: {e}");
        }
    });
    (
        Node {
            record,
            stop: Some(stop),
            task,
        },
        internet,
    )
}

/// The template has `listen` under [node] and under [dht]; the DHT's is
/// replaced by the line inserted right after `[dht]`.
fn strip_second_dht_listen(text: &str) -> String {
    let mut out = Vec::new();
    let mut in_dht = false;
    let mut dht_listen_seen = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_dht = line == "[dht]";
        }
        if in_dht && line.starts_with("listen = ") {
            if dht_listen_seen {
                continue;
            }
            dht_listen_seen = true;
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// An IPv4 UDP packet (header checksum set, UDP checksum 0 as IPv4 allows).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&53000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// The next state event, skipping the others.
async fn next_state(events: &mut broadcast::Receiver<Event>) -> TunnelState {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Ok(Event::State { state })) => return state,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no state event within {WAIT:?}"),
        }
    }
}

/// Sends `count` packets each way between the client and the internet and
/// checks every one arrives byte-exact.
async fn exchange(peer: &mut MemoryPeer, internet: &mut MemoryInternet, inner: Ipv4Addr, count: usize, tag: u8) {
    for i in 0..count {
        let payload: Vec<u8> = (0..1200).map(|j| (i as u8) ^ (j as u8) ^ tag).collect();
        let out = udp_packet(inner, INTERNET, &payload);
        peer.to_tunnel.send(out.clone()).await.expect("into the tunnel");
        let got = tokio::time::timeout(WAIT, internet.from_exit.recv())
            .await
            .expect("the exit let the packet out in time")
            .expect("the exit's uplink is open");
        assert_eq!(got, out, "packet {i} reached the internet byte-exact");
        let back = udp_packet(INTERNET, inner, &payload);
        internet.to_exit.send(back.clone()).await.expect("to the exit");
        let got = tokio::time::timeout(WAIT, peer.from_tunnel.recv())
            .await
            .expect("the reply came back in time")
            .expect("the tunnel is open");
        assert_eq!(got, back, "reply {i} reached the client byte-exact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_in_memory_survive_a_dead_middle_and_pay_every_hop() {
    let tmp = TempDir::new("3hop");
    // The ledger, with the client's account funded.
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let ledger = EmbeddedLedger::with_db(&db, "runtime-test", 60).expect("ledger");
    let state_dir = tmp.0.join("client");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let account = hopwire_client::wallet::load_or_create_key(&state_dir)
        .expect("wallet key")
        .verifying_key()
        .to_bytes();
    ledger.fund(account, 1_000_000_000).expect("fund");
    let ledger_addr = hopwire_node_runtime::ledger_service::listen("127.0.0.1:0".parse().expect("addr"), ledger)
        .await
        .expect("ledger listens");

    let mut nodes = Vec::new();
    for n in 1..=3u8 {
        let (node, _) = start_node(
            &tmp.0.join(format!("relay{n}")),
            Ipv4Addr::new(127, n, 0, 1),
            false,
            ledger_addr,
        )
        .await;
        nodes.push(node);
    }
    let (exit, internet) = start_node(&tmp.0.join("exit"), Ipv4Addr::new(127, 9, 0, 1), true, ledger_addr).await;
    let mut internet = internet.expect("the exit's pretend internet");
    nodes.push(exit);
    // Let every node bind before the client dials.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = Client::start(
        MemoryPlatform::default(),
        ClientConfig {
            state_dir,
            bootstrap: Vec::new(),
            ledger: Some(ledger_addr),
            deposit_mib: 64,
        },
    )
    .expect("the runtime starts");
    let mut events = client.subscribe();
    let request = ConnectRequest {
        records: nodes.iter().map(|n| n.record.clone()).collect(),
        hops: 3,
        country: None,
        max_price: None,
    };
    let status = tokio::time::timeout(WAIT, client.connect(request))
        .await
        .expect("connect in time")
        .expect("connected");
    assert_eq!(status.state, State::Connected);
    assert_eq!(next_state(&mut events).await, TunnelState::Connecting);
    assert_eq!(next_state(&mut events).await, TunnelState::Connected);
    let inner = status.inner_addr.expect("an inner address");
    let first_circuit: Vec<String> = status.circuit.iter().map(|h| h.id.clone()).collect();
    assert_eq!(first_circuit.len(), 3);
    let guard_addr = status.circuit[0].addr;
    assert!(
        client.platform().protected().contains(&guard_addr),
        "the QUIC socket to the guard went through protect: {:?}",
        client.platform().protected()
    );
    let mut peer = client.platform().take_peer().expect("the interface is up");
    exchange(&mut peer, &mut internet, inner, 2000, 1).await;

    // The middle relay dies: the runtime rebuilds around it.
    let middle = nodes
        .iter_mut()
        .find(|n| {
            n.record
                .parse::<hopwire_proto::record::VerifiedRecord>()
                .is_ok_and(|r| r.short_id() == first_circuit[1])
        })
        .expect("the middle is one of ours");
    let _ = middle.stop.take().map(|s| s.send(()));
    match next_state(&mut events).await {
        TunnelState::Reconnecting { reason, attempt } => {
            assert!(attempt >= 1);
            assert!(!reason.is_empty());
        }
        other => panic!("expected reconnecting, got {other:?}"),
    }
    loop {
        match next_state(&mut events).await {
            TunnelState::Connected => break,
            TunnelState::Reconnecting { .. } => continue,
            other => panic!("expected connected again, got {other:?}"),
        }
    }
    let status = client.status();
    assert_eq!(
        status.inner_addr,
        Some(inner),
        "the same inner address after the rebuild"
    );
    assert_ne!(status.circuit[1].id, first_circuit[1], "a new middle");
    assert_eq!(status.circuit[0].id, first_circuit[0], "the guard kept");
    assert_eq!(status.circuit[2].id, first_circuit[2], "the exit kept");
    exchange(&mut peer, &mut internet, inner, 2000, 2).await;

    // Each hop of the current circuit was paid within one chunk of what it
    // carried (the client's own count, refreshed every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let quote = Quote {
        price_per_gib: PRICE,
        chunk_bytes: CHUNK,
        grace_bytes: CHUNK,
    };
    let status = client.status();
    assert_eq!(status.payments.len(), 3, "every hop charges: {:?}", status.payments);
    for hop in &status.payments {
        let owed = quote.price_of(hop.bytes).expect("price");
        let chunk = quote.price_of(CHUNK).expect("price");
        assert!(hop.bytes > CHUNK, "hop {} carried more than a chunk: {hop:?}", hop.id);
        assert!(
            hop.paid + chunk >= owed && hop.paid <= owed + chunk + quote.price_of(1 << 20).expect("price"),
            "hop {} paid {} for {} bytes (owed {owed}, chunk {chunk})",
            hop.id,
            hop.paid,
            hop.bytes
        );
    }

    let status = client.disconnect().await;
    assert_eq!(status.state, State::Disconnected);
    assert_eq!(next_state(&mut events).await, TunnelState::Disconnected);
    assert!(!client.platform().is_up(), "the interface was torn down");
    for n in &mut nodes {
        let _ = n.stop.take().map(|s| s.send(()));
    }
    for n in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(5), n.task).await;
    }
}
