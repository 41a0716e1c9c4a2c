//! `hopwire-bench`: circuit benchmarks that need no TUN device.
//!
//! `build` builds circuits along one fixed path one after another, closing
//! each, and prints their build times. `hold` builds many circuits along one
//! fixed path and keeps them open and idle, sampling the resident memory of
//! the given node processes (the relays on the path) before, during and
//! after, so the memory one idle circuit costs a relay can be read off; it
//! prints one JSON line and then waits until it is killed (SIGINT/SIGTERM),
//! when it closes its circuits politely.
//!
//! It runs the real client code ([`hopwire_client::tunnel::Tunnel`]) and must
//! run where the client would, e.g. `ip netns exec PREFIX-client
//! hopwire-bench …` on a `hopwire testnet --keep` network.
//!
//! What it does not do: move traffic, choose paths, or start nodes;
//! `bench/throughput.sh` drives it.

mod dht;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hopwire_client::tunnel::Tunnel;
use hopwire_proto::record::VerifiedRecord;
use hopwire_proto::session::{ClientHello, PROTOCOL_VERSION};
use rand::RngCore;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "hopwire-bench",
    about = "Hopwire circuit benchmarks (build time, relay memory per circuit)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct PathArgs {
    /// Node records, one per line (`hopwire testnet`'s nodes.txt).
    #[arg(long)]
    nodes: PathBuf,
    /// The path, first hop first, exit last: short identities (16 hex
    /// digits, as `hopwire status` and `hopwire-node show-record` print
    /// them) or any unique prefix, separated by commas.
    #[arg(long, value_delimiter = ',', required = true)]
    path: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Build COUNT circuits one after another, closing each; print the build times.
    Build {
        #[command(flatten)]
        path: PathArgs,
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Pause between one circuit's close and the next build.
        #[arg(long, default_value_t = 50)]
        pause_ms: u64,
    },
    /// Build COUNT circuits and keep them open and idle until killed; sample
    /// the RSS of the given processes every STEP circuits.
    Hold {
        #[command(flatten)]
        path: PathArgs,
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Sample memory after every STEP circuits.
        #[arg(long, default_value_t = 50)]
        step: usize,
        /// A process to watch, as NAME=PID (repeatable), e.g. middle=1234.
        #[arg(long = "pid", value_parser = parse_pid)]
        pids: Vec<(String, u32)>,
        /// Wait this long before each memory sample, for the nodes to settle.
        #[arg(long, default_value_t = 1500)]
        settle_ms: u64,
        /// Stop building after this many failed builds in a row.
        #[arg(long, default_value_t = 1)]
        max_failures: usize,
        /// Circuits built (and held) before the baseline sample, so the
        /// links between the nodes exist already and are not counted as
        /// the cost of circuits.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
    /// Simulated DHT networks (memory transport, one process) of the given
    /// sizes: exit lookups from fresh clients, their wall time, requests
    /// and memory per node; prints one JSON object.
    Dht {
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        sizes: Vec<usize>,
        /// Lookups per size, each from a fresh client.
        #[arg(long, default_value_t = 50)]
        lookups: usize,
        /// Give up waiting for routing tables to settle after this long.
        #[arg(long, default_value_t = 300)]
        settle_limit_s: u64,
    },
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=PID"))?;
    let pid = pid.parse().map_err(|_| format!("`{s}`: PID must be a number"))?;
    Ok((name.to_owned(), pid))
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hopwire-bench: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Build { path, count, pause_ms } => build(&path, count, Duration::from_millis(pause_ms)).await,
            Command::Hold {
                path,
                count,
                step,
                pids,
                settle_ms,
                max_failures,
                warmup,
            } => {
                let settle = Duration::from_millis(settle_ms);
                hold(&path, count, step.max(1), warmup, &pids, settle, max_failures).await
            }
            Command::Dht {
                sizes,
                lookups,
                settle_limit_s,
            } => dht::run(&sizes, lookups.max(1), Duration::from_secs(settle_limit_s))
                .await
                .map(|out| println!("{out}")),
        }
    });
    if let Err(e) = result {
        eprintln!("hopwire-bench: {e:#}");
        std::process::exit(1);
    }
}

/// Reads the records file and picks the path out of it.
fn load_path(args: &PathArgs) -> Result<Vec<VerifiedRecord>> {
    let text = std::fs::read_to_string(&args.nodes).with_context(|| format!("reading {}", args.nodes.display()))?;
    let mut records = Vec::new();
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r: VerifiedRecord = line
            .parse()
            .with_context(|| format!("{} line {}", args.nodes.display(), i + 1))?;
        records.push(r);
    }
    if !(1..=3).contains(&args.path.len()) {
        bail!("--path needs 1 to 3 hops, not {}", args.path.len());
    }
    let mut path = Vec::new();
    for want in &args.path {
        let want = want.trim().to_ascii_lowercase();
        let found: Vec<&VerifiedRecord> = records
            .iter()
            .filter(|r| !want.is_empty() && r.short_id().starts_with(&want))
            .collect();
        match found.as_slice() {
            [one] => path.push((*one).clone()),
            [] => bail!("no record in {} has identity `{want}`", args.nodes.display()),
            _ => bail!("identity `{want}` matches {} records; give more digits", found.len()),
        }
    }
    Ok(path)
}

fn hello() -> ClientHello {
    // One WireGuard key for every circuit of a run: the exit moves the one
    // session from circuit to circuit instead of lending an address per
    // circuit, so only the circuits themselves pile up on the nodes.
    let mut wg_key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut wg_key);
    ClientHello {
        version: PROTOCOL_VERSION,
        wg_key,
        previous_addr: None,
    }
}

fn path_json(path: &[VerifiedRecord]) -> Value {
    path.iter()
        .map(|r| json!({ "id": r.short_id(), "addr": r.record().quic_addr.to_string() }))
        .collect()
}

/// Median, p95 and friends of `samples` (milliseconds), nearest-rank.
fn stats(samples: &[f64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    json!({
        "n": s.len(), "median": round3(rank(0.5)), "p95": round3(rank(0.95)),
        "min": round3(s[0]), "max": round3(s[s.len() - 1]), "mean": round3(mean),
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn build(args: &PathArgs, count: usize, pause: Duration) -> Result<()> {
    let path = load_path(args)?;
    let hello = hello();
    let mut samples = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let started = Instant::now();
    for _ in 0..count {
        match Tunnel::build(
            &hopwire_client::platform::MemoryPlatform::default(),
            &path,
            &hello,
            None,
        )
        .await
        {
            Ok(t) => {
                samples.push(ms(t.build_time));
                t.close().await;
            }
            Err(e) => errors.push(e.to_string()),
        }
        tokio::time::sleep(pause).await;
    }
    let out = json!({
        "mode": "build", "hops": path.len(), "path": path_json(&path), "count": count,
        "ok": samples.len(), "failed": errors.len(), "errors": errors.iter().take(5).collect::<Vec<_>>(),
        "build_ms": stats(&samples),
        "samples_ms": samples.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
        "seconds": round3(started.elapsed().as_secs_f64()),
    });
    println!("{out}");
    if samples.is_empty() {
        bail!("no circuit was built: {}", errors.first().map_or("", String::as_str));
    }
    Ok(())
}

/// Resident memory of a process, in KiB: (VmRSS, RssAnon).
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:").unwrap_or(0)))
}

/// One memory sample of every watched process, with the circuit count.
fn sample(circuits: usize, pids: &[(String, u32)]) -> Value {
    let mut procs = serde_json::Map::new();
    for (name, pid) in pids {
        let v = match rss_kib(*pid) {
            Some((rss, anon)) => json!({ "vm_rss_kib": rss, "rss_anon_kib": anon }),
            None => Value::Null,
        };
        procs.insert(name.clone(), v);
    }
    json!({ "circuits": circuits, "procs": procs })
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Per watched process: RSS before and after, and the cost per circuit as
/// (after − before) / circuits and as the slope over every sample.
fn memory_summary(samples: &[Value], pids: &[(String, u32)]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, pid) in pids {
        let points = |field: &str| -> Vec<(f64, f64)> {
            samples
                .iter()
                .filter_map(|s| {
                    let c = s["circuits"].as_f64()?;
                    let kib = s["procs"][name][field].as_f64()?;
                    Some((c, kib * 1024.0))
                })
                .collect()
        };
        let rss = points("vm_rss_kib");
        let anon = points("rss_anon_kib");
        let (Some(first), Some(last)) = (rss.first(), rss.last()) else {
            out.insert(name.clone(), Value::Null);
            continue;
        };
        let built = last.0 - first.0;
        let per = |d: f64| (built > 0.0).then(|| (d / built).round());
        out.insert(
            name.clone(),
            json!({
                "pid": pid,
                "vm_rss_kib_before": first.1 / 1024.0, "vm_rss_kib_after": last.1 / 1024.0,
                "bytes_per_circuit": per(last.1 - first.1),
                "bytes_per_circuit_slope": slope(&rss).map(f64::round),
                "anon_bytes_per_circuit": anon.first().zip(anon.last()).and_then(|(a, b)| per(b.1 - a.1)),
            }),
        );
    }
    Value::Object(out)
}

async fn hold(
    args: &PathArgs,
    count: usize,
    step: usize,
    warmup: usize,
    pids: &[(String, u32)],
    settle: Duration,
    max_failures: usize,
) -> Result<()> {
    let path = load_path(args)?;
    let hello = hello();
    let mut tunnels: Vec<Tunnel> = Vec::with_capacity(count + warmup);
    let mut build_ms = Vec::new();
    let cold = sample(0, pids);
    for i in 0..warmup {
        let t = Tunnel::build(
            &hopwire_client::platform::MemoryPlatform::default(),
            &path,
            &hello,
            None,
        )
        .await
        .with_context(|| format!("warm-up circuit {} of {warmup}", i + 1))?;
        tunnels.push(t);
    }
    tokio::time::sleep(settle).await;
    // Samples count the circuits built after the warm-up ones.
    let mut samples = vec![sample(0, pids)];
    let mut errors: Vec<Value> = Vec::new();
    let mut failed_in_row = 0;
    let mut next_sample = step;
    let mut stopped = None;
    let started = Instant::now();
    while tunnels.len() < warmup + count {
        let t0 = Instant::now();
        match Tunnel::build(
            &hopwire_client::platform::MemoryPlatform::default(),
            &path,
            &hello,
            None,
        )
        .await
        {
            Ok(t) => {
                build_ms.push(ms(t.build_time));
                tunnels.push(t);
                failed_in_row = 0;
                let measured = tunnels.len() - warmup;
                if measured == next_sample || measured == count {
                    next_sample += step;
                    tokio::time::sleep(settle).await;
                    samples.push(sample(measured, pids));
                }
            }
            Err(e) => {
                eprintln!(
                    "hopwire-bench: circuit {} failed after {:.0} ms: {e}",
                    tunnels.len() + 1,
                    ms(t0.elapsed())
                );
                errors.push(json!({
                    "after_circuits": tunnels.len(), "after_ms": round3(ms(t0.elapsed())), "error": e.to_string(),
                }));
                failed_in_row += 1;
                if failed_in_row >= max_failures {
                    stopped = Some(format!(
                        "stopped after {failed_in_row} failed build(s) in a row with {} circuits open (warm-up included): {e}",
                        tunnels.len()
                    ));
                    break;
                }
            }
        }
    }
    let build_seconds = started.elapsed().as_secs_f64();
    // The last sample must show every circuit that was built.
    let measured = tunnels.len() - warmup;
    if samples.last().and_then(|s| s["circuits"].as_u64()) != Some(measured as u64) {
        tokio::time::sleep(settle).await;
        samples.push(sample(measured, pids));
    }
    let alive = tunnels
        .iter()
        .filter(|t| t.first_link().close_reason().is_none())
        .count();
    let out = json!({
        "mode": "hold", "hops": path.len(), "path": path_json(&path), "requested": count, "warmup": warmup,
        "built": measured, "held": tunnels.len(), "alive": alive, "failed": errors.len(), "stopped": stopped, "errors": errors.iter().take(5).collect::<Vec<_>>(),
        "build_seconds": round3(build_seconds), "build_ms": stats(&build_ms),
        "memory": memory_summary(&samples, pids), "cold_sample": cold, "samples": samples,
    });
    println!("{out}");
    eprintln!(
        "hopwire-bench: holding {} idle circuits; SIGINT/SIGTERM closes them",
        tunnels.len()
    );
    hopwire_net::process::shutdown_signal().await;
    let closing = tunnels.len();
    // Each close waits up to 300 ms for its link to drain: close them together.
    let mut closes = tokio::task::JoinSet::new();
    for t in tunnels {
        closes.spawn(t.close());
    }
    while closes.join_next().await.is_some() {}
    eprintln!("hopwire-bench: closed {closing} circuits");
    Ok(())
}
