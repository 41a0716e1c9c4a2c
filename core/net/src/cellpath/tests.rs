use super::*;
use crate::link;
use ed25519_dalek::SigningKey;
use hopwire_proto::onion::layer::{COUNTER_LEN, TAG_LEN};
use rand::SeedableRng;
use std::time::Duration;

fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

struct Node {
    endpoint: quinn::Endpoint,
    cells: Arc<CellSocket>,
}

fn node(seed: u64) -> Node {
    let identity = key(seed);
    let server = link::server_config(&identity).expect("server config");
    let (endpoint, cells) = link::node_endpoint("127.0.0.1:0".parse().expect("addr"), server).expect("bind");
    Node { endpoint, cells }
}

/// A link from `a` to `b`, as the opener's and the acceptor's connection.
async fn connect(a: &Node, b: &Node, config: quinn::ClientConfig) -> (quinn::Connection, quinn::Connection) {
    let to = b.endpoint.local_addr().expect("addr");
    let opening = a.endpoint.connect_with(config, to, link::SERVER_NAME).expect("connect");
    let accepted = async { b.endpoint.accept().await.expect("incoming").await.expect("handshake") };
    let (opened, accepted) = tokio::join!(opening, accepted);
    (opened.expect("handshake"), accepted)
}

async fn received(socket: &CellSocket, want: usize) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    let mut batch = CellBatch::default();
    while got.len() < want {
        tokio::time::timeout(Duration::from_secs(5), socket.next_batch(&mut batch))
            .await
            .expect("cells arrive");
        batch.handle_until(|tag, slot, cell| {
            got.push((tag, slot[cell].to_vec()));
            true
        });
    }
    got
}

#[tokio::test]
async fn cells_cross_both_ways_in_batches_beside_quic_datagrams() {
    let (a, b) = (node(1), node(2));
    let config = link::client_config(key(2).verifying_key().to_bytes()).expect("config");
    let (at_a, at_b) = connect(&a, &b, config).await;
    let link_a = Arc::new(CellLink::of(&at_a, 7).expect("both offered the cell path"));
    let link_b = Arc::new(CellLink::of(&at_b, 9).expect("both offered the cell path"));
    assert!(a.cells.register(&link_a) && b.cells.register(&link_b));

    // Forty full cells (more than one GSO batch) and a short one, a to b.
    let cells: Vec<Vec<u8>> = (0..40u8)
        .map(|i| vec![i; 1300])
        .chain(std::iter::once(vec![0xEE; 100]))
        .collect();
    let mut out = CellOut::default();
    for c in &cells {
        out.push(&a.cells, &link_a, c);
    }
    // A QUIC datagram on the same socket pair still reaches quinn.
    at_a.send_datagram(bytes::Bytes::from_static(b"quic"))
        .expect("datagram");
    out.flush(&a.cells).await;
    assert!(out.is_empty());
    let got = received(&b.cells, cells.len()).await;
    assert_eq!(got.len(), cells.len());
    for ((tag, cell), sent) in got.iter().zip(&cells) {
        assert_eq!(*tag, 9, "the receiver's own name for the link");
        assert_eq!(cell, sent);
    }
    assert_eq!(&at_b.read_datagram().await.expect("quic datagram")[..], b"quic");

    // And back, b to a, with keys of the other direction.
    out.push(&b.cells, &link_b, b"backward");
    out.flush(&b.cells).await;
    assert_eq!(received(&a.cells, 1).await, vec![(7, b"backward".to_vec())]);
    assert_eq!(b.cells.drops.refused.load(Ordering::Relaxed), 0);
    assert_eq!(a.cells.drops.refused.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn cells_from_two_neighbours_in_one_batch_keep_their_own_links() {
    let (a, b, c) = (node(1), node(2), node(3));
    let config = || link::client_config(key(2).verifying_key().to_bytes()).expect("config");
    let (a_at_a, a_at_b) = connect(&a, &b, config()).await;
    let (c_at_c, c_at_b) = connect(&c, &b, config()).await;
    let from_a = Arc::new(CellLink::of(&a_at_a, 1).expect("cell path"));
    let from_c = Arc::new(CellLink::of(&c_at_c, 2).expect("cell path"));
    let (b_a, b_c) = (
        Arc::new(CellLink::of(&a_at_b, 10).expect("cell path")),
        Arc::new(CellLink::of(&c_at_b, 20).expect("cell path")),
    );
    assert!(b.cells.register(&b_a) && b.cells.register(&b_c));

    // Runs from a, c, a again, all waiting at b before it reads a batch;
    // one of c's packets is tampered with amid its run.
    let mut out = CellOut::default();
    let mut sent = Vec::new();
    for (from, socket, tag, n) in [
        (&from_a, &a.cells, 10, 3u8),
        (&from_c, &c.cells, 20, 3),
        (&from_a, &a.cells, 10, 2),
    ] {
        for i in 0..n {
            let cell = vec![tag as u8 + i; 600];
            out.push(socket, from, &cell);
            sent.push((tag, cell));
        }
        out.flush(socket).await;
    }
    let to = b.endpoint.local_addr().expect("addr");
    let mut tampered = vec![0u8; CELL_PATH_OVERHEAD + 8];
    assert!(from_c.seal_into(b"tampered", &mut tampered).is_some());
    *tampered.last_mut().expect("tag") ^= 1;
    c.cells.io.send_to(&tampered, to).await.expect("send");
    out.push(&c.cells, &from_c, b"last");
    out.flush(&c.cells).await;
    sent.push((20, b"last".to_vec()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut got = received(&b.cells, sent.len()).await;
    // Each neighbour's cells in its order, under its own link.
    got.sort_by_key(|(tag, _)| *tag);
    sent.sort_by_key(|(tag, _)| *tag);
    assert_eq!(got, sent);
    assert_eq!(b.cells.drops.refused.load(Ordering::Relaxed), 1, "the tampered packet");
}

#[tokio::test]
async fn a_peer_without_it_has_no_cell_path_and_strangers_packets_are_refused() {
    let (a, b) = (node(1), node(2));
    // A peer from before the cell path offers only the plain protocol.
    let config = link::client_config_offering(key(2).verifying_key().to_bytes(), &[link::ALPN]).expect("config");
    let (at_a, at_b) = connect(&a, &b, config).await;
    assert!(CellLink::of(&at_a, 0).is_none());
    assert!(CellLink::of(&at_b, 0).is_none());

    // Both offering it: a registered link, then packets that must not pass.
    let config = link::client_config(key(2).verifying_key().to_bytes()).expect("config");
    let (at_a, at_b) = connect(&a, &b, config).await;
    let link_b = Arc::new(CellLink::of(&at_b, 3).expect("cell path"));
    assert!(b.cells.register(&link_b));
    assert!(!b.cells.register(&link_b), "an index is taken once per address");
    let link_a = CellLink::of(&at_a, 4).expect("cell path");
    let to = b.endpoint.local_addr().expect("addr");

    // The right index from the wrong address; then, from the right
    // address, a tampered packet and a replayed one.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut out = CellOut::default();
    out.push(&a.cells, &link_a, b"genuine");
    let packet = out.pending[0].buf.clone();
    stranger.send_to(&packet, to).expect("send");
    let mut tampered = packet.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    a.cells.io.send_to(&tampered, to).await.expect("send");
    out.flush(&a.cells).await;
    a.cells.io.send_to(&packet, to).await.expect("send");
    out.push(&a.cells, &link_a, b"after");
    out.flush(&a.cells).await;

    let got = received(&b.cells, 2).await;
    assert_eq!(got, vec![(3, b"genuine".to_vec()), (3, b"after".to_vec())]);
    assert_eq!(
        b.cells.drops.refused.load(Ordering::Relaxed),
        3,
        "the stranger's, the tampered and the replayed packet"
    );

    // Unregistered, the link's cells are refused too.
    b.cells.unregister(&link_b);
    out.push(&a.cells, &link_a, b"late");
    out.flush(&a.cells).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.cells.drops.refused.load(Ordering::Relaxed), 4);
}

#[test]
fn both_ends_derive_matching_keys_and_indices() {
    let secret: [u8; 72] = std::array::from_fn(|i| (i as u8).wrapping_mul(7));
    let peer = "127.0.0.1:1".parse().expect("addr");
    let opener = CellLink::from_secret(&secret, true, peer, 0);
    let acceptor = CellLink::from_secret(&secret, false, peer, 1);
    assert_eq!(opener.send_index, acceptor.recv_index);
    assert_eq!(acceptor.send_index, opener.recv_index);
    assert_ne!(opener.send_index, opener.recv_index);
    for index in [opener.send_index, opener.recv_index] {
        assert!(is_cell_packet(index.to_be_bytes()[0]), "never mistaken for QUIC");
    }
    let mut layer = vec![0u8; COUNTER_LEN + 5 + TAG_LEN];
    layer[COUNTER_LEN..COUNTER_LEN + 5].copy_from_slice(b"hello");
    lock(&opener.sealer)
        .seal_in_place(&mut layer, 0, COUNTER_LEN + 5)
        .expect("seal");
    let mut copy = layer.clone();
    let r = lock(&acceptor.opener)
        .open_in_place(&mut copy)
        .expect("the acceptor opens");
    assert_eq!(&copy[r], b"hello");
    assert!(
        lock(&opener.opener).open_in_place(&mut layer).is_err(),
        "each direction has its own key"
    );
}
