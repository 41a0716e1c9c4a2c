//! The privileged client daemon: owns the TUN device, routes and DNS, and
//! serves the local API ([`crate::api`]) on a Unix socket.
//!
//! States: disconnected → connecting → connected; a lost circuit puts it in
//! error with the reason while it builds a new one around the node that
//! failed. The TUN device and the routes stay up while no circuit is, so
//! traffic is held back, never sent around the tunnel. Disconnecting removes exactly what was
//! added. A crashed daemon's changes are undone at the next start from the
//! state file.
//!
//! What it does not do: parse the command line (the `hopwire` binary does),
//! choose paths (see [`crate::path`]) or move packets (see [`crate::client`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boringtun::x25519;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use rand::Rng;

use crate::api::{HopInfo, HopPayment, NodeInfo, Request, Response, State, Status, WalletInfo, MAX_LINE};
use crate::client::{CellCount, Payments, Traffic, Tunnel};
use crate::dht::{self, Dht, DhtConfig, Transport};
use crate::onion::cell::MAX_HOPS;
use crate::path::{self, PathRequest};
use crate::record::Role;
use crate::record::VerifiedRecord;
use crate::session::{ClientHello, SessionParams, PROTOCOL_VERSION};
use crate::sync::lock;
use crate::sys::{self, ClientNet};
use crate::tun::{self, TunDevice};
use crate::wallet::Wallet;
use crate::wg::WgSession;

/// Connect sessions `hopwire wallet` lists, newest first.
const SESSIONS_SHOWN: usize = 20;

const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Paths tried, each around the node that failed before, per (re)build.
const BUILD_ATTEMPTS: usize = 4;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); `None` means root only.
    pub group: Option<String>,
    pub tun_name: String,
    /// The resolver file to point at the tunnel's DNS while connected.
    pub resolv_conf: PathBuf,
    /// Where the daemon records what it changed on the system.
    pub state_file: PathBuf,
    /// Where the daemon remembers its guard across sessions.
    pub guard_file: PathBuf,
    /// DHT peers to join through (`/ip4/…/tcp/…/p2p/…`).
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Where DHT peers learned are kept across restarts.
    pub dht_store: PathBuf,
    /// The ledger hops are paid on; `None`: only free nodes can be used.
    pub ledger: Option<SocketAddr>,
    /// Each channel's deposit, in MiB at the hop's price.
    pub deposit_mib: u64,
    /// Where the wallet (account key, channels) is kept.
    pub wallet_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another hopwire daemon is already serving {0}; stop it first")]
    AlreadyRunning(PathBuf),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("group `{0}` does not exist (see /etc/group)")]
    NoSuchGroup(String),
    #[error("starting the DHT: {0}")]
    Dht(String),
    #[error("opening the wallet: {0}")]
    Wallet(String),
}

struct Active {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// What a connect asked for: the candidates and the path rules.
#[derive(Debug, Clone)]
struct Plan {
    candidates: Vec<VerifiedRecord>,
    hops: usize,
    country: Option<String>,
}

impl Plan {
    fn new(candidates: Vec<VerifiedRecord>, hops: u8, country: Option<String>) -> Result<Self, String> {
        let hops = usize::from(hops);
        if hops == 0 || hops > MAX_HOPS {
            return Err(format!("--hops must be 1 to {MAX_HOPS}, not {hops}"));
        }
        Ok(Self {
            candidates,
            hops,
            country,
        })
    }

    /// Drops the nodes that charge more than `max` per GiB.
    fn within_price(mut self, max: Option<u64>) -> Result<Self, String> {
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
            return Err(format!(
                "no exit charges {max} per GiB or less{}",
                cheapest_exit
                    .map(|c| format!(" (the cheapest asks {c})"))
                    .unwrap_or_default()
            ));
        }
        Ok(self)
    }
}

struct Daemon {
    config: DaemonConfig,
    dht: Dht,
    wg_secret: x25519::StaticSecret,
    status: Mutex<Status>,
    /// Serializes connect and disconnect.
    active: tokio::sync::Mutex<Option<Active>>,
    wallet: Option<Arc<Wallet>>,
}

fn hop_info(r: &VerifiedRecord) -> HopInfo {
    HopInfo {
        id: r.short_id(),
        addr: r.record().quic_addr,
        region: r.record().region.clone(),
    }
}

/// The WireGuard session with one exit, kept across circuits to it.
struct ExitSession {
    exit: [u8; 32],
    wg: Arc<Mutex<WgSession>>,
}

impl Daemon {
    fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }

    fn fail(&self, message: String) -> Response {
        self.update(|s| {
            s.state = State::Error;
            s.error = Some(message.clone());
        });
        Response::Error {
            message,
            status: self.status(),
        }
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Response {
        match request {
            Request::Status => Response::Ok { status: self.status() },
            Request::Nodes { role, country } => match self.discover_nodes(role, country.as_deref()).await {
                Ok(nodes) => Response::Nodes { nodes },
                Err(message) => Response::Error {
                    message,
                    status: self.status(),
                },
            },
            Request::Wallet { close } => match &self.wallet {
                Some(w) => {
                    if close {
                        let n = w.close_idle().await;
                        info!(channels = n, "closing the wallet's idle channels");
                    }
                    w.reclaim().await;
                    let (balance, ledger_error) = match w.balance().await {
                        Ok(b) => (Some(b), None),
                        Err(e) => (None, Some(e)),
                    };
                    Response::Wallet {
                        wallet: WalletInfo {
                            account: crate::record::hex(&w.account()),
                            ledger: self
                                .config
                                .ledger
                                .unwrap_or_else(|| unreachable!("a wallet has a ledger")),
                            balance,
                            ledger_error,
                            channels: w.channels(),
                            sessions: w.sessions(SESSIONS_SHOWN),
                        },
                    }
                }
                None => Response::Error {
                    message: "this daemon has no wallet: start it with --ledger ADDR".into(),
                    status: self.status(),
                },
            },
            Request::Disconnect => {
                let mut active = self.active.lock().await;
                stop(active.take()).await;
                self.update(|s| *s = Status::default());
                Response::Ok { status: self.status() }
            }
            Request::Connect {
                records,
                hops,
                country,
                max_price,
            } => {
                let plan = if records.is_empty() {
                    self.discover_plan(hops, country).await
                } else {
                    parse_plan(&records, hops, country)
                };
                let plan = plan.and_then(|p| p.within_price(max_price));
                let plan = match plan {
                    Ok(p) => p,
                    Err(message) => {
                        return Response::Error {
                            message,
                            status: self.status(),
                        }
                    }
                };
                let mut active = self.active.lock().await;
                stop(active.take()).await;
                match self.connect(plan).await {
                    Ok(a) => {
                        *active = Some(a);
                        Response::Ok { status: self.status() }
                    }
                    Err(message) => self.fail(message),
                }
            }
        }
    }

    /// Looks up the nodes that provide `key` in the DHT.
    async fn find(&self, key: libp2p::kad::RecordKey, search: dht::Search) -> Result<Vec<crate::dht::Found>, String> {
        let (found, stats) = self.dht.find(key, search).await.map_err(|e| e.to_string())?;
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
    async fn discover_plan(&self, hops: u8, country: Option<String>) -> Result<Plan, String> {
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
            return Err(format!(
                "the DHT knows no exit{}: is the daemon's --bootstrap right, and are nodes up?",
                country.as_ref().map(|c| format!(" in {c}")).unwrap_or_default()
            ));
        }
        if hops > 1 {
            let relays = self.find(dht::role_key(Role::Relay), dht::Search::Enough).await?;
            candidates.extend(relays.into_iter().map(|f| f.record));
        }
        Plan::new(candidates, hops, country)
    }

    async fn discover_nodes(&self, role: Option<Role>, country: Option<&str>) -> Result<Vec<NodeInfo>, String> {
        let keys = match (role, country) {
            (_, Some(cc)) => vec![dht::region_key(cc)],
            (Some(r), None) => vec![dht::role_key(r)],
            (None, None) => vec![dht::role_key(Role::Exit), dht::role_key(Role::Relay)],
        };
        let now = crate::node::unix_now();
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
        let text = std::fs::read_to_string(&self.config.guard_file).ok()?;
        crate::config::parse_identity(&text)
    }

    fn save_guard(&self, tunnel: &Tunnel) {
        if tunnel.path.len() < 2 {
            return;
        }
        let hex = crate::record::hex(&tunnel.path[0].record().identity);
        if let Err(e) = std::fs::write(&self.config.guard_file, hex + "\n") {
            warn!("remembering the guard in {}: {e}", self.config.guard_file.display());
        }
    }

    /// Picks a path and builds a circuit, trying other nodes when one fails.
    /// `exit` keeps the session's exit when it can.
    /// With `net` (routes already through the tunnel), the new first hop
    /// is routed around the tunnel before it is dialled.
    async fn build(
        &self,
        plan: &Plan,
        avoid: &mut Vec<[u8; 32]>,
        session: &mut Option<ExitSession>,
        previous_addr: Option<Ipv4Addr>,
        mut net: Option<&mut ClientNet>,
    ) -> Result<Tunnel, String> {
        let mut last_error = String::new();
        let failed = |last_error: &str, e: path::PathError| {
            if last_error.is_empty() {
                e.to_string()
            } else {
                format!("{last_error}; no other path: {e}")
            }
        };
        for _ in 0..BUILD_ATTEMPTS {
            let mut request = PathRequest {
                hops: plan.hops,
                country: plan.country.clone(),
                exit: session.as_ref().map(|s| s.exit),
                guard: self.saved_guard(),
                avoid: avoid.clone(),
            };
            let now = crate::node::unix_now();
            let path = match path::select(&mut rand::thread_rng(), &plan.candidates, &request, now) {
                Ok(p) => p,
                Err(_) if request.exit.is_some() => {
                    // The old exit does not fit any more: any exit will do.
                    request.exit = None;
                    path::select(&mut rand::thread_rng(), &plan.candidates, &request, now)
                        .map_err(|e| failed(&last_error, e))?
                }
                Err(e) => return Err(failed(&last_error, e)),
            };
            if let Some(net) = net.as_deref_mut() {
                net.bypass(path[0].record().quic_addr.ip())
                    .map_err(|e| format!("routing to the first hop {}: {e}", path[0].short_id()))?;
            }
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
            match Tunnel::build(&path, &hello, self.wallet.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    warn!("circuit failed: {e}");
                    last_error = e.to_string();
                    match e.culprit() {
                        Some(c) if !avoid.contains(&c) => avoid.push(c),
                        _ => return Err(last_error),
                    }
                }
            }
        }
        Err(last_error)
    }

    fn show_circuit(&self, tunnel: &Tunnel) {
        let circuit: Vec<HopInfo> = tunnel.path.iter().map(hop_info).collect();
        self.update(|s| {
            s.state = State::Connected;
            s.error = None;
            s.exit = circuit.last().cloned();
            s.circuit = circuit;
            s.inner_addr = Some(tunnel.params.inner_addr);
            s.mtu = Some(tunnel.mtu);
            s.build_ms = Some((tunnel.build_time.as_secs_f64() * 100_000.0).round() / 100.0);
        });
    }

    /// Builds the first circuit, then the TUN device, routes and DNS.
    /// Nothing on the system changes unless the circuit came up.
    async fn connect(self: &Arc<Self>, plan: Plan) -> Result<Active, String> {
        self.update(|s| {
            *s = Status {
                state: State::Connecting,
                ..Status::default()
            }
        });
        let mut avoid = Vec::new();
        let mut session = None;
        let tunnel = self.build(&plan, &mut avoid, &mut session, None, None).await?;
        let Some(session) = session else {
            return Err("no exit session".into());
        };
        let params = tunnel.params.clone();
        let tun = match tun::create(&self.config.tun_name, params.inner_addr, 32, tunnel.mtu) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tunnel.close().await;
                return Err(e.to_string());
            }
        };
        let mut net = ClientNet::new(&self.config.state_file);
        let routed = net
            .route_all_through(&self.config.tun_name, tunnel.path[0].record().quic_addr.ip())
            .and_then(|()| self.config.ledger.map_or(Ok(()), |l| net.bypass(l.ip())))
            .and_then(|()| net.set_dns(&self.config.resolv_conf, &params.dns));
        if let Err(e) = routed {
            net.restore();
            tunnel.close().await;
            return Err(format!("setting routes and DNS: {e}"));
        }
        self.save_guard(&tunnel);
        self.show_circuit(&tunnel);
        // DHT connections made before now would hang on the old routes.
        let _ = self.dht.reconnect().await;
        info!(
            mtu = tunnel.mtu,
            build_ms = tunnel.build_time.as_millis() as u64,
            "connected"
        );
        let (stop_tx, stop_rx) = oneshot::channel();
        let daemon = self.clone();
        let task = tokio::spawn(async move { daemon.run(plan, tunnel, session, tun, net, stop_rx).await });
        Ok(Active { stop: stop_tx, task })
    }

    /// Keeps the tunnel up until told to stop, building a new circuit
    /// (around the node that failed) when one dies; then removes routes,
    /// DNS and the TUN device.
    async fn run(
        self: Arc<Self>,
        plan: Plan,
        first: Tunnel,
        session: ExitSession,
        tun: Arc<TunDevice>,
        mut net: ClientNet,
        mut stop: oneshot::Receiver<()>,
    ) {
        let traffic = Arc::new(Traffic::default());
        let mut tunnel = first;
        let mut session = Some(session);
        // Paid to each hop (short id) on the circuits before the current one.
        let started_at = crate::node::unix_now();
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
                loss = tunnel.pump(tun.clone(), wg, traffic.clone()) => loss,
                () = self.sample(first_link, &traffic, &paying, spent.values().sum()) => unreachable!("sampling never ends"),
                _ = &mut stop => {
                    tunnel.close().await;
                    self.release_channels(&tunnel_payments, &mut spent).await;
                    break 'session;
                }
            };
            warn!("circuit lost: {}", loss.reason);
            self.release_channels(&tunnel_payments, &mut spent).await;
            self.update(|s| {
                s.state = State::Error;
                s.error = Some(format!("{}; building a new circuit", loss.reason));
                s.circuit.clear();
                s.build_ms = None;
                s.tx_bps = 0;
                s.rx_bps = 0;
                s.rtt_ms = None;
            });
            let previous = tunnel.params.clone();
            let mut avoid: Vec<[u8; 32]> = loss.culprit.into_iter().collect();
            if loss.culprit == session.as_ref().map(|s| s.exit) {
                session = None;
            }
            let mut backoff = RECONNECT_FIRST;
            tunnel = loop {
                match self
                    .build(
                        &plan,
                        &mut avoid,
                        &mut session,
                        Some(previous.inner_addr),
                        Some(&mut net),
                    )
                    .await
                {
                    Ok(new) => match self.adopt(&new, &previous, &mut net, &tun) {
                        Ok(()) => break new,
                        Err(e) => {
                            new.close().await;
                            self.update(|s| s.error = Some(format!("{e}; retrying")));
                        }
                    },
                    Err(e) => {
                        self.update(|s| s.error = Some(format!("{}; then: {e}; retrying", loss.reason)));
                        // Every node may be worth a second try later.
                        avoid.clear();
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => break 'session,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            };
            info!("new circuit up");
            self.show_circuit(&tunnel);
        }
        net.restore();
        drop(tun);
        let _ = self.dht.reconnect().await;
        if let (Some(wallet), false) = (&self.wallet, spent.is_empty()) {
            wallet.record_session(crate::wallet::SessionRecord {
                started_at,
                ended_at: crate::node::unix_now(),
                spent: spent.values().sum(),
                hops: spent,
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

    /// What goes around the tunnel: the first hop, and the ledger (new
    /// circuits open channels on it while the old circuit is gone).
    fn bypassed(&self, tunnel: &Tunnel) -> Vec<std::net::IpAddr> {
        let mut keep = vec![tunnel.path[0].record().quic_addr.ip()];
        keep.extend(self.config.ledger.map(|l| l.ip()));
        keep
    }

    /// Applies what changed between two circuits' session parameters.
    fn adopt(&self, new: &Tunnel, old: &SessionParams, net: &mut ClientNet, tun: &TunDevice) -> Result<(), String> {
        // Only the current first hop goes around the tunnel.
        net.keep_only_bypass(&self.bypassed(new));
        if new.params.inner_addr != old.inner_addr {
            readdress(&self.config.tun_name, old.inner_addr, new.params.inner_addr)
                .map_err(|e| format!("moving the tunnel to {}: {e}", new.params.inner_addr))?;
        }
        if new.params.dns != old.dns {
            net.set_dns(&self.config.resolv_conf, &new.params.dns)
                .map_err(|e| format!("updating DNS: {e}"))?;
        }
        tun.set_mtu(new.mtu)
            .map_err(|e| format!("setting the MTU to {}: {e}", new.mtu))?;
        Ok(())
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
            let rtt = link.rtt().as_secs_f64() * 1000.0;
            let (hops, payment_error) = {
                let payments = lock(payments);
                let hops: Vec<HopPayment> = payments
                    .iter()
                    .map(|p| HopPayment {
                        id: p.record.short_id(),
                        price_per_gib: p.record.record().quote.price_per_gib,
                        paid: p.acked,
                        bytes: cells.at_hop(p.hop, *hops),
                    })
                    .collect();
                (hops, payments.iter().find_map(|p| p.error.clone()))
            };
            self.update(|s| {
                s.spent = spent_before + hops.iter().map(|h| h.paid).sum::<u64>();
                s.payment_bytes = cells.payment_bytes.load(Ordering::Relaxed);
                s.payments = hops;
                if payment_error.is_some() {
                    s.error = payment_error;
                }
                s.bytes_sent = now.0;
                s.bytes_received = now.1;
                s.tx_bps = (now.0 - last.0) * 8;
                s.rx_bps = (now.1 - last.1) * 8;
                s.rtt_ms = Some((rtt * 100.0).round() / 100.0);
            });
            last = now;
        }
    }
}

/// Checks a connect request: every record must verify, hops must be 1-3.
fn parse_plan(records: &[String], hops: u8, country: Option<String>) -> Result<Plan, String> {
    if records.is_empty() {
        return Err("no node records given: pass at least one (from `hopwire-node show-record`)".into());
    }
    let candidates = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.parse::<VerifiedRecord>()
                .map_err(|e| format!("record {}: {e}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Plan::new(candidates, hops, country)
}

fn readdress(tun: &str, old: Ipv4Addr, new: Ipv4Addr) -> Result<(), sys::SysError> {
    sys::run("ip", &["addr", "add", &format!("{new}/32"), "dev", tun])?;
    sys::run("ip", &["addr", "del", &format!("{old}/32"), "dev", tun]).map(drop)
}

async fn stop(active: Option<Active>) {
    if let Some(a) = active {
        let _ = a.stop.send(());
        let _ = a.task.await;
    }
}

/// Binds the API socket, refusing to take it over from a live daemon.
async fn bind(config: &DaemonConfig) -> Result<UnixListener, DaemonError> {
    let path = &config.socket;
    let err = |source| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    if UnixStream::connect(path).await.is_ok() {
        return Err(DaemonError::AlreadyRunning(path.clone()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file nobody answers on is left by a crashed daemon.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let mode = match &config.group {
        Some(group) => {
            let gid = group_id(group).ok_or_else(|| DaemonError::NoSuchGroup(group.clone()))?;
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Looks a group up in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Runs the daemon until `shutdown` completes, then disconnects.
pub async fn serve(config: DaemonConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DaemonError> {
    let listener = bind(&config).await?;
    ClientNet::recover(&config.state_file);
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let mut dht_config = DhtConfig::new(Transport::Tcp, false);
    dht_config.bootstrap = config.bootstrap.clone();
    dht_config.peer_store = Some(config.dht_store.clone());
    let dht_key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let dht = Dht::spawn(dht::keypair(&dht_key), dht_config).map_err(|e| DaemonError::Dht(e.to_string()))?;
    let wallet = match config.ledger {
        Some(ledger) => Some(Arc::new(
            Wallet::open(&config.wallet_dir, ledger, config.deposit_mib)
                .map_err(|e| DaemonError::Wallet(e.to_string()))?,
        )),
        None => None,
    };
    if let Some(w) = &wallet {
        info!(account = %crate::record::short_id(&w.account()), "wallet ready");
    }
    let daemon = Arc::new(Daemon {
        wallet,
        dht,
        wg_secret: x25519::StaticSecret::from(secret),
        config: config.clone(),
        status: Mutex::default(),
        active: tokio::sync::Mutex::new(None),
    });
    info!(socket = %config.socket.display(), "daemon ready");
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    tokio::spawn(async move { answer(daemon, stream).await });
                }
                Err(e) => warn!("accepting on the API socket: {e}"),
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = accept => {}
    }
    info!("shutting down");
    stop(daemon.active.lock().await.take()).await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Reads one request line from an API client and answers it.
async fn answer(daemon: Arc<Daemon>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => daemon.handle(request).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
            status: daemon.status(),
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|e| unreachable!("response encodes: {e}"));
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}
