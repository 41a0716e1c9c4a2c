//! The client runtime in one process, with no root and no namespaces: an
//! embedded ledger, three relays and an exit on loopback (each in its own
//! 127.N/16, so path selection accepts them as unrelated), the exit's
//! uplink and the client's interface on in-memory packet channels. Nothing
//! leaves loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hopwire_api::{Event, State, TunnelState};
use hopwire_client::platform::{MemoryPeer, MemoryPlatform};
use hopwire_client::runtime::{Client, ClientConfig, ConnectRequest};
use hopwire_net::keys::{self, NodeKeys};
use hopwire_net::ledger::EmbeddedLedger;
use hopwire_net::ledger::{LazyLedger, LedgerAccess, LedgerAddr};
use hopwire_node_runtime::config::NodeConfig;
use hopwire_node_runtime::exit::MemoryInternet;
use hopwire_node_runtime::{own_record, NodeRuntime, PaidOn};
use hopwire_proto::onion::keys::OnionKeys;
use hopwire_proto::pay::Quote;
use hopwire_proto::record::VerifiedRecord;
use hopwire_proto::time::unix_now;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The pretend internet host the client talks to.
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The longest any one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// Every node's price per GiB, and the chunk its clients prepay (the
/// default 4 MiB: with less, a busy machine can lag a receipt behind the
/// grace at loopback speeds and the node rightly drops a cell).
const PRICE: u64 = 1_000_000;
const CHUNK_MIB: u64 = 4;
const QUOTE: Quote = Quote {
    price_per_gib: PRICE,
    chunk_bytes: CHUNK_MIB << 20,
    grace_bytes: CHUNK_MIB << 20,
};
/// Packets each way per exchange: enough for every hop to carry more than
/// two chunks after the rebuild.
const PACKETS: usize = 4000;
/// The UDP port of the packets sent while the middle relay dies: the
/// exchanges skip them, as they may arrive at any time after the rebuild.
const FILLER_PORT: u16 = 9;

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

/// A free UDP port on `ip` for a node's QUIC listener (the record carries
/// it, so it cannot be 0). Each node has its own IP, so no two race for it.
fn free_port(ip: Ipv4Addr) -> u16 {
    let s = std::net::UdpSocket::bind((ip, 0)).expect("bind a free port");
    s.local_addr().expect("addr").port()
}

struct Node {
    record: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    fn short_id(&self) -> String {
        self.record
            .parse::<VerifiedRecord>()
            .expect("our own record verifies")
            .short_id()
    }
}

/// Configures and starts one node listening on `ip` (QUIC on a free port,
/// the DHT on port 0), charging [`QUOTE`] on `ledger`; an exit's uplink is
/// the returned pretend internet.
async fn start_node(dir: &Path, ip: Ipv4Addr, exit: bool, ledger: SocketAddr) -> (Node, Option<MemoryInternet>) {
    std::fs::create_dir_all(dir).expect("node dir");
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    keys.save(dir, false).expect("keys");
    keys::save_onion_keys(dir, &OnionKeys::generate(&mut rand::rngs::OsRng, unix_now())).expect("onion keys");
    let addr = SocketAddr::from((ip, free_port(ip)));
    let role = if exit { "exit" } else { "relay" };
    let text = format!(
        "[node]\nlisten = \"{addr}\"\nroles = [\"{role}\"]\nregion = \"DE\"\n\
         [dht]\nlisten = \"{ip}:0\"\n\
         [pay]\nprice_per_gib = {PRICE}\nchunk_mib = {CHUNK_MIB}\ngrace_mib = {CHUNK_MIB}\nledger = \"{ledger}\"\n"
    );
    let loaded = NodeConfig::parse(&dir.join("node.toml"), &text).expect("node.toml is valid");
    let onion = keys::load_onion_keys(&loaded.key_dir, unix_now()).expect("onion keys");
    let domain = LazyLedger::new(LedgerAddr::Service(ledger), LedgerAccess::default(), None)
        .call(|l| Ok(l.domain().to_owned()))
        .await
        .expect("the ledger's domain");
    let paid_on = PaidOn {
        domain,
        payout: keys.identity.verifying_key().to_bytes(),
    };
    let record = own_record(&loaded, &keys, &onion, Some(&paid_on), unix_now())
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
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = runtime.run(shutdown).await {
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

/// An embedded ledger served on loopback, and a client state directory
/// whose account it funded. The database lives as long as the first value.
async fn funded_ledger(tmp: &TempDir, domain: &str) -> (sled::Db, SocketAddr, PathBuf) {
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let ledger = EmbeddedLedger::with_db(&db, domain, 60).expect("ledger");
    let state_dir = tmp.0.join("client");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let account = hopwire_client::wallet::load_or_create_key(&state_dir)
        .expect("wallet key")
        .verifying_key()
        .to_bytes();
    ledger.fund(account, 1_000_000_000).expect("fund");
    let addr = hopwire_node_runtime::ledger_service::listen((Ipv4Addr::LOCALHOST, 0).into(), ledger)
        .await
        .expect("ledger listens");
    (db, addr, state_dir)
}

/// An IPv4 UDP packet (header checksum set, UDP checksum 0 as IPv4 allows).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
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
    p[22..24].copy_from_slice(&dst_port.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn is_filler(packet: &[u8]) -> bool {
    packet.len() >= 24 && packet[9] == 17 && packet[22..24] == FILLER_PORT.to_be_bytes()
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

async fn send(to: &mpsc::Sender<Vec<u8>>, packet: Vec<u8>, what: &str) {
    tokio::time::timeout(WAIT, to.send(packet))
        .await
        .unwrap_or_else(|_| panic!("{what}: no room within {WAIT:?}"))
        .unwrap_or_else(|_| panic!("{what}: closed"));
}

/// The next packet that is not a filler.
async fn recv(from: &mut mpsc::Receiver<Vec<u8>>, what: &str) -> Vec<u8> {
    loop {
        let packet = tokio::time::timeout(WAIT, from.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
            .unwrap_or_else(|| panic!("{what}: closed"));
        if !is_filler(&packet) {
            return packet;
        }
    }
}

/// Sends `count` packets each way between the client and the internet and
/// checks every one arrives byte-exact.
async fn exchange(peer: &mut MemoryPeer, internet: &mut MemoryInternet, inner: Ipv4Addr, count: usize, tag: u8) {
    for i in 0..count {
        let payload: Vec<u8> = (0..1200).map(|j| (i as u8) ^ (j as u8) ^ tag).collect();
        let out = udp_packet(inner, INTERNET, 53000, &payload);
        send(&peer.to_tunnel, out.clone(), "into the tunnel").await;
        let got = recv(
            &mut internet.from_exit,
            &format!("packet {i} (tag {tag}) out of the exit"),
        )
        .await;
        assert_eq!(got, out, "packet {i} (tag {tag}) reached the internet byte-exact");
        let back = udp_packet(INTERNET, inner, 40000, &payload);
        send(&internet.to_exit, back.clone(), "into the exit").await;
        let got = recv(
            &mut peer.from_tunnel,
            &format!("reply {i} (tag {tag}) out of the tunnel"),
        )
        .await;
        assert_eq!(got, back, "reply {i} (tag {tag}) reached the client byte-exact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_in_memory_survive_a_dead_middle_and_pay_every_hop() {
    let tmp = TempDir::new("3hop");
    let (_db, ledger_addr, state_dir) = funded_ledger(&tmp, "runtime-test").await;

    // Three relays (one spare for the rebuild) and the exit.
    let mut nodes = Vec::new();
    for n in 1..=3u8 {
        let dir = tmp.0.join(format!("relay{n}"));
        let (node, _) = start_node(&dir, Ipv4Addr::new(127, n, 0, 1), false, ledger_addr).await;
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
            ledger: Some(LedgerAddr::Service(ledger_addr)),
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
    assert_eq!(first_circuit.len(), 3, "a 3-hop circuit: {:?}", status.circuit);
    let exit_id = nodes[3].short_id();
    assert_eq!(first_circuit[2], exit_id, "the circuit ends at the exit");
    let guard_addr = status.circuit[0].addr;
    assert!(
        client.platform().protected().contains(&guard_addr),
        "the QUIC socket to the guard went through protect: {:?}",
        client.platform().protected()
    );
    let mut peer = client.platform().take_peer().expect("the interface is up");
    exchange(&mut peer, &mut internet, inner, PACKETS, 1).await;

    // The middle relay dies while the client keeps sending: the runtime
    // rebuilds around it, through the spare relay.
    let filler = {
        let to_tunnel = peer.to_tunnel.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let packet = udp_packet(inner, INTERNET, FILLER_PORT, &[0xf1; 200]);
            let mut sent = 0u64;
            loop {
                // The interface's queue may be full while the tunnel is down.
                if to_tunnel.try_send(packet.clone()).is_ok() {
                    sent += 1;
                }
                tokio::select! {
                    _ = &mut stopped => return sent,
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
            }
        });
        (stop, task)
    };
    let middle = nodes
        .iter_mut()
        .find(|n| n.short_id() == first_circuit[1])
        .expect("the middle is one of ours");
    let _ = middle.stop.take().map(|s| s.send(()));
    match next_state(&mut events).await {
        TunnelState::Reconnecting { reason, attempt } => {
            assert!(attempt >= 1, "attempt {attempt}");
            assert!(!reason.is_empty(), "a reason is given");
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
    assert_eq!(status.circuit.len(), 3, "3 hops again: {:?}", status.circuit);
    assert_ne!(status.circuit[1].id, first_circuit[1], "a new middle");
    assert_eq!(status.circuit[0].id, first_circuit[0], "the guard kept");
    assert_eq!(status.circuit[2].id, first_circuit[2], "the exit kept");
    let (stop, task) = filler;
    let _ = stop.send(());
    let sent = tokio::time::timeout(WAIT, task)
        .await
        .expect("the filler stops")
        .expect("the filler ran");
    assert!(sent > 0, "packets were sent while the middle was down");
    exchange(&mut peer, &mut internet, inner, PACKETS, 2).await;

    // Each hop of the current circuit was paid within what the client paid
    // it ahead (one chunk, or half a second of its traffic) and the 1 MiB
    // tolerance of what it carried (the client's own count, published
    // every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = client.status();
    assert_eq!(status.payments.len(), 3, "every hop charges: {:?}", status.payments);
    for hop in &status.payments {
        assert_eq!(hop.price_per_gib, PRICE, "hop {}: {hop:?}", hop.id);
        assert!(
            hop.bytes > 2 * QUOTE.chunk_bytes,
            "hop {} carried more than two chunks: {hop:?}",
            hop.id
        );
        let owed = QUOTE.price_of(hop.bytes).expect("price");
        let slack = QUOTE
            .price_of(hop.ahead.max(QUOTE.chunk_bytes) + (1 << 20))
            .expect("price");
        eprintln!(
            "hop {}: carried {} bytes, owes {owed}, paid {} ({} bytes ahead)",
            hop.id, hop.bytes, hop.paid, hop.ahead
        );
        assert!(
            hop.paid.abs_diff(owed) <= slack,
            "hop {} paid {} for {} bytes: owed {owed}, more than what was paid ahead ({slack}) apart",
            hop.id,
            hop.paid,
            hop.bytes
        );
    }

    let status = tokio::time::timeout(WAIT, client.disconnect())
        .await
        .expect("disconnect in time");
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

/// Sends `count` packets out through the tunnel one at a time, each until
/// the internet has it (a packet sent while a circuit is rebuilt may be
/// lost, as on any network); returns how many had to be sent again.
async fn deliver_all(peer: &mut MemoryPeer, internet: &mut MemoryInternet, inner: Ipv4Addr, count: usize) -> usize {
    let mut resent = 0;
    for i in 0..count {
        let payload: Vec<u8> = (0..1200).map(|j| (i as u8) ^ (j as u8)).collect();
        let out = udp_packet(inner, INTERNET, 53001, &payload);
        let mut tries = 0;
        loop {
            send(&peer.to_tunnel, out.clone(), "into the tunnel").await;
            match tokio::time::timeout(Duration::from_secs(2), internet.from_exit.recv()).await {
                Ok(Some(got)) if got == out => break,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the exit's uplink closed"),
                Err(_) => {
                    tries += 1;
                    resent += 1;
                    assert!(tries < 10, "packet {i} never reached the internet");
                }
            }
        }
    }
    resent
}

/// Deposits of two chunks, and about 14 MiB through the exit: the channel
/// is topped up on the ledger while the circuit pays through it, so the
/// same circuit carries it all and pays past its first deposit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_running_low_is_topped_up_and_the_circuit_carries_on() {
    let tmp = TempDir::new("topup");
    let (_db, ledger_addr, state_dir) = funded_ledger(&tmp, "runtime-topup").await;
    let (exit, internet) = start_node(&tmp.0.join("exit"), Ipv4Addr::new(127, 9, 0, 1), true, ledger_addr).await;
    let mut internet = internet.expect("the exit's pretend internet");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = Client::start(
        MemoryPlatform::default(),
        ClientConfig {
            state_dir,
            bootstrap: Vec::new(),
            ledger: Some(LedgerAddr::Service(ledger_addr)),
            deposit_mib: 2 * CHUNK_MIB,
        },
    )
    .expect("the runtime starts");
    let mut events = client.subscribe();
    let request = ConnectRequest {
        records: vec![exit.record.clone()],
        hops: 1,
        country: None,
        max_price: None,
    };
    let status = tokio::time::timeout(WAIT, client.connect(request))
        .await
        .expect("connect in time")
        .expect("connected");
    let inner = status.inner_addr.expect("an inner address");
    assert_eq!(next_state(&mut events).await, TunnelState::Connecting);
    assert_eq!(next_state(&mut events).await, TunnelState::Connected);
    let mut peer = client.platform().take_peer().expect("the interface is up");
    let first_deposit = QUOTE.price_of((2 * CHUNK_MIB) << 20).expect("price");

    let resent = deliver_all(&mut peer, &mut internet, inner, 12_000).await;
    eprintln!("packets sent again: {resent}");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, Event::State { .. }),
            "the circuit stayed up throughout: {event:?}"
        );
    }
    // Status samples what the hops confirmed about once a second.
    let deadline = tokio::time::Instant::now() + WAIT;
    let paid = loop {
        let status = client.status();
        assert_eq!(status.state, State::Connected);
        let paid = status.payments.first().map_or(0, |p| p.paid);
        if paid > first_deposit {
            break paid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the circuit paid {paid}, not past its first deposit of {first_deposit}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // One channel to the exit, open, topped up, never signed past.
    let wallet = tokio::time::timeout(WAIT, client.wallet(false))
        .await
        .expect("the wallet in time")
        .expect("the wallet");
    let to_exit: Vec<_> = wallet.channels.iter().filter(|c| c.payee == exit.short_id()).collect();
    assert_eq!(to_exit.len(), 1, "one channel carried the session: {to_exit:?}");
    let c = to_exit[0];
    assert!(c.close_at.is_none(), "{c:?}");
    assert!(c.deposit >= 2 * first_deposit, "topped up: {c:?}");
    assert!(c.signed <= c.deposit, "never signed past the deposit: {c:?}");
    assert!(c.signed >= paid, "{c:?}");

    let _ = tokio::time::timeout(WAIT, client.disconnect()).await;
    let mut exit = exit;
    let _ = exit.stop.take().map(|s| s.send(()));
    let _ = tokio::time::timeout(Duration::from_secs(5), exit.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_while_a_connect_finds_nodes_wins_and_nothing_is_built() {
    let tmp = TempDir::new("giveway");
    // A DHT peer that accepts connections and never answers: finding nodes
    // through it takes until the lookup's timeout.
    let silent = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
        .parse()
        .expect("a multiaddr");
    let client = Client::start(
        MemoryPlatform::default(),
        ClientConfig {
            state_dir: tmp.0.join("client"),
            bootstrap: vec![bootstrap],
            ledger: None,
            deposit_mib: 64,
        },
    )
    .expect("the runtime starts");
    let mut events = client.subscribe();
    let connecting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .connect(ConnectRequest {
                    hops: 3,
                    ..ConnectRequest::default()
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!connecting.is_finished(), "the connect is still finding nodes");
    let status = tokio::time::timeout(WAIT, client.disconnect())
        .await
        .expect("disconnect in time");
    assert_eq!(status.state, State::Disconnected);
    let answer = tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .expect("the connect gave way at once")
        .expect("the connect task ran")
        .expect("giving way is not an error");
    assert_eq!(answer.state, State::Disconnected, "{answer:?}");
    // Nothing was set up, and the only state event is the disconnect's.
    assert!(client.platform().configs().is_empty(), "no interface was asked for");
    assert_eq!(next_state(&mut events).await, TunnelState::Disconnected);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !matches!(events.try_recv(), Ok(Event::State { .. })),
        "no state after the disconnect"
    );
    assert_eq!(client.status().state, State::Disconnected);
}
