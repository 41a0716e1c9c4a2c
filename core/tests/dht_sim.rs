//! An in-process Kademlia network over libp2p's memory transport: nodes
//! publish signed records, a client that knows one bootstrap peer finds them.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use hopwire_core::dht::{self, Dht, DhtConfig, Transport};
use hopwire_core::record::{NodeRecord, Role, RECORD_TTL, RECORD_VERSION};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

fn now() -> u64 {
    hopwire_core::node::unix_now()
}

fn record(key: &SigningKey, roles: &[Role], region: &str, seq: u64) -> Vec<u8> {
    let t = now();
    NodeRecord {
        version: RECORD_VERSION,
        identity: key.verifying_key().to_bytes(),
        quic_addr: "198.18.1.2:4433".parse().expect("addr"),
        roles: roles.to_vec(),
        onion_key: [7; 32],
        onion_key_expires: t + 3600,
        wg_key: [8; 32],
        region: region.into(),
        capacity_mbit: 100,
        exit_rules: vec![],
        exit_default_rejects: true,
        family: vec![],
        seq,
        issued_at: t,
        expires_at: t + RECORD_TTL,
    }
    .to_signed_bytes(key)
}

fn memory_addr(port: u64) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finds_every_exit_through_one_bootstrap_peer() {
    let base = 40_000 + u64::from(std::process::id() % 1000) * 1000;
    let n = 60;
    let keys: Vec<SigningKey> = (0..n).map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32])).collect();
    let mut nodes = Vec::new();
    let bootstrap = memory_addr(base).with(Protocol::P2p(
        dht::peer_id(&keys[0].verifying_key().to_bytes()).expect("id"),
    ));
    for (i, key) in keys.iter().enumerate() {
        let mut config = DhtConfig::new(Transport::Memory, true);
        config.listen = vec![memory_addr(base + i as u64)];
        if i > 0 {
            config.bootstrap = vec![bootstrap.clone()];
        }
        nodes.push(Dht::spawn(dht::keypair(key), config).expect("swarm"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut exits = Vec::new();
    for (i, (key, node)) in keys.iter().zip(&nodes).enumerate().skip(1) {
        let roles = if i % 5 == 0 {
            vec![Role::Exit]
        } else {
            vec![Role::Relay]
        };
        if roles == [Role::Exit] {
            exits.push(key.verifying_key().to_bytes());
        }
        node.publish(record(key, &roles, "DE", 1), dht::provider_keys(&roles, "DE"))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut config = DhtConfig::new(Transport::Memory, false);
    config.bootstrap = vec![bootstrap];
    let client = Dht::spawn(dht::keypair(&SigningKey::from_bytes(&[250; 32])), config).expect("client");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (found, stats) = client.find(dht::role_key(Role::Exit)).await.expect("lookup");
    let mut got: Vec<[u8; 32]> = found.iter().map(|f| f.record.record().identity).collect();
    got.sort();
    exits.sort();
    assert_eq!(got, exits, "every exit found ({stats:?})");
}
