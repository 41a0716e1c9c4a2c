//! The privileged client daemon: the client runtime on Linux, served on a
//! Unix socket.
//!
//! [`LinuxPlatform`] is the runtime's [`Platform`] here: a TUN device,
//! routes that send everything through it but the first hop and the
//! ledger (IPv6 too when the exit carries it, else IPv6 is blocked), the
//! tunnel's DNS (through systemd-resolved where it manages the resolver),
//! and a firewall that lets nothing but the tunnel and the daemon's own
//! marked sockets out while the tunnel is wanted (connecting, connected,
//! reconnecting, error) and, with lockdown, while disconnected too. A
//! crashed daemon's changes are undone at the next start from the state
//! file; when that file is unreadable, everything stays blocked. The socket speaks the API of
//! `hopwire_api`: one request per connection, or a `subscribe` that turns
//! the connection into a stream of events.
//!
//! What it does not do: build circuits or keep them up (the runtime in
//! `hopwire_client` does), or parse the command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

use hopwire_api::{Envelope, ErrorKind, Event, Request, Response, Settings, TunnelState, API_VERSION, MAX_LINE};
use hopwire_client::platform::{Platform, PlatformError, TunnelConfig};
use hopwire_client::runtime::{Client, ClientConfig, ConnectRequest};
use hopwire_proto::sync::lock;
use hopwire_sys::firewall::{self, Firewall};
use hopwire_sys::tun::{self, TunDevice};
use hopwire_sys::ClientNet;

/// How long a subscriber may take to accept one event line before it is
/// dropped (a stalled reader never holds the tunnel back either way).
const SUBSCRIBER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); `None` means root only.
    pub group: Option<String>,
    pub tun_name: String,
    /// The resolver file to point at the tunnel's DNS while connected.
    pub resolv_conf: PathBuf,
    /// Where the daemon records what it changed on the system (runtime
    /// bookkeeping: beside the socket).
    pub state_file: PathBuf,
    /// What survives a reboot: wallet, channels, guard, DHT peers.
    pub client: ClientConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another hopwire daemon is already serving {0}; stop it first")]
    AlreadyRunning(PathBuf),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("group `{0}` does not exist (see /etc/group)")]
    NoSuchGroup(String),
    #[error(transparent)]
    Client(#[from] hopwire_client::runtime::Error),
}

/// The tunnel on Linux: a TUN device, routes, DNS and the firewall.
pub struct LinuxPlatform {
    tun_name: String,
    firewall: Firewall,
    /// What the firewall's table holds now.
    table: Mutex<Table>,
    /// Whether the state blocks, and the settings in force, as last told.
    wanted: Mutex<(bool, Settings)>,
    resolv_conf: PathBuf,
    state_file: PathBuf,
    up: Mutex<Option<LinuxTunnel>>,
}

/// The firewall table as this daemon knows it.
#[derive(Debug, PartialEq, Eq)]
enum Table {
    /// At the start: a killed daemon may have left one.
    Unknown,
    Absent,
    Loaded(String),
}

struct LinuxTunnel {
    tun: Arc<TunDevice>,
    net: ClientNet,
    config: TunnelConfig,
    /// The device the machine reached the internet through before the
    /// tunnel: protected sockets are bound to it.
    uplink: String,
}

impl LinuxPlatform {
    pub fn new(config: &DaemonConfig) -> Self {
        Self {
            tun_name: config.tun_name.clone(),
            firewall: Firewall::default(),
            table: Mutex::new(Table::Unknown),
            wanted: Mutex::new((false, Settings::default())),
            resolv_conf: config.resolv_conf.clone(),
            state_file: config.state_file.clone(),
            up: Mutex::new(None),
        }
    }

    /// Brings the firewall's table to what the state, the settings and the
    /// tunnel's config ask for: written only when that changes, in one
    /// transaction, or removed when nothing is to be blocked.
    fn enforce(&self) -> Result<(), PlatformError> {
        let (blocks, settings) = lock(&self.wanted).clone();
        let script = (blocks || settings.lockdown).then(|| {
            let up = lock(&self.up);
            let (dns, ipv6) = match up.as_ref() {
                Some(t) => (t.config.dns.clone(), t.config.inner_v6.is_some()),
                None => (Vec::new(), false),
            };
            self.firewall.script(&firewall::Rules {
                tun: &self.tun_name,
                dns: &dns,
                ipv6,
                allow_lan: settings.allow_lan,
            })
        });
        let mut table = lock(&self.table);
        match script {
            Some(script) if *table != Table::Loaded(script.clone()) => {
                self.firewall
                    .load(&script)
                    .map_err(|e| PlatformError::Firewall(e.to_string()))?;
                info!(
                    lockdown = settings.lockdown,
                    allow_lan = settings.allow_lan,
                    "firewall blocking all but the tunnel"
                );
                *table = Table::Loaded(script);
            }
            None if *table != Table::Absent => {
                self.firewall.remove();
                if *table != Table::Unknown {
                    info!("firewall removed: traffic flows directly");
                }
                *table = Table::Absent;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Platform for LinuxPlatform {
    type Io = TunDevice;

    fn establish(&self, config: &TunnelConfig) -> Result<Arc<TunDevice>, PlatformError> {
        let fail = |e: String| PlatformError::Establish(e);
        let tun = Arc::new(
            tun::create(&self.tun_name, config.inner_v4, 32, config.mtu, true).map_err(|e| fail(e.to_string()))?,
        );
        let first_hop = config.bypass.first().copied();
        let uplink = match first_hop.map(hopwire_sys::route_get) {
            Some(Ok(hop)) => hop.dev,
            Some(Err(e)) => return Err(fail(format!("finding the uplink: {e}"))),
            None => return Err(fail("no first hop to route around the tunnel".into())),
        };
        let mut net = ClientNet::new(&self.state_file);
        let routed = match first_hop {
            Some(hop) => config
                .inner_v6
                .map_or(Ok(()), |v6| hopwire_sys::add_address(&self.tun_name, v6.into(), 128))
                .and_then(|()| net.route_all_through(&self.tun_name, hop, config.inner_v6.is_some())),
            None => Err(hopwire_sys::SysError::NoRoute(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
        }
        .and_then(|()| config.bypass.iter().skip(1).try_for_each(|a| net.bypass(*a)))
        .and_then(|()| net.set_dns(&self.tun_name, &self.resolv_conf, &config.dns));
        if let Err(e) = routed {
            net.restore();
            return Err(fail(format!("setting routes and DNS: {e}")));
        }
        *lock(&self.up) = Some(LinuxTunnel {
            tun: tun.clone(),
            net,
            config: config.clone(),
            uplink,
        });
        // The tunnel's resolvers may now be asked.
        self.enforce()?;
        Ok(tun)
    }

    fn reconfigure(&self, config: &TunnelConfig) -> Result<Option<Arc<TunDevice>>, PlatformError> {
        {
            let mut up = lock(&self.up);
            let Some(t) = up.as_mut() else {
                return Err(PlatformError::Reconfigure("the tunnel is not up".into()));
            };
            let fail = |e: String| PlatformError::Reconfigure(e);
            let tun = self.tun_name.as_str();
            // Only the current first hop and the ledger go around the tunnel.
            t.net.keep_only_bypass(&config.bypass);
            if config.inner_v4 != t.config.inner_v4 {
                hopwire_sys::add_address(tun, config.inner_v4.into(), 32)
                    .and_then(|()| hopwire_sys::del_address(tun, t.config.inner_v4.into(), 32))
                    .map_err(|e| fail(format!("moving the tunnel to its new address: {e}")))?;
            }
            if config.inner_v6 != t.config.inner_v6 {
                if let Some(old) = t.config.inner_v6 {
                    let _ = hopwire_sys::del_address(tun, old.into(), 128);
                }
                config
                    .inner_v6
                    .map_or(Ok(()), |v6| hopwire_sys::add_address(tun, v6.into(), 128))
                    .and_then(|()| t.net.route_v6(tun, config.inner_v6.is_some()))
                    .map_err(|e| fail(format!("moving the tunnel's IPv6: {e}")))?;
            }
            if config.dns != t.config.dns {
                t.net
                    .set_dns(tun, &self.resolv_conf, &config.dns)
                    .map_err(|e| fail(format!("updating DNS: {e}")))?;
            }
            t.tun
                .set_mtu(config.mtu)
                .map_err(|e| fail(format!("setting the MTU to {}: {e}", config.mtu)))?;
            t.config = config.clone();
        }
        self.enforce()?;
        Ok(None)
    }

    /// Binds the socket to the uplink device while the tunnel is up
    /// (`SO_BINDTODEVICE`: the kernel then routes it as if the tunnel's
    /// routes were not there), as Android's `protect()` does; before the
    /// tunnel is up the system's routes already go around it.
    /// The socket also carries the firewall's mark, which lets it out in
    /// every blocking state.
    fn protect(&self, socket: BorrowedFd<'_>, peer: SocketAddr) -> Result<(), PlatformError> {
        let socket = socket2::SockRef::from(&socket);
        socket.set_mark(firewall::MARK).map_err(|e| {
            warn!("marking a socket for the firewall: {e}");
            PlatformError::Protect { peer }
        })?;
        let Some(uplink) = lock(&self.up).as_ref().map(|t| t.uplink.clone()) else {
            return Ok(());
        };
        socket.bind_device(Some(uplink.as_bytes())).map_err(|e| {
            warn!("binding a socket to {uplink}: {e}");
            PlatformError::Protect { peer }
        })
    }

    /// Blocks everything but the tunnel in every state but Disconnected,
    /// and in that one too with lockdown.
    fn on_state(&self, state: &TunnelState, settings: &Settings) -> Result<(), PlatformError> {
        *lock(&self.wanted) = (!matches!(state, TunnelState::Disconnected), settings.clone());
        self.enforce()
    }

    /// The firewall follows at the state change that comes next.
    fn teardown(&self) {
        let taken = lock(&self.up).take();
        if let Some(mut t) = taken {
            t.net.restore();
        }
    }

    fn recover(&self) -> Result<(), PlatformError> {
        ClientNet::recover(&self.state_file).map_err(PlatformError::Recover)
    }
}

/// Binds the API socket, refusing to take it over from a live daemon.
async fn bind(config: &DaemonConfig) -> Result<UnixListener, DaemonError> {
    let path = &config.socket;
    let err = |source| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    if UnixStream::connect(path).await.is_ok() {
        return Err(DaemonError::AlreadyRunning(path.clone()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file nobody answers on is left by a crashed daemon.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let mode = match &config.group {
        Some(group) => {
            let gid = group_id(group).ok_or_else(|| DaemonError::NoSuchGroup(group.clone()))?;
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Looks a group up in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Moves what an older daemon kept beside its socket (a tmpfs that a
/// reboot empties) into the state directory, once, and says so.
fn migrate_state(socket: &Path, state_dir: &Path) {
    let Some(run_dir) = socket.parent() else { return };
    if run_dir == state_dir || !run_dir.join("wallet.key").exists() || state_dir.join("wallet.key").exists() {
        return;
    }
    if let Err(e) = std::fs::create_dir_all(state_dir) {
        warn!("cannot create the state directory {}: {e}", state_dir.display());
        return;
    }
    let moves: [(PathBuf, PathBuf); 4] = [
        (run_dir.join("wallet.key"), state_dir.join("wallet.key")),
        (run_dir.join("wallet"), state_dir.join("wallet")),
        (socket.with_extension("guard"), state_dir.join("guard")),
        (socket.with_extension("dht-peers"), state_dir.join("dht-peers")),
    ];
    for (from, to) in moves {
        if !from.exists() {
            continue;
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => info!(
                "moved {} to {} (state now survives a reboot)",
                from.display(),
                to.display()
            ),
            Err(e) => warn!("moving {} to {}: {e}", from.display(), to.display()),
        }
    }
}

/// Runs the daemon until `shutdown` completes, then disconnects.
pub async fn serve(config: DaemonConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DaemonError> {
    let listener = bind(&config).await?;
    migrate_state(&config.socket, &config.client.state_dir);
    // The runtime undoes what a crashed daemon left (or holds everything
    // blocked if it cannot tell what that was), and a firewall a killed
    // daemon left stays only if the settings ask for lockdown.
    let client = Client::start(LinuxPlatform::new(&config), config.client.clone())?;
    info!(socket = %config.socket.display(), state = %config.client.state_dir.display(), "daemon ready");
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let client = client.clone();
                    tokio::spawn(async move { answer(client, stream).await });
                }
                Err(e) => warn!("accepting on the API socket: {e}"),
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = accept => {}
    }
    info!("shutting down");
    client.shutdown().await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

fn error(client: &Client<LinuxPlatform>, kind: ErrorKind, message: String) -> Response {
    Response::Error {
        kind,
        message,
        status: client.status(),
    }
}

/// Parses one request line, checking the API version first.
fn parse(line: &str) -> Result<Request, (ErrorKind, String)> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| (ErrorKind::BadInput, format!("bad request: {e}")))?;
    let v = value.get("v").and_then(serde_json::Value::as_u64).unwrap_or(1);
    if v != u64::from(API_VERSION) {
        return Err((
            ErrorKind::Version,
            format!(
                "this daemon speaks API version {API_VERSION}, the request version {v}: use a hopwire CLI or app of the daemon's version"
            ),
        ));
    }
    serde_json::from_value::<Envelope>(value)
        .map(|e| e.request)
        .map_err(|e| (ErrorKind::BadInput, format!("bad request: {e}")))
}

async fn handle(client: &Client<LinuxPlatform>, request: Request) -> Response {
    let failed = |e: hopwire_client::runtime::Error| error(client, e.kind(), e.to_string());
    match request {
        Request::Status => Response::Ok {
            status: client.status(),
        },
        Request::Nodes { role, country } => match client.nodes(role, country.as_deref()).await {
            Ok(nodes) => Response::Nodes { nodes },
            Err(e) => failed(e),
        },
        Request::Wallet { close } => match client.wallet(close).await {
            Ok(wallet) => Response::Wallet { wallet },
            Err(e) => failed(e),
        },
        Request::Disconnect => Response::Ok {
            status: client.disconnect().await,
        },
        Request::Connect {
            records,
            hops,
            country,
            max_price,
        } => {
            let request = ConnectRequest {
                records,
                hops,
                country,
                max_price,
            };
            match client.connect(request).await {
                Ok(status) => Response::Ok { status },
                Err(e) => failed(e),
            }
        }
        Request::Settings { change } if change.is_empty() => Response::Settings {
            settings: client.settings(),
        },
        Request::Settings { change } => match client.change_settings(&change) {
            Ok(settings) => Response::Settings { settings },
            Err(e) => failed(e),
        },
        Request::Subscribe => unreachable!("subscriptions are streamed by `answer`"),
    }
}

async fn write_line<T: serde::Serialize>(write: &mut (impl AsyncWriteExt + Unpin), value: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_string(value).unwrap_or_else(|e| unreachable!("answer encodes: {e}"));
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Reads one request line from an API client and answers it, or streams
/// events to it until it hangs up or falls behind.
async fn answer(client: Client<LinuxPlatform>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let request = match parse(&line) {
        Ok(r) => r,
        Err((kind, message)) => {
            let _ = write_line(&mut write, &error(&client, kind, message)).await;
            return;
        }
    };
    if request != Request::Subscribe {
        let response = handle(&client, request).await;
        let _ = write_line(&mut write, &response).await;
        return;
    }
    // Subscribe before reading the status, so no transition falls between.
    let mut events = client.subscribe();
    let subscribed = Response::Subscribed {
        status: client.status(),
    };
    if write_line(&mut write, &subscribed).await.is_err() {
        return;
    }
    debug!("subscriber joined");
    let mut rest = [0u8; 64];
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    let sent = tokio::time::timeout(SUBSCRIBER_WRITE_TIMEOUT, write_line(&mut write, &event)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        debug!("subscriber stopped reading; dropped");
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    info!(missed, "a subscriber fell behind; dropped");
                    let note = Event::Lagged { missed };
                    let _ = tokio::time::timeout(SUBSCRIBER_WRITE_TIMEOUT, write_line(&mut write, &note)).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            // A subscriber says nothing after subscribing: a read that
            // ends means it hung up.
            n = reader.read(&mut rest) => {
                if !matches!(n, Ok(k) if k > 0) {
                    debug!("subscriber left");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wallet_beside_the_socket_moves_to_the_state_dir_once() {
        let root = std::env::temp_dir().join(format!("hopwire-migrate-{}", std::process::id()));
        let (run, state) = (root.join("run"), root.join("state"));
        std::fs::create_dir_all(run.join("wallet")).expect("run dir");
        std::fs::write(run.join("wallet.key"), "key\n").expect("key");
        std::fs::write(run.join("wallet").join("db"), "channels").expect("store");
        std::fs::write(run.join("hopwire.guard"), "guard\n").expect("guard");
        let socket = run.join("hopwire.sock");
        migrate_state(&socket, &state);
        assert_eq!(
            std::fs::read_to_string(state.join("wallet.key")).ok().as_deref(),
            Some("key\n")
        );
        assert_eq!(
            std::fs::read_to_string(state.join("wallet").join("db")).ok().as_deref(),
            Some("channels")
        );
        assert_eq!(
            std::fs::read_to_string(state.join("guard")).ok().as_deref(),
            Some("guard\n")
        );
        assert!(!run.join("wallet.key").exists(), "moved, not copied");
        // A second start finds the state in place and a newer key beside
        // the socket is not taken over it.
        std::fs::write(run.join("wallet.key"), "other\n").expect("key");
        migrate_state(&socket, &state);
        assert_eq!(
            std::fs::read_to_string(state.join("wallet.key")).ok().as_deref(),
            Some("key\n")
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
