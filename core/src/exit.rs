//! The exit node runtime: the tokio shell that serves clients.
//!
//! It owns a quinn endpoint (Hopwire clients, WireGuard in QUIC datagrams),
//! an optional UDP socket (stock WireGuard clients listed in `node.toml`), the
//! TUN device with the inner subnet, the NAT table, and a DNS forwarder on the
//! gateway address. Each client session is one boringtun peer with one inner
//! address. Packets from a client are checked before they reach the TUN
//! device: the source must be the session's own address and the exit policy
//! must allow the destination; refused packets are answered with an ICMP
//! "administratively prohibited" so the client fails fast instead of hanging.
//!
//! What it does not do: parse the command line or load keys (the binary
//! does), or decide anything about paths or payments.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::x25519;
use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn, Instrument};

use crate::config::LoadedConfig;
use crate::keys::NodeKeys;
use crate::link::{self, LinkError};
use crate::packet;
use crate::policy::ExitPolicy;
use crate::pool::{AddressPool, PoolError};
use crate::record::short_id;
use crate::session::{self, ClientHello, ExitHello, SessionParams, PROTOCOL_VERSION};
use crate::sys::{ExitNat, SysError};
use crate::tun::{self, TunDevice, TunError};
use crate::wg::WgSession;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often WireGuard timers run.
const TICK: Duration = Duration::from_millis(250);
/// Most DNS queries in flight at once.
const DNS_IN_FLIGHT: usize = 256;
const DNS_TIMEOUT: Duration = Duration::from_secs(4);
/// Large enough for a TUN packet or a WireGuard datagram with headroom.
const BUF: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("setting up NAT and forwarding: {0}")]
    Nat(#[from] SysError),
    #[error("inner subnet: {0}")]
    Pool(#[from] PoolError),
    #[error("DNS forwarder on {addr}: {source}")]
    Dns {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no DNS upstream: set exit.dns_upstream in node.toml (nothing usable in /etc/resolv.conf)")]
    NoDnsUpstream,
    #[error("WireGuard UDP listener on {addr}: {source}")]
    WgListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Counts of what the exit refused, for logs and tests.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub policy_refused: AtomicU64,
    pub spoofed: AtomicU64,
    pub sessions_opened: AtomicU64,
}

/// How a session's WireGuard datagrams reach its client.
enum Link {
    Quic(quinn::Connection),
    /// A stock WireGuard peer; its endpoint is learned from its packets.
    Udp {
        socket: Arc<UdpSocket>,
        endpoint: Mutex<Option<SocketAddr>>,
    },
}

impl Link {
    fn send(&self, datagram: &[u8]) {
        match self {
            // A full send buffer drops the oldest datagram, like a full
            // router queue: TCP inside the tunnel backs off.
            Link::Quic(conn) => {
                let _ = conn.send_datagram(Bytes::copy_from_slice(datagram));
            }
            Link::Udp { socket, endpoint } => {
                if let Some(to) = *lock(endpoint) {
                    let _ = socket.try_send_to(datagram, to);
                }
            }
        }
    }
}

struct Session {
    inner: Ipv4Addr,
    client_key: [u8; 32],
    wg: Mutex<WgSession>,
    link: Link,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Session {
    /// Encrypts one packet for the client and sends it.
    fn send_packet(&self, packet: &[u8], buf: &mut [u8]) {
        self.bytes_out.fetch_add(packet.len() as u64, Ordering::Relaxed);
        let mut wg = lock(&self.wg);
        match wg.encapsulate(packet, buf) {
            Ok(Some(d)) => self.link.send(d),
            Ok(None) => {}
            Err(e) => debug!("encapsulating for {}: {e:?}", self.inner),
        }
    }

    fn tick(&self, buf: &mut [u8]) {
        let mut wg = lock(&self.wg);
        if let Ok(Some(d)) = wg.tick(buf) {
            self.link.send(d);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Exit {
    wg_secret: x25519::StaticSecret,
    policy: ExitPolicy,
    gateway: Ipv4Addr,
    pool: Mutex<AddressPool>,
    by_addr: RwLock<HashMap<Ipv4Addr, Arc<Session>>>,
    /// Stock WireGuard peers by the receiver index we gave them.
    udp_by_index: HashMap<u32, Arc<Session>>,
    udp_by_key: HashMap<[u8; 32], Arc<Session>>,
    next_index: AtomicU32,
    tun: TunDevice,
    counters: Arc<ExitCounters>,
}

impl Exit {
    fn new_index(&self) -> u32 {
        self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
    }

    /// Handles one WireGuard datagram from a session's client.
    async fn handle_datagram(&self, session: &Session, datagram: &[u8], buf: &mut [u8]) {
        let result = {
            let mut wg = lock(&session.wg);
            wg.decapsulate(None, datagram, buf, |d| session.link.send(d))
        };
        match result {
            Ok(Some(n)) => self.to_tun(session, &buf[..n]).await,
            Ok(None) => {}
            Err(e) => debug!("datagram from session {}: {e:?}", session.inner),
        }
    }

    /// Polices one decrypted packet and writes it to the TUN device.
    async fn to_tun(&self, session: &Session, packet: &[u8]) {
        let Some(info) = packet::parse(packet) else { return };
        if info.src != IpAddr::V4(session.inner) {
            self.counters.spoofed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The gateway is the exit itself: the nftables input chain limits
        // what clients may reach there (DNS and ping).
        if info.dst != IpAddr::V4(self.gateway) && !self.policy.allows(&info) {
            self.counters.policy_refused.fetch_add(1, Ordering::Relaxed);
            let mut reply = [0u8; 128];
            if let Some(n) = packet::icmp_prohibited(self.gateway, packet, &mut reply) {
                let mut buf = [0u8; 256];
                session.send_packet(&reply[..n], &mut buf);
            }
            return;
        }
        session.bytes_in.fetch_add(packet.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.tun.send(packet).await {
            debug!("writing to TUN: {e}");
        }
    }

    /// Removes a QUIC session and frees its address.
    fn end_session(&self, session: &Arc<Session>) {
        let mut by_addr = write(&self.by_addr);
        if by_addr.get(&session.inner).is_some_and(|s| Arc::ptr_eq(s, session)) {
            by_addr.remove(&session.inner);
            lock(&self.pool).release(session.inner);
        }
    }

    /// Registers a new QUIC session for `hello`. A session with the same
    /// client key (a reconnect racing the old link's timeout) is replaced and
    /// its address handed over.
    fn start_session(&self, hello: &ClientHello, conn: quinn::Connection) -> Result<Arc<Session>, String> {
        let mut by_addr = write(&self.by_addr);
        let mut pool = lock(&self.pool);
        let old = by_addr
            .values()
            .find(|s| s.client_key == hello.wg_key && matches!(s.link, Link::Quic(_)))
            .cloned();
        let inner = match old {
            Some(old) => {
                if let Link::Quic(c) = &old.link {
                    c.close(0u32.into(), b"replaced by a new connection");
                }
                by_addr.remove(&old.inner);
                old.inner
            }
            None => {
                let wanted = hello.previous_addr.filter(|a| pool.reserve(*a).is_ok());
                match wanted {
                    Some(a) => a,
                    None => pool.allocate().map_err(|e| e.to_string())?,
                }
            }
        };
        let session = Arc::new(Session {
            inner,
            client_key: hello.wg_key,
            wg: Mutex::new(WgSession::new(
                self.wg_secret.clone(),
                x25519::PublicKey::from(hello.wg_key),
                self.new_index(),
                None,
            )),
            link: Link::Quic(conn),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        });
        by_addr.insert(inner, session.clone());
        self.counters.sessions_opened.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }
}

/// A running exit node; dropping it does not stop it, [`ExitNode::run`]
/// returning does.
pub struct ExitNode {
    config: LoadedConfig,
    keys: NodeKeys,
    counters: Arc<ExitCounters>,
}

impl std::fmt::Debug for ExitNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitNode")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl ExitNode {
    pub fn new(config: LoadedConfig, keys: NodeKeys) -> Self {
        Self {
            config,
            keys,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> Arc<ExitCounters> {
        self.counters.clone()
    }

    /// Where the node records what it changed on the system, so the next
    /// start can undo it after a crash.
    pub fn state_file(&self) -> PathBuf {
        self.config.key_dir.join("network-state.json")
    }

    /// Sets everything up, serves until `shutdown` completes, then removes
    /// everything it set up.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ExitError> {
        let cfg = &self.config.config;
        let mut pool = AddressPool::new(cfg.exit.inner_subnet)?;
        for (_, addr) in &self.config.wg_peers {
            pool.reserve(*addr)?;
        }
        let gateway = pool.gateway();
        let dns_upstream = dns_upstreams(&cfg.exit.dns_upstream)?;

        let mut nat = ExitNat::setup(&cfg.exit.tun_name, pool.net(), &self.state_file())?;
        let served = self.serve(pool, gateway, dns_upstream, shutdown).await;
        nat.teardown();
        served
    }

    async fn serve(
        &self,
        pool: AddressPool,
        gateway: Ipv4Addr,
        dns_upstream: Vec<SocketAddr>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ExitError> {
        let cfg = &self.config.config;
        let tun = tun::create(&cfg.exit.tun_name, gateway, pool.net().prefix_len(), link::TUNNEL_MTU)?;
        let endpoint = link::endpoint(cfg.node.listen, Some(link::server_config(&self.keys.identity)?))?;

        let mut exit = Exit {
            wg_secret: self.keys.wg_secret.clone(),
            policy: self.config.policy.clone(),
            gateway,
            pool: Mutex::new(pool),
            by_addr: RwLock::default(),
            udp_by_index: HashMap::new(),
            udp_by_key: HashMap::new(),
            next_index: AtomicU32::new(1),
            tun,
            counters: self.counters.clone(),
        };
        let udp = match cfg.wireguard.listen {
            Some(addr) => {
                let socket = link::bind_udp(addr)
                    .and_then(|s| UdpSocket::from_std(s).map_err(|source| LinkError::Bind { addr, source }))
                    .map_err(|e| match e {
                        LinkError::Bind { addr, source } => ExitError::WgListen { addr, source },
                        other => ExitError::Link(other),
                    })?;
                let socket = Arc::new(socket);
                for (key, inner) in &self.config.wg_peers {
                    let index = exit.new_index();
                    let session = Arc::new(Session {
                        inner: *inner,
                        client_key: *key.as_bytes(),
                        wg: Mutex::new(WgSession::new(exit.wg_secret.clone(), *key, index, None)),
                        link: Link::Udp {
                            socket: socket.clone(),
                            endpoint: Mutex::new(None),
                        },
                        bytes_in: AtomicU64::new(0),
                        bytes_out: AtomicU64::new(0),
                    });
                    write(&exit.by_addr).insert(*inner, session.clone());
                    exit.udp_by_index.insert(index, session.clone());
                    exit.udp_by_key.insert(*key.as_bytes(), session);
                }
                Some(socket)
            }
            None => None,
        };
        let dns_addr = SocketAddr::from((gateway, 53));
        let dns = UdpSocket::bind(dns_addr)
            .await
            .map_err(|source| ExitError::Dns { addr: dns_addr, source })?;

        let exit = Arc::new(exit);
        info!(
            listen = %cfg.node.listen,
            subnet = %cfg.exit.inner_subnet,
            wireguard_peers = self.config.wg_peers.len(),
            "exit node serving"
        );
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(tun_loop(exit.clone()));
        tasks.spawn(timer_loop(exit.clone()));
        tasks.spawn(accept_loop(exit.clone(), endpoint.clone()));
        tasks.spawn(dns_loop(Arc::new(dns), dns_upstream));
        if let Some(socket) = udp {
            tasks.spawn(udp_loop(exit.clone(), socket));
        }
        tokio::select! {
            _ = shutdown => info!("shutting down"),
            Some(done) = tasks.join_next() => warn!("a node task ended early: {done:?}"),
        }
        endpoint.close(0u32.into(), b"exit node shutting down");
        // Let the close frames leave before the process goes.
        let _ = tokio::time::timeout(Duration::from_millis(300), endpoint.wait_idle()).await;
        tasks.abort_all();
        Ok(())
    }
}

/// Resolvers from the config, or else those of this machine's resolv.conf.
fn dns_upstreams(configured: &[SocketAddr]) -> Result<Vec<SocketAddr>, ExitError> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::new(a, 53))
        .collect();
    if found.is_empty() {
        return Err(ExitError::NoDnsUpstream);
    }
    Ok(found)
}

/// Packets from the internet to clients: route by destination inner address.
async fn tun_loop(exit: Arc<Exit>) {
    let mut packet = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    loop {
        let n = match exit.tun.recv(&mut packet).await {
            Ok(n) => n,
            Err(e) => {
                warn!("reading TUN: {e}");
                continue;
            }
        };
        let Some(info) = packet::parse(&packet[..n]) else {
            continue;
        };
        let IpAddr::V4(dst) = info.dst else { continue };
        let session = read(&exit.by_addr).get(&dst).cloned();
        if let Some(session) = session {
            session.send_packet(&packet[..n], &mut out);
        }
    }
}

async fn timer_loop(exit: Arc<Exit>) {
    let mut buf = vec![0u8; BUF];
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let sessions: Vec<Arc<Session>> = read(&exit.by_addr).values().cloned().collect();
        for s in sessions {
            s.tick(&mut buf);
        }
    }
}

async fn accept_loop(exit: Arc<Exit>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let exit = exit.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(exit, incoming).await {
                debug!("connection ended: {e}");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("handshake: {0}")]
    Connect(#[from] quinn::ConnectionError),
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("hello: {0}")]
    Hello(#[from] session::SetupError),
}

async fn serve_connection(exit: Arc<Exit>, incoming: quinn::Incoming) -> Result<(), ConnError> {
    let conn = incoming.await?;
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::HelloTimeout)??;
    let hello: ClientHello = tokio::time::timeout(HELLO_TIMEOUT, session::read_message(&mut recv))
        .await
        .map_err(|_| ConnError::HelloTimeout)??;
    let id = short_id(&hello.wg_key);
    let span = tracing::info_span!("session", client = %id);
    if hello.version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported by this exit (it speaks {PROTOCOL_VERSION})",
            hello.version
        );
        session::write_message(&mut send, &ExitHello::Refused { reason }).await?;
        return Ok(());
    }
    let session = match exit.start_session(&hello, conn.clone()) {
        Ok(s) => s,
        Err(reason) => {
            warn!(parent: &span, "refusing session: {reason}");
            session::write_message(&mut send, &ExitHello::Refused { reason }).await?;
            return Ok(());
        }
    };
    let params = SessionParams {
        inner_addr: session.inner,
        gateway: exit.gateway,
        dns: vec![exit.gateway],
    };
    session::write_message(&mut send, &ExitHello::Accepted(params)).await?;
    info!(parent: &span, "session opened");
    let mut buf = vec![0u8; BUF];
    let reason = async {
        loop {
            match conn.read_datagram().await {
                Ok(d) => exit.handle_datagram(&session, &d, &mut buf).await,
                Err(e) => break e,
            }
        }
    }
    .instrument(span.clone())
    .await;
    exit.end_session(&session);
    info!(
        parent: &span,
        bytes_in = session.bytes_in.load(Ordering::Relaxed),
        bytes_out = session.bytes_out.load(Ordering::Relaxed),
        "session closed: {reason}"
    );
    Ok(())
}

/// Plain WireGuard over UDP for the peers listed in `node.toml`.
async fn udp_loop(exit: Arc<Exit>, socket: Arc<UdpSocket>) {
    let mut datagram = vec![0u8; BUF];
    let mut buf = vec![0u8; BUF];
    loop {
        let (n, from) = match socket.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(e) => {
                debug!("WireGuard UDP socket: {e}");
                continue;
            }
        };
        let d = &datagram[..n];
        let session = match crate::wg::receiver_index(d) {
            Some(index) => exit.udp_by_index.get(&index).cloned(),
            None => crate::wg::initiator_key(&exit.wg_secret, d)
                .and_then(|key| exit.udp_by_key.get(key.as_bytes()).cloned()),
        };
        let Some(session) = session else { continue };
        if let Link::Udp { endpoint, .. } = &session.link {
            *lock(endpoint) = Some(from);
        }
        exit.handle_datagram(&session, d, &mut buf).await;
    }
}

/// Forwards clients' DNS queries, sent to the gateway, to the upstreams.
async fn dns_loop(socket: Arc<UdpSocket>, upstreams: Vec<SocketAddr>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(DNS_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    let mut next = 0usize;
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let upstream = upstreams[next % upstreams.len()];
        next = next.wrapping_add(1);
        let socket = socket.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = ask_upstream(upstream, &query).await {
                let _ = socket.send_to(&answer, client).await;
            }
        });
    }
}

async fn ask_upstream(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(DNS_TIMEOUT, socket.recv(&mut answer))
        .await
        .ok()?
        .ok()?;
    // The answer must be for this query (same transaction id).
    (n >= 2 && query.len() >= 2 && answer[..2] == query[..2]).then(|| {
        answer.truncate(n);
        answer
    })
}
