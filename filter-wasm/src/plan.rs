//! The pure half of the filter: what a [`Decision`](ixproxy_core::Decision) means in Envoy
//! terms (header edits, local replies, response rewrites). No host calls, so it is tested
//! natively; the HTTP context only applies these plans.

use std::net::{IpAddr, SocketAddr};

use ixproxy_core::addr::is_denied_ip;
use ixproxy_core::decide::{is_forwarded_client_header, DROPPED_RESPONSE_HEADERS};
use ixproxy_core::expires::cap_cache_control;
use ixproxy_core::origin::parse_origin;
use ixproxy_core::{Forward, Rejection, Sources};

pub use ixproxy_core::envoy::{
    ALLOW_PRIVATE_HEADER, FORWARDED_PROTO, LOCATION_HEADER, UPSTREAM_HEADER,
};
/// [`UPSTREAM_HEADER`] value routed to the TLS dynamic-forward-proxy cluster.
pub const UPSTREAM_TLS: &str = "tls";
/// [`UPSTREAM_HEADER`] value routed to the plain-HTTP dynamic-forward-proxy cluster.
pub const UPSTREAM_PLAIN: &str = "plain";

/// One change to a header map, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value of the header (lower-case name) with this one.
    Set(String, String),
    /// Remove every value of the header (lower-case name).
    Remove(String),
}

/// A response Envoy sends itself instead of forwarding (`send_http_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Response headers (lower-case names).
    pub headers: Vec<(&'static str, String)>,
    /// Plain-text body: the rejection reason and a newline.
    pub body: String,
}

/// The local reply for a rejection: its status, `content-type: text/plain`, the rejection's own
/// headers (`allow` on 405) and the reason as the body.
pub fn local_reply(rejection: &Rejection) -> LocalReply {
    let mut headers = vec![("content-type", "text/plain; charset=utf-8".to_owned())];
    headers.extend(
        rejection
            .headers
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    LocalReply {
        status: u32::from(rejection.status),
        headers,
        body: format!("{}\n", rejection.reason),
    }
}

/// The request header edits that turn the client request into the origin request.
///
/// `client_header_names` are the names currently in the request header map. Every non-pseudo
/// header outside the forwarded allowlist, except [`FORWARDED_PROTO`], is removed (so client
/// `Authorization`, `Cookie`, `X-Imgix-*` and a forged [`UPSTREAM_HEADER`] never reach the
/// origin); then `:authority`,
/// `:path`, `:scheme`, [`UPSTREAM_HEADER`], [`ALLOW_PRIVATE_HEADER`] when the source allows
/// private origins, and the origin authentication headers are set.
pub fn forward_request_edits<'a>(
    forward: &Forward,
    client_header_names: impl IntoIterator<Item = &'a str>,
) -> Vec<HeaderEdit> {
    let mut removed: Vec<String> = Vec::new();
    for name in client_header_names {
        if name.starts_with(':')
            || is_forwarded_client_header(name)
            || name.eq_ignore_ascii_case(FORWARDED_PROTO)
        {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if !removed.contains(&lower) {
            removed.push(lower);
        }
    }
    let origin = &forward.origin;
    let upstream = if origin.is_https() {
        UPSTREAM_TLS
    } else {
        UPSTREAM_PLAIN
    };
    let mut edits: Vec<HeaderEdit> = removed.into_iter().map(HeaderEdit::Remove).collect();
    edits.push(HeaderEdit::Set(":authority".into(), origin.authority()));
    edits.push(HeaderEdit::Set(
        ":path".into(),
        origin.path_and_query.clone(),
    ));
    edits.push(HeaderEdit::Set(
        ":scheme".into(),
        origin.scheme.as_str().into(),
    ));
    edits.push(HeaderEdit::Set(
        FORWARDED_PROTO.into(),
        origin.scheme.as_str().into(),
    ));
    edits.push(HeaderEdit::Set(UPSTREAM_HEADER.into(), upstream.into()));
    if forward.allow_private {
        edits.push(HeaderEdit::Set(ALLOW_PRIVATE_HEADER.into(), "1".into()));
    }
    edits.extend(
        forward
            .set_headers
            .iter()
            .map(|(name, value)| HeaderEdit::Set((*name).to_owned(), value.clone())),
    );
    edits
}

/// The response header edits for a forwarded request: drop `Set-Cookie` and, when the URL
/// carries `expires`, cap `Cache-Control` at the seconds remaining.
///
/// `cache_control` is the origin's `Cache-Control` (several headers joined with `, `).
pub fn response_edits(cache_control: Option<&str>, max_age: Option<u64>) -> Vec<HeaderEdit> {
    let mut edits: Vec<HeaderEdit> = DROPPED_RESPONSE_HEADERS
        .iter()
        .map(|name| HeaderEdit::Remove((*name).to_owned()))
        .collect();
    if let Some(max_age) = max_age {
        edits.push(HeaderEdit::Set(
            "cache-control".into(),
            cap_cache_control(cache_control, max_age),
        ));
    }
    edits
}

/// Envoy filter state property (`wasm.ixproxy_hop`) carrying the [`Hop`] of a forwarded request
/// across Envoy's internal redirects. Declared with the `DownstreamRequest` life span (see
/// [`declare_hop_property_args`]), so Envoy copies it into the stream it recreates for a redirect;
/// only filters can write filter state, so a client cannot forge a hop.
pub const HOP_PROPERTY: &str = "ixproxy_hop";

/// Request headers Envoy's connection manager adds itself before any filter runs; they are not
/// the client's, so they do not count against the client header limits.
pub const ENVOY_ADDED_REQUEST_HEADERS: [&str; 1] = [FORWARDED_PROTO];

/// The serialized `DeclarePropertyArguments` protobuf (Envoy's `declare_property` foreign
/// function) declaring [`HOP_PROPERTY`] as mutable bytes that live for the downstream request,
/// internal redirects included (`span: DownstreamRequest`).
pub fn declare_hop_property_args() -> Vec<u8> {
    let name = HOP_PROPERTY.as_bytes();
    let mut args = Vec::with_capacity(name.len() + 4);
    // field 1 (name), length-delimited; the name is shorter than 128 bytes (one-byte varint).
    args.push(0x0a);
    args.push(name.len() as u8);
    args.extend_from_slice(name);
    // field 5 (span) = 1 (DownstreamRequest); readonly (2) and type (3, Bytes) keep defaults.
    args.extend_from_slice(&[0x28, 0x01]);
    args
}

/// What the filter remembers about a forwarded request so a redirect hop can be checked like
/// the native gateway checks it: which source, where the last attempt went, the first origin
/// host (for origin auth), hops so far and the Cache-Control cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Source name.
    pub source: String,
    /// URL of the attempt that answered with the redirect.
    pub origin_url: String,
    /// Host of the first origin URL.
    pub auth_host: String,
    /// Redirects followed so far.
    pub redirects: u32,
    /// Cache-Control cap from `expires`.
    pub max_age: Option<u64>,
    /// When the client's request arrived (unix milliseconds): `upstream.timeout` bounds all
    /// hops together.
    pub started_ms: u64,
}

impl Hop {
    const MAGIC: &'static [u8] = b"ixhop1";

    /// The hop state of a forward of a client request that arrived at `started_ms`.
    pub fn of(forward: &Forward, started_ms: u64) -> Hop {
        Hop {
            started_ms,
            source: forward.source.clone(),
            origin_url: forward.origin.to_url_string(),
            auth_host: forward.auth_host.clone(),
            redirects: forward.redirects,
            max_age: forward.max_age,
        }
    }

    /// Length-prefixed fields after a magic tag (no field can break the framing).
    pub fn encode(&self) -> Vec<u8> {
        let redirects = self.redirects.to_string();
        let max_age = self.max_age.map(|a| a.to_string()).unwrap_or_default();
        let started = self.started_ms.to_string();
        let fields = [
            started.as_str(),
            redirects.as_str(),
            max_age.as_str(),
            self.source.as_str(),
            self.auth_host.as_str(),
            self.origin_url.as_str(),
        ];
        let mut out = Self::MAGIC.to_vec();
        for field in fields {
            out.extend_from_slice(field.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    /// Parses [`Hop::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Hop> {
        let mut rest = bytes.strip_prefix(Self::MAGIC)?;
        let mut fields: Vec<String> = Vec::with_capacity(6);
        while !rest.is_empty() {
            let colon = rest.iter().position(|&b| b == b':')?;
            let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
            let value = rest.get(colon + 1..colon + 1 + len)?;
            fields.push(String::from_utf8(value.to_vec()).ok()?);
            rest = &rest[colon + 1 + len..];
        }
        let [started, redirects, max_age, source, auth_host, origin_url]: [String; 6] =
            fields.try_into().ok()?;
        Some(Hop {
            started_ms: started.parse().ok()?,
            redirects: redirects.parse().ok()?,
            max_age: if max_age.is_empty() {
                None
            } else {
                Some(max_age.parse().ok()?)
            },
            source,
            auth_host,
            origin_url,
        })
    }

    /// The forward this hop state describes (without origin auth headers: a hop only ever gets
    /// fresh ones from [`Forward::redirect`]); `None` if the source is gone (reconfigured) or
    /// the URL no longer parses.
    pub fn forward(&self, sources: &Sources) -> Option<Forward> {
        let source = sources.by_name(&self.source)?;
        Some(Forward {
            source: self.source.clone(),
            origin: parse_origin(&self.origin_url).ok()?,
            allow_private: source.allow_private_origins,
            set_headers: Vec::new(),
            max_age: self.max_age,
            auth_host: self.auth_host.clone(),
            redirects: self.redirects,
        })
    }
}

/// Request header that sets Envoy's router timeout for one attempt (read and removed by the
/// router, never sent to the origin; a client-sent one is removed by the filter like any
/// non-allowlisted header). Set on every hop to what is left of `upstream.timeout`.
pub const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

/// Milliseconds left of `timeout_ms` for a request that started at `started_ms`, or `None`
/// when nothing is left.
pub fn remaining_ms(started_ms: u64, now_ms: u64, timeout_ms: u64) -> Option<u64> {
    let left = timeout_ms.saturating_sub(now_ms.saturating_sub(started_ms));
    (left > 0).then_some(left)
}

/// The redirect target Envoy recreated the request for: the origin's raw `Location` (copied
/// into [`LOCATION_HEADER`]) when present, else the URL Envoy derived from it.
pub fn hop_location(location: Option<&str>, scheme: &str, authority: &str, path: &str) -> String {
    match location {
        Some(location) if !location.trim().is_empty() => location.to_owned(),
        _ => format!("{scheme}://{authority}{path}"),
    }
}

/// Number of request header fields and their total size (name plus value) as the client sent
/// them: pseudo-headers and [`ENVOY_ADDED_REQUEST_HEADERS`] do not count.
pub fn request_header_totals<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> (usize, usize) {
    headers
        .into_iter()
        .filter(|(name, _)| {
            !name.starts_with(':')
                && !ENVOY_ADDED_REQUEST_HEADERS
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
        })
        .fold((0, 0), |(count, bytes), (name, value)| {
            (count + 1, bytes + name.len() + value.len())
        })
}

/// The declared body length of a response: `Some` only for one well-formed `Content-Length`
/// (Envoy's codec refuses conflicting ones before the filter runs).
pub fn declared_length(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.trim().parse().ok())
}

/// Whether the address Envoy connected to (`upstream.address`, `ip:port`) is one the core's
/// deny list refuses. An address that is not an IP socket address counts as denied (the
/// dynamic forward proxy only produces IP addresses; anything else is unexpected).
pub fn upstream_address_denied(address: &str) -> bool {
    let ip = address
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse::<IpAddr>());
    match ip {
        // `::ffff:a.b.c.d` and friends: the core's deny list handles embedded IPv4 itself.
        Ok(ip) => is_denied_ip(ip),
        Err(_) => true,
    }
}

/// Joins every value of header `name` (any case) in `headers` with `, `, or `None` when absent.
pub fn joined_header(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ixproxy_core::origin::parse_origin;
    use ixproxy_core::Outcome;

    fn forward(url: &str) -> Forward {
        Forward {
            source: "assets".into(),
            origin: parse_origin(url).expect("valid origin"),
            allow_private: false,
            set_headers: vec![("x-imgix-origin-secret", "hs".into())],
            max_age: Some(60),
            auth_host: "o.example".into(),
            redirects: 0,
        }
    }

    fn set(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::Set(name.into(), value.into())
    }

    #[test]
    fn forward_strips_client_headers_and_targets_the_origin() {
        let client = [
            ":method",
            ":path",
            ":authority",
            ":scheme",
            "Accept",
            "range",
            "authorization",
            "Cookie",
            "X-Imgix-Origin-Secret",
            "x-ixproxy-upstream",
            "X-Ixproxy-Allow-Private",
            "x-forwarded-for",
            "x-forwarded-proto",
            "cookie",
            "user-agent",
        ];
        let edits =
            forward_request_edits(&forward("https://cdn.example.com:8443/a.jpg?x=1"), client);
        let removed: Vec<&str> = edits
            .iter()
            .filter_map(|e| match e {
                HeaderEdit::Remove(n) => Some(n.as_str()),
                HeaderEdit::Set(..) => None,
            })
            .collect();
        assert_eq!(
            removed,
            [
                "authorization",
                "cookie",
                "x-imgix-origin-secret",
                "x-ixproxy-upstream",
                "x-ixproxy-allow-private",
                "x-forwarded-for"
            ]
        );
        let sets: Vec<&HeaderEdit> = edits
            .iter()
            .filter(|e| matches!(e, HeaderEdit::Set(..)))
            .collect();
        assert_eq!(
            sets,
            [
                &set(":authority", "cdn.example.com:8443"),
                &set(":path", "/a.jpg?x=1"),
                &set(":scheme", "https"),
                &set(FORWARDED_PROTO, "https"),
                &set(UPSTREAM_HEADER, UPSTREAM_TLS),
                &set("x-imgix-origin-secret", "hs"),
            ]
        );
        // Removals come first, so the origin auth header the filter sets survives.
        let last_remove = edits
            .iter()
            .rposition(|e| matches!(e, HeaderEdit::Remove(_)));
        let first_set = edits.iter().position(|e| matches!(e, HeaderEdit::Set(..)));
        assert!(last_remove < first_set);
    }

    #[test]
    fn plain_http_origins_use_the_plain_cluster() {
        let mut private = forward("http://127.0.0.1:8000/x");
        private.allow_private = true;
        let edits = forward_request_edits(&private, []);
        assert!(edits.contains(&set(ALLOW_PRIVATE_HEADER, "1")));
        assert!(edits.contains(&set(UPSTREAM_HEADER, UPSTREAM_PLAIN)));
        assert!(edits.contains(&set(":authority", "127.0.0.1:8000")));
        assert!(edits.contains(&set(":scheme", "http")));
    }

    #[test]
    fn rejections_become_plain_text_local_replies() {
        let reply = local_reply(&Rejection {
            status: 405,
            outcome: Outcome::MethodNotAllowed,
            reason: "method not allowed".into(),
            headers: vec![("allow", "GET, HEAD")],
        });
        assert_eq!(reply.status, 405);
        assert_eq!(reply.body, "method not allowed\n");
        assert_eq!(
            reply.headers,
            [
                ("content-type", "text/plain; charset=utf-8".to_owned()),
                ("allow", "GET, HEAD".to_owned())
            ]
        );
    }

    #[test]
    fn responses_lose_cookies_and_get_capped() {
        assert_eq!(
            response_edits(Some("public, max-age=3600"), Some(60)),
            [
                HeaderEdit::Remove("set-cookie".into()),
                set("cache-control", "public, max-age=60")
            ]
        );
        assert_eq!(
            response_edits(Some("public, max-age=3600"), None),
            [HeaderEdit::Remove("set-cookie".into())]
        );
    }

    #[test]
    fn repeated_headers_are_joined() {
        let headers = vec![
            ("cache-control".to_owned(), "public".to_owned()),
            ("etag".to_owned(), "x".to_owned()),
            ("Cache-Control".to_owned(), "max-age=10".to_owned()),
        ];
        assert_eq!(
            joined_header(&headers, "cache-control").as_deref(),
            Some("public, max-age=10")
        );
        assert_eq!(joined_header(&headers, "expires"), None);
    }
    fn sources(json: &str) -> Sources {
        ixproxy_core::config::RawPluginConfig::from_json(json)
            .and_then(|raw| raw.validate(&ixproxy_core::config::MapSecrets::new()))
            .expect("valid plugin config")
    }

    const SOURCES: &str = r#"{"sources": [{"name": "assets", "hosts": ["a.example"],
        "secure_url_tokens": ["t"], "origin_auth": {"request_handshake": "hs"},
        "allowed_origin_hosts": ["o.example", "cdn.example"]}],
        "upstream": {"max_redirects": 2}}"#;

    #[test]
    fn hop_state_round_trips_through_its_encoding() {
        let hop = Hop {
            started_ms: 1_700_000_000_123,
            source: "we:ird\nname 12:".into(),
            origin_url: "https://o.example/a:b?c=1:2".into(),
            auth_host: "o.example".into(),
            redirects: 3,
            max_age: Some(60),
        };
        assert_eq!(Hop::decode(&hop.encode()), Some(hop.clone()));
        let no_cap = Hop {
            max_age: None,
            ..hop.clone()
        };
        assert_eq!(Hop::decode(&no_cap.encode()), Some(no_cap));
        let encoded = hop.encode();
        // Anything but the filter's own encoding is refused, truncated or padded ones too.
        for bad in [
            &b""[..],
            b"ixhop1",
            b"ixhop0" as &[u8],
            &encoded[..encoded.len() - 1],
            &[encoded.as_slice(), b"1:x"].concat(),
            b"ixhop11:01:x1:x1:x1:x1:x",
            b"ixhop199999999999999999999:x",
        ] {
            assert_eq!(Hop::decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_stored_hop_is_revalidated_like_the_first_url() {
        let sources = sources(SOURCES);
        let first = forward("https://o.example/a.jpg");
        let restored = Hop::decode(&Hop::of(&first, 5).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores");
        assert_eq!(restored.origin, first.origin);
        assert_eq!((restored.redirects, restored.max_age), (0, Some(60)));
        assert!(
            restored.set_headers.is_empty(),
            "a hop gets fresh headers only"
        );
        let random = [7u8; 32];
        // Same host: fresh origin auth; other allowed host: none; other host: refused.
        let same = restored
            .redirect(&sources, "/b.jpg", 100, &random)
            .expect("same host");
        assert_eq!(same.origin.to_url_string(), "https://o.example/b.jpg");
        assert!(same
            .set_headers
            .iter()
            .any(|(n, _)| *n == "x-imgix-origin-secret"));
        let other = restored
            .redirect(&sources, "http://cdn.example/c", 100, &random)
            .expect("allowed host");
        assert!(other.set_headers.is_empty());
        let denied = restored
            .redirect(&sources, "http://evil.example/", 100, &random)
            .expect_err("host not allowed");
        assert_eq!(denied.status, 403);
        let private = restored
            .redirect(&sources, "http://cdn.example@127.0.0.1/", 100, &random)
            .expect_err("userinfo");
        assert_eq!(private.status, 502);
        // The count survives the round trip: past upstream.max_redirects is a 502.
        let second = Hop::decode(&Hop::of(&other, 5).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores")
            .redirect(&sources, "/d", 100, &random)
            .expect("second hop");
        let third = Hop::decode(&Hop::of(&second, 5).encode())
            .and_then(|hop| hop.forward(&sources))
            .expect("restores")
            .redirect(&sources, "/e", 100, &random)
            .expect_err("third hop");
        assert_eq!((third.status, third.outcome), (502, Outcome::BadRedirect));
        // A hop of a source that is gone (reconfigured) is not followed.
        let gone = Hop {
            source: "gone".into(),
            ..Hop::of(&first, 5)
        };
        assert_eq!(gone.forward(&sources), None);
    }

    #[test]
    fn all_hops_share_one_timeout() {
        assert_eq!(remaining_ms(1_000, 1_000, 3_000), Some(3_000));
        assert_eq!(remaining_ms(1_000, 3_500, 3_000), Some(500));
        assert_eq!(remaining_ms(1_000, 4_000, 3_000), None);
        assert_eq!(remaining_ms(1_000, 9_000, 3_000), None);
        // A clock that went backwards leaves the full budget, never more.
        assert_eq!(remaining_ms(5_000, 1_000, 3_000), Some(3_000));
    }

    #[test]
    fn hop_property_is_declared_for_the_downstream_request() {
        // DeclarePropertyArguments { name: "ixproxy_hop", span: DownstreamRequest }.
        let mut expected = vec![0x0a, 11];
        expected.extend_from_slice(b"ixproxy_hop");
        expected.extend_from_slice(&[0x28, 0x01]);
        assert_eq!(declare_hop_property_args(), expected);
    }

    #[test]
    fn hop_location_prefers_the_raw_location() {
        assert_eq!(hop_location(Some("/x?y"), "http", "h", "/p"), "/x?y");
        assert_eq!(
            hop_location(Some("  "), "https", "h:1", "/p"),
            "https://h:1/p"
        );
        assert_eq!(hop_location(None, "http", "h", "/p?q"), "http://h/p?q");
    }

    #[test]
    fn header_totals_count_what_the_client_sent() {
        let headers: [(&str, &[u8]); 6] = [
            (":method", b"GET"),
            (":authority", b"a.example"),
            ("accept", b"*/*"),
            ("x-forwarded-proto", b"http"),
            ("X-Big", b"0123456789"),
            ("cookie", b"\xff"),
        ];
        assert_eq!(request_header_totals(headers), (3, 6 + 3 + 5 + 10 + 6 + 1));
    }

    #[test]
    fn upstream_addresses_are_checked_against_the_core_deny_list() {
        for denied in [
            "127.0.0.1:80",
            "10.1.2.3:443",
            "169.254.169.254:80",
            "[::1]:443",
            "[::ffff:127.0.0.1]:80",
            "[fd00::1]:80",
            "127.0.0.1",
            "not an address",
            "",
        ] {
            assert!(upstream_address_denied(denied), "{denied}");
        }
        for allowed in ["93.184.216.34:443", "[2606:4700::1111]:80", "8.8.8.8"] {
            assert!(!upstream_address_denied(allowed), "{allowed}");
        }
    }

    #[test]
    fn declared_length_needs_one_number() {
        assert_eq!(declared_length(Some("10737418240")), Some(10_737_418_240));
        assert_eq!(declared_length(Some(" 5 ")), Some(5));
        assert_eq!(declared_length(Some("5, 5")), None);
        assert_eq!(declared_length(Some("-1")), None);
        assert_eq!(declared_length(None), None);
    }
}
