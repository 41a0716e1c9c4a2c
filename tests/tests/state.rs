//! What survives a reboot: the client daemon's wallet, channels and guard
//! live in its state directory, not beside its socket in a tmpfs.

use hopwire_e2e::*;
use serde_json::Value;

fn json(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The channel ids the wallet has to the hop `payee` (short id).
fn channels_to(wallet: &Value, payee: &str) -> Vec<(String, u64)> {
    wallet["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter(|c| c["payee"].as_str() == Some(payee))
        .map(|c| {
            (
                c["channel"].as_str().expect("id").to_owned(),
                c["sessions"].as_u64().expect("sessions"),
            )
        })
        .collect()
}

#[test]
fn a_daemon_restarted_on_an_empty_run_dir_keeps_account_channels_and_guard() {
    let mut tn = Testnet::start("hws1", 4);
    let before = tn.status();
    let guard = before["circuit"][0]["id"].as_str().expect("guard").to_owned();
    let exit = before["circuit"][2]["id"].as_str().expect("exit").to_owned();
    tn.cli(&["disconnect"]).ok();
    let wallet_before = json(&tn.cli(&["wallet", "--json"]).ok());
    let account = wallet_before["account"].as_str().expect("account").to_owned();
    let guard_channels = channels_to(&wallet_before, &guard);
    let exit_channels = channels_to(&wallet_before, &exit);
    assert_eq!(guard_channels.len(), 1, "one channel to the guard: {wallet_before:#}");
    assert_eq!(exit_channels.len(), 1, "one channel to the exit: {wallet_before:#}");

    // Stop the daemon and empty its run directory, as a reboot does.
    kill_and_wait(tn.summary["client"]["pid"].as_u64().expect("pid") as u32, "TERM");
    let run_dir = tn.socket.parent().expect("socket dir").to_owned();
    std::fs::remove_dir_all(&run_dir).expect("wipe the run dir");
    let state_dir = tn.summary["client"]["state_dir"]
        .as_str()
        .expect("state_dir")
        .to_owned();
    assert!(
        !run_dir.starts_with(&state_dir) && !std::path::Path::new(&state_dir).starts_with(&run_dir),
        "the testnet keeps state ({state_dir}) apart from the socket ({})",
        run_dir.display()
    );
    tn.restart_client("client-rebooted.log");
    let log = tn.dir.join("client-rebooted.log");
    let nodes = tn.dir.join("nodes.txt").to_string_lossy().into_owned();
    tn.cli(&["connect", "--nodes", &nodes, "--hops", "3"]).ok();
    let after = tn.status();
    assert_eq!(after["state"], "connected", "{after}");
    assert_eq!(
        after["circuit"][0]["id"],
        guard.as_str(),
        "the guard was kept across the reboot"
    );
    let got = tn.dir.join("after-reboot.bin");
    let out = tn.curl_client("http://198.18.0.10/test.bin", Some(&got), 60);
    assert!(out.success(), "download after the reboot: {out}");
    tn.cli(&["disconnect"]).ok();

    let wallet_after = json(&tn.cli(&["wallet", "--json"]).ok());
    assert_eq!(wallet_after["account"], account.as_str(), "the same ledger account");
    for (hop, before) in [("guard", &guard_channels), ("exit", &exit_channels)] {
        let payee = if hop == "guard" { &guard } else { &exit };
        let after = channels_to(&wallet_after, payee);
        assert_eq!(after.len(), 1, "still one channel to the {hop}: {wallet_after:#}");
        assert_eq!(after[0].0, before[0].0, "the {hop}'s channel was resumed, not replaced");
        assert!(
            after[0].1 > before[0].1,
            "a new session on the {hop}'s channel: {after:?}"
        );
    }
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("state now survives a reboot"),
        "nothing to migrate when the state is already in its place"
    );
}
