//! The node runtime: the tokio shell around the sans-IO circuit code.
//!
//! One quinn endpoint per node. Every QUIC connection is a *link*; every
//! bidirectional stream on it is one circuit's control channel; data cells
//! ride in its DATAGRAM frames. A node with the relay role extends circuits
//! to the next hop (reusing one connection per neighbour), and a node with
//! the exit role ends them in a WireGuard session ([`exit`]). A relay learns
//! only its previous and next hop; it never sees the payload.
//!
//! Also here: [`config`] (`node.toml`) and [`ledger_service`] (the
//! embedded ledger served over TCP, for testnets and single machines).
//!
//! What it does not do: parse the command line or choose paths.
//!
//! May depend on: `hopwire_proto`, `hopwire_net`, `hopwire_sys`. May not
//! depend on: `hopwire_client`, `hopwire_api`.

pub mod config;
pub mod control;
pub mod earnings;
pub mod exit;
pub mod ledger_service;
mod metrics;
pub mod payee;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::LoadedConfig;
use hopwire_net::cellpath::{CellBatch, CellLink, CellOut, CellSocket};
use hopwire_net::dht::{Dht, DhtConfig, Transport};
use hopwire_net::framing::{self, SetupError};
use hopwire_net::keys::{self, KeyError, NodeKeys};
use hopwire_net::ledger::{LazyLedger, LedgerAccess, LedgerAddr};
use hopwire_net::link::{self, LinkError};
use hopwire_net::tun_batch::SendBatch;
use hopwire_proto::onion::cell::{BackwardMessage, ForwardMessage, LinkMessage};
use hopwire_proto::onion::circuit::{
    CircuitTable, ControlAction, HopCircuit, Routed, SharedHop, WRAP_HEADROOM, WRAP_TAILROOM,
};
use hopwire_proto::onion::handshake::ServerOnionskin;
use hopwire_proto::onion::keys::OnionKeys;
use hopwire_proto::onion::layer::aes_hardware;
use hopwire_proto::ratelimit::TokenBucket;
use hopwire_proto::record::{short_id, Role};
use hopwire_proto::sync::{lock, read, write};
use hopwire_proto::time::{now_millis, unix_now};

pub use exit::ExitError;

/// Names a link (one QUIC connection) inside this node.
pub type LinkId = usize;

/// How long a neighbour may take to answer CREATE.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often onion keys are checked for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);
const BUF: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Exit(#[from] ExitError),
    #[error(transparent)]
    Dht(#[from] hopwire_net::dht::DhtError),
    #[error("receipt store in {dir}: {source}")]
    Receipts {
        dir: std::path::PathBuf,
        #[source]
        source: hopwire_net::store::StoreError,
    },
    #[error("metrics listener on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct LinkState {
    conn: quinn::Connection,
    /// Set when the neighbour is a node that speaks the cell path.
    cells: Option<Arc<CellLink>>,
    /// What the neighbour may send through us.
    limit: Mutex<TokenBucket>,
}

/// The node's links, shared with the exit part so it can send cells back.
/// A cell leaves on the link's cell path when it has one, else as a QUIC
/// datagram.
pub struct Links {
    /// Looked up for every cell: a fast hash.
    links: RwLock<foldhash::HashMap<LinkId, LinkState>>,
    next: AtomicUsize,
    /// The node's socket, which carries the cell paths too.
    socket: Arc<CellSocket>,
}

impl Links {
    fn new(socket: Arc<CellSocket>) -> Self {
        Self {
            links: RwLock::default(),
            next: AtomicUsize::new(0),
            socket,
        }
    }

    /// Adds a link. A link to a peer that speaks the cell path gets one,
    /// unless its index is taken (about one in a billion): then the link is
    /// closed, so a new one is made with other keys.
    fn add(&self, conn: quinn::Connection, limit: TokenBucket) -> LinkId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cells = CellLink::of(&conn, id).map(Arc::new).filter(|link| {
            let registered = self.socket.register(link);
            if !registered {
                conn.close(0u32.into(), b"cell path index taken; connect again");
            }
            registered
        });
        write(&self.links).insert(
            id,
            LinkState {
                conn,
                cells,
                limit: Mutex::new(limit),
            },
        );
        id
    }

    /// Sends a data cell on a link at once; a full or gone link drops it, as
    /// a router would. Loops that carry many cells use [`Links::queue`].
    pub fn send(&self, link: LinkId, cell: &[u8]) {
        if let Some(l) = read(&self.links).get(&link) {
            match &l.cells {
                Some(path) => self.socket.send_now(path, cell),
                None => {
                    let _ = l.conn.send_datagram(Bytes::copy_from_slice(cell));
                }
            }
        }
    }

    /// As [`Links::send`], but a cell for a cell path waits in `out` for
    /// [`Links::flush`], which sends it with the others for its neighbour.
    pub fn queue(&self, link: LinkId, cell: &[u8], out: &mut CellOut) {
        if let Some(l) = read(&self.links).get(&link) {
            match &l.cells {
                Some(path) => out.push(&self.socket, path, cell),
                None => {
                    let _ = l.conn.send_datagram(Bytes::copy_from_slice(cell));
                }
            }
        }
    }

    /// Sends what [`Links::queue`] put in `out`.
    pub async fn flush(&self, out: &mut CellOut) {
        if !out.is_empty() {
            out.flush(&self.socket).await;
        }
    }

    fn admit(&self, link: LinkId, now: Instant, bytes: usize) -> bool {
        read(&self.links)
            .get(&link)
            .is_some_and(|l| lock(&l.limit).admit(now, bytes as u64))
    }

    fn remove(&self, link: LinkId) {
        let removed = write(&self.links).remove(&link);
        if let Some(LinkState { cells: Some(path), .. }) = removed {
            self.socket.unregister(&path);
        }
    }

    fn len(&self) -> usize {
        read(&self.links).len()
    }
}

/// What one cell loop has to send after a batch: cells for cell paths, and,
/// at an exit, packets for the uplink. [`Node::flush`] sends both.
struct Outbox {
    cells: CellOut,
    to_exit: Option<SendBatch>,
}

/// Counters the node reports.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub circuits_opened: AtomicU64,
    pub extends_failed: AtomicU64,
    pub cells_relayed: AtomicU64,
    pub cells_delivered: AtomicU64,
    pub peer_rate_limited: AtomicU64,
}

struct Node {
    id: [u8; 32],
    relay: bool,
    onion: RwLock<OnionKeys>,
    key_dir: std::path::PathBuf,
    table: RwLock<CircuitTable<LinkId>>,
    links: Arc<Links>,
    /// Connections this node opened, by the neighbour's identity.
    peers: tokio::sync::Mutex<HashMap<[u8; 32], (LinkId, quinn::Connection)>>,
    endpoint: quinn::Endpoint,
    exit: Option<Arc<exit::Exit>>,
    circuit_rate: u64,
    peer_rate: u64,
    counters: NodeCounters,
    dht_counters: Arc<hopwire_net::dht::DhtCounters>,
    /// Set when the node charges.
    payee: Option<payee::Payee>,
}

#[derive(Debug, thiserror::Error)]
#[error("config {path}: node.public_address: not set, and listen ({listen}) is not an address clients can dial; set it to this server's public IP and port")]
pub struct NoPublicAddress {
    pub path: std::path::PathBuf,
    pub listen: SocketAddr,
}

/// Where a charging node is paid: the domain of its ledger and its
/// account there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOn {
    pub domain: String,
    pub payout: [u8; 32],
}

/// The account a node is paid to on `ledger`, and what it acts with there:
/// on the embedded ledger its identity (and nothing to sign with: settling
/// needs no key); on a chain `pay.payout` (default: the address of its gas
/// key, `evm.key` in its key directory, made on first use), and that key.
pub fn payout(
    config: &LoadedConfig,
    keys: &NodeKeys,
    ledger: &LedgerAddr,
) -> Result<([u8; 32], LedgerAccess), KeyError> {
    match ledger {
        LedgerAddr::Service(_) => Ok((keys.identity.verifying_key().to_bytes(), LedgerAccess::default())),
        LedgerAddr::Evm(_) => {
            let pay = &config.config.pay;
            let key = keys::load_or_create_evm_key(&config.key_dir.join(keys::EVM_FILE))?;
            let payout = hopwire_proto::pay::scheme::address_word(pay.payout.unwrap_or(key.address()));
            let access = LedgerAccess {
                evm: Some(key),
                unit_value_wei: pay.unit_value_wei,
                ..LedgerAccess::default()
            };
            Ok((payout, access))
        }
    }
}

/// The node's own record, as clients need it to build circuits (sign it
/// with the identity key); `paid_on` names its ledger if it charges.
pub fn own_record(
    config: &LoadedConfig,
    keys: &NodeKeys,
    onion: &OnionKeys,
    paid_on: Option<&PaidOn>,
    now: u64,
) -> Result<hopwire_proto::record::NodeRecord, NoPublicAddress> {
    let node = &config.config.node;
    let quic_addr = match node.public_address {
        Some(a) => a,
        None if !node.listen.ip().is_unspecified() => node.listen,
        None => {
            return Err(NoPublicAddress {
                path: config.path.clone(),
                listen: node.listen,
            })
        }
    };
    let record = hopwire_proto::record::NodeRecord {
        version: hopwire_proto::record::RECORD_VERSION,
        identity: keys.identity.verifying_key().to_bytes(),
        quic_addr,
        roles: node.roles.clone(),
        onion_key: onion.public(),
        onion_key_expires: onion.expires_at(),
        wg_key: *keys.wg_public().as_bytes(),
        region: node.region.clone(),
        capacity_mbit: node.capacity_mbit,
        quote: config.config.pay.quote(),
        ledger: paid_on.map(|p| p.domain.clone()).unwrap_or_default(),
        payout: paid_on.map_or([0; 32], |p| p.payout),
        exit_rules: config.config.exit.policy.clone(),
        exit_default_rejects: config.config.exit.default_rejects,
        family: config.family.clone(),
        seq: now_millis(),
        issued_at: now,
        expires_at: now + hopwire_proto::record::RECORD_TTL,
    };
    Ok(record)
}

/// The node's DHT address others join through: its public IP, the DHT
/// port, and its peer id.
pub fn dht_address(config: &LoadedConfig, keys: &NodeKeys) -> Option<libp2p::Multiaddr> {
    let node = &config.config.node;
    let ip = node.public_address.map(|a| a.ip()).or_else(|| {
        let ip = config.config.dht.listen.ip();
        (!ip.is_unspecified()).then_some(ip)
    })?;
    let peer = hopwire_net::dht::peer_id(&keys.identity.verifying_key().to_bytes())?;
    Some(
        libp2p::Multiaddr::from(ip)
            .with(libp2p::multiaddr::Protocol::Tcp(config.config.dht.listen.port()))
            .with(libp2p::multiaddr::Protocol::P2p(peer)),
    )
}

/// How often a node signs and publishes a fresh record: well inside its TTL.
const REPUBLISH: Duration = Duration::from_secs(hopwire_proto::record::RECORD_TTL / 3);

/// Publishes the node's record and provider announcements, again and
/// again, and at once when a reload changes the configuration.
async fn publish_loop(node: Arc<Node>, dht: Dht, mut config: watch::Receiver<LoadedConfig>, keys: NodeKeys) {
    let first = config.borrow_and_update().clone();
    let roles = &first.config.node.roles;
    let provide = hopwire_net::dht::provider_keys(
        &dht.local_peer,
        &roles
            .iter()
            .copied()
            .filter(|r| *r != Role::Bootstrap)
            .collect::<Vec<_>>(),
        &first.config.node.region,
    );
    // A charging node publishes its ledger's domain: it waits for it.
    let paid_on = match &node.payee {
        Some(payee) => loop {
            match payee.domain().await {
                Ok(domain) => {
                    break Some(PaidOn {
                        domain,
                        payout: payee.payout(),
                    })
                }
                Err(e) => {
                    warn!("not publishing until the ledger says its domain: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        },
        None => None,
    };
    let mut tick = tokio::time::interval(REPUBLISH);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = config.changed() => {}
        }
        let onion = read(&node.onion).clone();
        let record = own_record(&config.borrow_and_update(), &keys, &onion, paid_on.as_ref(), unix_now());
        match record {
            Ok(record) => {
                if dht
                    .publish(record.to_signed_bytes(&keys.identity), provide.clone())
                    .await
                    .is_err()
                {
                    warn!("the DHT stopped; not publishing");
                    return std::future::pending().await;
                }
                debug!("record published in the DHT");
            }
            Err(e) => {
                warn!("not publishing in the DHT: {e}");
                return std::future::pending().await;
            }
        }
    }
}

/// A configured node, ready to run.
pub struct NodeRuntime {
    config: LoadedConfig,
    keys: NodeKeys,
    memory_uplink: Option<exit::MemoryUplink>,
    reloads: Option<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for NodeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRuntime")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl NodeRuntime {
    pub fn new(config: LoadedConfig, keys: NodeKeys) -> Self {
        Self {
            config,
            keys,
            memory_uplink: None,
            reloads: None,
        }
    }

    /// Re-reads the config file whenever `reloads` yields (the binary sends
    /// one per SIGHUP): the exit policy and the prices change in place,
    /// circuits stay up and keep the price they started with, and the
    /// record is published again at once. Other changes are named in the
    /// log as taking effect at the next restart.
    pub fn reload_on(mut self, reloads: mpsc::Receiver<()>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// For tests and simulations in one process, without root: the exit
    /// role sends its clients' packets to the returned pretend internet
    /// instead of a TUN device, and touches no NAT, forwarding, firewall or
    /// DNS forwarder. A node without the exit role ignores it.
    ///
    /// Several nodes run in one process when each has its own
    /// `node.listen` (the record carries it, so pick a free port, not 0) and
    /// `dht.listen` (port 0 is fine without DHT peers), e.g. on 127.0.0.1.
    pub fn with_memory_uplink(mut self) -> (Self, exit::MemoryInternet) {
        let (uplink, internet) = exit::memory_uplink();
        self.memory_uplink = Some(uplink);
        (self, internet)
    }

    /// The payment side of a charging node paid on `ledger`.
    fn payee(&self, ledger: LedgerAddr) -> Result<payee::Payee, NodeError> {
        let pay = &self.config.config.pay;
        let dir = &self.config.key_dir;
        let (payout, access) = payout(&self.config, &self.keys, &ledger)?;
        let ledger = LazyLedger::new(ledger, access, None);
        payee::Payee::open(pay.quote(), ledger, payout, payee::SettlePolicy::of(pay), dir).map_err(|source| {
            NodeError::Receipts {
                dir: dir.clone(),
                source,
            }
        })
    }

    /// Sets everything up, serves until `shutdown` completes, then removes
    /// everything it set up on the system.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let cfg = &self.config.config;
        let onion = keys::load_onion_keys(&self.config.key_dir, unix_now())?;
        let (endpoint, socket) = link::node_endpoint(cfg.node.listen, link::server_config(&self.keys.identity)?)?;
        let links = Arc::new(Links::new(socket.clone()));
        let exit = if cfg.node.roles.contains(&Role::Exit) {
            Some(exit::Exit::start(
                &self.config,
                &self.keys,
                links.clone(),
                self.memory_uplink.take(),
            )?)
        } else {
            None
        };
        let mbit = |m: u64| m * 1_000_000 / 8;
        let payee = match cfg.pay.ledger {
            Some(ledger) if !cfg.pay.quote().is_free() => Some(self.payee(ledger)?),
            _ => None,
        };
        let dht = self.start_dht()?;
        let node = Arc::new(Node {
            dht_counters: dht.counters.clone(),
            id: self.keys.identity.verifying_key().to_bytes(),
            relay: cfg.node.roles.contains(&Role::Relay),
            onion: RwLock::new(onion),
            key_dir: self.config.key_dir.clone(),
            table: RwLock::default(),
            links,
            peers: tokio::sync::Mutex::default(),
            endpoint: endpoint.clone(),
            exit: exit.clone(),
            circuit_rate: mbit(cfg.relay.circuit_rate_mbit),
            peer_rate: mbit(cfg.relay.peer_rate_mbit),
            counters: NodeCounters::default(),
            payee,
        });
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(addr) = cfg.node.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Metrics { addr, source })?;
            tasks.spawn(metrics::serve(listener, node.clone()));
        }
        if let Some(exit) = &exit {
            exit.spawn_tasks(&mut tasks);
        }
        tasks.spawn(accept_loop(node.clone()));
        let cells = node.clone();
        tasks.spawn(async move { cells.cell_loop(&socket).await });
        tasks.spawn(rotate_onion_keys(node.clone()));
        let mut control_socket = None;
        if node.payee.is_some() {
            let path = control::socket_path(&node.key_dir);
            match control::bind(&node.key_dir) {
                Ok(listener) => {
                    tasks.spawn(control::serve(listener, node.clone()));
                    control_socket = Some(path);
                }
                Err(e) => warn!(
                    "control socket {}: {e}; `hopwire-node earnings` and `settle` work only while the node is stopped",
                    path.display()
                ),
            }
            let every = Duration::from_secs(cfg.pay.settle_every_s);
            let node = node.clone();
            tasks.spawn(async move {
                if let Some(payee) = &node.payee {
                    payee.settle_periodically(every).await;
                }
            });
        }
        let (published, config_rx) = watch::channel(self.config.clone());
        if cfg.node.roles.iter().any(|r| *r != Role::Bootstrap) {
            tasks.spawn(publish_loop(node.clone(), dht.clone(), config_rx, self.keys.clone()));
        }
        if let Some(reloads) = self.reloads.take() {
            tasks.spawn(reload_loop(node.clone(), reloads, published));
        }
        info!(
            listen = %cfg.node.listen,
            dht = %cfg.dht.listen,
            roles = ?cfg.node.roles,
            id = %short_id(&node.id),
            peer = %dht.local_peer,
            "node serving"
        );
        tokio::select! {
            () = shutdown => info!("shutting down"),
            Some(done) = tasks.join_next() => warn!("a node task ended early: {done:?}"),
        }
        endpoint.close(0u32.into(), b"node shutting down");
        // Let the close frames leave before the process goes.
        let _ = tokio::time::timeout(Duration::from_millis(300), endpoint.wait_idle()).await;
        tasks.abort_all();
        if let Some(exit) = exit {
            exit.teardown();
        }
        if let Some(path) = control_socket {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

impl NodeRuntime {
    fn start_dht(&self) -> Result<Dht, NodeError> {
        let cfg = &self.config.config;
        let mut config = DhtConfig::new(Transport::Tcp, true);
        config.listen =
            vec![libp2p::Multiaddr::from(cfg.dht.listen.ip())
                .with(libp2p::multiaddr::Protocol::Tcp(cfg.dht.listen.port()))];
        config.bootstrap = self.config.bootstrap.clone();
        config.peer_store = Some(self.config.key_dir.join("dht-peers"));
        Ok(Dht::spawn(hopwire_net::dht::keypair(&self.keys.identity), config)?)
    }
}

/// Applies the config file again on each request: see
/// [`NodeRuntime::reload_on`].
async fn reload_loop(node: Arc<Node>, mut reloads: mpsc::Receiver<()>, published: watch::Sender<LoadedConfig>) {
    while reloads.recv().await.is_some() {
        let running = published.borrow().clone();
        let path = running.path.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::NodeConfig::load(&path))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let new = match loaded {
            Ok(new) => new,
            Err(e) => {
                warn!("not reloading: {e}");
                continue;
            }
        };
        let later = running.config.needs_restart(&new.config);
        if !later.is_empty() {
            warn!(
                "{}: changes to {} take effect at the next restart",
                running.path.display(),
                later.join("; ")
            );
        }
        // What runs now: the old config with the reloadable parts of the new.
        let mut applied = running;
        applied.policy = new.policy.clone();
        applied.config.exit.policy = new.config.exit.policy.clone();
        applied.config.exit.default_rejects = new.config.exit.default_rejects;
        if let Some(exit) = &node.exit {
            exit.set_policy(new.policy);
        }
        let pay = &new.config.pay;
        if let Some(payee) = node.payee.as_ref().filter(|_| !pay.quote().is_free()) {
            applied.config.pay.price_per_gib = pay.price_per_gib;
            applied.config.pay.chunk_mib = pay.chunk_mib;
            applied.config.pay.grace_mib = pay.grace_mib;
            payee.set_quote(pay.quote());
        }
        let quote = applied.config.pay.quote();
        info!(
            exit_rules = applied.config.exit.policy.len(),
            default_rejects = applied.config.exit.default_rejects,
            price_per_gib = quote.price_per_gib,
            chunk_mib = applied.config.pay.chunk_mib,
            grace_mib = applied.config.pay.grace_mib,
            "reloaded {}: the policy applies to every packet from now on; circuits built from now on pay this price, running ones keep theirs",
            applied.path.display()
        );
        published.send_replace(applied);
    }
}

async fn rotate_onion_keys(node: Arc<Node>) {
    let mut tick = tokio::time::interval(ROTATION_CHECK);
    loop {
        tick.tick().await;
        let rotated = {
            let mut onion = write(&node.onion);
            let rotated = onion.rotate_if_due(&mut rand::rngs::OsRng, unix_now());
            rotated.then(|| onion.clone())
        };
        if let Some(keys) = rotated {
            match keys::save_onion_keys(&node.key_dir, &keys) {
                Ok(()) => info!("onion key rotated; publish the new record (`hopwire-node show-record`)"),
                Err(e) => warn!("saving the rotated onion key: {e}"),
            }
        }
    }
}

async fn accept_loop(node: Arc<Node>) {
    while let Some(incoming) = node.endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => node.serve_link(conn).await,
                Err(e) => debug!("incoming connection failed: {e}"),
            }
        });
    }
}

impl Node {
    fn new_link(self: &Arc<Self>, conn: quinn::Connection) -> LinkId {
        let link = self.links.add(
            conn.clone(),
            TokenBucket::new(self.peer_rate, self.peer_rate / 4, Instant::now()),
        );
        let node = self.clone();
        tokio::spawn(async move {
            let why = node.read_cells(link, &conn).await;
            debug!(link, "link closed: {why}");
            node.links.remove(link);
        });
        link
    }

    /// A link someone opened to us: each stream on it is a circuit. A link
    /// that fills up (a neighbouring relay's) may open more.
    async fn serve_link(self: &Arc<Self>, conn: quinn::Connection) {
        let link = self.new_link(conn.clone());
        let open = Arc::new(AtomicUsize::new(0));
        let mut limit = link::INITIAL_CIRCUITS_PER_LINK;
        while let Ok((send, recv)) = conn.accept_bi().await {
            let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
            if now_open as u32 + limit / 4 >= limit && limit < link::MAX_CIRCUITS_PER_LINK {
                limit = (limit * 2).min(link::MAX_CIRCUITS_PER_LINK);
                conn.set_max_concurrent_bi_streams(limit.into());
            }
            let (node, open) = (self.clone(), open.clone());
            tokio::spawn(async move {
                node.serve_circuit(link, send, recv).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Moves data cells that arrive on a link as QUIC datagrams until it
    /// closes. Every datagram already received is handled before what they
    /// send is sent, in batches.
    async fn read_cells(&self, link: LinkId, conn: &quinn::Connection) -> quinn::ConnectionError {
        let mut cell = vec![0u8; BUF];
        let mut outbox = self.outbox();
        loop {
            let mut next = Some(conn.read_datagram().await);
            while let Some(received) = next.take() {
                let datagram = match received {
                    Ok(d) => d,
                    Err(e) => {
                        self.flush(&mut outbox).await;
                        return e;
                    }
                };
                // With the room a backward cell is wrapped in.
                let n = datagram.len().min(BUF - WRAP_HEADROOM - WRAP_TAILROOM);
                let at = WRAP_HEADROOM..WRAP_HEADROOM + n;
                cell[at.clone()].copy_from_slice(&datagram[..n]);
                self.route_cell(link, &mut cell, at, Instant::now(), &mut outbox);
                if Self::must_flush(&outbox) {
                    break;
                }
                next = link::datagram_if_ready(conn).await;
            }
            self.flush(&mut outbox).await;
        }
    }

    /// Moves the cells that arrive on cell paths, a received batch at a time.
    async fn cell_loop(&self, socket: &CellSocket) {
        let mut batch = CellBatch::default();
        let mut outbox = self.outbox();
        loop {
            socket.next_batch(&mut batch).await;
            while !batch.is_empty() {
                // One clock reading for the cells received together.
                let now = Instant::now();
                batch.handle_until(|link, slot, cell| {
                    self.route_cell(link, slot, cell, now, &mut outbox);
                    !Self::must_flush(&outbox)
                });
                self.flush(&mut outbox).await;
            }
        }
    }

    fn outbox(&self) -> Outbox {
        Outbox {
            cells: CellOut::default(),
            to_exit: self.exit.as_ref().map(|_| SendBatch::default()),
        }
    }

    /// One data cell, `buf[cell]`, from `link` at `now`: relayed on (into
    /// `outbox`), or its payload delivered to the exit (into
    /// `outbox.to_exit`). A backward cell is wrapped in place: `buf` has
    /// room around it ([`CircuitTable::route`]).
    fn route_cell(&self, link: LinkId, buf: &mut [u8], cell: Range<usize>, now: Instant, outbox: &mut Outbox) {
        if !self.links.admit(link, now, cell.len()) {
            self.counters.peer_rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let routed = read(&self.table).route(link, buf, cell, now);
        match routed {
            Routed::Relay { link, range } => {
                self.counters.cells_relayed.fetch_add(1, Ordering::Relaxed);
                self.links.queue(link, &buf[range], &mut outbox.cells);
            }
            Routed::Deliver { circuit, payload } => {
                self.counters.cells_delivered.fetch_add(1, Ordering::Relaxed);
                if let (Some(exit), Some(batch)) = (&self.exit, outbox.to_exit.as_mut()) {
                    exit.deliver(circuit, &buf[payload], batch);
                }
            }
            Routed::Dropped => {}
        }
    }

    /// True when the exit's batch must be written before more cells come.
    fn must_flush(outbox: &Outbox) -> bool {
        outbox.to_exit.as_ref().is_some_and(SendBatch::is_full)
    }

    /// Sends what a batch of cells queued: the exit's packets, then the
    /// cells.
    async fn flush(&self, outbox: &mut Outbox) {
        if let (Some(exit), Some(batch)) = (&self.exit, outbox.to_exit.as_mut()) {
            exit.flush(batch).await;
        }
        self.links.flush(&mut outbox.cells).await;
    }

    /// One circuit's control stream from the previous hop: CREATE, then
    /// control messages until either side ends the circuit.
    async fn serve_circuit(self: Arc<Self>, link: LinkId, mut send: SendStream, mut recv: RecvStream) {
        let create = match tokio::time::timeout(CREATE_TIMEOUT, framing::read_message::<LinkMessage>(&mut recv)).await {
            Ok(Ok(LinkMessage::Create(c))) => c,
            _ => return,
        };
        let made = {
            let onion = read(&self.onion);
            HopCircuit::create(
                &mut rand::rngs::OsRng,
                &self.id,
                &onion,
                unix_now(),
                link,
                &create,
                aes_hardware(),
            )
        };
        let (mut hop, created) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = framing::write_message(&mut send, &LinkMessage::Destroy { reason: e.to_string() }).await;
                return;
            }
        };
        hop.limit = Some(TokenBucket::new(
            self.circuit_rate,
            self.circuit_rate / 4,
            Instant::now(),
        ));
        let hop: SharedHop<LinkId> = Arc::new(Mutex::new(hop));
        if !write(&self.table).insert(hop.clone()) {
            let reason = "circuit id already in use on this link".to_owned();
            let _ = framing::write_message(&mut send, &LinkMessage::Destroy { reason }).await;
            return;
        }
        self.counters.circuits_opened.fetch_add(1, Ordering::Relaxed);
        let prev = Arc::new(tokio::sync::Mutex::new(send));
        let ended = self.run_circuit(&hop, &prev, created, &mut recv).await;
        write(&self.table).remove(&hop);
        if let Some(exit) = &self.exit {
            exit.end_circuit((link, create.circuit_id));
        }
        let mut prev = prev.lock().await;
        // Tell the client, inside this hop's layer, why the circuit ends.
        let why = match ended {
            Ended::NextLost(reason) => Some(BackwardMessage::Failed { reason }),
            Ended::Unpaid(reason) => Some(BackwardMessage::Unpaid { reason }),
            Ended::PrevLost => None,
        };
        if let Some(why) = why {
            let sealed = lock(&hop).reply(&why);
            if let Ok(m) = sealed {
                let _ = framing::write_message(&mut *prev, &m).await;
            }
        }
        let _ = prev.finish();
    }

    async fn run_circuit(
        self: &Arc<Self>,
        hop: &SharedHop<LinkId>,
        prev: &Arc<tokio::sync::Mutex<SendStream>>,
        created: LinkMessage,
        recv: &mut RecvStream,
    ) -> Ended {
        if framing::write_message(&mut *prev.lock().await, &created).await.is_err() {
            return Ended::PrevLost;
        }
        let mut next: Option<SendStream> = None;
        let mut backward: Option<tokio::task::JoinHandle<String>> = None;
        let mut pay = self.payee.as_ref().map(|p| p.start(hop));
        let mut wake = tokio::time::Instant::now() + payee::BUSY_TICK;
        // The payment ticks interrupt the wait for messages often.
        let (reader, mut received) = framing::reader::<LinkMessage>(recv);
        tokio::pin!(reader);
        let mut reader_done = false;
        let ended = loop {
            let message = tokio::select! {
                () = &mut reader, if !reader_done => {
                    reader_done = true;
                    continue;
                }
                m = received.recv() => match m {
                    Some(m) => m,
                    None => break Ended::PrevLost,
                },
                _ = tokio::time::sleep_until(wake), if pay.is_some() => {
                    let (Some(payee), Some(circuit)) = (&self.payee, pay.as_mut()) else { continue };
                    let ticked = payee.tick(circuit, hop, Instant::now());
                    wake = tokio::time::Instant::now() + circuit.next_tick();
                    match ticked {
                        Ok(Some(report)) => {
                            let sealed = lock(hop).reply(&report);
                            match sealed {
                                Ok(m) if framing::write_message(&mut *prev.lock().await, &m).await.is_ok() => {}
                                _ => break Ended::PrevLost,
                            }
                        }
                        Ok(None) => {}
                        Err(e) => break Ended::Unpaid(e.to_string()),
                    }
                    continue;
                }
                why = async {
                    match &mut backward {
                        Some(task) => task.await.unwrap_or_else(|e| e.to_string()),
                        None => std::future::pending().await,
                    }
                } => break Ended::NextLost(why),
            };
            let layered = match message {
                Ok(LinkMessage::Relay { layered }) => layered,
                Ok(LinkMessage::Destroy { .. }) | Err(_) => break Ended::PrevLost,
                Ok(_) => break Ended::PrevLost,
            };
            let action = lock(hop).forward_control(layered);
            let reply = match action {
                Ok(ControlAction::Relay(inner)) => {
                    if let Some(next) = &mut next {
                        if framing::write_message(next, &LinkMessage::Relay { layered: inner })
                            .await
                            .is_err()
                        {
                            break Ended::NextLost("its control stream closed".into());
                        }
                    }
                    continue;
                }
                Ok(ControlAction::Here(ForwardMessage::Extend {
                    addr,
                    identity,
                    onionskin,
                })) => match self.extend(hop, addr, identity, onionskin).await {
                    Ok((send, recv, onionskin)) => {
                        next = Some(send);
                        backward = Some(tokio::spawn(relay_backward(hop.clone(), recv, prev.clone())));
                        BackwardMessage::Extended { onionskin }
                    }
                    Err(e) => {
                        self.counters.extends_failed.fetch_add(1, Ordering::Relaxed);
                        BackwardMessage::Failed { reason: e.to_string() }
                    }
                },
                Ok(ControlAction::Here(ForwardMessage::Pay { payer, receipt })) => match (&self.payee, pay.as_mut()) {
                    (Some(payee), Some(circuit)) => payee.on_pay(circuit, hop, payer, receipt).await,
                    _ => BackwardMessage::Failed {
                        reason: "this node charges nothing".into(),
                    },
                },
                Ok(ControlAction::Here(ForwardMessage::Begin { hello })) => {
                    let key = lock(hop).prev;
                    match &self.exit {
                        Some(exit) if lock(hop).next.is_none() => BackwardMessage::Began {
                            hello: exit.begin(key, hop.clone(), &hello),
                        },
                        _ => BackwardMessage::Failed {
                            reason: "this node is not an exit".into(),
                        },
                    }
                }
                Err(e) => {
                    // A control message that does not open is an attack or a
                    // bug: the circuit cannot be trusted any more.
                    read(&self.table).drops.count(&e);
                    break Ended::PrevLost;
                }
            };
            let sealed = lock(hop).reply(&reply);
            match sealed {
                Ok(m) => {
                    if framing::write_message(&mut *prev.lock().await, &m).await.is_err() {
                        break Ended::PrevLost;
                    }
                }
                Err(_) => break Ended::PrevLost,
            }
        };
        if let Some(mut next) = next {
            let reason = "previous hop closed the circuit".to_owned();
            let _ = framing::write_message(&mut next, &LinkMessage::Destroy { reason }).await;
            let _ = next.finish();
        }
        if let Some(task) = backward {
            task.abort();
        }
        ended
    }

    /// Adds the next hop: connects to it (or reuses a connection), checks
    /// its identity, and passes on the client's onionskin.
    async fn extend(
        self: &Arc<Self>,
        hop: &SharedHop<LinkId>,
        addr: SocketAddr,
        identity: [u8; 32],
        onionskin: hopwire_proto::onion::handshake::ClientOnionskin,
    ) -> Result<(SendStream, RecvStream, ServerOnionskin), ExtendError> {
        if !self.relay {
            return Err(ExtendError::NotARelay);
        }
        if !lock(hop).may_extend() {
            return Err(ExtendError::HopLimit);
        }
        if identity == self.id {
            return Err(ExtendError::Twice);
        }
        let next_name = short_id(&identity);
        let reach = |source: ConnectFailed| ExtendError::Unreachable {
            next: next_name.clone(),
            addr,
            source,
        };
        let (link, conn, reused) = self.connect(addr, identity).await.map_err(reach)?;
        match self.create(hop, link, &conn, &next_name, onionskin.clone()).await {
            // A link kept from before may lead to a process that has since
            // restarted (the old connection only fails once used): once
            // more over a new one.
            Err(_) if reused && conn.close_reason().is_some() => {
                let (link, conn, _) = self.connect(addr, identity).await.map_err(reach)?;
                self.create(hop, link, &conn, &next_name, onionskin).await
            }
            done => done,
        }
    }

    /// Sends CREATE to the next hop over `conn` and waits for its answer.
    async fn create(
        &self,
        hop: &SharedHop<LinkId>,
        link: LinkId,
        conn: &quinn::Connection,
        next_name: &str,
        onionskin: hopwire_proto::onion::handshake::ClientOnionskin,
    ) -> Result<(SendStream, RecvStream, ServerOnionskin), ExtendError> {
        let failed = |reason: String| ExtendError::Create {
            next: next_name.to_owned(),
            reason,
        };
        let (mut send, mut recv) = tokio::time::timeout(CREATE_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| failed("takes no more circuits".into()))?
            .map_err(|e| failed(e.to_string()))?;
        let circuit_id = {
            let table = read(&self.table);
            let mut rng = rand::thread_rng();
            loop {
                let id: u32 = rng.gen();
                if !table.contains(link, id) {
                    break id;
                }
            }
        };
        let max_extends = lock(hop).max_extends.saturating_sub(1);
        let create = LinkMessage::Create(hopwire_proto::onion::cell::Create {
            circuit_id,
            onionskin,
            max_extends,
        });
        framing::write_message(&mut send, &create)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let answer = tokio::time::timeout(CREATE_TIMEOUT, framing::read_message::<LinkMessage>(&mut recv))
            .await
            .map_err(|_| failed("did not answer CREATE".into()))?
            .map_err(|e| failed(e.to_string()))?;
        match answer {
            LinkMessage::Created { onionskin } => {
                write(&self.table).extend(hop, (link, circuit_id));
                Ok((send, recv, onionskin))
            }
            LinkMessage::Destroy { reason } => Err(failed(format!("refused: {reason}"))),
            _ => Err(failed("answered CREATE with something else".into())),
        }
    }

    /// A live connection to the node `identity`, reused (`true`) when there
    /// is one.
    async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        identity: [u8; 32],
    ) -> Result<(LinkId, quinn::Connection, bool), ConnectFailed> {
        let mut peers = self.peers.lock().await;
        if let Some((link, conn)) = peers.get(&identity) {
            if conn.close_reason().is_none() {
                return Ok((*link, conn.clone(), true));
            }
        }
        let config = link::client_config(identity).map_err(ConnectFailed::Config)?;
        let conn = self
            .endpoint
            .connect_with(config, addr, link::SERVER_NAME)
            .map_err(ConnectFailed::Connect)?;
        let conn = tokio::time::timeout(CREATE_TIMEOUT, conn)
            .await
            .map_err(|_| ConnectFailed::TimedOut)?
            .map_err(ConnectFailed::Connection)?;
        let link = self.new_link(conn.clone());
        peers.insert(identity, (link, conn.clone()));
        Ok((link, conn, false))
    }
}

/// Why this hop could not add the next one; sent back to the client as
/// the reason of a FAILED.
#[derive(Debug, thiserror::Error)]
pub enum ExtendError {
    #[error("this node does not relay")]
    NotARelay,
    #[error("the circuit is at its hop limit")]
    HopLimit,
    #[error("a circuit cannot pass a node twice")]
    Twice,
    #[error("cannot reach {next} at {addr}: {source}")]
    Unreachable {
        next: String,
        addr: SocketAddr,
        #[source]
        source: ConnectFailed,
    },
    #[error("{next}: {reason}")]
    Create { next: String, reason: String },
}

/// Why a QUIC link to the next hop could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    #[error("{0}")]
    Config(#[from] LinkError),
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("timed out")]
    TimedOut,
}

/// How a circuit's control loop ended.
enum Ended {
    /// The client's side closed or broke the circuit.
    PrevLost,
    /// The next hop went away.
    NextLost(String),
    /// The client stayed behind on its payments past the cut-off.
    Unpaid(String),
}

/// Passes backward control messages from the next hop to the previous one,
/// each wrapped in this hop's layer; returns why the next hop's side ended.
async fn relay_backward(
    hop: SharedHop<LinkId>,
    mut recv: RecvStream,
    prev: Arc<tokio::sync::Mutex<SendStream>>,
) -> String {
    loop {
        match framing::read_message::<LinkMessage>(&mut recv).await {
            Ok(LinkMessage::Relay { layered }) => {
                let wrapped = lock(&hop).backward_control(&layered);
                let Ok(m) = wrapped else {
                    return "a backward message did not seal".into();
                };
                if framing::write_message(&mut *prev.lock().await, &m).await.is_err() {
                    return "previous hop gone".into();
                }
            }
            Ok(LinkMessage::Destroy { reason }) => return reason,
            Ok(_) => return "unexpected message from the next hop".into(),
            Err(SetupError::Io(e)) => return e.to_string(),
            Err(e) => return e.to_string(),
        }
    }
}
