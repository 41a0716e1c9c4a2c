//! Hopwire's desktop app: a Tauri 2 window and tray over the client
//! daemon, for people rather than scripts.
//!
//! What it does: shows the tunnel's state, circuit, traffic and spending
//! as the daemon pushes them ([`watch`]), asks the daemon to connect,
//! disconnect, list nodes, show or close the wallet and change settings
//! ([`daemon`]), remembers the user's connect choices and autostart
//! ([`prefs`]), keeps to one window per user ([`instance`]), and lives in
//! the tray when its window is closed ([`app`]).
//!
//! What it does not do: touch the tunnel, routes or firewall (it runs as
//! the user; the privileged daemon does), or poll what the daemon pushes.
//!
//! May depend on: `hopwire_api` (the socket's types) and
//! `hopwire_proto` (node roles). May not depend on: `hopwire_client`,
//! `hopwire_net`, `hopwire_sys`, `hopwire_node_runtime`.

pub mod app;
pub mod daemon;
pub mod instance;
pub mod prefs;
pub mod watch;
