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
#[error("creating TUN device {name} ({addr}/{prefix}, mtu {mtu}): {source} (is /dev/net/tun there, and are we root?)")]
pub struct TunError {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u16,
    #[source]
    pub source: std::io::Error,
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
            source,
        })
}
