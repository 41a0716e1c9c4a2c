//! The exit role: where circuits end and packets meet the internet.
//!
//! Each client session is one boringtun peer with one inner address in the
//! exit's subnet. Its WireGuard datagrams arrive as the payload of the
//! circuit's data cells (or, for stock WireGuard peers listed in
//! `node.toml`, over plain UDP). Packets from a client are checked before
//! they reach the TUN device: the source must be the session's own address
//! and the exit policy must allow the destination; refused packets are
//! answered with ICMP "administratively prohibited" so the client fails fast.
//! The exit also owns the NAT table and a DNS forwarder on the gateway
//! (UDP and TCP). With an IPv6 uplink, each session also gets the IPv6
//! twin of its inner address ([`V6Twins`]) and its IPv6 leaves by NAT66,
//! under the same policy.
//!
//! The uplink is a TUN device behind NAT, or, for tests and simulations in
//! one process, a pair of channels to a pretend internet
//! ([`MemoryInternet`], see [`crate::NodeRuntime::with_memory_uplink`]):
//! then the exit needs no root and touches no device, NAT, forwarding or
//! DNS forwarder, and packets to the gateway go to the pretend internet too.
//!
//! A session outlives its circuit for [`LINGER`]: a client that rebuilds its
//! circuit to the same exit keeps its WireGuard session and its address.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::x25519;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{LinkId, Links};
use crate::config::LoadedConfig;
use hopwire_net::cellpath::CellOut;
use hopwire_net::keys::NodeKeys;
use hopwire_net::link::{self, LinkError};
use hopwire_net::tun_batch::{RecvBatch, SendBatch};
use hopwire_proto::onion::cell::MAX_HOPS;
use hopwire_proto::onion::circuit::SharedHop;
use hopwire_proto::packet;
use hopwire_proto::policy::ExitPolicy;
use hopwire_proto::pool::{AddressPool, PoolError, V6Twins};
use hopwire_proto::record::short_id;
use hopwire_proto::safelog::Sensitive;
use hopwire_proto::session::{ClientHello, ExitHello, SessionParams, PROTOCOL_VERSION};
use hopwire_proto::sync::{lock, read, write};
use hopwire_proto::wg::{self, WgSession};
use hopwire_sys::tun::{self, TunDevice, TunError};
use hopwire_sys::{ExitNat, SysError};

/// How long a session waits for a new circuit after its circuit ended.
pub const LINGER: Duration = Duration::from_secs(30);
/// How often WireGuard timers run.
const TICK: Duration = Duration::from_millis(250);
/// Most DNS queries in flight at once.
const DNS_IN_FLIGHT: usize = 256;
const DNS_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a client's DNS-over-TCP connection may sit idle.
const DNS_TCP_IDLE: Duration = Duration::from_secs(10);
const BUF: usize = 65536;

/// The exit's TUN MTU: what a client's tunnel carries over the longest
/// circuit, so replies never need fragmenting on the way back.
pub const EXIT_MTU: u16 = link::tunnel_mtu_at_start(MAX_HOPS);

#[derive(Debug, thiserror::Error)]
pub enum ExitError {
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
    #[error("DNS-over-TCP forwarder on {addr}: {source}")]
    DnsTcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the exit role needs {missing} (its TUN device, NAT and DNS forwarder): run the node as root, or installed from the package run `hopwire-node init` to link the unit's exit drop-in, or remove \"exit\" from node.roles")]
    NotPermitted { missing: String },
    #[error("no DNS upstream: set exit.dns_upstream in node.toml (nothing usable in /etc/resolv.conf)")]
    NoDnsUpstream,
    #[error("WireGuard UDP listener on {addr}: {source}")]
    WgListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where the exit's packets meet the internet.
enum Uplink {
    /// A TUN device behind NAT on this machine: what a deployed exit runs.
    Tun(TunDevice),
    /// Channels to a pretend internet in the same process: tests and
    /// simulations, without root, TUN or nftables.
    Memory {
        to_internet: mpsc::Sender<Vec<u8>>,
        from_internet: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    },
}

impl Uplink {
    /// Sends every packet of `batch` out and empties it.
    async fn send_batch(&self, batch: &mut SendBatch) -> std::io::Result<()> {
        match self {
            Uplink::Tun(tun) => batch.write(tun).await,
            Uplink::Memory { to_internet, .. } => {
                if batch.forward(to_internet).await {
                    Ok(())
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the pretend internet is gone",
                    ))
                }
            }
        }
    }

    /// Replaces `batch` with what came in next: with offload, every segment
    /// of one super-packet.
    async fn recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<usize> {
        match self {
            Uplink::Tun(tun) => batch.read(tun).await,
            Uplink::Memory { from_internet, .. } => {
                let Some(packet) = from_internet.lock().await.recv().await else {
                    // The pretend internet is gone: nothing more comes in.
                    return std::future::pending().await;
                };
                batch.put(&packet);
                Ok(1)
            }
        }
    }
}

/// The pretend internet of an exit whose uplink is in memory (see
/// [`crate::NodeRuntime::with_memory_uplink`]): what the exit sends out,
/// and a way to answer. For tests and simulations.
#[derive(Debug)]
pub struct MemoryInternet {
    /// IP packets the exit let out, as it would have written them to its
    /// TUN device: after the session-source and exit-policy checks. Packets
    /// to the gateway (DNS, ping), which a deployed exit answers itself,
    /// arrive here too. The exit waits when this is full, so keep reading.
    pub from_exit: mpsc::Receiver<Vec<u8>>,
    /// IP packets from the internet to the exit's clients, routed by
    /// destination (a client's inner address), as if read from the TUN
    /// device; others are dropped.
    pub to_exit: mpsc::Sender<Vec<u8>>,
}

/// The exit's end of a [`MemoryInternet`].
#[derive(Debug)]
pub(crate) struct MemoryUplink {
    to_internet: mpsc::Sender<Vec<u8>>,
    from_internet: mpsc::Receiver<Vec<u8>>,
}

/// A connected pair: the exit's end and the test's.
pub(crate) fn memory_uplink() -> (MemoryUplink, MemoryInternet) {
    let (to_internet, from_exit) = mpsc::channel(4096);
    let (to_exit, from_internet) = mpsc::channel(4096);
    (
        MemoryUplink {
            to_internet,
            from_internet,
        },
        MemoryInternet { from_exit, to_exit },
    )
}

/// How a session's WireGuard datagrams reach its client.
enum SessionLink {
    /// Back along the circuit that began the session.
    Circuit { key: (LinkId, u32), hop: SharedHop<LinkId> },
    /// The circuit ended; waiting for the client to come back.
    Detached,
    /// A stock WireGuard peer; its endpoint is learned from its packets.
    Udp {
        socket: Arc<UdpSocket>,
        endpoint: Mutex<Option<SocketAddr>>,
    },
}

struct Session {
    inner: Ipv4Addr,
    client_key: [u8; 32],
    wg: Mutex<WgSession>,
    link: RwLock<SessionLink>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Session {
    fn new(inner: Ipv4Addr, client_key: [u8; 32], wg: WgSession, link: SessionLink) -> Self {
        Self {
            inner,
            client_key,
            wg: Mutex::new(wg),
            link: RwLock::new(link),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// Sends one WireGuard datagram to the client: at once, or with `queue`
    /// into a batch the caller flushes ([`Links::queue`]).
    fn send(&self, links: &Links, datagram: &[u8], queue: Option<&mut CellOut>) {
        match &*read(&self.link) {
            SessionLink::Circuit { hop, .. } => {
                let mut cell = [0u8; 2048];
                let sealed = lock(hop).seal_payload(datagram, &mut cell);
                if let Ok((link, len)) = sealed {
                    match queue {
                        Some(out) => links.queue(link, &cell[..len], out),
                        None => links.send(link, &cell[..len]),
                    }
                }
            }
            SessionLink::Detached => {}
            SessionLink::Udp { socket, endpoint } => {
                if let Some(to) = *lock(endpoint) {
                    let _ = socket.try_send_to(datagram, to);
                }
            }
        }
    }

    /// Encrypts one packet for the client and sends it (see [`Session::send`]).
    fn send_packet(&self, links: &Links, packet: &[u8], buf: &mut [u8], queue: Option<&mut CellOut>) {
        self.bytes_out.fetch_add(packet.len() as u64, Ordering::Relaxed);
        let mut wg = lock(&self.wg);
        match wg.encapsulate(packet, buf) {
            Ok(Some(d)) => self.send(links, d, queue),
            Ok(None) => {}
            Err(e) => debug!("encapsulating for {}: {e:?}", self.inner),
        }
    }

    fn tick(&self, links: &Links, buf: &mut [u8]) {
        let mut wg = lock(&self.wg);
        if let Ok(Some(d)) = wg.tick(buf) {
            self.send(links, d, None);
        }
    }

    fn on_circuit(&self, key: (LinkId, u32)) -> bool {
        matches!(&*read(&self.link), SessionLink::Circuit { key: k, .. } if *k == key)
    }
}

/// Counts of what the exit refused, for metrics and tests.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub policy_refused: AtomicU64,
    pub spoofed: AtomicU64,
    pub sessions_opened: AtomicU64,
}

pub struct Exit {
    wg_secret: x25519::StaticSecret,
    /// Replaced when the operator reloads the config.
    policy: RwLock<ExitPolicy>,
    gateway: Ipv4Addr,
    /// Sessions' IPv6 twins, when this exit carries IPv6.
    v6: Option<V6Twins>,
    pool: Mutex<AddressPool>,
    by_addr: RwLock<HashMap<Ipv4Addr, Arc<Session>>>,
    by_circuit: RwLock<HashMap<(LinkId, u32), Arc<Session>>>,
    /// Stock WireGuard peers by the receiver index we gave them, and by key.
    udp_by_index: HashMap<u32, Arc<Session>>,
    udp_by_key: HashMap<[u8; 32], Arc<Session>>,
    udp: Option<Arc<UdpSocket>>,
    /// The DNS forwarder, over UDP and TCP; none with a memory uplink.
    dns: Option<(Arc<UdpSocket>, Arc<TcpListener>)>,
    dns_upstream: Vec<SocketAddr>,
    next_index: AtomicU32,
    uplink: Uplink,
    links: Arc<Links>,
    nat: Mutex<Option<ExitNat>>,
    pub counters: ExitCounters,
}

impl Exit {
    /// Sets up NAT (undoing a crashed run's first), the TUN device, the DNS
    /// forwarder and the stock WireGuard listener. With `memory`, none of
    /// the system is touched: packets go to a pretend internet in memory,
    /// and there is no NAT, TUN device or DNS forwarder.
    pub(crate) fn start(
        config: &LoadedConfig,
        keys: &NodeKeys,
        links: Arc<Links>,
        memory: Option<MemoryUplink>,
    ) -> Result<Arc<Self>, super::NodeError> {
        let cfg = &config.config;
        let mut pool = AddressPool::new(cfg.exit.inner_subnet).map_err(ExitError::from)?;
        for (_, addr) in &config.wg_peers {
            pool.reserve(*addr).map_err(ExitError::from)?;
        }
        let gateway = pool.gateway();
        if let Some(m) = memory {
            let uplink = Uplink::Memory {
                to_internet: m.to_internet,
                from_internet: tokio::sync::Mutex::new(m.from_internet),
            };
            return Self::build(config, keys, links, pool, gateway, Vec::new(), uplink, None).map(Arc::new);
        }
        let mut needs = vec![hopwire_sys::NET_ADMIN];
        if hopwire_sys::port_is_privileged(53) {
            needs.push(hopwire_sys::NET_BIND_SERVICE);
        }
        let missing = hopwire_sys::lacking(&needs);
        if !missing.is_empty() {
            let missing = missing.iter().map(|c| c.name).collect::<Vec<_>>().join(" and ");
            return Err(ExitError::NotPermitted { missing }.into());
        }
        let dns_upstream = dns_upstreams(&cfg.exit.dns_upstream)?;
        let state_file = config.key_dir.join("network-state.json");
        let v6 = config.v6_twins.filter(|_| {
            let up = hopwire_sys::has_ipv6_uplink();
            if !up {
                info!("no IPv6 default route: clients' IPv6 is not carried");
            }
            up
        });
        let mut nat = ExitNat::setup(
            &cfg.exit.tun_name,
            pool.net(),
            v6.map(|t| t.net()),
            cfg.dht.listen.port(),
            &state_file,
        )
        .map_err(ExitError::from)?;
        let dns = SocketAddr::from((gateway, 53));
        let built = tun::create(&cfg.exit.tun_name, gateway, pool.net().prefix_len(), EXIT_MTU, true)
            .map_err(|e| super::NodeError::from(ExitError::from(e)))
            .and_then(|tun| match v6 {
                Some(t) => hopwire_sys::add_address(&cfg.exit.tun_name, t.twin(gateway).into(), 96)
                    .map(|()| tun)
                    .map_err(|e| ExitError::Nat(e).into()),
                None => Ok(tun),
            })
            .and_then(|tun| {
                Self::build(
                    config,
                    keys,
                    links,
                    pool,
                    gateway,
                    dns_upstream,
                    Uplink::Tun(tun),
                    Some(dns),
                )
            })
            .map(|mut exit| {
                exit.v6 = v6;
                exit
            });
        match built {
            Ok(mut exit) => {
                exit.nat = Mutex::new(Some(nat));
                Ok(Arc::new(exit))
            }
            Err(e) => {
                nat.teardown();
                Err(e)
            }
        }
    }

    /// The policy new packets are checked against from now on, for every
    /// session.
    pub(crate) fn set_policy(&self, policy: ExitPolicy) {
        *write(&self.policy) = policy;
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        config: &LoadedConfig,
        keys: &NodeKeys,
        links: Arc<Links>,
        pool: AddressPool,
        gateway: Ipv4Addr,
        dns_upstream: Vec<SocketAddr>,
        uplink: Uplink,
        dns: Option<SocketAddr>,
    ) -> Result<Self, super::NodeError> {
        let cfg = &config.config;
        let udp_socket = |addr: SocketAddr, wrap: fn(SocketAddr, std::io::Error) -> ExitError| {
            link::bind_udp(addr)
                .and_then(|s| UdpSocket::from_std(s).map_err(|source| LinkError::Bind { addr, source }))
                .map_err(|e| match e {
                    LinkError::Bind { addr, source } => super::NodeError::Exit(wrap(addr, source)),
                    other => super::NodeError::Link(other),
                })
        };
        let dns = dns
            .map(|addr| {
                let udp = udp_socket(addr, |addr, source| ExitError::Dns { addr, source })?;
                let tcp = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|source| ExitError::DnsTcp { addr, source })?;
                Ok::<_, super::NodeError>((Arc::new(udp), Arc::new(tcp)))
            })
            .transpose()?;
        let mut exit = Self {
            wg_secret: keys.wg_secret.clone(),
            policy: RwLock::new(config.policy.clone()),
            gateway,
            // A memory uplink carries IPv6 whenever the config allows it.
            v6: config.v6_twins,
            pool: Mutex::new(pool),
            by_addr: RwLock::default(),
            by_circuit: RwLock::default(),
            udp_by_index: HashMap::new(),
            udp_by_key: HashMap::new(),
            udp: None,
            dns,
            dns_upstream,
            next_index: AtomicU32::new(1),
            uplink,
            links,
            nat: Mutex::new(None),
            counters: ExitCounters::default(),
        };
        if let Some(addr) = cfg.wireguard.listen {
            let socket = Arc::new(udp_socket(addr, |addr, source| ExitError::WgListen { addr, source })?);
            for (key, inner) in &config.wg_peers {
                let index = exit.new_index();
                let wg = WgSession::new(exit.wg_secret.clone(), *key, index, None);
                let link = SessionLink::Udp {
                    socket: socket.clone(),
                    endpoint: Mutex::new(None),
                };
                let session = Arc::new(Session::new(*inner, *key.as_bytes(), wg, link));
                write(&exit.by_addr).insert(*inner, session.clone());
                exit.udp_by_index.insert(index, session.clone());
                exit.udp_by_key.insert(*key.as_bytes(), session);
            }
            exit.udp = Some(socket);
        }
        info!(
            subnet = %cfg.exit.inner_subnet,
            wireguard_peers = config.wg_peers.len(),
            "exit serving"
        );
        Ok(exit)
    }

    pub fn spawn_tasks(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) {
        tasks.spawn(tun_loop(self.clone()));
        tasks.spawn(timer_loop(self.clone()));
        if let Some((udp, tcp)) = &self.dns {
            tasks.spawn(dns_loop(udp.clone(), self.dns_upstream.clone()));
            tasks.spawn(dns_tcp_loop(tcp.clone(), self.dns_upstream.clone()));
        }
        if let Some(socket) = &self.udp {
            tasks.spawn(udp_loop(self.clone(), socket.clone()));
        }
    }

    /// Removes NAT and forwarding; the TUN device goes with the process.
    pub fn teardown(&self) {
        if let Some(mut nat) = lock(&self.nat).take() {
            nat.teardown();
        }
    }

    fn new_index(&self) -> u32 {
        self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
    }

    /// Starts (or resumes) the session of the client that sent `hello` on
    /// the circuit `key`, whose last hop is `hop`.
    pub fn begin(&self, key: (LinkId, u32), hop: SharedHop<LinkId>, hello: &ClientHello) -> ExitHello {
        if hello.version != PROTOCOL_VERSION {
            return ExitHello::Refused {
                reason: format!(
                    "protocol version {} is not supported by this exit (it speaks {PROTOCOL_VERSION})",
                    hello.version
                ),
            };
        }
        let client = short_id(&hello.wg_key);
        let mut by_addr = write(&self.by_addr);
        let existing = by_addr
            .values()
            .find(|s| s.client_key == hello.wg_key && !matches!(&*read(&s.link), SessionLink::Udp { .. }))
            .cloned();
        let session = match existing {
            Some(session) => {
                // Same client, new circuit: the WireGuard session carries on.
                *write(&session.link) = SessionLink::Circuit { key, hop };
                info!(client = %Sensitive(&client), "session moved to a new circuit");
                session
            }
            None => {
                let mut pool = lock(&self.pool);
                let wanted = hello.previous_addr.filter(|a| pool.reserve(*a).is_ok());
                let inner = match wanted.map_or_else(|| pool.allocate(), Ok) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(client = %Sensitive(&client), "refusing session: {e}");
                        return ExitHello::Refused { reason: e.to_string() };
                    }
                };
                let wg = WgSession::new(
                    self.wg_secret.clone(),
                    x25519::PublicKey::from(hello.wg_key),
                    self.new_index(),
                    None,
                );
                let session = Arc::new(Session::new(inner, hello.wg_key, wg, SessionLink::Circuit { key, hop }));
                by_addr.insert(inner, session.clone());
                self.counters.sessions_opened.fetch_add(1, Ordering::Relaxed);
                info!(client = %Sensitive(&client), "session opened");
                session
            }
        };
        write(&self.by_circuit).insert(key, session.clone());
        ExitHello::Accepted(SessionParams {
            inner_addr: session.inner,
            inner_v6: self.v6.map(|t| t.twin(session.inner)),
            gateway: self.gateway,
            dns: vec![self.gateway],
        })
    }

    /// A circuit ended: its session lingers a while for the client to come
    /// back on a new circuit, then is closed.
    pub fn end_circuit(self: &Arc<Self>, key: (LinkId, u32)) {
        let Some(session) = write(&self.by_circuit).remove(&key) else {
            return;
        };
        if !session.on_circuit(key) {
            return;
        }
        *write(&session.link) = SessionLink::Detached;
        let exit = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            if matches!(&*read(&session.link), SessionLink::Detached) {
                let mut by_addr = write(&exit.by_addr);
                if by_addr.get(&session.inner).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                    by_addr.remove(&session.inner);
                    lock(&exit.pool).release(session.inner);
                    info!(
                        client = %Sensitive(short_id(&session.client_key)),
                        bytes_in = session.bytes_in.load(Ordering::Relaxed),
                        bytes_out = session.bytes_out.load(Ordering::Relaxed),
                        "session closed"
                    );
                }
            }
        });
    }

    /// A WireGuard datagram that arrived on circuit `key`: the packet in
    /// it, if allowed out, joins `batch` (write it with [`Exit::flush`]
    /// before it is full).
    pub fn deliver(&self, key: (LinkId, u32), datagram: &[u8], batch: &mut SendBatch) {
        let session = read(&self.by_circuit).get(&key).cloned();
        if let Some(session) = session {
            self.handle_datagram(&session, datagram, batch);
        }
    }

    /// Writes the packets [`Exit::deliver`] let out to the uplink.
    pub async fn flush(&self, batch: &mut SendBatch) {
        if let Err(e) = self.uplink.send_batch(batch).await {
            debug!("writing to the uplink: {e}");
        }
    }

    /// Encrypts each packet of `batch` for the session its destination
    /// belongs to; the cells wait in `cells`.
    fn route_to_sessions(&self, batch: &RecvBatch, buf: &mut [u8], cells: &mut CellOut) {
        // One look-up table read for the whole batch (sending never takes
        // it, so a session opening meanwhile waits only for this batch).
        let by_addr = read(&self.by_addr);
        for packet in batch.packets() {
            let Some(info) = packet::parse(packet) else {
                continue;
            };
            let dst = match info.dst {
                IpAddr::V4(a) => a,
                IpAddr::V6(a) => match self.v6.and_then(|t| t.v4_of(a)) {
                    Some(a) => a,
                    None => continue,
                },
            };
            if let Some(session) = by_addr.get(&dst) {
                session.send_packet(&self.links, packet, buf, Some(&mut *cells));
            }
        }
    }

    /// Handles one WireGuard datagram from a session's client: its packet
    /// goes into `batch` if [`Exit::admit`] lets it out.
    fn handle_datagram(&self, session: &Session, datagram: &[u8], batch: &mut SendBatch) {
        let Some(slot) = batch.slot() else {
            debug!("dropping a packet for the uplink: its batch is full");
            return;
        };
        let result = {
            let mut wg = lock(&session.wg);
            wg.decapsulate(None, datagram, slot, |d| session.send(&self.links, d, None))
        };
        match result {
            Ok(Some(n)) => {
                if self.admit(session, &slot[..n]) {
                    batch.commit(n);
                }
            }
            Ok(None) => {}
            Err(e) => debug!("datagram from session {}: {e:?}", session.inner),
        }
    }

    /// Polices one decrypted packet: whether it may go out to the uplink.
    fn admit(&self, session: &Session, packet: &[u8]) -> bool {
        let Some(info) = packet::parse(packet) else {
            return false;
        };
        let own = match info.src {
            IpAddr::V4(a) => a == session.inner,
            IpAddr::V6(a) => self.v6.is_some_and(|t| a == t.twin(session.inner)),
        };
        if !own {
            self.counters.spoofed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // The gateway is the exit itself: the nftables input chain limits
        // what clients may reach there (DNS and ping).
        let to_gateway = match info.dst {
            IpAddr::V4(a) => a == self.gateway,
            IpAddr::V6(a) => self.v6.is_some_and(|t| a == t.twin(self.gateway)),
        };
        if !to_gateway && !read(&self.policy).allows(&info) {
            self.counters.policy_refused.fetch_add(1, Ordering::Relaxed);
            let mut reply = [0u8; 128];
            if let Some(n) = packet::icmp_prohibited(self.gateway, packet, &mut reply) {
                let mut buf = [0u8; 256];
                session.send_packet(&self.links, &reply[..n], &mut buf, None);
            }
            return false;
        }
        session.bytes_in.fetch_add(packet.len() as u64, Ordering::Relaxed);
        true
    }

    /// One datagram from a stock WireGuard peer, from `from`.
    fn handle_udp_datagram(&self, datagram: &[u8], from: SocketAddr, batch: &mut SendBatch) {
        let session = match wg::receiver_index(datagram) {
            Some(index) => self.udp_by_index.get(&index).cloned(),
            None => wg::initiator_key(&self.wg_secret, datagram)
                .and_then(|key| self.udp_by_key.get(key.as_bytes()).cloned()),
        };
        let Some(session) = session else { return };
        if let SessionLink::Udp { endpoint, .. } = &*read(&session.link) {
            *lock(endpoint) = Some(from);
        }
        self.handle_datagram(&session, datagram, batch);
    }

    pub fn render_metrics(&self, m: &mut String) {
        let sessions = read(&self.by_addr).len();
        let c = &self.counters;
        for (name, kind, value) in [
            ("hopwire_exit_sessions", "gauge", sessions as u64),
            (
                "hopwire_exit_sessions_opened_total",
                "counter",
                c.sessions_opened.load(Ordering::Relaxed),
            ),
            (
                "hopwire_exit_policy_refused_total",
                "counter",
                c.policy_refused.load(Ordering::Relaxed),
            ),
            (
                "hopwire_exit_spoofed_total",
                "counter",
                c.spoofed.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(m, "# TYPE {name} {kind}\n{name} {value}");
        }
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

/// Packets from the internet to clients, a read's batch at a time: route
/// by destination inner address.
async fn tun_loop(exit: Arc<Exit>) {
    let mut batch = RecvBatch::default();
    let mut out = vec![0u8; BUF];
    let mut cells = CellOut::default();
    loop {
        if let Err(e) = exit.uplink.recv_batch(&mut batch).await {
            warn!("reading the uplink: {e}");
            continue;
        }
        exit.route_to_sessions(&batch, &mut out, &mut cells);
        exit.links.flush(&mut cells).await;
    }
}

async fn timer_loop(exit: Arc<Exit>) {
    let mut buf = vec![0u8; BUF];
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let sessions: Vec<Arc<Session>> = read(&exit.by_addr).values().cloned().collect();
        for s in sessions {
            s.tick(&exit.links, &mut buf);
        }
    }
}

/// Plain WireGuard over UDP for the peers listed in `node.toml`: every
/// datagram already received goes out in one batch.
async fn udp_loop(exit: Arc<Exit>, socket: Arc<UdpSocket>) {
    let mut datagram = vec![0u8; BUF];
    let mut batch = SendBatch::default();
    loop {
        let mut received = socket.recv_from(&mut datagram).await;
        loop {
            match received {
                Ok((n, from)) => exit.handle_udp_datagram(&datagram[..n], from, &mut batch),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => debug!("WireGuard UDP socket: {e}"),
            }
            if batch.is_full() {
                break;
            }
            received = socket.try_recv_from(&mut datagram);
        }
        exit.flush(&mut batch).await;
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

/// Forwards clients' DNS queries over TCP (RFC 7766: each message after
/// a two-byte length), one upstream TCP connection per query.
async fn dns_tcp_loop(listener: Arc<TcpListener>, upstreams: Vec<SocketAddr>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(DNS_IN_FLIGHT));
    let mut next = 0usize;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let first = next;
        next = next.wrapping_add(1);
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_dns_tcp(stream, &upstreams, first).await;
        });
    }
}

async fn serve_dns_tcp(mut client: TcpStream, upstreams: &[SocketAddr], mut next: usize) {
    while let Ok(Some(query)) = tokio::time::timeout(DNS_TCP_IDLE, read_dns_tcp(&mut client))
        .await
        .unwrap_or(Ok(None))
    {
        let upstream = upstreams[next % upstreams.len()];
        next = next.wrapping_add(1);
        let asked = tokio::time::timeout(DNS_TIMEOUT, async {
            let mut up = TcpStream::connect(upstream).await?;
            write_dns_tcp(&mut up, &query).await?;
            read_dns_tcp(&mut up).await
        })
        .await;
        let Ok(Ok(Some(answer))) = asked else { return };
        if answer.len() < 2 || answer[..2] != query[..2] || write_dns_tcp(&mut client, &answer).await.is_err() {
            return;
        }
    }
}

/// One length-prefixed DNS message; `None` at a clean end of stream.
async fn read_dns_tcp(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok((message.len() >= 2).then_some(message))
}

async fn write_dns_tcp(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
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
