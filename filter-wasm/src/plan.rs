//! The pure half of the filter: what a [`Decision`](ixproxy_core::Decision) means in Envoy
//! terms (header edits, local replies, response rewrites). No host calls, so it is tested
//! natively; the HTTP context only applies these plans.

use ixproxy_core::decide::{is_forwarded_client_header, DROPPED_RESPONSE_HEADERS};
use ixproxy_core::expires::cap_cache_control;
use ixproxy_core::{Forward, Rejection};

/// Request header that selects the upstream cluster (`tls` or `plain`). The filter always sets
/// it on a forward (overwriting anything a client sent), the route config matches only on it
/// and strips it before the request leaves Envoy (`request_headers_to_remove`).
pub const UPSTREAM_HEADER: &str = "x-ixproxy-upstream";
/// Request header the filter sets (to `1`) when the source has `allow_private_origins`: the
/// generated Envoy config denies origins whose resolved address is private unless it is present,
/// and strips it before the request leaves Envoy. A client-sent one is always removed.
pub const ALLOW_PRIVATE_HEADER: &str = "x-ixproxy-allow-private";
/// Kept on the request although clients cannot forward it: Envoy's route matching refuses a
/// request without it (it reads the scheme from there). Envoy's connection manager sets it; the
/// generated route config strips it before the request leaves Envoy, like [`UPSTREAM_HEADER`].
pub const ROUTING_HEADER_KEPT: &str = "x-forwarded-proto";
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
/// header outside the forwarded allowlist, except [`ROUTING_HEADER_KEPT`], is removed (so client
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
            || name.eq_ignore_ascii_case(ROUTING_HEADER_KEPT)
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
}
