//! 500-node Kademlia networks in one process, over libp2p's memory
//! transport, and what a client of them sees: every exit found through one
//! bootstrap peer; a record its owner updated seen with the new sequence
//! number; a node that stops republishing gone after the TTL; forgeries
//! that malicious peers (raw libp2p, Hopwire's protocol) serve under honest
//! nodes' keys refused, and still exactly the honest records found.
//!
//! The memory transport is process-global: a network takes its own range
//! of ports, so tests can run in parallel in one process.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use hopwire_net::dht::{self, Dht, DhtConfig, Found, Search, Transport};
use hopwire_proto::record::{NodeRecord, Role, RECORD_TTL};
use libp2p::futures::StreamExt;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{self, ProviderRecord, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, identity, Multiaddr, PeerId};

/// Nodes of the simulated network: `HOPWIRE_DHT_SIM_NODES`, default 500.
fn nodes_count() -> usize {
    std::env::var("HOPWIRE_DHT_SIM_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
}
/// Every 25th node is an exit.
const EXIT_EVERY: usize = 25;
/// How long a client's query may run here: 500 nodes share two cores (and,
/// under `cargo nextest`, the cores with other tests), so a lookup a real
/// network answers in well under the deployed 10 s can take longer. The
/// nodes keep the deployed timeout: their own queries (the refresh at
/// start, publications) would otherwise keep the network busy for longer.
const SIM_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Where honest records say their QUIC endpoint is; forgeries say otherwise.
const HONEST_QUIC: &str = "198.18.1.2:4433";

fn now() -> u64 {
    hopwire_proto::time::unix_now()
}

/// A deterministic identity: `net` tells networks apart, `i` nodes.
fn identity_key(net: u8, i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[0] = net;
    seed[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn peer_of(key: &SigningKey) -> PeerId {
    dht::peer_id(&key.verifying_key().to_bytes()).expect("ed25519 key is a peer id")
}

fn memory_addr(port: u64) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(port))
}

fn node_record(key: &SigningKey, roles: &[Role], region: &str, seq: u64, ttl: u64) -> NodeRecord {
    let t = now();
    NodeRecord {
        onion_key: [seq as u8; 32],
        onion_key_expires: t + 3600,
        seq,
        expires_at: t + ttl,
        ..hopwire_proto::testkit::record(key, HONEST_QUIC, roles, region, t)
    }
}

struct Node {
    exit: bool,
    key: SigningKey,
    addr: Multiaddr,
    dht: Dht,
}

impl Node {
    fn dht(&self) -> &Dht {
        &self.dht
    }

    fn identity(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

/// Requests all nodes have answered.
fn answered(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| n.dht().counters.inbound_requests.load(Ordering::Relaxed))
        .sum()
}

/// Waits until the nodes answer fewer than `n / 20` requests a second.
async fn quiesce(nodes: &[Node], what: &str) {
    let started = Instant::now();
    let mut last = answered(nodes);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = answered(nodes);
        if now - last < (nodes.len() as u64 / 20).max(1) {
            eprintln!("{what}: quiet after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{what}: still {} requests a second after 300 s",
            now - last
        );
        last = now;
    }
}

/// Starts `n` DHT servers listening on `base..base + n`, with the routing
/// tables of a converged network ([`dht::converged_tables`]) and records
/// living `record_ttl`, and waits until they are quiet (libp2p-kad
/// refreshes every table once at start). Joining 500 nodes one by one
/// through bootstrap peers is what the testnet does for real; here it would
/// take minutes of the two cores for nothing the tests check.
async fn network(net: u8, base: u64, n: usize, record_ttl: Duration) -> Vec<Node> {
    let keys: Vec<SigningKey> = (0..n).map(|i| identity_key(net, i)).collect();
    let peers: Vec<PeerId> = keys.iter().map(peer_of).collect();
    let addrs: Vec<Multiaddr> = (0..n)
        .map(|i| memory_addr(base + i as u64).with(Protocol::P2p(peers[i])))
        .collect();
    let tables = dht::converged_tables(&peers);
    let nodes: Vec<Node> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let mut config = DhtConfig::new(Transport::Memory, true);
            config.listen = vec![memory_addr(base + i as u64)];
            config.known_peers = tables[i].iter().map(|&j| addrs[j].clone()).collect();
            config.record_ttl = record_ttl;
            config.refresh = None;
            let dht = Dht::spawn(dht::keypair(&key), config).expect("DHT node starts");
            Node {
                exit: i % EXIT_EVERY == 1,
                key,
                addr: addrs[i].clone(),
                dht,
            }
        })
        .collect();
    quiesce(&nodes, &format!("{n}-node network")).await;
    nodes
}

/// The exits: every 25th node, 20 in all.
fn exits(nodes: &[Node]) -> impl Iterator<Item = &Node> {
    nodes.iter().filter(|n| n.exit)
}

/// Publishes the exits' records (valid for `RECORD_TTL`) under
/// the exit role key and region `DE`. Relays publish nothing here: their
/// announcements are not what these tests check, and would only add load.
async fn publish_exits<'a>(exits: impl Iterator<Item = &'a Node>, seq: u64) {
    for node in exits {
        publish(node, "DE", seq).await;
    }
}

/// Publishes the records of `nodes` (sequence `seq`, region `region`) until
/// peers took a whole round of them; returns that round's records. A round
/// in which a publication failed (a query timed out on these busy cores) is
/// published again at once, whole and with the next sequence number, so no
/// record is older than the round: in test c records live 20 s, and a node
/// retries a failed publication only 20 s later. At most 300 s.
async fn publish_taken(nodes: &[&Node], region: &str, mut seq: u64) -> Vec<NodeRecord> {
    let started = Instant::now();
    loop {
        let before: Vec<(u64, u64)> = nodes.iter().map(|n| (publications(n), failures(n))).collect();
        let mut records = Vec::new();
        for node in nodes {
            records.push(publish(node, region, seq).await);
        }
        // Each publication ends taken (true) or failed (false).
        let taken = loop {
            let ended: Option<Vec<bool>> = nodes
                .iter()
                .zip(&before)
                .map(
                    |(n, &(taken, failed))| match (publications(n) > taken, failures(n) > failed) {
                        (true, _) => Some(true),
                        (false, true) => Some(false),
                        (false, false) => None,
                    },
                )
                .collect();
            if let Some(ended) = ended {
                break ended;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "publications still under way after 300 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let failed = taken.iter().filter(|t| !**t).count();
        if failed == 0 {
            eprintln!("publications taken after {:?} (sequence {seq})", started.elapsed());
            return records;
        }
        eprintln!("{failed} publications failed; publishing them all again");
        seq += 1;
    }
}

fn publications(node: &Node) -> u64 {
    node.dht().counters.publications.load(Ordering::Relaxed)
}

fn failures(node: &Node) -> u64 {
    node.dht().counters.publish_failures.load(Ordering::Relaxed)
}

async fn publish(node: &Node, region: &str, seq: u64) -> NodeRecord {
    let record = node_record(&node.key, &[Role::Exit], region, seq, RECORD_TTL);
    node.dht()
        .publish(
            record.to_signed_bytes(&node.key),
            dht::provider_keys(&node.dht().local_peer, &[Role::Exit], region),
        )
        .await
        .expect("publish");
    record
}

/// A client that knows one bootstrap peer (and possibly `extra` peers).
fn client(seed: u8, bootstrap: &Node, extra: &[Multiaddr]) -> Dht {
    let mut config = DhtConfig::new(Transport::Memory, false);
    config.query_timeout = SIM_QUERY_TIMEOUT;
    config.bootstrap = std::iter::once(bootstrap.addr.clone())
        .chain(extra.iter().cloned())
        .collect();
    Dht::spawn(dht::keypair(&SigningKey::from_bytes(&[seed; 32])), config).expect("client starts")
}

fn short(id: &[u8; 32]) -> String {
    hopwire_proto::record::short_id(id)
}

/// The identities of what a lookup found, sorted, in short form.
fn found_ids(found: &[Found]) -> Vec<String> {
    let mut ids: Vec<String> = found.iter().map(|f| short(&f.record.record().identity)).collect();
    ids.sort_unstable();
    ids
}

fn ids_of<'a>(nodes: impl Iterator<Item = &'a Node>) -> Vec<String> {
    let mut ids: Vec<String> = nodes.map(|n| short(&n.identity())).collect();
    ids.sort_unstable();
    ids
}

/// One 500-node network, checked in order: (a) every exit found through
/// one bootstrap peer; (b) an updated record seen with its new sequence;
/// (d) forgeries served by malicious peers refused, and still exactly the
/// honest records found.
///
/// One network for all three: starting 500 nodes is most of the run time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_nodes() {
    let n = nodes_count();
    let nodes = network(1, 100_000, n, Duration::from_secs(RECORD_TTL)).await;
    let first = publish_taken(&exits(&nodes).collect::<Vec<_>>(), "DE", 1).await[0].seq;
    quiesce(&nodes, "publishing").await;
    let honest_exits = ids_of(exits(&nodes));

    // a. A client that knows one bootstrap peer finds every exit.
    let alice = client(201, &nodes[n / 2], &[]);
    let (found, stats) = alice
        .find(dht::role_key(Role::Exit), Search::All)
        .await
        .expect("lookup");
    eprintln!("a: {} exits found ({stats:?})", found.len());
    assert_eq!(
        found_ids(&found),
        honest_exits,
        "every one of the {} exits found, each once ({stats:?})",
        honest_exits.len()
    );

    //    A lookup that stops once answers repeat (what `connect` uses)
    //    finds honest exits only.
    let quick = client(204, &nodes[n / 3], &[]);
    let (some, quick_stats) = quick
        .find(dht::role_key(Role::Exit), Search::Enough)
        .await
        .expect("lookup");
    eprintln!("a: {} exits found by a quick lookup ({quick_stats:?})", some.len());
    let some = found_ids(&some);
    assert!(
        !some.is_empty() && some.iter().all(|id| honest_exits.contains(id)),
        "{some:?} ({quick_stats:?})"
    );

    // b. An exit moves to France with a new onion key, under the next
    //    sequence number. A later lookup, by another client, sees that
    //    sequence under the role key and finds it under its new region.
    let mover = exits(&nodes).nth(3).expect("exit");
    let moved = publish_taken(&[mover], "FR", first + 1).await.remove(0);
    quiesce(&nodes, "republishing").await;
    let bob = client(202, &nodes[7], &[]);
    let (found, stats) = bob.find(dht::role_key(Role::Exit), Search::All).await.expect("lookup");
    eprintln!("b: {} exits found ({stats:?})", found.len());
    assert_eq!(found_ids(&found), honest_exits, "every exit still found ({stats:?})");
    let seen = found
        .iter()
        .map(|f| f.record.record())
        .find(|r| r.identity == mover.identity())
        .expect("the moved exit");
    assert_eq!(
        (seen.seq, seen.region.as_str(), seen.onion_key),
        (moved.seq, "FR", moved.onion_key),
        "the updated record, not the old one"
    );
    let (in_fr, stats) = bob.find(dht::region_key("FR"), Search::All).await.expect("lookup");
    assert_eq!(
        found_ids(&in_fr),
        ids_of(std::iter::once(mover)),
        "the exit found under its new region ({stats:?})"
    );

    // d. Malicious peers join, each serving forgeries for every exit's key:
    //    the exit's identity signed by the attacker; the attacker's own
    //    (valid) record stored under the exit's key; or the attacker's
    //    record, under its own key, given in answer to a lookup of the
    //    exit's. A client that also knows the liars finds exactly the honest
    //    records, and counts the forgeries it refused.
    let victims: Vec<&Node> = exits(&nodes).collect();
    let mut liars = Vec::new();
    for j in 0..12 {
        let forgery = [Forgery::BadSignature, Forgery::WrongKey, Forgery::SwappedKey][j % 3];
        let contacts: Vec<Multiaddr> = (0..20).map(|k| nodes[(j * 37 + k * 23) % n].addr.clone()).collect();
        liars.push(spawn_liar(300_000 + j as u64, j as u8, forgery, &victims, &contacts));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let carol = client(203, &nodes[11], &liars);
    let (found, stats) = carol
        .find(dht::role_key(Role::Exit), Search::All)
        .await
        .expect("lookup");
    let rejected = carol.counters.rejected();
    eprintln!("d: {} exits found, refused {rejected:?} ({stats:?})", found.len());
    assert_eq!(
        found_ids(&found),
        honest_exits,
        "exactly the honest exits, each once, despite forgeries (refused: {rejected:?})"
    );
    let honest_quic: SocketAddr = HONEST_QUIC.parse().expect("addr");
    for r in found.iter().map(|f| f.record.record()) {
        let seq = if r.identity == mover.identity() {
            moved.seq
        } else {
            first
        };
        assert_eq!(
            (r.quic_addr, r.seq),
            (honest_quic, seq),
            "a forged or stale record of {} returned as valid",
            short(&r.identity)
        );
    }
    // Whether the liars are asked before an honest peer answers depends on
    // the routing tables; what was refused is printed above.
}

/// (c) A node that stops republishing disappears after the TTL: a 500-node
/// network whose records and provider announcements live 20 s (signed
/// records valid for hours, so it is the DHT that forgets). Live exits
/// republish every 6 s (each time a fresh record); one exit stops. Before,
/// every exit is found; a TTL later, a fresh client finds every exit but
/// that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_disappears_after_ttl() {
    let ttl = Duration::from_secs(20);
    let n = nodes_count();
    let mut nodes = network(2, 200_000, n, ttl).await;
    let first = publish_taken(&exits(&nodes).collect::<Vec<_>>(), "DE", 1).await[0].seq;
    quiesce(&nodes, "publishing").await;
    let alice = client(211, &nodes[n / 3], &[]);
    let (found, stats) = alice
        .find(dht::role_key(Role::Exit), Search::All)
        .await
        .expect("lookup");
    assert_eq!(found_ids(&found), ids_of(exits(&nodes)), "every exit found ({stats:?})");

    let gone = nodes.remove(1 + 2 * EXIT_EVERY);
    let gone_id = short(&gone.identity());
    drop(gone);
    let stopped = Instant::now();
    let live = ids_of(exits(&nodes).filter(|e| short(&e.identity()) != gone_id));
    // Like a real node, each republish is a fresh record, a higher sequence.
    for seq in first + 1.. {
        if stopped.elapsed() > ttl + Duration::from_secs(4) {
            break;
        }
        publish_exits(exits(&nodes).filter(|e| short(&e.identity()) != gone_id), seq).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let bob = client(212, &nodes[n / 5], &[]);
    let (found, stats) = bob.find(dht::role_key(Role::Exit), Search::All).await.expect("lookup");
    assert_eq!(
        found_ids(&found),
        live,
        "the stopped exit {gone_id} forgotten after the TTL, every live one found ({stats:?})"
    );
}

#[derive(Clone, Copy, Debug)]
enum Forgery {
    /// The victim's identity with the attacker's address, signed by the
    /// attacker.
    BadSignature,
    /// The attacker's own (valid) record stored under the victim's key.
    WrongKey,
    /// The attacker's own record, under its own key, given in answer to a
    /// lookup of the victim's key.
    SwappedKey,
}

/// A record store that answers every lookup of a victim's key with a
/// forgery and ignores records others put into it.
struct ForgedStore {
    providers: MemoryStore,
    forged: HashMap<RecordKey, Record>,
}

impl RecordStore for ForgedStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.forged.get(k).map(Cow::Borrowed)
    }

    fn put(&mut self, _: Record) -> kad::store::Result<()> {
        Ok(())
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        self.providers.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> kad::store::Result<()> {
        self.providers.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.providers.remove_provider(k, p)
    }
}

#[derive(NetworkBehaviour)]
struct Liar {
    kad: kad::Behaviour<ForgedStore>,
    identify: identify::Behaviour,
}

/// The signed-record encoding (`SignedRecord { body, signature }` in
/// postcard), built by hand so that the signer can differ from the identity.
fn signed_by(record: &NodeRecord, signer: &SigningKey) -> Vec<u8> {
    let body = postcard::to_stdvec(record).expect("encode");
    let signature = signer.sign(&body).to_bytes().to_vec();
    postcard::to_stdvec(&(body, signature)).expect("encode")
}

/// Starts a malicious DHT server (raw libp2p, Hopwire's protocol) that
/// serves `forgery` for every victim, joins through `contacts`, and returns
/// its address.
fn spawn_liar(port: u64, n: u8, forgery: Forgery, victims: &[&Node], contacts: &[Multiaddr]) -> Multiaddr {
    let me = SigningKey::from_bytes(&[0xA0 + n; 32]);
    let local = peer_of(&me);
    let mut own = node_record(&me, &[Role::Exit], "DE", u64::MAX, 3600);
    own.quic_addr = "203.0.113.66:4433".parse().expect("addr");
    let own_bytes = signed_by(&own, &me);
    let forged = victims
        .iter()
        .map(|v| {
            let key = dht::node_key(&peer_of(&v.key));
            let record = match forgery {
                Forgery::BadSignature => {
                    let mut fake = own.clone();
                    fake.identity = v.identity();
                    Record::new(key.clone(), signed_by(&fake, &me))
                }
                Forgery::WrongKey => Record::new(key.clone(), own_bytes.clone()),
                Forgery::SwappedKey => Record::new(dht::node_key(&local), own_bytes.clone()),
            };
            (key, record)
        })
        .collect();
    let keypair = dht::keypair(&me);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            use libp2p::core::upgrade::Version;
            use libp2p::Transport as _;
            libp2p::core::transport::MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(libp2p::plaintext::Config::new(key))
                .multiplex(libp2p::yamux::Config::default())
        })
        .expect("transport")
        .with_behaviour(|key: &identity::Keypair| {
            let mut config = kad::Config::new(dht::KAD_PROTOCOL);
            config.set_record_filtering(kad::StoreInserts::Unfiltered);
            let store = ForgedStore {
                providers: MemoryStore::new(local),
                forged,
            };
            let mut kad = kad::Behaviour::with_config(local, store, config);
            kad.set_mode(Some(kad::Mode::Server));
            Liar {
                kad,
                identify: identify::Behaviour::new(identify::Config::new("/hopwire/id/1.0.0".into(), key.public())),
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on(memory_addr(port)).expect("listen");
    for addr in contacts {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            let _ = swarm.dial(addr.clone());
        }
    }
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(LiarEvent::Identify(identify::Event::Received { peer_id, info, .. })) =
                swarm.select_next_some().await
            {
                for addr in info.listen_addrs {
                    swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
        }
    });
    memory_addr(port).with(Protocol::P2p(local))
}
