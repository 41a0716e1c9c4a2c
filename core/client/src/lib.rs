//! The Hopwire client runtime, one for every host.
//!
//! What it does: builds circuits and keeps a tunnel up through them
//! ([`tunnel`]), pays the hops ([`wallet`]), and reaches the operating
//! system only through a [`platform::Platform`] the host implements: the
//! Linux daemon (TUN + routes), a mobile app (a file descriptor from the
//! OS and a protect callback, [`platform::FdPlatform`]), or a test
//! (in-memory packet channels, [`platform::MemoryPlatform`]).
//!
//! What it does not do: create TUN devices, change routes, DNS or the
//! firewall itself, or serve the local API (the daemon does, in the
//! `hopwire` binary).
//!
//! May depend on: `hopwire_proto`, `hopwire_net`, `hopwire_api` (the event
//! and status types it publishes). May not depend on: `hopwire_sys`,
//! `hopwire_node_runtime`.

mod lookups;
pub mod platform;
pub mod runtime;
pub mod settings;
pub mod tunnel;
pub mod wallet;
