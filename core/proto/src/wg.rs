//! WireGuard sessions: a thin wrapper over boringtun's `Tunn`.
//!
//! The caller owns every buffer and every socket; this module only turns IP
//! packets into WireGuard datagrams and back. The one thing it adds over
//! `Tunn` is the "repeat until done" loop that boringtun asks its callers to
//! run after a datagram was decapsulated, folded into [`WgSession::decapsulate`]
//! so no caller can forget it. (boringtun reads the clock itself, so these
//! calls are not fully sans-IO; the timers still only advance on [`WgSession::tick`].)

use std::net::IpAddr;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

/// WireGuard adds 32 bytes to every IP packet (16 header, 16 tag).
pub const WG_OVERHEAD: usize = 32;
/// The smallest buffer boringtun accepts for handshake messages.
pub const MIN_BUF: usize = 148;

pub struct WgSession {
    tunn: Tunn,
}

impl std::fmt::Debug for WgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgSession").finish_non_exhaustive()
    }
}

impl WgSession {
    /// `index` must be unique among this side's sessions (it picks the
    /// receiver index the peer echoes back); only its low 24 bits are used.
    pub fn new(
        our_secret: x25519::StaticSecret,
        peer: x25519::PublicKey,
        index: u32,
        keepalive_secs: Option<u16>,
    ) -> Self {
        Self {
            tunn: Tunn::new(our_secret, peer, None, keepalive_secs, index & 0x00ff_ffff, None),
        }
    }

    /// Encrypts one IP packet. `dst` must hold `packet.len() + WG_OVERHEAD`
    /// and at least [`MIN_BUF`] bytes. Without a session yet, the packet is
    /// queued and a handshake initiation is returned instead.
    pub fn encapsulate<'a>(&mut self, packet: &[u8], dst: &'a mut [u8]) -> Result<Option<&'a [u8]>, WireGuardError> {
        if dst.len() < (packet.len() + WG_OVERHEAD).max(MIN_BUF) {
            return Err(WireGuardError::DestinationBufferTooSmall);
        }
        match self.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(d) => Ok(Some(d)),
            TunnResult::Done => Ok(None),
            TunnResult::Err(e) => Err(e),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => Ok(None),
        }
    }

    /// Starts a handshake now instead of waiting for the first packet.
    pub fn initiate<'a>(&mut self, dst: &'a mut [u8]) -> Option<&'a [u8]> {
        match self.tunn.format_handshake_initiation(dst, false) {
            TunnResult::WriteToNetwork(d) => Some(d),
            _ => None,
        }
    }

    /// Processes one datagram from the peer. Replies and packets queued
    /// during the handshake go to `to_peer` in order; an IP packet for the
    /// TUN device is left in `dst[..n]` and `Some(n)` returned.
    pub fn decapsulate(
        &mut self,
        from: Option<IpAddr>,
        datagram: &[u8],
        dst: &mut [u8],
        mut to_peer: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, WireGuardError> {
        let start = dst.as_ptr() as usize;
        let mut input = datagram;
        loop {
            match self.tunn.decapsulate(from, input, dst) {
                TunnResult::WriteToNetwork(d) => {
                    to_peer(d);
                    // boringtun flushes packets queued during the handshake
                    // one per call with an empty datagram.
                    input = &[];
                }
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    // boringtun decrypts in place at the start of `dst`.
                    debug_assert_eq!(p.as_ptr() as usize, start);
                    return Ok(Some(p.len()));
                }
                TunnResult::Done => return Ok(None),
                TunnResult::Err(e) => return Err(e),
            }
        }
    }

    /// Runs the WireGuard timers (rekey, keepalive, expiry); call every
    /// ~250 ms. Returns a datagram to send, if any.
    pub fn tick<'a>(&mut self, dst: &'a mut [u8]) -> Result<Option<&'a [u8]>, WireGuardError> {
        match self.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(d) => Ok(Some(d)),
            TunnResult::Err(e) => Err(e),
            _ => Ok(None),
        }
    }

    /// Time since the last completed handshake, if there is a live session.
    pub fn last_handshake(&self) -> Option<std::time::Duration> {
        self.tunn.time_since_last_handshake()
    }

    /// True once a session key exists and data can flow.
    pub fn is_established(&self) -> bool {
        self.last_handshake().is_some()
    }
}

/// Reads the static public key from a handshake initiation addressed to us,
/// so a UDP listener can tell which configured peer is calling.
pub fn initiator_key(our_secret: &x25519::StaticSecret, datagram: &[u8]) -> Option<x25519::PublicKey> {
    use boringtun::noise::{handshake::parse_handshake_anon, Packet};
    let our_public = x25519::PublicKey::from(our_secret);
    match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(init) => parse_handshake_anon(our_secret, &our_public, &init)
            .ok()
            .map(|h| x25519::PublicKey::from(h.peer_static_public)),
        _ => None,
    }
}

/// The session index a peer addressed a non-initiation datagram to: the
/// `index` given to [`WgSession::new`] on our side.
pub fn receiver_index(datagram: &[u8]) -> Option<u32> {
    use boringtun::noise::Packet;
    let idx = match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(_) => return None,
        Packet::HandshakeResponse(p) => p.receiver_idx,
        Packet::PacketCookieReply(p) => p.receiver_idx,
        Packet::PacketData(p) => p.receiver_idx,
    };
    Some(idx >> 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn secret(rng: &mut impl RngCore) -> x25519::StaticSecret {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        x25519::StaticSecret::from(b)
    }

    fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[100, 87, 0, 2]);
        p[16..20].copy_from_slice(&[198, 18, 0, 10]);
        p.extend_from_slice(payload);
        p
    }

    /// Drives a client and an exit session in memory: datagrams from one are
    /// fed to the other until nothing is left in flight.
    struct Pair {
        client: WgSession,
        exit: WgSession,
        to_exit: Vec<Vec<u8>>,
        to_client: Vec<Vec<u8>>,
        exit_tun: Vec<Vec<u8>>,
        client_tun: Vec<Vec<u8>>,
    }

    impl Pair {
        fn new(seed: u64) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (cs, es) = (secret(&mut rng), secret(&mut rng));
            let (cp, ep) = (x25519::PublicKey::from(&cs), x25519::PublicKey::from(&es));
            Self {
                client: WgSession::new(cs, ep, 1, None),
                exit: WgSession::new(es, cp, 2, None),
                to_exit: vec![],
                to_client: vec![],
                exit_tun: vec![],
                client_tun: vec![],
            }
        }

        fn run(&mut self) {
            let mut buf = vec![0u8; 2048];
            for _ in 0..100 {
                if self.to_exit.is_empty() && self.to_client.is_empty() {
                    return;
                }
                for d in std::mem::take(&mut self.to_exit) {
                    let to_client = &mut self.to_client;
                    let n = self
                        .exit
                        .decapsulate(None, &d, &mut buf, |b| to_client.push(b.to_vec()))
                        .expect("exit decapsulates");
                    self.exit_tun.extend(n.map(|n| buf[..n].to_vec()));
                }
                for d in std::mem::take(&mut self.to_client) {
                    let to_exit = &mut self.to_exit;
                    let n = self
                        .client
                        .decapsulate(None, &d, &mut buf, |b| to_exit.push(b.to_vec()))
                        .expect("client decapsulates");
                    self.client_tun.extend(n.map(|n| buf[..n].to_vec()));
                }
            }
            panic!("pair did not settle within 100 steps");
        }
    }

    #[test]
    fn packets_cross_both_ways_after_handshake() {
        let mut pair = Pair::new(7);
        let mut buf = vec![0u8; 2048];
        let first = ipv4_packet(b"hello exit");
        let init = pair
            .client
            .encapsulate(&first, &mut buf)
            .expect("encapsulates")
            .expect("handshake");
        pair.to_exit.push(init.to_vec());
        pair.run();
        assert!(pair.client.is_established() && pair.exit.is_established());
        assert_eq!(pair.exit_tun, vec![first], "queued packet delivered after handshake");

        let reply = ipv4_packet(b"hello client");
        let d = pair.exit.encapsulate(&reply, &mut buf).expect("enc").expect("data");
        pair.to_client.push(d.to_vec());
        pair.run();
        assert_eq!(pair.client_tun, vec![reply]);
    }

    #[test]
    fn tampered_and_foreign_datagrams_are_rejected() {
        let mut pair = Pair::new(8);
        let mut buf = vec![0u8; 2048];
        let init = pair.client.initiate(&mut buf).expect("init").to_vec();
        pair.to_exit.push(init);
        pair.run();
        let d = pair
            .client
            .encapsulate(&ipv4_packet(b"x"), &mut buf)
            .expect("enc")
            .expect("data")
            .to_vec();
        let mut bad = d.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(pair
            .exit
            .decapsulate(None, &bad, &mut buf, |_| panic!("tampered data delivered"))
            .is_err());
        assert!(pair
            .exit
            .decapsulate(None, &[1, 2, 3], &mut buf, |_| panic!("garbage delivered"))
            .is_err());
        // Replay of a valid datagram is refused.
        assert!(pair
            .exit
            .decapsulate(None, &d, &mut buf, |_| {})
            .expect("first copy")
            .is_some());
        assert!(pair
            .exit
            .decapsulate(None, &d, &mut buf, |_| panic!("replay delivered"))
            .is_err());
    }

    #[test]
    fn listener_identifies_initiator_and_index() {
        let mut pair = Pair::new(9);
        let mut buf = vec![0u8; 2048];
        let exit_secret = {
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            let _client = secret(&mut rng);
            secret(&mut rng)
        };
        let init = pair.client.initiate(&mut buf).expect("init").to_vec();
        let client_public = initiator_key(&exit_secret, &init).expect("initiator key");
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        assert_eq!(
            client_public.as_bytes(),
            x25519::PublicKey::from(&secret(&mut rng)).as_bytes()
        );
        assert_eq!(receiver_index(&init), None);
        pair.to_exit.push(init);
        pair.run();
        let d = pair
            .client
            .encapsulate(&ipv4_packet(b"x"), &mut buf)
            .expect("enc")
            .expect("data");
        assert_eq!(receiver_index(d), Some(2), "data is addressed to the exit's index");
    }
}
