//! Addresses, destinations and keys in logs: [`Sensitive`] prints
//! `[scrubbed]` unless the operator opted in (`HOPWIRE_UNSAFE_LOGS=1`,
//! for debugging on their own machine), as arti's `safelog` does.
//!
//! Wrap every client address, destination and key that reaches a log line
//! at info level or above: `info!(peer = %Sensitive(addr), "…")`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static UNSAFE_LOGS: AtomicBool = AtomicBool::new(false);

/// Lets [`Sensitive`] print what it wraps (the operator asked for it).
pub fn allow_unsafe_logs(allow: bool) {
    UNSAFE_LOGS.store(allow, Ordering::Relaxed);
}

/// A value that logs as `[scrubbed]` unless unsafe logging is allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sensitive<T>(pub T);

impl<T: fmt::Display> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if UNSAFE_LOGS.load(Ordering::Relaxed) {
            self.0.fmt(f)
        } else {
            f.write_str("[scrubbed]")
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if UNSAFE_LOGS.load(Ordering::Relaxed) {
            self.0.fmt(f)
        } else {
            f.write_str("[scrubbed]")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbed_unless_allowed() {
        let addr: std::net::IpAddr = "198.18.0.10".parse().expect("addr");
        assert_eq!(
            format!("{} {:?}", Sensitive(addr), Sensitive(addr)),
            "[scrubbed] [scrubbed]"
        );
        allow_unsafe_logs(true);
        assert_eq!(Sensitive(addr).to_string(), "198.18.0.10");
        allow_unsafe_logs(false);
    }
}
