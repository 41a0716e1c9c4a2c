//! The host's side of a tunnel: what the runtime asks of the operating
//! system, as a trait each host implements.
//!
//! [`Platform::establish`] brings an interface up for a [`TunnelConfig`]
//! and hands back its packet I/O; [`Platform::reconfigure`] applies a new
//! config after a circuit rebuild; [`Platform::protect`] makes one of the
//! runtime's own sockets bypass the tunnel (Android's
//! `VpnService.protect`; on Linux a route around the tunnel to the peer);
//! [`Platform::teardown`] removes what establish set up.
//!
//! Two hosts live here: [`FdPlatform`] (the OS owns the interface and hands
//! over a file descriptor, as on Android and iOS) and [`MemoryPlatform`]
//! (packets over in-memory channels, for tests without root). The Linux
//! daemon's platform (TUN device, routes, DNS) lives with the daemon.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use hopwire_api::{Settings, TunnelState};
use hopwire_proto::sync::lock;

/// What the host sets up for a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The tunnel's inner IPv4 address (a /32).
    pub inner_v4: Ipv4Addr,
    /// The tunnel's inner IPv6 address (a /128), when IPv6 goes through
    /// the tunnel; `None`: the host blocks IPv6.
    pub inner_v6: Option<Ipv6Addr>,
    pub mtu: u16,
    /// Resolvers to use while connected (reached through the tunnel).
    pub dns: Vec<IpAddr>,
    /// Addresses that must not go into the tunnel: the first hop and the
    /// ledger. Everything else goes through it.
    pub bypass: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("setting up the tunnel interface: {0}")]
    Establish(String),
    #[error("reconfiguring the tunnel interface: {0}")]
    Reconfigure(String),
    #[error("the host refused to let a socket to {peer} bypass the tunnel")]
    Protect { peer: SocketAddr },
    #[error("blocking traffic outside the tunnel: {0}")]
    Firewall(String),
    #[error("{0}")]
    Recover(String),
}

pub use hopwire_net::tun_batch::{RecvBatch, SendBatch};

/// Packets in and out of the tunnel interface, a batch at a time.
pub trait PacketIo: Send + Sync + 'static {
    /// Reads what the system sent into the tunnel: one packet, or with
    /// offload every segment of one super-packet. Returns how many.
    fn recv_batch(&self, batch: &mut RecvBatch) -> impl Future<Output = io::Result<usize>> + Send;
    /// Gives every packet of `batch` to the system and empties it.
    fn send_batch(&self, batch: &mut SendBatch) -> impl Future<Output = io::Result<()>> + Send;
}

impl PacketIo for tun_rs::AsyncDevice {
    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.read(self).await
    }

    async fn send_batch(&self, batch: &mut SendBatch) -> io::Result<()> {
        batch.write(self).await
    }
}

/// What the runtime needs from the operating system.
pub trait Platform: Send + Sync + 'static {
    type Io: PacketIo;

    /// Brings the tunnel interface up for `config` and returns its I/O.
    fn establish(&self, config: &TunnelConfig) -> Result<Arc<Self::Io>, PlatformError>;

    /// Applies `config` after a circuit rebuild. Returns new I/O if the
    /// host had to make a new interface (the old one is then dropped).
    fn reconfigure(&self, config: &TunnelConfig) -> Result<Option<Arc<Self::Io>>, PlatformError>;

    /// Makes `socket`, about to talk to `peer`, bypass the tunnel. Every
    /// socket the runtime opens passes through here before it is used.
    fn protect(&self, socket: BorrowedFd<'_>, peer: SocketAddr) -> Result<(), PlatformError>;

    /// Removes the interface and what establish set up; safe to call twice.
    fn teardown(&self);

    /// Undoes what a previous run of this host left (called once, at the
    /// start). An error means the host cannot tell what was left: the
    /// runtime then holds the firewall closed, as lockdown does, until a
    /// tunnel comes up, and says why in the status.
    fn recover(&self) -> Result<(), PlatformError> {
        Ok(())
    }

    /// The tunnel's state is about to become `state`, under the settings
    /// in force (also called when they change). A host with a firewall
    /// blocks everything but the tunnel in every state but Disconnected,
    /// and in that one too with `settings.lockdown`; an error here at
    /// Connecting refuses the connect.
    fn on_state(&self, _state: &TunnelState, _settings: &Settings) -> Result<(), PlatformError> {
        Ok(())
    }
}

/// Why the host could not set its interface up, in the host's words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// What a mobile host implements: the OS makes the interface and says
/// which sockets may bypass it.
pub trait FdHost: Send + Sync + 'static {
    /// Sets the OS's VPN interface up for `config` and returns its file
    /// descriptor (IP packets, no packet-information header on Linux and
    /// Android; the runtime takes ownership).
    fn establish(&self, config: &TunnelConfig) -> Result<OwnedFd, HostError>;
    /// Lets `socket` bypass the VPN (Android `VpnService.protect` with
    /// its raw descriptor).
    fn protect(&self, socket: BorrowedFd<'_>) -> bool;
    /// The VPN interface is no longer needed.
    fn teardown(&self);
}

/// A platform whose interface the host's OS owns, reached through a file
/// descriptor: what the mobile bindings use.
pub struct FdPlatform<H> {
    host: H,
    current: Mutex<Option<TunnelConfig>>,
}

impl<H: FdHost> FdPlatform<H> {
    pub fn new(host: H) -> Self {
        Self {
            host,
            current: Mutex::new(None),
        }
    }

    fn open(&self, config: &TunnelConfig) -> Result<Arc<tun_rs::AsyncDevice>, PlatformError> {
        let fd = self
            .host
            .establish(config)
            .map_err(|e| PlatformError::Establish(e.to_string()))?;
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` comes from an `OwnedFd` whose ownership passes to
        // the device here (it closes it when dropped); the host promised a
        // TUN descriptor without packet information or offload headers.
        #[allow(unsafe_code)]
        let device = unsafe { tun_rs::AsyncDevice::from_fd(raw) }
            .map_err(|e| PlatformError::Establish(format!("the host's descriptor {raw}: {e}")))?;
        *lock(&self.current) = Some(config.clone());
        Ok(Arc::new(device))
    }
}

impl<H: FdHost> Platform for FdPlatform<H> {
    type Io = tun_rs::AsyncDevice;

    fn establish(&self, config: &TunnelConfig) -> Result<Arc<Self::Io>, PlatformError> {
        self.open(config)
    }

    fn reconfigure(&self, config: &TunnelConfig) -> Result<Option<Arc<Self::Io>>, PlatformError> {
        // The OS fixes an interface's addresses, MTU and DNS when it makes
        // it: a change needs a new one. The bypass list is the protect
        // callback's business here.
        let same = lock(&self.current).as_ref().is_some_and(|c| {
            (c.inner_v4, c.inner_v6, c.mtu, &c.dns) == (config.inner_v4, config.inner_v6, config.mtu, &config.dns)
        });
        if same {
            return Ok(None);
        }
        self.open(config).map(Some)
    }

    fn protect(&self, socket: BorrowedFd<'_>, peer: SocketAddr) -> Result<(), PlatformError> {
        if self.host.protect(socket) {
            Ok(())
        } else {
            Err(PlatformError::Protect { peer })
        }
    }

    fn teardown(&self) {
        if lock(&self.current).take().is_some() {
            self.host.teardown();
        }
    }
}

/// Packets over in-memory channels: the far end is a [`MemoryPeer`].
#[derive(Debug)]
pub struct MemoryIo {
    from_system: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    to_system: mpsc::Sender<Vec<u8>>,
}

impl PacketIo for MemoryIo {
    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let packet = self
            .from_system
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the test's end is gone"))?;
        batch.put(&packet);
        Ok(1)
    }

    async fn send_batch(&self, batch: &mut SendBatch) -> io::Result<()> {
        if batch.forward(&self.to_system).await {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "the test's end is gone"))
        }
    }
}

/// The system's side of a [`MemoryPlatform`]: what a test sends into the
/// tunnel and receives from it.
#[derive(Debug)]
pub struct MemoryPeer {
    pub to_tunnel: mpsc::Sender<Vec<u8>>,
    pub from_tunnel: mpsc::Receiver<Vec<u8>>,
}

/// A platform for tests: no root, no devices. Records what the runtime
/// asked of it.
#[derive(Debug, Default)]
pub struct MemoryPlatform {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    peer: Option<MemoryPeer>,
    configs: Vec<TunnelConfig>,
    protected: Vec<SocketAddr>,
    up: bool,
}

impl MemoryPlatform {
    /// The system's end of the interface, once it was established (taken
    /// once per interface).
    pub fn take_peer(&self) -> Option<MemoryPeer> {
        lock(&self.state).peer.take()
    }

    /// Every config established or reconfigured, oldest first.
    pub fn configs(&self) -> Vec<TunnelConfig> {
        lock(&self.state).configs.clone()
    }

    /// The peers of every socket the runtime protected.
    pub fn protected(&self) -> Vec<SocketAddr> {
        lock(&self.state).protected.clone()
    }

    pub fn is_up(&self) -> bool {
        lock(&self.state).up
    }
}

impl Platform for MemoryPlatform {
    type Io = MemoryIo;

    fn establish(&self, config: &TunnelConfig) -> Result<Arc<MemoryIo>, PlatformError> {
        let (to_tunnel, from_system) = mpsc::channel(1024);
        let (to_system, from_tunnel) = mpsc::channel(1024);
        let mut state = lock(&self.state);
        state.peer = Some(MemoryPeer { to_tunnel, from_tunnel });
        state.configs.push(config.clone());
        state.up = true;
        Ok(Arc::new(MemoryIo {
            from_system: tokio::sync::Mutex::new(from_system),
            to_system,
        }))
    }

    fn reconfigure(&self, config: &TunnelConfig) -> Result<Option<Arc<MemoryIo>>, PlatformError> {
        lock(&self.state).configs.push(config.clone());
        Ok(None)
    }

    fn protect(&self, _socket: BorrowedFd<'_>, peer: SocketAddr) -> Result<(), PlatformError> {
        lock(&self.state).protected.push(peer);
        Ok(())
    }

    fn teardown(&self) {
        let mut state = lock(&self.state);
        state.up = false;
        state.peer = None;
    }
}
