//! The Tauri side: commands the window calls, the daemon's updates as
//! `daemon` events, the tray, and the window hiding instead of closing.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Emitter, Manager, WindowEvent, Wry};

use hopwire_api::{Event, NodeInfo, Settings, SettingsChange, State, Status, WalletInfo, DEFAULT_SOCKET};
use hopwire_proto::record::Role;

use crate::daemon::{ConnectChoice, Daemon, GuiError};
use crate::instance::{self, Instance};
use crate::prefs;
use crate::watch::{self, Sink, Update};

/// How often a missing daemon is looked for again.
const RETRY: Duration = Duration::from_secs(1);

struct AppState {
    daemon: Daemon,
    /// `$XDG_CONFIG_HOME`: the app's own choices and the autostart entry.
    home: PathBuf,
}

#[tauri::command]
async fn status(state: tauri::State<'_, AppState>) -> Result<Status, GuiError> {
    state.daemon.status().await
}

/// Connects with `choice`, and remembers it for the next run.
#[tauri::command]
async fn connect(state: tauri::State<'_, AppState>, choice: ConnectChoice) -> Result<Status, GuiError> {
    prefs::save_choice(&state.home, &choice)?;
    state.daemon.connect(choice).await
}

#[tauri::command]
async fn disconnect(state: tauri::State<'_, AppState>) -> Result<Status, GuiError> {
    state.daemon.disconnect().await
}

#[tauri::command]
async fn nodes(
    state: tauri::State<'_, AppState>,
    role: Option<Role>,
    country: Option<String>,
) -> Result<Vec<NodeInfo>, GuiError> {
    state.daemon.nodes(role, country).await
}

#[tauri::command]
async fn wallet(state: tauri::State<'_, AppState>, close: bool) -> Result<WalletInfo, GuiError> {
    state.daemon.wallet(close).await
}

#[tauri::command]
async fn settings(state: tauri::State<'_, AppState>, change: SettingsChange) -> Result<Settings, GuiError> {
    state.daemon.settings(change).await
}

/// The connect screen's remembered choice.
#[tauri::command]
fn choice(state: tauri::State<'_, AppState>) -> ConnectChoice {
    prefs::load_choice(&state.home)
}

#[tauri::command]
fn autostart(state: tauri::State<'_, AppState>) -> bool {
    prefs::autostart(&state.home)
}

#[tauri::command]
fn set_autostart(state: tauri::State<'_, AppState>, on: bool) -> Result<bool, GuiError> {
    let exe = std::env::current_exe().map_err(|e| GuiError {
        kind: "internal".into(),
        message: format!("finding this program's path: {e}"),
    })?;
    prefs::set_autostart(&state.home, on, &exe)?;
    Ok(prefs::autostart(&state.home))
}

/// The tray's menu items that change with the state.
struct TrayItems {
    state: MenuItem<Wry>,
    connect: MenuItem<Wry>,
    disconnect: MenuItem<Wry>,
}

/// Sends the daemon's updates to the window and the tray.
struct AppSink {
    app: AppHandle,
    tray: Mutex<Option<TrayItems>>,
}

impl AppSink {
    fn show_state(&self, label: &str, connectable: bool, disconnectable: bool) {
        if let Some(items) = &*self.tray.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            let _ = items.state.set_text(format!("Hopwire: {label}"));
            let _ = items.connect.set_enabled(connectable);
            let _ = items.disconnect.set_enabled(disconnectable);
        }
    }
}

impl Sink for AppSink {
    fn send(&self, update: Update) {
        let state = match &update {
            Update::Status { status } => Some(status.state),
            Update::Event {
                event: Event::State { state },
            } => Some(state.state()),
            Update::Event { .. } => None,
            Update::Down { .. } => {
                self.show_state("service not running", false, false);
                None
            }
        };
        if let Some(state) = state {
            self.show_state(
                &state.to_string(),
                state == State::Disconnected || state == State::Error,
                state != State::Disconnected,
            );
        }
        let _ = self.app.emit("daemon", &update);
    }
}

fn show_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.show();
        let _ = window.unminimize();
        let _ = window.set_focus();
    }
}

fn build_tray(app: &AppHandle) -> tauri::Result<TrayItems> {
    let state = MenuItem::with_id(app, "state", "Hopwire", false, None::<&str>)?;
    let connect = MenuItem::with_id(app, "connect", "Connect", false, None::<&str>)?;
    let disconnect = MenuItem::with_id(app, "disconnect", "Disconnect", false, None::<&str>)?;
    let show = MenuItem::with_id(app, "show", "Show Hopwire", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let separator = PredefinedMenuItem::separator(app)?;
    let menu = Menu::with_items(app, &[&state, &separator, &connect, &disconnect, &show, &quit])?;
    let mut tray = TrayIconBuilder::with_id("hopwire")
        .tooltip("Hopwire")
        .menu(&menu)
        .on_menu_event(|app, event| {
            let app = app.clone();
            match event.id().as_ref() {
                "connect" => {
                    tauri::async_runtime::spawn(async move {
                        let state = app.state::<AppState>();
                        let choice = prefs::load_choice(&state.home);
                        if let Err(e) = state.daemon.connect(choice).await {
                            let _ = app.emit("tray-error", &e);
                        }
                    });
                }
                "disconnect" => {
                    tauri::async_runtime::spawn(async move {
                        let state = app.state::<AppState>();
                        if let Err(e) = state.daemon.disconnect().await {
                            let _ = app.emit("tray-error", &e);
                        }
                    });
                }
                "show" => show_window(&app),
                "quit" => app.exit(0),
                _ => {}
            }
        });
    if let Some(icon) = app.default_window_icon() {
        tray = tray.icon(icon.clone());
    }
    tray.build(app)?;
    Ok(TrayItems {
        state,
        connect,
        disconnect,
    })
}

/// Runs the app; returns when the user quits (or at once, having asked
/// the instance already running to show itself).
pub fn run() {
    let listener = match instance::claim(&instance::socket_path()) {
        Ok(Instance::First(listener)) => Some(listener),
        Ok(Instance::Second) => return,
        Err(e) => {
            eprintln!("hopwire-gui: cannot check for another instance ({e}); starting anyway");
            None
        }
    };
    let hidden = std::env::args().any(|a| a == "--hidden");
    let socket = std::env::var_os("HOPWIRE_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let state = AppState {
        daemon: Daemon::new(socket.clone()),
        home: prefs::config_home(),
    };
    let result = tauri::Builder::default()
        .manage(state)
        .invoke_handler(tauri::generate_handler![
            status,
            connect,
            disconnect,
            nodes,
            wallet,
            settings,
            choice,
            autostart,
            set_autostart
        ])
        .setup(move |app| {
            let handle = app.handle().clone();
            let tray = match build_tray(&handle) {
                Ok(items) => Some(items),
                Err(e) => {
                    // No tray host (a bare X server): the window still works.
                    eprintln!("hopwire-gui: no tray icon: {e}");
                    None
                }
            };
            if let Some(listener) = listener {
                let h = handle.clone();
                std::thread::spawn(move || instance::serve(listener, move || show_window(&h)));
            }
            if hidden {
                if let Some(window) = handle.get_webview_window("main") {
                    let _ = window.hide();
                }
            }
            let sink = AppSink {
                app: handle,
                tray: Mutex::new(tray),
            };
            tauri::async_runtime::spawn(watch::watch(socket, sink, RETRY));
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window keeps the app in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                let _ = window.hide();
                api.prevent_close();
            }
        })
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("hopwire-gui: {e}");
        std::process::exit(1);
    }
}
