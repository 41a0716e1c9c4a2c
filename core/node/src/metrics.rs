//! Prometheus metrics over plain HTTP: what an operator watches.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{LinkId, Node};
use hopwire_proto::onion::circuit::HopCircuit;
use hopwire_proto::sync::read;

/// What one circuit's hop state takes on a relay: the hop itself behind its
/// lock and `Arc`, and its two table entries. Not counted: the circuit's
/// control streams and their task (bench/ measures the whole: about 6.4 KB
/// per idle circuit on a middle relay).
pub fn hop_state_bytes() -> usize {
    use std::mem::size_of;
    let hop = size_of::<std::sync::Mutex<HopCircuit<LinkId>>>() + 2 * size_of::<usize>();
    let entry = size_of::<((LinkId, u32), (usize, u8))>() + 8;
    hop + 2 * entry
}

fn render(node: &Node) -> String {
    let mut m = String::new();
    let table = read(&node.table);
    let drops = &table.drops;
    let c = &node.counters;
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric(
        "hopwire_circuits",
        "gauge",
        "Circuits through this node now.",
        table.len() as u64,
    );
    metric(
        "hopwire_circuit_hop_state_bytes",
        "gauge",
        "Bytes of hop state (keys, replay windows, table entries) one circuit holds; streams and tasks not counted.",
        hop_state_bytes() as u64,
    );
    metric(
        "hopwire_links",
        "gauge",
        "QUIC links to other nodes and clients.",
        node.links.len() as u64,
    );
    metric(
        "hopwire_circuits_opened_total",
        "counter",
        "Circuits created here.",
        c.circuits_opened.load(Ordering::Relaxed),
    );
    metric(
        "hopwire_extends_failed_total",
        "counter",
        "Extends that failed.",
        c.extends_failed.load(Ordering::Relaxed),
    );
    metric(
        "hopwire_cells_relayed_total",
        "counter",
        "Cells passed to another node.",
        c.cells_relayed.load(Ordering::Relaxed),
    );
    metric(
        "hopwire_cells_delivered_total",
        "counter",
        "Cells ended at this exit.",
        c.cells_delivered.load(Ordering::Relaxed),
    );
    let cell_path = &node.links.socket.drops;
    for (reason, counter) in [
        ("unknown_circuit", &drops.unknown_circuit),
        ("truncated", &drops.truncated),
        ("replayed", &drops.replayed),
        ("forged", &drops.forged),
        ("misplaced", &drops.misplaced),
        ("circuit_rate", &drops.rate_limited),
        ("unpaid", &drops.unpaid),
        ("peer_rate", &c.peer_rate_limited),
        ("cell_path_refused", &cell_path.refused),
        ("cell_path_overflow", &cell_path.overflowed),
        ("cell_path_unsent", &cell_path.unsent),
    ] {
        let _ = writeln!(
            m,
            "hopwire_cells_dropped_total{{reason=\"{reason}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let dht = &node.dht_counters;
    let _ = writeln!(
        m,
        "# TYPE hopwire_dht_routing_peers gauge\nhopwire_dht_routing_peers {}",
        dht.routing_peers.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        m,
        "# TYPE hopwire_dht_records_stored_total counter\nhopwire_dht_records_stored_total {}",
        dht.stored.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        m,
        "# TYPE hopwire_dht_subnet_refused_total counter\nhopwire_dht_subnet_refused_total {}",
        dht.subnet_refused.load(Ordering::Relaxed)
    );
    for (name, kind, value) in [
        (
            "hopwire_dht_connections",
            "gauge",
            dht.connections.load(Ordering::Relaxed) as u64,
        ),
        (
            "hopwire_dht_requests_answered_total",
            "counter",
            dht.inbound_requests.load(Ordering::Relaxed),
        ),
        (
            "hopwire_dht_publications_total",
            "counter",
            dht.publications.load(Ordering::Relaxed),
        ),
        (
            "hopwire_dht_publish_failures_total",
            "counter",
            dht.publish_failures.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(m, "# TYPE {name} {kind}\n{name} {value}");
    }
    for (reason, n) in dht.rejected() {
        let _ = writeln!(m, "hopwire_dht_records_rejected_total{{reason=\"{reason}\"}} {n}");
    }
    if let Some(exit) = &node.exit {
        exit.render_metrics(&mut m);
    }
    if let Some(payee) = &node.payee {
        // The receipt store: what clients promised, and what the ledger paid.
        let receipts = payee.store.all().unwrap_or_default();
        let earned: u64 = receipts.iter().map(|r| r.receipt.receipt.cumulative_amount).sum();
        let settled: u64 = receipts.iter().map(|r| r.settled).sum();
        let _ = writeln!(
            m,
            "# HELP hopwire_earned Sum of the newest receipt of every channel.\n# TYPE hopwire_earned gauge\nhopwire_earned {earned}\n# HELP hopwire_settled What the ledger paid out for them.\n# TYPE hopwire_settled gauge\nhopwire_settled {settled}\n# TYPE hopwire_paid_channels gauge\nhopwire_paid_channels {}",
            receipts.len()
        );
        // What the node's own settlements cost on a chain (0 off chain).
        let fees = payee.fees_paid();
        let _ = writeln!(
            m,
            "# HELP hopwire_ledger_transactions_total Transactions the node sent to its ledger (settlements).\n# TYPE hopwire_ledger_transactions_total counter\nhopwire_ledger_transactions_total {}\n# HELP hopwire_ledger_gas_total Gas those transactions used.\n# TYPE hopwire_ledger_gas_total counter\nhopwire_ledger_gas_total {}\n# HELP hopwire_ledger_fees_wei_total What that gas cost, in wei of the chain's coin.\n# TYPE hopwire_ledger_fees_wei_total counter\nhopwire_ledger_fees_wei_total {}",
            fees.transactions, fees.gas, fees.fee_wei
        );
    }
    m
}

/// Answers every HTTP request on `listener` with the metrics.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let body = render(&node);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut request)).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
