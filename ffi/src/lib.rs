//! Hopwire's client for iOS and Android hosts: the client runtime behind
//! UniFFI bindings (Kotlin, Swift, Python).
//!
//! On a phone the OS owns the VPN interface. The host creates a
//! [`Session`] with its [`TunnelProvider`] (sets the OS's interface up and
//! hands over its descriptor), its [`SocketProtector`] (lets the session's
//! own sockets bypass the tunnel: Android's `VpnService.protect`) and,
//! optionally, an [`EventListener`]; then connects, disconnects, reads the
//! status, wallet, nodes and settings. Errors are [`HopwireError`], one
//! per [`ErrorKind`]: the same kinds as the daemon's API.
//!
//! Each session owns its tokio runtime and its logger: nothing global.
//!
//! May depend on: `hopwire_client` (through its `FdPlatform`),
//! `hopwire_api`, `hopwire_net`, `hopwire_proto`. May not depend on:
//! `hopwire_sys`, `hopwire_node_runtime` (the OS is the host's business).

mod host;
mod logs;
mod session;
mod types;

pub use host::{CallbackError, EventListener, SocketProtector, TunnelProvider};
pub use session::{Session, SessionConfig};
pub use types::{
    Channel, ConnectOptions, ErrorKind, Event, Hop, HopPayment, HopwireError, Node, NodeRole, Route, Settings,
    SettingsChange, SpendingSession, State, Status, TunnelSettings, TunnelState, Wallet,
};

uniffi::setup_scaffolding!();
