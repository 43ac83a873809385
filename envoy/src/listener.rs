//! The gateway listener (its TLS filter chains in [`crate::listener_tls`]): its HTTP connection manager (codec limits, no target rewriting, the
//! local reply mapping), the HTTP filter chain, and the two routes with their redirect policy.

use ixproxy_core::config::Limits;
use ixproxy_core::envoy::{
    ALLOW_PRIVATE_HEADER, FORWARDED_PROTO, LOCATION_HEADER, UPSTREAM_HEADER,
};
use ixproxy_core::fallback::{FALLBACK_AUTHORITY, FALLBACK_HOP_HEADER};
use ixproxy_core::response::FOLLOWED_REDIRECTS;
use serde_yaml::Value;

use crate::access_log::{access_log, original_ip_detection};
use crate::bounds::{http2_protocol_options, PER_CONNECTION_BUFFER_LIMIT_BYTES};
use crate::cache::cache_filter;
use crate::clusters::{dns_cache, PLAIN_CLUSTER, TLS_CLUSTER};
use crate::listener_tls::listener_fields;
use crate::local_reply::local_reply_config;
use crate::rbac::private_origin_filter;
use crate::wasm::{upstream_http_filters, wasm_filter};
use crate::{duration, socket_address, strings, typed, Parts};

/// Name of the listener, its connection manager's stat prefix, route config and virtual host.
const NAME: &str = "ixproxy";

/// The `static_resources.listeners` entry on `listen`.
pub(crate) fn listener(p: &Parts) -> Value {
    let mut listener = map! {
        "name" => NAME,
        "address" => socket_address(p.listen),
        "per_connection_buffer_limit_bytes" => PER_CONNECTION_BUFFER_LIMIT_BYTES,
    };
    let hcm = map! {
        "name" => "envoy.filters.network.http_connection_manager",
        "typed_config" => http_connection_manager(p),
    };
    for (key, value) in listener_fields(p.tls.as_ref(), p.client.header_timeout, hcm) {
        listener[key] = value;
    }
    listener
}

fn http_connection_manager(p: &Parts) -> Value {
    typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        map! {
            "stat_prefix" => NAME,
            "codec_type" => "AUTO",
            // Envoy's HTTP/1 codec refuses a request with both Content-Length and
            // Transfer-Encoding before any filter runs, so it would never be counted. Allowed
            // here, it reaches the filter as a request with a body, which the core refuses (400
            // `bad_request`) like the native gateway does; nothing with a body is ever forwarded.
            "http_protocol_options" => map! { "allow_chunked_length" => true },
            // The filter keeps a valid client `X-Request-ID` or sets a new one (the core's rule);
            // Envoy neither replaces nor generates one, and echoes it on every response.
            "generate_request_id" => false,
            "preserve_external_request_id" => true,
            "always_set_request_id_in_response" => true,
            "access_log" => access_log(p.access_log, p.trusted_proxies.is_empty()),
            // An edge proxy: the client is the peer of the connection, whatever
            // `x-forwarded-for` claims (unless the peer is one of `trusted_proxies`, see
            // `original_ip_detection_extensions`), and nothing is appended to it (the filter
            // never forwards it to the origin). Envoy then treats every client as external and
            // removes the `x-envoy-*` request headers a client sent before any filter runs.
            // (Envoy refuses both at once: with trusted proxies, the extension decides.)
            "use_remote_address" => p.trusted_proxies.is_empty(),
            "xff_num_trusted_hops" => 0,
            "skip_xff_append" => true,
            "original_ip_detection_extensions" => original_ip_detection(&p.trusted_proxies),
            // No `server` header of Envoy's own; the origin's never passes the filter's
            // response allowlist (the native gateway sends none either).
            "server_header_transformation" => "PASS_THROUGH",
            "max_request_headers_kb" => max_request_headers_kb(&p.limits),
            // The whole request header within `client_header_timeout` (Envoy then answers 408
            // and closes: a request that never arrived, counted by no outcome).
            "request_headers_timeout" => duration(p.client.header_timeout),
            // A stream with no activity either way; the routes replace it with
            // `upstream.body_timeout` for forwarded requests.
            "stream_idle_timeout" => duration(p.client.idle_timeout),
            // A response whose end Envoy holds for a client that stopped reading (the origin's
            // body complete, the rest waiting on the client's flow-control window or socket;
            // a local reply too): reset after `client_write_timeout`. Envoy 1.40 arms this
            // timer only once the stream has ended on its side; while the origin's body still
            // streams, the route's `idle_timeout` bounds a client that reads nothing (see
            // `route`).
            "stream_flush_timeout" => duration(p.client.write_timeout),
            "common_http_protocol_options" => map! {
                // A keep-alive connection without a request in flight is closed after
                // `client_idle_timeout` (HTTP/2: drained).
                "idle_timeout" => duration(p.client.idle_timeout),
                "max_headers_count" => max_headers_count(&p.limits),
            },
            "http2_protocol_options" => http2_protocol_options(),
            // The signature covers the raw request target: never rewrite it.
            "normalize_path" => false,
            "merge_slashes" => false,
            "path_with_escaped_slashes_action" => "KEEP_UNCHANGED",
            "local_reply_config" => local_reply_config(),
            "route_config" => map! {
                "name" => NAME,
                "virtual_hosts" => vec![map! {
                    "name" => NAME,
                    "domains" => strings(&["*"]),
                    "routes" => vec![
                        route("https", TLS_CLUSTER, p),
                        route("http", PLAIN_CLUSTER, p),
                    ],
                }],
            },
            "http_filters" => p
                .fallbacks
                .then(fallback_filter)
                .into_iter()
                .chain([
                wasm_filter(p),
                map! {
                    "name" => "envoy.filters.http.dynamic_forward_proxy",
                    "typed_config" => typed(
                        "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                        // RBAC checks the address saved here.
                        map! { "dns_cache_config" => dns_cache(), "save_upstream_address" => true },
                    ),
                },
                private_origin_filter(),
            ])
            // Last before the router: Envoy's cache fetches misses on a side channel that the
            // filters after it never see (see `cache`).
            .chain(p.cache.as_ref().map(cache_filter))
            .chain([router(p)])
            .collect::<Vec<_>>(),
        },
    )
}

/// Envoy's custom response filter, first in the chain so that it sees each response after the
/// ixproxy filter (filters encode in reverse order): a response the filter marked with
/// [`FALLBACK_HOP_HEADER`] (the origin's 404/5xx or a failure, for a source with a fallback
/// image) is replaced by a new request for [`FALLBACK_AUTHORITY`], recreated from the same
/// request (a GET, as the filter chain runs it again). The filter recognises that request by its
/// fallback state and sends it to the fallback image's URL. Envoy takes one such replacement per
/// request.
fn fallback_filter() -> Value {
    map! {
        "name" => "envoy.filters.http.custom_response",
        "typed_config" => typed(
            "envoy.extensions.filters.http.custom_response.v3.CustomResponse",
            map! {
                "custom_response_matcher" => map! {
                    "matcher_list" => map! {
                        "matchers" => vec![map! {
                            "predicate" => map! {
                                "single_predicate" => map! {
                                    "input" => map! {
                                        "name" => "fallback_hop",
                                        "typed_config" => typed(
                                            "envoy.type.matcher.v3.HttpResponseHeaderMatchInput",
                                            map! { "header_name" => FALLBACK_HOP_HEADER },
                                        ),
                                    },
                                    "value_match" => map! { "exact" => "1" },
                                },
                            },
                            "on_match" => map! {
                                "action" => map! {
                                    "name" => "fallback_image",
                                    "typed_config" => typed(
                                        "envoy.extensions.http.custom_response.redirect_policy.v3.RedirectPolicy",
                                        map! {
                                            "uri" => format!("http://{FALLBACK_AUTHORITY}/"),
                                            // Envoy finds no route for a recreated request
                                            // without it (the routes removed it, see `route`).
                                            "request_headers_to_add" => vec![map! {
                                                "header" => map! {
                                                    "key" => FORWARDED_PROTO,
                                                    "value" => "http",
                                                },
                                                "append_action" => "OVERWRITE_IF_EXISTS_OR_ADD",
                                            }],
                                        },
                                    ),
                                },
                            },
                        }],
                    },
                },
            },
        ),
    }
}

/// The router; the filter's upstream role is its upstream filter, unless the cache is on: then
/// the clusters carry it (see [`crate::clusters`]), where the cache's side channel runs it too.
fn router(p: &Parts) -> Value {
    let mut config = map! { "suppress_envoy_headers" => true };
    if p.cache.is_none() {
        config["upstream_http_filters"] = upstream_http_filters(p);
    }
    map! {
        "name" => "envoy.filters.http.router",
        "typed_config" => typed("envoy.extensions.filters.http.router.v3.Router", config),
    }
}

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
    // `x-forwarded-proto` too without the cache: the routes edit the header map Envoy recreates a
    // redirected request from, as the upstream role's removal does, and the role puts it back
    // on redirect responses either way; here it costs the role no host call. With the cache the
    // role removes it (the cache's side channel skips these removals).
    let mut removed = vec![UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER];
    if p.cache.is_none() {
        removed.push(FORWARDED_PROTO);
    }
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
            // Envoy's route timeout runs until the response is complete, which would cut a slow
            // client's large download; `upstream.timeout` ends at the response header. The
            // per-try timeout is that: Envoy ignores it once the response started downstream
            // (the filter sets it per hop to what is left, see `x-envoy-upstream-rq-per-try-
            // timeout-ms`). The body is bounded by `idle_timeout` and `max_body_bytes`.
            "timeout" => "0s",
            "retry_policy" => map! {
                "num_retries" => 0,
                "per_try_timeout" => duration(p.timeout),
            },
            // The longest pause of a forwarded stream: `upstream.body_timeout`. It is also
            // what bounds a client that reads nothing while the body still streams (an HTTP/2
            // stream with a zero window, an HTTP/1 socket that is not read): Envoy then stops
            // reading the origin (flow control), and its stream idle timer cannot tell that
            // from an origin that pauses; Envoy 1.40 has no timer on a stream held back by
            // its client alone (`stream_flush_timeout` starts only once the body is complete,
            // the HTTP/2 options have none). One timer, two bounds: `client_write_timeout`
            // cannot shorten it without cutting origins that pause within `body_timeout` (or
            // answer within `upstream.timeout`: the timer runs before the response header
            // too), nor lengthen it without letting origins pause longer. So a stream whose
            // client stops reading is reset after `body_timeout` (with its slot and origin
            // request), and `ixproxy envoy-config` warns when that is later than
            // `client_write_timeout` (`CLIENT_STALL_WARNING`).
            "idle_timeout" => duration(p.body_timeout),
            "internal_redirect_policy" => map! {
                "max_internal_redirects" => p.limits.max_redirects,
                "redirect_response_codes" => Value::Sequence(
                    FOLLOWED_REDIRECTS.iter().map(|c| Value::from(*c)).collect(),
                ),
                "response_headers_to_copy" => strings(&[LOCATION_HEADER, FORWARDED_PROTO]),
                "allow_cross_scheme_redirect" => true,
            },
        },
        "request_headers_to_remove" => strings(&removed),
    }
}

/// `max_request_headers_kb` for the listener: large enough that the filter's own limits (431 for
/// headers, 414 for the target) are what clients see, Envoy's codec limit only beyond them
/// (pseudo-headers and Envoy's own additions need room too). Envoy accepts at most 8192.
fn max_request_headers_kb(limits: &Limits) -> u64 {
    let bytes = limits.max_request_header_bytes as u64 + limits.max_request_target_bytes as u64;
    (bytes / 1024 + 9).min(8192)
}

/// `max_headers_count` for the listener: Envoy's codec answers a request over it with its own
/// 431 before the filter runs, so nothing is counted for it. Twice the filter's limit (plus room
/// for pseudo-headers and Envoy's additions) keeps the filter's counted 431 the answer for any
/// plausible excess; past that Envoy's codec refuses the request itself.
fn max_headers_count(limits: &Limits) -> u64 {
    limits.max_request_headers as u64 * 2 + 16
}

#[cfg(test)]
mod tests {
    use ixproxy_core::envoy::UPSTREAM_ROOT_ID;

    use super::*;
    use crate::testing::{cluster, generate_ok, hcm, wasm_config, CONFIG};

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
            assert_eq!(route["route"]["timeout"], "0s");
            assert_eq!(route["route"]["retry_policy"]["per_try_timeout"], "7s");
            assert_eq!(route["route"]["retry_policy"]["num_retries"], 0);
            assert_eq!(route["route"]["cluster"], cluster);
            assert_eq!(route["match"]["headers"][0]["name"], ":scheme");
            assert_eq!(route["match"]["headers"][0]["string_match"]["exact"], value);
            let removed = serde_yaml::to_string(&route["request_headers_to_remove"]).expect("yaml");
            for header in [UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER, FORWARDED_PROTO] {
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
        assert!(upstream[0]["typed_config"]["config"]
            .get("configuration")
            .is_none());
        assert_eq!(upstream[1]["name"], "envoy.filters.http.upstream_codec");
        assert_eq!(upstream.as_sequence().map(Vec::len), Some(2));
        assert_eq!(hcm(&bootstrap)["generate_request_id"], false);
        assert_eq!(hcm(&bootstrap)["use_remote_address"], true);
        assert_eq!(hcm(&bootstrap)["xff_num_trusted_hops"], 0);
        assert_eq!(hcm(&bootstrap)["skip_xff_append"], true);
        assert_eq!(
            hcm(&bootstrap)["server_header_transformation"],
            "PASS_THROUGH"
        );
        assert_eq!(
            hcm(&bootstrap)["http_protocol_options"]["allow_chunked_length"],
            true,
            "CL+TE reaches the filter, which refuses and counts it"
        );
        assert_eq!(hcm(&bootstrap)["local_reply_config"], local_reply_config());
    }

    #[test]
    fn client_and_body_timeouts_follow_the_config() {
        let (_, defaults) = generate_ok(CONFIG);
        let yaml = CONFIG.replace("timeout: 7s}", "timeout: 7s, body_timeout: 45s}")
            + "limits: {client_header_timeout: 4s, client_idle_timeout: 20s, \
               client_write_timeout: 1500ms}\n";
        let (_, custom) = generate_ok(&yaml);
        for (bootstrap, header, idle, write, body) in [
            (&defaults, "10s", "30s", "30s", "30s"),
            (&custom, "4s", "20s", "1.500000000s", "45s"),
        ] {
            let hcm = hcm(bootstrap);
            assert_eq!(hcm["request_headers_timeout"], header);
            assert_eq!(hcm["stream_idle_timeout"], idle);
            assert_eq!(hcm["common_http_protocol_options"]["idle_timeout"], idle);
            assert_eq!(hcm["stream_flush_timeout"], write);
            for route in hcm["route_config"]["virtual_hosts"][0]["routes"]
                .as_sequence()
                .expect("routes")
            {
                assert_eq!(
                    route["route"]["retry_policy"]["per_try_timeout"], "7s",
                    "until the response header"
                );
                assert_eq!(route["route"]["timeout"], "0s", "never the whole body");
                assert_eq!(route["route"]["idle_timeout"], body);
            }
        }
    }

    #[test]
    fn redirects_and_request_limits_follow_the_config() {
        let (_, defaults) = generate_ok(CONFIG);
        let yaml = CONFIG.replace("timeout: 7s}", "timeout: 7s, max_redirects: 5}")
            + "limits: {max_request_headers: 50, max_request_header_bytes: 65536, \
               max_request_target_bytes: 16384}\n";
        let (_, custom) = generate_ok(&yaml);
        for (bootstrap, redirects, headers_kb, headers_count) in
            [(&defaults, 3, 49, 216), (&custom, 5, 89, 116)]
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
    fn a_fallback_image_installs_the_custom_response_filter_before_the_ixproxy_filter() {
        let names = crate::testing::filter_names;
        let plugin = |bootstrap: &Value, at: usize| -> String {
            hcm(bootstrap)["http_filters"][at]["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .expect("plugin json")
                .to_owned()
        };
        let (_, without) = generate_ok(CONFIG);
        assert!(!names(&without)
            .iter()
            .any(|n| n.contains("custom_response")));
        assert!(!plugin(&without, 0).contains("fallback_redirects"));

        let yaml = format!("{CONFIG}    image_missing: http://127.0.0.1:8/missing.png\n");
        let (_, with) = generate_ok(&yaml);
        let names = names(&with);
        assert_eq!(names[0], "envoy.filters.http.custom_response", "{names:?}");
        assert_eq!(names[1], "envoy.filters.http.wasm", "{names:?}");
        assert!(plugin(&with, 1).contains("\"fallback_redirects\":true"));
        let matcher = &hcm(&with)["http_filters"][0]["typed_config"]["custom_response_matcher"]
            ["matcher_list"]["matchers"][0];
        assert_eq!(
            matcher["predicate"]["single_predicate"]["input"]["typed_config"]["header_name"],
            FALLBACK_HOP_HEADER
        );
        let policy = &matcher["on_match"]["action"]["typed_config"];
        assert_eq!(
            policy["uri"],
            format!("http://{FALLBACK_AUTHORITY}/").as_str()
        );
        assert_eq!(
            policy["request_headers_to_add"][0]["header"]["key"],
            FORWARDED_PROTO
        );
    }
}
