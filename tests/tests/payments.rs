//! End-to-end tests of payments: every hop of a 3-hop circuit is paid its
//! price for what it carried (within what the client paid ahead), and the
//! next circuit pays
//! on the same channels; a killed exit keeps every receipt it acknowledged,
//! `settle` pays it on the ledger, restarted it resumes the channel, and it
//! settles the channel by itself when the client closes it; a
//! client out of money hears why, and the hops stop carrying for it past the
//! grace (on the embedded ledger and on a chain); a download past the
//! deposits tops the channels up and keeps its circuit (on both too); hops
//! that report inflated usage are paid only what they carried; through a
//! lossy last mile each hop is paid for what it sent, and keeps carrying.

use std::path::PathBuf;

use hopwire_e2e::*;
use serde_json::Value;

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
            p["within_prepaid"], true,
            "paid = bytes × price within what was paid ahead: {p}"
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
    // A circuit's channels outlive it: the next circuit through a hop pays
    // on the same channel, as a new session.
    tn.disconnect();
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    for c in wallet["channels"].as_array().expect("channels") {
        assert!(c["close_at"].is_null(), "channel closing after disconnect: {c}");
        assert_eq!(c["sessions"].as_u64(), Some(1), "{c}");
    }
    // The session is in the wallet's history, with what it paid each hop.
    let sessions = wallet["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{wallet:#}");
    assert_eq!(sessions[0]["hops"].as_object().map(|h| h.len()), Some(3), "{wallet:#}");
    assert!(sessions[0]["spent"].as_u64() >= st["spent"].as_u64(), "{wallet:#} {st}");
    tn.reconnect();
    let url = tn.summary["download"]["url"].as_str().expect("download url").to_owned();
    tn.curl_client(&url, None, 60).ok();
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    let channels = wallet["channels"].as_array().expect("channels");
    let mut payees: Vec<&str> = channels.iter().filter_map(|c| c["payee"].as_str()).collect();
    payees.sort_unstable();
    let before = payees.len();
    payees.dedup();
    assert_eq!(payees.len(), before, "one channel per hop: {wallet:#}");
    let st = tn.status();
    let on_path: Vec<&str> = st["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    let reused = channels
        .iter()
        .filter(|c| c["sessions"].as_u64() == Some(1) && on_path.contains(&c["payee"].as_str().unwrap_or("")))
        .count();
    assert!(
        reused >= 1,
        "the guard's channel carries its second circuit: {wallet:#} {st}"
    );
    eprintln!("[e2e] channels after a second circuit: {wallet}");
    // `wallet --close` closes what no circuit uses; after a disconnect, all.
    let wallet = json(&tn.cli(&["wallet", "--close", "--json"]).ok());
    for c in wallet["channels"].as_array().expect("channels") {
        let in_use = on_path.contains(&c["payee"].as_str().unwrap_or(""));
        assert_eq!(c["close_at"].is_null(), in_use, "{c} (in use: {in_use})");
    }
    tn.disconnect();
    let wallet = json(&tn.cli(&["wallet", "--close", "--json"]).ok());
    for c in wallet["channels"].as_array().expect("channels") {
        assert!(c["close_at"].as_u64().is_some(), "channel not closing: {c}");
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
    let config = PathBuf::from(tn.node(&exit_id)["config"].as_str().expect("config"));
    let config = config.to_string_lossy().into_owned();

    // While the node runs it holds its receipt store and answers for it
    // over its control socket; the channel its circuit pays through now
    // waits for the session's end, even when settling by hand.
    let live = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert!(
        live["earned"].as_u64() >= Some(acked) && live["settled"].as_u64() == Some(0),
        "earnings while the node runs: {live}"
    );
    let paying = "a circuit is paying through it";
    assert!(
        live["channels"][0]["settle"]
            .as_str()
            .is_some_and(|s| s.contains(paying)),
        "the channel in use waits: {live}"
    );
    let text = tn.node_cli(&["earnings", "--config", &config]).ok();
    assert!(text.stdout.contains(&format!("not settled yet: {paying}")), "{text}");
    let by_hand = tn.node_cli(&["settle", "--config", &config]).ok();
    assert!(
        by_hand.stdout.contains(&format!("skip: {paying}")) && by_hand.stdout.contains("settled 0"),
        "settle while the node runs: {by_hand}"
    );
    tn.stop_exit("KILL");
    let earned = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert!(
        earned["earned"].as_u64() >= Some(acked),
        "every receipt the exit acknowledged ({acked}) survived kill -9: {earned}"
    );
    assert_eq!(earned["settled"].as_u64(), Some(0), "{earned}");
    assert_eq!(earned["ledger_balance"].as_u64(), Some(0), "{earned}");

    let settle = tn.node_cli(&["settle", "--config", &config]).ok();
    assert!(settle.stdout.contains("fee"), "fees shown before settling: {settle}");
    let after = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(after["unsettled"].as_u64(), Some(0), "{after}");
    assert_eq!(
        after["ledger_balance"], earned["earned"],
        "the ledger paid the exit exactly what its receipts say: {after}"
    );
    // Settling again pays nothing more.
    tn.node_cli(&["settle", "--config", &config]).ok();
    let again = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(again["ledger_balance"], after["ledger_balance"], "{again}");

    // Restarted, the exit takes the client's next circuit on the same
    // channel, from the receipt it kept.
    tn.restart_exit();
    tn.disconnect();
    let only_this_exit: Vec<&str> = tn.summary["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"].as_str() != Some("exit") || n["identity"].as_str() == Some(exit_id.as_str()))
        .filter_map(|n| n["record"].as_str())
        .collect();
    let nodes = tn.dir.join("nodes-one-exit.txt");
    std::fs::write(&nodes, only_this_exit.join("\n") + "\n").expect("write nodes file");
    let nodes = nodes.to_string_lossy().into_owned();
    tn.cli(&["connect", "--hops", "3", "--nodes", &nodes]).ok();
    let st = tn.wait_state("connected", 60);
    assert_eq!(st["exit"]["id"].as_str(), Some(exit_id.as_str()), "{st}");
    let url = tn.summary["download"]["url"].as_str().expect("download url").to_owned();
    tn.curl_client(&url, None, 60).ok();
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    let to_exit: Vec<&Value> = wallet["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter(|c| c["payee"].as_str() == Some(exit_id.as_str()))
        .collect();
    assert_eq!(to_exit.len(), 1, "the exit's channel resumed, none opened: {wallet:#}");

    // Its session over (once the exit has seen the circuit end), the
    // channel is settled by hand while the node runs.
    tn.disconnect();
    let mut by_hand = tn.node_cli(&["settle", "--config", &config]).ok();
    for _ in 0..20 {
        if !by_hand.stdout.contains(paying) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        by_hand = tn.node_cli(&["settle", "--config", &config]).ok();
    }
    assert!(
        by_hand.stdout.contains(": paid "),
        "settle by hand while the node runs: {by_hand}"
    );
    let live = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(live["unsettled"].as_u64(), Some(0), "{live}");
    assert_eq!(live["ledger_balance"], live["earned"], "{live}");

    // One more session on the channel, left for its close to settle.
    tn.cli(&["connect", "--hops", "3", "--nodes", &nodes]).ok();
    tn.wait_state("connected", 60);
    tn.curl_client(&url, None, 60).ok();
    tn.disconnect();

    // The client closes its channels: the running exit settles its own
    // (the testnet's nodes look every 2 s) before the close takes effect.
    tn.cli(&["wallet", "--close"]).ok();
    std::thread::sleep(std::time::Duration::from_secs(6));
    tn.stop_exit("TERM");
    let resumed = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(resumed["channels"].as_array().map(Vec::len), Some(1), "{resumed}");
    assert!(
        resumed["earned"].as_u64() > earned["earned"].as_u64(),
        "the resumed session earned on the same channel: {resumed} (before: {earned})"
    );
    assert!(
        resumed["earned"].as_u64() > live["earned"].as_u64() && resumed["unsettled"].as_u64() == Some(0),
        "the running exit settled what the last session earned on the closing channel: {resumed} (before: {live})"
    );
    assert_eq!(resumed["ledger_balance"], resumed["earned"], "{resumed}");
    eprintln!("[e2e] the exit's channel after its restart and the client's close: {resumed}");
}

/// Every hop reports four times what it carried (a debug-build test hook):
/// the client pays each for what it counted itself, within what it paid
/// ahead and its tolerance, not for the reports.
#[test]
fn hops_reporting_inflated_usage_are_paid_only_what_they_carried() {
    let tn = Testnet::start_with_env("hwp4", 16, &[], &[("HOPWIRE_TEST_INFLATE_USAGE", "4")]);
    let payments = tn.summary["payments"].as_array().expect("payments");
    assert_eq!(payments.len(), 3, "{:#}", tn.summary["payments"]);
    for p in payments {
        let (owed, paid) = (p["owed"].as_u64().expect("owed"), p["paid"].as_u64().expect("paid"));
        let price = p["price_per_gib"].as_u64().expect("price");
        // What was paid ahead (one chunk, or half a second's traffic) and
        // the 1 MiB tolerance, rounded up to the unit.
        let ahead = p["ahead"].as_u64().expect("ahead").max(4 << 20);
        let slack = (ahead + (1 << 20)) * price / (1 << 30) + 2;
        assert!(
            p["bytes"].as_u64() > Some(16 << 20),
            "the hop carried the download: {p}"
        );
        assert!(
            paid <= owed + slack,
            "a hop reporting 4× its usage was paid {paid} for {owed} owed: {p}"
        );
        assert!(paid + slack >= owed, "the hop was still paid for what it carried: {p}");
    }
    eprintln!("[e2e] paid against inflated reports: {:#}", tn.summary["payments"]);
}

/// A last mile that drops 10 % of the client's UDP packets during a 128 MiB
/// download: every hop sends back more than arrives. The client counts
/// what each hop sent that was lost on the way (the counters of its layer
/// show it) as carried, so no hop finds itself unpaid and stops carrying:
/// one circuit carries the whole download, and each hop is paid for what
/// it sent, within what was paid ahead. Before, a hop paid only for what
/// arrived stopped carrying the circuit once the loss passed the client's
/// 1.6 % tolerance by a chunk and the grace.
#[test]
fn a_lossy_last_mile_keeps_its_circuit_and_pays_each_hop_for_what_it_sent() {
    let tn = Testnet::start_with("hwp6", 128, &["--loss", "10"]);
    let payments = tn.summary["payments"].as_array().expect("payments");
    assert_eq!(payments.len(), 3, "three charging hops: {:#}", tn.summary["payments"]);
    let paid: u64 = payments.iter().filter_map(|p| p["paid"].as_u64()).sum();
    assert_eq!(
        tn.summary["spent"].as_u64(),
        Some(paid),
        "one circuit carried the download (a lost one's payments would be spent too): {:#}",
        tn.summary
    );
    for p in payments {
        let (bytes, lost) = (p["bytes"].as_u64().expect("bytes"), p["lost"].as_u64().expect("lost"));
        assert!(bytes > 128 << 20, "the hop carried the download: {p}");
        assert_eq!(
            p["within_prepaid"], true,
            "paid for what it sent, lost cells included: {p}"
        );
        assert!(
            lost >= bytes / 40,
            "about a tenth of what it sent back was lost and counted: {p}"
        );
        // At most an eighth: the client caps it (tested in hopwire-client).
    }
    eprintln!("[e2e] paid through a lossy last mile: {:#}", tn.summary["payments"]);
}

/// Deposits of 8 MiB and a 48 MiB download: the client tops each channel
/// up on the ledger while the circuit pays through it, so one circuit
/// carries the whole download, one channel per hop; the hops take the
/// receipts past the first deposit once the ledger shows the top-up.
#[test]
fn a_download_past_the_deposit_tops_the_channels_up_and_keeps_its_circuit() {
    topped_up("hwp5", "embedded");
}

/// The same on a chain: the top-ups are transactions, and the hops read
/// the new deposits from the contract.
#[test]
fn a_download_past_the_deposit_tops_the_channels_up_on_chain() {
    topped_up("hwc5", "evm");
}

fn topped_up(prefix: &str, ledger: &str) {
    let tn = Testnet::start_with(prefix, 1, &["--ledger", ledger, "--deposit-mib", "8"]);
    let first: Vec<Value> = json(&tn.cli(&["wallet", "--json"]).ok())["channels"]
        .as_array()
        .expect("channels")
        .clone();
    assert_eq!(first.len(), 3, "one channel per hop: {first:?}");
    let big = tn.www().join("big.bin");
    std::fs::write(&big, vec![7u8; 48 << 20]).expect("write big file");
    let out = tn.curl_client("http://files.hopwire.test/big.bin", None, 120);
    assert!(out.success(), "the download went through: {out}");
    let st = tn.status();
    assert_eq!(st["state"], "connected", "{st}");
    tn.disconnect();
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    eprintln!("[e2e] channels after a download past the deposits ({ledger} ledger): {wallet:#}");
    let channels = wallet["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 3, "no channel replaced a spent one: {wallet:#}");
    for c in channels {
        let before = first
            .iter()
            .find(|f| f["channel"] == c["channel"])
            .unwrap_or_else(|| panic!("{c} is a channel the circuit started with"));
        let (deposit, signed) = (
            c["deposit"].as_u64().expect("deposit"),
            c["signed"].as_u64().expect("signed"),
        );
        let first_deposit = before["deposit"].as_u64().expect("deposit");
        assert!(deposit >= 2 * first_deposit, "topped up: {c}");
        assert!(signed > first_deposit, "paid past the first deposit: {c}");
        assert!(signed <= deposit, "never signed past the deposit: {c}");
        assert_eq!(c["sessions"].as_u64(), Some(1), "one circuit carried it all: {c}");
    }
}

/// The client's account holds just enough for one circuit's deposits of
/// 8 MiB: a bigger download spends them, the client says why, and the hops
/// stop carrying past their grace (the download fails, nothing leaks).
#[test]
fn a_client_out_of_money_is_told_and_cut_off() {
    out_of_money("hwp3", "embedded");
}

/// The same on a chain: the client's tokens run out.
#[test]
fn a_client_out_of_deposit_on_chain_is_told_and_cut_off() {
    out_of_money("hwc3", "evm");
}

fn out_of_money(prefix: &str, ledger: &str) {
    let tn = Testnet::start_with(
        prefix,
        1,
        &["--ledger", ledger, "--client-funds", "40000", "--deposit-mib", "8"],
    );
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
    eprintln!("[e2e] client out of money ({ledger} ledger): {st}");
    // What the hops were paid never exceeds the deposits.
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    for c in wallet["channels"].as_array().expect("channels") {
        assert!(c["signed"].as_u64() <= c["deposit"].as_u64(), "{c}");
    }
    assert!(wallet["balance"].as_u64() < Some(40000), "{wallet:#}");
}
