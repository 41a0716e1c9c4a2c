//! Each session's logs: a `tracing` dispatcher of its own, entered on the
//! session's threads only (no global logger: two sessions in one process,
//! or a host with its own Rust logging, do not collide).

use std::cell::RefCell;
use std::sync::Mutex;

use tracing::dispatcher::DefaultGuard;
use tracing_subscriber::EnvFilter;

use crate::types::HopwireError;

thread_local! {
    /// The session's dispatcher while this thread belongs to a session.
    static ENTERED: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// The dispatcher for `filter` writing to `file` (appended) or standard
/// error; `None` without a filter.
pub fn dispatch(filter: Option<&str>, file: Option<&str>) -> Result<Option<tracing::Dispatch>, HopwireError> {
    let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let filter =
        EnvFilter::try_new(filter).map_err(|e| HopwireError::bad_input(format!("log filter `{filter}`: {e}")))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let subscriber = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| HopwireError::bad_input(format!("log file {path}: {e}")))?;
            tracing::Dispatch::new(builder.with_writer(Mutex::new(file)).finish())
        }
        None => tracing::Dispatch::new(builder.with_writer(std::io::stderr).finish()),
    };
    Ok(Some(subscriber))
}

/// This thread logs to `dispatch` until [`leave`].
pub fn enter(dispatch: &tracing::Dispatch) {
    let guard = tracing::dispatcher::set_default(dispatch);
    ENTERED.with(|e| *e.borrow_mut() = Some(guard));
}

pub fn leave() {
    ENTERED.with(|e| e.borrow_mut().take());
}
