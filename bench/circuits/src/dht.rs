//! `hopwire-bench dht`: Kademlia discovery at scale, in one process.
//!
//! For each size it starts that many DHT servers ([`hopwire_net::dht::Dht`])
//! over libp2p's memory transport with converged routing tables
//! ([`dht::converged_tables`]: up to K closest peers per bucket, as after
//! the network has run a while — joining thousands of nodes one by one on
//! two cores would measure the joins, not the lookups). Every tenth node
//! publishes an exit record; then fresh clients, each knowing one bootstrap
//! peer, look up the exit role key one after the other. It reports, per
//! size: the provider lookup (wall time median and p95, requests), the whole
//! lookup including fetching and verifying every provider's record (same),
//! exits found, and resident memory per node (VmRSS delta over the
//! network's start / nodes); and fits requests per lookup against log2(n)
//! by least squares.
//!
//! What it does not model: latency (every message crosses the memory
//! transport, so wall time is CPU time of the one process) and churn.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use hopwire_net::dht::{self, Dht, DhtConfig, Search, Transport};
use hopwire_proto::record::{NodeRecord, Role};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde_json::{json, Value};

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn key(net: usize, i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(net as u64).to_le_bytes());
    seed[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    seed[16] = 0x5a;
    SigningKey::from_bytes(&seed)
}

fn exit_record(key: &SigningKey) -> Vec<u8> {
    let t = hopwire_proto::time::unix_now();
    let record = NodeRecord {
        onion_key_expires: t + 3600,
        ..hopwire_proto::testkit::record(key, "198.18.1.2:4433", &[Role::Exit], "DE", t)
    };
    record.to_signed_bytes(key)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Total requests the nodes have answered.
fn answered(nodes: &[(SigningKey, Dht)]) -> u64 {
    nodes
        .iter()
        .map(|(_, d)| d.counters.inbound_requests.load(Ordering::Relaxed))
        .sum()
}

/// Waits until the nodes answer fewer than `n / 20` requests in a second
/// (at most `limit`).
async fn quiesce(nodes: &[(SigningKey, Dht)], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = answered(nodes);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = answered(nodes);
        if now - last < (nodes.len() as u64 / 20).max(1) {
            return;
        }
        last = now;
    }
}

/// One network of `n` nodes: build, publish, look up; one JSON object.
async fn run_size(net: usize, n: usize, lookups: usize, settle_limit: Duration) -> Result<Value> {
    let base = 1_000_000 * (net as u64 + 1);
    let rss_before = vm_rss_kib();
    let started = Instant::now();
    let keys: Vec<SigningKey> = (0..n).map(|i| key(net, i)).collect();
    let peers = keys
        .iter()
        .map(|k| dht::peer_id(&k.verifying_key().to_bytes()).context("peer id"))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<Multiaddr> = (0..n)
        .map(|i| {
            Multiaddr::empty()
                .with(Protocol::Memory(base + i as u64))
                .with(Protocol::P2p(peers[i]))
        })
        .collect();
    let tables = dht::converged_tables(&peers);
    let mut nodes: Vec<(SigningKey, Dht)> = Vec::with_capacity(n);
    for (i, k) in keys.into_iter().enumerate() {
        let mut config = DhtConfig::new(Transport::Memory, true);
        config.listen = vec![Multiaddr::empty().with(Protocol::Memory(base + i as u64))];
        config.known_peers = tables[i].iter().map(|&j| addrs[j].clone()).collect();
        config.refresh = None;
        let node = Dht::spawn(dht::keypair(&k), config).context("starting a DHT node")?;
        nodes.push((k, node));
    }
    let setup_s = started.elapsed().as_secs_f64();
    let rss_after = vm_rss_kib();
    // libp2p-kad refreshes every routing table once at start.
    quiesce(&nodes, settle_limit).await;
    let settle_s = started.elapsed().as_secs_f64() - setup_s;
    let exits: Vec<usize> = (0..n).filter(|i| i % 10 == 1).collect();
    // Nodes publish at their own pace, not all in one instant: ten at a time.
    for batch in exits.chunks(10) {
        for &i in batch {
            let (k, d) = &nodes[i];
            d.publish(exit_record(k), dht::provider_keys(&d.local_peer, &[Role::Exit], "DE"))
                .await
                .context("publishing")?;
        }
        quiesce(&nodes, Duration::from_secs(30)).await;
    }
    let failures = |nodes: &[(SigningKey, Dht)]| -> u64 {
        nodes
            .iter()
            .map(|(_, d)| d.counters.publish_failures.load(Ordering::Relaxed))
            .sum()
    };
    if failures(&nodes) > 0 {
        // Failed publications are retried after 20 s.
        tokio::time::sleep(Duration::from_secs(25)).await;
    }
    quiesce(&nodes, settle_limit).await;
    let publish_s = started.elapsed().as_secs_f64() - setup_s - settle_s;
    let mut out = json!({
        "nodes": n,
        "exits": exits.len(),
        "setup_s": setup_s,
        "settle_s": settle_s,
        "publish_s": publish_s,
        "lookups": lookups,
        "publish_failures": failures(&nodes),
        "rss_per_node_kib": rss_after.saturating_sub(rss_before) as f64 / n as f64,
    });
    for (mode, search) in [("enough", Search::Enough), ("all", Search::All)] {
        let mut times = Vec::new();
        let mut provider_times = Vec::new();
        let mut requests = Vec::new();
        let mut provider_requests = Vec::new();
        let mut found = Vec::new();
        let mut join_times = Vec::new();
        for l in 0..lookups {
            let mut config = DhtConfig::new(Transport::Memory, false);
            config.bootstrap = vec![addrs[(l * 104_729 + 17) % n].clone()];
            let seed = if search == Search::All { 1000 } else { 2000 };
            let client = Dht::spawn(dht::keypair(&key(net + seed, l)), config).context("starting a client")?;
            // Time the lookup of a client that has joined (as `hopwire
            // connect` finds a daemon that started earlier), not its join.
            let joining = Instant::now();
            while client.counters.joins.load(Ordering::Relaxed) == 0 && joining.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            join_times.push(joining.elapsed().as_secs_f64() * 1e3);
            let (got, stats) = client.find(dht::role_key(Role::Exit), search).await.context("lookup")?;
            times.push(stats.duration.as_secs_f64() * 1e3);
            provider_times.push(stats.provider_duration.as_secs_f64() * 1e3);
            requests.push(f64::from(stats.requests));
            provider_requests.push(f64::from(stats.provider_requests));
            found.push(got.len() as f64);
            drop(client);
            // Let the connections the lookup opened close before the next.
            quiesce(&nodes, Duration::from_secs(10)).await;
        }
        times.sort_by(f64::total_cmp);
        provider_times.sort_by(f64::total_cmp);
        join_times.sort_by(f64::total_cmp);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        out[mode] = json!({
            "client_join_ms_median": percentile(&join_times, 0.5),
            "provider_ms_median": percentile(&provider_times, 0.5),
            "provider_ms_p95": percentile(&provider_times, 0.95),
            "provider_requests_per_lookup": mean(&provider_requests),
            "lookup_ms_median": percentile(&times, 0.5),
            "lookup_ms_p95": percentile(&times, 0.95),
            "requests_per_lookup": mean(&requests),
            "exits_found_per_lookup": mean(&found),
        });
    }
    eprintln!("{out}");
    drop(nodes);
    // Let the swarms wind down before the next size.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(out)
}

/// Least squares `a + b·x`.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

pub async fn run(sizes: &[usize], lookups: usize, settle_limit: Duration) -> Result<Value> {
    let mut results = Vec::new();
    for (net, &n) in sizes.iter().enumerate() {
        results.push(run_size(net, n, lookups, settle_limit).await?);
    }
    let curve = |mode: &str, field: &str| {
        let points: Vec<(f64, f64)> = results
            .iter()
            .filter_map(|r| Some(((r["nodes"].as_f64()?).log2(), r[mode][field].as_f64()?)))
            .collect();
        let (a, b) = fit(&points);
        json!({ "a": a, "b": b, "curve": format!("{a:.1} + {b:.1}·log2(n)") })
    };
    let fits = |mode: &str| {
        json!({
            "provider_requests_per_lookup": curve(mode, "provider_requests_per_lookup"),
            "requests_per_lookup": curve(mode, "requests_per_lookup"),
        })
    };
    Ok(json!({ "fit": { "enough": fits("enough"), "all": fits("all") }, "sizes": results }))
}
