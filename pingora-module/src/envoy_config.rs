//! `ixproxy envoy-config`: the Envoy v3 bootstrap that runs the ixproxy Wasm filter for the same
//! YAML file the native gateway serves (SPEC §7, §8).
//!
//! The generated Envoy listens on `listen`, serves its admin API on `admin_listen`, runs the Wasm
//! filter (which decides and rewrites the request), then Envoy's dynamic forward proxy, which
//! resolves the origin host the filter put in `:authority`. Two dynamic-forward-proxy clusters
//! share one DNS cache: a plain one and a TLS one (SNI and certificate names from the origin
//! host, trusted CAs = system roots plus `upstream.ca_file`). The filter picks one with the
//! `x-ixproxy-upstream` request header; the routes match only on that header and strip it.
//!
//! Secrets never enter the bootstrap as values: `{env: NAME}` stays a reference in the filter's
//! JSON configuration and `NAME` is listed in `vm_config.environment_variables.host_env_keys`,
//! so Envoy copies the variable from its own environment into the Wasm VM. Literal secrets stay
//! where the user wrote them. `{file: PATH}` is refused: the filter cannot read files.

use std::cell::RefCell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ixproxy_core::config::Limits;
use ixproxy_core::config::{
    DeferredSecrets, RawConfig, RawPluginConfig, RawUpstream, SecretResolver,
};
use ixproxy_core::envoy::{
    ALLOW_PRIVATE_HEADER, FORWARDED_PROTO, LOCATION_HEADER, OUTCOME_TAG_NAME, OUTCOME_TAG_REGEX,
    UPSTREAM_HEADER, UPSTREAM_ROOT_ID,
};
use ixproxy_core::ConfigError;
use serde_yaml::{Mapping, Value};

/// The system CA bundle trusted for https origins (Debian/Ubuntu/Alpine path).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Cluster for `https` origins.
const TLS_CLUSTER: &str = "ixproxy_origin_tls";
/// Cluster for `http` origins.
const PLAIN_CLUSTER: &str = "ixproxy_origin_plain";
/// DNS cache shared by the dynamic forward proxy filter and both clusters.
const DNS_CACHE: &str = "ixproxy_dns_cache";
/// Envoy response flags meaning "the origin could not be reached or gave no usable answer"
/// (connection or TLS failure, no resolved host, DNS failure, connection closed or reset before
/// a response, protocol error such as oversized response headers): SPEC §6 says 502, Envoy
/// answers 503 for most of them by default.
const UNREACHABLE_FLAGS: [&str; 6] = ["UF", "UH", "DF", "UC", "UR", "UPE"];

/// Body of the 403 for an origin name that resolved to a private address (the core's reason for
/// a private IP literal).
const PRIVATE_ORIGIN_REASON: &str = "origin address is private, loopback or otherwise not public\n";

/// IPv4 ranges an origin address must not be in; mirrors the private list of
/// `ixproxy_core::addr::is_denied_ip` (a test checks each range against it).
const DENIED_V4: [([u8; 4], u8); 16] = [
    ([0, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([100, 64, 0, 0], 10),
    ([127, 0, 0, 0], 8),
    ([169, 254, 0, 0], 16),
    ([172, 16, 0, 0], 12),
    ([192, 0, 0, 0], 24),
    ([192, 0, 2, 0], 24),
    ([192, 88, 99, 0], 24),
    ([192, 168, 0, 0], 16),
    ([198, 18, 0, 0], 15),
    ([198, 51, 100, 0], 24),
    ([203, 0, 113, 0], 24),
    ([224, 0, 0, 0], 4),
    ([240, 0, 0, 0], 4),
    ([255, 255, 255, 255], 32),
];

/// IPv6 ranges denied whatever they embed (unspecified/loopback/compatible, NAT64 local-use,
/// discard, Teredo, ORCHID, documentation, ULA, link-local, site-local, multicast).
const DENIED_V6: [(&str, u8); 12] = [
    ("::", 96),
    ("64:ff9b:1::", 48),
    ("100::", 64),
    ("2001::", 32),
    ("2001:10::", 28),
    ("2001:20::", 28),
    ("2001:db8::", 32),
    ("3fff::", 20),
    ("fc00::", 7),
    ("fe80::", 10),
    ("fec0::", 10),
    ("ff00::", 8),
];

/// `::/8` is reserved and denied too, except the embedding prefixes of [`EMBEDDING_V6`], which
/// are denied only for denied IPv4 addresses.
const RESERVED_V6: (&str, u8) = ("::", 8);

/// IPv6 prefixes (/96) that embed an IPv4 address in their last 32 bits: denied exactly when
/// the embedded address is (IPv4-mapped, IPv4-translated, NAT64 well-known).
const EMBEDDING_V6: [[u16; 6]; 3] = [
    [0, 0, 0, 0, 0, 0xffff],
    [0, 0, 0, 0, 0xffff, 0],
    [0x64, 0xff9b, 0, 0, 0, 0],
];

/// A YAML mapping whose keys keep the order written (Envoy configs read top-down: `name` first).
macro_rules! map {
    ($($key:literal => $value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut mapping = Mapping::new();
        $(mapping.insert(Value::from($key), Value::from($value));)*
        Value::Mapping(mapping)
    }};
}

/// Why no Envoy config could be generated.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyConfigError {
    /// The ixproxy config is invalid (the message names the field), including `{file: PATH}`
    /// secrets, which the Envoy filter cannot read.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// `upstream.ca_file` could not be read.
    #[error("upstream.ca_file: cannot read {path}: {source}")]
    CaFile {
        /// The path as resolved against the config file's directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The wasm path could not be made absolute.
    #[error("--wasm: cannot make {path} absolute: {source}")]
    WasmPath {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML serialization failed (not expected for the values built here).
    #[error("cannot write the envoy config: {0}")]
    Serialize(String),
}

/// Generates the Envoy bootstrap (YAML) for the ixproxy config `config_yaml`.
///
/// `config_dir` is the directory a relative `upstream.ca_file` is read from; pass the current
/// directory to read it the way `ixproxy serve` does (as written, relative to where it runs).
/// `wasm_path` is where Envoy will find the built filter (`ixproxy_filter.wasm`); a
/// relative path is made absolute against the current directory. The file is not opened, so a
/// config can be generated for another machine or a container path.
///
/// # Errors
/// An invalid config (the field is named), a `{file: PATH}` secret, an unreadable
/// `upstream.ca_file`, or a wasm path that cannot be made absolute.
pub fn generate(
    config_yaml: &str,
    config_dir: &Path,
    wasm_path: &Path,
) -> Result<String, EnvoyConfigError> {
    generate_with_system_ca(
        config_yaml,
        config_dir,
        wasm_path,
        Path::new(SYSTEM_CA_BUNDLE),
    )
}

/// [`generate`] with the system CA bundle location as a parameter (tests use a fake one).
fn generate_with_system_ca(
    config_yaml: &str,
    config_dir: &Path,
    wasm_path: &Path,
    system_ca: &Path,
) -> Result<String, EnvoyConfigError> {
    let raw = RawConfig::from_yaml(config_yaml)?;
    // The filter needs the sources and the request-path limits, and the timeout (which it
    // spreads over redirect hops); Envoy's clusters carry the CA file and connect timeout.
    let plugin_json = serde_json::to_string(&RawPluginConfig {
        sources: raw.sources.clone(),
        upstream: RawUpstream {
            timeout: raw.upstream.timeout.clone(),
            max_redirects: raw.upstream.max_redirects,
            max_body_bytes: raw.upstream.max_body_bytes,
            ..RawUpstream::default()
        },
        limits: raw.limits.clone(),
    })
    .map_err(|e| EnvoyConfigError::Serialize(e.to_string()))?;
    let secrets = RecordingSecrets::default();
    let config = raw.validate(&secrets)?;
    let env_keys = secrets.names.into_inner();

    let wasm_path =
        std::path::absolute(wasm_path).map_err(|source| EnvoyConfigError::WasmPath {
            path: wasm_path.to_owned(),
            source,
        })?;
    let trusted_ca = trusted_ca(config.upstream.ca_file.as_deref(), config_dir, system_ca)?;

    let bootstrap = bootstrap(&Parts {
        limits: *config.sources.limits(),
        listen: config.listen,
        admin_listen: config.admin_listen,
        connect_timeout: config.upstream.connect_timeout,
        timeout: config.upstream.timeout,
        plugin_json,
        env_keys,
        wasm_path,
        trusted_ca,
    });
    let yaml = serde_yaml::to_string(&bootstrap)
        .map_err(|e| EnvoyConfigError::Serialize(e.to_string()))?;
    Ok(format!(
        "# Envoy bootstrap generated by `ixproxy envoy-config`; edit the ixproxy config and\n\
         # regenerate rather than editing this file.\n{yaml}"
    ))
}

/// Resolves `{env: NAME}` like [`DeferredSecrets`] (a placeholder, the value belongs to Envoy's
/// environment) and remembers each `NAME`, in config order, for `host_env_keys`.
#[derive(Debug, Default)]
struct RecordingSecrets {
    names: RefCell<Vec<String>>,
}

impl SecretResolver for RecordingSecrets {
    fn env(&self, name: &str) -> Result<String, String> {
        let mut names = self.names.borrow_mut();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        DeferredSecrets.env(name)
    }

    fn file(&self, path: &str) -> Result<String, String> {
        DeferredSecrets.file(path)
    }
}

/// `trusted_ca` of the TLS cluster: the system bundle alone (referenced by path, checked when
/// Envoy starts, like the wasm path, so a config can target another machine); with
/// `upstream.ca_file`, both concatenated inline when the system bundle is readable here,
/// otherwise `ca_file` alone.
fn trusted_ca(
    ca_file: Option<&str>,
    config_dir: &Path,
    system_ca: &Path,
) -> Result<Value, EnvoyConfigError> {
    let Some(ca_file) = ca_file else {
        return Ok(map! { "filename" => system_ca.to_string_lossy().into_owned() });
    };
    let extra_path = config_dir.join(ca_file);
    // Read now so a missing file fails here rather than when Envoy starts.
    let extra = read_pem(&extra_path)?;
    match std::fs::read_to_string(system_ca) {
        Ok(mut pem) => {
            if !pem.is_empty() && !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(&extra);
            Ok(map! { "inline_string" => pem })
        }
        Err(_) => {
            let path = std::path::absolute(&extra_path).unwrap_or(extra_path);
            Ok(map! { "filename" => path.to_string_lossy().into_owned() })
        }
    }
}

fn read_pem(path: &Path) -> Result<String, EnvoyConfigError> {
    std::fs::read_to_string(path).map_err(|source| EnvoyConfigError::CaFile {
        path: path.to_owned(),
        source,
    })
}

/// Everything the bootstrap depends on.
struct Parts {
    limits: Limits,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    connect_timeout: Duration,
    timeout: Duration,
    plugin_json: String,
    env_keys: Vec<String>,
    wasm_path: PathBuf,
    trusted_ca: Value,
}

/// Envoy's JSON form of a duration (`3s`, `0.500000000s`).
fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

fn socket_address(addr: SocketAddr) -> Value {
    map! {
        "socket_address" => map! {
            "address" => addr.ip().to_string(),
            "port_value" => addr.port(),
        },
    }
}

fn typed(type_name: &str, mut fields: Value) -> Value {
    let mut mapping = Mapping::new();
    mapping.insert(
        "@type".into(),
        format!("type.googleapis.com/{type_name}").into(),
    );
    if let Value::Mapping(fields) = &mut fields {
        mapping.extend(std::mem::take(fields));
    }
    Value::Mapping(mapping)
}

fn strings(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(*s)).collect())
}

fn dns_cache() -> Value {
    map! { "name" => DNS_CACHE, "dns_lookup_family" => "V4_PREFERRED" }
}

/// Origin redirect statuses Envoy follows internally (the core's `is_followed_redirect`).
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

/// One route per origin scheme. It matches on `:scheme`, which the filter sets from the origin
/// URL, rather than on a filter-set header: headers the route strips are removed from the
/// request in place, so Envoy would find no route for the request it recreates to follow a
/// redirect. Every request reaches these routes only after the filter rejected or rewrote it.
///
/// Redirects are Envoy internal redirects: the recreated request goes through the whole filter
/// chain again (the filter re-validates the hop, the dynamic forward proxy resolves the new
/// host, RBAC checks its address); the origin's `Location` is copied into the request for the
/// filter. No predicate is set: the filter is the policy.
fn route(scheme: &str, cluster: &str, p: &Parts) -> Value {
    map! {
        "match" => map! {
            "prefix" => "/",
            "headers" => vec![map! {
                "name" => ":scheme",
                "string_match" => map! { "exact" => scheme },
            }],
        },
        "route" => map! {
            "cluster" => cluster,
            "timeout" => duration(p.timeout),
            "internal_redirect_policy" => map! {
                "max_internal_redirects" => p.limits.max_redirects,
                "redirect_response_codes" => Value::Sequence(
                    REDIRECT_CODES.iter().map(|c| Value::from(*c)).collect(),
                ),
                "response_headers_to_copy" => strings(&[LOCATION_HEADER, FORWARDED_PROTO]),
                "allow_cross_scheme_redirect" => true,
            },
        },
        // Not `x-forwarded-proto` (see FORWARDED_PROTO): the upstream filter removes it.
        "request_headers_to_remove" => strings(&[UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER]),
    }
}

/// `max_request_headers_kb` for the listener: large enough that the filter's own limits (431 for
/// headers, 414 for the target) are what clients see, Envoy's codec limit only beyond them
/// (pseudo-headers and Envoy's own additions need room too). Envoy accepts at most 8192.
fn max_request_headers_kb(limits: &Limits) -> u64 {
    let bytes = limits.max_request_header_bytes as u64 + limits.max_request_target_bytes as u64;
    (bytes / 1024 + 9).min(8192)
}

/// The router's upstream filters: the filter's upstream role, then the codec (required last).
fn upstream_http_filters(p: &Parts) -> Value {
    let mut location = wasm_filter(p);
    let config = &mut location["typed_config"]["config"];
    config["name"] = UPSTREAM_ROOT_ID.into();
    config["root_id"] = UPSTREAM_ROOT_ID.into();
    if let Value::Mapping(config) = config {
        config.remove("configuration");
    }
    Value::Sequence(vec![
        location,
        map! {
            "name" => "envoy.filters.http.upstream_codec",
            "typed_config" => typed(
                "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                Mapping::new().into(),
            ),
        },
    ])
}

fn wasm_filter(p: &Parts) -> Value {
    let mut vm_config = map! {
        "vm_id" => "ixproxy",
        "runtime" => "envoy.wasm.runtime.v8",
        "code" => map! {
            "local" => map! { "filename" => p.wasm_path.to_string_lossy().into_owned() },
        },
    };
    if !p.env_keys.is_empty() {
        vm_config["environment_variables"] = map! {
            "host_env_keys" => Value::Sequence(p.env_keys.iter().map(|k| k.as_str().into()).collect()),
        };
    }
    map! {
        "name" => "envoy.filters.http.wasm",
        "typed_config" => typed("envoy.extensions.filters.http.wasm.v3.Wasm", map! {
            "config" => map! {
                "name" => "ixproxy",
                "root_id" => "ixproxy",
                "failure_policy" => "FAIL_CLOSED",
                "configuration" => typed("google.protobuf.StringValue", map! {
                    "value" => p.plugin_json.as_str(),
                }),
                "vm_config" => vm_config,
            },
        }),
    }
}

fn upstream_ip(address: String, prefix_len: u8) -> Value {
    map! {
        "matcher" => map! {
            "name" => "envoy.rbac.matchers.upstream_ip_port",
            "typed_config" => typed(
                "envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher",
                map! {
                    "upstream_ip" => map! {
                        "address_prefix" => address,
                        "prefix_len" => u32::from(prefix_len),
                    },
                },
            ),
        },
    }
}

/// Every denied origin address range as `(prefix, length)`, except [`RESERVED_V6`] (which
/// [`private_origin_filter`] matches minus the embedding prefixes).
fn denied_ranges() -> Vec<(String, u8)> {
    let mut ranges: Vec<(String, u8)> = DENIED_V4
        .iter()
        .map(|(net, len)| (Ipv4Addr::from(*net).to_string(), *len))
        .collect();
    for prefix in EMBEDDING_V6 {
        for (net, len) in DENIED_V4 {
            let mut seg = [0u16; 8];
            seg[..6].copy_from_slice(&prefix);
            seg[6] = u16::from_be_bytes([net[0], net[1]]);
            seg[7] = u16::from_be_bytes([net[2], net[3]]);
            ranges.push((Ipv6Addr::from(seg).to_string(), 96 + len));
        }
    }
    // 6to4 (2002::/16) carries the IPv4 address in bits 16..48.
    for (net, len) in DENIED_V4 {
        let hi = u16::from_be_bytes([net[0], net[1]]);
        let lo = u16::from_be_bytes([net[2], net[3]]);
        let seg = [0x2002, hi, lo, 0, 0, 0, 0, 0];
        ranges.push((Ipv6Addr::from(seg).to_string(), 16 + len));
    }
    ranges.extend(DENIED_V6.iter().map(|(net, len)| ((*net).to_owned(), *len)));
    ranges
}

/// RBAC filter (after the dynamic forward proxy, which saves the resolved origin address) that
/// refuses private, loopback and otherwise non-public origin addresses with 403 unless the Wasm
/// filter marked the request with [`ALLOW_PRIVATE_HEADER`]. The core only sees IP literals; this
/// closes the gap for names that resolve to such addresses.
fn private_origin_filter() -> Value {
    let mut rules: Vec<Value> = denied_ranges()
        .into_iter()
        .map(|(net, len)| upstream_ip(net, len))
        .collect();
    let mut rest_rules = vec![upstream_ip(RESERVED_V6.0.to_owned(), RESERVED_V6.1)];
    for prefix in EMBEDDING_V6 {
        let mut seg = [0u16; 8];
        seg[..6].copy_from_slice(&prefix);
        rest_rules.push(map! { "not_rule" => upstream_ip(Ipv6Addr::from(seg).to_string(), 96) });
    }
    rules.push(map! { "and_rules" => map! { "rules" => rest_rules } });
    map! {
        "name" => "envoy.filters.http.rbac",
        "typed_config" => typed("envoy.extensions.filters.http.rbac.v3.RBAC", map! {
            "rules" => map! {
                "action" => "DENY",
                "policies" => map! {
                    "ixproxy-private-origin-address" => map! {
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
                                    map! { "or_rules" => map! { "rules" => rules } },
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

fn http_connection_manager(p: &Parts) -> Value {
    typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        map! {
            "stat_prefix" => "ixproxy",
            "codec_type" => "AUTO",
            "generate_request_id" => false,
            "max_request_headers_kb" => max_request_headers_kb(&p.limits),
            // Envoy's codec counts the headers it received; room for a few more than the
            // filter's own limit so the filter's 431 is what clients see.
            "common_http_protocol_options" => map! {
                "max_headers_count" => p.limits.max_request_headers as u64 + 16,
            },
            // The signature covers the raw request target: never rewrite it.
            "normalize_path" => false,
            "merge_slashes" => false,
            "path_with_escaped_slashes_action" => "KEEP_UNCHANGED",
            "local_reply_config" => map! {
                "mappers" => vec![
                    map! {
                        "filter" => map! {
                            "response_flag_filter" => map! { "flags" => strings(&UNREACHABLE_FLAGS) },
                        },
                        "status_code" => 502,
                    },
                    // A local 403 on a request the filter forwarded can only be the RBAC filter
                    // refusing a private origin address: say so like the native gateway does.
                    map! {
                        "filter" => map! {
                            "and_filter" => map! {
                                "filters" => vec![
                                    map! {
                                        "status_code_filter" => map! {
                                            "comparison" => map! {
                                                "op" => "EQ",
                                                "value" => map! {
                                                    "default_value" => 403,
                                                    "runtime_key" => "ixproxy.private_origin_status",
                                                },
                                            },
                                        },
                                    },
                                    map! {
                                        "header_filter" => map! {
                                            "header" => map! {
                                                "name" => UPSTREAM_HEADER,
                                                "present_match" => true,
                                            },
                                        },
                                    },
                                ],
                            },
                        },
                        "body" => map! { "inline_string" => PRIVATE_ORIGIN_REASON },
                    },
                ],
            },
            "route_config" => map! {
                "name" => "ixproxy",
                "virtual_hosts" => vec![map! {
                    "name" => "ixproxy",
                    "domains" => strings(&["*"]),
                    "routes" => vec![
                        route("https", TLS_CLUSTER, p),
                        route("http", PLAIN_CLUSTER, p),
                    ],
                }],
            },
            "http_filters" => vec![
                wasm_filter(p),
                map! {
                    "name" => "envoy.filters.http.dynamic_forward_proxy",
                    "typed_config" => typed(
                        "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                        map! { "dns_cache_config" => dns_cache(), "save_upstream_address" => true },
                    ),
                },
                private_origin_filter(),
                map! {
                    "name" => "envoy.filters.http.router",
                    "typed_config" => typed(
                        "envoy.extensions.filters.http.router.v3.Router",
                        map! {
                            "suppress_envoy_headers" => true,
                            "upstream_http_filters" => upstream_http_filters(p),
                        },
                    ),
                },
            ],
        },
    )
}

fn cluster(name: &str, connect_timeout: Duration) -> Value {
    map! {
        "name" => name,
        "connect_timeout" => duration(connect_timeout),
        "lb_policy" => "CLUSTER_PROVIDED",
        "cluster_type" => map! {
            "name" => "envoy.clusters.dynamic_forward_proxy",
            "typed_config" => typed(
                "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                map! { "dns_cache_config" => dns_cache() },
            ),
        },
    }
}

fn tls_cluster(p: &Parts) -> Value {
    let mut cluster = cluster(TLS_CLUSTER, p.connect_timeout);
    cluster["typed_extension_protocol_options"] = map! {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            map! {
                // SNI and the certificate names checked come from each request's origin host.
                "upstream_http_protocol_options" => map! {
                    "auto_sni" => true,
                    "auto_san_validation" => true,
                },
                "explicit_http_config" => map! { "http_protocol_options" => Mapping::new() },
            },
        ),
    };
    cluster["transport_socket"] = map! {
        "name" => "envoy.transport_sockets.tls",
        "typed_config" => typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            map! {
                "common_tls_context" => map! {
                    "validation_context" => map! { "trusted_ca" => p.trusted_ca.clone() },
                },
            },
        ),
    };
    cluster
}

fn bootstrap(p: &Parts) -> Value {
    map! {
        "admin" => map! { "address" => socket_address(p.admin_listen) },
        "stats_config" => map! {
            "stats_tags" => vec![map! { "tag_name" => OUTCOME_TAG_NAME, "regex" => OUTCOME_TAG_REGEX }],
        },
        "static_resources" => map! {
            "listeners" => vec![map! {
                "name" => "ixproxy",
                "address" => socket_address(p.listen),
                "filter_chains" => vec![map! {
                    "filters" => vec![map! {
                        "name" => "envoy.filters.network.http_connection_manager",
                        "typed_config" => http_connection_manager(p),
                    }],
                }],
            }],
            "clusters" => vec![cluster(PLAIN_CLUSTER, p.connect_timeout), tls_cluster(p)],
        },
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use ixproxy_core::addr::is_denied_ip;
    use ixproxy_core::config::{MapSecrets, RawPluginConfig};

    use super::*;

    const CONFIG: &str = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {connect_timeout: 1500ms, timeout: 7s}
sources:
  - name: assets
    hosts: [assets.example.com]
    secure_url_tokens: [literal-token, {env: IXPROXY_TEST_TOKEN}]
    origin_auth:
      basic_auth: {username: user, password: {env: IXPROXY_TEST_PASSWORD}}
      request_handshake: literal-handshake
      request_signing_key: {env: IXPROXY_TEST_SIGNING_KEY}
  - name: local
    hosts: [localhost]
    secure_url_tokens: [{env: IXPROXY_TEST_TOKEN}]
    allow_private_origins: true
"#;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("crate is inside the workspace")
            .to_owned()
    }

    fn generate_ok(yaml: &str) -> (String, Value) {
        let text = generate_with_system_ca(
            yaml,
            Path::new("/nonexistent-config-dir"),
            Path::new("/opt/ixproxy/ixproxy_filter.wasm"),
            Path::new("/nonexistent/ca.pem"),
        )
        .unwrap_or_else(|e| panic!("generation failed: {e}"));
        let value: Value = serde_yaml::from_str(&text).expect("generated yaml parses");
        (text, value)
    }

    fn hcm(bootstrap: &Value) -> &Value {
        &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]
    }

    fn wasm_config(bootstrap: &Value) -> &Value {
        &hcm(bootstrap)["http_filters"][0]["typed_config"]["config"]
    }

    fn cluster<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
        bootstrap["static_resources"]["clusters"]
            .as_sequence()
            .and_then(|clusters| clusters.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    #[test]
    fn env_secrets_become_host_env_keys_and_stay_references() {
        let (_, bootstrap) = generate_ok(CONFIG);
        let wasm = wasm_config(&bootstrap);
        assert_eq!(
            wasm["vm_config"]["environment_variables"]["host_env_keys"],
            serde_yaml::from_str::<Value>(
                "[IXPROXY_TEST_TOKEN, IXPROXY_TEST_PASSWORD, IXPROXY_TEST_SIGNING_KEY]"
            )
            .expect("yaml")
        );
        assert_eq!(
            wasm["vm_config"]["code"]["local"]["filename"],
            "/opt/ixproxy/ixproxy_filter.wasm"
        );
        assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        let plugin = wasm["configuration"]["value"]
            .as_str()
            .expect("string value");
        // The filter's own parser accepts it, and resolving it needs exactly those variables.
        let secrets = MapSecrets::new()
            .with_env("IXPROXY_TEST_TOKEN", "t")
            .with_env("IXPROXY_TEST_PASSWORD", "p")
            .with_env("IXPROXY_TEST_SIGNING_KEY", "k");
        let sources = RawPluginConfig::from_json(plugin)
            .and_then(|raw| raw.validate(&secrets))
            .expect("plugin configuration validates");
        assert_eq!(sources.sources.iter().count(), 2);
        assert!(
            plugin.contains(r#"{"env":"IXPROXY_TEST_PASSWORD"}"#),
            "{plugin}"
        );
        let missing = RawPluginConfig::from_json(plugin)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect_err("unresolved env refs fail in the filter");
        assert!(
            missing.to_string().contains("IXPROXY_TEST_TOKEN"),
            "{missing}"
        );
    }

    #[test]
    fn literal_secrets_stay_in_the_plugin_configuration_only() {
        let (text, bootstrap) = generate_ok(CONFIG);
        let plugin = wasm_config(&bootstrap)["configuration"]["value"]
            .as_str()
            .expect("string value");
        assert!(plugin.contains("\"literal-token\""), "{plugin}");
        assert!(plugin.contains("\"literal-handshake\""), "{plugin}");
        assert_eq!(
            text.matches("literal-token").count(),
            1,
            "only in the plugin json"
        );
        let keys = &wasm_config(&bootstrap)["vm_config"]["environment_variables"];
        assert!(!serde_yaml::to_string(keys)
            .expect("yaml")
            .contains("literal"));
    }

    #[test]
    fn file_secrets_are_refused_with_their_field_and_a_hint() {
        let yaml = CONFIG.replace(
            "request_handshake: literal-handshake",
            "request_handshake: {file: /run/secrets/handshake}",
        );
        let err = generate(&yaml, Path::new("."), Path::new("/x.wasm"))
            .expect_err("file secrets cannot reach the filter")
            .to_string();
        assert!(
            err.starts_with("sources[0].origin_auth.request_handshake"),
            "{err}"
        );
        assert!(err.contains("{env: NAME}"), "{err}");
    }

    #[test]
    fn listeners_timeouts_and_routes_follow_the_config() {
        let yaml = CONFIG
            .replace("admin_listen: 127.0.0.1:0", "admin_listen: '[::1]:19901'")
            .replace("\nlisten: 127.0.0.1:0", "\nlisten: 127.0.0.1:18080");
        let (_, bootstrap) = generate_ok(&yaml);
        let listener = &bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"];
        assert_eq!(listener["address"], "127.0.0.1");
        assert_eq!(listener["port_value"], 18080);
        let admin = &bootstrap["admin"]["address"]["socket_address"];
        assert_eq!(
            (admin["address"].as_str(), admin["port_value"].as_u64()),
            (Some("::1"), Some(19901))
        );
        for name in [PLAIN_CLUSTER, TLS_CLUSTER] {
            assert_eq!(cluster(&bootstrap, name)["connect_timeout"], "1.500000000s");
        }
        let routes = &hcm(&bootstrap)["route_config"]["virtual_hosts"][0]["routes"];
        let routes = routes.as_sequence().expect("routes");
        assert_eq!(routes.len(), 2, "only the two upstream routes");
        for (route, (value, cluster)) in routes
            .iter()
            .zip([("https", TLS_CLUSTER), ("http", PLAIN_CLUSTER)])
        {
            assert_eq!(route["route"]["timeout"], "7s");
            assert_eq!(route["route"]["cluster"], cluster);
            assert_eq!(route["match"]["headers"][0]["name"], ":scheme");
            assert_eq!(route["match"]["headers"][0]["string_match"]["exact"], value);
            let removed = serde_yaml::to_string(&route["request_headers_to_remove"]).expect("yaml");
            for header in [UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER] {
                assert!(removed.contains(header), "{header} not stripped: {removed}");
            }
        }
        let filters: Vec<&str> = hcm(&bootstrap)["http_filters"]
            .as_sequence()
            .expect("filters")
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.http.wasm",
                "envoy.filters.http.dynamic_forward_proxy",
                "envoy.filters.http.rbac",
                "envoy.filters.http.router"
            ]
        );
        let router = &hcm(&bootstrap)["http_filters"][3]["typed_config"];
        assert_eq!(router["suppress_envoy_headers"], true);
        // The filter's upstream role, with the same VM, then the codec Envoy requires last.
        let upstream = &router["upstream_http_filters"];
        assert_eq!(upstream[0]["name"], "envoy.filters.http.wasm");
        assert_eq!(
            upstream[0]["typed_config"]["config"]["root_id"],
            UPSTREAM_ROOT_ID
        );
        assert_eq!(
            upstream[0]["typed_config"]["config"]["vm_config"],
            wasm_config(&bootstrap)["vm_config"]
        );
        assert_eq!(upstream[1]["name"], "envoy.filters.http.upstream_codec");
        assert_eq!(upstream.as_sequence().map(Vec::len), Some(2));
        assert_eq!(hcm(&bootstrap)["generate_request_id"], false);
        let mappers = &hcm(&bootstrap)["local_reply_config"]["mappers"];
        assert_eq!(mappers[0]["status_code"], 502);
        assert_eq!(
            mappers[0]["filter"]["response_flag_filter"]["flags"],
            strings(&UNREACHABLE_FLAGS)
        );
        assert_eq!(mappers[1]["body"]["inline_string"], PRIVATE_ORIGIN_REASON);
    }

    #[test]
    fn redirects_and_request_limits_follow_the_config() {
        let (_, defaults) = generate_ok(CONFIG);
        let yaml = CONFIG.replace("timeout: 7s}", "timeout: 7s, max_redirects: 5}")
            + "limits: {max_request_headers: 50, max_request_header_bytes: 65536, \
               max_request_target_bytes: 16384}\n";
        let (_, custom) = generate_ok(&yaml);
        for (bootstrap, redirects, headers_kb, headers_count) in
            [(&defaults, 3, 49, 116), (&custom, 5, 89, 66)]
        {
            let routes = &hcm(bootstrap)["route_config"]["virtual_hosts"][0]["routes"];
            for route in routes.as_sequence().expect("routes") {
                let policy = &route["route"]["internal_redirect_policy"];
                assert_eq!(policy["max_internal_redirects"], redirects);
                assert_eq!(
                    policy["redirect_response_codes"],
                    serde_yaml::from_str::<Value>("[301, 302, 303, 307, 308]").expect("yaml")
                );
                assert_eq!(policy["allow_cross_scheme_redirect"], true);
                assert_eq!(
                    policy["response_headers_to_copy"],
                    strings(&[LOCATION_HEADER, FORWARDED_PROTO])
                );
                // No predicate: the filter re-validates every hop itself.
                assert!(policy.get("predicates").is_none());
            }
            // Envoy's own limits sit above the filter's (431/414 come from the filter).
            assert_eq!(hcm(bootstrap)["max_request_headers_kb"], headers_kb);
            assert_eq!(
                hcm(bootstrap)["common_http_protocol_options"]["max_headers_count"],
                headers_count
            );
        }
        let limits = Limits {
            max_request_header_bytes: 8 << 20,
            ..Limits::default()
        };
        assert_eq!(max_request_headers_kb(&limits), 8192, "envoy's maximum");
    }

    #[test]
    fn tls_cluster_trusts_system_roots_plus_ca_file() {
        let dir = std::env::temp_dir().join(format!("ixproxy-envoy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("system.pem"), "SYSTEM-CA\n").expect("write");
        std::fs::write(dir.join("extra.pem"), "EXTRA-CA\n").expect("write");
        let yaml = CONFIG.replace("upstream: {", "upstream: {ca_file: extra.pem, ");
        let trusted = |system: &Path| {
            let text = generate_with_system_ca(&yaml, &dir, Path::new("/x.wasm"), system)
                .expect("generates");
            let bootstrap: Value = serde_yaml::from_str(&text).expect("parses");
            let tls = cluster(&bootstrap, TLS_CLUSTER);
            let options = &tls["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                ["upstream_http_protocol_options"];
            assert_eq!(
                (&options["auto_sni"], &options["auto_san_validation"]),
                (&Value::Bool(true), &Value::Bool(true))
            );
            assert!(cluster(&bootstrap, PLAIN_CLUSTER)
                .get("transport_socket")
                .is_none());
            tls["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
                ["trusted_ca"]
                .clone()
        };
        let both = trusted(&dir.join("system.pem"));
        assert_eq!(both["inline_string"], "SYSTEM-CA\nEXTRA-CA\n");
        let extra_only = trusted(&dir.join("missing.pem"));
        assert_eq!(
            extra_only["filename"],
            dir.join("extra.pem").to_string_lossy().as_ref()
        );
        let (_, no_ca_file) = generate_ok(CONFIG);
        assert_eq!(
            cluster(&no_ca_file, TLS_CLUSTER)["transport_socket"]["typed_config"]
                ["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/nonexistent/ca.pem"
        );
        let missing = CONFIG.replace("upstream: {", "upstream: {ca_file: nope.pem, ");
        let err = generate(&missing, &dir, Path::new("/x.wasm")).expect_err("unreadable ca_file");
        assert!(
            err.to_string().starts_with("upstream.ca_file: cannot read"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn private_address_ranges_match_the_core_deny_list() {
        let mut checked = 0;
        for (net, len) in denied_ranges() {
            let ip: std::net::IpAddr = net.parse().expect("range address parses");
            assert!(
                is_denied_ip(ip),
                "{net}/{len} starts with an allowed address"
            );
            let last = match ip {
                std::net::IpAddr::V4(v4) => {
                    let host_bits = 32 - u32::from(len);
                    let mask = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
                    std::net::IpAddr::V4(Ipv4Addr::from(u32::from(v4) | mask))
                }
                std::net::IpAddr::V6(v6) => {
                    let host_bits = 128 - u32::from(len);
                    let mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
                    std::net::IpAddr::V6(Ipv6Addr::from(u128::from(v6) | mask))
                }
            };
            assert!(
                is_denied_ip(last),
                "{net}/{len} ends with an allowed address {last}"
            );
            checked += 1;
        }
        assert_eq!(checked, 16 * 5 + DENIED_V6.len());
        // Public addresses, also embedded, are in no range.
        for public in [
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700::1111",
        ] {
            let ip: std::net::IpAddr = public.parse().expect("parses");
            assert!(!is_denied_ip(ip), "{public}");
            let hit = denied_ranges().into_iter().find(|(net, len)| {
                let net: std::net::IpAddr = net.parse().expect("parses");
                match (net, ip) {
                    (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                        (u32::from(n) ^ u32::from(a))
                            .checked_shr(32 - u32::from(*len))
                            .unwrap_or(0)
                            == 0
                    }
                    (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                        (u128::from(n) ^ u128::from(a))
                            .checked_shr(128 - u32::from(*len))
                            .unwrap_or(0)
                            == 0
                    }
                    _ => false,
                }
            });
            assert_eq!(hit, None, "{public}");
        }
    }

    fn envoy_binary() -> PathBuf {
        std::env::var_os("IXPROXY_ENVOY")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".venv/bin/envoy"))
    }

    /// The built filter: `IXPROXY_WASM`, or the release build in the cargo target directory,
    /// built here when missing (scripts/test-all.sh builds it first).
    fn filter_wasm() -> PathBuf {
        if let Some(wasm) = std::env::var_os("IXPROXY_WASM") {
            return PathBuf::from(wasm);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let wasm = target.join("wasm32-wasip1/release/ixproxy_filter.wasm");
        if !wasm.is_file() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace())
                .args([
                    "build",
                    "-p",
                    "ixproxy-filter",
                    "--target",
                    "wasm32-wasip1",
                    "--release",
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the wasm filter failed");
        }
        wasm
    }

    fn envoy_validate(config: &Path, env: &[(&str, &str)]) -> (bool, String) {
        let envoy = envoy_binary();
        let output = Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(config)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (set IXPROXY_ENVOY): {e}", envoy.display()));
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success() && log.contains(" OK"), log)
    }

    #[test]
    fn real_envoy_accepts_the_generated_config_and_runs_the_filter_configuration() {
        let wasm = filter_wasm();
        let text = generate(CONFIG, Path::new("."), &wasm).expect("generates");
        let path = std::env::temp_dir().join(format!("ixproxy-envoy-{}.yaml", std::process::id()));
        std::fs::write(&path, &text).expect("write config");
        let env = [
            ("IXPROXY_TEST_TOKEN", "token"),
            ("IXPROXY_TEST_PASSWORD", "password"),
            ("IXPROXY_TEST_SIGNING_KEY", "key"),
        ];
        let (ok, log) = envoy_validate(&path, &env);
        assert!(ok, "envoy --mode validate failed:\n{log}");
        // Validation loads the Wasm VM and runs on_configure: a missing variable is refused.
        let (ok, log) = envoy_validate(&path, &env[..2]);
        assert!(!ok, "validated without IXPROXY_TEST_SIGNING_KEY:\n{log}");
        assert!(log.contains("IXPROXY_TEST_SIGNING_KEY"), "{log}");
        std::fs::remove_file(&path).ok();
    }

    /// A loopback origin for the real-Envoy test: answers by path and records every request head.
    struct TestOrigin {
        port: u16,
        seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    fn origin_response(path: &str, port: u16) -> Vec<u8> {
        let plain = |status: &str, headers: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        match path {
            "/ok" => plain("200 OK", "content-type: image/png\r\n", "hello"),
            "/text" => plain("200 OK", "content-type: text/html\r\n", "<secret>"),
            "/relative" => plain("302 Found", "location: ok\r\n", ""),
            "/other-host" => plain(
                "301 Moved",
                &format!("location: http://127.0.0.2:{port}/ok\r\n"),
                "",
            ),
            "/loop" => plain("307 Again", "location: /loop\r\n", ""),
            "/slow" | "/slow2" => {
                std::thread::sleep(Duration::from_secs(3));
                if path == "/slow" {
                    plain("302 Found", "location: /slow2\r\n", "")
                } else {
                    plain("200 OK", "content-type: image/png\r\n", "late")
                }
            }
            "/evil" => plain("302 Found", "location: http://evil.example/\r\n", ""),
            "/big" => {
                let mut out =
                    b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\n\r\n"
                        .to_vec();
                for _ in 0..3 {
                    out.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
                    out.extend_from_slice(&[b'x'; 65536]);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
            _ => plain("404 Not Found", "", ""),
        }
    }

    fn start_origin() -> TestOrigin {
        use std::io::{Read, Write};
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let port = first.local_addr().expect("addr").port();
        let second = std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for listener in [first, second] {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(64) {
                    let Ok(mut stream) = stream else { continue };
                    let seen = seen.clone();
                    std::thread::spawn(move || {
                        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        seen.lock().expect("lock").push(head);
                        stream.write_all(&origin_response(&path, port)).ok();
                    });
                }
            });
        }
        TestOrigin { port, seen }
    }

    /// Envoy running a generated bootstrap; killed on drop.
    struct RunningEnvoy {
        child: std::process::Child,
        port: u16,
        admin: (String, u16),
    }

    impl Drop for RunningEnvoy {
        fn drop(&mut self) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }

    fn http_get(addr: (&str, u16), path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        stream.write_all(path.as_bytes()).expect("write");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn port_admin(admin: &str) -> u16 {
        admin
            .trim()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("admin port")
    }

    fn start_envoy(config: &str, dir: &Path) -> RunningEnvoy {
        let text = generate(config, Path::new("."), &filter_wasm()).expect("generates");
        let bootstrap = dir.join("envoy.yaml");
        std::fs::write(&bootstrap, text).expect("write bootstrap");
        let admin_file = dir.join("admin");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--use-dynamic-base-id", "--log-level", "warn"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.log")).expect("log"))
            .spawn()
            .expect("envoy starts");
        let mut envoy = RunningEnvoy {
            child,
            port: 0,
            admin: (String::new(), 0),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let admin = std::fs::read_to_string(&admin_file).unwrap_or_default();
            if let Some((host, port)) = admin.trim().rsplit_once(':') {
                let port: u16 = port.parse().expect("admin port");
                let listeners = http_get(
                    (host, port),
                    "GET /listeners HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                );
                if let Some(port) = listeners
                    .lines()
                    .find_map(|l| l.strip_prefix("ixproxy::127.0.0.1:"))
                    .and_then(|p| p.trim().parse().ok())
                {
                    envoy.port = port;
                    envoy.admin = (host.to_owned(), port_admin(&admin));
                    return envoy;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
        panic!("envoy did not start:\n{log}");
    }

    #[test]
    fn real_envoy_follows_checked_redirects_and_enforces_response_limits() {
        use ixproxy_core::signer::{sign_url, SignOptions};
        let origin = start_origin();
        let dir = std::env::temp_dir().join(format!("ixproxy-envoy-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {timeout: 5s, max_redirects: 2, max_body_bytes: 100000}
sources:
  - name: local
    hosts: [localhost]
    secure_url_tokens: [tok]
    origin_auth: {request_handshake: hs}
    allow_private_origins: true
    allowed_origin_hosts: ["127.0.0.1", "127.0.0.2"]
  - name: images
    hosts: [images.test]
    secure_url_tokens: [tok]
    allow_private_origins: true
    allowed_content_types: ["image/"]
"#;
        let envoy = start_envoy(config, &dir);
        let get = |host: &str, origin_path: &str, extra: &str| {
            let url = format!("http://127.0.0.1:{}{origin_path}", origin.port);
            let target = sign_url("tok", &url, &[], &SignOptions::default());
            http_get(
                ("127.0.0.1", envoy.port),
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
                ),
            )
        };
        let seen = |from: usize| origin.seen.lock().expect("lock")[from..].to_vec();
        let status = |response: &str| response.lines().next().unwrap_or("").to_owned();

        // A relative Location is followed; each hop on the first host gets origin auth.
        let before = seen(0).len();
        let response = get("localhost", "/relative", "");
        assert!(status(&response).contains(" 200 "), "{response}");
        assert!(response.ends_with("hello"), "{response}");
        let hops = seen(before);
        assert_eq!(hops.len(), 2, "{hops:?}");
        assert!(
            hops.iter().all(|h| h.contains("x-imgix-origin-secret: hs")),
            "{hops:?}"
        );
        assert!(
            hops.iter().all(|h| !h.contains("x-forwarded-proto")),
            "{hops:?}"
        );

        // A hop to another host gets no origin auth.
        let before = seen(0).len();
        let response = get("localhost", "/other-host", "");
        assert!(status(&response).contains(" 200 "), "{response}");
        let hops = seen(before);
        assert_eq!(hops.len(), 2, "{hops:?}");
        assert!(
            hops[1].to_ascii_lowercase().contains("host: 127.0.0.2:"),
            "{hops:?}"
        );
        assert!(!hops[1].contains("x-imgix"), "{hops:?}");

        // Past max_redirects (2): 502, never the 3xx; exactly 1 + 2 origin requests.
        let before = seen(0).len();
        let response = get("localhost", "/loop", "");
        assert!(status(&response).contains(" 502 "), "{response}");
        assert!(
            !response.to_ascii_lowercase().contains("location:"),
            "{response}"
        );
        assert_eq!(seen(before).len(), 3);

        // upstream.timeout (5s) bounds the request and its hops together: two 3 s hops → 504.
        let started = std::time::Instant::now();
        let response = get("localhost", "/slow", "");
        assert!(status(&response).contains(" 504 "), "{response}");
        assert!(
            started.elapsed() < Duration::from_millis(5900),
            "{:?}",
            started.elapsed()
        );

        // A hop to a host outside allowed_origin_hosts is refused before any request to it.
        let before = seen(0).len();
        let response = get("localhost", "/evil", "");
        assert!(status(&response).contains(" 403 "), "{response}");
        assert_eq!(seen(before).len(), 1);

        // A client cannot pass for a hop: unsigned requests with every redirect marker are
        // refused like any unsigned request, and reach no origin.
        let before = seen(0).len();
        let markers = format!(
            "location: http://127.0.0.1:{port}/ok\r\nx-envoy-original-url: http://localhost/x\r\n\
             x-ixproxy-hop: ixhop1\r\nixproxy_hop: ixhop1\r\nx-ixproxy-upstream: plain\r\n",
            port = origin.port
        );
        for (host, target) in [
            (
                "localhost".to_owned(),
                format!("/http%3A%2F%2F127.0.0.1%3A{}%2Fok", origin.port),
            ),
            (format!("127.0.0.1:{}", origin.port), "/ok".to_owned()),
        ] {
            let response = http_get(
                ("127.0.0.1", envoy.port),
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: {host}\r\n{markers}Connection: close\r\n\r\n"
                ),
            );
            let code = status(&response);
            assert!(
                code.contains(" 403 ") || code.contains(" 410 "),
                "{response}"
            );
        }
        assert_eq!(seen(before).len(), 0);

        // Content type outside the source's list: 403, no origin byte reaches the client.
        let response = get("images.test", "/text", "");
        assert!(status(&response).contains(" 403 "), "{response}");
        assert!(!response.contains("<secret>"), "{response}");

        // Streamed body over max_body_bytes: the transfer is aborted, never completed.
        let response = get("localhost", "/big", "");
        assert!(status(&response).contains(" 200 "), "{response}");
        assert!(!response.ends_with("0\r\n\r\n"), "a complete chunked body");
        assert!(response.len() < 3 * 65536, "{} bytes", response.len());

        // Each request counts exactly one outcome (a refused answer is not `forwarded`).
        let stats = http_get(
            (envoy.admin.0.as_str(), envoy.admin.1),
            "GET /stats/prometheus HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        for (outcome, count) in [
            ("forwarded", 2),
            ("origin_timeout", 1),
            ("internal", 0),
            ("bad_redirect", 1),
            ("origin_denied", 1),
            ("content_type_denied", 1),
            ("origin_too_large", 1),
            ("bad_signature", 1),
            ("unknown_host", 1),
        ] {
            let line = format!("ixproxy_requests_total{{outcome=\"{outcome}\"}} {count}\n");
            assert!(stats.contains(&line), "{line}{stats}");
        }
        drop(envoy);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn shipped_envoy_config_is_generated_from_the_shipped_example() {
        let dir = workspace().join("envoy");
        let yaml = std::fs::read_to_string(dir.join("ixproxy.yaml")).expect("envoy/ixproxy.yaml");
        let generated = generate_with_system_ca(
            &yaml,
            &dir,
            Path::new("/etc/envoy/ixproxy_filter.wasm"),
            Path::new(SYSTEM_CA_BUNDLE),
        )
        .expect("example generates");
        let shipped = std::fs::read_to_string(dir.join("envoy.yaml")).expect("envoy/envoy.yaml");
        assert!(
            generated == shipped,
            "envoy/envoy.yaml is stale; regenerate it with\n  ixproxy envoy-config -c envoy/ixproxy.yaml \
             --wasm /etc/envoy/ixproxy_filter.wasm > envoy/envoy.yaml"
        );
    }

    #[test]
    fn istio_example_carries_a_valid_plugin_configuration() {
        let dir = workspace().join("envoy");
        let text = std::fs::read_to_string(dir.join("istio/wasmplugin.yaml")).expect("read");
        let plugin: Value = serde_yaml::from_str(&text).expect("wasmplugin.yaml parses");
        assert_eq!(plugin["kind"], "WasmPlugin");
        let json = serde_json::to_string(&plugin["spec"]["pluginConfig"]).expect("to json");
        let mut secrets = MapSecrets::new();
        for var in plugin["spec"]["vmConfig"]["env"]
            .as_sequence()
            .expect("env list")
        {
            assert_eq!(var["valueFrom"], "HOST");
            secrets = secrets.with_env(var["name"].as_str().expect("name"), "placeholder");
        }
        RawPluginConfig::from_json(&json)
            .and_then(|raw| raw.validate(&secrets))
            .unwrap_or_else(|e| panic!("pluginConfig is not what the filter accepts: {e}"));
        // The local walkthrough config generates too.
        let local = std::fs::read_to_string(dir.join("local.yaml")).expect("envoy/local.yaml");
        generate(&local, &dir, Path::new("/x.wasm")).expect("envoy/local.yaml generates");
    }
}
