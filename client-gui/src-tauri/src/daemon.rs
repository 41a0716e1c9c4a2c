//! The app's command layer: each screen's request to the daemon, over its
//! socket with the API crate's types, and the errors a screen can show.
//!
//! The app never links the tunnel: it is an unprivileged program that asks
//! the privileged daemon. An unreachable socket is not one error but three
//! a user can act on: nobody listens (start the service), the socket
//! refuses this user (join the group), or the daemon speaks another API
//! version (update one of them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use hopwire_api::{
    call, ApiError, NodeInfo, Request, Response, Settings, SettingsChange, Status, WalletInfo, DEFAULT_HOPS,
};
use hopwire_proto::record::Role;

/// How long a quick request may take; a connect waits for a circuit.
const QUICK: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_secs(90);

/// What a screen shows when a request fails: a kind to choose the screen
/// by (`daemon_missing`, `not_permitted`, `version`, or the daemon's own
/// error kinds) and the words to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct GuiError {
    pub kind: String,
    pub message: String,
}

impl GuiError {
    fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

/// Why the daemon could not be asked, in words that say what to do.
pub fn classify(socket: &Path, e: ApiError) -> GuiError {
    match e {
        ApiError::Connect { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => GuiError::new(
            "not_permitted",
            format!(
                "The Hopwire service at {} does not let this user in. Ask an administrator to add you to its group \
                 (`sudo usermod -aG hopwire $USER`, then log in again).",
                socket.display()
            ),
        ),
        ApiError::Connect { .. } => GuiError::new(
            "daemon_missing",
            format!(
                "The Hopwire service is not running (nothing answers at {}). Start it: `sudo systemctl start hopwire`, \
                 or `sudo hopwire daemon`.",
                socket.display()
            ),
        ),
        ApiError::Refused { kind, message } => GuiError::new(&kind.to_string(), message),
        ApiError::NoAnswer { .. } | ApiError::Io { .. } | ApiError::BadAnswer { .. } => {
            GuiError::new("daemon_missing", format!("The Hopwire service stopped answering: {e}"))
        }
    }
}

/// What the connect screen asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct ConnectChoice {
    /// Exit country (ISO code); `None`: any.
    pub country: Option<String>,
    pub hops: Option<u8>,
    /// Most a hop may charge per GiB.
    pub max_price: Option<u64>,
}

/// The daemon at one socket.
#[derive(Debug, Clone)]
pub struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn ask(&self, request: Request, timeout: Duration) -> Result<Response, GuiError> {
        match call(&self.socket, &request, timeout).await {
            Ok(Response::Error { kind, message, .. }) => Err(GuiError::new(&kind.to_string(), message)),
            Ok(r) => Ok(r),
            Err(e) => Err(classify(&self.socket, e)),
        }
    }

    fn unexpected(what: &str, got: &Response) -> GuiError {
        GuiError::new(
            "internal",
            format!("the service answered {got:?} where {what} was expected"),
        )
    }

    fn status_of(response: Response) -> Result<Status, GuiError> {
        match response {
            Response::Ok { status } => Ok(status),
            other => Err(Self::unexpected("a status", &other)),
        }
    }

    pub async fn status(&self) -> Result<Status, GuiError> {
        Self::status_of(self.ask(Request::Status, QUICK).await?)
    }

    pub async fn connect(&self, choice: ConnectChoice) -> Result<Status, GuiError> {
        let hops = choice.hops.unwrap_or(DEFAULT_HOPS);
        if !(1..=3).contains(&hops) {
            return Err(GuiError::new(
                "bad_input",
                format!("a circuit has 1 to 3 hops, not {hops}"),
            ));
        }
        let request = Request::Connect {
            records: Vec::new(),
            hops,
            country: choice.country.filter(|c| !c.is_empty()),
            max_price: choice.max_price,
        };
        Self::status_of(self.ask(request, CONNECT).await?)
    }

    pub async fn disconnect(&self) -> Result<Status, GuiError> {
        Self::status_of(self.ask(Request::Disconnect, QUICK).await?)
    }

    pub async fn nodes(&self, role: Option<Role>, country: Option<String>) -> Result<Vec<NodeInfo>, GuiError> {
        match self.ask(Request::Nodes { role, country }, QUICK * 3).await? {
            Response::Nodes { nodes } => Ok(nodes),
            other => Err(Self::unexpected("the node list", &other)),
        }
    }

    pub async fn wallet(&self, close: bool) -> Result<WalletInfo, GuiError> {
        match self.ask(Request::Wallet { close }, QUICK * 3).await? {
            Response::Wallet { wallet } => Ok(wallet),
            other => Err(Self::unexpected("the wallet", &other)),
        }
    }

    pub async fn settings(&self, change: SettingsChange) -> Result<Settings, GuiError> {
        match self.ask(Request::Settings { change }, QUICK).await? {
            Response::Settings { settings } => Ok(settings),
            other => Err(Self::unexpected("the settings", &other)),
        }
    }
}
