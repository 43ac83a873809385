//! The RBAC HTTP filter that refuses origins whose *resolved* address is on the core's deny list.
//!
//! The core only sees the origin URL, so it can refuse private IP literals and `localhost` but
//! not a public-looking name that resolves to a private address. This filter runs after the
//! dynamic forward proxy, which saves the address it resolved, and denies the request before
//! Envoy connects unless the Wasm filter marked it with [`ALLOW_PRIVATE_HEADER`] (the source has
//! `allow_private_origins`). The networks are [`denied_networks`], the core's deny list expanded
//! for a matcher without rule order; the generator adds none of its own.

use ixproxy_core::addr::{denied_networks, DeniedNetwork, IpNet};
use ixproxy_core::envoy::{ALLOW_PRIVATE_HEADER, PRIVATE_ORIGIN_POLICY as POLICY};
use serde_yaml::Value;

use crate::typed;

/// The `envoy.filters.http.rbac` entry: deny when the allow-private marker is absent and the
/// upstream address is in one of the denied networks.
pub(crate) fn private_origin_filter() -> Value {
    let networks: Vec<Value> = denied_networks().iter().map(network_rule).collect();
    map! {
        "name" => "envoy.filters.http.rbac",
        "typed_config" => typed("envoy.extensions.filters.http.rbac.v3.RBAC", map! {
            "rules" => map! {
                "action" => "DENY",
                "policies" => map! {
                    POLICY => map! {
                        "permissions" => vec![map! {
                            "and_rules" => map! {
                                "rules" => vec![
                                    map! {
                                        "not_rule" => map! {
                                            "header" => map! {
                                                "name" => ALLOW_PRIVATE_HEADER,
                                                "present_match" => true,
                                            },
                                        },
                                    },
                                    map! { "or_rules" => map! { "rules" => networks } },
                                ],
                            },
                        }],
                        "principals" => vec![map! { "any" => true }],
                    },
                },
            },
        }),
    }
}

/// One denied network as a permission: the network itself, or, when an earlier rule of the deny
/// list decides some of its addresses, the network and none of its exceptions.
fn network_rule(network: &DeniedNetwork) -> Value {
    if network.except.is_empty() {
        return upstream_ip(&network.net);
    }
    let rules: Vec<Value> = std::iter::once(upstream_ip(&network.net))
        .chain(
            network
                .except
                .iter()
                .map(|except| map! { "not_rule" => upstream_ip(except) }),
        )
        .collect();
    map! { "and_rules" => map! { "rules" => rules } }
}

/// A permission matching upstream addresses inside `net`.
fn upstream_ip(net: &IpNet) -> Value {
    map! {
        "matcher" => map! {
            "name" => "envoy.rbac.matchers.upstream_ip_port",
            "typed_config" => typed(
                "envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher",
                map! {
                    "upstream_ip" => map! {
                        "address_prefix" => net.addr.to_string(),
                        "prefix_len" => u32::from(net.len),
                    },
                },
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use ixproxy_core::addr::{boundary_probes, is_denied_ip};

    use super::*;

    /// Whether the rendered permission `rule` matches a request to `ip` with or without the
    /// allow-private marker: an evaluator of the RBAC permission subset the filter uses.
    fn matches(rule: &Value, ip: IpAddr, marked: bool) -> bool {
        if let Some(rules) = rule["and_rules"]["rules"].as_sequence() {
            return rules.iter().all(|r| matches(r, ip, marked));
        }
        if let Some(rules) = rule["or_rules"]["rules"].as_sequence() {
            return rules.iter().any(|r| matches(r, ip, marked));
        }
        if let Some(inner) = rule.get("not_rule") {
            return !matches(inner, ip, marked);
        }
        if rule["header"]["name"] == ALLOW_PRIVATE_HEADER {
            return marked;
        }
        let prefix = &rule["matcher"]["typed_config"]["upstream_ip"];
        let addr: IpAddr = prefix["address_prefix"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not a rendered rule: {rule:?}"));
        let len = prefix["prefix_len"]
            .as_u64()
            .and_then(|l| u8::try_from(l).ok())
            .expect("prefix_len");
        IpNet { addr, len }.contains(ip)
    }

    /// The first and last address of every network of the deny list, their neighbours, and a
    /// few public and embedded addresses.
    fn probes() -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = [
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "::ffff:127.0.0.1",
            "64:ff9b::808:808",
            "64:ff9b::a00:1",
            "2002:808:808::1",
            "2002:c0a8:101::",
            "2606:4700::1111",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        out.extend(boundary_probes());
        out
    }

    #[test]
    fn the_rendered_policy_denies_what_the_core_denies_unless_marked() {
        let filter = private_origin_filter();
        let policy = &filter["typed_config"]["rules"]["policies"][POLICY];
        assert_eq!(filter["typed_config"]["rules"]["action"], "DENY");
        assert_eq!(policy["principals"][0]["any"], true);
        let permission = &policy["permissions"][0];
        for ip in probes() {
            assert_eq!(matches(permission, ip, false), is_denied_ip(ip), "{ip}");
            assert!(
                !matches(permission, ip, true),
                "{ip} denied despite the marker"
            );
        }
        let rules = permission["and_rules"]["rules"][1]["or_rules"]["rules"]
            .as_sequence()
            .expect("network rules");
        assert_eq!(rules.len(), denied_networks().len(), "one rule per network");
    }
}
