//! Circuit state, sans-IO: the client's view of a whole circuit and one
//! hop's view of its part.
//!
//! The client wraps a payload in one layer per hop, innermost for the last
//! hop; each hop opens its layer and finds either the next hop's layer (to
//! relay) or, at the last hop, the payload. The way back is the mirror
//! image. Data cells are built and opened in place in buffers the caller
//! owns; control messages are small and allocate.

use std::hash::Hash;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::{CryptoRng, RngCore};

use super::cell::{
    split_cell, BackwardMessage, Create, ForwardMessage, LinkMessage, CIRCUIT_ID_LEN, KIND_DATA, KIND_MESSAGE,
    KIND_RELAY, MAX_HOPS,
};
use super::handshake::{respond, ClientHandshake, ClientLayer, HandshakeError, ServerOnionskin};
use super::keys::OnionKeys;
use crate::ratelimit::TokenBucket;
use crate::sync::lock;

use super::layer::{aes_hardware, DataCipher, LayerError, Opener, Sealer, COUNTER_LEN, LAYER_OVERHEAD, TAG_LEN};

/// Bytes one hop adds to a data cell: counter, kind and tag.
pub const HOP_OVERHEAD: usize = LAYER_OVERHEAD + 1;

/// Bytes a data cell adds to its payload on a circuit of `hops` hops.
pub const fn cell_overhead(hops: usize) -> usize {
    CIRCUIT_ID_LEN + hops * HOP_OVERHEAD
}

/// The size of the cell hop `hop` (0 = guard) of an `hops`-hop circuit
/// counts for a packet of `payload` bytes: what it receives going forward
/// and sends going backward, `circuit id | layers of hops hop..hops |
/// payload`. Hops meter exactly this ([`HopCircuit::forward_cell`],
/// [`HopCircuit::backward_cell`]) and clients count with it, so a client
/// can check each hop's usage reports.
pub const fn cell_size(payload: u64, hops: usize, hop: usize) -> u64 {
    cell_overhead(hops.saturating_sub(hop)) as u64 + payload
}

/// Room a hop needs around a backward cell in its buffer to add its layer in
/// place ([`CircuitTable::route`]): counter and kind before, the tag after.
pub const WRAP_HEADROOM: usize = COUNTER_LEN + 1;
pub const WRAP_TAILROOM: usize = TAG_LEN;

/// Room to leave before the payload in a buffer handed to
/// [`ClientCircuit::seal_data`].
pub const fn headroom(hops: usize) -> usize {
    CIRCUIT_ID_LEN + hops * (COUNTER_LEN + 1)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CircuitError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("cell has an unknown kind {0}")]
    UnknownKind(u8),
    #[error("cell kind {kind} is not allowed at hop {hop}")]
    Misplaced { kind: u8, hop: usize },
    #[error("control message is malformed: {0}")]
    Malformed(String),
    #[error("a circuit has at most {MAX_HOPS} hops")]
    TooManyHops,
    #[error("no handshake is in progress")]
    NoHandshake,
    #[error("buffer too small for the cell")]
    NoRoom,
    #[error("the circuit's payments are behind what it carried")]
    Unpaid,
}

/// The client's side of a circuit: one layer per hop that answered.
#[derive(Debug)]
pub struct ClientCircuit {
    hops: Vec<ClientLayer>,
    pending: Option<ClientHandshake>,
    /// Offer hops AES-256-GCM data layers.
    offers_aes: bool,
}

impl Default for ClientCircuit {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCircuit {
    /// A circuit that offers AES-256-GCM data layers if this CPU has AES
    /// instructions.
    pub fn new() -> Self {
        Self::offering_aes(aes_hardware())
    }

    /// A circuit that offers AES-256-GCM data layers or not.
    pub fn offering_aes(offers_aes: bool) -> Self {
        Self {
            hops: Vec::new(),
            pending: None,
            offers_aes,
        }
    }

    /// Each hop's data cipher, first hop first.
    pub fn data_ciphers(&self) -> Vec<DataCipher> {
        self.hops.iter().map(|h| h.data_cipher).collect()
    }

    /// Hops whose handshake completed.
    pub fn len(&self) -> usize {
        self.hops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// The CREATE for the first hop.
    pub fn create<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        circuit_id: u32,
        identity: [u8; 32],
        onion_key: [u8; 32],
        max_extends: u8,
    ) -> LinkMessage {
        let (handshake, onionskin) = ClientHandshake::start(rng, identity, onion_key, self.offers_aes);
        self.pending = Some(handshake);
        LinkMessage::Create(Create {
            circuit_id,
            onionskin,
            max_extends,
        })
    }

    /// Completes the pending handshake (CREATED or EXTENDED) and adds the hop.
    pub fn add_hop(&mut self, reply: &ServerOnionskin) -> Result<(), CircuitError> {
        let handshake = self.pending.take().ok_or(CircuitError::NoHandshake)?;
        self.hops.push(handshake.finish(reply)?.client_layer());
        Ok(())
    }

    /// The EXTEND that asks the last hop to add the node `identity` at `addr`.
    pub fn extend<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        addr: std::net::SocketAddr,
        identity: [u8; 32],
        onion_key: [u8; 32],
    ) -> Result<LinkMessage, CircuitError> {
        if self.hops.len() >= MAX_HOPS {
            return Err(CircuitError::TooManyHops);
        }
        let (handshake, onionskin) = ClientHandshake::start(rng, identity, onion_key, self.offers_aes);
        let last = self.hops.len().checked_sub(1).ok_or(CircuitError::NoHandshake)?;
        let message = self.seal_control(
            last,
            &ForwardMessage::Extend {
                addr,
                identity,
                onionskin,
            },
        )?;
        self.pending = Some(handshake);
        Ok(message)
    }

    /// Wraps a control message for hop `hop` (0 is the first).
    pub fn seal_control(&mut self, hop: usize, message: &ForwardMessage) -> Result<LinkMessage, CircuitError> {
        if hop >= self.hops.len() {
            return Err(CircuitError::Misplaced {
                kind: KIND_MESSAGE,
                hop,
            });
        }
        let body = postcard::to_stdvec(message).map_err(|e| CircuitError::Malformed(e.to_string()))?;
        let mut layered = seal_vec(&mut self.hops[hop].control_out, KIND_MESSAGE, &body)?;
        for h in (0..hop).rev() {
            layered = seal_vec(&mut self.hops[h].control_out, KIND_RELAY, &layered)?;
        }
        Ok(LinkMessage::Relay { layered })
    }

    /// Opens a layered control message from the circuit: which hop sent it
    /// and what it says.
    pub fn open_control(&mut self, mut layered: Vec<u8>) -> Result<(usize, BackwardMessage), CircuitError> {
        for (i, hop) in self.hops.iter_mut().enumerate() {
            let (kind, body) = open_vec(&mut hop.control_in, &mut layered)?;
            match kind {
                KIND_RELAY => layered = body,
                KIND_MESSAGE => {
                    let message = postcard::from_bytes(&body).map_err(|e| CircuitError::Malformed(e.to_string()))?;
                    return Ok((i, message));
                }
                other => return Err(CircuitError::Misplaced { kind: other, hop: i }),
            }
        }
        Err(CircuitError::Misplaced {
            kind: KIND_RELAY,
            hop: self.hops.len(),
        })
    }

    /// Builds a data cell in place. The payload is at
    /// `buf[headroom(len) .. headroom(len) + payload_len]` and `buf` has
    /// `hops × 16` bytes more after it; returns the cell's range in `buf`.
    pub fn seal_data(
        &mut self,
        buf: &mut [u8],
        payload_len: usize,
        circuit_id: u32,
    ) -> Result<Range<usize>, CircuitError> {
        let mut start = headroom(self.hops.len());
        let mut end = start + payload_len;
        if buf.len() < end + self.hops.len() * TAG_LEN {
            return Err(CircuitError::NoRoom);
        }
        let mut kind = KIND_DATA;
        for hop in self.hops.iter_mut().rev() {
            start -= 1;
            buf[start] = kind;
            start -= COUNTER_LEN;
            end = hop.data_out.seal_in_place(buf, start, end)?;
            kind = KIND_RELAY;
        }
        start -= CIRCUIT_ID_LEN;
        buf[start..start + CIRCUIT_ID_LEN].copy_from_slice(&circuit_id.to_be_bytes());
        Ok(start..end)
    }

    /// Opens a data cell's layers (after the circuit id) in place and
    /// returns the payload's range in `layer`. Only the last hop may
    /// originate data.
    pub fn open_data(&mut self, layer: &mut [u8]) -> Result<Range<usize>, CircuitError> {
        let last = self.hops.len().saturating_sub(1);
        let mut at = 0..layer.len();
        for (i, hop) in self.hops.iter_mut().enumerate() {
            let inner = hop.data_in.open_in_place(&mut layer[at.clone()])?;
            let inner = at.start + inner.start..at.start + inner.end;
            let kind = *layer.get(inner.start).ok_or(LayerError::Truncated)?;
            let body = inner.start + 1..inner.end;
            match kind {
                KIND_RELAY if i < last => at = body,
                KIND_DATA if i == last => return Ok(body),
                KIND_RELAY | KIND_DATA => return Err(CircuitError::Misplaced { kind, hop: i }),
                other => return Err(CircuitError::UnknownKind(other)),
            }
        }
        Err(CircuitError::Misplaced {
            kind: KIND_RELAY,
            hop: last,
        })
    }

    /// Backward data cells hop `hop` sealed that never opened here, as far
    /// as the hops beyond it agree: the fewest unseen counters among their
    /// layers. Every backward data cell starts at the exit and is sealed by
    /// each hop on its way, so a cell lost after hop `hop` is unseen in its
    /// layer and in every layer beyond it too; a hop that drops cells it
    /// sealed, or skips counters, to claim more loss is held to what the
    /// hops beyond it saw. The exit has none beyond it: its claim is held to
    /// the hop before it, which leaves the loss between the two (node to
    /// node) to the payer's tolerance. On a 1-hop circuit the exit's claim
    /// stands alone, and a payer caps what it pays for it
    /// ([`crate::pay::LOST_SHARE`]).
    pub fn unseen_backward(&self, hop: usize) -> u64 {
        if hop >= self.hops.len() {
            return 0;
        }
        let from = hop.min(self.hops.len().saturating_sub(2));
        self.hops[from..].iter().map(|h| h.data_in.unseen()).min().unwrap_or(0)
    }
}

/// Which way a cell travels through a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client's side towards the exit.
    Forward,
    /// From the exit's side back towards the client.
    Backward,
}

/// What a hop does with a forward control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    /// Pass this layered message to the next hop.
    Relay(Vec<u8>),
    /// A message for this hop.
    Here(ForwardMessage),
}

/// One hop's part of a circuit: the link and circuit id on each side, and
/// this hop's layer keys. `L` names a link (a QUIC connection) in the shell.
#[derive(Debug)]
pub struct HopCircuit<L> {
    data_in: Opener,
    data_out: Sealer,
    control_in: Opener,
    control_out: Sealer,
    /// The link and circuit id towards the client.
    pub prev: (L, u32),
    /// The link and circuit id towards the exit, once extended.
    pub next: Option<(L, u32)>,
    /// How many more hops may be added after this one.
    pub max_extends: u8,
    /// The circuit's share of the node's capacity, if limited.
    pub limit: Option<TokenBucket>,
    /// What this hop carried for the circuit, and what it was paid for.
    pub meter: crate::pay::Meter,
}

impl<L: Copy> HopCircuit<L> {
    /// Answers a CREATE: runs the handshake with this node's onion keys and
    /// gives the hop and the CREATED to send back. The hop takes AES-256-GCM
    /// data layers if the client offers them and `takes_aes` (the node has
    /// AES instructions).
    pub fn create<R: RngCore + CryptoRng>(
        rng: &mut R,
        identity: &[u8; 32],
        onion_keys: &OnionKeys,
        now_unix: u64,
        prev: L,
        create: &Create,
        takes_aes: bool,
    ) -> Result<(Self, LinkMessage), CircuitError> {
        let Create {
            circuit_id,
            ref onionskin,
            max_extends,
        } = *create;
        let secret = onion_keys
            .find(&onionskin.key_id, now_unix)
            .ok_or(HandshakeError::UnknownOnionKey(onionskin.key_id))?;
        let (reply, secrets) = respond(rng, identity, &secret, onionskin, takes_aes)?;
        let data = secrets.data_cipher.algorithm();
        let hop = Self {
            data_in: Opener::with_algorithm(data, &secrets.data_forward),
            data_out: Sealer::with_algorithm(data, &secrets.data_backward),
            control_in: Opener::new(&secrets.control_forward),
            control_out: Sealer::new(&secrets.control_backward),
            prev: (prev, circuit_id),
            next: None,
            max_extends: max_extends.min((MAX_HOPS - 1) as u8),
            limit: None,
            meter: crate::pay::Meter::default(),
        };
        Ok((hop, LinkMessage::Created { onionskin: reply }))
    }

    /// True if this hop may add a next hop: it has none yet and the
    /// circuit's extend budget is not spent.
    pub fn may_extend(&self) -> bool {
        self.next.is_none() && self.max_extends > 0
    }

    /// Opens a forward data cell (`circuit id | layer`) in place. A relaying
    /// hop rewrites the circuit id for the next link and returns where to
    /// send which range of `cell`; the last hop returns the payload's range.
    pub fn forward_cell(&mut self, cell: &mut [u8]) -> Result<Forwarded<L>, CircuitError> {
        if !self.meter.admit(cell.len() as u64) {
            return Err(CircuitError::Unpaid);
        }
        let layer = cell.get_mut(CIRCUIT_ID_LEN..).ok_or(LayerError::Truncated)?;
        let inner = self.data_in.open_in_place(layer)?;
        let kind = *layer.get(inner.start).ok_or(LayerError::Truncated)?;
        let body = CIRCUIT_ID_LEN + inner.start + 1..CIRCUIT_ID_LEN + inner.end;
        match (kind, self.next) {
            (KIND_RELAY, Some((link, id))) => {
                // The body is preceded by counter and kind (9 bytes): room
                // for the next link's circuit id.
                let start = body.start - CIRCUIT_ID_LEN;
                cell[start..body.start].copy_from_slice(&id.to_be_bytes());
                Ok(Forwarded::Send {
                    link,
                    cell: start..body.end,
                })
            }
            (KIND_DATA, None) => Ok(Forwarded::Deliver(body)),
            (KIND_RELAY | KIND_DATA | KIND_MESSAGE, _) => Err(CircuitError::Misplaced { kind, hop: 0 }),
            (other, _) => Err(CircuitError::UnknownKind(other)),
        }
    }

    /// Wraps a backward data cell from the next hop (`buf[cell]`, `circuit id
    /// | layer`) in this hop's layer for the previous link, in place: it
    /// needs [`WRAP_HEADROOM`] bytes before the cell and [`WRAP_TAILROOM`]
    /// after it in `buf`. Returns the link and where the wrapped cell is.
    pub fn backward_cell(&mut self, buf: &mut [u8], cell: Range<usize>) -> Result<(L, Range<usize>), CircuitError> {
        self.wrap(KIND_RELAY, buf, cell)
    }

    /// Seals a payload at the last hop (the exit) for the client into `out`;
    /// returns the link and the sealed cell's length.
    pub fn seal_payload(&mut self, payload: &[u8], out: &mut [u8]) -> Result<(L, usize), CircuitError> {
        let start = WRAP_HEADROOM + CIRCUIT_ID_LEN;
        let end = start + payload.len();
        out.get_mut(start..end)
            .ok_or(CircuitError::NoRoom)?
            .copy_from_slice(payload);
        let (link, sealed) = self.wrap(KIND_DATA, out, WRAP_HEADROOM..end)?;
        Ok((link, sealed.end))
    }

    /// `buf[cell]` is `(a circuit id's room) | inner`; writes `prev id |
    /// counter | kind | sealed inner | tag` from [`WRAP_HEADROOM`] bytes
    /// before it.
    fn wrap(&mut self, kind: u8, buf: &mut [u8], cell: Range<usize>) -> Result<(L, Range<usize>), CircuitError> {
        if cell.len() < CIRCUIT_ID_LEN {
            return Err(LayerError::Truncated.into());
        }
        let start = cell.start.checked_sub(WRAP_HEADROOM).ok_or(CircuitError::NoRoom)?;
        if buf.len() < cell.end + WRAP_TAILROOM {
            return Err(CircuitError::NoRoom);
        }
        if !self.meter.admit((cell.len() + WRAP_HEADROOM + WRAP_TAILROOM) as u64) {
            return Err(CircuitError::Unpaid);
        }
        let (link, id) = self.prev;
        buf[start..start + CIRCUIT_ID_LEN].copy_from_slice(&id.to_be_bytes());
        // The kind takes the next hop's circuit id's last byte; the inner
        // layer stays where it is.
        buf[cell.start + CIRCUIT_ID_LEN - 1] = kind;
        let end = self.data_out.seal_in_place(buf, start + CIRCUIT_ID_LEN, cell.end)?;
        Ok((link, start..end))
    }

    /// Opens a forward control message.
    pub fn forward_control(&mut self, mut layered: Vec<u8>) -> Result<ControlAction, CircuitError> {
        let (kind, body) = open_vec(&mut self.control_in, &mut layered)?;
        match kind {
            KIND_RELAY if self.next.is_some() => Ok(ControlAction::Relay(body)),
            KIND_MESSAGE => Ok(ControlAction::Here(
                postcard::from_bytes(&body).map_err(|e| CircuitError::Malformed(e.to_string()))?,
            )),
            KIND_RELAY | KIND_DATA => Err(CircuitError::Misplaced { kind, hop: 0 }),
            other => Err(CircuitError::UnknownKind(other)),
        }
    }

    /// Seals a control message from this hop for the client.
    pub fn reply(&mut self, message: &BackwardMessage) -> Result<LinkMessage, CircuitError> {
        let body = postcard::to_stdvec(message).map_err(|e| CircuitError::Malformed(e.to_string()))?;
        Ok(LinkMessage::Relay {
            layered: seal_vec(&mut self.control_out, KIND_MESSAGE, &body)?,
        })
    }

    /// Wraps a backward control message from the next hop in this hop's layer.
    pub fn backward_control(&mut self, layered: &[u8]) -> Result<LinkMessage, CircuitError> {
        Ok(LinkMessage::Relay {
            layered: seal_vec(&mut self.control_out, KIND_RELAY, layered)?,
        })
    }
}

/// Where a forward data cell goes after this hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded<L> {
    /// Send this range of the cell on `link`.
    Send { link: L, cell: Range<usize> },
    /// The payload, at this range of the cell, is for this hop (the exit).
    Deliver(Range<usize>),
}

/// Why a cell was dropped, counted per reason.
#[derive(Debug, Default)]
pub struct DropCounts {
    pub unknown_circuit: AtomicU64,
    pub truncated: AtomicU64,
    pub replayed: AtomicU64,
    pub forged: AtomicU64,
    pub misplaced: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Cells beyond what the circuit paid for (plus grace).
    pub unpaid: AtomicU64,
}

impl DropCounts {
    pub fn count(&self, e: &CircuitError) {
        let counter = match e {
            CircuitError::Layer(LayerError::Replayed) => &self.replayed,
            CircuitError::Layer(LayerError::Forged) => &self.forged,
            CircuitError::Layer(_) | CircuitError::NoRoom => &self.truncated,
            CircuitError::Unpaid => &self.unpaid,
            _ => &self.misplaced,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        [
            &self.unknown_circuit,
            &self.truncated,
            &self.replayed,
            &self.forged,
            &self.misplaced,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// A shared hop: the shell's tasks for each side lock it per cell.
pub type SharedHop<L> = Arc<Mutex<HopCircuit<L>>>;

/// The circuits a node carries, found by the link and circuit id a cell
/// arrived with: the previous side's id leads forward, the next side's id
/// leads backward.
#[derive(Debug)]
pub struct CircuitTable<L> {
    /// Looked up for every cell: a fast hash, seeded per process (the ids
    /// are the neighbours' choice).
    entries: foldhash::HashMap<(L, u32), (SharedHop<L>, Direction)>,
    pub drops: DropCounts,
}

impl<L> Default for CircuitTable<L> {
    fn default() -> Self {
        Self {
            entries: foldhash::HashMap::default(),
            drops: DropCounts::default(),
        }
    }
}

/// What the shell does with a data cell that arrived on a link.
#[derive(Debug)]
pub enum Routed<L> {
    /// Send `buf[range]` on `link`.
    Relay { link: L, range: Range<usize> },
    /// This node is the circuit's exit: `buf[payload]` is for the session
    /// of the circuit `(prev link, prev id)`.
    Deliver { circuit: (L, u32), payload: Range<usize> },
    /// Dropped, and counted in [`CircuitTable::drops`].
    Dropped,
}

impl<L: Copy + Eq + Hash> CircuitTable<L> {
    pub fn len(&self) -> usize {
        self.entries.values().filter(|(_, d)| *d == Direction::Forward).count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if `id` is taken on `link` (ids are chosen by a link's opener).
    pub fn contains(&self, link: L, id: u32) -> bool {
        self.entries.contains_key(&(link, id))
    }

    /// Adds a new hop under its previous side; false if the id is taken.
    pub fn insert(&mut self, hop: SharedHop<L>) -> bool {
        let key = lock(&hop).prev;
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key, (hop, Direction::Forward));
        true
    }

    /// Records that the hop now continues on `next`.
    pub fn extend(&mut self, hop: &SharedHop<L>, next: (L, u32)) {
        lock(hop).next = Some(next);
        self.entries.insert(next, (hop.clone(), Direction::Backward));
    }

    pub fn get(&self, link: L, id: u32) -> Option<(SharedHop<L>, Direction)> {
        self.entries.get(&(link, id)).cloned()
    }

    /// Removes a hop from both sides.
    pub fn remove(&mut self, hop: &SharedHop<L>) {
        let (prev, next) = {
            let h = lock(hop);
            (h.prev, h.next)
        };
        self.entries.remove(&prev);
        if let Some(next) = next {
            self.entries.remove(&next);
        }
    }

    /// Routes one data cell, `buf[cell]`, that arrived on `link` at `now`,
    /// in place: forward cells are opened, backward ones wrapped in this
    /// hop's layer (which needs [`WRAP_HEADROOM`] and [`WRAP_TAILROOM`]
    /// around the cell in `buf`). Nothing is ever forwarded that did not
    /// authenticate, nor beyond the circuit's rate limit.
    pub fn route(&self, link: L, buf: &mut [u8], cell: Range<usize>, now: Instant) -> Routed<L> {
        let Some((id, _)) = buf.get(cell.clone()).and_then(split_cell) else {
            self.drops.truncated.fetch_add(1, Ordering::Relaxed);
            return Routed::Dropped;
        };
        let Some((hop, direction)) = self.entries.get(&(link, id)) else {
            self.drops.unknown_circuit.fetch_add(1, Ordering::Relaxed);
            return Routed::Dropped;
        };
        let mut hop = lock(hop);
        if let Some(limit) = &mut hop.limit {
            if !limit.admit(now, cell.len() as u64) {
                self.drops.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Routed::Dropped;
            }
        }
        let at = cell.start;
        let shift = |r: Range<usize>| r.start + at..r.end + at;
        let routed = match direction {
            Direction::Forward => hop.forward_cell(&mut buf[cell]).map(|f| match f {
                Forwarded::Send { link, cell } => Routed::Relay {
                    link,
                    range: shift(cell),
                },
                Forwarded::Deliver(payload) => Routed::Deliver {
                    circuit: hop.prev,
                    payload: shift(payload),
                },
            }),
            Direction::Backward => hop
                .backward_cell(buf, cell)
                .map(|(link, range)| Routed::Relay { link, range }),
        };
        routed.unwrap_or_else(|e| {
            self.drops.count(&e);
            Routed::Dropped
        })
    }
}

fn seal_vec(sealer: &mut Sealer, kind: u8, body: &[u8]) -> Result<Vec<u8>, CircuitError> {
    let mut buf = vec![0u8; COUNTER_LEN + 1 + body.len() + TAG_LEN];
    buf[COUNTER_LEN] = kind;
    buf[COUNTER_LEN + 1..COUNTER_LEN + 1 + body.len()].copy_from_slice(body);
    let end = sealer.seal_in_place(&mut buf, 0, COUNTER_LEN + 1 + body.len())?;
    buf.truncate(end);
    Ok(buf)
}

fn open_vec(opener: &mut Opener, layered: &mut [u8]) -> Result<(u8, Vec<u8>), CircuitError> {
    let inner = opener.open_in_place(layered)?;
    let kind = *layered.get(inner.start).ok_or(LayerError::Truncated)?;
    Ok((kind, layered[inner.start + 1..inner.end].to_vec()))
}

#[cfg(test)]
mod tests;
