//! The SSRF deny list for origin addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges an origin must not be in: everything that is not globally routable unicast.
const DENIED_V4: [([u8; 4], u8); 16] = [
    ([0, 0, 0, 0], 8),       // "this network", unspecified
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // CGNAT
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata lives here)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation
    ([203, 0, 113, 0], 24),  // documentation
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, broadcast
    ([255, 255, 255, 255], 32),
];

/// Whether `ip` is an address an origin must not have unless the source sets
/// `allow_private_origins`: private, loopback, link-local, CGNAT, ULA, multicast, unspecified,
/// broadcast, documentation/benchmark/reserved ranges, and IPv6 forms that embed an IPv4
/// address (mapped, compatible, NAT64, 6to4) when the embedded address is denied.
pub fn is_denied_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_denied_v4(v4),
        IpAddr::V6(v6) => is_denied_v6(v6),
    }
}

fn is_denied_v4(ip: Ipv4Addr) -> bool {
    let addr = u32::from(ip);
    DENIED_V4.iter().any(|(net, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        addr & mask == u32::from(Ipv4Addr::from(*net)) & mask
    })
}

fn is_denied_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match seg {
        // ::/96 covers unspecified, loopback and the deprecated IPv4-compatible form.
        [0, 0, 0, 0, 0, 0, _, _] => true,
        // IPv4-mapped ::ffff:a.b.c.d and IPv4-translated ::ffff:0:a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0xffff, 0, hi, lo] => {
            is_denied_v4(embedded_v4(hi, lo))
        }
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => is_denied_v4(embedded_v4(hi, lo)),
        // NAT64 local-use 64:ff9b:1::/48 and the discard prefix 100::/64.
        [0x64, 0xff9b, 1, ..] | [0x100, 0, 0, 0, ..] => true,
        // 6to4 2002::/16 embeds an IPv4 address in bits 16..48.
        [0x2002, hi, lo, ..] => is_denied_v4(embedded_v4(hi, lo)),
        // Teredo 2001::/32, ORCHID 2001:10::/28 and 2001:20::/28, documentation 2001:db8::/32.
        [0x2001, 0, ..] | [0x2001, 0x0db8, ..] => true,
        [0x2001, b, ..] if (0x10..=0x2f).contains(&b) => true,
        // The rest of ::/8 is reserved by the IETF.
        [a, ..] if a & 0xff00 == 0 => true,
        // Documentation 3fff::/20.
        [a, ..] if a & 0xfff0 == 0x3ff0 => true,
        // ULA fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8.
        [a, ..] => {
            a & 0xfe00 == 0xfc00
                || a & 0xffc0 == 0xfe80
                || a & 0xffc0 == 0xfec0
                || a & 0xff00 == 0xff00
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(s: &str) -> bool {
        is_denied_ip(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn denies_non_public_addresses() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
            "100::1",
            "::2:1:1",
        ] {
            assert!(denied(ip), "{ip} must be denied");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!denied(ip), "{ip} must be allowed");
        }
    }
}
