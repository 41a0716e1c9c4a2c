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

/// Messages read from `r` one after another into a channel, for a loop
/// that also waits on other things: reading a message is not cancel-safe
/// (a read given up halfway loses the bytes it took), so the returned
/// reader future runs throughout, and the loop takes whole messages from
/// the receiver. The reader ends after passing on the first error, or once
/// the receiver is gone.
pub fn reader<'a, T: for<'de> Deserialize<'de> + Send + 'a>(
    r: &'a mut (impl AsyncRead + Unpin + Send),
) -> (
    impl std::future::Future<Output = ()> + Send + 'a,
    tokio::sync::mpsc::Receiver<Result<T, SetupError>>,
) {
    let (messages, received) = tokio::sync::mpsc::channel(16);
    let read = async move {
        loop {
            let message = read_message::<T>(r).await;
            let end = message.is_err();
            if messages.send(message).await.is_err() || end {
                return;
            }
        }
    };
    (read, received)
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

    /// Messages that arrive a few bytes at a time, read by a loop that a
    /// fast timer interrupts between every byte: all arrive whole, in order,
    /// and the end of the stream comes as an error.
    #[tokio::test]
    async fn a_reader_interrupted_between_bytes_loses_nothing() {
        let (mut a, mut b) = tokio::io::duplex(8192);
        let hellos: Vec<ClientHello> = (0..20u8)
            .map(|i| ClientHello {
                version: PROTOCOL_VERSION,
                wg_key: [i; 32],
                previous_addr: None,
            })
            .collect();
        let sent = hellos.clone();
        let writer = tokio::spawn(async move {
            let mut bytes = Vec::new();
            for hello in &sent {
                write_message(&mut bytes, hello).await.expect("encode");
            }
            for chunk in bytes.chunks(3) {
                a.write_all(chunk).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let (reader, mut received) = reader::<ClientHello>(&mut b);
        tokio::pin!(reader);
        let mut tick = tokio::time::interval(std::time::Duration::from_micros(200));
        let (mut got, mut ticks, mut reader_done) = (Vec::new(), 0, false);
        loop {
            tokio::select! {
                () = &mut reader, if !reader_done => reader_done = true,
                _ = tick.tick() => ticks += 1,
                m = received.recv() => match m {
                    Some(Ok(hello)) => got.push(hello),
                    Some(Err(SetupError::Io(_))) | None => break,
                    Some(Err(e)) => panic!("a message came apart: {e}"),
                },
            }
        }
        writer.await.expect("writer");
        assert_eq!(got, hellos);
        assert!(ticks > 20, "the timer interrupted the reads ({ticks} ticks)");
    }
}
