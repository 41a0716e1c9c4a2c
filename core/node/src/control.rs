//! The running node's control socket: how `hopwire-node earnings` and
//! `settle` reach a charging node's receipt store while the node holds it.
//!
//! A Unix socket, [`SOCKET`] in the node's state directory (mode 0600 in a
//! directory of mode 0700: only the node's own user reaches it). One request
//! per connection, a line of JSON ([`Request`]), answered with one line: the
//! report ([`crate::earnings`]) or `{"error": …}`. A settle, once asked
//! for, runs to its end: the node does not cut it short.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tracing::{debug, info};

use crate::earnings;
use crate::payee::Payee;
use crate::Node;

/// The socket's name in the node's state directory.
pub const SOCKET: &str = "control.sock";
/// How long the node waits for a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the command waits for the answer: settling on a chain waits for
/// each transaction's block, and for a round the node itself is settling.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A request is one short line.
const MAX_REQUEST: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// [`earnings::earnings`].
    Earnings,
    /// [`earnings::settle`] with this `--min`.
    Settle { min: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: the node answered {answer:?}")]
    Garbled { path: PathBuf, answer: String },
    #[error("the running node: {0}")]
    Refused(String),
}

/// Where the control socket of the node whose state directory is `dir` is.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Binds the control socket in `dir`, replacing one a node that stopped
/// without removing it left (the caller holds the receipt store, so no other
/// node of this state directory runs).
pub fn bind(dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = socket_path(dir);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests on `listener` for ever (a node that charges: the
/// caller binds it only then).
pub(crate) async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Some(payee) = &node.payee {
                answer(stream, payee).await;
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, payee: &Payee) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    match tokio::time::timeout(REQUEST_TIMEOUT, read.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!("control socket: {e}"),
        Err(_) => return debug!("control socket: no request within {REQUEST_TIMEOUT:?}"),
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            info!(?request, "control socket");
            match run(&request, payee).await {
                Ok(report) => report,
                Err(e) => json!({ "error": e }),
            }
        }
        Err(e) => json!({ "error": format!("not a request: {e}") }),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
    let _ = write.shutdown().await;
}

async fn run(request: &Request, payee: &Payee) -> Result<Value, String> {
    let store = payee.store.clone();
    let in_use: HashSet<[u8; 32]> = payee.channels_in_use();
    match *request {
        Request::Earnings => {
            let (policy, payout) = (payee.policy(), payee.payout());
            let asked = {
                let (store, in_use) = (store.clone(), in_use.clone());
                let report = move |l: &dyn hopwire_net::ledger::Ledger| {
                    Ok(earnings::earnings(&store, Ok((l, payout)), &policy, &|c| {
                        in_use.contains(c)
                    }))
                };
                payee.ledger().call(report).await
            };
            match asked {
                Ok(report) => report,
                // The receipts, without what the ledger would say.
                Err(e) => earnings::earnings(&store, Err(e.to_string()), &policy, &|c| in_use.contains(c)),
            }
            .map_err(|e| e.to_string())
        }
        Request::Settle { min } => {
            // Not while the node's own round settles.
            let _round = payee.settling().await;
            let now = hopwire_proto::time::unix_now();
            payee
                .ledger()
                .call(move |l| Ok(earnings::settle(&store, l, min, &|c| in_use.contains(c), now)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    }
}

/// Asks the node whose state directory is `dir` (blocking: for the
/// command line).
pub fn ask(dir: &Path, request: &Request) -> Result<Value, ControlError> {
    let path = socket_path(dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(io)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    let request = serde_json::to_string(request).unwrap_or_else(|_| unreachable!("a request serializes"));
    stream.write_all(format!("{request}\n").as_bytes()).map_err(io)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    let garbled = || ControlError::Garbled {
        path: path.clone(),
        answer: answer.trim().chars().take(200).collect(),
    };
    let value: Value = serde_json::from_str(&answer).map_err(|_| garbled())?;
    match value.get("error") {
        Some(e) if value.as_object().is_some_and(|o| o.len() == 1) => {
            Err(ControlError::Refused(e.as_str().unwrap_or_default().to_owned()))
        }
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_line_of_tagged_json() {
        let settle = Request::Settle { min: 5 };
        let line = serde_json::to_string(&settle).unwrap();
        assert_eq!(line, r#"{"command":"settle","min":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), settle);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"earnings"}"#).unwrap(),
            Request::Earnings
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"shutdown"}"#).is_err());
    }
}
