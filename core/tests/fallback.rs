//! Fallback images (SPEC §15): the config rules with their field paths, the fallback forward
//! (URL, params, origin auth, `expires` cap) and the checks its answer meets before it is served.

use ixproxy_core::config::{MapSecrets, RawConfig};
use ixproxy_core::fallback::FALLBACK_HEADER;
use ixproxy_core::response::OriginHead;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::{decide, ConfigError, Decision, FallbackKind, Forward, Outcome, RequestInfo};

const NOW: u64 = 1_700_000_000;
const RANDOM: [u8; 32] = [0x5a; 32];

const BASE: &str = "\
sources:
  - name: img
    hosts: [img.test]
    secure_url_tokens: [tok]
    origin_auth:
      request_handshake: hs
      hosts: [cdn.example.com]
    allowed_origin_hosts: [cdn.example.com, fallback.example.net]
    allowed_content_types: [image/]
    cache_ttl_error: 42
";

fn load(extra: &str) -> Result<ixproxy_core::Config, ConfigError> {
    RawConfig::from_yaml(&format!("{BASE}{extra}")).and_then(|raw| raw.validate(&MapSecrets::new()))
}

fn config_error(extra: &str) -> ConfigError {
    load(extra).expect_err(&format!("must be refused: {extra}"))
}

#[test]
fn fallback_fields_are_validated_with_their_path() {
    let cases = [
        (
            "    image_missing: not a url\n",
            "sources[0].image_missing",
            "absolute http",
        ),
        (
            "    image_error: ftp://cdn.example.com/e.png\n",
            "sources[0].image_error",
            "absolute http",
        ),
        (
            "    image_missing: https://user:pw@cdn.example.com/m.png\n",
            "sources[0].image_missing",
            "userinfo",
        ),
        (
            "    image_error: https://elsewhere.example.com/e.png\n",
            "sources[0].image_error",
            "not allowed",
        ),
        (
            "    image_missing_append_qs: true\n",
            "sources[0].image_missing_append_qs",
            "without image_missing",
        ),
        (
            "    image_error_append_qs: true\n",
            "sources[0].image_error_append_qs",
            "without image_error",
        ),
    ];
    for (extra, path, message) in cases {
        let err = config_error(extra);
        assert_eq!(err.path, path, "{extra}");
        assert!(err.message.contains(message), "{extra}: {}", err.message);
    }
    // The private-address rule applies too: a source without allow_private_origins cannot
    // point its fallback at loopback, even when it lists the address.
    let private = RawConfig::from_yaml(
        "sources:\n  - name: p\n    hosts: [p.test]\n    secure_url_tokens: [t]\n    \
         allowed_origin_hosts: [127.0.0.1]\n    image_missing: http://127.0.0.1:8/m.png\n",
    )
    .and_then(|raw| raw.validate(&MapSecrets::new()))
    .expect_err("loopback fallback");
    assert_eq!(private.path, "sources[0].image_missing");
    assert!(private.message.contains("private"), "{}", private.message);
    let ok = load(
        "    image_missing: https://cdn.example.com/m.png\n    image_missing_append_qs: true\n",
    )
    .expect("valid");
    let source = ok.sources.by_name("img").expect("source");
    assert!(source.has_fallbacks());
    assert!(source.fallback(FallbackKind::Missing).is_some());
    assert!(source.fallback(FallbackKind::Error).is_none());
    let none = load("").expect("valid");
    assert!(!none.sources.by_name("img").expect("source").has_fallbacks());
}

fn forward(extra: &str, params: &[(&str, &str)]) -> Box<Forward> {
    let sources = load(extra).expect("valid").sources;
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let target = sign_url(
        "tok",
        "https://cdn.example.com/a.png",
        &params,
        &SignOptions::default(),
    );
    match decide(
        &sources,
        &RequestInfo {
            method: "GET",
            host: "img.test",
            target: &target,
        },
        NOW,
    ) {
        Decision::Forward(f) => f,
        Decision::Reject(r) => panic!("rejected: {r:?}"),
    }
}

fn target_of(params: &[(&str, &str)]) -> String {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    sign_url(
        "tok",
        "https://cdn.example.com/a.png",
        &params,
        &SignOptions::default(),
    )
}

#[test]
fn the_fallback_forward_is_fetched_like_an_origin_url() {
    let extra = "    image_missing: https://cdn.example.com/missing.png\n    \
                 image_error: https://fallback.example.net/error.png?v=1\n    \
                 image_error_append_qs: true\n";
    let params = [("w", "100"), ("expires", "1700000600")];
    let original = forward(extra, &params);
    let target = target_of(&params);

    let missing = original
        .fallback(FallbackKind::Missing, &target)
        .expect("missing fallback");
    assert_eq!(missing.fallback_kind(), Some(FallbackKind::Missing));
    assert_eq!(
        missing.origin().to_url_string(),
        "https://cdn.example.com/missing.png",
        "no params without append_qs"
    );
    assert_eq!(missing.max_age(), Some(600), "the expires cap stays");
    assert!(
        !missing.auth_headers(NOW, &RANDOM).is_empty(),
        "a host in origin_auth.hosts gets the origin auth"
    );

    let error = original
        .fallback(FallbackKind::Error, &target)
        .expect("error fallback");
    assert_eq!(
        error.origin().to_url_string(),
        "https://fallback.example.net/error.png?v=1&w=100",
        "params appended, without s and expires"
    );
    assert!(
        error.auth_headers(NOW, &RANDOM).is_empty(),
        "a host outside origin_auth.hosts gets none"
    );
    assert_eq!(original.fallback_kind(), None);
    // A redirect of the fallback is still the fallback, and still under the source's policy.
    let hop = error
        .redirect("https://cdn.example.com/moved.png")
        .expect("allowed hop");
    assert_eq!(hop.fallback_kind(), Some(FallbackKind::Error));
    assert!(error.redirect("https://evil.example.com/x.png").is_err());

    let without = forward("    image_missing: https://cdn.example.com/m.png\n", &[]);
    assert!(without.fallback(FallbackKind::Error, &target).is_none());
}

/// A cache keyed on the origin URL (never the params) stores the client's own answer and a
/// fallback image whose URL is the same for every params variant, never an image the request's
/// params are appended to (nor one of its redirect hops): another variant would get it.
#[test]
fn a_fallback_with_appended_params_is_not_stored_under_the_request_key() {
    let extra = "    image_missing: https://cdn.example.com/missing.png\n    \
                 image_error: https://fallback.example.net/error.png?v=1\n    \
                 image_error_append_qs: true\n";
    for params in [&[("w", "100")][..], &[]] {
        let original = forward(extra, params);
        let target = target_of(params);
        assert!(original.storable_under_request_key());
        let missing = original
            .fallback(FallbackKind::Missing, &target)
            .expect("missing fallback");
        assert!(missing.storable_under_request_key(), "no append_qs");
        let error = original
            .fallback(FallbackKind::Error, &target)
            .expect("error fallback");
        assert!(!error.storable_under_request_key(), "{params:?}");
        let hop = error
            .redirect("https://cdn.example.com/moved.png")
            .expect("allowed hop");
        assert!(!hop.storable_under_request_key(), "a hop of the image");
    }
}

#[test]
fn a_fallback_answer_is_served_with_the_original_status_and_the_error_ttl() {
    let extra = "    image_missing: https://cdn.example.com/missing.png\n";
    let head = |status: u16, fields: &[(&str, &str)]| {
        OriginHead::of(status, fields.iter().map(|(n, v)| (*n, v.as_bytes())))
    };
    let image = head(
        200,
        &[
            ("Content-Type", "image/png"),
            ("ETag", "\"m1\""),
            ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("Cache-Control", "max-age=99999"),
            ("Set-Cookie", "a=b"),
        ],
    );
    let plain = forward(extra, &[]);
    let fallback = plain
        .fallback(FallbackKind::Missing, &target_of(&[]))
        .expect("fallback");
    let edits = fallback
        .check_fallback_response(&image, 404)
        .expect("served");
    let set = |name: &str| {
        edits
            .set
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(set("cache-control"), Some("public, max-age=42"));
    assert_eq!(
        edits.policy_cache_control.as_deref(),
        Some("public, max-age=42")
    );
    assert_eq!(set(FALLBACK_HEADER), Some("missing"));
    for removed in ["etag", "last-modified", "set-cookie", "expires"] {
        assert!(edits.remove.iter().any(|r| r == removed), "{removed}");
    }

    // The `expires` cap applies on top, as on every response.
    let capped = forward(extra, &[("expires", "1700000010")])
        .fallback(FallbackKind::Missing, &target_of(&[]))
        .expect("fallback")
        .check_fallback_response(&image, 404)
        .expect("served");
    let cc = capped
        .set
        .iter()
        .find(|(n, _)| *n == "cache-control")
        .map(|(_, v)| v.clone());
    assert_eq!(cc.as_deref(), Some("public, max-age=10"));

    // Anything but a servable 2xx, or an answer the source's policy refuses, is not served.
    for (status, ct) in [
        (404, "image/png"),
        (500, "image/png"),
        (304, "image/png"),
        (206, "image/png"),
        (302, "image/png"),
    ] {
        let r = fallback
            .check_fallback_response(&head(status, &[("content-type", ct)]), 404)
            .expect_err(&format!("{status}"));
        assert_eq!(r.outcome(), Outcome::BadOriginResponse, "{status}");
    }
    let denied = fallback
        .check_fallback_response(&head(200, &[("content-type", "text/html")]), 502)
        .expect_err("text/html");
    assert_eq!(denied.outcome(), Outcome::ContentTypeDenied);
    let svg = fallback
        .check_fallback_response(&head(200, &[("content-type", "image/svg+xml")]), 502)
        .expect_err("svg");
    assert_eq!(svg.outcome(), Outcome::ContentTypeDenied);
}
