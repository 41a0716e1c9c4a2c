//! The framing of every message on a circuit's control stream: a 2-byte
//! big-endian length and a postcard body, read and written on any tokio
//! stream (a QUIC stream in production, a duplex pipe in tests).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest control message either side accepts.
pub const MAX_MESSAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("session setup stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("session setup message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("session setup message is malformed: {0}")]
    Malformed(#[from] postcard::Error),
}

pub async fn write_message<T: Serialize>(w: &mut (impl AsyncWrite + Unpin), msg: &T) -> Result<(), SetupError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(SetupError::TooLarge(body.len()));
    }
    let len = u16::try_from(body.len()).map_err(|_| SetupError::TooLarge(body.len()))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_message<T: for<'de> Deserialize<'de>>(r: &mut (impl AsyncRead + Unpin)) -> Result<T, SetupError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_MESSAGE {
        return Err(SetupError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hopwire_proto::session::{ClientHello, ExitHello, PROTOCOL_VERSION};
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn messages_round_trip_and_garbage_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(8192);
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            wg_key: [3; 32],
            previous_addr: Some(Ipv4Addr::new(100, 87, 0, 9)),
        };
        write_message(&mut a, &hello).await.expect("write");
        assert_eq!(read_message::<ClientHello>(&mut b).await.expect("read"), hello);

        a.write_all(&[0xff, 0xff]).await.expect("write");
        assert!(matches!(
            read_message::<ClientHello>(&mut b).await,
            Err(SetupError::TooLarge(65535))
        ));

        let (mut a, mut b) = tokio::io::duplex(8192);
        a.write_all(&[0, 3, 0xff, 0xff, 0xff]).await.expect("write");
        assert!(matches!(
            read_message::<ExitHello>(&mut b).await,
            Err(SetupError::Malformed(_))
        ));
        drop(a);
        assert!(matches!(
            read_message::<ExitHello>(&mut b).await,
            Err(SetupError::Io(_))
        ));
    }
}
