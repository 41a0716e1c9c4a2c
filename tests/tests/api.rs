//! End-to-end tests of the daemon's local API: pushed events to several
//! subscribers, a subscriber that stops reading, the version check, and an
//! error kind on every error.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

/// Sends one raw request line to the daemon and reads its answer.
fn raw(tn: &Testnet, line: &str) -> Value {
    let mut stream = UnixStream::connect(&tn.socket).expect("connect to the daemon");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    stream.write_all(line.as_bytes()).expect("write");
    stream.write_all(b"\n").expect("write");
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).expect("read");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("answer to {line} is not JSON ({e}): {answer}"))
}

/// The state names in a `status --watch --json` log, in order: the first
/// line's status, then every state event.
fn states(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v["event"].as_str() {
            None => v["state"].as_str().map(str::to_owned),
            Some("state") => v["state"]["state"].as_str().map(str::to_owned),
            Some(_) => None,
        })
        .collect()
}

#[test]
fn subscribers_see_every_transition_and_a_stalled_one_stalls_nothing() {
    let tn = Testnet::start("hwa1", 1);
    assert_eq!(tn.status()["state"], "connected");
    let socket = tn.socket.to_string_lossy().into_owned();
    let watch = |name: &str| {
        let log = tn.dir.join(format!("{name}.log"));
        let w = Background::start_in_ns(
            name,
            &tn.ns.client,
            hopwire_bin(),
            &["--socket", &socket, "status", "--watch", "--json"],
            &log,
            &[],
        );
        (w, log)
    };
    let (mut first, first_log) = watch("watch-1");
    let (mut second, second_log) = watch("watch-2");
    // A subscriber that never reads a byte of its stream.
    let mut stalled = UnixStream::connect(&tn.socket).expect("connect");
    stalled
        .write_all(b"{\"v\":2,\"cmd\":\"subscribe\"}\n")
        .expect("subscribe");
    poll_until(
        "both watchers to print the status",
        40,
        Duration::from_millis(250),
        || {
            let (a, b) = (states(&first_log), states(&second_log));
            (a.first().map(String::as_str) == Some("connected") && b.first().map(String::as_str) == Some("connected"))
                .then_some(())
                .ok_or_else(|| format!("{a:?} / {b:?}"))
        },
    );

    // A download while the stalled subscriber is connected completes.
    let www = tn.www().join("api.bin");
    std::fs::write(&www, vec![5u8; 24 << 20]).expect("write file");
    let got = tn.dir.join("api-got.bin");
    let out = tn.curl_client("http://198.18.0.10/api.bin", Some(&got), 60);
    assert!(out.success(), "download with a stalled subscriber: {out}");
    assert_eq!(sha256_file(&got), sha256_file(&www));

    // Lose the middle relay: both watchers see the rebuild.
    let status = tn.status();
    let middle = status["circuit"][1]["id"].as_str().expect("a middle hop").to_owned();
    let node = tn.summary["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["identity"].as_str() == Some(&middle)))
        .expect("the middle among the nodes")
        .clone();
    kill_and_wait(node["pid"].as_u64().expect("pid") as u32, "KILL");
    tn.wait_status("a new circuit after the middle died", 60, |st| {
        st["state"] == "connected" && st["circuit"][1]["id"].as_str() != Some(middle.as_str())
    });
    tn.cli(&["disconnect"]).ok();
    let expected_tail = ["reconnecting", "connected", "disconnected"];
    let a = poll_until(
        "both watchers to see the disconnect",
        40,
        Duration::from_millis(250),
        || {
            let (a, b) = (states(&first_log), states(&second_log));
            (a.last().map(String::as_str) == Some("disconnected")
                && b.last().map(String::as_str) == Some("disconnected"))
            .then_some(a.clone())
            .ok_or_else(|| format!("{a:?} / {b:?}"))
        },
    );
    first.assert_running();
    second.assert_running();
    let b = states(&second_log);
    eprintln!(
        "[e2e] event stream of one connect/relay-kill/disconnect:\n{}",
        std::fs::read_to_string(&first_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("\"event\":\"traffic\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(a, b, "two subscribers saw different transitions");
    let mut want = expected_tail.iter();
    let mut next = want.next();
    for s in a.iter().skip(1) {
        if Some(&s.as_str()) == next {
            next = want.next();
        }
    }
    assert!(next.is_none(), "transitions {a:?} lack {expected_tail:?} in order");
    assert_eq!(tn.status()["state"], "disconnected", "status agrees with the stream");
    // The stalled subscriber's connection is still there or was dropped,
    // never a reason for the daemon to stop answering.
    drop(stalled);
    assert_eq!(tn.status()["state"], "disconnected");
}

#[test]
fn another_version_and_every_error_get_a_kind() {
    let tn = Testnet::start("hwa2", 1);
    let old = raw(&tn, r#"{"v":1,"cmd":"status"}"#);
    assert_eq!(old["result"], "error", "{old}");
    assert_eq!(old["kind"], "version", "{old}");
    assert!(old["message"].as_str().unwrap_or("").contains("version"), "{old}");
    let unversioned = raw(&tn, r#"{"cmd":"status"}"#);
    assert_eq!(unversioned["kind"], "version", "{unversioned}");
    let ok = raw(&tn, r#"{"v":2,"cmd":"status"}"#);
    assert_eq!(ok["result"], "ok", "{ok}");

    let cases = [
        ("this is not json", "bad_input"),
        (r#"{"v":2,"cmd":"format_disk"}"#, "bad_input"),
        (r#"{"v":2,"cmd":"connect","records":[],"hops":9}"#, "bad_input"),
        (
            r#"{"v":2,"cmd":"connect","records":["hopwire1.nonsense"]}"#,
            "bad_input",
        ),
        (r#"{"v":2,"cmd":"connect","records":[],"country":"ZZ"}"#, "no_exit"),
        (r#"{"v":2,"cmd":"connect","records":[],"max_price":0}"#, "no_exit"),
    ];
    for (request, kind) in cases {
        let answer = raw(&tn, request);
        assert_eq!(answer["result"], "error", "{request} → {answer}");
        assert_eq!(answer["kind"], kind, "{request} → {answer}");
        assert!(
            !answer["message"].as_str().unwrap_or("").is_empty(),
            "{request} → {answer}"
        );
    }
    // The CLI still says what is wrong in words.
    let out = tn.cli(&["connect", "--country", "ZZ"]);
    assert!(!out.success());
    assert!(out.stderr.contains("no exit"), "{out}");
}

/// Client addresses, destinations and keys never reach the logs at info
/// level: the testnet runs every process at the default level.
#[test]
fn logs_at_info_never_name_the_client_the_destination_or_a_key() {
    let tn = Testnet::start("hwa3", 1);
    let status = tn.status();
    let inner = status["inner_addr"].as_str().expect("inner address").to_owned();
    let wallet = tn.cli(&["wallet", "--json"]).ok();
    let wallet: Value = serde_json::from_str(wallet.stdout.trim()).expect("wallet JSON");
    let account = wallet["account"].as_str().expect("account").to_owned();
    let secrets = [
        ("the client's address", "198.18.2.2".to_owned()),
        ("the client's inner address", inner),
        ("the destination", "198.18.0.10".to_owned()),
        ("the wallet's account key", account.clone()),
        ("the wallet's account key (short)", account[..16].to_owned()),
    ];
    let mut logs = 0;
    for entry in std::fs::read_dir(&tn.dir).expect("testnet dir").flatten() {
        let path = entry.path();
        // The pretend internet's access log is the destination's own; the
        // ledger knows accounts by design (it settles them, as a chain would).
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.extension().is_none_or(|e| e != "log") || name.contains("access") || name.starts_with("ledger") {
            continue;
        }
        logs += 1;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (what, needle) in &secrets {
            assert!(
                !text.contains(needle.as_str()),
                "{} names {what} ({needle}):\n{}",
                path.display(),
                text.lines()
                    .filter(|l| l.contains(needle.as_str()))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        logs >= 3,
        "expected the client's and the nodes' logs in {}",
        tn.dir.display()
    );
}
