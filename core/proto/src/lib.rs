//! Hopwire's protocols, sans-IO.
//!
//! What it does: the logic both ends of every Hopwire exchange share, as
//! state machines and pure functions that take time and randomness as
//! arguments and write into buffers the caller owns: [`onion`] (handshake,
//! layers, cells, circuit state of the client and of each hop), [`pay`]
//! (payment channels, receipts, cell sizes), [`record`] (signed node
//! records), [`path`] (path selection), [`policy`] (exit policy), [`pool`]
//! (inner addresses), [`packet`] (IP header views), [`wg`] (WireGuard
//! sessions over boringtun), [`session`] (the client–exit session
//! messages), [`ratelimit`] (token buckets), [`sync`] (lock helpers),
//! [`safelog`] (scrubbed logging of addresses and keys) and [`time`] (the
//! clock reads the shells make once per turn). With the `testkit` feature,
//! [`testkit`] holds fixtures for tests, fuzzing and benchmarks.
//!
//! What it does not do: sockets, files, timers, tasks or the TUN device.
//!
//! May not depend on: any other Hopwire crate, nor tokio, quinn, libp2p,
//! sled, socket2 or tun-rs (`scripts/test.sh` checks this with `cargo
//! tree`).

pub mod onion;
pub mod packet;
pub mod path;
pub mod pay;
pub mod policy;
pub mod pool;
pub mod ratelimit;
pub mod record;
pub mod safelog;
pub mod session;
pub mod sync;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
pub mod wg;
