//! Envoy's own bounds on what clients and origins can make it hold: client connections (the
//! overload manager's global limit), per-connection buffers, HTTP/2 stream and window sizes, and
//! the origin clusters' circuit breakers. The values without a config field are the ones Envoy's
//! "Configuring Envoy as an edge proxy" guide recommends; the ones with a field come from the
//! config's `limits`. A request refused by one of these limits gets the core's 503 `overloaded`
//! through the local reply mappers (`OVERLOADED_FLAGS`).

use ixproxy_core::config::ClientLimits;
use serde_yaml::Value;

use crate::typed;

/// `per_connection_buffer_limit_bytes` of the listener and both clusters: how much Envoy buffers
/// per connection before it stops reading from it (flow control), so a slow reader on either
/// side holds at most this much of a response in memory.
pub(crate) const PER_CONNECTION_BUFFER_LIMIT_BYTES: u32 = 32 * 1024;

/// HTTP/2 `max_concurrent_streams` for client connections: requests one connection may have open.
pub(crate) const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2 `initial_stream_window_size`: unacknowledged bytes per stream (64 KiB).
pub(crate) const HTTP2_INITIAL_STREAM_WINDOW_SIZE: u32 = 64 * 1024;

/// HTTP/2 `initial_connection_window_size`: unacknowledged bytes per connection (1 MiB).
pub(crate) const HTTP2_INITIAL_CONNECTION_WINDOW_SIZE: u32 = 1024 * 1024;

/// `max_hosts` of the dynamic forward proxy's DNS cache: origin host names remembered at once.
/// A name beyond it is refused (503 `overloaded`) until an entry expires (`host_ttl`, 5 minutes),
/// so a flood of signed URLs naming distinct hosts cannot grow the cache without bound.
pub(crate) const DNS_CACHE_MAX_HOSTS: u32 = 1024;

/// The connection manager's HTTP/2 options for client connections.
pub(crate) fn http2_protocol_options() -> Value {
    map! {
        "max_concurrent_streams" => HTTP2_MAX_CONCURRENT_STREAMS,
        "initial_stream_window_size" => HTTP2_INITIAL_STREAM_WINDOW_SIZE,
        "initial_connection_window_size" => HTTP2_INITIAL_CONNECTION_WINDOW_SIZE,
    }
}

/// The bootstrap's `overload_manager`: at most `limits.max_connections` client connections open
/// at once, over all listeners but the admin API (`ignore_global_conn_limit`); Envoy closes a
/// connection over the limit as soon as it accepts it.
pub(crate) fn overload_manager(client: &ClientLimits) -> Value {
    map! {
        "resource_monitors" => vec![map! {
            "name" => "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config" => typed(
                "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                map! { "max_active_downstream_connections" => client.max_connections as u64 },
            ),
        }],
    }
}

/// `circuit_breakers` of an origin cluster: connections, requests waiting for a connection and
/// requests in flight to all origins of the cluster together, each at most
/// `limits.max_connections` (every origin request belongs to a client request, and a client
/// connection carries one request at a time on HTTP/1.1). Over a limit Envoy answers at once
/// with the `UO` flag, which the bootstrap turns into the core's 503 `overloaded`.
pub(crate) fn circuit_breakers(client: &ClientLimits) -> Value {
    let limit = client.max_connections as u64;
    map! {
        "thresholds" => vec![map! {
            "priority" => "DEFAULT",
            "max_connections" => limit,
            "max_pending_requests" => limit,
            "max_requests" => limit,
            // The routes configure no retries; none may be made.
            "max_retries" => 0,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::{PLAIN_CLUSTER, TLS_CLUSTER};
    use crate::testing::{cluster, generate_ok, hcm, CONFIG};

    #[test]
    fn client_connections_and_origin_concurrency_follow_max_connections() {
        let (_, defaults) = generate_ok(CONFIG);
        let (_, custom) = generate_ok(&(CONFIG.to_owned() + "limits: {max_connections: 250}\n"));
        for (bootstrap, limit) in [(&defaults, 10_000u64), (&custom, 250)] {
            let monitor = &bootstrap["overload_manager"]["resource_monitors"][0];
            assert_eq!(
                monitor["name"],
                "envoy.resource_monitors.global_downstream_max_connections"
            );
            assert_eq!(
                monitor["typed_config"]["max_active_downstream_connections"],
                limit
            );
            assert_eq!(bootstrap["admin"]["ignore_global_conn_limit"], true);
            for name in [PLAIN_CLUSTER, TLS_CLUSTER] {
                let cluster = cluster(bootstrap, name);
                let thresholds = &cluster["circuit_breakers"]["thresholds"];
                assert_eq!(thresholds.as_sequence().map(Vec::len), Some(1));
                let t = &thresholds[0];
                assert_eq!(t["priority"], "DEFAULT");
                for key in ["max_connections", "max_pending_requests", "max_requests"] {
                    assert_eq!(t[key], limit, "{name}.{key}");
                }
                assert_eq!(t["max_retries"], 0);
                assert_eq!(
                    cluster["per_connection_buffer_limit_bytes"],
                    u64::from(PER_CONNECTION_BUFFER_LIMIT_BYTES)
                );
                assert_eq!(
                    cluster["cluster_type"]["typed_config"]["dns_cache_config"]["max_hosts"],
                    u64::from(DNS_CACHE_MAX_HOSTS)
                );
            }
            let listener = &bootstrap["static_resources"]["listeners"][0];
            assert_eq!(
                listener["per_connection_buffer_limit_bytes"],
                u64::from(PER_CONNECTION_BUFFER_LIMIT_BYTES)
            );
            let h2 = &hcm(bootstrap)["http2_protocol_options"];
            assert_eq!(h2["max_concurrent_streams"], 100);
            assert_eq!(h2["initial_stream_window_size"], 65536);
            assert_eq!(h2["initial_connection_window_size"], 1048576);
        }
    }
}
