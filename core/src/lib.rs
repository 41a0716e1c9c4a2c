//! Hopwire's shared core.
//!
//! What it does: everything the client, the exit node and the bindings share.
//! The protocol parts are sans-IO and take their inputs as arguments:
//! [`packet`] (IP header views), [`policy`] (exit policy), [`pool`] (inner
//! addresses), [`record`] (signed node records), [`config`] (`node.toml`),
//! [`keys`] (key files), [`wg`] (WireGuard sessions over boringtun),
//! [`session`] (session setup messages), [`onion`] (circuits: handshake,
//! layers, cells, hop state), [`pay`] (payment channels and receipts),
//! [`ledger`] (settlement, with an embedded sled ledger), [`store`]
//! (receipts on disk) and [`api`] (the daemon's local API).
//! The tokio shell owns sockets, the TUN device and the system's network
//! settings: [`link`] (QUIC), [`tun`] (TUN devices), [`sys`] (routes, NAT,
//! DNS), [`node`] (the node runtime: relay and exit roles), [`client`] (one tunnel link) and
//! [`daemon`] (the privileged client daemon), [`dht`] (discovery over
//! Kademlia), and [`process`] (logging and
//! signals for the binaries) and [`sync`] (lock helpers).
//!
//! What it does not do: command-line parsing, process management and user
//! interaction live in the binaries.

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod keys;
pub mod ledger;
pub mod link;
pub mod node;
pub mod onion;
pub mod packet;
pub mod path;
pub mod pay;
pub mod policy;
pub mod pool;
pub mod process;
pub mod ratelimit;
pub mod record;
pub mod session;
pub mod store;
pub mod sync;
pub mod sys;
pub mod tun;
pub mod wallet;
pub mod wg;
