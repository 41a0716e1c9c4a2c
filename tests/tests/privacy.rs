//! Privacy over a whole session, as the circuit's own nodes see it.
//!
//! Every interface of every node of the client's circuit is captured
//! (`tcpdump -i any` in the guard's, the middle's and the exit's namespace:
//! their uplinks, the exit's LAN side and its TUN device, loopback) for a
//! connected session of more than 90 seconds: a rate-limited download
//! through the tunnel (its name resolved through the tunnel too), one IPv6
//! request where the exit carries IPv6, then idle time in which only the
//! system's own traffic flows (DHT refreshes, keepalives, payments). The
//! client's own link is captured as well, as a control.
//!
//! Each capture is then read twice: as `tcpdump -r -n` prints it (every
//! line naming an address counts) and packet by packet from the pcap file
//! (IP headers, the address written out or in binary anywhere in a packet,
//! and samples of the downloaded file in plaintext). The client's address
//! may appear only on the guard's links, the destination only on the
//! exit's, and the file's bytes in plaintext nowhere before the exit.
//! Controls show that the captures would have caught it: the guard sees the
//! client, the exit sees the destination and the file, and every capture
//! carried more bytes than the download. The middle's and the client's
//! links carry more on the cell path than as QUIC.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hopwire_e2e::*;
use serde_json::Value;

const INET_SERVER: &str = "198.18.0.10";
/// The port every testnet node serves its links on.
const NODE_PORT: u16 = 4433;
const INET_SERVER_V6: &str = "2001:2::10";
const CLIENT_UPLINK: &str = "198.18.2.2";
const CLIENT_UPLINK_V6: &str = "2001:2:2::2";
/// A name the pretend internet's DNS resolves to itself: the client asks
/// the tunnel's resolver first, so the exit forwards a DNS query too.
const DOWNLOAD_URL: &str = "http://files.hopwire.test/test.bin";
/// Slow enough that the 64 MiB file is still downloading when curl's time is up.
const RATE: &str = "400k";
const DOWNLOAD_SECS: u64 = 60;
/// Quiet time after the download, for the system's own periodic traffic.
const IDLE: Duration = Duration::from_secs(35);
/// The least the captured session lasts.
const SESSION: Duration = Duration::from_secs(95);
/// Pieces of the downloaded file looked for in plaintext.
const SAMPLES: usize = 64;
const SAMPLE_LEN: usize = 32;
/// Offending lines shown per failed check.
const SHOW: usize = 8;

fn circuit_ids(st: &Value) -> Vec<String> {
    st["circuit"]
        .as_array()
        .map(|c| c.iter().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The testnet node (from the summary) whose identity is, or starts with, `id`.
fn node<'a>(tn: &'a Testnet, id: &str) -> &'a Value {
    let found: Vec<&Value> = tn.summary["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| {
                    n["identity"]
                        .as_str()
                        .is_some_and(|i| !id.is_empty() && i.starts_with(id))
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        found.len(),
        1,
        "circuit hop {id} is not exactly one of the testnet's nodes: {:#}",
        tn.summary
    );
    found[0]
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no string `{key}` in {v}"))
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// ---------------------------------------------------------------- addresses

/// An address looked for in the captures.
#[derive(Debug, Clone)]
struct Addr {
    what: String,
    text: String,
}

impl Addr {
    fn new(what: &str, text: &str) -> Self {
        Self {
            what: what.into(),
            text: text.into(),
        }
    }

    fn ip(&self) -> IpAddr {
        self.text
            .parse()
            .unwrap_or_else(|e| panic!("{} is not an address: {e}", self.text))
    }

    fn v6(&self) -> bool {
        self.ip().is_ipv6()
    }

    fn octets(&self) -> Vec<u8> {
        match self.ip() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    fn label(&self) -> String {
        format!("{} {}", self.what, self.text)
    }
}

/// Whether the written-out address at `hay[at..at + len]` is a whole
/// address, not part of a longer one (`198.18.2.2` in `198.18.2.20`). After
/// an IPv4 address a `.` may follow: tcpdump writes the port that way.
fn whole_address(hay: &[u8], at: usize, len: usize, v6: bool) -> bool {
    let part = |b: u8| {
        if v6 {
            b.is_ascii_hexdigit() || b == b':'
        } else {
            b.is_ascii_digit() || b == b'.'
        }
    };
    let before = at == 0 || !part(hay[at - 1]);
    let after = match hay.get(at + len) {
        None => true,
        Some(&b) if v6 => !part(b),
        Some(&b) => !b.is_ascii_digit(),
    };
    before && after
}

/// Whether a line of tcpdump's output names `addr`.
fn mentions(line: &str, addr: &Addr) -> bool {
    line.match_indices(addr.text.as_str())
        .any(|(at, _)| whole_address(line.as_bytes(), at, addr.text.len(), addr.v6()))
}

// ---------------------------------------------------------------- pcap

/// One captured packet, from the pcap file.
struct Packet<'a> {
    /// As `tcpdump -tt` prints the time: `SECONDS.MICROSECONDS`.
    ts_text: String,
    ts: f64,
    ethertype: u16,
    /// From the IP header on.
    l3: &'a [u8],
    /// Everything captured, link header included.
    data: &'a [u8],
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The packets of a little-endian pcap file of tcpdump's (`-i any` writes
/// Linux cooked v2 headers, one interface Ethernet).
fn packets(pcap: &[u8]) -> Vec<Packet<'_>> {
    assert!(pcap.len() >= 24, "a pcap file of {} bytes has no header", pcap.len());
    let nanos = match le32(pcap, 0) {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        m => panic!("not a little-endian pcap file (magic {m:#010x})"),
    };
    let linktype = le32(pcap, 20);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let sec = le32(pcap, at);
        let frac = le32(pcap, at + 4);
        let len = le32(pcap, at + 8) as usize;
        let data = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        let (ethertype, l3) = match linktype {
            // LINUX_SLL2: protocol first, 20 bytes of header.
            276 if data.len() >= 20 => (be16(data, 0), &data[20..]),
            // LINUX_SLL: protocol last, 16 bytes.
            113 if data.len() >= 16 => (be16(data, 14), &data[16..]),
            // Ethernet, perhaps with one VLAN tag.
            1 if data.len() >= 18 && be16(data, 12) == 0x8100 => (be16(data, 16), &data[18..]),
            1 if data.len() >= 14 => (be16(data, 12), &data[14..]),
            _ => (0, data),
        };
        let usec = if nanos { frac / 1000 } else { frac };
        out.push(Packet {
            ts_text: format!("{sec}.{usec:06}"),
            ts: f64::from(sec) + f64::from(usec) / 1e6,
            ethertype,
            l3,
            data,
        });
    }
    out
}

/// The source and destination of an IPv4 or IPv6 packet.
fn header_addrs<'a>(p: &Packet<'a>) -> Vec<&'a [u8]> {
    match p.ethertype {
        0x0800 if p.l3.len() >= 20 => vec![&p.l3[12..16], &p.l3[16..20]],
        0x86dd if p.l3.len() >= 40 => vec![&p.l3[8..24], &p.l3[24..40]],
        _ => Vec::new(),
    }
}

/// The payload of an IPv4 UDP datagram to or from a node's port (4433).
fn node_udp_payload<'a>(p: &Packet<'a>) -> Option<&'a [u8]> {
    let l3 = p.l3;
    if p.ethertype != 0x0800 || l3.len() < 20 || l3[9] != 17 {
        return None;
    }
    let udp = l3.get(usize::from(l3[0] & 0x0f) * 4..)?;
    let (from, to) = (be16(udp, 0), be16(udp, 2));
    (udp.len() > 8 && (from == NODE_PORT || to == NODE_PORT)).then(|| &udp[8..])
}

/// What a byte string found in a packet is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needle {
    /// Address `i`, written out.
    Written(usize),
    /// Address `i` in binary (IPv6 only: 16 bytes do not turn up by chance).
    Binary(usize),
    /// Sample `i` of the downloaded file.
    Sample(usize),
}

/// Finds many short byte strings in one pass over a packet: candidates are
/// picked by their first two bytes.
struct Scanner {
    needles: Vec<(Needle, Vec<u8>, Option<bool>)>,
    by_prefix: Vec<Vec<usize>>,
}

impl Scanner {
    fn new(addrs: &[Addr], samples: &[&[u8]]) -> Self {
        let mut needles = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            needles.push((Needle::Written(i), a.text.as_bytes().to_vec(), Some(a.v6())));
            if a.v6() {
                needles.push((Needle::Binary(i), a.octets(), None));
            }
        }
        for (i, s) in samples.iter().enumerate() {
            needles.push((Needle::Sample(i), s.to_vec(), None));
        }
        let mut by_prefix = vec![Vec::new(); 1 << 16];
        for (i, (_, bytes, _)) in needles.iter().enumerate() {
            assert!(bytes.len() >= 2);
            by_prefix[usize::from(bytes[0]) << 8 | usize::from(bytes[1])].push(i);
        }
        Self { needles, by_prefix }
    }

    /// The needles in `hay`, each once.
    fn find(&self, hay: &[u8]) -> Vec<Needle> {
        let mut found = Vec::new();
        for at in 0..hay.len().saturating_sub(1) {
            let candidates = &self.by_prefix[usize::from(hay[at]) << 8 | usize::from(hay[at + 1])];
            for &i in candidates {
                let (needle, bytes, written) = &self.needles[i];
                if hay[at..].starts_with(bytes)
                    && written.is_none_or(|v6| whole_address(hay, at, bytes.len(), v6))
                    && !found.contains(needle)
                {
                    found.push(*needle);
                }
            }
        }
        found
    }
}

// ---------------------------------------------------------------- captures

/// A tcpdump running in one namespace.
struct Capture {
    role: String,
    ns: String,
    file: PathBuf,
    tcpdump: Background,
}

impl Capture {
    fn start(tn: &Testnet, role: &str, ns: &str, iface: &str) -> Self {
        let file = tn.dir.join(format!("privacy-{role}.pcap"));
        let f = file.to_string_lossy().into_owned();
        let tcpdump = Background::start_in_ns(
            &format!("{role} capture"),
            ns,
            "tcpdump",
            &["-i", iface, "-s", "0", "-U", "-w", &f],
            &tn.dir.join(format!("privacy-{role}-tcpdump.log")),
            &[],
        );
        Self {
            role: role.into(),
            ns: ns.into(),
            file,
            tcpdump,
        }
    }

    fn listening(&mut self) -> Result<(), String> {
        self.tcpdump.assert_running();
        let log = fs::read_to_string(&self.tcpdump.log).unwrap_or_default();
        if log.contains("listening on") {
            Ok(())
        } else {
            Err(format!("{}: {log}", self.role))
        }
    }
}

/// What one capture showed.
struct Seen {
    role: String,
    packets: usize,
    bytes: usize,
    /// Packets after the download ended.
    idle_packets: usize,
    /// Per address: the lines of `tcpdump -r -n` naming it.
    lines: Vec<Vec<String>>,
    /// Per address: the packets carrying it in an IP header or anywhere in
    /// their bytes, described.
    raw: Vec<Vec<String>>,
    /// Distinct samples of the file found, and the packets carrying any.
    samples_found: usize,
    plaintext: Vec<String>,
    /// tcpdump's own account (captured, dropped by the kernel).
    tcpdump_says: String,
    /// UDP payload bytes to or from a node's port: on the cell path (first
    /// byte below 0x40) and as QUIC packets.
    cell_bytes: usize,
    quic_bytes: usize,
}

impl Seen {
    fn read(capture: &Capture, addrs: &[Addr], scanner: &Scanner, start: f64, idle_from: f64) -> Self {
        let file = capture.file.to_string_lossy().into_owned();
        // Read inside the node's namespace, so interface names are its own.
        let out = ns_exec_timeout(
            &capture.ns,
            "tcpdump",
            &["-r", &file, "-n", "-tt"],
            Duration::from_secs(180),
        );
        assert!(out.success(), "reading the {} capture: {}", capture.role, out.stderr);
        let offset = |line: &str| {
            line.split_whitespace()
                .next()
                .and_then(|t| t.parse::<f64>().ok())
                .map(|t| format!("+{:.3}s", t - start))
                .unwrap_or_else(|| "+?".into())
        };
        let all_lines: Vec<&str> = out.stdout.lines().collect();
        let lines = addrs
            .iter()
            .map(|a| {
                all_lines
                    .iter()
                    .filter(|l| mentions(l, a))
                    .map(|l| format!("{} {l}", offset(l)))
                    .collect()
            })
            .collect();
        // The line tcpdump printed for a packet, by its time.
        let mut by_time: HashMap<&str, &str> = HashMap::new();
        for l in &all_lines {
            if let Some(t) = l.split_whitespace().next() {
                by_time.entry(t).or_insert(l);
            }
        }

        let pcap = fs::read(&capture.file).unwrap_or_else(|e| panic!("read {}: {e}", capture.file.display()));
        let packets = packets(&pcap);
        let binary: Vec<Vec<u8>> = addrs.iter().map(Addr::octets).collect();
        let mut raw = vec![Vec::new(); addrs.len()];
        let mut found_samples = [false; SAMPLES];
        let mut plaintext = Vec::new();
        for p in &packets {
            let describe = |why: &str| {
                format!(
                    "+{:.3}s {why}: {}",
                    p.ts - start,
                    by_time.get(p.ts_text.as_str()).copied().unwrap_or("(no tcpdump line)")
                )
            };
            let found = scanner.find(p.data);
            let header = header_addrs(p);
            for (i, bytes) in binary.iter().enumerate() {
                let why = if header.contains(&bytes.as_slice()) {
                    Some("in the IP header")
                } else if found.contains(&Needle::Binary(i)) {
                    Some("in binary in the packet")
                } else if found.contains(&Needle::Written(i)) {
                    Some("written out in the packet")
                } else {
                    None
                };
                if let Some(why) = why {
                    raw[i].push(describe(why));
                }
            }
            let samples: Vec<usize> = found
                .iter()
                .filter_map(|n| match n {
                    Needle::Sample(i) => Some(*i),
                    _ => None,
                })
                .collect();
            if !samples.is_empty() {
                for &i in &samples {
                    found_samples[i] = true;
                }
                plaintext.push(describe(&format!("{} sample(s) of the file", samples.len())));
            }
        }
        let (mut cell_bytes, mut quic_bytes) = (0, 0);
        for payload in packets.iter().filter_map(node_udp_payload) {
            match payload.first() {
                Some(b) if *b < 0x40 => cell_bytes += payload.len(),
                Some(_) => quic_bytes += payload.len(),
                None => {}
            }
        }
        let log = fs::read_to_string(&capture.tcpdump.log).unwrap_or_default();
        Self {
            cell_bytes,
            quic_bytes,
            role: capture.role.clone(),
            packets: packets.len(),
            bytes: packets.iter().map(|p| p.data.len()).sum(),
            idle_packets: packets.iter().filter(|p| p.ts >= idle_from).count(),
            lines,
            raw,
            samples_found: found_samples.iter().filter(|f| **f).count(),
            plaintext,
            tcpdump_says: log
                .lines()
                .filter(|l| l.contains("packets"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The first few of `items`, one a line.
fn first(items: &[String]) -> String {
    let mut s: String = items.iter().take(SHOW).map(|l| format!("\n    {l}")).collect();
    if items.len() > SHOW {
        s.push_str(&format!("\n    … {} more", items.len() - SHOW));
    }
    s
}

#[test]
fn over_a_whole_session_only_the_guard_sees_the_client_and_only_the_exit_the_destination() {
    require_tool("tcpdump");
    let tn = Testnet::start("hwv1", 64);
    let st = tn.status();
    let ids = circuit_ids(&st);
    assert_eq!(ids.len(), 3, "the default circuit has 3 hops: {st}");
    let roles = ["guard", "middle", "exit"];
    let hops: Vec<&Value> = ids.iter().map(|id| node(&tn, id)).collect();
    for (role, n) in roles.iter().zip(&hops) {
        eprintln!(
            "[e2e] {role}: {} {} ({}) in {}",
            field(n, "name"),
            field(n, "addr"),
            field(n, "identity"),
            field(n, "namespace")
        );
    }
    let guard_addr = field(hops[0], "addr");
    let addrs = [
        Addr::new("the client's address", CLIENT_UPLINK),
        Addr::new("the client's IPv6 address", CLIENT_UPLINK_V6),
        Addr::new("the destination", INET_SERVER),
        Addr::new("the destination's IPv6 address", INET_SERVER_V6),
        Addr::new("the guard's address", guard_addr),
    ];
    let (client_v4, client_v6, dest_v4, dest_v6, guard) = (0, 1, 2, 3, 4);

    // Every interface of every circuit node, and the client's uplink.
    let start = SystemTime::now();
    let t0 = Instant::now();
    let mut captures: Vec<Capture> = roles
        .iter()
        .zip(&hops)
        .map(|(role, n)| Capture::start(&tn, role, field(n, "namespace"), "any"))
        .collect();
    captures.push(Capture::start(&tn, "client", &tn.ns.client, "eth0"));
    for c in &mut captures {
        poll_until("tcpdump to listen", 40, Duration::from_millis(250), || c.listening());
    }

    // A rate-limited download through the tunnel, cut off by its time bound.
    let got = tn.dir.join("privacy-download.bin");
    let got_s = got.to_string_lossy().into_owned();
    let download_log = tn.dir.join("privacy-download.log");
    let max_time = DOWNLOAD_SECS.to_string();
    let mut download = Background::start_in_ns(
        "rate-limited download",
        &tn.ns.client,
        "curl",
        &[
            "-sS",
            "--noproxy",
            "*",
            "--fail",
            "--limit-rate",
            RATE,
            "--max-time",
            &max_time,
            "-o",
            &got_s,
            "-w",
            "http %{http_code}, %{size_download} bytes in %{time_total} s\n",
            DOWNLOAD_URL,
        ],
        &download_log,
        &[],
    );
    // Meanwhile one IPv6 request, if the exit in use carries IPv6.
    thread::sleep(Duration::from_secs(5));
    let v6_ok = if field(hops[2], "name") == "exit" {
        let body = "IPv6 through the tunnel\n";
        fs::write(tn.www().join("privacy-v6.txt"), body).expect("write privacy-v6.txt");
        let v6_got = tn.dir.join("privacy-v6.txt");
        let out = tn.curl_client(&format!("http://[{INET_SERVER_V6}]/privacy-v6.txt"), Some(&v6_got), 15);
        let ok = out.success() && fs::read_to_string(&v6_got).is_ok_and(|b| b == body);
        eprintln!(
            "[e2e] IPv6 request through the exit: {}",
            if ok { "answered" } else { "failed" }
        );
        if !ok {
            eprintln!("[e2e] {out}");
        }
        ok
    } else {
        eprintln!("[e2e] the exit in use has no IPv6: no IPv6 request");
        false
    };
    let status = poll_until(
        "the download to end",
        DOWNLOAD_SECS as u32 + 60,
        Duration::from_secs(1),
        || match download.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err(format!("still downloading: {}", tail(&download_log, 3))),
        },
    );
    let download_end = SystemTime::now();
    eprintln!(
        "[e2e] download ended after {:.1} s ({status}): {}",
        t0.elapsed().as_secs_f64(),
        tail(&download_log, 3)
    );
    // 0: the whole file came; 28: curl's time was up, as intended.
    assert!(
        matches!(status.code(), Some(0) | Some(28)),
        "the download failed: {status}: {}",
        tail(&download_log, 20)
    );
    let file = fs::read(tn.www().join("test.bin")).expect("the served test file");
    let downloaded = fs::read(&got).unwrap_or_else(|e| panic!("read {}: {e}", got.display()));
    assert!(
        downloaded.len() >= 4 << 20,
        "only {} bytes came through the tunnel in {DOWNLOAD_SECS} s",
        downloaded.len()
    );
    assert!(
        file.starts_with(&downloaded),
        "what came through the tunnel is not the served file's beginning"
    );

    // Idle: only the system's own traffic, until the session is long enough.
    let idle_until = (t0.elapsed() + IDLE).max(SESSION);
    thread::sleep(idle_until.saturating_sub(t0.elapsed()));
    let after = tn.status();
    assert_eq!(after["state"], "connected", "the session ended early: {after}");
    assert_eq!(
        circuit_ids(&after),
        ids,
        "the circuit changed during the session, so the roles captured are not its nodes' any more: {after}"
    );
    for c in &mut captures {
        c.tcpdump.assert_running();
        c.tcpdump.stop();
    }
    let session = t0.elapsed();
    eprintln!("[e2e] captured session: {:.1} s", session.as_secs_f64());
    assert!(
        session >= Duration::from_secs(90),
        "the session lasted only {session:?}"
    );

    // Read every capture.
    let step = (downloaded.len() - SAMPLE_LEN) / SAMPLES;
    let samples: Vec<&[u8]> = (0..SAMPLES)
        .map(|i| &downloaded[i * step..i * step + SAMPLE_LEN])
        .collect();
    let scanner = Scanner::new(&addrs, &samples);
    let (start_s, idle_s) = (epoch_secs(start), epoch_secs(download_end));
    let seen: Vec<Seen> = captures
        .iter()
        .map(|c| Seen::read(c, &addrs, &scanner, start_s, idle_s))
        .collect();
    for s in &seen {
        let counts = |v: &[Vec<String>]| {
            v.iter()
                .zip(&addrs)
                .map(|(l, a)| format!("{} {}", a.text, l.len()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "[e2e] {:<6} {} packets ({} after the download), {} bytes; tcpdump: {}",
            s.role, s.packets, s.idle_packets, s.bytes, s.tcpdump_says
        );
        eprintln!("[e2e] {:<6} lines naming: {}", s.role, counts(&s.lines));
        eprintln!("[e2e] {:<6} packets carrying: {}", s.role, counts(&s.raw));
        eprintln!(
            "[e2e] {:<6} file in plaintext: {} packets, {}/{SAMPLES} samples",
            s.role,
            s.plaintext.len(),
            s.samples_found
        );
        eprintln!(
            "[e2e] {:<6} link bytes: {} on the cell path, {} as QUIC",
            s.role, s.cell_bytes, s.quic_bytes
        );
    }
    let [guard_seen, middle_seen, exit_seen, client_seen] = &seen[..] else {
        panic!("four captures were read");
    };

    let mut failures = Vec::new();
    // Controls: each check below could have failed.
    let mut control = |ok: bool, what: String| {
        if !ok {
            failures.push(format!("control: {what}"));
        }
    };
    for s in [guard_seen, middle_seen, exit_seen] {
        control(
            s.bytes > downloaded.len(),
            format!(
                "the {} capture holds {} bytes, less than the {} bytes downloaded through it",
                s.role,
                s.bytes,
                downloaded.len()
            ),
        );
    }
    control(
        !guard_seen.lines[client_v4].is_empty() && !guard_seen.raw[client_v4].is_empty(),
        format!("the guard's capture does not show {}", addrs[client_v4].label()),
    );
    control(
        !exit_seen.lines[dest_v4].is_empty() && !exit_seen.raw[dest_v4].is_empty(),
        format!("the exit's capture does not show {}", addrs[dest_v4].label()),
    );
    control(
        !v6_ok || (!exit_seen.lines[dest_v6].is_empty() && !exit_seen.raw[dest_v6].is_empty()),
        format!(
            "the IPv6 request was answered, yet the exit's capture does not show {}",
            addrs[dest_v6].label()
        ),
    );
    control(
        exit_seen.samples_found >= SAMPLES / 2,
        format!(
            "the exit's capture holds only {}/{SAMPLES} samples of the file in plaintext",
            exit_seen.samples_found
        ),
    );
    control(
        !client_seen.lines[guard].is_empty(),
        format!("the client's uplink does not show {}", addrs[guard].label()),
    );

    // What each node must not see.
    let must_not = [
        (middle_seen, client_v4),
        (middle_seen, client_v6),
        (exit_seen, client_v4),
        (exit_seen, client_v6),
        (guard_seen, dest_v4),
        (guard_seen, dest_v6),
        (middle_seen, dest_v4),
        (middle_seen, dest_v6),
    ];
    for (s, a) in must_not {
        if !s.lines[a].is_empty() {
            failures.push(format!(
                "{} lines of the {}'s capture name {}:{}",
                s.lines[a].len(),
                s.role,
                addrs[a].label(),
                first(&s.lines[a])
            ));
        }
        if !s.raw[a].is_empty() {
            failures.push(format!(
                "{} packets of the {}'s capture carry {}:{}",
                s.raw[a].len(),
                s.role,
                addrs[a].label(),
                first(&s.raw[a])
            ));
        }
    }
    // Data rides the cell path on every link (the client's too); QUIC is
    // left with control, keep-alives and payments.
    for s in [middle_seen, client_seen] {
        if s.cell_bytes <= s.quic_bytes {
            failures.push(format!(
                "the {}'s links carried {} bytes on the cell path and {} as QUIC: the download did not take the cell path",
                s.role, s.cell_bytes, s.quic_bytes
            ));
        }
    }
    for s in [guard_seen, middle_seen] {
        if !s.plaintext.is_empty() {
            failures.push(format!(
                "{} packets of the {}'s capture carry the downloaded file in plaintext:{}",
                s.plaintext.len(),
                s.role,
                first(&s.plaintext)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} privacy check(s) failed over a {:.0} s session:\n  {}",
        failures.len(),
        session.as_secs_f64(),
        failures.join("\n  ")
    );
}
