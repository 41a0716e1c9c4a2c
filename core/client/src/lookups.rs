//! The client's DHT: one short-lived instance for each side of the tunnel,
//! each under a fresh identity.
//!
//! Before a connect, lookups go around the tunnel (their sockets pass
//! through the platform's protect) from an instance nobody has seen
//! before. Once the nodes are found, that instance is shut down — every
//! connection closed — before the circuit is built, so no node of the
//! circuit keeps a connection to the client's own address it could send
//! on later. Lookups made while the tunnel is up go through it, from
//! another new instance; disconnecting shuts that one down too. No two
//! instances share an identity, so nothing links the client outside the
//! tunnel to the client inside it. Every instance is a DHT client (it
//! asks, never answers) and listens nowhere: nodes cannot dial it. The
//! instance inside the tunnel never dials an address that goes around it
//! (the guard's, the ledger's): such a connection would leave from the
//! client's own address, so it fails at once instead.
//!
//! What it does not do: choose nodes (the runtime does), or decide when
//! the tunnel is up (the runtime says so with [`Lookups::hold`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

use libp2p::kad::RecordKey;
use tokio::sync::{Mutex, MutexGuard};
use tracing::debug;

use hopwire_net::dht::{self, Dht, DhtConfig, DhtError, Found, LookupStats, Search, Transport};
use hopwire_net::protect::Protect;
use hopwire_proto::sync::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Around the tunnel (it is down): sockets protected.
    Outside,
    /// Through the tunnel.
    Inside,
}

pub(crate) struct Lookups {
    /// Bootstrap peers and the peer store; `protect` is set per side.
    config: DhtConfig,
    /// How sockets made while the tunnel is down bypass it.
    protect: Protect,
    tunnel_up: AtomicBool,
    /// Addresses routed around the tunnel while it is up.
    around: Arc<SyncMutex<Vec<IpAddr>>>,
    current: Mutex<Option<(Side, Dht)>>,
}

/// While held, no DHT instance runs or starts: the runtime holds it from
/// before a circuit is built until the tunnel's side is settled.
pub(crate) struct Hold<'a> {
    lookups: &'a Lookups,
    _current: MutexGuard<'a, Option<(Side, Dht)>>,
}

impl Hold<'_> {
    /// The tunnel is now up (or down): lookups after the hold ends go
    /// through it (or around it) from a new instance.
    pub(crate) fn tunnel_up(&self, up: bool) {
        self.lookups.tunnel_up.store(up, Ordering::Relaxed);
    }
}

impl Lookups {
    pub(crate) fn new(config: DhtConfig, protect: Protect) -> Self {
        Self {
            config,
            protect,
            tunnel_up: AtomicBool::new(false),
            around: Arc::default(),
            current: Mutex::new(None),
        }
    }

    /// The addresses the tunnel's routes send around it now (the first
    /// hop, the ledger): the instance inside never dials them.
    pub(crate) fn set_around(&self, addrs: &[IpAddr]) {
        *lock(&self.around) = addrs.to_vec();
    }

    /// The nodes that provide `key`, from the instance of the side the
    /// tunnel is on now (started if needed).
    pub(crate) async fn find(&self, key: RecordKey, search: Search) -> Result<(Vec<Found>, LookupStats), DhtError> {
        let dht = {
            let mut current = self.current.lock().await;
            let side = if self.tunnel_up.load(Ordering::Relaxed) {
                Side::Inside
            } else {
                Side::Outside
            };
            match current.as_ref() {
                Some((s, dht)) if *s == side => dht.clone(),
                _ => {
                    if let Some((_, old)) = current.take() {
                        old.shutdown().await;
                    }
                    let dht = self.spawn(side)?;
                    *current = Some((side, dht.clone()));
                    dht
                }
            }
        };
        dht.find(key, search).await
    }

    /// Shuts the running instance down (its connections closed) and keeps
    /// any other from starting until the hold is dropped.
    pub(crate) async fn hold(&self) -> Hold<'_> {
        let mut current = self.current.lock().await;
        if let Some((side, dht)) = current.take() {
            dht.shutdown().await;
            debug!(?side, "DHT instance closed");
        }
        Hold {
            lookups: self,
            _current: current,
        }
    }

    fn spawn(&self, side: Side) -> Result<Dht, DhtError> {
        let mut config = self.config.clone();
        config.protect = Some(match side {
            Side::Outside => self.protect.clone(),
            // Through the tunnel: the system's routes take them there,
            // except to the addresses routed around it.
            Side::Inside => {
                let around = self.around.clone();
                Protect::new(move |_, peer| {
                    if lock(&around).contains(&peer.ip()) {
                        Err(std::io::Error::other(
                            "this peer is reached around the tunnel, not through it",
                        ))
                    } else {
                        Ok(())
                    }
                })
            }
        });
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let dht = Dht::spawn(dht::keypair(&key), config)?;
        debug!(?side, peer = %dht.local_peer, "DHT instance started with a fresh identity");
        Ok(dht)
    }
}

/// A client's DHT settings: asks, never answers, listens nowhere.
pub(crate) fn client_config() -> DhtConfig {
    DhtConfig::new(Transport::Tcp, false)
}
