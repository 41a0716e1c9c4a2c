//! QUIC links between Hopwire peers (quinn), authenticated by node identity.
//!
//! A node's TLS certificate is self-signed with its ed25519 identity key, so
//! no certificate authority is involved: the client checks that the key in
//! the certificate is the identity in the node record it was given, and TLS
//! 1.3 proves the node holds that key. Data rides in QUIC DATAGRAM frames
//! (RFC 9221), never in streams, so there is no TCP-over-TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::cellpath::{self, CellSocket};
use hopwire_proto::onion::circuit::cell_overhead;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub const ALPN: &[u8] = b"hopwire/1";
/// The name clients put in SNI; the identity check does not depend on it.
pub const SERVER_NAME: &str = "hopwire.node";
/// UDP payload size QUIC starts with; PMTU discovery may go up from here and
/// black-hole detection falls back to 1200.
pub const INITIAL_MTU: u16 = 1452;
/// Bytes a QUIC short-header packet spends around one DATAGRAM frame: flags
/// (1), connection id (8), packet number (up to 4), AEAD tag (16), frame type
/// and length (up to 9), as quinn counts them.
const DATAGRAM_FRAME_OVERHEAD: u16 = 1 + 8 + 4 + 16 + 9;
/// The inner MTU a tunnel of `hops` hops carries over links at
/// [`INITIAL_MTU`]: a full inner packet plus WireGuard's 32 bytes plus the
/// circuit's layers fits one QUIC datagram, so nothing is fragmented.
pub const fn tunnel_mtu_at_start(hops: usize) -> u16 {
    INITIAL_MTU - DATAGRAM_FRAME_OVERHEAD - hopwire_proto::wg::WG_OVERHEAD as u16 - cell_overhead(hops) as u16
}
/// Below this a tunnel cannot carry IPv4 as the RFCs require.
pub const MIN_TUNNEL_MTU: u16 = 576;

/// The inner MTU for a circuit of `hops` hops whose first link's datagrams
/// hold `max_datagram` bytes (later links carry smaller cells).
pub fn tunnel_mtu(max_datagram: usize, hops: usize) -> Option<u16> {
    let mtu = max_datagram
        .checked_sub(hopwire_proto::wg::WG_OVERHEAD + cell_overhead(hops))?
        .min(usize::from(tunnel_mtu_at_start(hops)));
    u16::try_from(mtu).ok().filter(|m| *m >= MIN_TUNNEL_MTU)
}
/// A peer is declared dead after this long without any packet from it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const DATAGRAM_BUFFER: usize = 2 << 20;
/// Circuits a new link may carry at once (one control stream each). quinn
/// allocates state for every allowed stream up front, so links start small
/// and the node raises the limit of a busy link (see
/// [`hopwire_node_runtime`]) up to [`MAX_CIRCUITS_PER_LINK`].
pub const INITIAL_CIRCUITS_PER_LINK: u32 = 128;
pub const MAX_CIRCUITS_PER_LINK: u32 = 65_536;
/// Kernel socket buffers: the 208 KB default drops bursts at line rate.
const SOCKET_BUFFER: usize = 4 << 20;

/// DER prefix of an ed25519 PKCS#8 v1 private key (RFC 8410); the 32-byte
/// seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const SPKI_ED25519_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("building the node certificate: {0}")]
    Certificate(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
    #[error("binding UDP socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().unwrap_or_else(|e| unreachable!("{e}"))))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .initial_mtu(INITIAL_MTU)
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .ack_frequency_config(Some(ack_frequency()))
        .max_concurrent_bidi_streams(INITIAL_CIRCUITS_PER_LINK.into())
        .max_concurrent_uni_streams(0u32.into());
    t
}

/// Fewer ACKs: datagrams are never retransmitted, so ACKs only feed
/// congestion control, and every ACK is a packet each hop must handle.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut a = quinn::AckFrequencyConfig::default();
    a.ack_eliciting_threshold(ACK_EVERY.into())
        .max_ack_delay(Some(Duration::from_millis(5)));
    a
}
/// Ack-eliciting packets a peer may receive before it must ACK.
const ACK_EVERY: u32 = 8;

/// The next datagram on `conn` if one has already arrived; `None` without
/// waiting otherwise. Loops that handle datagrams a batch at a time drain
/// with it.
pub async fn datagram_if_ready(conn: &quinn::Connection) -> Option<Result<bytes::Bytes, quinn::ConnectionError>> {
    tokio::select! {
        biased;
        d = conn.read_datagram() => Some(d),
        () = std::future::ready(()) => None,
    }
}

/// Server side: a self-signed certificate over the node's identity key.
pub fn server_config(identity: &SigningKey) -> Result<quinn::ServerConfig, LinkError> {
    let mut pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
    pkcs8.extend_from_slice(identity.as_bytes());
    let key_der = PrivatePkcs8KeyDer::from(pkcs8);
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &rcgen::PKCS_ED25519)
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .and_then(|p| p.self_signed(&key_pair))
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key_der))?;
    // A node that offers the cell path gets it (the server's order decides).
    tls.alpn_protocols = vec![cellpath::ALPN_CELLS.to_vec(), ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| LinkError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// Client side (a user's client, or a node extending a circuit): accept
/// exactly the node whose identity key is `expected`, and offer the
/// [cell path](cellpath).
pub fn client_config(expected: [u8; 32]) -> Result<quinn::ClientConfig, LinkError> {
    client_config_offering(expected, &[cellpath::ALPN_CELLS, ALPN])
}

/// As [`client_config`], offering the protocols `alpns`.
pub(crate) fn client_config_offering(expected: [u8; 32], alpns: &[&[u8]]) -> Result<quinn::ClientConfig, LinkError> {
    let provider = provider();
    let verifier = IdentityVerifier {
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let quic = QuicClientConfig::try_from(tls).map_err(|e| LinkError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A node's endpoint: its socket also carries the [cell path](cellpath),
/// returned beside it.
pub fn node_endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
) -> Result<(quinn::Endpoint, Arc<CellSocket>), LinkError> {
    endpoint(bind_udp(addr)?, Some(server))
}

/// An endpoint on a socket the caller bound (and protected), with large
/// kernel buffers if [`bind_udp`] made it; the socket also carries the
/// [cell path](cellpath), returned beside it.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<(quinn::Endpoint, Arc<CellSocket>), LinkError> {
    let addr = socket.local_addr().map_err(|source| LinkError::Bind {
        addr: ([0, 0, 0, 0], 0).into(),
        source,
    })?;
    let bind = |source| LinkError::Bind { addr, source };
    let socket = Arc::new(CellSocket::new(socket).map_err(bind)?);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(),
        server,
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind)?;
    Ok((endpoint, socket))
}

/// Endpoints never grease QUIC's fixed bit (RFC 9287): every QUIC packet an
/// endpoint receives then has bit 0x40 of its first byte set, which is what
/// tells it from a cell packet.
fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    config
}

/// Binds a UDP socket with a few MB of kernel buffer each way.
pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, LinkError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |source| LinkError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into()).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    Ok(socket.into())
}

/// Checks that the server's certificate carries the expected identity key and
/// that the TLS handshake was signed with it.
#[derive(Debug)]
struct IdentityVerifier {
    expected: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let spki = cert.subject_public_key_info();
        let mut expected = SPKI_ED25519_PREFIX.to_vec();
        expected.extend_from_slice(&self.expected);
        if spki.as_ref() != expected.as_slice() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    async fn serve_once(server: quinn::Endpoint) {
        if let Some(incoming) = server.accept().await {
            if let Ok(conn) = incoming.await {
                if let Ok(d) = conn.read_datagram().await {
                    let _ = conn.send_datagram(d);
                }
                conn.closed().await;
            }
        }
    }

    #[tokio::test]
    async fn client_accepts_the_right_identity_and_datagrams_flow() {
        let node = key(1);
        let (server, _) = node_endpoint(local(), server_config(&node).expect("server")).expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(serve_once(server));
        let (mut client, _) = endpoint(bind_udp(local()).expect("bind"), None).expect("endpoint");
        client.set_default_client_config(client_config(node.verifying_key().to_bytes()).expect("client"));
        let conn = client
            .connect(addr, SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let room = conn.max_datagram_size().expect("datagrams enabled");
        assert_eq!(
            tunnel_mtu(room, 3),
            Some(tunnel_mtu_at_start(3)),
            "a full inner packet fits one datagram ({room} bytes)"
        );
        conn.send_datagram(bytes::Bytes::from_static(b"ping")).expect("send");
        assert_eq!(&conn.read_datagram().await.expect("echo")[..], b"ping");
    }

    #[tokio::test]
    async fn client_refuses_a_different_identity() {
        let node = key(1);
        let (server, _) = node_endpoint(local(), server_config(&node).expect("server")).expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(serve_once(server));
        let (mut client, _) = endpoint(bind_udp(local()).expect("bind"), None).expect("endpoint");
        client.set_default_client_config(client_config(key(2).verifying_key().to_bytes()).expect("client"));
        let err = client
            .connect(addr, SERVER_NAME)
            .expect("connect")
            .await
            .expect_err("impostor refused");
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}
