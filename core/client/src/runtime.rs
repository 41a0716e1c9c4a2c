//! The client runtime: one tunnel for the whole host, its state machine and
//! its events.
//!
//! [`Client::connect`] plans a path (from the DHT or given records), builds
//! a circuit, asks the [`Platform`] for the interface, and keeps the tunnel
//! up: a lost circuit is rebuilt around the node that failed, with the
//! WireGuard session (and so the inner address) kept when the exit stays.
//! While no circuit is up the interface stays, so traffic is held back,
//! never sent around the tunnel.
//!
//! The tunnel's state is owned here and changed in one place
//! ([`Shared::transition`]): Disconnected → Connecting → Connected ⇄
//! Reconnecting, and Error when a connect fails. Every transition, each
//! circuit, the traffic and spending of every second while connected, and
//! wallet changes are [`Event`]s on a broadcast channel: a slow receiver
//! falls behind and is told so, it never slows the tunnel.
//!
//! Every socket the runtime opens to bypass the tunnel — the QUIC
//! endpoint to the first hop, each ledger call, each DHT connection made
//! while the tunnel is down — passes through [`Platform::protect`] before
//! it connects. The DHT runs as a fresh instance on each side of the
//! tunnel ([`crate::lookups`]): the one that found the nodes is shut down
//! before the circuit is built, so no node of the circuit but the guard
//! hears from the client's own address while connected.
//!
//! The user's [`Settings`] (lockdown, allow LAN, IPv6, DNS) live in the
//! state directory ([`crate::settings`]); the platform gets the settings
//! in force with every state, so its firewall follows both.
//!
//! What it does not do: touch the operating system other than through the
//! platform, or speak the daemon's socket (the daemon maps requests to
//! these methods).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boringtun::x25519;
use rand::Rng;
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, info, warn};

use hopwire_api::{
    ErrorKind, Event, HopInfo, HopPayment, NodeInfo, Settings, SettingsChange, State, Status, TunnelState, WalletInfo,
};
use hopwire_net::dht::{self, DhtError};
use hopwire_net::ledger::LedgerAddr;
use hopwire_net::protect::Protect;
use hopwire_proto::onion::cell::MAX_HOPS;
use hopwire_proto::path::{self, PathError, PathRequest};
use hopwire_proto::record::{self, Role, VerifiedRecord};
use hopwire_proto::safelog::Sensitive;
use hopwire_proto::session::{ClientHello, PROTOCOL_VERSION};
use hopwire_proto::sync::lock;
use hopwire_proto::time::unix_now;
use hopwire_proto::wg::WgSession;

use crate::lookups::{self, Lookups};
use crate::platform::{Platform, PlatformError, TunnelConfig};
use crate::settings::{SettingsError, SettingsState};
use crate::tunnel::{CellCount, ClientError, Payments, Traffic, Tunnel};
use crate::wallet::{SessionRecord, Wallet, WalletError};

/// Connect sessions the wallet lists, newest first.
const SESSIONS_SHOWN: usize = 20;
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Paths tried, each around the node that failed before, per (re)build.
const BUILD_ATTEMPTS: usize = 4;
/// Events a subscriber may fall behind by before it is dropped.
pub const EVENT_BACKLOG: usize = 256;

/// Where the client keeps what must survive a reboot, and whom it talks to.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Wallet key and store, guard choice, DHT peers.
    pub state_dir: PathBuf,
    /// DHT peers to join through (`/ip4/…/tcp/…/p2p/…`).
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// The ledger hops are paid on; `None`: only free nodes can be used.
    pub ledger: Option<LedgerAddr>,
    /// Each channel's deposit, in MiB at the hop's price.
    pub deposit_mib: u64,
}

impl ClientConfig {
    pub fn guard_file(&self) -> PathBuf {
        self.state_dir.join("guard")
    }

    pub fn dht_store(&self) -> PathBuf {
        self.state_dir.join("dht-peers")
    }
}

/// What a connect asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `hopwire1.` node records to build from; empty: ask the DHT.
    pub records: Vec<String>,
    pub hops: u8,
    /// Only exits in this country (ISO code).
    pub country: Option<String>,
    /// Only nodes that charge at most this per GiB.
    pub max_price: Option<u64>,
}

/// Why the runtime could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NoExit(String),
    #[error("{message}")]
    Build { kind: ErrorKind, message: String },
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error("this client has no wallet: it was started without a ledger to pay on (the daemon's --ledger, a session's ledger)")]
    NoWallet,
    #[error("discovery: {0}")]
    Dht(#[from] DhtError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// What a program should make of it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BadInput(_) => ErrorKind::BadInput,
            Error::NoExit(_) => ErrorKind::NoExit,
            Error::Build { kind, .. } => *kind,
            Error::Platform(_) => ErrorKind::Platform,
            Error::Wallet(e) => e.kind(),
            Error::NoWallet => ErrorKind::Config,
            Error::Settings(SettingsError::BadDns(_)) => ErrorKind::BadInput,
            Error::Dht(_) | Error::StateDir { .. } | Error::Settings(_) => ErrorKind::Internal,
        }
    }
}

/// The kind of a failed path choice: no exit, or no relay to go with it.
fn path_kind(e: &PathError) -> ErrorKind {
    match e {
        PathError::Hops(_) => ErrorKind::BadInput,
        PathError::NoExit(_) => ErrorKind::NoExit,
        PathError::NoRelay(_) => ErrorKind::HopUnreachable,
    }
}

/// What a connect asked for: the candidates and the path rules.
#[derive(Debug, Clone)]
struct Plan {
    candidates: Vec<VerifiedRecord>,
    hops: usize,
    country: Option<String>,
}

impl Plan {
    fn new(candidates: Vec<VerifiedRecord>, hops: u8, country: Option<String>) -> Result<Self, Error> {
        let hops = usize::from(hops);
        if hops == 0 || hops > MAX_HOPS {
            return Err(Error::BadInput(format!("hops must be 1 to {MAX_HOPS}, not {hops}")));
        }
        Ok(Self {
            candidates,
            hops,
            country,
        })
    }

    /// Checks given records: every one must verify.
    fn from_records(records: &[String], hops: u8, country: Option<String>) -> Result<Self, Error> {
        let candidates = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.parse::<VerifiedRecord>()
                    .map_err(|e| Error::BadInput(format!("record {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(candidates, hops, country)
    }

    /// Drops the nodes that charge more than `max` per GiB.
    fn within_price(mut self, max: Option<u64>) -> Result<Self, Error> {
        let Some(max) = max else { return Ok(self) };
        let is_exit = |r: &VerifiedRecord| r.record().roles.contains(&Role::Exit);
        let cheapest_exit = self
            .candidates
            .iter()
            .filter(|r| is_exit(r))
            .map(|r| r.record().quote.price_per_gib)
            .min();
        self.candidates.retain(|r| r.record().quote.price_per_gib <= max);
        if !self.candidates.iter().any(is_exit) {
            return Err(Error::NoExit(format!(
                "no exit charges {max} per GiB or less{}",
                cheapest_exit
                    .map(|c| format!(" (the cheapest asks {c})"))
                    .unwrap_or_default()
            )));
        }
        Ok(self)
    }

    /// Whether any candidate charges.
    fn charges(&self) -> bool {
        self.candidates.iter().any(|r| !r.record().quote.is_free())
    }

    /// Drops the nodes that charge on another ledger than `domain` (the
    /// client could not pay them) or name no account to pay.
    fn payable_on(mut self, domain: &str) -> Result<Self, Error> {
        let payable = |r: &VerifiedRecord| {
            let rec = r.record();
            rec.quote.is_free() || (rec.ledger == domain && rec.payout != [0; 32])
        };
        let is_exit = |r: &VerifiedRecord| r.record().roles.contains(&Role::Exit);
        let mut elsewhere: Vec<String> = self
            .candidates
            .iter()
            .filter(|r| is_exit(r) && !payable(r))
            .map(|r| format!("`{}`", r.record().ledger))
            .collect();
        elsewhere.sort();
        elsewhere.dedup();
        self.candidates.retain(payable);
        if !self.candidates.iter().any(is_exit) {
            return Err(Error::NoExit(format!(
                "no exit is paid on this client's ledger `{domain}`{}",
                if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(" (the exits found are paid on {})", elsewhere.join(", "))
                }
            )));
        }
        Ok(self)
    }
}

/// The WireGuard session with one exit, kept across circuits to it.
struct ExitSession {
    exit: [u8; 32],
    wg: Arc<Mutex<WgSession>>,
}

struct Active {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// The client runtime. Cheap to clone: clones share one tunnel.
pub struct Client<P: Platform> {
    shared: Arc<Shared<P>>,
    /// Serializes connect and disconnect.
    active: Arc<tokio::sync::Mutex<Option<Active>>>,
    /// Counts connects and disconnects asked for: a connect still finding
    /// nodes gives way to any asked after it.
    asked: Arc<watch::Sender<u64>>,
}

impl<P: Platform> Clone for Client<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            active: self.active.clone(),
            asked: self.asked.clone(),
        }
    }
}

impl<P: Platform> std::fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// What the tunnel task and the request handlers share.
struct Shared<P> {
    platform: Arc<P>,
    config: ClientConfig,
    lookups: Lookups,
    wallet: Option<Arc<Wallet>>,
    wg_secret: x25519::StaticSecret,
    status: Mutex<Status>,
    /// The state the platform was last told, for a settings change.
    state: Mutex<TunnelState>,
    settings: Mutex<SettingsState>,
    events: broadcast::Sender<Event>,
}

impl<P: Platform> Client<P> {
    /// Starts the runtime: opens the state directory, the settings and the
    /// wallet, and tells the platform the settings in force while
    /// disconnected (with lockdown, its firewall blocks from now on).
    pub fn start(platform: P, config: ClientConfig) -> Result<Self, Error> {
        create_private_dir(&config.state_dir)?;
        let platform = Arc::new(platform);
        let p = platform.clone();
        let protect = Protect::new(move |fd, peer| p.protect(fd, peer).map_err(std::io::Error::other));
        let wallet = match config.ledger {
            Some(ledger) => {
                let wallet = Wallet::open(&config.state_dir, ledger, config.deposit_mib, protect.clone())?;
                info!(account = %Sensitive(record::short_id(&wallet.account())), "wallet ready");
                Some(Arc::new(wallet))
            }
            None => None,
        };
        let mut dht_config = lookups::client_config();
        dht_config.bootstrap = config.bootstrap.clone();
        dht_config.peer_store = Some(config.dht_store());
        let lookups = Lookups::new(dht_config, protect);
        let mut settings = SettingsState::load(&config.state_dir);
        settings.hold_for_host(platform.recover().err().map(|e| {
            tracing::error!("{e}");
            e.to_string()
        }));
        platform.on_state(&TunnelState::Disconnected, &settings.effective())?;
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Ok(Self {
            shared: Arc::new(Shared {
                platform,
                config,
                lookups,
                wallet,
                wg_secret: x25519::StaticSecret::from(secret),
                status: Mutex::default(),
                state: Mutex::default(),
                settings: Mutex::new(settings),
                events,
            }),
            active: Arc::new(tokio::sync::Mutex::new(None)),
            asked: Arc::new(watch::Sender::new(0)),
        })
    }

    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        lock(&self.shared.settings).effective()
    }

    /// Changes and persists the settings, and applies lockdown and LAN
    /// access at once; DNS and IPv6 apply from the next circuit on.
    pub fn change_settings(&self, change: &SettingsChange) -> Result<Settings, Error> {
        let settings = lock(&self.shared.settings).change(change)?;
        info!(?settings, "settings changed");
        self.shared.reapply();
        let fail_closed = lock(&self.shared.settings).fail_closed();
        self.shared.publish(Event::Settings {
            settings: settings.clone(),
            fail_closed,
        });
        Ok(settings)
    }

    /// Events from now on; see [`EVENT_BACKLOG`] for how far a receiver
    /// may fall behind.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    pub fn platform(&self) -> &P {
        &self.shared.platform
    }

    /// Connects as asked, replacing any tunnel up now. Returns once the
    /// first circuit is up (or connecting failed: the state is then Error).
    /// A disconnect or another connect asked while this one still finds
    /// nodes wins: this one then returns at once, with the status that one
    /// leaves, and builds nothing.
    pub async fn connect(&self, request: ConnectRequest) -> Result<Status, Error> {
        let ticket = self.ask();
        let mut asked = self.asked.subscribe();
        let superseded = asked.wait_for(|&now| now != ticket);
        let country = country_code(request.country.as_deref());
        let plan = async {
            if request.records.is_empty() {
                self.shared.discover_plan(request.hops, country).await
            } else {
                Plan::from_records(&request.records, request.hops, country)
            }
        };
        let plan = tokio::select! {
            plan = plan => plan,
            _ = superseded => {
                info!("a connect gave way to a later request while it was finding nodes");
                return Ok(self.status());
            }
        };
        let plan = plan.and_then(|p| p.within_price(request.max_price))?;
        let mut active = self.active.lock().await;
        if *self.asked.borrow() != ticket {
            return Ok(self.status());
        }
        stop(active.take()).await;
        match self.shared.clone().connect(plan).await {
            Ok(a) => {
                *active = Some(a);
                Ok(self.status())
            }
            Err(e) => {
                self.shared.transition(TunnelState::Error {
                    kind: e.kind(),
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Takes the tunnel down and undoes what the platform set up; a connect
    /// still finding nodes gives up.
    pub async fn disconnect(&self) -> Status {
        self.ask();
        let mut active = self.active.lock().await;
        stop(active.take()).await;
        self.shared.transition(TunnelState::Disconnected);
        self.status()
    }

    /// Counts one more connect or disconnect asked; returns its number.
    fn ask(&self) -> u64 {
        let mut ticket = 0;
        self.asked.send_modify(|n| {
            *n += 1;
            ticket = *n;
        });
        ticket
    }

    /// The nodes the DHT knows, of one role or country if asked.
    pub async fn nodes(&self, role: Option<Role>, country: Option<&str>) -> Result<Vec<NodeInfo>, Error> {
        let country = country_code(country);
        self.shared.discover_nodes(role, country.as_deref()).await
    }

    /// The wallet; with `close`, first starts closing every channel no
    /// circuit uses. Deposits past their challenge period come back.
    pub async fn wallet(&self, close: bool) -> Result<WalletInfo, Error> {
        let (Some(w), Some(ledger)) = (&self.shared.wallet, self.shared.config.ledger) else {
            return Err(Error::NoWallet);
        };
        if close {
            let n = w.close_idle().await;
            info!(channels = n, "closing the wallet's idle channels");
        }
        w.reclaim().await;
        let (balance, ledger_error) = match w.balance().await {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let channels = w.channels();
        if close {
            self.shared.publish(Event::Wallet {
                channels: channels.clone(),
            });
        }
        Ok(WalletInfo {
            account: w.account_text(),
            ledger: ledger.to_string(),
            balance,
            ledger_error,
            channels,
            sessions: w.sessions(SESSIONS_SHOWN),
        })
    }

    /// Disconnects; for the host's shutdown.
    pub async fn shutdown(&self) {
        self.ask();
        stop(self.active.lock().await.take()).await;
        self.shared.transition(TunnelState::Disconnected);
    }
}

/// A country as asked (`" de "`) as regions are written (`"DE"`); blank
/// means any.
fn country_code(asked: Option<&str>) -> Option<String> {
    asked.map(|c| c.trim().to_ascii_uppercase()).filter(|c| !c.is_empty())
}

async fn stop(active: Option<Active>) {
    if let Some(a) = active {
        let _ = a.stop.send(());
        let _ = a.task.await;
    }
}

/// Creates `dir` (mode 0700) if it is not there.
fn create_private_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::StateDir {
            path: dir.to_owned(),
            source,
        })
}

fn hop_info(r: &VerifiedRecord) -> HopInfo {
    HopInfo {
        id: r.short_id(),
        addr: r.record().quic_addr,
        region: r.record().region.clone(),
    }
}

impl<P: Platform> Shared<P> {
    /// The one place the tunnel's state changes: tells the platform first
    /// (its firewall follows the state), then updates the status and tells
    /// subscribers. A platform that cannot follow is logged here; connect
    /// asks [`Platform::on_state`] itself so that it can refuse.
    fn transition(&self, to: TunnelState) {
        let settings = lock(&self.settings).effective();
        if let Err(e) = self.platform.on_state(&to, &settings) {
            warn!("{e}");
        }
        *lock(&self.state) = to.clone();
        {
            let mut s = lock(&self.status);
            let from = s.state;
            match &to {
                TunnelState::Disconnected => *s = Status::default(),
                TunnelState::Connecting => {
                    *s = Status {
                        state: State::Connecting,
                        ..Status::default()
                    }
                }
                TunnelState::Connected => {
                    s.error = None;
                    s.attempt = None;
                }
                TunnelState::Reconnecting { reason, attempt } => {
                    s.error = Some(reason.clone());
                    s.attempt = Some(*attempt);
                    s.circuit.clear();
                    s.exit = None;
                    s.build_ms = None;
                    s.tx_bps = 0;
                    s.rx_bps = 0;
                    s.rtt_ms = None;
                }
                TunnelState::Error { kind, message } => {
                    *s = Status::default();
                    s.error = Some(message.clone());
                    s.error_kind = Some(*kind);
                }
            }
            if !matches!(to, TunnelState::Error { .. }) {
                s.error_kind = None;
            }
            s.state = to.state();
            debug!(%from, to = %s.state, "tunnel state");
        }
        self.publish(Event::State { state: to });
    }

    /// Tells the platform the settings in force now, in the same state.
    fn reapply(&self) {
        let settings = lock(&self.settings).effective();
        let state = lock(&self.state).clone();
        if let Err(e) = self.platform.on_state(&state, &settings) {
            warn!("{e}");
        }
    }

    fn status(&self) -> Status {
        let mut status = lock(&self.status).clone();
        let settings = lock(&self.settings);
        status.settings = settings.effective();
        status.fail_closed = settings.fail_closed();
        status
    }

    fn publish(&self, event: Event) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }

    /// Looks up the nodes that provide `key` in the DHT.
    async fn find(&self, key: libp2p::kad::RecordKey, search: dht::Search) -> Result<Vec<dht::Found>, Error> {
        let (found, stats) = self.lookups.find(key, search).await?;
        debug!(
            found = found.len(),
            requests = stats.requests,
            ms = stats.duration.as_millis() as u64,
            "DHT lookup"
        );
        Ok(found)
    }

    /// Candidates for a circuit from the DHT: exits (of `country`), and
    /// relays if the circuit has more than one hop.
    async fn discover_plan(&self, hops: u8, country: Option<String>) -> Result<Plan, Error> {
        Plan::new(Vec::new(), hops, None)?;
        let exits = match &country {
            Some(cc) => dht::region_key(cc),
            None => dht::role_key(Role::Exit),
        };
        // A path needs a choice of nodes, not every one of them.
        let mut candidates: Vec<VerifiedRecord> = self
            .find(exits, dht::Search::Enough)
            .await?
            .into_iter()
            .map(|f| f.record)
            .collect();
        if candidates.is_empty() {
            return Err(Error::NoExit(format!(
                "the DHT knows no exit{}: are the bootstrap peers right (the daemon's --bootstrap, a session's bootstrap), and are nodes up?",
                country.as_ref().map(|c| format!(" in {c}")).unwrap_or_default()
            )));
        }
        if hops > 1 {
            let relays = self.find(dht::role_key(Role::Relay), dht::Search::Enough).await?;
            candidates.extend(relays.into_iter().map(|f| f.record));
        }
        Plan::new(candidates, hops, country)
    }

    async fn discover_nodes(&self, role: Option<Role>, country: Option<&str>) -> Result<Vec<NodeInfo>, Error> {
        let keys = match (role, country) {
            (_, Some(cc)) => vec![dht::region_key(cc)],
            (Some(r), None) => vec![dht::role_key(r)],
            (None, None) => vec![dht::role_key(Role::Exit), dht::role_key(Role::Relay)],
        };
        let now = unix_now();
        let mut nodes: Vec<NodeInfo> = Vec::new();
        for key in keys {
            for f in self.find(key, dht::Search::All).await? {
                let r = f.record.record();
                if nodes.iter().any(|n| n.id == f.record.short_id()) {
                    continue;
                }
                nodes.push(NodeInfo {
                    id: f.record.short_id(),
                    roles: r.roles.clone(),
                    region: r.region.clone(),
                    addr: r.quic_addr,
                    capacity_mbit: r.capacity_mbit,
                    price_per_gib: r.quote.price_per_gib,
                    rtt_ms: f.rtt.map(|d| (d.as_secs_f64() * 100_000.0).round() / 100.0),
                    age_s: now.saturating_sub(r.issued_at),
                });
            }
        }
        nodes.sort_by(|a, b| a.region.cmp(&b.region).then(a.id.cmp(&b.id)));
        Ok(nodes)
    }

    fn saved_guard(&self) -> Option<[u8; 32]> {
        let text = std::fs::read_to_string(self.config.guard_file()).ok()?;
        record::parse_identity(&text)
    }

    fn save_guard(&self, tunnel: &Tunnel) {
        if tunnel.path.len() < 2 {
            return;
        }
        let hex = record::hex(&tunnel.path[0].record().identity);
        if let Err(e) = std::fs::write(self.config.guard_file(), hex + "\n") {
            warn!("remembering the guard in {}: {e}", self.config.guard_file().display());
        }
    }

    /// Picks a path and builds a circuit, trying other nodes when one
    /// fails. `session` keeps the session's exit when it can.
    async fn build(
        &self,
        plan: &Plan,
        avoid: &mut Vec<[u8; 32]>,
        session: &mut Option<ExitSession>,
        previous_addr: Option<Ipv4Addr>,
    ) -> Result<Tunnel, Error> {
        let mut last: Option<ClientError> = None;
        let failed = |last: Option<ClientError>, e: PathError| match last {
            None => Error::Build {
                kind: path_kind(&e),
                message: e.to_string(),
            },
            Some(last) => Error::Build {
                kind: last.kind(),
                message: format!("{last}; no other path: {e}"),
            },
        };
        for _ in 0..BUILD_ATTEMPTS {
            let mut request = PathRequest {
                hops: plan.hops,
                country: plan.country.clone(),
                exit: session.as_ref().map(|s| s.exit),
                guard: self.saved_guard(),
                avoid: avoid.clone(),
            };
            let now = unix_now();
            let path = match path::select(&mut rand::thread_rng(), &plan.candidates, &request, now) {
                Ok(p) => p,
                Err(_) if request.exit.is_some() => {
                    // The old exit does not fit any more: any exit will do.
                    request.exit = None;
                    match path::select(&mut rand::thread_rng(), &plan.candidates, &request, now) {
                        Ok(p) => p,
                        Err(e) => return Err(failed(last, e)),
                    }
                }
                Err(e) => return Err(failed(last, e)),
            };
            let exit = path[path.len() - 1].record();
            if session.as_ref().is_none_or(|s| s.exit != exit.identity) {
                let index = rand::thread_rng().gen::<u32>();
                let wg = WgSession::new(
                    self.wg_secret.clone(),
                    x25519::PublicKey::from(exit.wg_key),
                    index,
                    Some(25),
                );
                *session = Some(ExitSession {
                    exit: exit.identity,
                    wg: Arc::new(Mutex::new(wg)),
                });
            }
            let hello = ClientHello {
                version: PROTOCOL_VERSION,
                wg_key: *x25519::PublicKey::from(&self.wg_secret).as_bytes(),
                previous_addr,
            };
            let names: Vec<String> = path.iter().map(VerifiedRecord::short_id).collect();
            info!(path = %names.join(" → "), "building circuit");
            match Tunnel::build(&*self.platform, &path, &hello, self.wallet.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    warn!("circuit failed: {e}");
                    let culprit = e.culprit();
                    let kind = e.kind();
                    let message = e.to_string();
                    last = Some(e);
                    match culprit {
                        Some(c) if !avoid.contains(&c) => avoid.push(c),
                        _ => return Err(Error::Build { kind, message }),
                    }
                }
            }
        }
        Err(match last {
            Some(e) => Error::Build {
                kind: e.kind(),
                message: e.to_string(),
            },
            None => Error::Build {
                kind: ErrorKind::Internal,
                message: "no circuit was tried".into(),
            },
        })
    }

    /// What the host sets up for `tunnel`.
    /// What the host sets up for `tunnel` under the settings in force:
    /// the user's resolvers over the exit's, IPv6 only if both the exit
    /// and the settings have it.
    fn tunnel_config(&self, tunnel: &Tunnel) -> TunnelConfig {
        let settings = lock(&self.settings).effective();
        let mut bypass = vec![tunnel.path[0].record().quic_addr.ip()];
        bypass.extend(self.config.ledger.map(|l| l.socket().ip()));
        let dns = if settings.dns.is_empty() {
            tunnel.params.dns.iter().copied().map(IpAddr::V4).collect()
        } else {
            settings.dns.clone()
        };
        TunnelConfig {
            inner_v4: tunnel.params.inner_addr,
            inner_v6: tunnel.params.inner_v6.filter(|_| settings.ipv6),
            mtu: tunnel.mtu,
            dns,
            bypass,
        }
    }

    fn show_circuit(&self, tunnel: &Tunnel, config: &TunnelConfig) {
        let circuit: Vec<HopInfo> = tunnel.path.iter().map(hop_info).collect();
        let build_ms = (tunnel.build_time.as_secs_f64() * 100_000.0).round() / 100.0;
        let ipv6_blocked = match (config.inner_v6, tunnel.params.inner_v6) {
            (Some(_), _) => None,
            (None, Some(_)) => Some("IPv6 is off in the settings: blocked".to_owned()),
            (None, None) => Some("the exit does not carry IPv6: blocked".to_owned()),
        };
        self.update(|s| {
            s.exit = circuit.last().cloned();
            s.circuit = circuit.clone();
            s.inner_addr = Some(tunnel.params.inner_addr);
            s.inner_v6 = config.inner_v6;
            s.ipv6_blocked.clone_from(&ipv6_blocked);
            s.mtu = Some(tunnel.mtu);
            s.build_ms = Some(build_ms);
        });
        // The new path first, so no watcher shows the old one as current.
        self.publish(Event::Circuit {
            circuit,
            build_ms,
            inner_addr: tunnel.params.inner_addr,
            inner_v6: config.inner_v6,
            ipv6_blocked,
            mtu: tunnel.mtu,
        });
        self.transition(TunnelState::Connected);
        if let Some(w) = &self.wallet {
            self.publish(Event::Wallet { channels: w.channels() });
        }
    }

    /// Builds the first circuit, then asks the platform for the interface.
    /// Nothing on the system changes unless the circuit came up.
    async fn connect(self: Arc<Self>, plan: Plan) -> Result<Active, Error> {
        // Block before the first packet of the connect leaves.
        let settings = lock(&self.settings).effective();
        self.platform.on_state(&TunnelState::Connecting, &settings)?;
        self.transition(TunnelState::Connecting);
        // Only hops paid on the wallet's ledger can be paid.
        let plan = match &self.wallet {
            Some(wallet) if plan.charges() => plan.payable_on(&wallet.domain().await?)?,
            _ => plan,
        };
        // The DHT instance that found the nodes goes before any of them
        // sees the circuit; none runs until the tunnel's side is settled.
        let hold = self.lookups.hold().await;
        let mut avoid = Vec::new();
        let mut session = None;
        let tunnel = self.build(&plan, &mut avoid, &mut session, None).await?;
        let Some(session) = session else {
            return Err(Error::Build {
                kind: ErrorKind::Internal,
                message: "a circuit was built without an exit session".into(),
            });
        };
        let config = self.tunnel_config(&tunnel);
        let io = match self.platform.establish(&config) {
            Ok(io) => {
                self.lookups.set_around(&config.bypass);
                hold.tunnel_up(true);
                drop(hold);
                // The host knows its state again.
                lock(&self.settings).hold_for_host(None);
                io
            }
            Err(e) => {
                self.platform.teardown();
                tunnel.close().await;
                return Err(e.into());
            }
        };
        self.save_guard(&tunnel);
        self.show_circuit(&tunnel, &config);
        info!(
            mtu = tunnel.mtu,
            build_ms = tunnel.build_time.as_millis() as u64,
            inner = %Sensitive(tunnel.params.inner_addr),
            "connected"
        );
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = self.clone();
        let task = tokio::spawn(async move { shared.run(plan, tunnel, session, io, stop_rx).await });
        Ok(Active { stop: stop_tx, task })
    }

    /// Keeps the tunnel up until told to stop, building a new circuit
    /// (around the node that failed) when one dies; then tears the
    /// platform's interface down.
    async fn run(
        self: Arc<Self>,
        plan: Plan,
        first: Tunnel,
        session: ExitSession,
        mut io: Arc<P::Io>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let traffic = Arc::new(Traffic::default());
        let mut tunnel = first;
        let mut session = Some(session);
        let started_at = unix_now();
        // Paid to each hop (short id) on the circuits before the current one.
        let mut spent: BTreeMap<String, u64> = BTreeMap::new();
        'session: loop {
            let wg = match &session {
                Some(s) => s.wg.clone(),
                None => break 'session,
            };
            let first_link = tunnel.first_link();
            let tunnel_payments = tunnel.payments.clone();
            let paying = (tunnel.payments.clone(), tunnel.cells.clone(), tunnel.path.len());
            let loss = tokio::select! {
                loss = tunnel.pump(io.clone(), wg, traffic.clone()) => loss,
                () = self.sample(first_link, &traffic, &paying, spent.values().sum()) => unreachable!("sampling never ends"),
                _ = &mut stop => {
                    tunnel.close().await;
                    self.release_channels(&tunnel_payments, &mut spent).await;
                    break 'session;
                }
            };
            warn!("circuit lost: {}", loss.reason);
            self.release_channels(&tunnel_payments, &mut spent).await;
            let mut attempt = 1;
            self.transition(TunnelState::Reconnecting {
                reason: format!("{}; building a new circuit", loss.reason),
                attempt,
            });
            let previous = tunnel.params.clone();
            let mut avoid: Vec<[u8; 32]> = loss.culprit.into_iter().collect();
            if loss.culprit == session.as_ref().map(|s| s.exit) {
                session = None;
            }
            let mut backoff = RECONNECT_FIRST;
            let config;
            (tunnel, config) = loop {
                let failure = match self
                    .build(&plan, &mut avoid, &mut session, Some(previous.inner_addr))
                    .await
                {
                    Ok(new) => {
                        let config = self.tunnel_config(&new);
                        match self.platform.reconfigure(&config) {
                            Ok(new_io) => {
                                if let Some(new_io) = new_io {
                                    io = new_io;
                                }
                                self.lookups.set_around(&config.bypass);
                                break (new, config);
                            }
                            Err(e) => {
                                new.close().await;
                                format!("{e}; retrying")
                            }
                        }
                    }
                    Err(e) => {
                        // Every node may be worth a second try later.
                        avoid.clear();
                        format!("{}; then: {e}; retrying", loss.reason)
                    }
                };
                attempt += 1;
                self.transition(TunnelState::Reconnecting {
                    reason: failure,
                    attempt,
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => break 'session,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            };
            info!(attempt, "new circuit up");
            self.show_circuit(&tunnel, &config);
        }
        self.platform.teardown();
        drop(io);
        // Lookups from now on go around the tunnel, from a new instance.
        self.lookups.hold().await.tunnel_up(false);
        if let (Some(wallet), false) = (&self.wallet, spent.is_empty()) {
            wallet.record_session(SessionRecord {
                started_at,
                ended_at: unix_now(),
                spent: spent.values().sum(),
                hops: spent,
            });
            self.publish(Event::Wallet {
                channels: wallet.channels(),
            });
        }
        info!("disconnected");
    }

    /// Gives a finished circuit's channels back to the wallet for the next
    /// circuit through the same hops, and adds what it paid each hop to
    /// `spent`.
    async fn release_channels(&self, payments: &Payments, spent: &mut BTreeMap<String, u64>) {
        let ids: Vec<[u8; 32]> = {
            let payments = lock(payments);
            for p in payments.iter() {
                *spent.entry(p.record.short_id()).or_default() += p.acked;
            }
            payments.iter().map(|p| p.channel.channel()).collect()
        };
        if let (Some(wallet), false) = (&self.wallet, ids.is_empty()) {
            wallet.release(ids).await;
        }
    }

    /// Publishes throughput, round-trip time and payments once a second.
    async fn sample(
        &self,
        link: quinn::Connection,
        traffic: &Traffic,
        (payments, cells, hops): &(Payments, Arc<CellCount>, usize),
        spent_before: u64,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = (
            traffic.sent.load(Ordering::Relaxed),
            traffic.received.load(Ordering::Relaxed),
        );
        loop {
            tick.tick().await;
            let now = (
                traffic.sent.load(Ordering::Relaxed),
                traffic.received.load(Ordering::Relaxed),
            );
            let rtt = (link.rtt().as_secs_f64() * 100_000.0).round() / 100.0;
            let (hops, payment_error) = {
                let payments = lock(payments);
                let hops: Vec<HopPayment> = payments
                    .iter()
                    .map(|p| HopPayment {
                        id: p.record.short_id(),
                        price_per_gib: p.record.record().quote.price_per_gib,
                        paid: p.acked,
                        bytes: cells.at_hop(p.hop, *hops).saturating_add(p.lost),
                        lost: p.lost,
                        ahead: p.channel.paid_ahead(),
                    })
                    .collect();
                (hops, payments.iter().find_map(|p| p.error.clone()))
            };
            let spent = spent_before + hops.iter().map(|h| h.paid).sum::<u64>();
            let (tx_bps, rx_bps) = ((now.0 - last.0) * 8, (now.1 - last.1) * 8);
            self.update(|s| {
                s.spent = spent;
                s.payment_bytes = cells.payment_bytes.load(Ordering::Relaxed);
                s.payments = hops.clone();
                if payment_error.is_some() {
                    s.error = payment_error;
                }
                s.bytes_sent = now.0;
                s.bytes_received = now.1;
                s.tx_bps = tx_bps;
                s.rx_bps = rx_bps;
                s.rtt_ms = Some(rtt);
            });
            self.publish(Event::Traffic {
                bytes_sent: now.0,
                bytes_received: now.1,
                tx_bps,
                rx_bps,
                rtt_ms: Some(rtt),
                payments: hops,
                spent,
            });
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use hopwire_proto::pay::Quote;
    use hopwire_proto::testkit;

    const EVM: &str = "eip155:31337:0x5FbDB2315678afecb367f032d93F642f64180aa3";

    /// A node charging on `ledger` (empty and free: charging nothing).
    fn node(seed: u8, roles: &[Role], ledger: &str) -> VerifiedRecord {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let addr = format!("198.18.{seed}.2:4433");
        let charges = !ledger.is_empty();
        let record = record::NodeRecord {
            quote: Quote {
                price_per_gib: if charges { 1000 } else { 0 },
                ..Quote::FREE
            },
            ledger: ledger.into(),
            payout: if charges { [seed; 32] } else { [0; 32] },
            ..testkit::record(&key, &addr, roles, "DE", unix_now())
        };
        testkit::verified(&key, &record)
    }

    fn plan(nodes: Vec<VerifiedRecord>) -> Plan {
        Plan::new(nodes, 2, None).expect("plan")
    }

    #[test]
    fn hops_paid_on_another_ledger_are_dropped_and_without_an_exit_the_error_says_where() {
        let mixed = plan(vec![
            node(1, &[Role::Exit], EVM),
            node(2, &[Role::Exit], "testnet"),
            node(3, &[Role::Relay], "testnet"),
            node(4, &[Role::Relay], ""),
        ]);
        assert!(mixed.charges());
        let kept = mixed.clone().payable_on(EVM).expect("an exit paid on the chain");
        let ids: Vec<u8> = kept.candidates.iter().map(|r| r.record().identity[0]).collect();
        assert_eq!(kept.candidates.len(), 2, "the chain's exit and the free relay: {ids:?}");
        assert!(kept.candidates.iter().all(|r| {
            let rec = r.record();
            rec.quote.is_free() || rec.ledger == EVM
        }));
        match mixed.payable_on("other") {
            Err(Error::NoExit(message)) => {
                assert!(message.contains("`other`"), "{message}");
                assert!(message.contains(EVM) && message.contains("`testnet`"), "{message}");
            }
            other => panic!("expected no exit, got {other:?}"),
        }
        // A charging node that names no account to pay is not payable.
        let mut nameless = node(5, &[Role::Exit], "testnet");
        let rec = nameless.record().clone();
        let key = SigningKey::from_bytes(&[5; 32]);
        nameless = testkit::verified(&key, &record::NodeRecord { payout: [0; 32], ..rec });
        assert!(matches!(
            plan(vec![nameless]).payable_on("testnet"),
            Err(Error::NoExit(_))
        ));
    }
}
