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
    fn rejects_garbage_without_panicking() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x45; 10]), None);
        assert_eq!(parse(&[0x4f; 20]), None); // IHL larger than the packet
        assert_eq!(parse(&[0x60; 39]), None);
        assert_eq!(parse(&[0x20; 60]), None);
    }
}
