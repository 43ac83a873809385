//! `local_reply_config`: the replies Envoy makes itself for a request the filter forwarded (the
//! origin could not be reached, did not answer in time, a concurrency limit, the RBAC filter
//! refusing a private resolved address) get the status, body and headers of the core's
//! [`Rejection`] for the same failure, so a client sees what the native gateway answers.
//!
//! Which Envoy response flags mean which failure is the core's ([`ORIGIN_ERROR_FLAGS`],
//! [`ORIGIN_TIMEOUT_FLAGS`], [`OVERLOADED_FLAGS`]); this module only renders the mappers. The
//! filter's own replies carry no response flag and are matched by none of them.

use ixproxy_core::envoy::{
    ORIGIN_ERROR_FLAGS, ORIGIN_TIMEOUT_FLAGS, OVERLOADED_FLAGS, UPSTREAM_HEADER,
};
use ixproxy_core::Rejection;
use serde_yaml::Value;

use crate::strings;

/// The connection manager's `local_reply_config`. Envoy applies the first mapper whose filter
/// matches.
pub(crate) fn local_reply_config() -> Value {
    map! {
        "mappers" => vec![
            flag_mapper(&ORIGIN_ERROR_FLAGS, &Rejection::origin_error()),
            flag_mapper(&ORIGIN_TIMEOUT_FLAGS, &Rejection::origin_timeout()),
            flag_mapper(&OVERLOADED_FLAGS, &Rejection::overloaded()),
            private_origin_mapper(&Rejection::origin_address_denied()),
        ],
    }
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

/// The RBAC filter's refusal of a private resolved origin address. RBAC sets no response flag;
/// it answers Forbidden, the core's status for a denied address, and a local reply with that
/// status on a request still carrying [`UPSTREAM_HEADER`] (which the routes strip when the
/// request goes upstream) was made before the router, which only RBAC does.
fn private_origin_mapper(rejection: &Rejection) -> Value {
    let mut mapper = map! {
        "filter" => map! {
            "and_filter" => map! {
                "filters" => vec![
                    map! {
                        "status_code_filter" => map! {
                            "comparison" => map! {
                                "op" => "EQ",
                                "value" => map! {
                                    "default_value" => u32::from(rejection.status()),
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
    };
    render_reply(&mut mapper, rejection);
    mapper
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
        for (i, (flags, rejection)) in expected.iter().enumerate() {
            let mapper = &mappers[i];
            assert_eq!(
                mapper["filter"]["response_flag_filter"]["flags"],
                strings(flags)
            );
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
        assert!(!keys(&mappers[0]).iter().any(|k| k == "retry-after"));
        assert!(keys(&mappers[2]).iter().any(|k| k == "retry-after"));

        let denied = Rejection::origin_address_denied();
        let rbac = &mappers[3];
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
        assert_eq!(mappers.as_sequence().map(Vec::len), Some(4));
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
