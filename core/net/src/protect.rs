//! Sockets that must bypass the client's own tunnel: every TCP socket a
//! shell opens for a client (ledger calls, DHT connections) passes through
//! a [`Protect`] hook before it connects, as Android's
//! `VpnService.protect` requires. Nodes pass no hook.
//!
//! [`ProtectedTcp`] is a dial-only libp2p transport whose sockets go
//! through the hook; the client's DHT uses it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::futures::future::{BoxFuture, FutureExt, Pending};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use socket2::{Domain, Socket, Type};

/// What a [`Protect`] hook calls.
type Hook = dyn Fn(BorrowedFd<'_>, SocketAddr) -> io::Result<()> + Send + Sync;

/// Called with a socket and the peer it is about to connect to; an error
/// refuses the connection.
#[derive(Clone)]
pub struct Protect(Arc<Hook>);

impl Protect {
    pub fn new(f: impl Fn(BorrowedFd<'_>, SocketAddr) -> io::Result<()> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn call(&self, socket: BorrowedFd<'_>, peer: SocketAddr) -> io::Result<()> {
        (self.0)(socket, peer)
    }
}

impl std::fmt::Debug for Protect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Protect")
    }
}

/// A TCP socket to `peer`, protected, not yet connected.
pub fn tcp_socket(peer: SocketAddr, protect: Option<&Protect>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(peer), Type::STREAM, Some(socket2::Protocol::TCP))?;
    if let Some(protect) = protect {
        protect.call(socket.as_fd(), peer)?;
    }
    Ok(socket)
}

/// A blocking TCP connection to `peer` through `protect`.
pub fn connect_blocking(
    peer: SocketAddr,
    protect: Option<&Protect>,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    let socket = tcp_socket(peer, protect)?;
    socket.connect_timeout(&peer.into(), timeout)?;
    Ok(socket.into())
}

/// A TCP connection to `peer` through `protect`, for async code.
pub async fn connect(peer: SocketAddr, protect: Option<&Protect>) -> io::Result<tokio::net::TcpStream> {
    let socket = tcp_socket(peer, protect)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&peer.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = tokio::net::TcpStream::from_std(socket.into())?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// The socket address of `/ip4|ip6/…/tcp/…` (a `/p2p/…` suffix allowed).
fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(a) => a.into(),
        Protocol::Ip6(a) => a.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    match parts.next() {
        None | Some(Protocol::P2p(_)) => Some(SocketAddr::new(ip, port)),
        Some(_) => None,
    }
}

/// A dial-only TCP transport whose every socket passes through a
/// [`Protect`] hook before it connects. It listens nowhere: a client's DHT
/// only asks.
#[derive(Debug, Clone)]
pub struct ProtectedTcp {
    protect: Protect,
}

impl ProtectedTcp {
    pub fn new(protect: Protect) -> Self {
        Self { protect }
    }
}

impl libp2p::core::Transport for ProtectedTcp {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = Pending<Result<Self::Output, io::Error>>;
    type Dial = BoxFuture<'static, Result<Self::Output, io::Error>>;

    fn listen_on(&mut self, _id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: ListenerId) -> bool {
        false
    }

    fn dial(&mut self, addr: Multiaddr, _opts: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some(peer) = socket_addr(&addr).filter(|a| a.port() != 0 && !a.ip().is_unspecified()) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let protect = self.protect.clone();
        Ok(async move { connect(peer, Some(&protect)).await.map(libp2p::tcp::tokio::TcpStream) }.boxed())
    }

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_addresses_are_dialled() {
        let ok: Multiaddr = "/ip4/198.18.1.2/tcp/4433".parse().expect("addr");
        assert_eq!(socket_addr(&ok), Some("198.18.1.2:4433".parse().expect("addr")));
        let udp: Multiaddr = "/ip4/198.18.1.2/udp/4433".parse().expect("addr");
        assert_eq!(socket_addr(&udp), None);
        let mem: Multiaddr = "/memory/5".parse().expect("addr");
        assert_eq!(socket_addr(&mem), None);
    }

    #[tokio::test]
    async fn every_dialled_socket_is_protected_first() {
        use libp2p::core::Transport as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let mut transport = ProtectedTcp::new(Protect::new(move |_, peer| {
            record.lock().unwrap_or_else(|p| p.into_inner()).push(peer);
            Ok(())
        }));
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        let opts = DialOpts {
            role: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::New,
        };
        let dial = transport.dial(addr.clone(), opts).expect("dials");
        let (_accepted, dialled) = tokio::join!(listener.accept(), dial);
        dialled.expect("connected");
        assert_eq!(
            *seen.lock().unwrap_or_else(|p| p.into_inner()),
            vec![SocketAddr::from(([127, 0, 0, 1], port))]
        );
        // A hook that refuses stops the connection.
        let mut refusing = ProtectedTcp::new(Protect::new(|_, _| Err(io::Error::other("no"))));
        assert!(refusing.dial(addr, opts).expect("dials").await.is_err());
    }
}
