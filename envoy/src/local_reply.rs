//! `local_reply_config`: the replies Envoy makes itself for a request the filter forwarded (the
//! origin could not be reached, did not answer in time, a concurrency limit, the RBAC filter
//! refusing a private resolved address) get the status, body and headers of the core's
//! [`Rejection`] for the same failure, so a client sees what the native gateway answers.
//!
//! Which Envoy response flags mean which failure is the core's ([`ORIGIN_ERROR_FLAGS`],
//! [`ORIGIN_TIMEOUT_FLAGS`], [`OVERLOADED_FLAGS`]); this module only renders the mappers. The
//! filter's own replies carry no response flag and are matched by none of them.

use ixproxy_core::envoy::{
    DNS_CACHE_OVERFLOW_STATUS, ENVOY_TIMEOUT_STATUS, ORIGIN_ERROR_FLAGS, ORIGIN_TIMEOUT_FLAGS,
    OVERLOADED_FLAGS, TIMEOUT_DETAILS, UPSTREAM_HEADER,
};
use ixproxy_core::outcome::LOCAL_REPLY_HEADERS;
use ixproxy_core::{Failure, Rejection};
use serde_yaml::Value;

use crate::strings;

/// The connection manager's `local_reply_config`. Envoy applies the first mapper whose filter
/// matches.
pub(crate) fn local_reply_config() -> Value {
    map! {
        "mappers" => vec![
            // Before the flag mappers: a connect, TLS handshake or DNS lookup that ran out of
            // time is a 504.
            details_mapper(&TIMEOUT_DETAILS, Failure::ConnectTimeout),
            flag_mapper(&ORIGIN_ERROR_FLAGS, &Rejection::origin_error()),
            // Envoy's 504 only: `SI` on a request the client never finished is its 408.
            only_status(
                flag_mapper(&ORIGIN_TIMEOUT_FLAGS, &Rejection::origin_timeout()),
                ENVOY_TIMEOUT_STATUS,
                "ixproxy.origin_timeout_status",
            ),
            flag_mapper(&OVERLOADED_FLAGS, &Rejection::overloaded()),
            before_router_mapper(
                Rejection::origin_address_denied().status(),
                "ixproxy.private_origin_status",
                &Rejection::origin_address_denied(),
            ),
            before_router_mapper(
                DNS_CACHE_OVERFLOW_STATUS,
                "ixproxy.dns_cache_overflow_status",
                &Rejection::overloaded(),
            ),
            every_other_reply(),
        ],
    }
}

/// A mapper for Envoy's replies whose `response.code_details` contain one of `fragments`: they
/// get the core's answer to `failure`.
fn details_mapper(fragments: &[&str], failure: Failure) -> Value {
    let expression = fragments
        .iter()
        .map(|f| format!("response.code_details.contains({f:?})"))
        .collect::<Vec<_>>()
        .join(" || ");
    let rejection = failure.rejection().unwrap_or_else(Rejection::internal);
    let mut mapper = map! {
        "filter" => map! {
            "extension_filter" => map! {
                "name" => "envoy.access_loggers.extension_filters.cel",
                "typed_config" => crate::typed(
                    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    map! { "expression" => expression },
                ),
            },
        },
        "status_code" => u32::from(rejection.status()),
    };
    render_reply(&mut mapper, &rejection);
    mapper
}

/// A mapper for Envoy's replies carrying one of `flags`: Envoy's status (503 for most of them)
/// becomes the rejection's.
fn flag_mapper(flags: &[&str], rejection: &Rejection) -> Value {
    let mut mapper = map! {
        "filter" => map! { "response_flag_filter" => map! { "flags" => strings(flags) } },
        "status_code" => u32::from(rejection.status()),
    };
    render_reply(&mut mapper, rejection);
    mapper
}

/// `mapper` restricted to Envoy replies whose own status is `status`.
fn only_status(mut mapper: Value, status: u16, runtime_key: &str) -> Value {
    let filter = mapper["filter"].clone();
    mapper["filter"] = map! {
        "and_filter" => map! { "filters" => vec![filter, status_filter(status, runtime_key)] },
    };
    mapper
}

fn status_filter(status: u16, runtime_key: &str) -> Value {
    map! {
        "status_code_filter" => map! {
            "comparison" => map! {
                "op" => "EQ",
                "value" => map! {
                    "default_value" => u32::from(status),
                    "runtime_key" => runtime_key,
                },
            },
        },
    }
}

/// A reply with Envoy's `status` made before the router, which carries no response flag: the
/// request still carries [`UPSTREAM_HEADER`] (the routes strip it when the request goes
/// upstream). Two filters answer there: RBAC refusing a private resolved origin address with
/// Forbidden (the core's status for it), and the dynamic forward proxy with 503 when its DNS cache
/// is full or has too many lookups pending ([`DNS_CACHE_OVERFLOW_STATUS`]). Envoy's status is
/// kept: it is the rejection's.
fn before_router_mapper(status: u16, runtime_key: &str, rejection: &Rejection) -> Value {
    debug_assert_eq!(status, rejection.status());
    let mut mapper = map! {
        "filter" => map! {
            "and_filter" => map! {
                "filters" => vec![
                    status_filter(status, runtime_key),
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
    };
    render_reply(&mut mapper, rejection);
    mapper
}

/// The last mapper: any other reply Envoy makes itself (its codec refusing a request with 400,
/// 408 or 431, the filter's own rejections, which already carry them) keeps its status and body
/// and gets the core's [`LOCAL_REPLY_HEADERS`]: never cached, inert for browsers.
fn every_other_reply() -> Value {
    map! {
        "filter" => map! {
            "status_code_filter" => map! {
                "comparison" => map! {
                    "op" => "GE",
                    "value" => map! {
                        "default_value" => 0,
                        "runtime_key" => "ixproxy.local_reply_headers_from",
                    },
                },
            },
        },
        "headers_to_add" => Value::Sequence(
            LOCAL_REPLY_HEADERS
                .iter()
                .map(|(name, value)| map! {
                    "header" => map! { "key" => *name, "value" => *value },
                    "append_action" => "OVERWRITE_IF_EXISTS_OR_ADD",
                })
                .collect(),
        ),
    }
}

/// Adds the rejection's body and headers to `mapper`. Envoy sets `content-type` from the body
/// format after applying `headers_to_add`, so the core's content type goes into the format
/// override and the other headers (`retry-after`) into `headers_to_add`.
fn render_reply(mapper: &mut Value, rejection: &Rejection) {
    let mut content_type = None;
    let mut headers = Vec::new();
    for (name, value) in rejection.headers() {
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else {
            headers.push(map! {
                "header" => map! { "key" => name, "value" => value },
                "append_action" => "OVERWRITE_IF_EXISTS_OR_ADD",
            });
        }
    }
    mapper["body"] = map! { "inline_string" => rejection.body() };
    if let Some(content_type) = content_type {
        mapper["body_format_override"] = map! {
            // The body as set above, verbatim; only the content type changes.
            "text_format_source" => map! { "inline_string" => "%LOCAL_REPLY_BODY%" },
            "content_type" => content_type,
        };
    }
    if !headers.is_empty() {
        mapper["headers_to_add"] = Value::Sequence(headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{generate_ok, hcm, CONFIG};

    #[test]
    fn each_kind_of_envoy_reply_gets_the_core_rejection() {
        let (_, bootstrap) = generate_ok(CONFIG);
        let mappers = &hcm(&bootstrap)["local_reply_config"]["mappers"];
        let expected: [(&[&str], Rejection); 3] = [
            (&ORIGIN_ERROR_FLAGS, Rejection::origin_error()),
            (&ORIGIN_TIMEOUT_FLAGS, Rejection::origin_timeout()),
            (&OVERLOADED_FLAGS, Rejection::overloaded()),
        ];
        // First, before the `UF` mapper: Envoy's connect timeout (TCP or TLS handshake).
        let timeout = Rejection::origin_timeout();
        let details = &mappers[0];
        let cel = &details["filter"]["extension_filter"];
        assert_eq!(cel["name"], "envoy.access_loggers.extension_filters.cel");
        assert_eq!(
            cel["typed_config"]["expression"],
            "response.code_details.contains(\"{connection_timeout\") || \
             response.code_details.contains(\"resolve_timeout\")"
        );
        assert_eq!(details["status_code"], u64::from(timeout.status()));
        assert_eq!(details["body"]["inline_string"], timeout.body().as_str());
        assert_reply_headers(details, &timeout);
        for (i, (flags, rejection)) in expected.iter().enumerate() {
            let mapper = &mappers[i + 1];
            let flag_filter = if i == 1 {
                // Timeouts: only Envoy's 504 (not the 408 of an unfinished request).
                let both = &mapper["filter"]["and_filter"]["filters"];
                assert_eq!(
                    both[1]["status_code_filter"]["comparison"]["value"]["default_value"],
                    504
                );
                &both[0]
            } else {
                &mapper["filter"]
            };
            assert_eq!(flag_filter["response_flag_filter"]["flags"], strings(flags));
            assert_eq!(mapper["status_code"], u64::from(rejection.status()));
            assert_eq!(mapper["body"]["inline_string"], rejection.body().as_str());
            assert_reply_headers(mapper, rejection);
        }
        // Every reply is inert and uncached; only the overloaded one says when to retry.
        let keys = |m: &Value| -> Vec<String> {
            m["headers_to_add"]
                .as_sequence()
                .map(|s| {
                    s.iter()
                        .filter_map(|h| h["header"]["key"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        for mapper in mappers.as_sequence().expect("mappers") {
            let keys = keys(mapper);
            for key in [
                "cache-control",
                "x-content-type-options",
                "content-security-policy",
            ] {
                assert!(keys.iter().any(|k| k == key), "{key} missing: {keys:?}");
            }
        }
        assert!(!keys(&mappers[1]).iter().any(|k| k == "retry-after"));
        assert!(keys(&mappers[3]).iter().any(|k| k == "retry-after"));

        let denied = Rejection::origin_address_denied();
        let rbac = &mappers[4];
        let filters = &rbac["filter"]["and_filter"]["filters"];
        assert_eq!(
            filters[0]["status_code_filter"]["comparison"]["value"]["default_value"],
            u64::from(denied.status())
        );
        assert_eq!(
            filters[1]["header_filter"]["header"]["name"],
            UPSTREAM_HEADER
        );
        assert!(rbac.get("status_code").is_none(), "RBAC's own status stays");
        assert_eq!(rbac["body"]["inline_string"], denied.body().as_str());
        assert_reply_headers(rbac, &denied);

        // The dynamic forward proxy's flagless 503 (DNS cache full) before the router.
        let overloaded = Rejection::overloaded();
        let dns = &mappers[5];
        let filters = &dns["filter"]["and_filter"]["filters"];
        assert_eq!(
            filters[0]["status_code_filter"]["comparison"]["value"]["default_value"],
            u64::from(DNS_CACHE_OVERFLOW_STATUS)
        );
        assert_eq!(DNS_CACHE_OVERFLOW_STATUS, overloaded.status());
        assert_eq!(
            filters[1]["header_filter"]["header"]["name"],
            UPSTREAM_HEADER
        );
        assert_eq!(dns["body"]["inline_string"], overloaded.body().as_str());
        assert_reply_headers(dns, &overloaded);
        // Last, every other local reply (Envoy's codec refusals): status and body untouched,
        // the core's local reply headers added.
        let rest = &mappers[6];
        assert_eq!(
            rest["filter"]["status_code_filter"]["comparison"]["op"],
            "GE"
        );
        assert!(rest.get("status_code").is_none() && rest.get("body").is_none());
        for (name, value) in LOCAL_REPLY_HEADERS {
            assert!(
                rest["headers_to_add"]
                    .as_sequence()
                    .expect("headers")
                    .iter()
                    .any(|h| h["header"]["key"] == name && h["header"]["value"] == value),
                "{name}"
            );
        }
        assert_eq!(mappers.as_sequence().map(Vec::len), Some(7));
    }

    /// The mapper sends exactly the rejection's headers.
    fn assert_reply_headers(mapper: &Value, rejection: &Rejection) {
        for (name, value) in rejection.headers() {
            if name == "content-type" {
                assert_eq!(mapper["body_format_override"]["content_type"], value);
                assert_eq!(
                    mapper["body_format_override"]["text_format_source"]["inline_string"],
                    "%LOCAL_REPLY_BODY%"
                );
            } else {
                let added = mapper["headers_to_add"]
                    .as_sequence()
                    .expect("headers_to_add");
                assert!(
                    added
                        .iter()
                        .any(|h| h["header"]["key"] == name && h["header"]["value"] == value),
                    "{name}: {value} missing in {added:?}"
                );
            }
        }
        let extra = rejection.headers().count() - 1;
        assert_eq!(
            mapper["headers_to_add"].as_sequence().map_or(0, Vec::len),
            extra
        );
    }
}
