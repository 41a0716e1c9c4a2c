//! End-to-end test of reloading a running exit's configuration with SIGHUP
//! (`systemctl reload hopwire-node`): a new exit policy applies to the
//! client's running circuit at once, which stays up; a new price is
//! published in the DHT for the circuits built from then on, while the
//! running circuit keeps paying what it agreed; a broken config or a change
//! only a restart applies is said in the log, and the node serves on.

use std::fs;
use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

/// Sends SIGHUP to the exit and waits until its log says the reload's outcome
/// (`expect`), counting earlier occurrences.
fn reload(tn: &Testnet, expect: &str) {
    let log = std::path::PathBuf::from(tn.field(&["exit", "log"]));
    let before = fs::read_to_string(&log).unwrap_or_default().matches(expect).count();
    run("kill", &["-HUP", &tn.exit_pid().to_string()]).ok();
    poll_until(
        &format!("the exit to log `{expect}`"),
        40,
        Duration::from_millis(250),
        || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            (text.matches(expect).count() > before)
                .then_some(())
                .ok_or_else(|| tail(&log, 10))
        },
    );
}

fn set_policy(tn: &Testnet, rules: &[&str]) {
    tn.edit_exit_config(|t| {
        let exit = t.get_mut("exit").and_then(|e| e.as_table_mut()).expect("[exit]");
        exit.insert(
            "policy".into(),
            toml::Value::Array(rules.iter().map(|r| toml::Value::String((*r).into())).collect()),
        );
    });
}

fn exit_price_in_dht(tn: &Testnet, id: &str) -> Option<u64> {
    let out = tn.cli(&["nodes", "--role", "exit", "--json"]);
    let nodes: Value = serde_json::from_str(out.stdout.trim()).ok()?;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["id"].as_str() == Some(id))
        .and_then(|n| n["price_per_gib"].as_u64())
}

#[test]
fn sighup_reloads_the_exit_policy_and_prices_without_dropping_the_circuit() {
    let tn = Testnet::start("hwr1", 16);
    let url = tn.summary["download"]["url"].as_str().expect("download url").to_owned();
    let sha = tn.summary["download"]["sha256"].as_str().expect("sha256").to_owned();
    let exit_id = tn.field(&["exit", "identity"]).to_owned();
    let before = tn.status();
    let price = tn.node(&exit_id)["price_per_gib"].as_u64().expect("exit price");
    assert!(price > 0, "the testnet's exit charges");
    let config = fs::read_to_string(tn.exit_config()).expect("exit config");
    let rules: Vec<String> = config
        .parse::<toml::Table>()
        .expect("toml")
        .get("exit")
        .and_then(|e| e.get("policy"))
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut closed: Vec<&str> = rules.iter().map(String::as_str).collect();
    // The pretend internet's web server.
    closed.push("reject 198.18.0.0/15:80");

    // A stricter policy and twice the price: the policy stops the running
    // circuit's web traffic at once; the circuit stays up.
    set_policy(&tn, &closed);
    tn.edit_exit_config(|t| {
        let pay = t.get_mut("pay").and_then(|p| p.as_table_mut()).expect("[pay]");
        pay.insert(
            "price_per_gib".into(),
            toml::Value::Integer(i64::try_from(price * 2).expect("price")),
        );
    });
    reload(&tn, "reloaded");
    let refused = tn.curl_client(&url, None, 10);
    assert!(
        !refused.success(),
        "the reloaded policy refuses the web server: {refused}"
    );
    let during = tn.status();
    assert_eq!(during["state"], "connected", "{during}");
    assert_eq!(
        during["build_ms"], before["build_ms"],
        "the same circuit: {during} (before: {before})"
    );
    poll_until(
        "the new price in the DHT",
        60,
        Duration::from_secs(1),
        || match exit_price_in_dht(&tn, &exit_id) {
            Some(p) if p == price * 2 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // A broken config is refused and changes nothing.
    let good = fs::read_to_string(tn.exit_config()).expect("config");
    fs::write(tn.exit_config(), good.replace("[exit]", "[exit]\nbogus = 1")).expect("write");
    reload(&tn, "not reloading");
    fs::write(tn.exit_config(), &good).expect("write");

    // The old policy back, and a change only a restart applies: the same
    // circuit carries the download again, byte-exact, still paying the
    // price it agreed (at twice the price its payments would fall behind
    // and the exit would cut it off).
    let open: Vec<&str> = rules.iter().map(String::as_str).collect();
    set_policy(&tn, &open);
    tn.edit_exit_config(|t| {
        let node = t.get_mut("node").and_then(|n| n.as_table_mut()).expect("[node]");
        node.insert("capacity_mbit".into(), toml::Value::Integer(500));
    });
    reload(&tn, "take effect at the next restart");
    let got = tn.dir.join("after-reload.bin");
    tn.curl_client(&url, Some(&got), 60).ok();
    assert_eq!(
        sha256_file(&got),
        sha,
        "byte-exact on the same circuit after the reloads"
    );
    let after = tn.status();
    assert_eq!(after["state"], "connected", "{after}");
    assert_eq!(after["build_ms"], before["build_ms"], "the same circuit: {after}");
    let paid_exit = after["payments"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"].as_str() == Some(exit_id.as_str())))
        .cloned()
        .unwrap_or_else(|| panic!("the exit's payment in {after}"));
    // Paid for what it carried at the old price, within what the client
    // paid ahead (one chunk, or half a second's traffic) and the 1 MiB
    // tolerance.
    let n = |k: &str| paid_exit[k].as_u64().unwrap_or_else(|| panic!("{k} in {paid_exit}"));
    let at_old_price = |bytes: u64| (u128::from(bytes) * u128::from(price)) >> 30;
    assert_eq!(n("price_per_gib"), price, "{paid_exit}");
    let slack = at_old_price(n("ahead").max(4 << 20) + (1 << 20)) + 1;
    assert!(
        u128::from(n("paid")).abs_diff(at_old_price(n("bytes"))) <= slack,
        "the running circuit paid the exit its old price: {paid_exit}"
    );
}
