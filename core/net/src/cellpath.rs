//! The cell path: data cells between the two ends of a link in plain UDP
//! datagrams on their own QUIC sockets, beside the QUIC link that set them
//! up.
//!
//! Through QUIC every cell a relay passes costs a full QUIC receive and send
//! (packet and frame parsing, acknowledgements, congestion state, and two
//! or three task hand-offs). Between two ends that both speak it (ALPN
//! [`ALPN_CELLS`]: nodes, and clients with their guard) cells skip all of that: a received batch is handed to the
//! node's cell loop in one wake-up, and the cells it sends leave in batches
//! of equal-sized segments (UDP GSO). The QUIC link stays for everything
//! else: the control streams, liveness, and the keys.
//!
//! A cell packet is `index (4, big-endian, below 2^30) | counter (8) |
//! AES-256-GCM(cell) | tag (16)`: a [`Sealer`] layer behind the index the
//! receiver finds its link by. The keys and indices come from the link's
//! TLS 1.3 session (RFC 8446 exporter, label [`EXPORTER_LABEL`]): one key per
//! direction, unique to that QUIC connection, so a cell's bytes differ on
//! each link, and only the node at the other end of the link can make a
//! packet that opens. The counter is the nonce, and a sliding window refuses
//! replays. A QUIC packet always has bit 0x40 of its first byte set (quinn's
//! greasing of that bit is turned off on nodes' endpoints, in
//! `link::endpoint_config`); a cell packet's first byte is below
//! 0x40, so one socket carries both. The README's "The cell path" section
//! gives the whole security argument.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use hopwire_proto::onion::circuit::{WRAP_HEADROOM, WRAP_TAILROOM};
use hopwire_proto::onion::layer::{DataCipher, Opener, Sealer, LAYER_OVERHEAD};
use hopwire_proto::sync::{lock, read, write};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

/// The ALPN clients and nodes offer first on the links they open, and nodes
/// accept first: both ends then carry the link's cells on the cell path.
pub const ALPN_CELLS: &[u8] = b"hopwire/1+cells";
/// The TLS exporter label the cell path's keys and indices come from.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-hopwire-cell-path";
const INDEX_LEN: usize = 4;
/// Indices keep the first byte of a cell packet below 0x40.
const INDEX_MASK: u32 = 0x3FFF_FFFF;
/// Bytes a cell packet adds to a cell: fewer than a QUIC DATAGRAM frame adds,
/// so every cell sized for a QUIC link fits.
pub const CELL_PATH_OVERHEAD: usize = INDEX_LEN + LAYER_OVERHEAD;
const _: () = assert!(
    LAYER_OVERHEAD >= WRAP_TAILROOM,
    "a cell opened in the inbox has its tail room"
);
/// Received cells waiting for the node's cell loop, in bytes; beyond it they
/// are dropped, as a full router queue drops.
const INBOX_LIMIT: usize = 4 << 20;
/// Segments in one sent batch, at most (and never more than 64 KB).
const MAX_SEGMENTS: usize = 32;
const MAX_BATCH_BYTES: usize = 65_000;

/// True for the first byte of a cell packet, false for a QUIC packet's.
fn is_cell_packet(first: u8) -> bool {
    first & 0xC0 == 0
}

/// One link's cell path: its keys, its indices, the peer's address, and the
/// owner's name for the link (`tag`).
pub struct CellLink {
    pub tag: usize,
    peer: SocketAddr,
    /// The address the peer reaches this node at, as the link's QUIC
    /// packets leave from it (on a node with several, the kernel's choice
    /// could differ and the peer would not find the link).
    local_ip: Option<IpAddr>,
    /// What the peer finds this link by: put on every packet sent.
    send_index: u32,
    /// What this end finds this link by.
    recv_index: u32,
    sealer: Mutex<Sealer>,
    opener: Mutex<Opener>,
}

impl fmt::Debug for CellLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellLink")
            .field("tag", &self.tag)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl CellLink {
    /// Seals `cell` as a cell packet into `out` and returns its length
    /// ([`CELL_PATH_OVERHEAD`] bytes more than the cell's); `None` if the send
    /// counter ran out (or `out` is too short).
    fn seal_into(&self, cell: &[u8], out: &mut [u8]) -> Option<usize> {
        let (index, layer) = out.split_at_mut_checked(INDEX_LEN)?;
        let sealed = lock(&self.sealer).seal_to(cell, layer).ok()?;
        index.copy_from_slice(&self.send_index.to_be_bytes());
        Some(INDEX_LEN + sealed)
    }

    /// The cell path of `conn` when both ends agreed on it ([`ALPN_CELLS`]).
    pub fn of(conn: &quinn::Connection, tag: usize) -> Option<Self> {
        let data = conn.handshake_data()?;
        let data = data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
        if data.protocol.as_deref() != Some(ALPN_CELLS) {
            return None;
        }
        let mut secret = [0u8; 72];
        conn.export_keying_material(&mut secret, EXPORTER_LABEL, b"").ok()?;
        let opened = conn.side().is_client();
        let mut link = Self::from_secret(&secret, opened, conn.remote_address(), tag);
        link.local_ip = conn.local_ip();
        Some(link)
    }

    /// Splits the exported secret: the opener's key and the acceptor's, the
    /// acceptor's index and the opener's.
    fn from_secret(secret: &[u8; 72], opened: bool, peer: SocketAddr, tag: usize) -> Self {
        let part = |r: Range<usize>| -> [u8; 32] { secret[r].try_into().unwrap_or_else(|_| unreachable!("32 bytes")) };
        let index =
            |at: usize| u32::from_be_bytes([secret[at], secret[at + 1], secret[at + 2], secret[at + 3]]) & INDEX_MASK;
        let (opener_key, acceptor_key) = (part(0..32), part(32..64));
        let (acceptor_index, opener_index) = (index(64), index(68));
        let (send_key, recv_key, send_index, recv_index) = if opened {
            (opener_key, acceptor_key, acceptor_index, opener_index)
        } else {
            (acceptor_key, opener_key, opener_index, acceptor_index)
        };
        Self {
            tag,
            peer,
            local_ip: None,
            send_index,
            recv_index,
            sealer: Mutex::new(Sealer::with_algorithm(DataCipher::Aes256Gcm.algorithm(), &send_key)),
            opener: Mutex::new(Opener::with_algorithm(DataCipher::Aes256Gcm.algorithm(), &recv_key)),
        }
    }
}

/// What the cell path refused or dropped; the node reports them.
#[derive(Debug, Default)]
pub struct CellPathDrops {
    /// From no known link, or did not open (forged, replayed, truncated).
    pub refused: AtomicU64,
    /// Arrived while the cell loop was too far behind.
    pub overflowed: AtomicU64,
    /// Batches (or single cells) the socket would not send.
    pub unsent: AtomicU64,
}

/// Cells received, opened, and not yet handled, with the link each came on.
/// Each cell has room around it for a hop to wrap it in its layer in place
/// ([`WRAP_HEADROOM`], [`WRAP_TAILROOM`]).
#[derive(Default)]
pub struct CellBatch {
    /// The cells' bytes, up to `filled`; beyond it, room kept from earlier
    /// batches (so it is not zeroed again).
    data: Vec<u8>,
    filled: usize,
    /// The links the cells came on: one entry per run of cells from a link
    /// (cells arrive in runs, a receive call's worth from one neighbour).
    links: Vec<Arc<CellLink>>,
    /// Each cell: its entry in `links` and its slot in `data`, the cell
    /// with its room around it.
    cells: Vec<(usize, Range<usize>)>,
    /// The first cell not yet handled.
    next: usize,
}

impl CellBatch {
    /// Hands the cells in turn to `handle`, each as its link's tag, its slot
    /// and where in the slot the cell is, until `handle` returns false (the
    /// caller must flush before more) or none is left.
    pub fn handle_until(&mut self, mut handle: impl FnMut(usize, &mut [u8], Range<usize>) -> bool) {
        while let Some((at, slot)) = self.cells.get(self.next) {
            self.next += 1;
            let cell = WRAP_HEADROOM..slot.len() - WRAP_TAILROOM;
            if !handle(self.links[*at].tag, &mut self.data[slot.clone()], cell) {
                break;
            }
        }
        if self.is_empty() {
            self.cells.clear();
            self.links.clear();
            self.filled = 0;
            self.next = 0;
        }
    }

    /// True when every cell was handled.
    pub fn is_empty(&self) -> bool {
        self.next >= self.cells.len()
    }

    /// Opens the layer of a cell packet from the last link in `links` into
    /// the batch; false if it does not open (forged, replayed, truncated).
    fn open(&mut self, layer: &[u8]) -> bool {
        let Some(link) = self.links.last() else {
            return false;
        };
        let at = self.filled + WRAP_HEADROOM;
        // The layer's overhead is more than the tail room a cell needs.
        let end = at + layer.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        match lock(&link.opener).open_to(layer, &mut self.data[at..end]) {
            Ok(len) => {
                let slot = self.filled..at + len + WRAP_TAILROOM;
                self.filled = slot.end;
                self.cells.push((self.links.len() - 1, slot));
                true
            }
            Err(_) => false,
        }
    }
}

/// A QUIC endpoint's UDP socket: QUIC packets go to quinn, cell packets to
/// the cell loop of the node or client ([`CellSocket::next_batch`]).
pub struct CellSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    /// Looked up for each run of received cells: a fast hash.
    links: std::sync::RwLock<foldhash::HashMap<(SocketAddr, u32), Arc<CellLink>>>,
    inbox: Mutex<CellBatch>,
    arrived: tokio::sync::Notify,
    pub drops: CellPathDrops,
}

impl fmt::Debug for CellSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellSocket")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl CellSocket {
    /// Wraps a bound, non-blocking socket; call within a tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        Ok(Self {
            state: UdpSocketState::new((&socket).into())?,
            io: tokio::net::UdpSocket::from_std(socket)?,
            links: Default::default(),
            inbox: Default::default(),
            arrived: tokio::sync::Notify::new(),
            drops: CellPathDrops::default(),
        })
    }

    /// Starts taking cells for `link`; false if another link already has its
    /// index from that address (the caller then closes the link, and a new
    /// one gets other indices).
    pub fn register(&self, link: &Arc<CellLink>) -> bool {
        let mut links = write(&self.links);
        match links.entry((link.peer, link.recv_index)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(link.clone());
                true
            }
        }
    }

    /// Stops taking cells for `link`.
    pub fn unregister(&self, link: &CellLink) {
        let mut links = write(&self.links);
        if links
            .get(&(link.peer, link.recv_index))
            .is_some_and(|l| l.tag == link.tag)
        {
            links.remove(&(link.peer, link.recv_index));
        }
    }

    /// Waits for received cells and swaps them into `batch`, which must
    /// have been handled to the end ([`CellBatch::handle_until`]).
    pub async fn next_batch(&self, batch: &mut CellBatch) {
        debug_assert!(batch.is_empty() && batch.cells.is_empty());
        loop {
            let arrived = self.arrived.notified();
            {
                let mut inbox = lock(&self.inbox);
                if !inbox.is_empty() {
                    std::mem::swap(&mut *inbox, batch);
                    return;
                }
            }
            arrived.await;
        }
    }

    /// Takes the cell packets out of what one receive call returned: they go
    /// to the inbox, and the QUIC packets left in each buffer are moved up
    /// so quinn reads only those.
    fn take_cells(&self, bufs: &mut [IoSliceMut<'_>], metas: &mut [RecvMeta]) {
        let mut inbox: Option<MutexGuard<'_, CellBatch>> = None;
        for (buf, meta) in bufs.iter_mut().zip(metas.iter_mut()) {
            if meta.len == 0 || meta.stride == 0 {
                continue;
            }
            let data = &mut buf[..meta.len];
            if !data.chunks(meta.stride).any(|s| is_cell_packet(s[0])) {
                continue;
            }
            let mut kept = 0;
            let mut at = 0;
            while at < meta.len {
                let end = (at + meta.stride).min(meta.len);
                if is_cell_packet(data[at]) {
                    let inbox = inbox.get_or_insert_with(|| lock(&self.inbox));
                    self.take(inbox, meta.addr, &data[at..end]);
                } else {
                    data.copy_within(at..end, kept);
                    kept += end - at;
                }
                at = end;
            }
            meta.len = kept;
        }
        if inbox.is_some() {
            drop(inbox);
            self.arrived.notify_one();
        }
    }

    /// Opens one cell packet into the inbox: the decryption is the copy out
    /// of quinn's receive buffer.
    fn take(&self, inbox: &mut CellBatch, from: SocketAddr, packet: &[u8]) {
        let refuse = || {
            self.drops.refused.fetch_add(1, Ordering::Relaxed);
        };
        if packet.len() < CELL_PATH_OVERHEAD {
            return refuse();
        }
        let index = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        if inbox.filled + packet.len() > INBOX_LIMIT {
            self.drops.overflowed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The run's link, or one looked up.
        let same = |link: &Arc<CellLink>| link.peer == from && link.recv_index == index;
        if !inbox.links.last().is_some_and(same) {
            match read(&self.links).get(&(from, index)) {
                Some(link) => inbox.links.push(link.clone()),
                None => return refuse(),
            }
        }
        if !inbox.open(&packet[INDEX_LEN..]) {
            refuse();
        }
    }

    /// Sends one cell at once, alone: for the few cells no loop batches (a
    /// handshake answer, a timer's keepalive). Dropped if the socket is full.
    pub fn send_now(&self, link: &CellLink, cell: &[u8]) {
        let mut packet = vec![0u8; CELL_PATH_OVERHEAD + cell.len()];
        let sent = link.seal_into(cell, &mut packet).is_some()
            && AsyncUdpSocket::try_send(
                self,
                &Transmit {
                    destination: link.peer,
                    ecn: None,
                    contents: &packet,
                    segment_size: None,
                    src_ip: link.local_ip,
                },
            )
            .is_ok();
        if !sent {
            self.drops.unsent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends one batch; waits once if the socket is full, then drops it.
    async fn send(&self, transmit: &Transmit<'_>) {
        for _ in 0..2 {
            match AsyncUdpSocket::try_send(self, transmit) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.io.writable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!("cell path: sending to {}: {e}", transmit.destination);
                    break;
                }
            }
        }
        self.drops.unsent.fetch_add(1, Ordering::Relaxed);
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().clamp(1, MAX_SEGMENTS)
    }
}

/// Cells sealed for the cell path and not yet sent: per destination, runs of
/// equal-sized packets (the last may be shorter) that leave in one system
/// call each.
#[derive(Debug, Default)]
pub struct CellOut {
    pending: Vec<Pending>,
    spare: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Pending {
    to: SocketAddr,
    from: Option<IpAddr>,
    /// [`MAX_BATCH_BYTES`] long, zeroed once; the packets are `buf[..used]`.
    buf: Vec<u8>,
    used: usize,
    segment: usize,
    count: usize,
}

impl Pending {
    /// Whether a packet of `len` bytes joins this run: no shorter packet
    /// ended it, and it has room.
    fn takes(&self, len: usize, max_segments: usize) -> bool {
        self.used == self.count * self.segment
            && len <= self.segment
            && self.count < max_segments
            && self.used + len <= self.buf.len()
    }
}

impl CellOut {
    /// Seals `cell` for `link` into the run it belongs to: the encryption is
    /// the copy into the batch.
    pub fn push(&mut self, socket: &CellSocket, link: &CellLink, cell: &[u8]) {
        let len = CELL_PATH_OVERHEAD + cell.len();
        let max_segments = socket.max_segments();
        let run = match self
            .pending
            .iter()
            .rposition(|p| p.to == link.peer && p.from == link.local_ip)
        {
            Some(i) if self.pending[i].takes(len, max_segments) => i,
            _ => {
                let buf = self.spare.pop().unwrap_or_else(|| vec![0; MAX_BATCH_BYTES]);
                self.pending.push(Pending {
                    to: link.peer,
                    from: link.local_ip,
                    buf,
                    used: 0,
                    segment: len,
                    count: 0,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[run];
        if let Some(n) = link.seal_into(cell, &mut p.buf[p.used..]) {
            p.used += n;
            p.count += 1;
        }
    }

    /// Sends every run, in the order the cells were pushed.
    pub async fn flush(&mut self, socket: &CellSocket) {
        for p in std::mem::take(&mut self.pending) {
            if p.count > 0 {
                let transmit = Transmit {
                    destination: p.to,
                    ecn: None,
                    contents: &p.buf[..p.used],
                    segment_size: (p.count > 1).then_some(p.segment),
                    src_ip: p.from,
                };
                socket.send(&transmit).await;
            }
            self.spare.push(p.buf);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl AsyncUdpSocket for CellSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.io
            .try_io(Interest::WRITABLE, || self.state.send((&self.io).into(), transmit))
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(n) = self
                .io
                .try_io(Interest::READABLE, || self.state.recv((&self.io).into(), bufs, meta))
            {
                self.take_cells(&mut bufs[..n], &mut meta[..n]);
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// quinn's wait for the socket to take more.
struct Writable {
    socket: Arc<CellSocket>,
    waiting: Option<WritableFuture>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let socket = this.socket.clone();
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(async move { socket.io.writable().await }));
        let done = ready!(waiting.as_mut().poll(cx));
        this.waiting = None;
        Poll::Ready(done)
    }
}

#[cfg(test)]
mod tests;
