//! The two dynamic-forward-proxy clusters the routes send origin requests to, one plain and one
//! TLS, and the DNS cache they share with the dynamic forward proxy HTTP filter.

use std::path::Path;

use serde_yaml::{Mapping, Value};

use crate::bounds::{circuit_breakers, DNS_CACHE_MAX_HOSTS, PER_CONNECTION_BUFFER_LIMIT_BYTES};
use crate::wasm::upstream_http_filters;
use crate::{duration, typed, EnvoyConfigError, Parts};

/// The system CA bundle trusted for https origins (Debian/Ubuntu/Alpine path).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Cluster for `https` origins.
pub(crate) const TLS_CLUSTER: &str = "ixproxy_origin_tls";
/// Cluster for `http` origins.
pub(crate) const PLAIN_CLUSTER: &str = "ixproxy_origin_plain";
/// DNS cache shared by the dynamic forward proxy filter and both clusters: one cache, so the
/// address the filter records (and RBAC checks) is the one the cluster connects to.
const DNS_CACHE: &str = "ixproxy_dns_cache";

/// The shared DNS cache config (`V4_PREFERRED`: an IPv4 address when the name has one), holding
/// at most [`DNS_CACHE_MAX_HOSTS`] names.
pub(crate) fn dns_cache() -> Value {
    map! {
        "name" => DNS_CACHE,
        "dns_lookup_family" => "V4_PREFERRED",
        "max_hosts" => DNS_CACHE_MAX_HOSTS,
    }
}

/// `static_resources.clusters`: the plain cluster, then the TLS one.
pub(crate) fn clusters(p: &Parts) -> Value {
    Value::Sequence(vec![cluster(PLAIN_CLUSTER, p), tls_cluster(p)])
}

fn cluster(name: &str, p: &Parts) -> Value {
    let mut cluster = plain_cluster(name, p);
    if p.cache.is_some() {
        // Envoy's cache fetches misses on a side channel that skips the router's
        // `upstream_http_filters` but runs the cluster's own: the filter's upstream role goes
        // here then. Envoy requires `auto_sni`/`auto_san_validation` on a dynamic forward proxy
        // cluster with these options, also a plain one (where they do nothing).
        cluster["typed_extension_protocol_options"] = protocol_options(Some(p));
    }
    cluster
}

/// The clusters' `HttpProtocolOptions`: SNI and the certificate names checked come from each
/// request's origin host; with `cache_filters`, the filter's upstream role runs on the cluster.
fn protocol_options(cache_filters: Option<&Parts>) -> Value {
    let mut options = map! {
        "upstream_http_protocol_options" => map! {
            "auto_sni" => true,
            "auto_san_validation" => true,
        },
        "explicit_http_config" => map! { "http_protocol_options" => Mapping::new() },
    };
    if let Some(p) = cache_filters {
        options["http_filters"] = upstream_http_filters(p);
    }
    map! { HTTP_PROTOCOL_OPTIONS => typed(HTTP_PROTOCOL_OPTIONS, options) }
}

/// Envoy's per-cluster HTTP options (SNI, codec, upstream HTTP filters).
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn plain_cluster(name: &str, p: &Parts) -> Value {
    map! {
        "name" => name,
        "connect_timeout" => duration(p.connect_timeout),
        "per_connection_buffer_limit_bytes" => PER_CONNECTION_BUFFER_LIMIT_BYTES,
        "circuit_breakers" => circuit_breakers(&p.client),
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
    let mut cluster = cluster(TLS_CLUSTER, p);
    if p.cache.is_none() {
        cluster["typed_extension_protocol_options"] = protocol_options(None);
    }
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

/// `trusted_ca` of the TLS cluster: the system bundle alone (referenced by path, checked when
/// Envoy starts, like the wasm path, so a config can target another machine); with
/// `upstream.ca_file`, both concatenated inline when the system bundle is readable here,
/// otherwise `ca_file` alone.
///
/// # Errors
/// [`EnvoyConfigError::CaFile`] when `ca_file` cannot be read.
pub(crate) fn trusted_ca(
    ca_file: Option<&str>,
    config_dir: &Path,
    system_ca: &Path,
) -> Result<Value, EnvoyConfigError> {
    let Some(ca_file) = ca_file else {
        return Ok(map! { "filename" => system_ca.to_string_lossy().into_owned() });
    };
    let extra_path = config_dir.join(ca_file);
    // Read now so a missing file fails here rather than when Envoy starts.
    let extra =
        std::fs::read_to_string(&extra_path).map_err(|source| EnvoyConfigError::CaFile {
            path: extra_path.clone(),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_yaml::Value;

    use super::*;
    use crate::testing::{cluster, generate_ok, CONFIG};
    use crate::{generate, generate_with_system_ca};

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
}
