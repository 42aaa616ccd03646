//! Which IP addresses a webhook may be delivered to. A pure function, so that
//! the SSRF guard is tested as a table, without sending any traffic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True for every address that is not a public unicast address: loopback,
/// private, CGNAT, link-local (and so cloud metadata at 169.254.169.254),
/// unique-local (AWS's fd00:ec2::254), multicast, unspecified, broadcast,
/// documentation, benchmarking and reserved ranges. IPv6 forms that embed an
/// IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that address.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => is_blocked_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    const RANGES: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", incl. 0.0.0.0
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT (and Alibaba's 100.100.100.200 metadata)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, incl. 255.255.255.255
    ];
    RANGES.iter().any(|&(net, len)| in_v4(ip, net, len))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn embedded_v4(bits: u128) -> Ipv4Addr {
    Ipv4Addr::from((bits & 0xffff_ffff) as u32)
}

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let net = |s: &str| s.parse::<Ipv6Addr>().expect("valid network literal");
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (translated) and ::a.b.c.d
    // (compatible, deprecated).
    if in_v6(ip, net("::ffff:0:0"), 96) || in_v6(ip, net("::ffff:0:0:0"), 96) || in_v6(ip, net("::"), 96) {
        return is_blocked_v4(embedded_v4(bits));
    }
    // NAT64 well-known prefix: judged by the IPv4 address it reaches.
    if in_v6(ip, net("64:ff9b::"), 96) {
        return is_blocked_v4(embedded_v4(bits));
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if in_v6(ip, net("2002::"), 16) {
        return is_blocked_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    const RANGES: &[(&str, u32)] = &[
        ("64:ff9b:1::", 48), // local-use NAT64
        ("100::", 64),       // discard
        ("2001::", 23),      // IETF protocol assignments (Teredo, ORCHID, ...)
        ("2001:db8::", 32),  // documentation
        ("3fff::", 20),      // documentation
        ("fc00::", 7),       // unique-local (incl. fd00:ec2::254)
        ("fe80::", 10),      // link-local
        ("fec0::", 10),      // site-local (deprecated)
        ("ff00::", 8),       // multicast
    ];
    RANGES.iter().any(|&(n, len)| in_v6(ip, net(n), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_blocked() {
        let blocked = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.100.100.200",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for a in blocked {
            assert!(is_blocked(a.parse().unwrap()), "{a} should be blocked");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for a in allowed {
            assert!(!is_blocked(a.parse().unwrap()), "{a} should be allowed");
        }
    }
}
