//! Envoy's HTTP cache filter for the config's `cache:` section (README: Caching, Envoy).
//!
//! Envoy 1.40's cache filter fetches a cacheable request's miss itself, through the routed
//! cluster on a side channel: the HTTP filters after it, the routes' header removal and the
//! router's `upstream_http_filters` do not see that fetch (measured in
//! `tests/tests/envoy_cache.rs`). So it sits last before the router, after the ixproxy filter
//! (which decides before any lookup), the dynamic forward proxy and RBAC (which then run for
//! every request, hits included), and the filter's upstream role moves to the clusters' own
//! `http_filters`, which the side channel runs as well.

use std::path::Path;

use ixproxy_core::config::{CacheLimits, DiskTier};
use serde_yaml::Value;

use crate::typed;

/// The file-system store's type (README: Caching, Envoy, `cache.disk` on Envoy).
pub(crate) const FILE_SYSTEM_STORE: &str =
    "envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig";

/// Threads of the file-system store's file manager: Envoy's workers hand every disk read and
/// write to them, so a few let several hits and fills use the disk at once without a thread
/// per core.
const FILE_THREADS: u32 = 4;

/// The cache filter entry, objects up to `max_object_bytes`: Envoy's in-memory store
/// (`SimpleHttpCacheConfig`, which has no fields: no total size bound and no eviction in Envoy
/// 1.40), or with `cache.disk` its file-system store instead. One cache filter holds one store,
/// and a second filter after it never sees the first one's misses (they are fetched on its own
/// channel, see the module doc), so a disk tier replaces the memory store on Envoy.
pub(crate) fn cache_filter(limits: &CacheLimits) -> Value {
    let store = match &limits.disk {
        None => typed(
            "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig",
            serde_yaml::Mapping::new().into(),
        ),
        Some(disk) => file_system_store(disk),
    };
    map! {
        "name" => "envoy.filters.http.cache",
        "typed_config" => typed(
            "envoy.extensions.filters.http.cache.v3.CacheConfig",
            map! {
                "typed_config" => store,
                // A uint32 in Envoy; larger values mean "no limit of the filter's own".
                "max_body_bytes" => u32::try_from(limits.max_object_bytes).unwrap_or(0),
                // The ixproxy filter never forwards a client's Cache-Control or Pragma; this
                // also keeps any other way of sending them from bypassing the cache.
                "ignore_request_cache_control_header" => true,
            },
        ),
    }
}

/// `limits` with a relative `cache.disk.path` made absolute against `config_dir`, as the TLS
/// files and `upstream.ca_file` are: Envoy would take it relative to its own working directory,
/// which is rarely where the config was written.
pub(crate) fn absolute(mut limits: CacheLimits, config_dir: &Path) -> CacheLimits {
    if let Some(disk) = &mut limits.disk {
        disk.path = crate::absolute_in(config_dir, &disk.path);
    }
    limits
}

/// Envoy 1.40's file-system store on `disk.path`, bounded by `disk.max_bytes` (the sum of its
/// files' sizes, headers included; Envoy's eviction thread brings it back under the bound
/// after an insert passes it). Its files are `cache-<hash>` under `cache_path`, each written to
/// an anonymous file and linked under its name once complete
/// ([`crate::cache_files`] reads them).
fn file_system_store(disk: &DiskTier) -> Value {
    typed(
        FILE_SYSTEM_STORE,
        map! {
            "manager_config" => map! {
                "thread_pool" => map! { "thread_count" => FILE_THREADS },
            },
            "cache_path" => disk.path.as_str(),
            "max_cache_size_bytes" => disk.max_bytes,
        },
    )
}

#[cfg(test)]
mod tests {
    use ixproxy_core::envoy::{FORWARDED_PROTO, UPSTREAM_ROOT_ID};

    use crate::clusters::{PLAIN_CLUSTER, TLS_CLUSTER};
    use crate::testing::{cluster, filter_names, generate_ok, hcm, CONFIG};

    #[test]
    fn the_cache_sits_before_the_router_and_the_upstream_role_moves_to_the_clusters() {
        let (_, without) = generate_ok(CONFIG);
        assert!(!filter_names(&without).contains(&"envoy.filters.http.cache".to_owned()));
        let (_, bootstrap) = generate_ok(&format!(
            "{CONFIG}cache: {{max_bytes: 1000000, max_object_bytes: 4096}}\n"
        ));
        assert_eq!(
            filter_names(&bootstrap),
            [
                "envoy.filters.http.wasm",
                "envoy.filters.http.dynamic_forward_proxy",
                "envoy.filters.http.rbac",
                "envoy.filters.http.cache",
                "envoy.filters.http.router",
            ]
        );
        let cache = &hcm(&bootstrap)["http_filters"][3]["typed_config"];
        assert_eq!(
            cache["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
        );
        assert_eq!(
            cache["typed_config"]["@type"],
            "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
        );
        assert_eq!(cache["max_body_bytes"], 4096);
        assert_eq!(cache["ignore_request_cache_control_header"], true);

        let router = &hcm(&bootstrap)["http_filters"][4]["typed_config"];
        assert!(router.get("upstream_http_filters").is_none(), "{router:?}");
        let routed = &hcm(&without)["http_filters"][3]["typed_config"]["upstream_http_filters"];
        for name in [PLAIN_CLUSTER, TLS_CLUSTER] {
            let options = &cluster(&bootstrap, name)["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
            // The same upstream role (and codec) the router has without a cache.
            assert_eq!(&options["http_filters"], routed, "{name}");
            assert_eq!(
                options["http_filters"][0]["typed_config"]["config"]["root_id"],
                UPSTREAM_ROOT_ID
            );
            assert_eq!(options["upstream_http_protocol_options"]["auto_sni"], true);
        }
        // The TLS cluster keeps its transport socket.
        assert!(cluster(&bootstrap, TLS_CLUSTER)
            .get("transport_socket")
            .is_some());
        // `x-forwarded-proto` stays for the upstream role to remove: the cache's side channel
        // skips the routes' removals.
        let routes = &hcm(&bootstrap)["route_config"]["virtual_hosts"][0]["routes"];
        for route in routes.as_sequence().expect("routes") {
            let removed = route["request_headers_to_remove"]
                .as_sequence()
                .expect("removed");
            assert!(!removed.iter().any(|h| h == FORWARDED_PROTO), "{removed:?}");
        }
    }

    #[test]
    fn a_disk_tier_renders_the_file_system_store_in_place_of_the_memory_store() {
        let (_, bootstrap) = generate_ok(&format!(
            "{CONFIG}cache: {{max_bytes: 1000000, max_object_bytes: 4096, \
             disk: {{path: /var/cache/ixproxy, max_bytes: 40000000}}}}\n"
        ));
        // One cache filter, where the memory one sits.
        let names = filter_names(&bootstrap);
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "envoy.filters.http.cache")
                .count(),
            1,
            "{names:?}"
        );
        let cache = &hcm(&bootstrap)["http_filters"][3]["typed_config"];
        assert_eq!(
            hcm(&bootstrap)["http_filters"][3]["name"],
            "envoy.filters.http.cache"
        );
        let store = &cache["typed_config"];
        assert_eq!(
            store["@type"],
            format!("type.googleapis.com/{}", super::FILE_SYSTEM_STORE)
        );
        assert_eq!(store["cache_path"], "/var/cache/ixproxy");
        assert_eq!(store["max_cache_size_bytes"], 40_000_000u64);
        assert_eq!(
            store["manager_config"]["thread_pool"]["thread_count"],
            super::FILE_THREADS
        );
        // The per-object bound and the request rule stay the filter's, as without a disk.
        assert_eq!(cache["max_body_bytes"], 4096);
        assert_eq!(cache["ignore_request_cache_control_header"], true);
        // Nothing else: an unknown or not-implemented field would fail Envoy's validation.
        let fields: Vec<&str> = store
            .as_mapping()
            .expect("store")
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "@type",
                "manager_config",
                "cache_path",
                "max_cache_size_bytes"
            ]
        );
    }

    #[test]
    fn a_relative_disk_path_is_made_absolute_against_the_config_directory() {
        let yaml = format!(
            "{CONFIG}cache: {{max_bytes: 1000000, max_object_bytes: 4096, \
             disk: {{path: cache/envoy, max_bytes: 40000000}}}}\n"
        );
        let store = |dir: &str| {
            let generated = crate::generate_with(
                &yaml,
                std::path::Path::new(dir),
                std::path::Path::new("/x.wasm"),
                &crate::Options {
                    allow_literal_secrets: true,
                },
            )
            .expect("generates");
            let bootstrap: serde_yaml::Value =
                serde_yaml::from_str(&generated.bootstrap).expect("yaml");
            hcm(&bootstrap)["http_filters"][3]["typed_config"]["typed_config"]["cache_path"]
                .as_str()
                .expect("cache_path")
                .to_owned()
        };
        assert_eq!(store("/etc/ixproxy"), "/etc/ixproxy/cache/envoy");
        let relative = store(".");
        assert!(
            std::path::Path::new(&relative).is_absolute() && relative.ends_with("/cache/envoy"),
            "{relative}"
        );
    }

    #[test]
    fn max_body_bytes_is_envoys_uint32() {
        let (_, bootstrap) = generate_ok(&format!(
            "{CONFIG}cache: {{max_bytes: 10000000000, max_object_bytes: 5000000000}}\n"
        ));
        // Over u32: 0, Envoy's "no limit of the filter's own".
        assert_eq!(
            hcm(&bootstrap)["http_filters"][3]["typed_config"]["max_body_bytes"],
            0
        );
    }
}
