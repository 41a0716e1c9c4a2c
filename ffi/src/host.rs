//! The host's side, implemented in Kotlin, Swift or Python: the tunnel
//! provider (the OS's VPN interface), the socket protector and the event
//! listener; and [`ForeignHost`], which makes the first two the runtime's
//! [`FdHost`].
//!
//! Nothing the host hands over is trusted: a descriptor that is not open,
//! or (on Linux and Android) not a TUN device, is refused with a `Platform` error before the session takes ownership
//! of it; a provider that throws, a protector that says no, a listener
//! that throws each end as an error or a log line, never a crash.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use hopwire_client::platform::{FdHost, HostError, TunnelConfig};

use crate::types::{Event, TunnelSettings};

/// Why the host could not do what the session asked, in its words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum CallbackError {
    /// (`reason`, not `message`: Kotlin exceptions have a `message` of
    /// their own.)
    #[error("{reason}")]
    Failed { reason: String },
}

/// A host that throws something UniFFI did not expect.
impl From<uniffi::UnexpectedUniFFICallbackError> for CallbackError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed { reason: e.reason }
    }
}

/// The OS's VPN interface. Android: `VpnService.Builder` … `establish()`
/// then `detachFd()`; iOS: `setTunnelNetworkSettings` then the utun
/// descriptor.
#[uniffi::export(with_foreign)]
pub trait TunnelProvider: Send + Sync {
    /// Sets the interface up for `settings` and returns its descriptor,
    /// which the session then owns and closes. Called again when a rebuilt
    /// circuit needs other addresses, MTU or resolvers.
    fn establish(&self, settings: TunnelSettings) -> Result<i32, CallbackError>;
    /// The interface is no longer needed (the session already closed its
    /// descriptor).
    fn teardown(&self);
}

/// Lets one of the session's own sockets bypass the tunnel (Android
/// `VpnService.protect(fd)`). Every socket the session opens to a node, the
/// ledger or the DHT outside the tunnel is passed here before it is used;
/// `false` refuses the connection that needed it.
#[uniffi::export(with_foreign)]
pub trait SocketProtector: Send + Sync {
    fn protect(&self, fd: i32) -> bool;
}

/// Hears the session's events, in order, on a thread of the session's own
/// (never the caller's). An error it returns is logged and the next event
/// still comes.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    fn on_event(&self, event: Event) -> Result<(), CallbackError>;
}

/// The host's provider and protector as the runtime's [`FdHost`].
pub struct ForeignHost {
    pub tunnel: Arc<dyn TunnelProvider>,
    pub protector: Arc<dyn SocketProtector>,
}

impl FdHost for ForeignHost {
    fn establish(&self, config: &TunnelConfig) -> Result<OwnedFd, HostError> {
        let fd = self
            .tunnel
            .establish(TunnelSettings::from(config))
            .map_err(|e| HostError(format!("the tunnel provider failed: {e}")))?;
        check_tunnel_fd(fd).map_err(HostError)?;
        // SAFETY: `fd` is open (checked just above) and the provider's
        // contract hands its ownership to the session.
        #[allow(unsafe_code)]
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn protect(&self, socket: BorrowedFd<'_>) -> bool {
        self.protector.protect(std::os::fd::AsRawFd::as_raw_fd(&socket))
    }

    fn teardown(&self) {
        self.tunnel.teardown();
    }
}

/// Refuses a descriptor the session cannot use as a tunnel: not open, or
/// (Linux and Android) not a TUN device. The descriptor stays the host's
/// when refused. (Whether it adds packet information headers cannot be
/// asked reliably: this machine's kernel, 6.18, reports IFF_NO_PI from
/// TUNGETIFF for a device opened without it. The contract says: none.)
fn check_tunnel_fd(fd: RawFd) -> Result<(), String> {
    if fd < 0 {
        return Err(format!("the tunnel provider returned no descriptor ({fd})"));
    }
    // SAFETY: F_GETFD only reads the descriptor table entry.
    #[allow(unsafe_code)]
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!(
            "the tunnel provider returned descriptor {fd}, which is not open ({})",
            std::io::Error::last_os_error()
        ));
    }
    check_tun(fd)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_tun(fd: RawFd) -> Result<(), String> {
    // SAFETY: a zeroed `ifreq` is a valid value of the C struct.
    #[allow(unsafe_code)]
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `ifreq` into `req`, which outlives the
    // call; on a descriptor that is not a TUN device it fails.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
    if r < 0 {
        return Err(format!(
            "the tunnel provider returned descriptor {fd}, which is not a TUN device ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// An iOS utun descriptor is a socket the kernel already checked.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check_tun(_fd: RawFd) -> Result<(), String> {
    Ok(())
}
