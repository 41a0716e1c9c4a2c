//! The daemon's local API: a `Request` line as the daemon reads it
//! (`serde_json::from_str`), and a `Response` as the CLI reads it.
//!
//! Nothing may panic. A request that decodes encodes back to itself, and the
//! records it names are parsed as the daemon would; a response that decodes
//! encodes to JSON that decodes again (floats may move by one ULP, so only
//! that).
#![no_main]

use hopwire_core::api::{HopInfo, HopPayment, Request, Response, State, Status};
use hopwire_core::record::VerifiedRecord;
use hopwire_fuzz::write_seeds;
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
            Response::Ok { status } | Response::Error { status, .. } => {
                status.build_ms = status.build_ms.map(|_| 0.0);
                status.rtt_ms = status.rtt_ms.map(|_| 0.0);
            }
            Response::Nodes { nodes } => {
                for n in nodes {
                    n.rtt_ms = n.rtt_ms.map(|_| 0.0);
                }
            }
            Response::Wallet { .. } => {}
        }
        r
    };
    assert_eq!(strip(&back), strip(&resp), "response round trip through {text}");
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
        }],
        spent: 4096,
        payment_bytes: 900,
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
    ]
    .iter()
    .map(|r| serde_json::to_vec(r).expect("encodes"))
    .collect();
    seeds.push(br#"{"cmd":"connect","records":["hopwire1.x"]}"#.to_vec());
    seeds.push(serde_json::to_vec(&Response::Ok { status: status.clone() }).expect("encodes"));
    seeds.push(
        serde_json::to_vec(&Response::Error {
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
            if let Ok(req) = serde_json::from_str::<Request>(line) {
                request(req);
            }
        }
        if let Ok(req) = serde_json::from_slice::<Request>(data) {
            request(req);
        }
        if let Ok(resp) = serde_json::from_slice::<Response>(data) {
            response(resp);
        }
    }
);
