//! Session setup between a client and its exit, carried end to end inside
//! the circuit (BEGIN / BEGAN): the client names its WireGuard key, the exit
//! lends it an inner address. After that, WireGuard datagrams flow as the
//! payload of the circuit's data cells.
//!
//! The framing of these messages on a stream is the shells' business
//! (`hopwire_net::framing`).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// 2: the exit's answer carries an inner IPv6 address.
pub const PROTOCOL_VERSION: u16 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    pub version: u16,
    /// The client's WireGuard public key for this session.
    pub wg_key: [u8; 32],
    /// The inner address the client had before a reconnect; the exit gives
    /// it back if it is free, so open connections survive.
    pub previous_addr: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitHello {
    Accepted(SessionParams),
    Refused { reason: String },
}

/// What the client needs to configure its side of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    pub inner_addr: Ipv4Addr,
    /// The session's inner IPv6 address, if the exit carries IPv6.
    pub inner_v6: Option<Ipv6Addr>,
    /// The exit's address inside the tunnel; it answers DNS there.
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}
