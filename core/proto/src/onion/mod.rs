//! Onion circuits, sans-IO: the handshake with each hop, the layers, the
//! cells, and the circuit state of the client and of each hop.
//!
//! Glossary: a *circuit* is a path of hops; a *hop* is one node on it; a
//! *layer* is one hop's encryption; a *cell* is one datagram on a link.
//! Nothing here touches a socket or reads a clock: time and randomness are
//! passed in, and the shell ([`hopwire_node_runtime`], [`hopwire_client::tunnel`]) moves the
//! bytes.

pub mod cell;
pub mod circuit;
pub mod handshake;
pub mod keys;
pub mod layer;
