//! The daemon's event stream, kept open for the app's whole life: each
//! status, event and outage goes to a [`Sink`] (the window and the tray),
//! and a lost daemon is asked again every second until it is back.
//!
//! Nothing is polled that the daemon pushes: after the status a
//! subscription starts with, every change arrives as an event. A
//! subscriber that fell behind is dropped by the daemon with a `lagged`
//! note; the watch then subscribes again and starts from a fresh status.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use hopwire_api::{Event, Status, Subscription};

use crate::daemon::{classify, GuiError};

/// What the front end hears, as `{"type": …, …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Update {
    /// The daemon's whole status, at each (re)subscription.
    Status { status: Box<Status> },
    /// One event of the daemon's stream.
    Event { event: Event },
    /// The daemon cannot be reached (or refuses this user, or speaks
    /// another API version): what to do about it.
    Down { error: GuiError },
}

/// Where updates go.
pub trait Sink: Send + 'static {
    fn send(&self, update: Update);
}

/// Follows the daemon at `socket` forever, retrying every `retry` while
/// it is away. An outage is sent once, not at every retry.
pub async fn watch(socket: PathBuf, sink: impl Sink, retry: Duration) {
    let mut down: Option<GuiError> = None;
    loop {
        match Subscription::open(&socket, Duration::from_secs(5)).await {
            Ok(mut subscription) => {
                down = None;
                sink.send(Update::Status {
                    status: Box::new(subscription.status.clone()),
                });
                loop {
                    match subscription.next().await {
                        Ok(Some(Event::Lagged { .. })) => break,
                        Ok(Some(event)) => sink.send(Update::Event { event }),
                        // The daemon went away: ask again at once, so the
                        // window says so without waiting.
                        Ok(None) | Err(_) => break,
                    }
                }
                // Not a hot loop if the daemon accepts and hangs up at once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                let error = classify(&socket, e);
                if down.as_ref() != Some(&error) {
                    sink.send(Update::Down { error: error.clone() });
                    down = Some(error);
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}
