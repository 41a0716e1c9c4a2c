//! What travels between neighbouring nodes on a circuit.
//!
//! Data cells ride in QUIC DATAGRAM frames: `circuit id (4, big-endian) |
//! layer`, where a layer opens to `kind (1) | body` and `body` is either the
//! next hop's layer ([`KIND_RELAY`]) or the payload, a WireGuard datagram
//! between the client and the exit ([`KIND_DATA`]).
//!
//! Control messages ride on one reliable QUIC stream per circuit per link,
//! framed as in [`crate::session`]: [`LinkMessage`]s between neighbours, and
//! inside `LinkMessage::Relay` a layered control message that opens, at the
//! hop it is meant for, to `KIND_MESSAGE | postcard(message)`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::handshake::{ClientOnionskin, ServerOnionskin};
use crate::session::{ClientHello, ExitHello};

/// A layer's body is the next hop's layer.
pub const KIND_RELAY: u8 = 0;
/// A layer's body is the end-to-end payload (a WireGuard datagram).
pub const KIND_DATA: u8 = 1;
/// A layer's body is a control message for this hop.
pub const KIND_MESSAGE: u8 = 2;
pub const CIRCUIT_ID_LEN: usize = 4;
/// Most hops a circuit may have; relays enforce it with `max_extends`.
pub const MAX_HOPS: usize = 3;

/// Splits a data cell into its circuit id and its layer.
pub fn split_cell(cell: &[u8]) -> Option<(u32, &[u8])> {
    let (id, layer) = cell.split_first_chunk::<CIRCUIT_ID_LEN>()?;
    Some((u32::from_be_bytes(*id), layer))
}

/// Between two neighbouring nodes, on the circuit's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// Opens a circuit hop: the first message on a new stream.
    Create(Create),
    Created {
        onionskin: ServerOnionskin,
    },
    /// A layered control message for a hop further along (forward) or from
    /// one (backward).
    Relay {
        layered: Vec<u8>,
    },
    /// The circuit is gone; the receiver tears down its side and passes it on.
    Destroy {
        reason: String,
    },
}

/// What opens a circuit hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    /// The id data cells of this circuit carry on this link.
    pub circuit_id: u32,
    pub onionskin: ClientOnionskin,
    /// How many more hops this hop may add after itself.
    pub max_extends: u8,
}

/// Control messages from the client to one hop, inside that hop's layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardMessage {
    /// Add the next hop: connect to `addr`, check it is `identity`, and pass
    /// it the client's onionskin.
    Extend {
        addr: SocketAddr,
        identity: [u8; 32],
        onionskin: ClientOnionskin,
    },
    /// Start a tunnel session at this hop, the exit.
    Begin { hello: ClientHello },
    /// Pays this hop: a receipt on a channel from `payer` (its ledger
    /// account) to this node.
    Pay {
        payer: [u8; 32],
        receipt: crate::pay::SignedReceipt,
    },
}

/// Control messages from one hop back to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackwardMessage {
    Extended {
        onionskin: ServerOnionskin,
    },
    Began {
        hello: ExitHello,
    },
    /// What the client asked this hop could not be done.
    Failed {
        reason: String,
    },
    /// A receipt is on disk: the hop now carries up to `amount`'s worth.
    Paid {
        seq: u64,
        amount: u64,
    },
    /// What this hop has carried for the circuit (cell bytes, both ways).
    Usage {
        carried: u64,
    },
    /// This hop refused a receipt, or stops carrying the circuit because
    /// it was not paid in time: the client's side failed, not the hop or
    /// the path beyond it.
    Unpaid {
        reason: String,
    },
}
