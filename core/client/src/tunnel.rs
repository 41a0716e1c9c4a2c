//! The client tunnel runtime: one circuit to an exit and the packets over it.
//!
//! [`Tunnel::build`] dials the first hop over QUIC (checking its identity
//! against its record), creates the circuit, extends it hop by hop
//! (telescoping), and begins a session at the exit, which lends an inner
//! address. [`Tunnel::pump`] then moves packets between the TUN device and
//! the exit: IP packets are encrypted by the client's WireGuard session (end
//! to end with the exit), wrapped in one layer per hop and sent on the
//! guard's cell path (QUIC datagrams to a guard without it); the other way
//! round, until the circuit dies. Meanwhile it pays the charging hops as
//! they report usage, and tops their channels up before they run out.
//!
//! What it does not do: routes, DNS, the TUN device and the WireGuard
//! session belong to the daemon ([`hopwire::daemon`]), which keeps them across
//! circuits so no packet leaks while a circuit is rebuilt and a session to
//! the same exit survives a circuit change.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use rand::Rng;
use tracing::{debug, warn};

use crate::platform::{PacketIo, Platform, PlatformError, RecvBatch, SendBatch};
use crate::wallet::{Wallet, WalletError};
use hopwire_api::ErrorKind;
use hopwire_net::cellpath::{CellBatch, CellLink, CellOut, CellSocket};
use hopwire_net::framing;
use hopwire_net::link::{self, LinkError};
use hopwire_proto::onion::cell::{split_cell, BackwardMessage, ForwardMessage, LinkMessage, CIRCUIT_ID_LEN};
use hopwire_proto::onion::circuit::{cell_size, headroom, ClientCircuit};
use hopwire_proto::onion::layer::TAG_LEN;
use hopwire_proto::pay::{PayError, PayerChannel, LOST_SHARE};
use hopwire_proto::record::VerifiedRecord;
use hopwire_proto::session::{ClientHello, ExitHello, SessionParams};
use hopwire_proto::sync::lock;
use hopwire_proto::wg::WgSession;

/// How long building a whole circuit and beginning the session may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(12);
const TICK: Duration = Duration::from_millis(250);
const BUF: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot reach {node} at {addr}: {reason}")]
    Unreachable {
        node: String,
        identity: [u8; 32],
        addr: SocketAddr,
        reason: String,
    },
    #[error("hop {hop} ({node}) failed: {reason}")]
    HopFailed {
        hop: usize,
        node: String,
        /// The node to avoid next time, if it is known.
        culprit: Option<[u8; 32]>,
        reason: String,
    },
    #[error("exit {exit} refused the session: {reason}")]
    Refused { exit: String, reason: String },
    #[error("building the circuit took longer than {} s", BUILD_TIMEOUT.as_secs())]
    Timeout,
    #[error("the first hop offers datagrams of {room} bytes, too small for a {hops}-hop tunnel")]
    DatagramsTooSmall { room: usize, hops: usize },
    #[error("{node} charges {price} per GiB and this client has no ledger to pay on (the daemon's --ledger, a session's ledger)")]
    NoWallet { node: String, price: u64 },
    #[error(transparent)]
    Protect(#[from] PlatformError),
    #[error("paying {node}: {source}")]
    Payment {
        node: String,
        #[source]
        source: WalletError,
    },
    #[error("paying {node}: {source}")]
    Prepay {
        node: String,
        #[source]
        source: hopwire_proto::pay::PayError,
    },
}

impl ClientError {
    /// What a program should make of it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Link(LinkError::Bind { .. }) | ClientError::Protect(_) => ErrorKind::Platform,
            ClientError::Link(_) => ErrorKind::Internal,
            ClientError::Unreachable { .. }
            | ClientError::HopFailed { .. }
            | ClientError::Timeout
            | ClientError::DatagramsTooSmall { .. } => ErrorKind::HopUnreachable,
            ClientError::Refused { .. } => ErrorKind::ExitRefused,
            ClientError::NoWallet { .. } => ErrorKind::Config,
            ClientError::Payment { source, .. } => source.kind(),
            ClientError::Prepay { .. } => ErrorKind::Funds,
        }
    }

    /// The node that failed, so a rebuild can avoid it.
    pub fn culprit(&self) -> Option<[u8; 32]> {
        match self {
            ClientError::Unreachable { identity, .. } => Some(*identity),
            ClientError::HopFailed { culprit, .. } => *culprit,
            _ => None,
        }
    }
}

/// Why a live circuit ended.
#[derive(Debug, Clone)]
pub struct Loss {
    pub reason: String,
    /// The node that failed, if the circuit could tell.
    pub culprit: Option<[u8; 32]>,
}

/// Bytes through the tunnel, counted as inner (IP) bytes.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Cells through this circuit each way, and their payloads (WireGuard
/// datagrams): from these the client knows exactly what each hop counts.
#[derive(Debug, Default)]
pub struct CellCount {
    sent: Flow,
    received: Flow,
    /// Bytes of payment messages (receipts out; usage reports and
    /// acknowledgements in) on the client's link, layers included.
    pub payment_bytes: AtomicU64,
}

/// Cells one way and the bytes of their payloads.
#[derive(Debug, Default)]
struct Flow {
    cells: AtomicU64,
    payload: AtomicU64,
}

impl Flow {
    fn add(&self, payload: usize) {
        self.cells.fetch_add(1, Ordering::Relaxed);
        self.payload.fetch_add(payload as u64, Ordering::Relaxed);
    }

    fn load(&self) -> (u64, u64) {
        (self.cells.load(Ordering::Relaxed), self.payload.load(Ordering::Relaxed))
    }
}

impl CellCount {
    fn sent(&self, payload: usize) {
        self.sent.add(payload);
    }

    fn received(&self, payload: usize) {
        self.received.add(payload);
    }

    /// What hop `hop` of `hops` carried ([`cell_size`] summed, both ways).
    pub fn at_hop(&self, hop: usize, hops: usize) -> u64 {
        let (sent, sent_payload) = self.sent.load();
        let (received, received_payload) = self.received.load();
        cell_size(0, hops, hop)
            .saturating_mul(sent.saturating_add(received))
            .saturating_add(sent_payload)
            .saturating_add(received_payload)
    }

    /// What `lost` more backward cells would have counted at hop `hop`,
    /// each the size of the received ones on average.
    pub fn lost_at_hop(&self, lost: u64, hop: usize, hops: usize) -> u64 {
        let (cells, payload) = self.received.load();
        let Some(average) = payload.checked_div(cells) else {
            return 0;
        };
        lost.saturating_mul(cell_size(average, hops, hop))
    }
}

/// The client's payments to one hop of the circuit.
#[derive(Debug)]
pub struct HopPay {
    pub hop: usize,
    pub record: VerifiedRecord,
    pub channel: PayerChannel,
    /// What the hop confirmed this circuit paid it (beyond earlier
    /// circuits' sessions on the channel).
    pub acked: u64,
    /// Why paying it stopped (deposit spent), if it did.
    pub error: Option<String>,
    /// Bytes of the cells the hop sent back that never arrived, as of its
    /// last usage report: the client counts them as carried
    /// ([`ClientCircuit::unseen_backward`], [`LOST_SHARE`]).
    pub lost: u64,
    /// Topping its channel up on the ledger.
    top_up: TopUp,
    /// How fast the hop carries the circuit, for how far ahead to pay it.
    pace: Pace,
}

/// A hop's speed, measured on what the client counted itself over windows
/// of at least [`Pace::WINDOW`] (two usage reports close together say
/// little about speed).
#[derive(Debug)]
struct Pace {
    since: Instant,
    counted: u64,
    bytes_per_s: u64,
}

impl Pace {
    const WINDOW: Duration = Duration::from_millis(100);

    fn new(now: Instant) -> Self {
        Self {
            since: now,
            counted: 0,
            bytes_per_s: 0,
        }
    }

    /// The hop has carried `counted` bytes by `now`: its speed over the
    /// last whole window.
    fn update(&mut self, counted: u64, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= Self::WINDOW {
            let moved = counted.saturating_sub(self.counted);
            self.bytes_per_s = (moved as f64 / elapsed.as_secs_f64()) as u64;
            self.since = now;
            self.counted = counted;
        }
        self.bytes_per_s
    }
}

/// Where topping a hop's channel up stands, for the circuit paying into it.
#[derive(Debug, Default)]
enum TopUp {
    #[default]
    Idle,
    /// On the ledger now; `owed` is the usage report that found the deposit
    /// spent meanwhile, answered once the top-up lands.
    Running { owed: Option<u64> },
    /// The ledger refused it (the account is out of money, say): not
    /// tried again on this circuit.
    Failed(String),
}

pub type Payments = Arc<Mutex<Vec<HopPay>>>;

/// A built circuit to an exit with a session begun.
#[derive(Debug)]
pub struct Tunnel {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    /// Where data cells go when the guard speaks the cell path.
    cell_path: Option<CellPath>,
    circuit: Arc<Mutex<ClientCircuit>>,
    circuit_id: u32,
    control: Option<(SendStream, RecvStream)>,
    pub path: Vec<VerifiedRecord>,
    pub params: SessionParams,
    pub mtu: u16,
    pub build_time: Duration,
    /// One entry per charging hop.
    pub payments: Payments,
    pub cells: Arc<CellCount>,
    wallet: Option<Arc<Wallet>>,
}

fn hop_failed(path: &[VerifiedRecord], hop: usize, reason: String) -> ClientError {
    ClientError::HopFailed {
        hop: hop + 1,
        node: path[hop].short_id(),
        culprit: path.get(hop).map(|r| r.record().identity),
        reason,
    }
}

impl Tunnel {
    /// Builds a circuit along `path` (first hop first, exit last) and begins
    /// a session at the exit with `hello`.
    /// Hops that charge are paid from `wallet`: a channel each, the first
    /// chunk prepaid before the session begins.
    pub async fn build<P: Platform>(
        platform: &P,
        path: &[VerifiedRecord],
        hello: &ClientHello,
        wallet: Option<Arc<Wallet>>,
    ) -> Result<Self, ClientError> {
        let started = Instant::now();
        tokio::time::timeout(BUILD_TIMEOUT, Self::build_inner(platform, path, hello, wallet))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map(|mut t| {
                t.build_time = started.elapsed();
                t
            })
    }

    async fn build_inner<P: Platform>(
        platform: &P,
        path: &[VerifiedRecord],
        hello: &ClientHello,
        wallet: Option<Arc<Wallet>>,
    ) -> Result<Self, ClientError> {
        let guard = path[0].record();
        let unreachable = |reason: String| ClientError::Unreachable {
            node: path[0].short_id(),
            identity: guard.identity,
            addr: guard.quic_addr,
            reason,
        };
        let bind: SocketAddr = if guard.quic_addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = link::bind_udp(bind)?;
        platform.protect(std::os::fd::AsFd::as_fd(&socket), guard.quic_addr)?;
        let (mut endpoint, socket) = link::endpoint(socket, None)?;
        endpoint.set_default_client_config(link::client_config(guard.identity)?);
        let conn = endpoint
            .connect(guard.quic_addr, link::SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // A fresh socket: registering cannot find the index taken.
        let cell_path = CellLink::of(&conn, 0)
            .map(Arc::new)
            .filter(|link| socket.register(link))
            .map(|link| CellPath { socket, link });
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
        let io = |hop: usize| move |e: framing::SetupError| hop_failed(path, hop, e.to_string());

        let mut circuit = ClientCircuit::new();
        let circuit_id: u32 = rand::thread_rng().gen();
        let max_extends = (path.len() - 1) as u8;
        let create = circuit.create(
            &mut rand::rngs::OsRng,
            circuit_id,
            guard.identity,
            guard.onion_key,
            max_extends,
        );
        framing::write_message(&mut send, &create).await.map_err(io(0))?;
        match framing::read_message::<LinkMessage>(&mut recv).await.map_err(io(0))? {
            LinkMessage::Created { onionskin } => circuit
                .add_hop(&onionskin)
                .map_err(|e| hop_failed(path, 0, e.to_string()))?,
            LinkMessage::Destroy { reason } => return Err(hop_failed(path, 0, reason)),
            other => return Err(hop_failed(path, 0, format!("unexpected answer {other:?}"))),
        }
        for (i, next) in path.iter().enumerate().skip(1) {
            let r = next.record();
            let extend = circuit
                .extend(&mut rand::rngs::OsRng, r.quic_addr, r.identity, r.onion_key)
                .map_err(|e| hop_failed(path, i, e.to_string()))?;
            framing::write_message(&mut send, &extend).await.map_err(io(i - 1))?;
            match read_backward(&mut circuit, &mut recv, path).await? {
                (_, BackwardMessage::Extended { onionskin }) => circuit
                    .add_hop(&onionskin)
                    .map_err(|e| hop_failed(path, i, e.to_string()))?,
                (from, BackwardMessage::Failed { reason }) => {
                    // The hop before the new one says why it could not extend.
                    return Err(hop_failed(path, (from + 1).min(path.len() - 1), reason));
                }
                (from, other) => return Err(hop_failed(path, from, format!("unexpected answer {other:?}"))),
            }
        }
        debug!(data_ciphers = ?circuit.data_ciphers(), "circuit built");
        let mut payments = Vec::new();
        let cells = Arc::new(CellCount::default());
        let session_id: [u8; 16] = rand::thread_rng().gen();
        for (i, hop) in path.iter().enumerate() {
            let price = hop.record().quote.price_per_gib;
            if price == 0 {
                continue;
            }
            let node = hop.short_id();
            let Some(wallet) = &wallet else {
                return Err(ClientError::NoWallet { node, price });
            };
            let payment = |source| ClientError::Payment {
                node: hop.short_id(),
                source,
            };
            let mut channel = wallet.channel_for(hop, session_id).await.map_err(payment)?;
            let acked = loop {
                let receipt = channel.prepay().map_err(|source| ClientError::Prepay {
                    node: hop.short_id(),
                    source,
                })?;
                wallet.remember(&channel, hop);
                let pay = circuit
                    .seal_control(
                        i,
                        &ForwardMessage::Pay {
                            payer: channel.payer(),
                            receipt,
                        },
                    )
                    .map_err(|e| hop_failed(path, i, e.to_string()))?;
                framing::write_message(&mut send, &pay).await.map_err(io(0))?;
                cells.payment_bytes.fetch_add(message_len(&pay), Ordering::Relaxed);
                match read_backward(&mut circuit, &mut recv, path).await? {
                    (from, BackwardMessage::Paid { amount, .. }) if from == i => {
                        break amount.saturating_sub(channel.base_amount())
                    }
                    // The hop would not go on with a channel used before
                    // (it was closed, or the hop lost its newest receipt):
                    // a new channel, once.
                    (from, BackwardMessage::Unpaid { reason }) if from == i && channel.base_amount() > 0 => {
                        tracing::info!(
                            "hop {} refused to resume channel: {reason}; opening a new one",
                            hop.short_id()
                        );
                        wallet.retire(channel.channel()).await;
                        channel = wallet.open_channel(hop, session_id).await.map_err(payment)?;
                    }
                    (from, BackwardMessage::Failed { reason } | BackwardMessage::Unpaid { reason }) => {
                        return Err(hop_failed(path, from, reason))
                    }
                    (from, other) => return Err(hop_failed(path, from, format!("unexpected answer {other:?}"))),
                }
            };
            payments.push(HopPay {
                hop: i,
                record: hop.clone(),
                channel,
                acked,
                error: None,
                lost: 0,
                top_up: TopUp::Idle,
                pace: Pace::new(Instant::now()),
            });
        }
        let last = path.len() - 1;
        let begin = circuit
            .seal_control(last, &ForwardMessage::Begin { hello: hello.clone() })
            .map_err(|e| hop_failed(path, last, e.to_string()))?;
        framing::write_message(&mut send, &begin).await.map_err(io(0))?;
        let params = match read_backward(&mut circuit, &mut recv, path).await? {
            (
                _,
                BackwardMessage::Began {
                    hello: ExitHello::Accepted(p),
                },
            ) => p,
            (
                _,
                BackwardMessage::Began {
                    hello: ExitHello::Refused { reason },
                },
            ) => {
                return Err(ClientError::Refused {
                    exit: path[last].short_id(),
                    reason,
                })
            }
            (from, BackwardMessage::Failed { reason }) => return Err(hop_failed(path, from, reason)),
            (from, other) => return Err(hop_failed(path, from, format!("unexpected answer {other:?}"))),
        };
        let room = conn.max_datagram_size().unwrap_or(0);
        let mtu =
            link::tunnel_mtu(room, path.len()).ok_or(ClientError::DatagramsTooSmall { room, hops: path.len() })?;
        Ok(Self {
            endpoint,
            conn,
            cell_path,
            circuit: Arc::new(Mutex::new(circuit)),
            circuit_id,
            control: Some((send, recv)),
            path: path.to_vec(),
            params,
            mtu,
            build_time: Duration::ZERO,
            payments: Arc::new(Mutex::new(payments)),
            cells,
            wallet,
        })
    }

    /// The QUIC link to the first hop (for its round-trip time).
    pub fn first_link(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// Moves packets until the circuit dies and says why. `wg` is the
    /// session with the exit; a new one starts its handshake here.
    pub async fn pump<Io: PacketIo>(&mut self, tun: Arc<Io>, wg: Arc<Mutex<WgSession>>, traffic: Arc<Traffic>) -> Loss {
        let sender = CellSender {
            conn: self.conn.clone(),
            path: self.cell_path.clone(),
            circuit: self.circuit.clone(),
            circuit_id: self.circuit_id,
            cells: self.cells.clone(),
        };
        {
            let mut buf = [0u8; 256];
            let init = {
                let mut wg = lock(&wg);
                (!wg.is_established())
                    .then(|| wg.initiate(&mut buf).map(<[u8]>::to_vec))
                    .flatten()
            };
            if let Some(init) = init {
                sender.send(&init);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(outbound(tun.clone(), sender.clone(), wg.clone(), traffic.clone()));
        tasks.spawn(inbound(tun, sender.clone(), wg.clone(), traffic));
        tasks.spawn(timers(sender, wg));
        let guard = self.path[0].record().identity;
        let mut control = self.control.take();
        let (conn, circuit, path) = (self.conn.clone(), self.circuit.clone(), self.path.clone());
        let loss = {
            let watch = async {
                match control.as_mut() {
                    Some((send, recv)) => {
                        let payer = Payer {
                            payments: &self.payments,
                            cells: &self.cells,
                            wallet: self.wallet.clone(),
                            top_ups: tokio::task::JoinSet::new(),
                        };
                        watch_control(&circuit, send, recv, &path, payer).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = conn.closed() => Loss { reason: describe_close(&e), culprit: Some(guard) },
                loss = watch => loss,
                Some(done) = tasks.join_next() => Loss { reason: format!("tunnel task ended: {done:?}"), culprit: None },
            }
        };
        self.control = control;
        tasks.abort_all();
        loss
    }

    /// Tears the circuit down politely: every hop frees it at once.
    pub async fn close(mut self) {
        if let Some((mut send, _)) = self.control.take() {
            let reason = "client closed the circuit".to_owned();
            let _ = framing::write_message(&mut send, &LinkMessage::Destroy { reason }).await;
            let _ = send.finish();
        }
        self.conn.close(0u32.into(), b"client disconnected");
        let _ = tokio::time::timeout(Duration::from_millis(300), self.endpoint.wait_idle()).await;
    }
}

/// Reads the next backward control message and says which hop sent it.
async fn read_backward(
    circuit: &mut ClientCircuit,
    recv: &mut RecvStream,
    path: &[VerifiedRecord],
) -> Result<(usize, BackwardMessage), ClientError> {
    loop {
        let message = framing::read_message::<LinkMessage>(recv)
            .await
            .map_err(|e| hop_failed(path, 0, e.to_string()))?;
        match message {
            LinkMessage::Relay { layered } => {
                return circuit
                    .open_control(layered)
                    .map_err(|e| hop_failed(path, 0, e.to_string()));
            }
            LinkMessage::Destroy { reason } => return Err(hop_failed(path, 0, reason)),
            _ => continue,
        }
    }
}

/// A control message's size on the stream (framing aside).
fn message_len(m: &LinkMessage) -> u64 {
    match m {
        LinkMessage::Relay { layered } => layered.len() as u64,
        _ => 0,
    }
}

/// What the control stream needs to pay the hops.
struct Payer<'a> {
    payments: &'a Payments,
    cells: &'a CellCount,
    wallet: Option<Arc<Wallet>>,
    /// Top-ups on the ledger: the hop, and its channel's deposit in all.
    top_ups: tokio::task::JoinSet<(usize, Result<u64, WalletError>)>,
}

/// What answering a hop's usage report came to.
enum Answer {
    /// A receipt to send, sealed for the hop.
    Pay(LinkMessage),
    /// Nothing more is owed yet (or there is no wallet).
    Nothing,
    /// The hop's channel cannot pay for more and cannot be topped up: the
    /// circuit must end so the next one opens a fresh channel.
    Spent(String),
}

impl Payer<'_> {
    /// Answers a hop's usage report with a receipt sealed for that hop,
    /// and starts topping its channel up when it runs low.
    fn on_usage(&mut self, circuit: &Mutex<ClientCircuit>, hops: usize, from: usize, carried: u64) -> Answer {
        let Some(wallet) = self.wallet.clone() else {
            return Answer::Nothing;
        };
        let unseen = lock(circuit).unseen_backward(from);
        let mut payments = lock(self.payments);
        let receipt = answer_usage(&mut payments, self.cells, hops, from, unseen, carried);
        let Some(p) = payments.iter_mut().find(|p| p.hop == from) else {
            return Answer::Nothing;
        };
        wallet.remember(&p.channel, &p.record);
        let out = matches!(receipt, Err(PayError::OutOfDeposit { .. }));
        if matches!(p.top_up, TopUp::Idle) && (out || wallet.wants_top_up(&p.channel, &p.record)) {
            p.top_up = TopUp::Running { owed: None };
            let (record, id, deposit) = (p.record.clone(), p.channel.channel(), p.channel.deposit());
            self.top_ups
                .spawn(async move { (from, wallet.top_up(&record, id, deposit).await) });
        }
        let receipt = match receipt {
            Ok(Some(r)) => r,
            Ok(None) => return Answer::Nothing,
            Err(PayError::OutOfDeposit { .. }) => {
                let why = match &mut p.top_up {
                    TopUp::Running { owed } => {
                        *owed = Some(carried);
                        return Answer::Nothing;
                    }
                    TopUp::Failed(why) => why.clone(),
                    TopUp::Idle => unreachable!("a top-up starts when the deposit is out"),
                };
                let reason = spent(p, &why);
                p.error = Some(reason.clone());
                return Answer::Spent(reason);
            }
            Err(_) => return Answer::Nothing,
        };
        let pay = ForwardMessage::Pay {
            payer: p.channel.payer(),
            receipt,
        };
        drop(payments);
        seal_pay(circuit, from, &pay)
    }

    /// A top-up finished: the hop's channel pays on, and a report that
    /// found its deposit spent meanwhile is answered now.
    fn on_top_up(
        &mut self,
        circuit: &Mutex<ClientCircuit>,
        hops: usize,
        (from, result): (usize, Result<u64, WalletError>),
    ) -> Answer {
        let mut payments = lock(self.payments);
        let Some(p) = payments.iter_mut().find(|p| p.hop == from) else {
            return Answer::Nothing;
        };
        let owed = match std::mem::take(&mut p.top_up) {
            TopUp::Running { owed } => owed,
            _ => None,
        };
        match result {
            Ok(deposit) => {
                p.channel.raise_deposit(deposit);
                p.error = None;
                if let Some(wallet) = &self.wallet {
                    wallet.remember(&p.channel, &p.record);
                }
            }
            Err(e) => {
                warn!("hop {} ({}): {e}", from + 1, p.record.short_id());
                let why = e.to_string();
                p.error = Some(format!(
                    "topping up the channel to hop {} ({}): {why}",
                    from + 1,
                    p.record.short_id()
                ));
                p.top_up = TopUp::Failed(why.clone());
                return match owed {
                    Some(_) => Answer::Spent(spent(p, &why)),
                    None => Answer::Nothing,
                };
            }
        }
        let Some(carried) = owed else {
            return Answer::Nothing;
        };
        drop(payments);
        self.on_usage(circuit, hops, from, carried)
    }

    fn on_paid(&self, from: usize, amount: u64) {
        if let Some(p) = lock(self.payments).iter_mut().find(|p| p.hop == from) {
            p.acked = p.acked.max(amount.saturating_sub(p.channel.base_amount()));
        }
    }
}

/// Why a hop's channel cannot pay on.
fn spent(p: &HopPay, why: &str) -> String {
    format!(
        "the deposit of the payment channel to hop {} ({}) is spent, and {why}",
        p.hop + 1,
        p.record.short_id()
    )
}

/// A receipt sealed for hop `from` as a control message.
fn seal_pay(circuit: &Mutex<ClientCircuit>, from: usize, pay: &ForwardMessage) -> Answer {
    match lock(circuit).seal_control(from, pay) {
        Ok(sealed) => Answer::Pay(sealed),
        Err(_) => Answer::Nothing,
    }
}

/// The receipt answering hop `from`'s report that it carried `carried`
/// bytes: for what the client counted on that hop itself (with the `unseen`
/// cells it sent back that never arrived, up to 1/[`LOST_SHARE`] of the
/// rest, plus the tolerance) and one chunk ahead, or more at speed
/// ([`PayerChannel::pay_ahead`]) — never for an inflated report. `None` if
/// nothing more is owed; an error (also kept in the hop's `error`) if the
/// channel cannot pay, e.g. its deposit is spent.
fn answer_usage(
    payments: &mut [HopPay],
    cells: &CellCount,
    hops: usize,
    from: usize,
    unseen: u64,
    carried: u64,
) -> Result<Option<hopwire_proto::pay::SignedReceipt>, PayError> {
    let Some(p) = payments.iter_mut().find(|p| p.hop == from) else {
        return Ok(None);
    };
    let counted = cells.at_hop(from, hops);
    p.lost = cells.lost_at_hop(unseen, from, hops).min(counted / LOST_SHARE);
    let measured = counted.saturating_add(p.lost);
    p.channel.measure(measured.saturating_sub(p.channel.measured()));
    p.channel.pay_ahead(p.pace.update(counted, Instant::now()));
    p.channel.on_usage(carried).inspect_err(|e| {
        // A spent deposit is topped up, or ends the circuit with its reason.
        if matches!(e, PayError::OutOfDeposit { .. }) {
            return;
        }
        if p.error.is_none() {
            warn!("hop {} ({}): {e}", from + 1, p.record.short_id());
        }
        p.error = Some(format!("paying hop {} ({}): {e}", from + 1, p.record.short_id()));
    })
}

/// Watches the circuit's control stream: pays hops as they report usage
/// and as their top-ups land, and returns when a hop reports a failure or
/// the stream ends.
async fn watch_control(
    circuit: &Mutex<ClientCircuit>,
    send: &mut SendStream,
    recv: &mut RecvStream,
    path: &[VerifiedRecord],
    mut payer: Payer<'_>,
) -> Loss {
    let stream_lost = |e: String| Loss {
        reason: format!("the first hop closed the circuit ({e})"),
        culprit: Some(path[0].record().identity),
    };
    let (reader, mut received) = framing::reader::<LinkMessage>(recv);
    tokio::pin!(reader);
    let mut reader_done = false;
    loop {
        let answer = tokio::select! {
            () = &mut reader, if !reader_done => {
                reader_done = true;
                continue;
            }
            Some(done) = payer.top_ups.join_next() => match done {
                Ok(done) => payer.on_top_up(circuit, path.len(), done),
                Err(e) => return Loss { reason: format!("topping up a channel: {e}"), culprit: None },
            },
            message = received.recv() => match message {
                Some(Ok(message)) => match on_control(circuit, path, &mut payer, message) {
                    Ok(answer) => answer,
                    Err(loss) => return loss,
                },
                Some(Err(e)) => return stream_lost(e.to_string()),
                None => return stream_lost("its reader ended".into()),
            },
        };
        match answer {
            Answer::Pay(pay) => {
                payer
                    .cells
                    .payment_bytes
                    .fetch_add(message_len(&pay), Ordering::Relaxed);
                if framing::write_message(send, &pay).await.is_err() {
                    return Loss {
                        reason: "the first hop closed the circuit's control stream".into(),
                        culprit: Some(path[0].record().identity),
                    };
                }
            }
            Answer::Nothing => {}
            // The same exit and inner address come back on the new
            // circuit, so connections inside carry on.
            Answer::Spent(reason) => {
                return Loss {
                    reason: format!("{reason}; a new channel is opened with the next circuit"),
                    culprit: None,
                }
            }
        }
    }
}

/// One message on the control stream: what to answer, or why the circuit
/// is lost.
fn on_control(
    circuit: &Mutex<ClientCircuit>,
    path: &[VerifiedRecord],
    payer: &mut Payer<'_>,
    message: LinkMessage,
) -> Result<Answer, Loss> {
    match message {
        LinkMessage::Relay { layered } => {
            let len = layered.len() as u64;
            let opened = lock(circuit).open_control(layered);
            match opened {
                Ok((from, BackwardMessage::Usage { carried })) => {
                    payer.cells.payment_bytes.fetch_add(len, Ordering::Relaxed);
                    Ok(payer.on_usage(circuit, path.len(), from, carried))
                }
                Ok((from, BackwardMessage::Paid { amount, .. })) => {
                    payer.cells.payment_bytes.fetch_add(len, Ordering::Relaxed);
                    payer.on_paid(from, amount);
                    Ok(Answer::Nothing)
                }
                // The client's own payments failed: no node is to blame.
                Ok((from, BackwardMessage::Unpaid { reason })) => Err(Loss {
                    reason: format!(
                        "hop {} ({}) stopped carrying the circuit: {reason}",
                        from + 1,
                        path[from].short_id()
                    ),
                    culprit: None,
                }),
                Ok((from, BackwardMessage::Failed { reason })) => {
                    let culprit = path.get(from + 1).map(|r| r.record().identity);
                    let node = path.get(from + 1).map(VerifiedRecord::short_id).unwrap_or_default();
                    Err(Loss {
                        reason: format!(
                            "hop {} ({}) reports its next hop {node} lost: {reason}",
                            from + 1,
                            path[from].short_id()
                        ),
                        culprit,
                    })
                }
                _ => Ok(Answer::Nothing),
            }
        }
        LinkMessage::Destroy { reason } => Err(Loss {
            reason: format!("the first hop destroyed the circuit: {reason}"),
            culprit: None,
        }),
        _ => Ok(Answer::Nothing),
    }
}

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TimedOut => "the first hop stopped answering (link timed out)".into(),
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!("the first hop closed the link: {}", String::from_utf8_lossy(&c.reason))
        }
        quinn::ConnectionError::Reset => "the first hop reset the link (did it restart?)".into(),
        other => format!("link lost: {other}"),
    }
}

/// The link to the guard's cell path: the tunnel's socket, and the keys.
#[derive(Clone, Debug)]
struct CellPath {
    socket: Arc<CellSocket>,
    link: Arc<CellLink>,
}

/// Wraps WireGuard datagrams in the circuit's layers and sends them: on the
/// cell path when the guard speaks it, else as QUIC datagrams.
#[derive(Clone)]
struct CellSender {
    conn: quinn::Connection,
    path: Option<CellPath>,
    circuit: Arc<Mutex<ClientCircuit>>,
    circuit_id: u32,
    cells: Arc<CellCount>,
}

impl CellSender {
    /// Seals `buf[headroom .. headroom + len]` (a WireGuard datagram put
    /// there by the caller) in place; the cell is `buf[returned range]`.
    fn seal(&self, buf: &mut [u8], len: usize) -> Option<std::ops::Range<usize>> {
        let range = lock(&self.circuit).seal_data(buf, len, self.circuit_id).ok()?;
        self.cells.sent(len);
        Some(range)
    }

    fn room(&self) -> usize {
        headroom(lock(&self.circuit).len())
    }

    /// Sends one WireGuard datagram at once (control-path use: allocates).
    fn send(&self, datagram: &[u8]) {
        let room = self.room();
        let mut buf = vec![0u8; room + datagram.len() + 3 * TAG_LEN];
        buf[room..room + datagram.len()].copy_from_slice(datagram);
        let Some(cell) = self.seal(&mut buf, datagram.len()) else {
            return;
        };
        match &self.path {
            Some(path) => path.socket.send_now(&path.link, &buf[cell]),
            None => {
                let _ = self.conn.send_datagram(Bytes::copy_from_slice(&buf[cell]));
            }
        }
    }
}

/// TUN → WireGuard → layers → the guard, a read's batch at a time.
async fn outbound<Io: PacketIo>(tun: Arc<Io>, sender: CellSender, wg: Arc<Mutex<WgSession>>, traffic: Arc<Traffic>) {
    let mut batch = RecvBatch::default();
    let mut buf = vec![0u8; BUF];
    let mut queued = CellOut::default();
    let room = sender.room();
    loop {
        if let Err(e) = tun.recv_batch(&mut batch).await {
            debug!("reading TUN: {e}");
            continue;
        }
        for packet in batch.packets() {
            // IPv4 and IPv6 (the host routes IPv6 here only when the exit
            // carries it, and the exit checks every source); nothing else.
            if packet.is_empty() || !matches!(packet[0] >> 4, 4 | 6) {
                continue;
            }
            let len = {
                let mut wg = lock(&wg);
                match wg.encapsulate(packet, &mut buf[room..BUF - 3 * TAG_LEN]) {
                    Ok(Some(d)) => d.len(),
                    Ok(None) => continue,
                    Err(e) => {
                        debug!("encapsulating: {e:?}");
                        continue;
                    }
                }
            };
            let Some(cell) = sender.seal(&mut buf, len) else {
                continue;
            };
            traffic.sent.fetch_add(packet.len() as u64, Ordering::Relaxed);
            match &sender.path {
                Some(path) => queued.push(&path.socket, &path.link, &buf[cell]),
                // Waiting for room pushes back on the TUN device instead of dropping.
                None => {
                    if sender
                        .conn
                        .send_datagram_wait(Bytes::copy_from_slice(&buf[cell]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if let Some(path) = &sender.path {
            queued.flush(&path.socket).await;
        }
    }
}

/// The guard → layers → WireGuard → TUN: every cell already received goes
/// into one batch (up to its size), written to the TUN device at once.
async fn inbound<Io: PacketIo>(tun: Arc<Io>, sender: CellSender, wg: Arc<Mutex<WgSession>>, traffic: Arc<Traffic>) {
    let mut batch = SendBatch::default();
    let mut replies: Vec<Vec<u8>> = Vec::new();
    if let Some(path) = sender.path.clone() {
        let mut received = CellBatch::default();
        loop {
            path.socket.next_batch(&mut received).await;
            while !received.is_empty() {
                received.handle_until(|_, slot, c| {
                    open_into(&sender, &wg, &mut slot[c], &mut batch, &mut replies, &traffic);
                    !batch.is_full()
                });
                for r in replies.drain(..) {
                    sender.send(&r);
                }
                if let Err(e) = tun.send_batch(&mut batch).await {
                    debug!("writing TUN: {e}");
                }
            }
        }
    }
    let mut cell = vec![0u8; BUF];
    loop {
        let Ok(datagram) = sender.conn.read_datagram().await else {
            return;
        };
        let mut next = Some(datagram);
        while let Some(datagram) = next.take() {
            let n = datagram.len().min(cell.len());
            cell[..n].copy_from_slice(&datagram[..n]);
            open_into(&sender, &wg, &mut cell[..n], &mut batch, &mut replies, &traffic);
            for r in replies.drain(..) {
                sender.send(&r);
            }
            if batch.is_full() {
                break;
            }
            next = match link::datagram_if_ready(&sender.conn).await {
                Some(Ok(d)) => Some(d),
                Some(Err(_)) => break,
                None => None,
            };
        }
        if let Err(e) = tun.send_batch(&mut batch).await {
            debug!("writing TUN: {e}");
        }
    }
}

/// One cell from the circuit: its layers removed in place, WireGuard opened
/// into the next slot of `batch` (handshake answers into `replies`).
fn open_into(
    sender: &CellSender,
    wg: &Mutex<WgSession>,
    cell: &mut [u8],
    batch: &mut SendBatch,
    replies: &mut Vec<Vec<u8>>,
    traffic: &Traffic,
) {
    if split_cell(cell).is_none_or(|(id, _)| id != sender.circuit_id) {
        return;
    }
    let opened = lock(&sender.circuit).open_data(&mut cell[CIRCUIT_ID_LEN..]);
    let Ok(payload) = opened else { return };
    let payload = &cell[CIRCUIT_ID_LEN + payload.start..CIRCUIT_ID_LEN + payload.end];
    sender.cells.received(payload.len());
    let Some(slot) = batch.slot() else { return };
    let result = lock(wg).decapsulate(None, payload, slot, |d| replies.push(d.to_vec()));
    match result {
        Ok(Some(len)) => {
            traffic.received.fetch_add(len as u64, Ordering::Relaxed);
            batch.commit(len);
        }
        Ok(None) => {}
        Err(e) => debug!("datagram from exit: {e:?}"),
    }
}

async fn timers(sender: CellSender, wg: Arc<Mutex<WgSession>>) {
    let mut buf = vec![0u8; 512];
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let datagram = {
            let mut wg = lock(&wg);
            match wg.tick(&mut buf) {
                Ok(Some(d)) => Some(d.to_vec()),
                _ => None,
            }
        };
        if let Some(d) = datagram {
            sender.send(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use hopwire_proto::pay::Quote;
    use hopwire_proto::record::{NodeRecord, Role};
    use hopwire_proto::testkit;

    const QUOTE: Quote = Quote {
        price_per_gib: 1_000_000,
        chunk_bytes: 4 << 20,
        grace_bytes: 4 << 20,
    };
    const TOLERANCE: u64 = 1 << 20;

    fn hop(price: Quote) -> VerifiedRecord {
        let key = SigningKey::from_bytes(&[4; 32]);
        let now = hopwire_proto::time::unix_now();
        let record = NodeRecord {
            quote: price,
            ..testkit::record(&key, "198.18.1.2:4433", &[Role::Exit], "DE", now)
        };
        testkit::verified(&key, &record)
    }

    fn payments(deposit: u64) -> Vec<HopPay> {
        let payer = SigningKey::from_bytes(&[5; 32]);
        let mut channel = PayerChannel::new(payer.into(), "test".into(), [7; 32], [0; 16], deposit, QUOTE, TOLERANCE);
        channel.prepay().expect("prepay");
        vec![HopPay {
            hop: 2,
            record: hop(QUOTE),
            channel,
            acked: 0,
            error: None,
            lost: 0,
            top_up: TopUp::Idle,
            pace: Pace::new(Instant::now()),
        }]
    }

    /// `cells` packets of `payload` bytes received through a 3-hop circuit.
    fn counted(cells: u64, payload: usize) -> CellCount {
        let count = CellCount::default();
        for _ in 0..cells {
            count.received(payload);
        }
        count
    }

    #[test]
    fn an_exit_reporting_inflated_usage_is_paid_only_what_the_client_counted() {
        let cells = counted(20_000, 1200);
        let at_exit = cells.at_hop(2, 3);
        assert_eq!(
            at_exit,
            20_000 * (4 + 25 + 1200),
            "the exit's cells: id, one layer, payload"
        );
        let mut honest = payments(u64::MAX / 2);
        let paid = answer_usage(&mut honest, &cells, 3, 2, 0, at_exit)
            .expect("payable")
            .expect("a receipt");
        assert_eq!(
            paid.receipt.cumulative_amount,
            QUOTE.price_of(at_exit + QUOTE.chunk_bytes).expect("price"),
            "an honest report is paid in full, one chunk ahead"
        );
        let mut cheated = payments(u64::MAX / 2);
        let paid = answer_usage(&mut cheated, &cells, 3, 2, 0, at_exit * 10)
            .expect("payable")
            .expect("a receipt");
        assert_eq!(
            paid.receipt.cumulative_amount,
            QUOTE.price_of(at_exit + TOLERANCE + QUOTE.chunk_bytes).expect("price"),
            "a tenfold report is paid only for what the client counted, plus the tolerance and a chunk"
        );
        // A report for another hop than the one paid pays nothing.
        assert_eq!(answer_usage(&mut cheated, &cells, 3, 1, 0, at_exit), Ok(None));
    }

    #[test]
    fn a_hop_is_paid_for_the_cells_it_sent_that_were_lost_up_to_an_eighth() {
        let cells = counted(20_000, 1200);
        let at_exit = cells.at_hop(2, 3);
        let lost = 1_000 * cell_size(1200, 3, 2);
        assert_eq!(
            cells.lost_at_hop(1_000, 2, 3),
            lost,
            "lost cells the size of the received ones"
        );
        // 5 % of what the exit sent never arrived: its full report is paid.
        let mut pays = payments(u64::MAX / 2);
        let paid = answer_usage(&mut pays, &cells, 3, 2, 1_000, at_exit + lost)
            .expect("payable")
            .expect("a receipt");
        assert_eq!(
            paid.receipt.cumulative_amount,
            QUOTE.price_of(at_exit + lost + QUOTE.chunk_bytes).expect("price"),
        );
        assert_eq!(pays[0].lost, lost, "shown as the hop's lost bytes");
        // A claim of more than an eighth lost (the exit of a 1-hop circuit
        // skipping counters) is paid an eighth, and the tolerance.
        let mut pays = payments(u64::MAX / 2);
        let paid = answer_usage(&mut pays, &cells, 3, 2, 1_000_000, at_exit * 10)
            .expect("payable")
            .expect("a receipt");
        let measured = at_exit + at_exit / LOST_SHARE;
        assert_eq!(
            paid.receipt.cumulative_amount,
            QUOTE
                .price_of(measured + TOLERANCE.max(measured / 64) + QUOTE.chunk_bytes)
                .expect("price"),
        );
    }

    #[test]
    fn a_hops_pace_is_measured_over_whole_windows() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        // Two reports 10 ms apart say nothing yet.
        assert_eq!(pace.update(2 << 20, t0 + Duration::from_millis(10)), 0);
        // 20 MB in 200 ms: 100 MB/s, kept until the next whole window.
        assert_eq!(pace.update(20_000_000, t0 + Duration::from_millis(200)), 100_000_000);
        assert_eq!(pace.update(30_000_000, t0 + Duration::from_millis(210)), 100_000_000);
        // 10 MB in the next second, then nothing: slow again.
        assert_eq!(pace.update(30_000_000, t0 + Duration::from_millis(1200)), 10_000_000);
        assert_eq!(pace.update(30_000_000, t0 + Duration::from_millis(2200)), 0);
    }

    #[test]
    fn a_spent_deposit_is_reported_not_signed_past() {
        let cells = counted(20_000, 1200);
        let deposit = QUOTE.price_of(QUOTE.chunk_bytes * 2).expect("price");
        let mut pays = payments(deposit);
        let rest = answer_usage(&mut pays, &cells, 3, 2, 0, cells.at_hop(2, 3))
            .expect("the rest of the deposit")
            .expect("a receipt");
        assert_eq!(rest.receipt.cumulative_amount, deposit, "what is left is signed");
        let receipt = answer_usage(&mut pays, &cells, 3, 2, 0, cells.at_hop(2, 3));
        assert_eq!(
            receipt,
            Err(PayError::OutOfDeposit { deposit }),
            "nothing signed past the deposit"
        );
    }
}
