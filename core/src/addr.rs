//! The SSRF deny list for origin addresses.

use std::net::IpAddr;

/// Whether `ip` is an address an origin must not have unless the source sets
/// `allow_private_origins`: private, loopback, link-local, CGNAT, ULA, multicast, unspecified,
/// broadcast, documentation/benchmark/reserved ranges, and IPv4-mapped/compatible IPv6 forms of
/// any of those.
pub fn is_denied_ip(ip: IpAddr) -> bool {
    let _ = ip;
    todo!()
}
