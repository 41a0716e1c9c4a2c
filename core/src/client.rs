//! The client tunnel runtime: one link to an exit and the packets over it.
//!
//! [`Link::establish`] dials the exit over QUIC (checking its identity
//! against the record), says hello and gets an inner address. [`Link::pump`]
//! then moves packets between the TUN device and the exit: IP packets are
//! encrypted by the client's WireGuard session and sent as QUIC datagrams,
//! and the other way round, until the link dies.
//!
//! What it does not do: routes, DNS and the TUN device's lifetime belong to
//! the daemon (see [`crate::daemon`]), which keeps them across reconnects so
//! no packet leaks while a link is down.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boringtun::x25519;
use bytes::Bytes;
use tracing::debug;

use crate::link::{self, LinkError};
use crate::record::VerifiedRecord;
use crate::session::{self, ClientHello, ExitHello, SessionParams, PROTOCOL_VERSION};
use crate::tun::TunDevice;
use crate::wg::WgSession;

/// How long dialing an exit and saying hello may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
const TICK: Duration = Duration::from_millis(250);
const BUF: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot reach exit {exit} at {addr}: {reason}")]
    Unreachable {
        exit: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("exit {exit} refused the session: {reason}")]
    Refused { exit: String, reason: String },
    #[error("exit {exit} offers datagrams of {room} bytes, too small to carry IPv4")]
    DatagramsTooSmall { exit: String, room: usize },
}

impl ClientError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// Bytes through the tunnel, counted as inner (IP) bytes.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// One live QUIC link to an exit with its WireGuard session.
#[derive(Debug)]
pub struct Link {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    wg: Arc<Mutex<WgSession>>,
    pub params: SessionParams,
    pub mtu: u16,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Link {
    /// Dials the exit of `record`, says hello and starts the WireGuard
    /// handshake. `previous_addr` asks for the inner address of a previous
    /// link back, so open connections survive a reconnect.
    pub async fn establish(
        record: &VerifiedRecord,
        wg_secret: &x25519::StaticSecret,
        index: u32,
        previous_addr: Option<Ipv4Addr>,
    ) -> Result<Self, ClientError> {
        let r = record.record();
        let exit = record.short_id();
        let unreachable = |reason: String| ClientError::Unreachable {
            exit: exit.clone(),
            addr: r.quic_addr,
            reason,
        };
        let bind: SocketAddr = if r.quic_addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = link::endpoint(bind, None)?;
        endpoint.set_default_client_config(link::client_config(r.identity)?);
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            wg_key: *x25519::PublicKey::from(wg_secret).as_bytes(),
            previous_addr,
        };
        let dial = async {
            let conn = endpoint
                .connect(r.quic_addr, link::SERVER_NAME)
                .map_err(|e| unreachable(e.to_string()))?
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
            session::write_message(&mut send, &hello)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let answer: ExitHello = session::read_message(&mut recv)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok::<_, ClientError>((conn, answer))
        };
        let (conn, answer) = tokio::time::timeout(CONNECT_TIMEOUT, dial)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))??;
        let params = match answer {
            ExitHello::Accepted(p) => p,
            ExitHello::Refused { reason } => return Err(ClientError::Refused { exit, reason }),
        };
        let room = conn.max_datagram_size().unwrap_or(0);
        let mtu = link::tunnel_mtu(room).ok_or(ClientError::DatagramsTooSmall { exit, room })?;
        let mut wg = WgSession::new(wg_secret.clone(), x25519::PublicKey::from(r.wg_key), index, Some(25));
        let mut buf = [0u8; 256];
        if let Some(init) = wg.initiate(&mut buf) {
            let _ = conn.send_datagram(Bytes::copy_from_slice(init));
        }
        Ok(Self {
            endpoint,
            conn,
            wg: Arc::new(Mutex::new(wg)),
            params,
            mtu,
        })
    }

    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Moves packets until the link dies and says why.
    pub async fn pump(&self, tun: Arc<TunDevice>, traffic: Arc<Traffic>) -> String {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(outbound(
            tun.clone(),
            self.conn.clone(),
            self.wg.clone(),
            traffic.clone(),
        ));
        tasks.spawn(inbound(tun, self.conn.clone(), self.wg.clone(), traffic));
        tasks.spawn(timers(self.conn.clone(), self.wg.clone()));
        let why = tokio::select! {
            e = self.conn.closed() => describe_close(&e),
            Some(done) = tasks.join_next() => format!("tunnel task ended: {done:?}"),
        };
        tasks.abort_all();
        why
    }

    /// Closes the link politely (the exit frees the session at once).
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"client disconnected");
        let _ = tokio::time::timeout(Duration::from_millis(300), self.endpoint.wait_idle()).await;
    }
}

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TimedOut => "the exit stopped answering (link timed out)".into(),
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!("the exit closed the link: {}", String::from_utf8_lossy(&c.reason))
        }
        quinn::ConnectionError::Reset => "the exit reset the link (did it restart?)".into(),
        other => format!("link lost: {other}"),
    }
}

/// TUN → WireGuard → QUIC.
async fn outbound(tun: Arc<TunDevice>, conn: quinn::Connection, wg: Arc<Mutex<WgSession>>, traffic: Arc<Traffic>) {
    let mut packet = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    loop {
        let n = match tun.recv(&mut packet).await {
            Ok(n) => n,
            Err(e) => {
                debug!("reading TUN: {e}");
                continue;
            }
        };
        // The kernel routes IPv6 elsewhere (blocked); anything else here
        // that is not IPv4 is not ours to carry.
        if packet[0] >> 4 != 4 {
            continue;
        }
        let datagram = {
            let mut wg = lock(&wg);
            match wg.encapsulate(&packet[..n], &mut out) {
                Ok(Some(d)) => Bytes::copy_from_slice(d),
                Ok(None) => continue,
                Err(e) => {
                    debug!("encapsulating: {e:?}");
                    continue;
                }
            }
        };
        traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
        // Waiting for room pushes back on the TUN device instead of dropping.
        if conn.send_datagram_wait(datagram).await.is_err() {
            return;
        }
    }
}

/// QUIC → WireGuard → TUN.
async fn inbound(tun: Arc<TunDevice>, conn: quinn::Connection, wg: Arc<Mutex<WgSession>>, traffic: Arc<Traffic>) {
    let mut buf = vec![0u8; BUF];
    let mut replies: Vec<Bytes> = Vec::new();
    loop {
        let Ok(datagram) = conn.read_datagram().await else {
            return;
        };
        let result = {
            let mut wg = lock(&wg);
            wg.decapsulate(None, &datagram, &mut buf, |d| replies.push(Bytes::copy_from_slice(d)))
        };
        for r in replies.drain(..) {
            let _ = conn.send_datagram(r);
        }
        match result {
            Ok(Some(n)) => {
                traffic.received.fetch_add(n as u64, Ordering::Relaxed);
                if let Err(e) = tun.send(&buf[..n]).await {
                    debug!("writing TUN: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => debug!("datagram from exit: {e:?}"),
        }
    }
}

async fn timers(conn: quinn::Connection, wg: Arc<Mutex<WgSession>>) {
    let mut buf = vec![0u8; 512];
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let datagram = {
            let mut wg = lock(&wg);
            match wg.tick(&mut buf) {
                Ok(Some(d)) => Some(Bytes::copy_from_slice(d)),
                _ => None,
            }
        };
        if let Some(d) = datagram {
            let _ = conn.send_datagram(d);
        }
    }
}
