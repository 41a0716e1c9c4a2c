//! IP packets from a client, as the exit polices them, and exit policy
//! rules.
//!
//! - `packet::parse` and `packet::icmp_prohibited` never panic; an ICMP
//!   answer is a valid IPv4 packet from the exit to the sender with good
//!   checksums, and is itself never answered.
//! - The input, up to its first NUL, as one policy rule per line: rules
//!   parse or fail without a panic, print in a form that parses back to the
//!   same rule, and make a policy whose `allows` decides the packet after
//!   the NUL (or the whole input).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use hopwire_fuzz::write_seeds;
use hopwire_proto::packet::{self, PacketInfo, PROTO_ICMP};
use hopwire_proto::policy::{Action, ExitPolicy, Rule};
use libfuzzer_sys::fuzz_target;

const EXIT: Ipv4Addr = Ipv4Addr::new(100, 87, 0, 1);

fn default_policy() -> &'static ExitPolicy {
    static P: OnceLock<ExitPolicy> = OnceLock::new();
    P.get_or_init(ExitPolicy::default_policy)
}

fn check_packet(p: &[u8]) -> Option<PacketInfo> {
    let info = packet::parse(p);
    if let Some(info) = &info {
        let _ = default_policy().allows(info);
        assert_eq!(info.src.is_ipv4(), info.dst.is_ipv4());
    }
    for size in [0, 28, 36, 576] {
        let mut out = vec![0u8; size];
        let Some(n) = packet::icmp_prohibited(EXIT, p, &mut out) else {
            continue;
        };
        let info = info.expect("only a parsed packet is answered");
        let reply = &out[..n];
        let r = packet::parse(reply).expect("the answer is a valid packet");
        assert_eq!(r.src, IpAddr::V4(EXIT));
        assert_eq!(r.dst, info.src, "the answer goes to the sender");
        assert_eq!(r.protocol, PROTO_ICMP);
        assert_eq!(usize::from(u16::from_be_bytes([reply[2], reply[3]])), n, "total length");
        assert_eq!(packet::checksum(&reply[..20]), 0, "IP header checksum");
        assert_eq!(packet::checksum(&reply[20..]), 0, "ICMP checksum");
        assert!(
            packet::icmp_prohibited(EXIT, reply, &mut [0u8; 576]).is_none(),
            "an ICMP error was answered"
        );
    }
    info
}

fn check_rules(text: &str, info: Option<PacketInfo>) {
    let mut rules = Vec::new();
    for line in text.lines() {
        let Ok(rule) = line.parse::<Rule>() else { continue };
        let shown = rule.to_string();
        let again: Rule = shown
            .parse()
            .unwrap_or_else(|e| panic!("rule `{line}` prints as `{shown}`, which does not parse: {e}"));
        assert_eq!(
            again, rule,
            "rule `{line}` prints as `{shown}`, which parses differently"
        );
        rules.push(line.to_owned());
    }
    for default_rejects in [false, true] {
        let policy = ExitPolicy::new(&rules, default_rejects).expect("rules that parse make a policy");
        if let Some(info) = &info {
            let allowed = policy.allows(info);
            if rules.is_empty() && !default_rejects {
                assert!(allowed, "an empty policy accepts");
            }
            assert_eq!(
                allowed,
                policy.decide(info.dst, info.protocol, info.dst_port) == Action::Accept
            );
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut udp = vec![0u8; 28];
    udp[0] = 0x45;
    udp[2..4].copy_from_slice(&28u16.to_be_bytes());
    udp[8] = 64;
    udp[9] = 17;
    udp[12..16].copy_from_slice(&[100, 87, 0, 2]);
    udp[16..20].copy_from_slice(&[10, 0, 0, 1]);
    udp[22..24].copy_from_slice(&53u16.to_be_bytes());
    let mut tcp6 = vec![0u8; 60];
    tcp6[0] = 0x60;
    tcp6[6] = 6;
    tcp6[8] = 0xfd;
    tcp6[24] = 0x20;
    tcp6[25] = 0x01;
    tcp6[42..44].copy_from_slice(&443u16.to_be_bytes());
    let mut ping = udp.clone();
    ping[9] = PROTO_ICMP;
    ping[20] = 8;
    let rules = "accept 10.200.0.0/24:*\nreject [2001:db8::/32]:6881-6999\naccept *:443\nreject *:*\naccept ::1\n";
    let mut with_rules = rules.as_bytes().to_vec();
    with_rules.push(0);
    with_rules.extend_from_slice(&udp);
    vec![udp, tcp6, ping, rules.as_bytes().to_vec(), with_rules]
}

fuzz_target!(
    init: {
        write_seeds(seeds());
    },
    |data: &[u8]| {
        let info = check_packet(data);
        let (text, after) = match data.iter().position(|&b| b == 0) {
            Some(i) => (&data[..i], Some(&data[i + 1..])),
            None => (data, None),
        };
        let info = match after {
            Some(p) => check_packet(p),
            None => info,
        };
        check_rules(&String::from_utf8_lossy(text), info);
    }
);
