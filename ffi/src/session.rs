//! [`Session`]: one client runtime with its own tokio runtime, its host's
//! tunnel provider and socket protector, and its listener.
//!
//! Slow calls (connect, disconnect, nodes, wallet, shutdown) are `async` in
//! every binding (Kotlin `suspend`, Swift `async`, Python coroutines): they
//! run on the session's runtime and the host's thread only awaits them.
//! `status`, `settings` and `change_settings` answer from memory (the last
//! writes one small file) and may be called from a UI thread.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopwire_client::platform::FdPlatform;
use hopwire_client::runtime::{Client, ClientConfig, ConnectRequest};
use hopwire_proto::sync::lock;
use tokio::sync::{broadcast, oneshot};
use tracing::warn;

use crate::host::{EventListener, ForeignHost, SocketProtector, TunnelProvider};
use crate::types::{ConnectOptions, Event, HopwireError, Node, NodeRole, Settings, SettingsChange, Status, Wallet};

/// How long closing (or dropping) a session waits for the tunnel to come
/// down before it stops the runtime anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Worker threads of each session's runtime.
const WORKERS: usize = 2;

/// Where the session keeps its state and whom it talks to.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SessionConfig {
    /// Wallet key and store, settings, guard choice, DHT peers: a
    /// directory only the app can read (created 0700 if missing).
    pub state_dir: String,
    /// DHT peers to join through (`/ip4/…/tcp/…/p2p/…`).
    #[uniffi(default = [])]
    pub bootstrap: Vec<String>,
    /// The ledger hops are paid on: an embedded ledger's service (`ip:port`,
    /// e.g. `203.0.113.7:7300`) or a chain's contract
    /// (`eip155:<chain id>:<contract>@http://<ip>:<port>`);
    /// `None`: only free nodes.
    #[uniffi(default = None)]
    pub ledger: Option<String>,
    /// Each channel's deposit, in MiB at the hop's price (the daemon's
    /// default too); a channel running low while a circuit pays through it
    /// is topped up by as much as it holds (at most 16 deposits).
    #[uniffi(default = 1024)]
    pub deposit_mib: u64,
    /// Log filter (`"info"`, `"hopwire_client=debug,info"`); `None`: no
    /// logs.
    #[uniffi(default = None)]
    pub log_filter: Option<String>,
    /// Where logs go (appended); `None`: standard error.
    #[uniffi(default = None)]
    pub log_file: Option<String>,
}

type Runtime = Client<FdPlatform<ForeignHost>>;

/// One client of the Hopwire network, living until [`Session::shutdown`]
/// (or until the host drops it, which shuts it down too).
#[derive(uniffi::Object)]
pub struct Session {
    client: Runtime,
    /// The session's own tokio runtime; taken when the session closes.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// The session's logger, for what runs on the host's thread.
    logs: Option<tracing::Dispatch>,
    closed: AtomicBool,
    /// Delivers events to the host's listener, if it gave one.
    forwarder: Mutex<Option<Forwarder>>,
}

/// The thread that calls the host's listener, and what stops it.
struct Forwarder {
    /// Stops it once it delivered what is queued.
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[uniffi::export]
impl Session {
    /// Starts a session: its runtime, state directory, settings and wallet.
    /// Nothing is connected yet. Reads and writes small files in
    /// `state_dir`; no network call.
    #[uniffi::constructor]
    pub fn new(
        config: SessionConfig,
        tunnel: Arc<dyn TunnelProvider>,
        protector: Arc<dyn SocketProtector>,
        listener: Option<Arc<dyn EventListener>>,
    ) -> Result<Arc<Self>, HopwireError> {
        let client_config = client_config(&config)?;
        let logs = crate::logs::dispatch(config.log_filter.as_deref(), config.log_file.as_deref())?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(WORKERS).thread_name("hopwire").enable_all();
        if let Some(dispatch) = &logs {
            let d = dispatch.clone();
            builder
                .on_thread_start(move || crate::logs::enter(&d))
                .on_thread_stop(crate::logs::leave);
        }
        let runtime = builder
            .build()
            .map_err(|e| HopwireError::internal(format!("starting the session's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let client = logged(logs.as_ref(), || {
            let _entered = runtime.enter();
            let platform = FdPlatform::new(ForeignHost { tunnel, protector });
            Client::start(platform, client_config)
        })?;
        let forwarder = listener
            .map(|listener| forward_events(&handle, client.subscribe(), listener, logs.clone()))
            .transpose()?;
        Ok(Arc::new(Self {
            client,
            runtime: Mutex::new(Some(runtime)),
            handle,
            logs,
            closed: AtomicBool::new(false),
            forwarder: Mutex::new(forwarder),
        }))
    }

    /// Connects as asked, replacing any tunnel up now; returns once the
    /// first circuit carries traffic. On failure the state is Error and
    /// the error says why.
    pub async fn connect(&self, options: ConnectOptions) -> Result<Status, HopwireError> {
        let request = ConnectRequest {
            records: options.records,
            hops: options.hops,
            country: options.country,
            max_price: options.max_price_per_gib,
        };
        let client = self.client()?;
        self.run(async move {
            client
                .connect(request)
                .await
                .map(Status::from)
                .map_err(HopwireError::from)
        })
        .await?
    }

    /// Takes the tunnel down; the provider's `teardown` is called.
    pub async fn disconnect(&self) -> Result<Status, HopwireError> {
        let client = self.client()?;
        self.run(async move { Status::from(client.disconnect().await) }).await
    }

    /// The tunnel's state, circuit, traffic and spending, from memory.
    pub fn status(&self) -> Result<Status, HopwireError> {
        Ok(self.client()?.status().into())
    }

    /// The nodes the DHT knows, of one role or country if asked.
    pub async fn nodes(&self, role: Option<NodeRole>, country: Option<String>) -> Result<Vec<Node>, HopwireError> {
        let client = self.client()?;
        self.run(async move {
            let nodes = client.nodes(role.map(Into::into), country.as_deref()).await?;
            Ok(nodes.into_iter().map(Node::from).collect())
        })
        .await?
    }

    /// The wallet; with `close_idle`, first starts closing every channel no
    /// circuit uses (their deposits come back after the challenge period).
    pub async fn wallet(&self, close_idle: bool) -> Result<Wallet, HopwireError> {
        let client = self.client()?;
        self.run(async move {
            client
                .wallet(close_idle)
                .await
                .map(Wallet::from)
                .map_err(HopwireError::from)
        })
        .await?
    }

    /// The settings in force.
    pub fn settings(&self) -> Result<Settings, HopwireError> {
        Ok(self.client()?.settings().into())
    }

    /// Changes and saves the settings; DNS and IPv6 apply from the next
    /// circuit on.
    pub fn change_settings(&self, change: SettingsChange) -> Result<Settings, HopwireError> {
        let change = change.try_into()?;
        let client = self.client()?;
        Ok(logged(self.logs.as_ref(), || client.change_settings(&change))?.into())
    }

    /// Ends the session: disconnects, delivers the last events, stops the
    /// runtime. Later calls fail with `Closed`; twice is harmless. (Not
    /// `close`: Kotlin's generated class is already `AutoCloseable`, whose
    /// `close()` frees the native object.)
    pub async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let client = self.client.clone();
        let forwarder = lock(&self.forwarder).take();
        let _ = self.run(shut_down(client, forwarder)).await;
        if let Some(runtime) = lock(&self.runtime).take() {
            // What is left (DHT lookups, idle connections) is dropped.
            runtime.shutdown_background();
        }
    }
}

impl Session {
    fn client(&self) -> Result<Runtime, HopwireError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(HopwireError::closed());
        }
        Ok(self.client.clone())
    }

    /// Runs `work` on the session's runtime; the caller's executor only
    /// awaits it.
    async fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T, HopwireError> {
        self.handle.spawn(work).await.map_err(|e| {
            if e.is_panic() {
                HopwireError::internal(format!("the session's task failed: {e}"))
            } else {
                HopwireError::closed()
            }
        })
    }
}

impl Drop for Session {
    /// A session the host forgot to shut down is shut down here: the tunnel comes
    /// down and the provider hears `teardown`. Done on a thread of its own,
    /// so dropping from inside any async runtime is safe.
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let client = self.client.clone();
        let forwarder = lock(&self.forwarder).take();
        let Some(runtime) = lock(&self.runtime).take() else {
            return;
        };
        let closer = std::thread::Builder::new()
            .name("hopwire-close".to_owned())
            .spawn(move || {
                runtime.block_on(shut_down(client, forwarder));
                runtime.shutdown_timeout(Duration::from_secs(1));
            });
        if let Ok(thread) = closer {
            let _ = thread.join();
        }
    }
}

/// Runs `f` on the host's thread with the session's logger.
fn logged<T>(logs: Option<&tracing::Dispatch>, f: impl FnOnce() -> T) -> T {
    match logs {
        Some(d) => tracing::dispatcher::with_default(d, f),
        None => f(),
    }
}

/// Takes the tunnel down, then lets the forwarder deliver what is queued
/// and waits for it (on a blocking thread: the host's never waits).
async fn shut_down(client: Runtime, forwarder: Option<Forwarder>) {
    if tokio::time::timeout(CLOSE_TIMEOUT, client.shutdown()).await.is_err() {
        warn!("the tunnel did not come down within {CLOSE_TIMEOUT:?}; closing anyway");
    }
    if let Some(Forwarder { stop, thread }) = forwarder {
        let _ = stop.send(());
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

fn client_config(config: &SessionConfig) -> Result<ClientConfig, HopwireError> {
    if config.state_dir.trim().is_empty() {
        return Err(HopwireError::bad_input("state_dir is empty"));
    }
    let bootstrap = config
        .bootstrap
        .iter()
        .map(|b| {
            hopwire_net::dht::parse_dht_addr(b)
                .ok_or_else(|| HopwireError::bad_input(format!("bootstrap peer `{b}` is not /ip4/…/tcp/…/p2p/…")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ledger = config
        .ledger
        .as_deref()
        .map(|l| {
            l.parse::<hopwire_net::ledger::LedgerAddr>()
                .map_err(HopwireError::bad_input)
        })
        .transpose()?;
    if config.deposit_mib == 0 {
        return Err(HopwireError::bad_input("deposit_mib must be at least 1"));
    }
    Ok(ClientConfig {
        state_dir: PathBuf::from(&config.state_dir),
        bootstrap,
        ledger,
        deposit_mib: config.deposit_mib,
    })
}

/// Delivers the runtime's events to `listener` on a thread of their own, in
/// order; a lagging listener hears `Lagged` and then the newest events.
/// Once `stop` fires, what is already queued is still delivered.
fn forward_events(
    handle: &tokio::runtime::Handle,
    mut events: broadcast::Receiver<hopwire_api::Event>,
    listener: Arc<dyn EventListener>,
    logs: Option<tracing::Dispatch>,
) -> Result<Forwarder, HopwireError> {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    handle.spawn(async move {
        loop {
            tokio::select! {
                biased;
                received = events.recv() => match received {
                    Ok(e) => { let _ = tx.send(e.into()); }
                    Err(broadcast::error::RecvError::Lagged(missed)) => { let _ = tx.send(Event::Lagged { missed }); }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = &mut stopped => {
                    while let Ok(e) = events.try_recv() {
                        let _ = tx.send(e.into());
                    }
                    break;
                }
            }
        }
    });
    std::thread::Builder::new()
        .name("hopwire-events".to_owned())
        .spawn(move || {
            if let Some(d) = &logs {
                crate::logs::enter(d);
            }
            for event in rx {
                if let Err(e) = listener.on_event(event) {
                    warn!("the event listener failed: {e}");
                }
            }
            crate::logs::leave();
        })
        .map(|thread| Forwarder { stop, thread })
        .map_err(|e| HopwireError::internal(format!("starting the event thread: {e}")))
}
