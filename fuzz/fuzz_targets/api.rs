//! The daemon's local API: a request line as the daemon reads it (an
//! `Envelope` with the version), a `Response` as the CLI reads it, and an
//! `Event` as a subscriber reads it.
//!
//! Nothing may panic. A request that decodes encodes back to itself, and the
//! records it names are parsed as the daemon would; a response that decodes
//! encodes to JSON that decodes again (floats may move by one ULP, so only
//! that).
#![no_main]

use hopwire_api::{
    Envelope, ErrorKind, Event, HopInfo, HopPayment, Request, Response, Settings, SettingsChange, State, Status,
    TunnelState,
};
use hopwire_fuzz::write_seeds;
use hopwire_proto::record::VerifiedRecord;
use libfuzzer_sys::fuzz_target;

fn request(req: Request) {
    let text = serde_json::to_string(&req).expect("a request encodes");
    let back: Request = serde_json::from_str(&text).expect("an encoded request decodes");
    assert_eq!(back, req, "request round trip through {text}");
    if let Request::Connect { records, .. } = &req {
        for r in records {
            let _ = r.parse::<VerifiedRecord>();
        }
    }
}

fn response(resp: Response) {
    let text = serde_json::to_string(&resp).expect("a response encodes");
    let back: Response = serde_json::from_str(&text).expect("an encoded response decodes");
    // Strings, integers and the shape survive exactly.
    let strip = |r: &Response| {
        let mut r = r.clone();
        match &mut r {
            Response::Ok { status } | Response::Error { status, .. } | Response::Subscribed { status } => {
                status.build_ms = status.build_ms.map(|_| 0.0);
                status.rtt_ms = status.rtt_ms.map(|_| 0.0);
            }
            Response::Nodes { nodes } => {
                for n in nodes {
                    n.rtt_ms = n.rtt_ms.map(|_| 0.0);
                }
            }
            Response::Wallet { .. } | Response::Settings { .. } => {}
        }
        r
    };
    assert_eq!(strip(&back), strip(&resp), "response round trip through {text}");
}

fn event(e: Event) {
    let text = serde_json::to_string(&e).expect("an event encodes");
    let back: Event = serde_json::from_str(&text).expect("an encoded event decodes");
    let strip = |e: &Event| {
        let mut e = e.clone();
        match &mut e {
            Event::Circuit { build_ms, .. } => *build_ms = 0.0,
            Event::Traffic { rtt_ms, .. } => *rtt_ms = rtt_ms.map(|_| 0.0),
            _ => {}
        }
        e
    };
    assert_eq!(strip(&back), strip(&e), "event round trip through {text}");
}

fn seeds() -> Vec<Vec<u8>> {
    let hop = HopInfo {
        id: "0123456789abcdef".into(),
        addr: "198.18.2.2:4433".parse().expect("addr"),
        region: "DE".into(),
    };
    let status = Status {
        state: State::Connected,
        error: Some("x".into()),
        error_kind: Some(ErrorKind::Funds),
        attempt: Some(2),
        exit: Some(hop.clone()),
        circuit: vec![hop.clone(), hop],
        build_ms: Some(12.5),
        inner_addr: Some([100, 87, 0, 2].into()),
        bytes_sent: 1,
        bytes_received: 2,
        tx_bps: 3,
        rx_bps: 4,
        mtu: Some(1380),
        rtt_ms: Some(0.25),
        payments: vec![HopPayment {
            id: "0123456789abcdef".into(),
            price_per_gib: 1_000_000,
            paid: 4096,
            bytes: 1 << 22,
            lost: 1 << 16,
            ahead: 4 << 20,
        }],
        spent: 4096,
        payment_bytes: 900,
        inner_v6: Some("fd68:7769:7200::6457:2".parse().expect("v6")),
        ipv6_blocked: None,
        settings: Settings {
            lockdown: true,
            allow_lan: true,
            ipv6: false,
            dns: vec!["9.9.9.9".parse().expect("dns")],
        },
        fail_closed: Some("settings unreadable".into()),
    };
    let mut seeds: Vec<Vec<u8>> = [
        Request::Connect {
            records: vec!["hopwire1.AAAA".into()],
            hops: 3,
            country: Some("DE".into()),
            max_price: Some(500),
        },
        Request::Disconnect,
        Request::Status,
        Request::Wallet { close: true },
        Request::Subscribe,
        Request::Settings {
            change: SettingsChange {
                lockdown: Some(true),
                dns: Some(vec!["9.9.9.9".parse().expect("dns")]),
                ..SettingsChange::default()
            },
        },
    ]
    .into_iter()
    .map(|request| serde_json::to_vec(&Envelope { v: 2, request }).expect("encodes"))
    .collect();
    seeds.push(
        serde_json::to_vec(&Event::State {
            state: TunnelState::Reconnecting {
                reason: "lost".into(),
                attempt: 1,
            },
        })
        .expect("encodes"),
    );
    seeds.push(serde_json::to_vec(&Response::Subscribed { status: status.clone() }).expect("encodes"));
    seeds.push(br#"{"cmd":"connect","records":["hopwire1.x"]}"#.to_vec());
    seeds.push(serde_json::to_vec(&Response::Ok { status: status.clone() }).expect("encodes"));
    seeds.push(
        serde_json::to_vec(&Response::Error {
            kind: ErrorKind::NoExit,
            message: "no".into(),
            status: Status::default(),
        })
        .expect("encodes"),
    );
    seeds
}

fuzz_target!(
    init: {
        write_seeds(seeds());
    },
    |data: &[u8]| {
        // The daemon reads a line into a String, so only UTF-8 reaches it.
        if let Ok(line) = std::str::from_utf8(data) {
            if let Ok(env) = serde_json::from_str::<Envelope>(line) {
                request(env.request);
            }
        }
        if let Ok(req) = serde_json::from_slice::<Request>(data) {
            request(req);
        }
        if let Ok(resp) = serde_json::from_slice::<Response>(data) {
            response(resp);
        }
        if let Ok(e) = serde_json::from_slice::<Event>(data) {
            event(e);
        }
    }
);
