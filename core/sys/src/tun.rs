//! TUN devices: the one place packets enter and leave the kernel.
//!
//! A device is created with its address, MTU and a transmit queue longer than
//! the kernel's 500-packet default, and disappears when the last handle to it
//! is dropped (or the process exits).

use std::net::Ipv4Addr;

pub use tun_rs::AsyncDevice as TunDevice;

/// Packets the kernel may queue towards the device; the default 500 drops
/// bursts at gigabit rates.
const TX_QUEUE_LEN: u32 = 5000;

#[derive(Debug, thiserror::Error)]
#[error("creating TUN device {name} ({addr}/{prefix}, mtu {mtu}): {source} ({hint})")]
pub struct TunError {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u16,
    #[source]
    pub source: std::io::Error,
    /// What to check, from the error and the device node as they are.
    pub hint: String,
}

/// The device node every TUN device is made through.
const CLONE_DEVICE: &str = "/dev/net/tun";

/// What an operator should look at when creating a device failed with
/// `error`, the clone device having file mode `mode` (`None`: missing). A
/// process that is not root opens the clone device through its file mode:
/// udev makes it `0666` on a standard host, but some hosts and containers
/// leave it `0600`, which no capability short of `CAP_DAC_OVERRIDE` gets
/// past.
fn hint(error: &std::io::Error, mode: Option<u32>) -> String {
    match mode {
        None => format!("{CLONE_DEVICE} is missing: load the tun module, or pass the device into the container"),
        Some(mode) if error.kind() == std::io::ErrorKind::PermissionDenied && mode & 0o006 != 0o006 => format!(
            "{CLONE_DEVICE} has mode {:04o}: a node not running as root needs it readable and writable by all (0666, as udev makes it) and CAP_NET_ADMIN",
            mode & 0o7777
        ),
        Some(_) => "creating a TUN device needs CAP_NET_ADMIN".to_owned(),
    }
}

/// Creates and brings up a TUN device named `name` with `addr/prefix`.
/// With `offload`, the kernel hands over TCP super-packets (GSO) and takes
/// coalesced ones (GRO): every read and write then carries a virtio header,
/// so the device must be read and written a batch at a time
/// (`recv_multiple`, `send_multiple`).
pub fn create(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u16, offload: bool) -> Result<TunDevice, TunError> {
    tun_rs::DeviceBuilder::new()
        .name(name)
        .ipv4(addr, prefix, None)
        .mtu(mtu)
        .tx_queue_len(TX_QUEUE_LEN)
        .offload(offload)
        .build_async()
        .map_err(|source| TunError {
            name: name.to_owned(),
            addr,
            prefix,
            mtu,
            hint: {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(CLONE_DEVICE).ok().map(|m| m.permissions().mode());
                hint(&source, mode)
            },
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_refused_device_names_what_to_change() {
        let denied = Error::from(ErrorKind::PermissionDenied);
        let said = hint(&denied, Some(0o20600));
        assert!(said.contains("mode 0600") && said.contains("0666"), "{said}");
        // Open to all: what is missing is the capability.
        assert!(hint(&denied, Some(0o20666)).contains("CAP_NET_ADMIN"));
        assert!(hint(&Error::from(ErrorKind::NotFound), None).contains("missing"));
    }
}
