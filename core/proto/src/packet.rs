//! Read-only views of the IP headers Hopwire needs to route and police packets.
//!
//! Only the fields the exit policy and the session table look at are parsed;
//! nothing here allocates or copies. Malformed packets give `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers we care about.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The addressing facts of one IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (after IPv6 extension headers are not followed: the
    /// first next-header value).
    pub protocol: u8,
    /// Destination port for TCP and UDP when the transport header is present
    /// in this packet (first fragment); `None` otherwise.
    pub dst_port: Option<u16>,
}

/// Parses the IPv4 or IPv6 header at the start of `packet`.
pub fn parse(packet: &[u8]) -> Option<PacketInfo> {
    match packet.first()? >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        _ => None,
    }
}

fn parse_v4(p: &[u8]) -> Option<PacketInfo> {
    if p.len() < 20 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    let protocol = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let fragment_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    let dst_port = if fragment_offset == 0 {
        transport_dst_port(protocol, &p[ihl..])
    } else {
        None
    };
    Some(PacketInfo {
        src: src.into(),
        dst: dst.into(),
        protocol,
        dst_port,
    })
}

fn parse_v6(p: &[u8]) -> Option<PacketInfo> {
    if p.len() < 40 {
        return None;
    }
    let protocol = p[6];
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    Some(PacketInfo {
        src: Ipv6Addr::from(src).into(),
        dst: Ipv6Addr::from(dst).into(),
        protocol,
        dst_port: transport_dst_port(protocol, &p[40..]),
    })
}

fn transport_dst_port(protocol: u8, l4: &[u8]) -> Option<u16> {
    match protocol {
        PROTO_TCP | PROTO_UDP if l4.len() >= 4 => Some(u16::from_be_bytes([l4[2], l4[3]])),
        _ => None,
    }
}

/// Writes into `out` an ICMPv4 "destination unreachable, communication
/// administratively prohibited" from `from` answering `original`, and returns
/// its length. Nothing is written for IPv6 packets, later fragments, or ICMP
/// errors (an error never answers an error).
pub fn icmp_prohibited(from: Ipv4Addr, original: &[u8], out: &mut [u8]) -> Option<usize> {
    let info = parse(original)?;
    let IpAddr::V4(to) = info.src else { return None };
    let ihl = usize::from(original[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([original[6], original[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return None;
    }
    if info.protocol == PROTO_ICMP && original.get(ihl).is_some_and(|&t| t != 8) {
        return None;
    }
    let quoted = original.len().min(ihl + 8);
    let total = 20 + 8 + quoted;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&to.octets());
    let sum = checksum(&out[..20]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    out[20] = 3; // destination unreachable
    out[21] = 13; // communication administratively prohibited
    out[28..].copy_from_slice(&original[..quoted]);
    let sum = checksum(&out[20..]);
    out[22..24].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4 header + UDP header.
    pub(crate) fn udp_v4(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&5555u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn parses_ipv4_udp() {
        let p = udp_v4([10, 0, 0, 1], [198, 18, 0, 10], 53);
        let info = parse(&p).expect("valid packet");
        assert_eq!(info.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(info.dst, IpAddr::from([198, 18, 0, 10]));
        assert_eq!(info.protocol, PROTO_UDP);
        assert_eq!(info.dst_port, Some(53));
    }

    #[test]
    fn later_fragments_have_no_port() {
        let mut p = udp_v4([10, 0, 0, 1], [198, 18, 0, 10], 53);
        p[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse(&p).expect("valid").dst_port, None);
    }

    #[test]
    fn icmp_prohibited_answers_the_sender() {
        let p = udp_v4([100, 87, 0, 2], [10, 0, 0, 1], 80);
        let mut out = [0u8; 128];
        let n = icmp_prohibited(Ipv4Addr::new(100, 87, 0, 1), &p, &mut out).expect("answer");
        let reply = &out[..n];
        let info = parse(reply).expect("valid IPv4");
        assert_eq!(info.src, IpAddr::from([100, 87, 0, 1]));
        assert_eq!(info.dst, IpAddr::from([100, 87, 0, 2]));
        assert_eq!(info.protocol, PROTO_ICMP);
        assert_eq!((reply[20], reply[21]), (3, 13));
        assert_eq!(checksum(&reply[..20]), 0, "IP header checksum verifies");
        assert_eq!(checksum(&reply[20..]), 0, "ICMP checksum verifies");
        assert_eq!(&reply[28..], &p[..28], "quotes the header and 8 bytes");
        // Never an error about an error.
        assert_eq!(
            icmp_prohibited(Ipv4Addr::new(100, 87, 0, 1), reply, &mut [0u8; 128]),
            None
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x45; 10]), None);
        assert_eq!(parse(&[0x4f; 20]), None); // IHL larger than the packet
        assert_eq!(parse(&[0x60; 39]), None);
        assert_eq!(parse(&[0x20; 60]), None);
    }
}
