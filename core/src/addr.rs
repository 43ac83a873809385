//! The SSRF deny list for origin addresses, as one data table ([`DENY_LIST`]) that
//! [`is_denied_ip`] walks and the Envoy RBAC generator renders ([`denied_networks`]), and the
//! rules both runtimes apply to the addresses an origin name resolved to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An IP network: an address and a prefix length (bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: up to 32 for IPv4, 128 for IPv6.
    pub len: u8,
}

impl IpNet {
    const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            len,
        }
    }

    const fn v6(segments: [u16; 8], len: u8) -> IpNet {
        let [a, b, c, d, e, f, g, h] = segments;
        IpNet {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            len,
        }
    }

    /// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a network of one address).
    ///
    /// # Errors
    /// A lower-case message: not an address, a prefix longer than the family allows, or host
    /// bits set (`10.0.0.1/8`, which names the network it is in ambiguously).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR (10.0.0.0/8, fd00::/8)"))?;
        let (bits, width): (u128, u8) = match addr {
            IpAddr::V4(ip) => (u128::from(u32::from(ip)), 32),
            IpAddr::V6(ip) => (u128::from(ip), 128),
        };
        let len = match len {
            None => width,
            Some(len) => match len.trim().parse::<u8>() {
                Ok(len) if len <= width => len,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {width}")),
            },
        };
        let host_bits = u32::from(width - len);
        let host_mask = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        if bits & host_mask != 0 {
            return Err(format!(
                "{text:?} has host bits set (write the network address)"
            ));
        }
        Ok(IpNet { addr, len })
    }

    /// Whether `ip` is inside this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.len)
            }
            _ => false,
        }
    }

    /// Whether `other` lies entirely inside this network.
    pub fn covers(&self, other: &IpNet) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

/// Whether the first `len` of `width` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, width: u32, len: u8) -> bool {
    let len = u32::from(len).min(width);
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (a >> shift) == (b >> shift)
}

/// What a [`DenyRule`] does to the addresses of its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyAction {
    /// Every address of the network is denied.
    Deny,
    /// The network is an IPv6 form that embeds an IPv4 address at this bit offset (mapped,
    /// translated, NAT64, 6to4): an address is denied exactly when the IPv4 address it embeds
    /// is, and allowed otherwise (later rules do not apply to it).
    EmbeddedV4 {
        /// Bit offset of the embedded IPv4 address from the start of the IPv6 address.
        offset: u8,
    },
}

/// One row of the deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyRule {
    /// The network the rule applies to.
    pub net: IpNet,
    /// What it does there.
    pub action: DenyAction,
    /// Why (for humans and generated configs).
    pub why: &'static str,
}

const fn deny(net: IpNet, why: &'static str) -> DenyRule {
    DenyRule {
        net,
        action: DenyAction::Deny,
        why,
    }
}

const fn embeds(net: IpNet, offset: u8, why: &'static str) -> DenyRule {
    DenyRule {
        net,
        action: DenyAction::EmbeddedV4 { offset },
        why,
    }
}

/// The deny list: every origin address that is not globally routable unicast. Rules are read
/// in order and the first whose network contains the address decides; an address no rule
/// contains is allowed.
pub const DENY_LIST: [DenyRule; 32] = [
    deny(IpNet::v4(0, 0, 0, 0, 8), "\"this network\", unspecified"),
    deny(IpNet::v4(10, 0, 0, 0, 8), "private"),
    deny(IpNet::v4(100, 64, 0, 0, 10), "carrier-grade nat"),
    deny(IpNet::v4(127, 0, 0, 0, 8), "loopback"),
    deny(
        IpNet::v4(169, 254, 0, 0, 16),
        "link-local (cloud metadata lives here)",
    ),
    deny(IpNet::v4(172, 16, 0, 0, 12), "private"),
    deny(IpNet::v4(192, 0, 0, 0, 24), "ietf protocol assignments"),
    deny(IpNet::v4(192, 0, 2, 0, 24), "documentation"),
    deny(IpNet::v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    deny(IpNet::v4(192, 168, 0, 0, 16), "private"),
    deny(IpNet::v4(198, 18, 0, 0, 15), "benchmarking"),
    deny(IpNet::v4(198, 51, 100, 0, 24), "documentation"),
    deny(IpNet::v4(203, 0, 113, 0, 24), "documentation"),
    deny(IpNet::v4(224, 0, 0, 0, 4), "multicast"),
    deny(IpNet::v4(240, 0, 0, 0, 4), "reserved, broadcast"),
    deny(IpNet::v4(255, 255, 255, 255, 32), "broadcast"),
    deny(
        IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "unspecified, loopback, deprecated ipv4-compatible",
    ),
    embeds(
        IpNet::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        96,
        "ipv4-mapped",
    ),
    embeds(
        IpNet::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
        96,
        "ipv4-translated",
    ),
    embeds(
        IpNet::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        96,
        "nat64 well-known prefix",
    ),
    deny(
        IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "nat64 local use",
    ),
    deny(IpNet::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard"),
    embeds(IpNet::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), 16, "6to4"),
    deny(IpNet::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "teredo"),
    deny(IpNet::v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), "orchid"),
    deny(IpNet::v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28), "orchid v2"),
    deny(
        IpNet::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
    ),
    deny(
        IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 8),
        "reserved by the ietf",
    ),
    deny(
        IpNet::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation",
    ),
    deny(IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local"),
    deny(
        IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 9),
        "link-local, site-local",
    ),
    deny(IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Whether `ip` is an address an origin must not have unless the source sets
/// `allow_private_origins`: the first rule of [`DENY_LIST`] that contains it decides.
pub fn is_denied_ip(ip: IpAddr) -> bool {
    for rule in DENY_LIST.iter() {
        if !rule.net.contains(ip) {
            continue;
        }
        return match (rule.action, ip) {
            (DenyAction::EmbeddedV4 { offset }, IpAddr::V6(v6)) => {
                let bits = u128::from(v6) >> (96 - u32::from(offset).min(96));
                // Only the low 32 bits of the shifted value are the embedded address.
                let v4 = Ipv4Addr::from((bits & u128::from(u32::MAX)) as u32);
                is_denied_ip(IpAddr::V4(v4))
            }
            // An IPv4 network never embeds anything: its rule denies.
            _ => true,
        };
    }
    false
}

/// One denied network as a generated allow/deny list must express it: every address of `net`
/// is denied except those inside one of `except` (an earlier rule decided them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedNetwork {
    /// The denied network.
    pub net: IpNet,
    /// Sub-networks of `net` that are not denied by this entry.
    pub except: Vec<IpNet>,
}

/// The deny list expanded into plain networks for a matcher that knows no rule order (Envoy's
/// RBAC `upstream_ip_port`): each IPv4-embedding rule becomes one network per denied IPv4
/// network it can embed, and a network that contains an earlier embedding rule lists it under
/// [`DeniedNetwork::except`]. An address is denied by the list exactly when it is inside some
/// entry's `net` and outside that entry's `except`.
pub fn denied_networks() -> Vec<DeniedNetwork> {
    let v4_denied: Vec<IpNet> = DENY_LIST
        .iter()
        .filter(|r| r.action == DenyAction::Deny && r.net.addr.is_ipv4())
        .map(|r| r.net)
        .collect();
    let mut out = Vec::new();
    let mut embedding: Vec<IpNet> = Vec::new();
    for rule in DENY_LIST.iter() {
        match rule.action {
            DenyAction::Deny => out.push(DeniedNetwork {
                net: rule.net,
                except: embedding
                    .iter()
                    .filter(|e| rule.net.covers(e))
                    .copied()
                    .collect(),
            }),
            DenyAction::EmbeddedV4 { offset } => {
                let IpAddr::V6(prefix) = rule.net.addr else {
                    continue;
                };
                for v4 in &v4_denied {
                    let IpAddr::V4(net4) = v4.addr else { continue };
                    let shift = 96 - u32::from(offset).min(96);
                    let addr = u128::from(prefix) | (u128::from(u32::from(net4)) << shift);
                    out.push(DeniedNetwork {
                        net: IpNet {
                            addr: IpAddr::V6(Ipv6Addr::from(addr)),
                            len: offset + v4.len,
                        },
                        except: Vec::new(),
                    });
                }
                embedding.push(rule.net);
            }
        }
    }
    out
}

/// The addresses where any rendering of [`DENY_LIST`] (such as [`denied_networks`] in a
/// generated config) is most likely to disagree with [`is_denied_ip`]: the first and last
/// address of every network of the list and their neighbours (wrapping at the ends of the
/// address space). For tests of such renderings.
pub fn boundary_probes() -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(DENY_LIST.len() * 4);
    for rule in DENY_LIST {
        let (base, width) = match rule.net.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (u128::from(a), 128u32),
        };
        let host_bits = width - u32::from(rule.net.len).min(width);
        let span = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        for x in [
            base.wrapping_sub(1),
            base,
            base + span,
            (base + span).wrapping_add(1),
        ] {
            out.push(match rule.net.addr {
                // Only the low 32 bits are an IPv4 address: wrapping there is intended.
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((x & u128::from(u32::MAX)) as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(x)),
            });
        }
    }
    out
}

/// The rule for the addresses an origin name resolved to: the answer is refused when **any**
/// address is denied (unless the source allows private origins). Skipping the denied ones
/// would let whoever controls the origin's DNS mix a private address into the answer and keep
/// probing; public origins never publish private addresses, so refusing costs nothing real.
pub fn resolved_addresses_allowed(
    addrs: impl IntoIterator<Item = IpAddr>,
    allow_private: bool,
) -> bool {
    allow_private || !addrs.into_iter().any(is_denied_ip)
}

/// Whether the address a runtime reports it connected to (`ip:port`, `[v6]:port` or a bare
/// IP) may have served a source that does not allow private origins. Anything that is not an
/// IP address counts as denied: a runtime that cannot say where it connected cannot show the
/// origin was public.
pub fn upstream_address_allowed(address: Option<&str>) -> bool {
    let Some(address) = address else {
        return false;
    };
    let ip = address
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse::<IpAddr>());
    match ip {
        Ok(ip) => !is_denied_ip(ip),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_strictly() {
        let net = IpNet::parse("10.0.0.0/8").expect("v4");
        assert!(net.contains("10.255.0.1".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let one = IpNet::parse("192.0.2.7").expect("bare");
        assert_eq!(one.len, 32);
        assert!(IpNet::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        assert_eq!(IpNet::parse("fd00::/8").expect("v6").len, 8);
        assert_eq!(IpNet::parse("::1").expect("v6 bare").len, 128);
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "fd00::1/8",
            "example.com",
            "10.0.0.0/",
            "",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

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

    /// Every address the tests use plus [`boundary_probes`].
    fn probes() -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = SAMPLES.iter().map(|s| s.parse().expect("ip")).collect();
        out.extend(boundary_probes());
        out
    }

    const SAMPLES: [&str; 12] = [
        "::ffff:8.8.8.8",
        "::ffff:10.0.0.1",
        "::ffff:0:10.0.0.1",
        "::ffff:0:8.8.8.8",
        "64:ff9b::808:808",
        "64:ff9b::a00:1",
        "2002:808:808::1",
        "2002:a00:1::1",
        "2002:c0a8:101::",
        "64:ff9b:2::1",
        "2001:30::1",
        "2001:1f::1",
    ];

    #[test]
    fn the_expanded_networks_deny_exactly_what_the_rules_deny() {
        let networks = denied_networks();
        for ip in probes() {
            let by_networks = networks
                .iter()
                .any(|n| n.net.contains(ip) && !n.except.iter().any(|e| e.contains(ip)));
            assert_eq!(by_networks, is_denied_ip(ip), "{ip}");
        }
        // ::/8 must leave the embedding prefixes to their own rules.
        let reserved = networks
            .iter()
            .find(|n| n.net == IpNet::v6([0; 8], 8))
            .expect("::/8");
        assert_eq!(reserved.except.len(), 3);
    }

    #[test]
    fn resolved_and_upstream_addresses_follow_the_list() {
        let public: IpAddr = "93.184.215.14".parse().expect("ip");
        let private: IpAddr = "10.0.0.7".parse().expect("ip");
        assert!(resolved_addresses_allowed([public], false));
        assert!(!resolved_addresses_allowed([public, private], false));
        assert!(resolved_addresses_allowed([private, public], true));
        for denied in [
            "127.0.0.1:80",
            "10.1.2.3:443",
            "169.254.169.254:80",
            "[::1]:443",
            "[::ffff:127.0.0.1]:80",
            "[fd00::1]:80",
            "127.0.0.1",
            "not an address",
            "",
        ] {
            assert!(!upstream_address_allowed(Some(denied)), "{denied}");
        }
        assert!(!upstream_address_allowed(None));
        for allowed in ["93.184.216.34:443", "[2606:4700::1111]:80", "8.8.8.8"] {
            assert!(upstream_address_allowed(Some(allowed)), "{allowed}");
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
