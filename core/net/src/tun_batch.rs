//! Packets to and from a TUN device a batch at a time.
//!
//! A device made with offload hands over a TCP super-packet (GSO) in one
//! read and takes coalesced ones (GRO) in one write, each behind a virtio
//! header: [`RecvBatch::read`] splits a read into its segments and
//! [`SendBatch::write`] coalesces a batch into as few writes as it can.
//! Without offload both work a packet at a time. The client's tunnel and
//! the exit use the same two types; a host without a device (tests, the
//! exit's in-memory uplink) fills and drains them with
//! [`RecvBatch::put`] and [`SendBatch::forward`].

use std::io;

use tokio::sync::mpsc;
use tun_rs::AsyncDevice;

/// Bytes before each packet of a [`SendBatch`]: a device with offload
/// writes its virtio header there.
pub const BATCH_HEADROOM: usize = tun_rs::VIRTIO_NET_HDR_LEN;
/// Most packets one batch holds.
pub const BATCH_PACKETS: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Room for one packet of a batch: more than any tunnel MTU.
pub const PACKET_MAX: usize = 4096;
/// Room a slot of a [`SendBatch`] needs to take a whole coalesced
/// super-packet: tun-rs coalesces a flow's segments into the first one's
/// buffer only while they fit its capacity (the IP length limit, 64 KB).
const COALESCED_MAX: usize = BATCH_HEADROOM + 65_535;

/// Packets the system sent into a device, read in one go: with offload,
/// every segment of the TCP super-packet the kernel handed over.
pub struct RecvBatch {
    /// The raw read: the virtio header and the unsplit packet.
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            raw: vec![0; tun_rs::VIRTIO_NET_HDR_LEN + 65535],
            bufs: vec![vec![0; PACKET_MAX]; BATCH_PACKETS],
            sizes: vec![0; BATCH_PACKETS],
            count: 0,
        }
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Replaces the batch with one read from `device`; returns how many
    /// packets it holds.
    pub async fn read(&mut self, device: &AsyncDevice) -> io::Result<usize> {
        self.count = 0;
        self.count = device
            .recv_multiple(&mut self.raw, &mut self.bufs, &mut self.sizes, 0)
            .await?;
        Ok(self.count)
    }

    /// Replaces the batch with the one `packet` (cut at [`PACKET_MAX`]).
    pub fn put(&mut self, packet: &[u8]) {
        let n = packet.len().min(PACKET_MAX);
        self.bufs[0][..n].copy_from_slice(&packet[..n]);
        self.sizes[0] = n;
        self.count = 1;
    }

    /// The packets of the last read.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.sizes)
            .take(self.count)
            .map(|(b, n)| &b[..*n])
    }
}

/// Packets for the system, written in one go: with offload, the segments
/// of one TCP flow are coalesced into one super-packet (fewer writes, and
/// the receiving TCP acks fewer, larger packets).
pub struct SendBatch {
    /// Each: [`BATCH_HEADROOM`] bytes, then a packet.
    bufs: Vec<Vec<u8>>,
    count: usize,
    gro: tun_rs::GROTable,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            bufs: vec![vec![0; BATCH_HEADROOM + PACKET_MAX]; BATCH_PACKETS],
            count: 0,
            gro: tun_rs::GROTable::default(),
        }
    }
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl SendBatch {
    /// Where the next packet goes ([`PACKET_MAX`] bytes); `None` when the
    /// batch is full. Keep it with [`SendBatch::commit`].
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let buf = self.bufs.get_mut(self.count)?;
        // A coalescing write may have grown it, the last packet shrunk it.
        buf.resize(BATCH_HEADROOM + PACKET_MAX, 0);
        Some(&mut buf[BATCH_HEADROOM..])
    }

    /// Keeps the first `len` bytes written to the last [`SendBatch::slot`].
    pub fn commit(&mut self, len: usize) {
        if let Some(buf) = self.bufs.get_mut(self.count) {
            buf.truncate(BATCH_HEADROOM + len.min(PACKET_MAX));
            self.count += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    /// The packets kept so far.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.count].iter().map(|b| &b[BATCH_HEADROOM..])
    }

    /// Empties the batch without writing it.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Sends every packet, as its own `Vec`, to `to` (an in-memory end
    /// standing in for a device) and empties the batch; `false` when `to`'s
    /// receiver is gone.
    pub async fn forward(&mut self, to: &mpsc::Sender<Vec<u8>>) -> bool {
        let mut open = true;
        for packet in self.packets() {
            if to.send(packet.to_vec()).await.is_err() {
                open = false;
                break;
            }
        }
        self.clear();
        open
    }

    /// Gives every packet to `device` and empties the batch (also when the
    /// write fails: a TUN device drops rather than queues).
    pub async fn write(&mut self, device: &AsyncDevice) -> io::Result<()> {
        let count = std::mem::take(&mut self.count);
        if count == 0 {
            return Ok(());
        }
        // With offload, slots grow to a super-packet's size the first time
        // they are written (at most [`BATCH_PACKETS`] x 64 KB; room never
        // coalesced into is not resident memory).
        if device.tcp_gso() {
            for buf in &mut self.bufs[..count] {
                if buf.capacity() < COALESCED_MAX {
                    buf.reserve_exact(COALESCED_MAX - buf.len());
                }
            }
        }
        device
            .send_multiple(&mut self.gro, &mut self.bufs[..count], BATCH_HEADROOM)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_batch_keeps_what_was_committed_and_refuses_past_full() {
        let mut batch = SendBatch::default();
        for i in 0..BATCH_PACKETS {
            let slot = batch.slot().expect("room");
            slot[..3].copy_from_slice(&[i as u8, 1, 2]);
            batch.commit(3);
        }
        assert!(batch.is_full());
        assert!(batch.slot().is_none());
        let kept: Vec<&[u8]> = batch.packets().collect();
        assert_eq!(kept.len(), BATCH_PACKETS);
        assert_eq!(kept[5], &[5, 1, 2]);
        batch.clear();
        assert!(batch.is_empty());
        // A slot is full size again after a short packet was kept in it.
        assert_eq!(batch.slot().map(|s| s.len()), Some(PACKET_MAX));
    }

    /// One flow's consecutive TCP segment `i` (1 200 bytes of payload each),
    /// 10.9.0.2:40000 -> 10.9.0.1:5201, with valid checksums.
    fn segment(i: u32) -> Vec<u8> {
        const PAYLOAD: usize = 1200;
        let len = 40 + PAYLOAD;
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 9, 0, 2]);
        p[16..20].copy_from_slice(&[10, 9, 0, 1]);
        let sum = hopwire_proto::packet::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&(1000 + i * PAYLOAD as u32).to_be_bytes());
        p[28..32].copy_from_slice(&1u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x10; // ACK
        p[34..36].copy_from_slice(&65535u16.to_be_bytes());
        for (k, b) in p[40..].iter_mut().enumerate() {
            *b = (k as u32 + i) as u8;
        }
        // The TCP checksum covers a pseudo-header: addresses, protocol, length.
        let mut pseudo = Vec::with_capacity(12 + len - 20);
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((len - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        let sum = hopwire_proto::packet::checksum(&pseudo);
        p[36..38].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// Packets the kernel took from the user side of device `name`, in this
    /// thread's network namespace.
    fn packets_written_into(name: &str) -> u64 {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("reading /proc/thread-self/net/dev");
        let line = dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} is not in /proc/thread-self/net/dev:\n{dev}"));
        // Receive: bytes, packets, ...
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a packet count")
    }

    /// With offload, a batch holding 40 consecutive segments of one TCP flow
    /// (48 000 bytes) reaches the kernel as one super-packet: the receiving
    /// TCP then handles and acknowledges one packet instead of 40. Needs
    /// root (a network namespace of the test's own, where the device lives).
    #[test]
    fn a_device_batch_of_one_flow_is_one_coalesced_write() {
        std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers; it moves this thread (only)
            // into a new network namespace, which goes when the thread ends.
            #[allow(unsafe_code)]
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                unshared,
                0,
                "unshare(CLONE_NEWNET): {} (the test needs root)",
                io::Error::last_os_error()
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let device = tun_rs::DeviceBuilder::new()
                    .name("hwgro0")
                    .ipv4(std::net::Ipv4Addr::new(10, 9, 0, 1), 24, None)
                    .mtu(1300)
                    .offload(true)
                    .build_async()
                    .expect("a TUN device with offload");
                let before = packets_written_into("hwgro0");
                let mut batch = SendBatch::default();
                for i in 0..40 {
                    let packet = segment(i);
                    let slot = batch.slot().expect("room");
                    slot[..packet.len()].copy_from_slice(&packet);
                    batch.commit(packet.len());
                }
                batch.write(&device).await.expect("writing the batch");
                assert!(batch.is_empty());
                assert_eq!(
                    packets_written_into("hwgro0") - before,
                    1,
                    "40 segments of one flow were not coalesced into one write"
                );
            });
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }

    #[test]
    fn a_recv_batch_put_holds_one_packet_cut_at_the_maximum() {
        let mut batch = RecvBatch::default();
        batch.put(&vec![7u8; PACKET_MAX + 10]);
        let packets: Vec<&[u8]> = batch.packets().collect();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].len(), PACKET_MAX);
    }
}
