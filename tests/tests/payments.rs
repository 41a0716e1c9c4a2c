//! End-to-end tests of payments: every hop of a 3-hop circuit is paid its
//! price for what it carried (within one chunk); a killed exit keeps every
//! receipt it acknowledged and `settle` pays it on the ledger; a client out
//! of money hears why, and the hops stop carrying for it past the grace.

use std::path::PathBuf;

use hopwire_e2e::*;
use serde_json::Value;

fn json(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `hopwire-node ARGS` where the exit runs (it reaches the ledger from there).
fn node_cli(tn: &Testnet, args: &[&str]) -> Output {
    ns_exec(&tn.ns.exit, node_bin(), args)
}

/// The testnet's node with this short id (from the summary).
fn node<'a>(tn: &'a Testnet, id: &str) -> &'a Value {
    tn.summary["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["identity"].as_str() == Some(id)))
        .unwrap_or_else(|| panic!("no node {id} in {:#}", tn.summary))
}

#[test]
fn every_hop_is_paid_its_price_for_what_it_carried() {
    let tn = Testnet::start("hwp1", 16);
    let payments = tn.summary["payments"].as_array().expect("payments");
    assert_eq!(payments.len(), 3, "three charging hops: {:#}", tn.summary["payments"]);
    for p in payments {
        assert!(
            p["bytes"].as_u64() > Some(16 << 20),
            "the hop carried the download: {p}"
        );
        assert!(p["paid"].as_u64() > Some(0), "{p}");
        assert_eq!(
            p["within_one_chunk"], true,
            "paid = bytes × price within one chunk: {p}"
        );
    }
    // The wallet shows the channels and what left the balance.
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    let channels = wallet["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 3, "{wallet:#}");
    let deposits: u64 = channels.iter().filter_map(|c| c["deposit"].as_u64()).sum();
    let funds = tn.summary["ledger"]["funds"].as_u64().expect("funds");
    assert_eq!(wallet["balance"].as_u64(), Some(funds - deposits), "{wallet:#}");
    let st = tn.status();
    assert_eq!(
        st["spent"].as_u64(),
        Some(payments.iter().filter_map(|p| p["paid"].as_u64()).sum()),
        "status shows the session's spending: {st}"
    );
    // Disconnecting starts closing the channels: their deposits come back
    // after the ledger's challenge period.
    tn.disconnect();
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    for c in wallet["channels"].as_array().expect("channels") {
        assert!(
            c["close_at"].as_u64().is_some(),
            "channel not closing after disconnect: {c}"
        );
    }
}

#[test]
fn a_killed_exit_keeps_its_receipts_and_settle_pays_them() {
    let mut tn = Testnet::start("hwp2", 8);
    let st = tn.status();
    let exit_id = st["exit"]["id"].as_str().expect("exit id").to_owned();
    let acked = st["payments"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"].as_str() == Some(exit_id.as_str())))
        .and_then(|p| p["paid"].as_u64())
        .unwrap_or_else(|| panic!("no payment to the exit in {st}"));
    assert!(acked > 0, "{st}");
    let config = PathBuf::from(node(&tn, &exit_id)["config"].as_str().expect("config"));
    let config = config.to_string_lossy().into_owned();

    // While the node runs, its receipt store is its own.
    let busy = node_cli(&tn, &["earnings", "--config", &config]);
    assert!(
        !busy.success() && busy.stderr.contains("in use"),
        "earnings while the node runs: {busy}"
    );
    tn.stop_exit("KILL");
    let earned = json(&node_cli(&tn, &["earnings", "--config", &config, "--json"]).ok());
    assert!(
        earned["earned"].as_u64() >= Some(acked),
        "every receipt the exit acknowledged ({acked}) survived kill -9: {earned}"
    );
    assert_eq!(earned["settled"].as_u64(), Some(0), "{earned}");
    assert_eq!(earned["ledger_balance"].as_u64(), Some(0), "{earned}");

    let settle = node_cli(&tn, &["settle", "--config", &config]).ok();
    assert!(settle.stdout.contains("fee"), "fees shown before settling: {settle}");
    let after = json(&node_cli(&tn, &["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(after["unsettled"].as_u64(), Some(0), "{after}");
    assert_eq!(
        after["ledger_balance"], earned["earned"],
        "the ledger paid the exit exactly what its receipts say: {after}"
    );
    // Settling again pays nothing more.
    node_cli(&tn, &["settle", "--config", &config]).ok();
    let again = json(&node_cli(&tn, &["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(again["ledger_balance"], after["ledger_balance"], "{again}");
}

/// The client's account holds just enough for one circuit's deposits of
/// 8 MiB: a bigger download spends them, the client says why, and the hops
/// stop carrying past their grace (the download fails, nothing leaks).
#[test]
fn a_client_out_of_money_is_told_and_cut_off() {
    let tn = Testnet::start_with("hwp3", 1, &["--client-funds", "40000", "--deposit-mib", "8"]);
    let big = tn.www().join("big.bin");
    std::fs::write(&big, vec![7u8; 48 << 20]).expect("write big file");
    let out = tn.curl_client("http://files.hopwire.test/big.bin", None, 40);
    assert!(
        !out.success(),
        "a 48 MiB download on 8 MiB of deposit must not complete: {out}"
    );
    let st = tn.wait_status("the client to say it ran out of money", 30, |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("deposit") || e.contains("balance"))
    });
    eprintln!("[e2e] client out of money: {st}");
    // What the hops were paid never exceeds the deposits.
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    for c in wallet["channels"].as_array().expect("channels") {
        assert!(c["signed"].as_u64() <= c["deposit"].as_u64(), "{c}");
    }
}
