//! One app per user: the first instance listens on a Unix socket in the
//! user's runtime directory; a second one finds it there, asks it to show
//! its window, and exits. A socket file nobody answers on (left by an app
//! that crashed) is taken over.
//!
//! Hand-written rather than Tauri's single-instance plugin, which needs a
//! D-Bus session bus on Linux (absent under a bare Xvfb, and on some
//! window managers).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Where the first instance listens.
pub fn socket_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // The user's id: the owner of /proc/self.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    dir.join(format!("hopwire-app-{uid}.sock"))
}

/// What starting found.
#[derive(Debug)]
pub enum Instance {
    /// This is the only instance; `show` requests arrive on the listener.
    First(UnixListener),
    /// Another instance runs and was asked to show itself.
    Second,
}

/// Becomes the first instance at `path`, or hands over to the one there.
pub fn claim(path: &Path) -> std::io::Result<Instance> {
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Instance::First(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match UnixStream::connect(path) {
            Ok(mut first) => {
                first.write_all(b"show\n")?;
                Ok(Instance::Second)
            }
            Err(_) => {
                // Left by an instance that is gone.
                std::fs::remove_file(path)?;
                UnixListener::bind(path).map(Instance::First)
            }
        },
        Err(e) => Err(e),
    }
}

/// Calls `show` for each request of a later instance; runs forever (on a
/// thread of its own).
pub fn serve(listener: UnixListener, show: impl Fn()) {
    for stream in listener.incoming().flatten() {
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line).is_ok() && line.trim() == "show" {
            show();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_asks_the_first_to_show_and_a_stale_socket_is_taken_over() {
        let path = std::env::temp_dir().join(format!("hopwire-instance-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let Instance::First(listener) = claim(&path).expect("first") else {
            panic!("the first claim is the first instance")
        };
        let (shown, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || serve(listener, move || shown.send(()).expect("test alive")));
        assert!(matches!(claim(&path).expect("second"), Instance::Second));
        seen.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the first instance was asked to show");
        // A socket file with nobody behind it.
        let stale = path.with_extension("stale");
        let _ = std::fs::remove_file(&stale);
        drop(UnixListener::bind(&stale).expect("bind"));
        assert!(matches!(claim(&stale).expect("takeover"), Instance::First(_)));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&stale);
    }
}
