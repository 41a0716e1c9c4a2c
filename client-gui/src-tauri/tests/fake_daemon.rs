//! The app's command layer and event watch against a fake daemon: a Unix
//! socket in a temp dir that speaks the real API types (requests,
//! responses, the event stream, errors with kinds), and goes away and
//! comes back as a real daemon would.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use hopwire_api::{
    Envelope, ErrorKind, Event, HopInfo, NodeInfo, Request, Response, Settings, SettingsChange, State, Status,
    TunnelState, WalletInfo,
};
use hopwire_gui::daemon::{ConnectChoice, Daemon};
use hopwire_gui::watch::{watch, Sink, Update};

fn temp_socket(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hopwire-gui-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("hopwire.sock")
}

fn connected() -> Status {
    let hop = |id: &str, region: &str| HopInfo {
        id: id.into(),
        addr: "198.18.1.2:4433".parse().expect("addr"),
        region: region.into(),
    };
    Status {
        state: State::Connected,
        circuit: vec![hop("aaaa", "FR"), hop("bbbb", "SE"), hop("cccc", "DE")],
        exit: Some(hop("cccc", "DE")),
        inner_addr: Some("100.87.0.2".parse().expect("addr")),
        ..Status::default()
    }
}

/// What the fake daemon answers; `events` are streamed to subscribers.
#[derive(Clone)]
struct Script {
    version_mismatch: bool,
    events: Vec<Event>,
    settings: Arc<Mutex<Settings>>,
}

impl Script {
    fn new() -> Self {
        Self {
            version_mismatch: false,
            events: Vec::new(),
            settings: Arc::default(),
        }
    }

    fn answer(&self, request: Request) -> Response {
        let error = |kind, message: &str| Response::Error {
            kind,
            message: message.into(),
            status: Status::default(),
        };
        match request {
            Request::Status => Response::Ok {
                status: Status::default(),
            },
            Request::Connect { country, hops, .. } => match country.as_deref() {
                Some("JP") => error(ErrorKind::NoExit, "no exit in JP"),
                _ if hops == 3 => Response::Ok { status: connected() },
                _ => error(ErrorKind::BadInput, "the fake only builds 3 hops"),
            },
            Request::Disconnect => Response::Ok {
                status: Status::default(),
            },
            Request::Nodes { .. } => Response::Nodes {
                nodes: vec![NodeInfo {
                    id: "cccc".into(),
                    roles: vec![hopwire_proto::record::Role::Exit],
                    region: "DE".into(),
                    addr: "198.18.1.2:4433".parse().expect("addr"),
                    capacity_mbit: 100,
                    price_per_gib: 2_000_000,
                    rtt_ms: Some(0.5),
                    age_s: 3,
                }],
            },
            Request::Wallet { close } => Response::Wallet {
                wallet: WalletInfo {
                    account: if close { "closed".into() } else { "open".into() },
                    ledger: "100.90.0.2:7300".parse().expect("addr"),
                    balance: Some(42),
                    ledger_error: None,
                    channels: Vec::new(),
                    sessions: Vec::new(),
                },
            },
            Request::Settings { change } => {
                let mut s = self.settings.lock().expect("settings");
                *s = change.apply(&s);
                Response::Settings { settings: s.clone() }
            }
            Request::Subscribe => Response::Subscribed { status: connected() },
        }
    }
}

/// Serves `script` on `socket` until the handle is aborted, which also
/// closes every open connection (as a daemon that dies does).
fn serve(socket: &Path, script: Script) -> JoinHandle<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).expect("bind the fake daemon");
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            connections.spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let envelope: Envelope = serde_json::from_str(&line).expect("the app sends the real API");
                let response = if script.version_mismatch {
                    Response::Error {
                        kind: ErrorKind::Version,
                        message: "this daemon speaks API version 3".into(),
                        status: Status::default(),
                    }
                } else {
                    script.answer(envelope.request.clone())
                };
                let mut out = serde_json::to_string(&response).expect("encodes") + "\n";
                if envelope.request == Request::Subscribe && !script.version_mismatch {
                    for e in &script.events {
                        out += &(serde_json::to_string(e).expect("encodes") + "\n");
                    }
                    let _ = write.write_all(out.as_bytes()).await;
                    // Keep the stream open until the fake daemon stops.
                    std::future::pending::<()>().await;
                }
                let _ = write.write_all(out.as_bytes()).await;
            });
        }
    })
}

#[tokio::test]
async fn commands_speak_the_real_api_and_errors_keep_their_kinds() {
    let socket = temp_socket("commands");
    let daemon = Daemon::new(socket.clone());

    let missing = daemon.status().await.expect_err("nobody listens yet");
    assert_eq!(missing.kind, "daemon_missing");
    assert!(
        missing.message.contains("not running") && missing.message.contains("systemctl start hopwire"),
        "{missing:?}"
    );

    let server = serve(&socket, Script::new());
    assert_eq!(daemon.status().await.expect("status").state, State::Disconnected);
    let st = daemon
        .connect(ConnectChoice {
            country: Some("DE".into()),
            hops: Some(3),
            max_price: Some(5_000_000),
        })
        .await
        .expect("connect");
    assert_eq!(st.circuit.len(), 3);
    let refused = daemon
        .connect(ConnectChoice {
            country: Some("JP".into()),
            hops: Some(3),
            max_price: None,
        })
        .await
        .expect_err("no exit in JP");
    assert_eq!(
        (refused.kind.as_str(), refused.message.as_str()),
        ("no_exit", "no exit in JP")
    );
    let bad = daemon
        .connect(ConnectChoice {
            hops: Some(7),
            ..ConnectChoice::default()
        })
        .await
        .expect_err("7 hops");
    assert_eq!(bad.kind, "bad_input", "refused before asking the daemon");
    assert_eq!(
        daemon.disconnect().await.expect("disconnect").state,
        State::Disconnected
    );
    assert_eq!(daemon.nodes(None, None).await.expect("nodes")[0].region, "DE");
    assert_eq!(daemon.wallet(true).await.expect("wallet").account, "closed");
    let s = daemon
        .settings(SettingsChange {
            lockdown: Some(true),
            ..SettingsChange::default()
        })
        .await
        .expect("settings");
    assert!(s.lockdown);
    assert!(daemon.settings(SettingsChange::default()).await.expect("read").lockdown);
    server.abort();

    let server = serve(
        &socket,
        Script {
            version_mismatch: true,
            ..Script::new()
        },
    );
    let version = daemon.status().await.expect_err("another version");
    assert_eq!(version.kind, "version");
    assert!(version.message.contains("API version"), "{version:?}");
    server.abort();
}

#[test]
fn a_socket_that_refuses_this_user_says_to_join_the_group() {
    let socket = Path::new("/run/hopwire/hopwire.sock");
    let e = hopwire_gui::daemon::classify(
        socket,
        hopwire_api::ApiError::Connect {
            path: socket.to_owned(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        },
    );
    assert_eq!(e.kind, "not_permitted");
    assert!(e.message.contains("group"), "{e:?}");
}

/// Collects what the watch sends.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Update>>>);

impl Sink for Collect {
    fn send(&self, update: Update) {
        self.0.lock().expect("updates").push(update);
    }
}

impl Collect {
    async fn wait_for(&self, what: &str, f: impl Fn(&[Update]) -> bool) {
        for _ in 0..100 {
            if f(&self.0.lock().expect("updates")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {what} in {:?}", self.0.lock().expect("updates"));
    }

    fn count(&self, f: impl Fn(&Update) -> bool) -> usize {
        self.0.lock().expect("updates").iter().filter(|u| f(u)).count()
    }
}

#[tokio::test]
async fn the_watch_says_when_the_daemon_is_gone_once_and_follows_it_when_it_comes_back() {
    let socket = temp_socket("watch");
    let sink = Collect::default();
    let watcher = tokio::spawn(watch(socket.clone(), sink.clone(), Duration::from_millis(100)));
    sink.wait_for(
        "an outage",
        |u| matches!(u.last(), Some(Update::Down { error }) if error.kind == "daemon_missing"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.count(|u| matches!(u, Update::Down { .. })),
        1,
        "an outage is said once, not at every retry"
    );

    let mut script = Script::new();
    script.events = vec![
        Event::State {
            state: TunnelState::Reconnecting {
                reason: "hop 2 lost".into(),
                attempt: 1,
            },
        },
        Event::State {
            state: TunnelState::Connected,
        },
    ];
    let server = serve(&socket, script);
    sink.wait_for("the status and both events", |u| {
        u.iter()
            .any(|u| matches!(u, Update::Status { status } if status.state == State::Connected))
            && u.iter().any(|u| {
                matches!(
                    u,
                    Update::Event {
                        event: Event::State {
                            state: TunnelState::Reconnecting { .. }
                        }
                    }
                )
            })
            && matches!(
                u.last(),
                Some(Update::Event {
                    event: Event::State {
                        state: TunnelState::Connected
                    }
                })
            )
    })
    .await;

    // The daemon stops: said at once; it comes back: followed again.
    server.abort();
    let _ = std::fs::remove_file(&socket);
    sink.wait_for("the second outage", |u| matches!(u.last(), Some(Update::Down { .. })))
        .await;
    let statuses = sink.count(|u| matches!(u, Update::Status { .. }));
    let server = serve(&socket, Script::new());
    sink.wait_for("a new status", |u| {
        u.iter().filter(|u| matches!(u, Update::Status { .. })).count() > statuses
    })
    .await;
    server.abort();
    watcher.abort();
}
