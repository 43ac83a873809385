//! The connection manager's access log (README: Operating, Access log): the same fields as the
//! native gateway's line (the core's [`AccessRecord`](ixproxy_core::access_log::AccessRecord)),
//! in Envoy's command operators, on stdout; and `trusted_proxies` as Envoy's XFF original-IP
//! detection.
//!
//! What Envoy knows itself comes from its operators; what only the filter knows (the request id
//! it settled, so a client value the core refuses is never logged; the client's
//! Host, which the filter rewrites to the origin's; with `trusted_proxies`, the client address of
//! the first stream, as a stream Envoy recreates for a redirect lacks the `X-Forwarded-For` the
//! filter removed (without, it is the connection's peer on every stream: Envoy's operator); the
//! source, the outcome, the origin host and the cache result) from the filter state it fills
//! ([`LOG_PROPERTIES`](ixproxy_core::envoy::LOG_PROPERTIES)). Never `:path`: it carries the
//! signature and the origin URL.

use ixproxy_core::addr::IpNet;
use ixproxy_core::config::AccessLogFormat;
use ixproxy_core::envoy::{
    INTERNAL_REDIRECT, LOG_CACHE, LOG_CLIENT_IP, LOG_HOST, LOG_ORIGIN_HOST, LOG_OUTCOME,
    LOG_REQUEST_ID, LOG_SOURCE,
};
use serde_yaml::Value;

use crate::typed;

/// The Envoy command operator of each access log field, in the native line's order. Without
/// `trusted_proxies` (`client_ip_by_envoy`) the client address is Envoy's own operator: every
/// stream of the request, one recreated for a redirect too, has the connection's peer as its
/// downstream address, and the filter is spared two host calls (bench/NOTES.md); with them, the
/// address found in the first stream's `X-Forwarded-For` is the filter's to keep.
pub(crate) fn fields(client_ip_by_envoy: bool) -> Vec<(&'static str, String)> {
    let state = |name: &str| format!("%FILTER_STATE(wasm.{name}:PLAIN)%");
    let client_ip = if client_ip_by_envoy {
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%".to_owned()
    } else {
        state(LOG_CLIENT_IP)
    };
    vec![
        ("ts", "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%".to_owned()),
        ("request_id", state(LOG_REQUEST_ID)),
        ("client_ip", client_ip),
        ("method", "%REQ(:METHOD)%".to_owned()),
        ("host", state(LOG_HOST)),
        ("source", state(LOG_SOURCE)),
        ("outcome", state(LOG_OUTCOME)),
        ("status", "%RESPONSE_CODE%".to_owned()),
        ("origin_host", state(LOG_ORIGIN_HOST)),
        ("bytes_sent", "%BYTES_SENT%".to_owned()),
        ("duration_ms", "%DURATION%".to_owned()),
        ("upstream_ms", "%RESPONSE_DURATION%".to_owned()),
        ("cache", state(LOG_CACHE)),
    ]
}

/// The connection manager's `access_log` list for `format` (empty for `off`); see [`fields`]
/// for `client_ip_by_envoy`.
pub(crate) fn access_log(format: AccessLogFormat, client_ip_by_envoy: bool) -> Vec<Value> {
    let log_format = match format {
        AccessLogFormat::Off => return Vec::new(),
        AccessLogFormat::Json => {
            let mut object = serde_yaml::Mapping::new();
            for (name, operator) in fields(client_ip_by_envoy) {
                object.insert(name.into(), operator.into());
            }
            map! { "json_format" => Value::Mapping(object) }
        }
        AccessLogFormat::Text => {
            let line = fields(client_ip_by_envoy)
                .into_iter()
                .map(|(name, operator)| format!("{name}={operator}"))
                .collect::<Vec<_>>()
                .join(" ");
            map! { "text_format_source" => map! { "inline_string" => format!("{line}\n") } }
        }
    };
    vec![map! {
        "name" => "envoy.access_loggers.stdout",
        // Envoy logs the stream it replaces to follow an origin redirect too; the client
        // request's one line is the last stream's.
        "filter" => map! {
            "extension_filter" => map! {
                "name" => "envoy.access_loggers.extension_filters.cel",
                "typed_config" => typed(
                    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    map! {
                        "expression" => format!("response.code_details != \"{INTERNAL_REDIRECT}\""),
                    },
                ),
            },
        },
        "typed_config" => typed(
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            map! { "log_format" => log_format },
        ),
    }]
}

/// The connection manager's `original_ip_detection_extensions` for `trusted_proxies`: from a
/// trusted peer, the client is the first untrusted address of `X-Forwarded-For` from its end,
/// as on the native gateway. Empty without trusted proxies (the peer is the client).
pub(crate) fn original_ip_detection(trusted: &[IpNet]) -> Vec<Value> {
    if trusted.is_empty() {
        return Vec::new();
    }
    let cidrs: Vec<Value> = trusted
        .iter()
        .map(|net| {
            map! {
                "address_prefix" => net.addr.to_string(),
                "prefix_len" => u32::from(net.len),
            }
        })
        .collect();
    vec![map! {
        "name" => "envoy.extensions.http.original_ip_detection.xff",
        "typed_config" => typed(
            "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig",
            map! { "xff_trusted_cidrs" => map! { "cidrs" => cidrs } },
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{generate_ok, hcm, wasm_config, CONFIG};
    use ixproxy_core::access_log::AccessRecord;

    #[test]
    fn envoy_logs_the_client_address_itself_unless_proxies_are_trusted() {
        for (yaml, by_envoy) in [
            (CONFIG.to_owned(), true),
            (format!("{CONFIG}trusted_proxies: [10.0.0.0/8]\n"), false),
        ] {
            let (_, bootstrap) = generate_ok(&yaml);
            let line = &hcm(&bootstrap)["access_log"][0]["typed_config"]["log_format"];
            let operator = line["json_format"]["client_ip"]
                .as_str()
                .expect("client_ip");
            assert_eq!(operator.starts_with("%DOWNSTREAM_REMOTE_ADDRESS"), by_envoy);
            let plugin: serde_json::Value = serde_json::from_str(
                wasm_config(&bootstrap)["configuration"]["value"]
                    .as_str()
                    .expect("plugin configuration"),
            )
            .expect("json");
            assert_eq!(
                plugin["client_ip_by_envoy"].as_bool().unwrap_or(false),
                by_envoy
            );
        }
    }

    #[test]
    fn every_field_of_the_native_line_has_an_operator_and_none_reads_the_path() {
        let record = AccessRecord {
            ts_micros: 0,
            request_id: "r",
            client_ip: "192.0.2.1".parse().ok(),
            method: "GET",
            host: "h",
            source: None,
            outcome: ixproxy_core::Outcome::Forwarded,
            status: 200,
            origin: None,
            bytes_sent: 0,
            duration_us: 0,
            upstream_us: None,
            cache: None,
        };
        let json: serde_json::Value =
            serde_json::from_str(&record.render(AccessLogFormat::Json).expect("json"))
                .expect("parses");
        let native: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for by_envoy in [false, true] {
            let envoy: Vec<&str> = fields(by_envoy).iter().map(|(name, _)| *name).collect();
            let (mut a, mut b) = (native.clone(), envoy.clone());
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
            for (_, operator) in fields(by_envoy) {
                assert!(!operator.contains(":PATH") && !operator.contains("ORIGINAL_PATH"));
            }
            assert!(access_log(AccessLogFormat::Off, by_envoy).is_empty());
            assert_eq!(access_log(AccessLogFormat::Json, by_envoy).len(), 1);
        }
        let client_ip = |by_envoy| {
            fields(by_envoy)
                .into_iter()
                .find(|(name, _)| *name == "client_ip")
                .map(|(_, operator)| operator)
        };
        assert_eq!(
            client_ip(true).as_deref(),
            Some("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
        );
        assert_eq!(
            client_ip(false),
            Some(format!("%FILTER_STATE(wasm.{LOG_CLIENT_IP}:PLAIN)%"))
        );
    }
}
