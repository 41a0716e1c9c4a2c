//! End-to-end tests of settlement on an EVM chain (`hopwire testnet
//! --ledger evm`: anvil with the payment-channel contract, in the bootstrap
//! node's namespace): every hop of a 3-hop download is paid on chain what
//! the client paid it; a killed exit keeps every acknowledged receipt and
//! the chain pays exactly that, after waiting (and saying why) while a
//! settle would cost more than it collects; and the chain going away stops
//! only what needs it. (A client out of deposit on the chain: payments.rs.)

use std::path::PathBuf;
use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

/// The namespace the chain runs in.
fn chain_ns(tn: &Testnet) -> String {
    format!("{}-boot", tn.prefix)
}

fn ledger(tn: &Testnet) -> String {
    tn.summary["ledger"]["addr"].as_str().expect("ledger addr").to_owned()
}

/// Token units each of `accounts` holds on the chain.
fn balances(tn: &Testnet, accounts: &[String]) -> Value {
    let ledger = ledger(tn);
    let mut args = vec!["chain-stats", "--ledger", ledger.as_str()];
    for a in accounts {
        args.extend(["--account", a.as_str()]);
    }
    json(&ns_exec(&chain_ns(tn), node_bin(), &args).ok())["balances"].clone()
}

/// A node's payout address, from the summary (its record's 32-byte word).
/// Sets the exit's `[pay] unit_value_wei` (read when it starts, or by
/// `hopwire-node settle`).
fn set_unit_value_wei(tn: &Testnet, wei: &str) {
    tn.edit_exit_config(|t| {
        t["pay"]
            .as_table_mut()
            .expect("[pay]")
            .insert("unit_value_wei".into(), wei.into());
    });
}

fn payout(node: &Value) -> String {
    let word = node["payout"].as_str().unwrap_or_else(|| panic!("no payout: {node}"));
    format!("0x{}", &word[24..])
}

#[test]
fn the_demo_pays_every_hop_on_chain_what_the_client_paid_it() {
    let _serial = serial();
    require_root();
    testnet_down("hwc1");
    let out = run_timeout(
        std::process::Command::new(hopwire_bin()).args([
            "testnet",
            "--json",
            "--prefix",
            "hwc1",
            "--size-mb",
            "16",
            "--exits",
            "1",
            "--ledger",
            "evm",
        ]),
        Duration::from_secs(300),
    );
    testnet_down("hwc1");
    assert!(out.success(), "hopwire testnet --ledger evm failed: {out}");
    let summary: Value = json(&out);
    assert_eq!(summary["ledger"]["kind"], "evm", "{summary:#}");
    assert!(
        summary["ledger"]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("eip155:31337:0x")),
        "{summary:#}"
    );
    let payments = summary["payments"].as_array().expect("payments");
    assert_eq!(payments.len(), 3, "{summary:#}");
    for p in payments {
        assert_eq!(
            p["within_prepaid"], true,
            "paid = bytes × price within what was paid ahead: {p}"
        );
    }
    let settled = summary["settlement"]["hops"].as_array().expect("settlement");
    assert_eq!(settled.len(), 3, "{summary:#}");
    for h in settled {
        assert_eq!(h["before"], 0, "{h}");
        assert!(h["settled"].as_u64() > Some(0), "{h}");
        assert_eq!(
            h["settled"], h["paid_by_client"],
            "the chain paid the hop what the client paid it: {h}"
        );
    }
    let gas = &summary["settlement"]["gas"];
    let count = |kind: &str| gas[kind].as_array().map_or(0, Vec::len);
    assert_eq!(count("approve"), 1, "one approval for every deposit: {gas}");
    assert_eq!(count("open"), 3, "one channel per hop: {gas}");
    assert_eq!(count("start_close"), 3, "{gas}");
    assert!(count("settle") >= 3, "{gas}");
    eprintln!("[e2e] settled on chain: {:#}", summary["settlement"]);
}

#[test]
fn a_killed_exit_keeps_its_receipts_the_chain_pays_exactly_them_and_a_costly_settle_waits() {
    let mut tn = Testnet::start_with("hwc2", 8, &["--ledger", "evm"]);
    let st = tn.status();
    let exit_id = st["exit"]["id"].as_str().expect("exit id").to_owned();
    let acked = st["payments"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"].as_str() == Some(exit_id.as_str())))
        .and_then(|p| p["paid"].as_u64())
        .unwrap_or_else(|| panic!("no payment to the exit in {st}"));
    let exit = tn.node(&exit_id).clone();
    let config = exit["config"].as_str().expect("config").to_owned();

    tn.stop_exit("KILL");
    let earned = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    let total = earned["earned"].as_u64().expect("earned");
    assert!(
        total >= acked,
        "every receipt the exit acknowledged ({acked}) survived kill -9: {earned}"
    );

    // Gas priced at 1 wei per unit: any settle costs more than it collects.
    set_unit_value_wei(&tn, "1");
    let refused = tn.node_cli(&["settle", "--config", &config]).ok();
    assert!(
        refused.stdout.contains("skip: settling would cost") && refused.stdout.contains("settled 0"),
        "a settle costing more than it collects waits, and says so with its fee and net: {refused}"
    );
    let waiting = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(waiting["ledger_balance"], earned["ledger_balance"], "{waiting}");
    let row = &waiting["channels"][0];
    assert!(
        row["settle"].as_str().is_some_and(|s| s.contains("would cost")) && row["net"].as_f64() < Some(0.0),
        "earnings shows the fee, the (negative) net and why it waits: {waiting}"
    );

    // Worth it again: the chain pays exactly what the receipts say.
    set_unit_value_wei(&tn, "500000000");
    let settle = tn.node_cli(&["settle", "--config", &config]).ok();
    assert!(
        settle.stdout.contains("fee") && settle.stdout.contains("net"),
        "{settle}"
    );
    let after = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert_eq!(after["unsettled"].as_u64(), Some(0), "{after}");
    assert_eq!(
        after["ledger_balance"].as_u64(),
        Some(total),
        "the chain paid exactly the receipts: {after}"
    );
    let on_chain = balances(&tn, &[payout(&exit)]);
    assert_eq!(
        on_chain[payout(&exit).to_lowercase()].as_u64(),
        Some(total),
        "{on_chain}"
    );

    // The running node, too, waits and says why when settling is not worth it.
    set_unit_value_wei(&tn, "1");
    tn.restart_exit();
    tn.disconnect();
    tn.reconnect();
    let url = tn.summary["download"]["url"].as_str().expect("url").to_owned();
    tn.curl_client(&url, None, 60).ok();
    tn.disconnect();
    tn.cli(&["wallet", "--close"]).ok();
    let log = tn.extra_logs.last().cloned().expect("the restarted exit's log");
    poll_until(
        "the exit to say why it does not settle",
        40,
        Duration::from_millis(250),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("not settling yet: settling would cost")
                .then_some(())
                .ok_or_else(|| tail(&log, 10))
        },
    );
    tn.stop_exit("TERM");
    let unpaid = json(&tn.node_cli(&["earnings", "--config", &config, "--json"]).ok());
    assert!(unpaid["unsettled"].as_u64() > Some(0), "{unpaid}");
    assert_eq!(
        unpaid["ledger_balance"].as_u64(),
        Some(total),
        "nothing paid at a loss: {unpaid}"
    );
}

#[test]
fn the_chain_going_away_stops_new_channels_only_and_loses_nothing() {
    let mut tn = Testnet::start_with("hwc4", 4, &["--ledger", "evm"]);
    let chain_log = PathBuf::from(tn.summary["ledger"]["log"].as_str().expect("chain log"));
    let text = std::fs::read_to_string(&chain_log).expect("chain log");
    let anvil: u32 = text
        .lines()
        .find_map(|l| l.split("anvil pid ").nth(1))
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no anvil pid in {text}"));
    let devchain: u32 = std::fs::read_to_string(format!("/proc/{anvil}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok())
        .expect("anvil's parent");
    kill_and_wait(anvil, "KILL");
    kill_and_wait(devchain, "TERM");

    // The circuit is paid off chain: it keeps carrying.
    let url = tn.summary["download"]["url"].as_str().expect("url").to_owned();
    let out = tn.dir.join("during-outage.bin");
    tn.curl_client(&url, Some(&out), 60).ok();
    assert_eq!(
        sha256_file(&out),
        tn.summary["download"]["sha256"].as_str().expect("sha256"),
        "a paid circuit works without the chain"
    );
    let st = tn.status();
    assert_eq!(st["state"], "connected", "{st}");

    // Hops the client has no channel with need one opened: a clear error.
    let on_path: Vec<String> = st["circuit"]
        .as_array()
        .expect("circuit")
        .iter()
        .filter_map(|h| h["id"].as_str().map(str::to_owned))
        .collect();
    let others: Vec<&str> = tn.summary["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "exit" || !on_path.iter().any(|id| n["identity"].as_str() == Some(id)))
        .filter_map(|n| n["record"].as_str())
        .collect();
    let nodes = tn.dir.join("nodes-new-relays.txt");
    std::fs::write(&nodes, others.join("\n") + "\n").expect("nodes file");
    let nodes = nodes.to_string_lossy().into_owned();
    tn.disconnect();
    let failed = tn.cli(&["connect", "--hops", "3", "--nodes", &nodes]);
    assert!(!failed.success(), "{failed}");
    assert!(
        failed.stderr.contains("ledger unreachable") && failed.stderr.contains("opening a channel"),
        "the user hears that the ledger cannot be reached to open a channel: {failed}"
    );

    // The chain comes back from its saved state: everything paid is there.
    let restarted = tn.dir.join("chain-restart.log");
    let chain_dir = tn.dir.join("chain").to_string_lossy().into_owned();
    let bg = Background::start_in_ns(
        "devchain",
        &chain_ns(&tn),
        node_bin(),
        &[
            "devchain",
            "--listen",
            "100.90.0.2:8545",
            "--dir",
            &chain_dir,
            "--challenge-s",
            "60",
        ],
        &restarted,
        &[],
    );
    tn.extra.push(bg);
    tn.extra_logs.push(restarted.clone());
    poll_until("the chain to come back", 100, Duration::from_millis(100), || {
        std::fs::read_to_string(&restarted)
            .unwrap_or_default()
            .contains("devchain ready")
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    let ok = tn.cli(&["connect", "--hops", "3", "--nodes", &nodes]);
    assert!(ok.success(), "{ok}");
    tn.wait_state("connected", 60);
    tn.curl_client(&url, None, 60).ok();

    // Every hop is settled on chain what the client signed to it.
    tn.disconnect();
    tn.cli(&["wallet", "--close"]).ok();
    let wallet = json(&tn.cli(&["wallet", "--json"]).ok());
    let mut owed: std::collections::BTreeMap<String, u64> = Default::default();
    for c in wallet["channels"].as_array().expect("channels") {
        let payee = c["payee"].as_str().expect("payee");
        *owed.entry(payout(tn.node(payee)).to_lowercase()).or_default() += c["signed"].as_u64().unwrap_or(0);
    }
    let accounts: Vec<String> = owed.keys().cloned().collect();
    let on_chain = poll_until(
        "every hop to be settled on chain",
        60,
        Duration::from_millis(500),
        || {
            let b = balances(&tn, &accounts);
            owed.iter()
                .all(|(a, signed)| b[a.as_str()].as_u64() == Some(*signed))
                .then(|| b.clone())
                .ok_or_else(|| format!("on chain {b}, signed {owed:?}"))
        },
    );
    assert_eq!(owed.len(), 5, "hops before and after the outage: {wallet:#}");
    eprintln!("[e2e] settled after the outage: {on_chain}");
}
