//! Hopwire's async shells that nodes and clients share.
//!
//! What it does: owns sockets, files and tasks for the protocols of
//! `hopwire_proto`: [`link`] (QUIC links between hops, identity-bound
//! TLS), [`cellpath`] (data cells beside a QUIC link), [`framing`] (control messages on a stream), [`dht`] (discovery
//! over Kademlia), [`ledger`] (the settlement trait, the embedded sled
//! ledger and the client of the ledger service), [`store`] (receipts on
//! disk), [`keys`] (key files), [`tun_batch`] (packets to and from a TUN
//! device a batch at a time, with offload), [`protect`] (the hook a client's sockets
//! pass through to bypass its tunnel) and [`process`] (logging and
//! signals for the binaries).
//!
//! What it does not do: run a client tunnel or a node's roles (those are
//! `hopwire_client` and `hopwire_node_runtime`), or change the system's
//! network settings (`hopwire_sys`).
//!
//! May depend on: `hopwire_proto`. May not depend on: `hopwire_client`,
//! `hopwire_node_runtime`, `hopwire_sys`, `hopwire_api`.

pub mod cellpath;
pub mod dht;
pub mod framing;
pub mod keys;
pub mod ledger;
pub mod link;
pub mod process;
pub mod protect;
pub mod store;
pub mod tun_batch;
