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
        // Slots grow to a super-packet's size the first time they are
        // written (only a device's batch needs it; untouched room is not
        // resident memory).
        for buf in &mut self.bufs[..count] {
            if buf.capacity() < COALESCED_MAX {
                buf.reserve_exact(COALESCED_MAX - buf.len());
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

    #[test]
    fn a_recv_batch_put_holds_one_packet_cut_at_the_maximum() {
        let mut batch = RecvBatch::default();
        batch.put(&vec![7u8; PACKET_MAX + 10]);
        let packets: Vec<&[u8]> = batch.packets().collect();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].len(), PACKET_MAX);
    }
}
