//! End-to-end tests of discovery: the testnet's client finds every node
//! through the DHT, knowing only the bootstrap node, and keeps finding them
//! after the bootstrap node is gone.

use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

fn nodes(tn: &Testnet, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut all = vec!["nodes", "--json"];
    all.extend_from_slice(args);
    let out = tn.cli(&all);
    if !out.success() {
        return Err(out.to_string());
    }
    serde_json::from_str::<Vec<Value>>(out.stdout.trim()).map_err(|e| format!("not a JSON list ({e}): {out}"))
}

fn pid(v: &Value) -> u32 {
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid in {v}"))
}

#[test]
fn the_client_builds_its_circuit_from_nodes_it_found_in_the_dht() {
    let tn = Testnet::start("hwd1", 1);
    assert_eq!(tn.summary["discovery"]["via"], "dht", "{:#}", tn.summary);
    let expected = tn.summary["nodes"].as_array().map_or(0, Vec::len);
    assert_eq!(tn.summary["discovery"]["nodes_found"].as_u64(), Some(expected as u64));
    // Every hop of the circuit is one of the nodes the DHT listed.
    let listed = nodes(&tn, &[]).expect("nodes");
    let ids: Vec<&str> = listed.iter().filter_map(|n| n["id"].as_str()).collect();
    let st = tn.status();
    for hop in st["circuit"].as_array().expect("circuit") {
        assert!(
            ids.contains(&hop["id"].as_str().unwrap_or("")),
            "hop {hop} not found in the DHT: {listed:?}"
        );
    }
    // Filters: exits only, and exits of one country.
    let exits = nodes(&tn, &["--role", "exit"]).expect("exits");
    assert!(!exits.is_empty());
    assert!(exits
        .iter()
        .all(|n| n["roles"].as_array().is_some_and(|r| r.contains(&Value::from("exit")))));
    assert_eq!(nodes(&tn, &["--country", "DE"]).expect("DE").len(), 1);
    assert!(nodes(&tn, &["--country", "JP"]).expect("JP").is_empty());
    let out = tn.cli(&["connect", "--country", "JP"]);
    assert!(
        !out.success() && out.stderr.contains("JP"),
        "a country without exits is named: {out}"
    );
    // Prices: each node's record carries what its node.toml asks, and a
    // ceiling below every exit is refused naming the cheapest.
    let mut priced = 0;
    for planned in tn.summary["nodes"].as_array().expect("nodes") {
        let addr = format!("{}:4433", planned["addr"].as_str().expect("addr"));
        if let Some(found) = listed.iter().find(|n| n["addr"].as_str() == Some(addr.as_str())) {
            assert_eq!(found["price_per_gib"], planned["price_per_gib"], "{found} vs {planned}");
            priced += 1;
        }
    }
    assert_eq!(priced, listed.len(), "every listed node's price checked");
    let cheapest = exits
        .iter()
        .filter_map(|n| n["price_per_gib"].as_u64())
        .min()
        .expect("exit prices");
    let out = tn.cli(&["connect", "--max-price", &(cheapest - 1).to_string()]);
    assert!(
        !out.success() && out.stderr.contains(&format!("the cheapest asks {cheapest}")),
        "a price ceiling below every exit is refused: {out}"
    );
}

#[test]
fn a_restarted_client_finds_nodes_without_the_bootstrap_node() {
    let mut tn = Testnet::start("hwd2", 1);
    let boot = tn.summary["bootstrap"].clone();
    kill_and_wait(pid(&boot), "KILL");
    // Restart the client daemon: it knows the dead bootstrap node and the
    // peers it learned before, kept on disk.
    kill_and_wait(pid(&tn.summary["client"]), "TERM");
    tn.restart_client("client-restarted.log");
    let found = poll_until(
        "the restarted client to find nodes",
        60,
        Duration::from_millis(500),
        || match nodes(&tn, &[]) {
            Ok(n) if n.len() >= 2 => Ok(n),
            Ok(n) => Err(format!("{} nodes", n.len())),
            Err(e) => Err(e),
        },
    );
    eprintln!("[e2e] found without the bootstrap node: {}", found.len());
    tn.cli(&["connect"]).ok();
    let got = tn.dir.join("after-restart.bin");
    tn.curl_client("http://198.18.0.10/test.bin", Some(&got), 30).ok();
    assert_eq!(sha256_file(&got), sha256_file(&tn.www().join("test.bin")));
}
