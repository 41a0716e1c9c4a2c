//! The privileged client daemon: owns the TUN device, routes and DNS, and
//! serves the local API ([`crate::api`]) on a Unix socket.
//!
//! States: disconnected → connecting → connected; a lost link puts it in
//! error with the reason while it reconnects in the background. The TUN
//! device and the routes stay up while a link is down, so traffic is held
//! back, never sent around the tunnel. Disconnecting removes exactly what was
//! added. A crashed daemon's changes are undone at the next start from the
//! state file.
//!
//! What it does not do: parse the command line (the `hopwire` binary does)
//! or move packets (see [`crate::client`]).

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boringtun::x25519;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::api::{ExitInfo, Request, Response, State, Status, MAX_LINE};
use crate::client::{ClientError, Link, Traffic};
use crate::record::VerifiedRecord;
use crate::sys::{self, ClientNet};
use crate::tun::{self, TunDevice};

const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); `None` means root only.
    pub group: Option<String>,
    pub tun_name: String,
    /// The resolver file to point at the tunnel's DNS while connected.
    pub resolv_conf: PathBuf,
    /// Where the daemon records what it changed on the system.
    pub state_file: PathBuf,
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
}

struct Active {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

struct Daemon {
    config: DaemonConfig,
    wg_secret: x25519::StaticSecret,
    status: Mutex<Status>,
    /// Serializes connect and disconnect.
    active: tokio::sync::Mutex<Option<Active>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Daemon {
    fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }

    fn fail(&self, message: String) -> Response {
        self.update(|s| {
            s.state = State::Error;
            s.error = Some(message.clone());
        });
        Response::Error {
            message,
            status: self.status(),
        }
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Response {
        match request {
            Request::Status => Response::Ok { status: self.status() },
            Request::Disconnect => {
                let mut active = self.active.lock().await;
                stop(active.take()).await;
                self.update(|s| *s = Status::default());
                Response::Ok { status: self.status() }
            }
            Request::Connect { record } => {
                let record: VerifiedRecord = match record.parse() {
                    Ok(r) => r,
                    Err(e) => {
                        return Response::Error {
                            message: e.to_string(),
                            status: self.status(),
                        }
                    }
                };
                let mut active = self.active.lock().await;
                stop(active.take()).await;
                match self.connect(record).await {
                    Ok(a) => {
                        *active = Some(a);
                        Response::Ok { status: self.status() }
                    }
                    Err(message) => self.fail(message),
                }
            }
        }
    }

    /// Makes the first link, then the TUN device, routes and DNS. Nothing
    /// on the system changes unless the exit answered.
    async fn connect(self: &Arc<Self>, record: VerifiedRecord) -> Result<Active, String> {
        let exit_addr = record.record().quic_addr;
        self.update(|s| {
            *s = Status {
                state: State::Connecting,
                exit: Some(ExitInfo {
                    id: record.short_id(),
                    addr: exit_addr,
                }),
                ..Status::default()
            }
        });
        info!(exit = %record.short_id(), "connecting");
        let link = Link::establish(&record, &self.wg_secret, 1, None)
            .await
            .map_err(|e| e.to_string())?;
        let params = link.params.clone();
        let tun = match tun::create(&self.config.tun_name, params.inner_addr, 32, link.mtu) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                link.close().await;
                return Err(e.to_string());
            }
        };
        let mut net = ClientNet::new(&self.config.state_file);
        let routed = net
            .route_all_through(&self.config.tun_name, exit_addr.ip())
            .and_then(|()| net.set_dns(&self.config.resolv_conf, &params.dns));
        if let Err(e) = routed {
            net.restore();
            link.close().await;
            return Err(format!("setting routes and DNS: {e}"));
        }
        self.update(|s| {
            s.state = State::Connected;
            s.error = None;
            s.inner_addr = Some(params.inner_addr);
            s.mtu = Some(link.mtu);
        });
        info!(mtu = link.mtu, "connected");
        let (stop_tx, stop_rx) = oneshot::channel();
        let daemon = self.clone();
        let task = tokio::spawn(async move { daemon.run(record, link, tun, net, stop_rx).await });
        Ok(Active { stop: stop_tx, task })
    }

    /// Keeps the tunnel up until told to stop, reconnecting when the link
    /// dies; then removes routes, DNS and the TUN device.
    async fn run(
        self: Arc<Self>,
        record: VerifiedRecord,
        first: Link,
        tun: Arc<TunDevice>,
        mut net: ClientNet,
        mut stop: oneshot::Receiver<()>,
    ) {
        let traffic = Arc::new(Traffic::default());
        let mut link = first;
        let mut index = 1u32;
        'session: loop {
            let why = tokio::select! {
                why = link.pump(tun.clone(), traffic.clone()) => why,
                () = self.sample(&link, &traffic) => unreachable!("sampling never ends"),
                _ = &mut stop => {
                    link.close().await;
                    break 'session;
                }
            };
            warn!("link to the exit lost: {why}");
            self.update(|s| {
                s.state = State::Error;
                s.error = Some(format!("{why}; reconnecting"));
                s.tx_bps = 0;
                s.rx_bps = 0;
                s.rtt_ms = None;
            });
            let previous = link.params.clone();
            let mut backoff = RECONNECT_FIRST;
            link = loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => break 'session,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                index = index.wrapping_add(1);
                match Link::establish(&record, &self.wg_secret, index, Some(previous.inner_addr)).await {
                    Ok(new) => match self.adopt(&new, &previous, &mut net) {
                        Ok(()) => break new,
                        Err(e) => {
                            new.close().await;
                            self.update(|s| s.error = Some(format!("{e}; reconnecting")));
                        }
                    },
                    Err(e) => {
                        let again = if e.is_transient() {
                            "; reconnecting"
                        } else {
                            "; retrying"
                        };
                        let reason = match &e {
                            ClientError::Unreachable { .. } => format!("{why}; {e}"),
                            _ => e.to_string(),
                        };
                        self.update(|s| s.error = Some(format!("{reason}{again}")));
                    }
                }
            };
            info!("reconnected");
            self.update(|s| {
                s.state = State::Connected;
                s.error = None;
                s.inner_addr = Some(link.params.inner_addr);
            });
        }
        net.restore();
        drop(tun);
        info!("disconnected");
    }

    /// Applies what changed between two links' session parameters.
    fn adopt(&self, new: &Link, old: &crate::session::SessionParams, net: &mut ClientNet) -> Result<(), String> {
        if new.params.inner_addr != old.inner_addr {
            readdress(&self.config.tun_name, old.inner_addr, new.params.inner_addr)
                .map_err(|e| format!("moving the tunnel to {}: {e}", new.params.inner_addr))?;
        }
        if new.params.dns != old.dns {
            net.set_dns(&self.config.resolv_conf, &new.params.dns)
                .map_err(|e| format!("updating DNS: {e}"))?;
        }
        Ok(())
    }

    /// Publishes throughput and round-trip time once a second.
    async fn sample(&self, link: &Link, traffic: &Traffic) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = (
            traffic.sent.load(Ordering::Relaxed),
            traffic.received.load(Ordering::Relaxed),
        );
        loop {
            tick.tick().await;
            let now = (
                traffic.sent.load(Ordering::Relaxed),
                traffic.received.load(Ordering::Relaxed),
            );
            let rtt = link.rtt().as_secs_f64() * 1000.0;
            self.update(|s| {
                s.bytes_sent = now.0;
                s.bytes_received = now.1;
                s.tx_bps = (now.0 - last.0) * 8;
                s.rx_bps = (now.1 - last.1) * 8;
                s.rtt_ms = Some((rtt * 100.0).round() / 100.0);
            });
            last = now;
        }
    }
}

fn readdress(tun: &str, old: Ipv4Addr, new: Ipv4Addr) -> Result<(), sys::SysError> {
    sys::run("ip", &["addr", "add", &format!("{new}/32"), "dev", tun])?;
    sys::run("ip", &["addr", "del", &format!("{old}/32"), "dev", tun]).map(drop)
}

async fn stop(active: Option<Active>) {
    if let Some(a) = active {
        let _ = a.stop.send(());
        let _ = a.task.await;
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

/// Runs the daemon until `shutdown` completes, then disconnects.
pub async fn serve(config: DaemonConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DaemonError> {
    let listener = bind(&config).await?;
    ClientNet::recover(&config.state_file);
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let daemon = Arc::new(Daemon {
        wg_secret: x25519::StaticSecret::from(secret),
        config: config.clone(),
        status: Mutex::default(),
        active: tokio::sync::Mutex::new(None),
    });
    info!(socket = %config.socket.display(), "daemon ready");
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    tokio::spawn(async move { answer(daemon, stream).await });
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
    stop(daemon.active.lock().await.take()).await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Reads one request line from an API client and answers it.
async fn answer(daemon: Arc<Daemon>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => daemon.handle(request).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
            status: daemon.status(),
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|e| unreachable!("response encodes: {e}"));
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Default place of the state file next to the socket.
pub fn default_state_file(socket: &Path) -> PathBuf {
    socket.with_extension("state.json")
}
