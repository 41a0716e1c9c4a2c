//! Discovery: a Kademlia DHT (libp2p-kad) of signed node records.
//!
//! Every node and every client daemon runs one libp2p swarm (kad, identify,
//! ping). A node stores its signed record under a key derived from its peer
//! id ([`node_key`]) and announces itself as a provider under role keys
//! (`/hopwire/role/exit`, `/hopwire/role/relay`) and, for exits, a region
//! key (`/hopwire/exit/DE`). A client looks up providers, fetches their
//! records, and keeps only those that verify: right signer, right key, not
//! expired, not from the future, onion key valid; among several versions of
//! one node's record the highest sequence number wins. Nothing a single peer
//! says is trusted: providers are gathered from many peers over disjoint
//! paths, and every record is checked by its own signature.
//!
//! Defences: nodes store only records that verify and are newer than what
//! they hold; at most [`MAX_PER_SUBNET`] peers of one IPv4 /24 (or IPv6 /48)
//! enter one routing-table bucket. Peers learned are kept in sled, so a
//! restart does not depend on the bootstrap nodes.
//!
//! The swarm runs in its own task; [`Dht`] is a handle that sends it
//! commands. The node's identity key is its libp2p key, so its peer id is
//! derived from the identity in its record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Quorum, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, identity, noise, ping, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::protect::{Protect, ProtectedTcp};
use hopwire_proto::record::{Role, VerifiedRecord};

/// The Kademlia protocol of Hopwire's DHT (not the public IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hopwire/kad/1.0.0");
const IDENTIFY_PROTOCOL: &str = "/hopwire/id/1.0.0";
/// Peers of one IPv4 /24 (or IPv6 /48) one routing-table bucket takes.
pub const MAX_PER_SUBNET: usize = 2;
/// How long a query (of a lookup, of a publication) may take before it
/// ends with what it has: [`DhtConfig::query_timeout`]'s default.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a failed publication is tried again.
const PUBLISH_RETRY: Duration = Duration::from_secs(20);
/// How long a shutdown waits for peers to see their connections closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Largest DHT message: provider lists of popular keys are long.
const MAX_PACKET: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("DHT transport: {0}")]
    Transport(String),
    #[error("DHT listen address {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("DHT peer store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the DHT task has stopped")]
    Stopped,
}

/// Under which key a node's record is stored.
pub fn node_key(peer: &PeerId) -> RecordKey {
    let mut key = b"/hopwire/node/".to_vec();
    key.extend_from_slice(&peer.to_bytes());
    RecordKey::new(&key)
}

/// Provider keys are split in this many shards, a provider announcing
/// itself under one (chosen by its peer id). A peer answers a provider
/// lookup with at most K (20) providers of a key, so an unsharded key would
/// show a client only 20-odd of its providers however many there are;
/// with 8 shards every one of up to ~80 providers is found, and beyond
/// that about 20 per shard.
pub const PROVIDER_SHARDS: u8 = 8;

/// How far a lookup looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Every shard query asks the K closest peers of its key: every
    /// provider they know (`hopwire nodes`).
    All,
    /// Every shard query ends once answers only repeat what is known: the
    /// many providers a path is chosen from, in a fraction of the requests
    /// (`hopwire connect`).
    Enough,
}

/// With [`Search::Enough`], a provider query ends once this many peers'
/// answers in a row brought no provider not already known (after at least
/// [`PROVIDER_ANSWERS`]).
/// The peers near a key hold the same announcements (each was sent to the
/// K closest), so once answers only repeat each other, the walk on to every
/// one of the K closest would cost most of a lookup's requests for nothing.
const REPEATED_ANSWERS: u32 = 2;

/// Answers with providers a provider query waits for at least: no single
/// peer decides who exists.
const PROVIDER_ANSWERS: u32 = 3;

/// Distinct provider keys a node stores announcements for (libp2p-kad's
/// `max_provided_keys` bounds every key in the store, not only the node's
/// own): the shards of two roles and of every region, with room to spare.
const MAX_PROVIDER_KEYS: usize = 4096;

/// The provider key of a role (all its shards are looked up).
pub fn role_key(role: Role) -> RecordKey {
    RecordKey::new(&format!("/hopwire/role/{role}"))
}

/// The provider key of the exits of one region (all shards looked up).
pub fn region_key(region: &str) -> RecordKey {
    RecordKey::new(&format!("/hopwire/exit/{}", region.to_ascii_uppercase()))
}

/// The shards of a provider key: what a lookup of it asks for.
fn shards(key: &RecordKey) -> impl Iterator<Item = RecordKey> + '_ {
    (0..PROVIDER_SHARDS).map(move |s| shard(key, s))
}

fn shard(key: &RecordKey, shard: u8) -> RecordKey {
    let mut bytes = key.to_vec();
    bytes.extend_from_slice(format!("/{shard}").as_bytes());
    RecordKey::new(&bytes)
}

/// The provider keys `peer` announces itself under: for each role its
/// shard of the role key, and for an exit its shard of the region key.
pub fn provider_keys(peer: &PeerId, roles: &[Role], region: &str) -> Vec<RecordKey> {
    let own = kad::KBucketKey::from(*peer).hashed_bytes()[0] % PROVIDER_SHARDS;
    let mut keys: Vec<RecordKey> = roles.iter().map(|r| shard(&role_key(*r), own)).collect();
    if roles.contains(&Role::Exit) {
        keys.push(shard(&region_key(region), own));
    }
    keys
}

/// The routing tables of a converged network, for simulations: for each
/// peer, the indices of the [`kad::K_VALUE`] closest other peers in each of
/// its buckets (distance classes) — what a table holds once the network has
/// run for a while. A simulation of thousands of nodes in one process can
/// then measure lookups without first paying every node's join.
pub fn converged_tables(peers: &[PeerId]) -> Vec<Vec<usize>> {
    let keys: Vec<kad::KBucketKey<PeerId>> = peers.iter().map(|p| kad::KBucketKey::from(*p)).collect();
    keys.iter()
        .map(|me| {
            let mut buckets: BTreeMap<u32, Vec<(kad::KBucketDistance, usize)>> = BTreeMap::new();
            for (j, other) in keys.iter().enumerate() {
                let distance = me.distance(other);
                if let Some(bucket) = distance.ilog2() {
                    buckets.entry(bucket).or_default().push((distance, j));
                }
            }
            buckets
                .into_values()
                .flat_map(|mut bucket| {
                    bucket.sort_unstable();
                    bucket.into_iter().take(kad::K_VALUE.get()).map(|(_, j)| j)
                })
                .collect()
        })
        .collect()
}

/// The libp2p keypair of a node identity (the same ed25519 key).
pub fn keypair(identity: &ed25519_dalek::SigningKey) -> identity::Keypair {
    let mut secret = identity.to_bytes();
    identity::Keypair::ed25519_from_bytes(&mut secret).unwrap_or_else(|_| unreachable!("32 bytes is an ed25519 secret"))
}

/// The peer id of a node identity.
pub fn peer_id(identity: &[u8; 32]) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(identity).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// How the swarm reaches other peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with Noise and yamux: the real network.
    Tcp,
    /// libp2p's in-process memory transport, for simulations.
    Memory,
}

#[derive(Debug, Clone)]
pub struct DhtConfig {
    pub transport: Transport,
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, with their `/p2p/` peer id.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers to put in the routing table without dialing them, as a
    /// restart restores them from the peer store (`/p2p/` addresses).
    /// Simulations hand nodes [`converged_tables`] this way.
    pub known_peers: Vec<Multiaddr>,
    /// Answer other peers' queries (nodes) or only ask (clients).
    pub server: bool,
    /// Where learned peers are kept across restarts.
    pub peer_store: Option<PathBuf>,
    /// How long stored records and provider announcements live.
    pub record_ttl: Duration,
    /// How often the routing table is refreshed by lookups (libp2p-kad's
    /// periodic bootstrap); `None` for simulations, where every node's
    /// refresh lands on the same few cores.
    pub refresh: Option<Duration>,
    /// How long one query may run ([`LOOKUP_TIMEOUT`]); simulations of
    /// hundreds of nodes sharing two cores give their queries longer.
    pub query_timeout: Duration,
    /// With TCP: every connection's socket passes through this hook before
    /// it connects, and the DHT listens nowhere (a client's DHT).
    pub protect: Option<Protect>,
}

impl DhtConfig {
    pub fn new(transport: Transport, server: bool) -> Self {
        Self {
            transport,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            known_peers: Vec::new(),
            server,
            peer_store: None,
            record_ttl: Duration::from_secs(hopwire_proto::record::RECORD_TTL),
            refresh: Some(Duration::from_secs(300)),
            query_timeout: LOOKUP_TIMEOUT,
            protect: None,
        }
    }
}

/// A node record found in the DHT.
#[derive(Debug, Clone)]
pub struct Found {
    pub record: VerifiedRecord,
    /// Round trip to the node over the DHT's connection, if measured.
    pub rtt: Option<Duration>,
}

/// What one lookup cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct LookupStats {
    /// Requests sent to other peers: the provider query's, then the record
    /// queries'.
    pub requests: u32,
    /// Requests of the provider query alone.
    pub provider_requests: u32,
    /// Providers the provider query returned (records fetched for each).
    pub providers: u32,
    /// Until the provider query ended.
    pub provider_duration: Duration,
    pub duration: Duration,
}

/// What the DHT has seen, for metrics and tests.
#[derive(Debug, Default)]
pub struct DhtCounters {
    /// Records refused, by reason.
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub stored: AtomicU64,
    pub routing_peers: AtomicUsize,
    /// Open connections to other peers.
    pub connections: AtomicUsize,
    /// Requests other peers sent us.
    pub inbound_requests: AtomicU64,
    /// Publications (record or provider announcement) that timed out.
    pub publish_failures: AtomicU64,
    /// Publications done: the record and every announcement of one
    /// [`Dht::publish`] (or of its retry after a failure) taken by peers.
    pub publications: AtomicU64,
    /// Joins (a lookup of our own id and a refresh of every bucket) done.
    pub joins: AtomicU64,
    pub subnet_refused: AtomicU64,
}

impl DhtCounters {
    fn reject(&self, reason: &'static str) {
        *hopwire_proto::sync::lock(&self.rejected).entry(reason).or_default() += 1;
    }

    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        hopwire_proto::sync::lock(&self.rejected).clone()
    }
}

enum Command {
    Publish {
        record: Vec<u8>,
        provide: Vec<RecordKey>,
    },
    Find {
        key: RecordKey,
        search: Search,
        reply: oneshot::Sender<(Vec<Found>, LookupStats)>,
    },
    Addresses {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A handle on the DHT task.
#[derive(Clone)]
pub struct Dht {
    commands: mpsc::Sender<Command>,
    pub local_peer: PeerId,
    pub counters: Arc<DhtCounters>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("local_peer", &self.local_peer)
            .finish_non_exhaustive()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    /// Round trips to connected peers, on the real network only: in a
    /// simulation they mean nothing and cost every node a timer per
    /// connection.
    ping: Toggle<ping::Behaviour>,
}

impl Dht {
    /// Starts the swarm task. Must be called inside a tokio runtime.
    pub fn spawn(keypair: identity::Keypair, config: DhtConfig) -> Result<Self, DhtError> {
        let local_peer = keypair.public().to_peer_id();
        let mut swarm = build_swarm(keypair, &config)?;
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| DhtError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        }
        let peers = match &config.peer_store {
            Some(path) => Some(
                crate::store::open_db(path)
                    .and_then(|db| db.open_tree("peers"))
                    .map_err(|source| DhtError::Store {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let counters = Arc::new(DhtCounters::default());
        let (tx, rx) = mpsc::channel(64);
        let mut task = Task {
            swarm,
            peers,
            counters: counters.clone(),
            lookups: HashMap::new(),
            provider_queries: HashMap::new(),
            record_queries: HashMap::new(),
            rtts: HashMap::new(),
            record_ttl: config.record_ttl,
            next_lookup: 0,
            published: None,
            publication: HashSet::new(),
            retry_publish: None,
        };
        let restored = task.restore_peers();
        for addr in &config.known_peers {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                task.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
        }
        for addr in &config.bootstrap {
            task.add_bootstrap(addr.clone());
        }
        // Join (a lookup of our own id, then one per bucket) when there is
        // someone to join through; peers handed over as known are trusted
        // to be a converged table already.
        if !config.bootstrap.is_empty() || restored > 0 {
            let _ = task.swarm.behaviour_mut().kad.bootstrap();
        }
        tokio::spawn(task.run(rx));
        Ok(Self {
            commands: tx,
            local_peer,
            counters,
        })
    }

    /// Stores this node's signed record and announces it under `provide`.
    /// Call again to republish (with a fresh record).
    pub async fn publish(&self, record: Vec<u8>, provide: Vec<RecordKey>) -> Result<(), DhtError> {
        self.commands
            .send(Command::Publish { record, provide })
            .await
            .map_err(|_| DhtError::Stopped)
    }

    /// The records of every node that provides `key`, verified.
    pub async fn find(&self, key: RecordKey, search: Search) -> Result<(Vec<Found>, LookupStats), DhtError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Find { key, search, reply })
            .await
            .map_err(|_| DhtError::Stopped)?;
        answer.await.map_err(|_| DhtError::Stopped)
    }

    /// Where the swarm listens (with its `/p2p/` id appended).
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, DhtError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Addresses { reply })
            .await
            .map_err(|_| DhtError::Stopped)?;
        answer.await.map_err(|_| DhtError::Stopped)
    }

    /// Closes every connection and stops the task; returns once the
    /// swarm, its sockets and its peer store are gone (or after
    /// [`SHUTDOWN_GRACE`], when peers do not answer the close). Lookups
    /// through other handles of this DHT fail with [`DhtError::Stopped`].
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

fn build_swarm(keypair: identity::Keypair, config: &DhtConfig) -> Result<Swarm<Behaviour>, DhtError> {
    let local_peer = keypair.public().to_peer_id();
    let behaviour = |key: &identity::Keypair| {
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_record_ttl(Some(config.record_ttl))
            .set_provider_record_ttl(Some(config.record_ttl))
            .set_provider_publication_interval(Some(config.record_ttl / 3))
            .set_publication_interval(None)
            .set_replication_interval(None)
            .disjoint_query_paths(true)
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_kbucket_inserts(kad::BucketInserts::Manual)
            .set_max_packet_size(MAX_PACKET)
            .set_query_timeout(config.query_timeout)
            .set_periodic_bootstrap_interval(config.refresh);
        let store = MemoryStore::with_config(
            local_peer,
            MemoryStoreConfig {
                max_records: 100_000,
                max_value_bytes: hopwire_proto::record::MAX_RECORD_LEN,
                max_providers_per_key: 100_000,
                max_provided_keys: MAX_PROVIDER_KEYS,
            },
        );
        let mut kad = kad::Behaviour::with_config(local_peer, store, kad_config);
        kad.set_mode(Some(if config.server {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));
        Behaviour {
            kad,
            identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())),
            ping: Toggle::from((config.transport == Transport::Tcp).then(ping::Behaviour::default)),
        }
    };
    let swarm_config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    let transport_error = |e: &dyn std::fmt::Display| DhtError::Transport(e.to_string());
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match (config.transport, &config.protect) {
        (Transport::Tcp, Some(protect)) => builder
            .with_other_transport(|key| {
                use libp2p::core::upgrade::Version;
                use libp2p::Transport as _;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    ProtectedTcp::new(protect.clone())
                        .upgrade(Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()),
                )
            })
            .map_err(|e| transport_error(&e))?
            .with_behaviour(|key| behaviour(key))
            .map_err(|e| transport_error(&e))?
            .with_swarm_config(swarm_config)
            .build(),
        (Transport::Tcp, None) => builder
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport_error(&e))?
            .with_behaviour(|key| behaviour(key))
            .map_err(|e| transport_error(&e))?
            .with_swarm_config(swarm_config)
            .build(),
        (Transport::Memory, _) => builder
            .with_other_transport(|key| {
                use libp2p::core::upgrade::Version;
                use libp2p::Transport as _;
                libp2p::core::transport::MemoryTransport::default()
                    .upgrade(Version::V1)
                    .authenticate(libp2p::plaintext::Config::new(key))
                    .multiplex(yamux::Config::default())
            })
            .map_err(|e| transport_error(&e))?
            .with_behaviour(|key| behaviour(key))
            .map_err(|e| transport_error(&e))?
            .with_swarm_config(swarm_config)
            .build(),
    };
    Ok(swarm)
}

/// The network an address belongs to for the bucket rule: IPv4 /24 or
/// IPv6 /48; `None` for addresses without IP (the memory transport).
fn subnet(addr: &Multiaddr) -> Option<(bool, u64)> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some((true, u64::from(u32::from(a) >> 8))),
        Protocol::Ip6(a) => Some((false, (u128::from(a) >> 80) as u64)),
        _ => None,
    })
}

struct Lookup {
    reply: Option<oneshot::Sender<(Vec<Found>, LookupStats)>>,
    started: Instant,
    requests: u32,
    provider_requests: u32,
    providers: u32,
    provider_duration: Duration,
    /// Provider queries (one per shard) still running.
    provider_queries: usize,
    /// Per running provider query that may end early ([`Search::Enough`]),
    /// how many peers have answered it with providers, and how many answers
    /// in a row brought none new.
    answers: HashMap<QueryId, (u32, u32)>,
    /// Providers found so far; each gets one record query.
    asked: HashSet<PeerId>,
    /// Record queries still running.
    pending: usize,
    best: HashMap<PeerId, VerifiedRecord>,
}

struct Task {
    swarm: Swarm<Behaviour>,
    peers: Option<sled::Tree>,
    counters: Arc<DhtCounters>,
    lookups: HashMap<u64, Lookup>,
    /// Provider query → its lookup.
    provider_queries: HashMap<QueryId, u64>,
    record_queries: HashMap<QueryId, (u64, PeerId)>,
    rtts: HashMap<PeerId, Duration>,
    record_ttl: Duration,
    next_lookup: u64,
    /// What this node last published, to publish again after a failure.
    published: Option<(Vec<u8>, Vec<RecordKey>)>,
    /// The queries of the publication under way (none once one failed).
    publication: HashSet<QueryId>,
    retry_publish: Option<tokio::time::Instant>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let done = loop {
            let retry = self.retry_publish;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown { done }) => break done,
                    Some(c) => self.command(c),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = async { tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)).await }, if retry.is_some() => {
                    self.retry_publish = None;
                    if let Some((record, provide)) = self.published.clone() {
                        self.publish(record, provide);
                    }
                }
            }
        };
        self.close().await;
        drop(self);
        let _ = done.send(());
    }

    /// Closes every connection, driving the swarm until they are gone.
    async fn close(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.event(event),
                Err(_) => {
                    debug!("DHT peers did not answer the close in time; dropping their connections");
                    break;
                }
            }
        }
    }

    /// Puts the peers of the peer store in the routing table; how many.
    fn restore_peers(&mut self) -> usize {
        let Some(tree) = &self.peers else { return 0 };
        let mut restored = 0;
        for (peer, addrs) in tree.iter().flatten() {
            let Ok(peer) = PeerId::from_bytes(&peer) else { continue };
            let Ok(addrs) = postcard::from_bytes::<Vec<Vec<u8>>>(&addrs) else {
                continue;
            };
            for addr in addrs.into_iter().filter_map(|a| Multiaddr::try_from(a).ok()) {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            restored += 1;
        }
        if restored > 0 {
            info!(peers = restored, "DHT peers restored from the peer store");
        }
        restored
    }

    fn add_bootstrap(&mut self, addr: Multiaddr) {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    debug!("dialing bootstrap {addr}: {e}");
                }
            }
            _ => warn!("bootstrap address {addr} has no /p2p/ peer id; ignored"),
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Publish { record, provide } => self.publish(record, provide),
            Command::Find { key, search, reply } => {
                let id = self.next_lookup;
                self.next_lookup += 1;
                let mut answers = HashMap::new();
                for key in shards(&key) {
                    let query = self.swarm.behaviour_mut().kad.get_providers(key);
                    self.provider_queries.insert(query, id);
                    if search == Search::Enough {
                        answers.insert(query, (0, 0));
                    }
                }
                self.lookups.insert(
                    id,
                    Lookup {
                        reply: Some(reply),
                        started: Instant::now(),
                        requests: 0,
                        provider_requests: 0,
                        providers: 0,
                        provider_duration: Duration::ZERO,
                        provider_queries: usize::from(PROVIDER_SHARDS),
                        answers,
                        asked: HashSet::new(),
                        pending: 0,
                        best: HashMap::new(),
                    },
                );
            }
            Command::Addresses { reply } => {
                let me = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with(Protocol::P2p(me)))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Shutdown { .. } => unreachable!("the task loop ends on shutdown"),
        }
    }

    fn publish(&mut self, bytes: Vec<u8>, provide: Vec<RecordKey>) {
        self.published = Some((bytes.clone(), provide.clone()));
        let key = node_key(self.swarm.local_peer_id());
        let mut record = kad::Record::new(key, bytes);
        record.expires = Some(Instant::now() + self.record_ttl);
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Err(e) = kad.store_mut().put(record.clone()) {
            warn!("storing our own record: {e}");
        }
        let mut queries = HashSet::new();
        match kad.put_record(record, Quorum::One) {
            Ok(query) => _ = queries.insert(query),
            Err(e) => warn!("publishing our record: {e}"),
        }
        for key in provide {
            match kad.start_providing(key) {
                Ok(query) => _ = queries.insert(query),
                Err(e) => warn!("announcing ourselves as provider: {e}"),
            }
        }
        self.publication = queries;
    }

    /// Checks a record found or offered under `key`; `None` if refused.
    fn verify(&self, key: &RecordKey, value: &[u8]) -> Option<VerifiedRecord> {
        let now = hopwire_proto::time::unix_now();
        let record = match VerifiedRecord::from_bytes(value) {
            Ok(r) => r,
            Err(e) => {
                self.counters.reject(e.reason());
                debug!("refused a DHT record: {e}");
                return None;
            }
        };
        let Some(peer) = peer_id(&record.record().identity) else {
            self.counters.reject("malformed");
            return None;
        };
        if node_key(&peer) != *key {
            self.counters.reject("wrong_key");
            debug!("refused a DHT record stored under another node's key");
            return None;
        }
        if let Err(e) = record.check(now, None) {
            self.counters.reject(e.reason());
            debug!("refused a DHT record: {e}");
            return None;
        }
        Some(record)
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if info.protocols.contains(&KAD_PROTOCOL) =>
            {
                for addr in info.listen_addrs {
                    self.maybe_add(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer, result: Ok(rtt), ..
            })) => {
                self.rtts.insert(peer, rtt);
            }
            SwarmEvent::ConnectionEstablished { .. } => {
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
            }
            SwarmEvent::ConnectionClosed { .. } => {
                self.counters.connections.fetch_sub(1, Ordering::Relaxed);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                debug!("DHT listening on {address}");
                // Provider announcements carry only external addresses, and
                // peers answer provider lookups only with providers whose
                // address they know: without this, a provider is found only
                // by way of peers that happen to have it in their routing
                // table.
                self.swarm.add_external_address(address);
            }
            _ => {}
        }
    }

    /// Adds a peer to the routing table unless its bucket already holds
    /// [`MAX_PER_SUBNET`] peers of its subnet.
    fn maybe_add(&mut self, peer: PeerId, addr: Multiaddr) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Some(net) = subnet(&addr) {
            let crowded = kad.kbucket(peer).is_some_and(|bucket| {
                bucket
                    .iter()
                    .filter(|e| *e.node.key.preimage() != peer)
                    .filter(|e| e.node.value.iter().any(|a| subnet(a) == Some(net)))
                    .count()
                    >= MAX_PER_SUBNET
            });
            if crowded {
                self.counters.subnet_refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        kad.add_address(&peer, addr);
    }

    fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutablePeer { peer, address } | kad::Event::PendingRoutablePeer { peer, address } => {
                self.maybe_add(peer, address);
            }
            kad::Event::RoutingUpdated { peer, addresses, .. } => {
                let count: usize = self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                self.counters.routing_peers.store(count, Ordering::Relaxed);
                if let Some(tree) = &self.peers {
                    let addrs: Vec<Vec<u8>> = addresses.iter().map(|a| a.to_vec()).collect();
                    if let Ok(bytes) = postcard::to_stdvec(&addrs) {
                        let _ = tree.insert(peer.to_bytes(), bytes);
                    }
                }
            }
            kad::Event::InboundRequest { request } => {
                self.counters.inbound_requests.fetch_add(1, Ordering::Relaxed);
                self.inbound(request);
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
            } => {
                self.progress(id, result, stats.num_requests(), step.last);
            }
            _ => {}
        }
    }

    /// Stores what others offer only if it verifies and is newer.
    fn inbound(&mut self, request: kad::InboundRequest) {
        match request {
            kad::InboundRequest::PutRecord {
                record: Some(record), ..
            } => {
                let Some(new) = self.verify(&record.key, &record.value) else {
                    return;
                };
                let store = self.swarm.behaviour_mut().kad.store_mut();
                // A newer sequence replaces; the same record again only
                // refreshes its expiry; anything else is stale.
                let stale = store.get(&record.key).is_some_and(|old| {
                    old.value != record.value
                        && VerifiedRecord::from_bytes(&old.value).is_ok_and(|old| old.record().seq >= new.record().seq)
                });
                if stale {
                    self.counters.reject("stale");
                    return;
                }
                let mut record = record;
                record.expires = Some(Instant::now() + self.record_ttl);
                if store.put(record).is_ok() {
                    self.counters.stored.fetch_add(1, Ordering::Relaxed);
                }
            }
            kad::InboundRequest::AddProvider { record: Some(provider) } => {
                let key = provider.key.as_ref();
                if key.starts_with(b"/hopwire/role/") || key.starts_with(b"/hopwire/exit/") {
                    let _ = self.swarm.behaviour_mut().kad.store_mut().add_provider(provider);
                }
            }
            _ => {}
        }
    }

    fn progress(&mut self, query: QueryId, result: QueryResult, requests: u32, last: bool) {
        match result {
            QueryResult::GetProviders(found) => {
                let Some(&lookup) = self.provider_queries.get(&query) else {
                    return;
                };
                let me = *self.swarm.local_peer_id();
                let new: Vec<PeerId> = match found {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => providers.into_iter().collect(),
                    _ => Vec::new(),
                };
                let Some(l) = self.lookups.get_mut(&lookup) else {
                    return;
                };
                let answered = !new.is_empty();
                // Each provider's record is fetched as soon as it is known.
                let new: Vec<PeerId> = new.into_iter().filter(|p| *p != me && l.asked.insert(*p)).collect();
                // The first answer may be our own store's (no request yet);
                // only other peers' answers count towards ending the query.
                if let (true, true, false, Some((answers, repeated))) =
                    (answered, requests > 0, last, l.answers.get_mut(&query))
                {
                    *answers += 1;
                    *repeated = if new.is_empty() { *repeated + 1 } else { 0 };
                    if *answers >= PROVIDER_ANSWERS && *repeated >= REPEATED_ANSWERS {
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
                            q.finish();
                        }
                    }
                }
                l.pending += new.len();
                if last {
                    self.provider_queries.remove(&query);
                    l.answers.remove(&query);
                    l.requests += requests;
                    l.provider_requests += requests;
                    l.provider_queries -= 1;
                    if l.provider_queries == 0 {
                        l.providers = l.asked.len() as u32;
                        l.provider_duration = l.started.elapsed();
                    }
                }
                for peer in new {
                    let q = self.swarm.behaviour_mut().kad.get_record(node_key(&peer));
                    self.record_queries.insert(q, (lookup, peer));
                }
                self.finish_if_done(lookup);
            }
            QueryResult::GetRecord(found) => {
                let Some((lookup, peer)) = self.record_queries.get(&query).copied() else {
                    return;
                };
                if let Ok(GetRecordOk::FoundRecord(found)) = found {
                    // Checked against the key we asked for, not the one the
                    // answer names: a peer may answer with another node's
                    // (valid) record.
                    if let Some(record) = self.verify(&node_key(&peer), &found.record.value) {
                        if let Some(l) = self.lookups.get_mut(&lookup) {
                            let newer = l.best.get(&peer).is_none_or(|b| b.record().seq < record.record().seq);
                            if newer {
                                l.best.insert(peer, record);
                            }
                        }
                        // One verified answer is enough for this node; a
                        // refused one must not end the search.
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
                            q.finish();
                        }
                    }
                }
                if !last {
                    return;
                }
                self.record_queries.remove(&query);
                if let Some(l) = self.lookups.get_mut(&lookup) {
                    l.requests += requests;
                    l.pending = l.pending.saturating_sub(1);
                }
                self.finish_if_done(lookup);
            }
            QueryResult::StartProviding(done) => self.publication_done(query, done.err().map(|e| e.to_string())),
            QueryResult::PutRecord(done) => self.publication_done(query, done.err().map(|e| e.to_string())),
            QueryResult::Bootstrap(Ok(kad::BootstrapOk { num_remaining: 0, .. })) => {
                self.counters.joins.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// One query of a publication ended; the last of a publication none of
    /// whose queries failed counts it done.
    fn publication_done(&mut self, query: QueryId, error: Option<String>) {
        let ours = self.publication.remove(&query);
        match error {
            Some(e) => {
                // The rest of a failed publication counts for nothing: it
                // is published again whole.
                if ours {
                    self.publication.clear();
                }
                self.publish_failed(&e);
            }
            None if ours && self.publication.is_empty() => {
                self.counters.publications.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }

    /// A publication found too few peers in time (a busy or young
    /// network): publish everything again soon rather than at the next
    /// republish, hours away.
    fn publish_failed(&mut self, e: &dyn std::fmt::Display) {
        self.counters.publish_failures.fetch_add(1, Ordering::Relaxed);
        if self.retry_publish.is_none() && self.published.is_some() {
            warn!(
                "publishing in the DHT failed ({e}); trying again in {} s",
                PUBLISH_RETRY.as_secs()
            );
            self.retry_publish = Some(tokio::time::Instant::now() + PUBLISH_RETRY);
        }
    }

    fn finish_if_done(&mut self, lookup: u64) {
        let done = self
            .lookups
            .get(&lookup)
            .is_some_and(|l| l.provider_queries == 0 && l.pending == 0);
        if !done {
            return;
        }
        let Some(mut l) = self.lookups.remove(&lookup) else {
            return;
        };
        let found = l
            .best
            .drain()
            .map(|(peer, record)| Found {
                record,
                rtt: self.rtts.get(&peer).copied(),
            })
            .collect();
        let stats = LookupStats {
            requests: l.requests,
            provider_requests: l.provider_requests,
            providers: l.providers,
            provider_duration: l.provider_duration,
            duration: l.started.elapsed(),
        };
        if let Some(reply) = l.reply.take() {
            let _ = reply.send((found, stats));
        }
    }
}

/// Parses a DHT peer address; it must name the peer (`/p2p/…`).
pub fn parse_dht_addr(s: &str) -> Option<libp2p::Multiaddr> {
    let addr: libp2p::Multiaddr = s.trim().parse().ok()?;
    matches!(addr.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))).then_some(addr)
}
