//! experiment
use std::time::{Duration, Instant};

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

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

struct Count(std::sync::Mutex<std::collections::HashMap<String, u64>>);
static COUNTS: std::sync::OnceLock<std::sync::Arc<Count>> = std::sync::OnceLock::new();
struct L(std::sync::Arc<Count>);
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for L {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let m = e.metadata();
        let k = format!("{} {}:{}", m.target(), m.file().unwrap_or(""), m.line().unwrap_or(0));
        *self.0 .0.lock().unwrap().entry(k).or_default() += 1;
    }
}
fn dump() {
    let c = COUNTS.get().unwrap();
    let mut v: Vec<(String, u64)> = c.0.lock().unwrap().drain().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    for (k, n) in v.iter().take(25) {
        eprintln!("{n:8} {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment() {
    use tracing_subscriber::layer::SubscriberExt;
    let c = std::sync::Arc::new(Count(Default::default()));
    COUNTS.set(c.clone()).ok();
    let sub = tracing_subscriber::registry()
        .with(L(c))
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    tracing::subscriber::set_global_default(sub).unwrap();
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let fanout: usize = std::env::var("FANOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let base = 1_000_000u64;
    let keys: Vec<SigningKey> = (0..n)
        .map(|i| {
            let mut s = [0u8; 32];
            s[0] = 1;
            s[1..9].copy_from_slice(&(i as u64).to_le_bytes());
            SigningKey::from_bytes(&s)
        })
        .collect();
    let addrs: Vec<Multiaddr> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            memory_addr(base + i as u64).with(Protocol::P2p(dht::peer_id(&k.verifying_key().to_bytes()).unwrap()))
        })
        .collect();
    let t0 = Instant::now();
    let c0 = cpu();
    let mut nodes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut config = DhtConfig::new(Transport::Memory, true);
        config.listen = vec![memory_addr(base + i as u64)];
        for j in 0..fanout.min(i) {
            let p = (i * 7919 + j * 104_729) % i;
            config.bootstrap.push(addrs[p].clone());
        }
        nodes.push(Dht::spawn(dht::keypair(key), config).expect("swarm"));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("spawned in {:?} cpu {:.1}", t0.elapsed(), cpu() - c0);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rp: Vec<usize> = nodes
            .iter()
            .map(|d| d.counters.routing_peers.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        let min = rp.iter().min().unwrap();
        let sum: usize = rp.iter().sum();
        dump();
        eprintln!(
            "t={:?} cpu {:.1} min {} avg {:.1}",
            t0.elapsed(),
            cpu() - c0,
            min,
            sum as f64 / n as f64
        );
    }
    let _ = record;
}
