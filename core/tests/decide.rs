//! The decision table: every row of the README's status table the core decides, redirects, limits and response checks.

use ixproxy_core::config::{MapSecrets, RawConfig};
use ixproxy_core::request::{check_request_body, check_request_headers, HeaderTotals};
use ixproxy_core::response::{is_followed_redirect, OriginHead};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::{decide, Decision, Forward, Outcome, RequestInfo, Sources};

const NOW: u64 = 1_700_000_000;
const RANDOM: [u8; 32] = [0xab; 32];

fn sources() -> Sources {
    let yaml = "\
upstream: {max_redirects: 2, max_body_bytes: 1000}
limits: {max_request_target_bytes: 600, max_request_headers: 5, max_request_header_bytes: 200}
sources:
  - name: pub
    hosts: [img.example.com, alt.example.com]
    secure_url_tokens: [new-token, old-token]
    origin_auth:
      request_handshake: hs
      request_signing_key: key
    allowed_origin_hosts: [cdn.example.com, '*.example.org', 127.0.0.1]
    allowed_content_types: [image/, application/pdf]
  - name: dev
    hosts: [dev.test]
    secure_url_tokens: [dev-token]
    allow_private_origins: true
";
    RawConfig::from_yaml(yaml)
        .and_then(|raw| raw.validate(&MapSecrets::new()))
        .expect("test config is valid")
        .sources
}

fn signed(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    sign_url(token, url, &params, &SignOptions::default())
}

fn pre_encoded(token: &str, path: &str) -> String {
    let options = SignOptions {
        disable_path_encoding: true,
    };
    sign_url(token, path, &[], &options)
}

fn run(method: &str, host: &str, target: &str) -> Decision {
    decide(
        &sources(),
        &RequestInfo {
            method,
            host,
            target,
        },
        NOW,
    )
}

fn forward(host: &str, target: &str) -> Box<Forward> {
    match run("GET", host, target) {
        Decision::Forward(f) => f,
        Decision::Reject(r) => panic!("{target} rejected: {r:?}"),
    }
}

#[test]
fn rejection_table() {
    let cdn = "https://cdn.example.com/a.png";
    let sig = signed("new-token", cdn, &[]);
    let sig_s = &sig[sig.len() - 32..];
    let long_path = format!("https://cdn.example.com/{}", "a".repeat(600));
    let cases: Vec<(&str, &str, &str, String, u16, Outcome)> = vec![
        (
            "POST",
            "img.example.com",
            "method",
            sig.clone(),
            405,
            Outcome::MethodNotAllowed,
        ),
        (
            "get",
            "img.example.com",
            "lower-case method",
            sig.clone(),
            405,
            Outcome::MethodNotAllowed,
        ),
        (
            "GET",
            "unknown.example.com",
            "unknown host",
            sig.clone(),
            410,
            Outcome::UnknownHost,
        ),
        (
            "GET",
            "img.example.com",
            "too long",
            signed("new-token", &long_path, &[]),
            414,
            Outcome::RequestTooLarge,
        ),
        (
            "GET",
            "img.example.com",
            "missing s",
            "/https%3A%2F%2Fcdn.example.com%2Fa.png".into(),
            403,
            Outcome::BadSignature,
        ),
        (
            "GET",
            "img.example.com",
            "s not last",
            format!("/x.png?s={sig_s}&w=1"),
            403,
            Outcome::BadSignature,
        ),
        (
            "GET",
            "img.example.com",
            "s twice",
            format!("{sig}&s={sig_s}"),
            403,
            Outcome::BadSignature,
        ),
        (
            "GET",
            "img.example.com",
            "S uppercase",
            sig.replace("?s=", "?S="),
            403,
            Outcome::BadSignature,
        ),
        (
            "GET",
            "img.example.com",
            "other source's token",
            signed("dev-token", cdn, &[]),
            403,
            Outcome::BadSignature,
        ),
        (
            "GET",
            "img.example.com",
            "gateway param changed",
            signed("new-token", cdn, &[("w", "1")]).replace("w=1", "w=2"),
            403,
            Outcome::BadSignature,
        ),
        (
            "GET",
            "img.example.com",
            "not a url",
            signed("new-token", "/users/1.png", &[]),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "ftp",
            signed("new-token", "ftp://cdn.example.com/a", &[]),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "userinfo",
            signed("new-token", "https://u:p@cdn.example.com/a", &[]),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "port 0",
            signed("new-token", "https://cdn.example.com:0/a", &[]),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "control char",
            signed("new-token", "https://cdn.example.com/a\r\nb", &[]),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "bad percent",
            pre_encoded("new-token", "http%3A%2F%2Fcdn.example.com%2F%G1"),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "encoded NUL",
            pre_encoded("new-token", "http%3A%2F%2Fcdn.example.com%2Fa%00"),
            400,
            Outcome::BadOriginUrl,
        ),
        (
            "GET",
            "img.example.com",
            "host not allowed",
            signed("new-token", "https://evil.com/a.png", &[]),
            403,
            Outcome::OriginDenied,
        ),
        (
            "GET",
            "img.example.com",
            "wildcard needs a subdomain",
            signed("new-token", "https://example.org/a.png", &[]),
            403,
            Outcome::OriginDenied,
        ),
        (
            "GET",
            "img.example.com",
            "allowed literal but private",
            signed("new-token", "http://127.0.0.1/a.png", &[]),
            403,
            Outcome::OriginDenied,
        ),
        (
            "GET",
            "dev.test",
            "decimal loopback",
            signed("dev-token", "http://2130706433/a.png", &[]),
            0,
            Outcome::Forwarded,
        ),
        (
            "GET",
            "img.example.com",
            "expired",
            signed("new-token", cdn, &[("expires", &NOW.to_string())]),
            404,
            Outcome::Expired,
        ),
        (
            "GET",
            "img.example.com",
            "expires not integer",
            signed("new-token", cdn, &[("expires", "soon")]),
            400,
            Outcome::BadExpires,
        ),
    ];
    for (method, host, name, target, status, outcome) in cases {
        match (run(method, host, &target), status) {
            (Decision::Forward(_), 0) => {}
            (Decision::Reject(r), s) if s != 0 => {
                assert_eq!(
                    (r.status(), r.outcome()),
                    (status, outcome),
                    "{name}: {target} -> {r:?}"
                );
                assert!(!r.reason().is_empty(), "{name}: empty reason");
            }
            (d, _) => panic!("{name}: {target} -> {d:?}, wanted {status}"),
        }
    }
}

#[test]
fn method_rejection_carries_allow() {
    let Decision::Reject(r) = run("DELETE", "img.example.com", "/x") else {
        panic!("DELETE must be rejected")
    };
    let headers: Vec<_> = r.headers().collect();
    assert_eq!(
        headers[..2],
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("allow", "GET, HEAD")
        ]
    );
    assert!(headers.contains(&("x-content-type-options", "nosniff")));
    assert!(headers.contains(&("cache-control", "no-store")));
}

#[test]
fn private_addresses_need_allow_private_origins() {
    let sources = sources();
    for url in [
        "http://localhost/a.png",
        "http://0x7f.1/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://169.254.169.254/latest",
    ] {
        let target = signed("dev-token", url, &[]);
        let d = decide(
            &sources,
            &RequestInfo {
                method: "HEAD",
                host: "dev.test",
                target: &target,
            },
            NOW,
        );
        assert!(
            matches!(d, Decision::Forward(_)),
            "{url} allowed on the dev source: {d:?}"
        );
    }
    let open = "\
sources:
  - {name: open, hosts: [o.test], secure_url_tokens: [t]}
";
    let open = RawConfig::from_yaml(open)
        .and_then(|r| r.validate(&MapSecrets::new()))
        .expect("valid")
        .sources;
    for url in [
        "http://localhost/a.png",
        "http://a.localhost/a.png",
        "http://0x7f.1/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
    ] {
        let target = signed("t", url, &[]);
        let d = decide(
            &open,
            &RequestInfo {
                method: "GET",
                host: "o.test",
                target: &target,
            },
            NOW,
        );
        assert!(
            matches!(&d, Decision::Reject(r) if r.status() == 403 && r.outcome() == Outcome::OriginDenied),
            "{url}: {d:?}"
        );
    }
}

#[test]
fn forward_carries_origin_auth_and_expiry() {
    let target = signed(
        "old-token",
        "https://a.example.org/p/i.png?v=2",
        &[("w", "10"), ("expires", &(NOW + 90).to_string())],
    );
    let f = forward("ALT.example.com:8443", &target);
    assert_eq!(
        f.origin().to_url_string(),
        "https://a.example.org/p/i.png?v=2"
    );
    assert_eq!(f.max_age(), Some(90));
    assert_eq!(f.source_name(), "pub");
    let auth = f.auth_headers(NOW, &RANDOM);
    let names: Vec<&str> = auth.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "x-imgix-origin-secret",
            "x-imgix-signature-timestamp",
            "x-imgix-signature-request-id",
            "x-imgix-signature",
            "x-imgix-signature-host"
        ]
    );
    let header = |n: &str| auth.get(n);
    assert_eq!(header("x-imgix-signature-host"), Some("a.example.org"));
    assert_eq!(header("x-imgix-signature-timestamp"), Some("1700000000"));
    assert_eq!(
        header("x-imgix-signature-request-id"),
        Some("ab".repeat(32).as_str())
    );
}

#[test]
fn get_and_head_with_a_body_are_refused() {
    for method in ["GET", "HEAD"] {
        let r = check_request_body(method, true).expect_err(method);
        assert_eq!(
            (r.status(), r.outcome()),
            (400, Outcome::BadRequest),
            "{method}"
        );
        assert!(
            check_request_body(method, false).is_ok(),
            "{method} without a body"
        );
    }
    assert!(
        check_request_body("POST", true).is_ok(),
        "other methods get their 405 from decide"
    );
}

#[test]
fn header_limits() {
    let s = sources();
    let totals = |count, bytes| HeaderTotals { count, bytes };
    assert!(check_request_headers(&s, totals(5, 200)).is_ok());
    let too_many = check_request_headers(&s, totals(6, 10)).expect_err("6 headers");
    assert_eq!(
        (too_many.status(), too_many.outcome()),
        (431, Outcome::RequestTooLarge)
    );
    assert_eq!(
        check_request_headers(&s, totals(1, 201)).map_err(|r| r.status()),
        Err(431)
    );
}

#[test]
fn patterns_with_a_port_allow_and_authenticate_only_that_port() {
    let sources = RawConfig::from_yaml(
        "sources:
  - name: ported
    hosts: [p.test]
    secure_url_tokens: [tok]
    origin_auth: {request_handshake: hs, hosts: ['cdn.example.com:8443']}
    allowed_origin_hosts: ['cdn.example.com:8443', '*.example.org:443', '127.0.0.1:40601']
    allow_private_origins: true
",
    )
    .and_then(|raw| raw.validate(&MapSecrets::new()))
    .expect("valid")
    .sources;
    let decide_url = |url: &str| {
        let target = signed("tok", url, &[]);
        let req = RequestInfo {
            method: "GET",
            host: "p.test",
            target: &target,
        };
        match decide(&sources, &req, NOW) {
            Decision::Forward(f) => Ok(f),
            Decision::Reject(r) => Err(r),
        }
    };
    for url in [
        "https://cdn.example.com:8443/a.png",
        "https://a.example.org/a.png",
        "http://a.example.org:443/a.png",
        "http://127.0.0.1:40601/a.png",
    ] {
        decide_url(url).unwrap_or_else(|r| panic!("{url}: {r:?}"));
    }
    for url in [
        "https://cdn.example.com/a.png",
        "http://cdn.example.com:8444/a.png",
        "http://a.example.org/a.png",
        "http://127.0.0.1:40602/a.png",
        "http://127.0.0.1/a.png",
    ] {
        let r = decide_url(url).expect_err(url);
        assert_eq!(
            (r.status(), r.outcome()),
            (403, Outcome::OriginDenied),
            "{url}"
        );
    }
    let first = decide_url("https://cdn.example.com:8443/a.png").expect("allowed");
    assert!(first.may_receive_auth());
    assert!(!first.auth_headers(NOW, &RANDOM).is_empty());
    // A hop keeps to the same rule: another port of the same host is refused.
    let r = first
        .redirect("https://cdn.example.com:9443/b.png")
        .expect_err("other port");
    assert_eq!(r.status(), 403);
    let other = decide_url("https://a.example.org/a.png").expect("allowed");
    assert!(!other.may_receive_auth(), "not in origin_auth.hosts");
}

#[test]
fn redirects_are_revalidated_and_bounded() {
    let first = forward(
        "img.example.com",
        &signed("new-token", "http://cdn.example.com/a.png", &[]),
    );
    assert!(is_followed_redirect(302) && is_followed_redirect(308) && !is_followed_redirect(304));

    // Same scheme, host and port: auth headers follow with a fresh request id.
    let hop = first
        .redirect("http://cdn.example.com/b.png")
        .expect("allowed hop");
    assert_eq!(hop.origin().to_url_string(), "http://cdn.example.com/b.png");
    assert_eq!(hop.redirects(), 1);
    let auth = hop.auth_headers(NOW, &[1; 32]);
    let id = auth.get("x-imgix-signature-request-id");
    assert_eq!(id, Some("01".repeat(32).as_str()));

    // Same host on another scheme or port: followed, but no credentials go with it.
    for other in [
        "https://cdn.example.com/b.png",
        "http://cdn.example.com:8080/b.png",
    ] {
        let hop = first.redirect(other).expect("allowed hop");
        assert!(!hop.may_receive_auth(), "{other}");
        assert!(hop.auth_headers(NOW, &RANDOM).is_empty(), "{other}");
    }

    // Relative Location, other allowed host: no auth headers leak to it.
    let away = hop.redirect("//x.example.org/c.png").expect("allowed host");
    assert_eq!(away.origin().to_url_string(), "http://x.example.org/c.png");
    let away_auth = away.auth_headers(NOW, &RANDOM);
    assert!(away_auth.is_empty(), "{away_auth:?}");

    // Beyond max_redirects (2 here).
    let over = away.redirect("/d.png").expect_err("third hop");
    assert_eq!((over.status(), over.outcome()), (502, Outcome::BadRedirect));

    // Every hop passes the same policy as the first URL.
    for (location, status) in [
        ("https://evil.com/x", 403),
        ("http://127.0.0.1/x", 403),
        ("http://169.254.169.254/latest/meta-data", 403),
        ("file:///etc/passwd", 502),
        ("gopher://cdn.example.com/x", 502),
        ("https://u:p@cdn.example.com/x", 502),
        ("http://cdn.example.com:0/x", 502),
    ] {
        let r = first.redirect(location).expect_err(location);
        assert_eq!(r.status(), status, "{location}: {r:?}");
    }

    // A Location longer than max_request_target_bytes (600 in this config) is the origin's
    // fault: a 502 bad_redirect, never the client's 414.
    let long = format!("/{}", "a".repeat(600));
    let r = first.redirect(&long).expect_err("over-long Location");
    assert_eq!((r.status(), r.outcome()), (502, Outcome::BadRedirect));
    let at_limit = first.redirect(&long[..600]);
    assert!(at_limit.is_ok(), "exactly the limit: {at_limit:?}");
}

#[test]
fn response_checks() {
    let head = |status: u16, ct: Option<&str>, len: Option<u64>| {
        let len = len.map(|l| l.to_string());
        let mut h = OriginHead::new(status);
        if let Some(ct) = ct {
            h.add("content-type", ct.as_bytes());
        }
        if let Some(len) = &len {
            h.add("content-length", len.as_bytes());
        }
        h
    };
    let f = forward(
        "img.example.com",
        &signed("new-token", "https://cdn.example.com/a.png", &[]),
    );
    assert!(f
        .check_response(&head(200, Some("image/png"), Some(1000)))
        .is_ok());
    assert!(f
        .check_response(&head(200, Some("Image/WEBP; q=1"), None))
        .is_ok());
    assert!(f
        .check_response(&head(200, Some("application/pdf"), None))
        .is_ok());
    assert!(
        f.check_response(&head(304, None, None)).is_ok(),
        "304 has no body"
    );
    for (status, ct) in [
        (200, Some("text/html")),
        (200, None),
        (404, Some("text/html")),
        (206, Some("application/pdfx")),
    ] {
        let r = f
            .check_response(&head(status, ct, None))
            .expect_err(&format!("{status} {ct:?} must be refused"));
        assert_eq!(
            (r.status(), r.outcome()),
            (403, Outcome::ContentTypeDenied),
            "{status} {ct:?}"
        );
    }
    let big = f
        .check_response(&head(200, Some("image/png"), Some(1001)))
        .expect_err("too large");
    assert_eq!(
        (big.status(), big.outcome()),
        (502, Outcome::OriginTooLarge)
    );

    let dev = forward(
        "dev.test",
        &signed("dev-token", "http://127.0.0.1:9/a", &[]),
    );
    assert!(
        dev.check_response(&head(200, Some("text/html"), None))
            .is_ok(),
        "no content-type policy"
    );
}

#[test]
fn forwards_never_print_their_source_secrets() {
    let f = forward(
        "img.example.com",
        &signed("new-token", "http://cdn.example.com/a.png", &[]),
    );
    let printed = format!("{f:?} {:?}", f.auth_headers(NOW, &RANDOM));
    for secret in ["new-token", "old-token", "hs", "key", "abab"] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert!(
        printed.contains("pub") && printed.contains("cdn.example.com"),
        "{printed}"
    );
}

#[test]
fn resolved_addresses_are_checked_with_the_source_rule() {
    let public = forward(
        "img.example.com",
        &signed("new-token", "http://cdn.example.com/a.png", &[]),
    );
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    assert!(public.check_resolved([ip("93.184.215.14")]).is_ok());
    for denied in ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.7"] {
        let r = public
            .check_resolved([ip("93.184.215.14"), ip(denied)])
            .expect_err(denied);
        assert_eq!(
            (r.status(), r.outcome()),
            (403, Outcome::OriginDenied),
            "{denied}"
        );
    }
    let dev = forward(
        "dev.test",
        &signed("dev-token", "http://127.0.0.1:9/a", &[]),
    );
    assert!(dev.check_resolved([ip("127.0.0.1"), ip("::1")]).is_ok());
    assert!(public.check_upstream_address(Some("10.0.0.1:80")).is_err());
    assert!(public.check_upstream_address(None).is_err());
    assert!(dev.check_upstream_address(None).is_ok());
}
