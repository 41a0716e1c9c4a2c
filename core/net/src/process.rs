//! What every Hopwire binary does the same way at the process level:
//! logging to stderr and stopping on SIGINT or SIGTERM.

/// Logs to stderr (colour only on a terminal); `RUST_LOG` overrides the
/// default level of `info`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// An error and its causes on one line, each cause once: error types here
/// put their cause in their own message, and callers add context around
/// them, so a plain walk of the chain would say things twice.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("config /x/node.toml: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn causes_are_said_once() {
        let e = Read {
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        };
        assert_eq!(describe(&e), "config /x/node.toml: No such file or directory");
        let io = std::io::Error::other(Read {
            source: std::io::ErrorKind::TimedOut.into(),
        });
        assert_eq!(describe(&io), "config /x/node.toml: timed out");
    }
}
