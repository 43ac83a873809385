//! The HTTP-type half of the Pingora adapter: what the gateway reads from the client's request
//! head (its Host, whether it carries a body, its header totals) and how it writes Pingora's
//! heads (the core's local reply, the origin request rewritten from the client's, the core's
//! edits of the origin's response head). No decision is made here: each function carries out a
//! rule of the core.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use ixproxy_core::access_log::REQUEST_ID_HEADER;
use ixproxy_core::auth::{self, AuthHeaders};
use ixproxy_core::cors;
use ixproxy_core::gateway_headers::{GatewayHeaderName, GatewayValue};
use ixproxy_core::identity::{OriginUserAgent, DEFAULT_ORIGIN_USER_AGENT};
use ixproxy_core::request::{HeaderTotals, FORWARDED_CLIENT_HEADERS};
use ixproxy_core::response::{OriginHead, ResponseEdits};
use ixproxy_core::{Forward, Rejection};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

/// Whether a client request carries a body (framing headers present, other than an explicit
/// `Content-Length: 0`).
pub fn has_request_body(req: &RequestHeader) -> bool {
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// The client's header totals under the core's counting rule: every field, and an HTTP/2
/// `:authority` (which Pingora keeps in the URI, not among the headers) as `Host`.
pub fn header_totals(req: &RequestHeader) -> HeaderTotals {
    let mut totals = HeaderTotals::of(req.headers.iter().map(|(n, v)| (n.as_str(), v.len())));
    if !req.headers.contains_key(header::HOST) {
        if let Some(authority) = req.uri.authority() {
            totals.add(":authority", authority.as_str().len());
        }
    }
    totals
}

/// The Host a request was sent to: the `Host` header, or the HTTP/2 `:authority`.
pub fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Writes the core's local reply for `rejection` (no body for HEAD), with the request's id.
pub async fn respond(session: &mut Session, rejection: &Rejection, request_id: &str) -> Result<()> {
    let body = Bytes::from(rejection.body());
    let mut resp = ResponseHeader::build(rejection.status(), Some(5))?;
    for (name, value) in rejection.headers() {
        resp.insert_header(name, value)?;
    }
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID_HEADER, request_id)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Makes the origin request from the client's: the client's method, then the origin path and
/// query, and only the allowlisted client headers (less the variant-selecting ones when
/// `cached`: the answer may be stored for other clients, and the client's `User-Agent` unless
/// the source forwards it, see [`Forward::forwards_client_header`]), then `Host`, the source's
/// `User-Agent` and its `origin_headers` ([`Forward::origin_headers`]), `auth` (the origin auth headers of this attempt, from
/// [`Forward::auth_headers`]) and the request's id.
///
/// The request is built anew rather than edited: Pingora's client request keeps a second map
/// of header-name case, so each removal and insertion there hashes twice, parses the name
/// again and grows both maps. A new head without it, its header map sized for what it gets and
/// filled with names that are already parsed (the client's own, and constants), costs a
/// fraction (bench/NOTES.md). Header names go out in Pingora's title case, which HTTP/1.1
/// origins treat as any other case.
///
/// # Errors
/// A header value or path the HTTP types refuse (the core never produces one).
pub fn rewrite_upstream_request(
    req: &mut RequestHeader,
    forward: &Forward,
    auth: AuthHeaders,
    cached: bool,
    request_id: &str,
) -> Result<()> {
    let mut headers = HeaderMap::with_capacity(FORWARDED_CLIENT_HEADERS.len() + 8);
    for (name, value) in &req.headers {
        if *name != X_REQUEST_ID && forward.forwards_client_header(name.as_str(), cached) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::HOST, owned_value(forward.origin().authority())?);
    match &forward.source().origin_user_agent {
        // The default on every origin request: a constant, no allocation.
        OriginUserAgent::Default => {
            headers.insert(header::USER_AGENT, DEFAULT_USER_AGENT);
        }
        OriginUserAgent::Custom(value) => {
            headers.insert(header::USER_AGENT, header_value(value)?);
        }
        OriginUserAgent::Forward => {}
    }
    for fixed in forward.origin_headers() {
        // A secret like the origin auth values; it replaces a client header of that name.
        let mut value = header_value(fixed.value.expose())?;
        value.set_sensitive(true);
        let name = HeaderName::from_bytes(fixed.name.as_bytes())
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "header name", e))?;
        headers.insert(name, value);
    }
    for (name, value) in auth {
        // Sensitive: never printed by a debug log of the request, never HPACK-indexed.
        let mut value = owned_value(value)?;
        value.set_sensitive(true);
        headers.append(known_header_name(name)?, value);
    }
    headers.insert(
        X_REQUEST_ID,
        HeaderValue::from_str(request_id)
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "request id", e))?,
    );
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = req.method.clone();
    // What Pingora chose for the origin's protocol (it sets HTTP/2 before this filter for an
    // h2 origin, and checks it after).
    parts.version = req.version;
    parts.headers = headers;
    let mut origin = RequestHeader::from(parts);
    origin.set_raw_path(forward.origin().path_and_query.as_bytes())?;
    *req = origin;
    Ok(())
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const DEFAULT_USER_AGENT: HeaderValue = HeaderValue::from_static(DEFAULT_ORIGIN_USER_AGENT);
const TIMING_ALLOW_ORIGIN: HeaderName = HeaderName::from_static(cors::TIMING_ALLOW_ORIGIN);
const RESOURCE_POLICY: HeaderName = HeaderName::from_static(cors::RESOURCE_POLICY);
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static(cors::ANY_ORIGIN);
const CROSS_ORIGIN: HeaderValue = HeaderValue::from_static(cors::CROSS_ORIGIN);
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static(cors::VARY_ORIGIN);

/// A header value from configuration or the core (copied).
fn header_value(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "header value", e))
}

/// Writes the gateway's own headers for this response ([`Forward::gateway_headers`]: CORS,
/// `Vary` in list mode, `Content-Disposition` for a signed `dl`), each handed to `put`, which
/// replaces every field of that name (`vary`: the response's own `Vary` fields joined, read by
/// the caller only when [`ixproxy_core::cors::Cors::needs_request_origin`]). Never stored by
/// the cache. Names are constants; `*` and `cross-origin` are constant values, and a listed
/// `Origin` is the client's own header value: the default allocates nothing and parses nothing.
///
/// # Errors
/// A header value the HTTP types refuse (not produced by the core), or `put`'s error.
pub fn gateway_response_headers(
    forward: &Forward,
    req: &RequestHeader,
    status: http::StatusCode,
    vary: Option<&str>,
    mut put: impl FnMut(HeaderName, HeaderValue) -> Result<()>,
) -> Result<()> {
    let sent = if forward.cors().needs_request_origin() {
        req.headers.get(header::ORIGIN)
    } else {
        None
    };
    let request_origin = sent.and_then(|v| v.to_str().ok());
    forward.gateway_headers(request_origin, status.as_u16(), vary, |name, value| {
        let name = match name {
            GatewayHeaderName::AllowOrigin => header::ACCESS_CONTROL_ALLOW_ORIGIN,
            GatewayHeaderName::TimingAllowOrigin => TIMING_ALLOW_ORIGIN,
            GatewayHeaderName::ResourcePolicy => RESOURCE_POLICY,
            GatewayHeaderName::Vary => header::VARY,
            GatewayHeaderName::ContentDisposition => header::CONTENT_DISPOSITION,
        };
        let value = match value {
            GatewayValue::AnyOrigin => ANY_ORIGIN,
            GatewayValue::CrossOrigin => CROSS_ORIGIN,
            GatewayValue::VaryOrigin => VARY_ORIGIN,
            GatewayValue::RequestOrigin(origin) => match sent {
                Some(sent) => sent.clone(),
                None => header_value(origin)?,
            },
            GatewayValue::Text(Cow::Owned(text)) => owned_value(text)?,
            GatewayValue::Text(Cow::Borrowed(text)) => header_value(text)?,
        };
        put(name, value)
    })
}

/// The parsed name of a header the core sets (the origin auth headers, the response edits): a
/// constant for each, so none is parsed or copied per request.
fn known_header_name(name: &'static str) -> Result<HeaderName> {
    const ORIGIN_SECRET: HeaderName = HeaderName::from_static(auth::ORIGIN_SECRET);
    const SIGNATURE_TIMESTAMP: HeaderName = HeaderName::from_static(auth::SIGNATURE_TIMESTAMP);
    const SIGNATURE_REQUEST_ID: HeaderName = HeaderName::from_static(auth::SIGNATURE_REQUEST_ID);
    const SIGNATURE: HeaderName = HeaderName::from_static(auth::SIGNATURE);
    const SIGNATURE_HOST: HeaderName = HeaderName::from_static(auth::SIGNATURE_HOST);
    const NOSNIFF: &str = ixproxy_core::response::NOSNIFF.0;
    const CONTENT_SECURITY_POLICY: &str = ixproxy_core::response::CONTENT_SECURITY_POLICY.0;
    Ok(match name {
        auth::AUTHORIZATION => header::AUTHORIZATION,
        auth::ORIGIN_SECRET => ORIGIN_SECRET,
        auth::SIGNATURE_TIMESTAMP => SIGNATURE_TIMESTAMP,
        auth::SIGNATURE_REQUEST_ID => SIGNATURE_REQUEST_ID,
        auth::SIGNATURE => SIGNATURE,
        auth::SIGNATURE_HOST => SIGNATURE_HOST,
        "content-type" => header::CONTENT_TYPE,
        "cache-control" => header::CACHE_CONTROL,
        NOSNIFF => header::X_CONTENT_TYPE_OPTIONS,
        CONTENT_SECURITY_POLICY => header::CONTENT_SECURITY_POLICY,
        other => HeaderName::from_bytes(other.as_bytes())
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "header name", e))?,
    })
}

/// The origin response head as the core reads it.
pub fn origin_head(resp: &ResponseHeader) -> OriginHead {
    OriginHead::of(
        resp.status.as_u16(),
        resp.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    )
}

/// Applies the core's response edits to the origin's response header: the fields the edits
/// neither remove nor set, in their order, then the set ones, then the gateway's own headers
/// for `gateway`'s forward and client request ([`gateway_response_headers`]; `None` when the
/// cache stores this head: they are added per response then).
///
/// Like the origin request (see [`rewrite_upstream_request`]), the head is made anew from a
/// header map rather than edited in place: Pingora's response head keeps a second map of
/// header-name case, so every removal and insertion there parses the name again and hashes
/// into both maps. Names go out in Pingora's title case, as for any head without that map.
///
/// # Errors
/// A header value the HTTP types refuse (not produced by the core).
pub fn apply_response_edits(
    resp: &mut ResponseHeader,
    edits: ResponseEdits,
    gateway: Option<(&Forward, &RequestHeader)>,
) -> Result<()> {
    // The gateway's headers other than Vary are never on the origin allowlist (the edits
    // remove the origin's); a Vary it sets holds the origin's and replaces its fields.
    let vary = gateway
        .filter(|(f, _)| f.cors().needs_request_origin())
        .and_then(|_| super::cache::joined(resp, header::VARY));
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + edits.set.len() + 3);
    for (name, value) in &resp.headers {
        let name_str = name.as_str();
        let edited = edits.remove.iter().any(|removed| removed == name_str)
            || edits.set.iter().any(|(set, _)| *set == name_str);
        if !edited {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in edits.set {
        headers.append(known_header_name(name)?, owned_value(value)?);
    }
    if let Some((forward, req)) = gateway {
        gateway_response_headers(forward, req, resp.status, vary.as_deref(), |name, value| {
            // Only Vary can be there already (the origin's; the others are off the allowlist):
            // appending the rest spares the search for fields to replace.
            if name == header::VARY {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
            Ok(())
        })?;
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = resp.status;
    parts.version = resp.version;
    parts.headers = headers;
    *resp = ResponseHeader::from(parts);
    Ok(())
}

/// `value` as a header value without copying it (`&str` values are copied into new storage).
///
/// # Errors
/// A value the HTTP types refuse (not produced by the core).
pub fn owned_value(value: String) -> Result<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "header value", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ixproxy_core::config::{MapSecrets, RawConfig};
    use ixproxy_core::sign::{sign_url, SignOptions};
    use ixproxy_core::{Decision, RequestInfo};

    const NOW: u64 = 1_700_000_000;

    /// The core's forward for `url` on a source with Basic auth `u:p` and handshake `hs`.
    fn forward(url: &str) -> Forward {
        let yaml = "sources:
  - name: assets
    hosts: [gw.example.com]
    secure_url_tokens: [t]
    origin_auth: {basic_auth: {username: u, password: p}, request_handshake: hs}
    allowed_origin_hosts: [o.example]
";
        forward_in(yaml, url)
    }

    /// The core's forward for `url` signed with token `t` for `gw.example.com` under `yaml`.
    fn forward_in(yaml: &str, url: &str) -> Forward {
        let sources = RawConfig::from_yaml(yaml)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid")
            .sources;
        let target = sign_url("t", url, &[], &SignOptions::default());
        let info = RequestInfo {
            method: "GET",
            host: "gw.example.com",
            target: &target,
        };
        match ixproxy_core::decide(&sources, &info, NOW) {
            Decision::Forward(f) => *f,
            Decision::Reject(r) => panic!("{url}: {r:?}"),
        }
    }

    #[test]
    fn only_allowlisted_client_headers_reach_the_origin() {
        let mut req = RequestHeader::build("GET", b"/https%3A%2F%2Fo.example%2Fa.png?s=abc", None)
            .expect("req");
        for (name, value) in [
            ("Host", "gw.example.com"),
            ("Accept", "image/webp"),
            ("Range", "bytes=0-9"),
            ("User-Agent", "curl/8"),
            ("If-None-Match", "\"e\""),
            ("Cookie", "session=1"),
            ("Authorization", "Bearer client"),
            ("X-Imgix-Origin-Secret", "forged"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Proxy-Authorization", "Basic x"),
            ("X-Request-ID", "client-chosen"),
        ] {
            req.append_header(name, value).expect("header");
        }
        let f = forward("https://o.example:8443/a%20b.png?v=2");
        let uncached = req.clone();
        rewrite_upstream_request(&mut req, &f, f.auth_headers(NOW, &[0; 32]), false, "id-1")
            .expect("rewrite");

        assert_eq!(req.raw_path(), b"/a%20b.png?v=2");
        let get = |n: &str| {
            req.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("host"), ["o.example:8443"]);
        assert_eq!(
            get("x-imgix-origin-secret"),
            ["hs"],
            "client value replaced"
        );
        assert_eq!(
            get("authorization"),
            ["Basic dTpw"],
            "client value replaced"
        );
        assert_eq!(get("accept"), ["image/webp"]);
        assert_eq!(get("range"), ["bytes=0-9"]);
        assert_eq!(
            get("user-agent"),
            [DEFAULT_ORIGIN_USER_AGENT],
            "the source's, not the client's"
        );
        assert_eq!(get("if-none-match"), ["\"e\""]);
        assert_eq!(
            get("x-request-id"),
            ["id-1"],
            "the request's settled id, once"
        );
        assert_eq!(req.method, "GET");
        for gone in ["cookie", "x-forwarded-for", "proxy-authorization"] {
            assert!(get(gone).is_empty(), "{gone} must not reach the origin");
        }
        // The origin auth values are sensitive: `Debug` of the request never prints them.
        for name in ["authorization", "x-imgix-origin-secret"] {
            assert!(req.headers[name].is_sensitive(), "{name}");
        }
        assert!(!req.headers["accept"].is_sensitive());
        // A fill of the response cache: nothing that selects a variant goes with it.
        let mut fill = uncached;
        rewrite_upstream_request(&mut fill, &f, f.auth_headers(NOW, &[0; 32]), true, "id-1")
            .expect("rewrite");
        assert!(
            fill.headers.get("accept").is_none(),
            "accept on a cache fill"
        );
        assert_eq!(fill.headers["user-agent"], DEFAULT_ORIGIN_USER_AGENT);
        assert_eq!(fill.headers["range"], "bytes=0-9");
        let debug = format!("{req:?}");
        assert!(
            !debug.contains("dTpw") && !debug.contains("\"hs\""),
            "{debug}"
        );
    }

    #[test]
    fn the_gateway_headers_follow_the_source_and_the_request() {
        let req = RequestHeader::build("GET", b"/x", None).expect("req");
        let f = forward("https://o.example/a.png");
        let set = |status: u16, f: &Forward, req: &RequestHeader| {
            let status = http::StatusCode::from_u16(status).expect("status");
            let mut out = Vec::new();
            gateway_response_headers(f, req, status, Some("Accept-Encoding"), |n, v| {
                out.push((n.to_string(), v.to_str().expect("ascii").to_owned()));
                Ok(())
            })
            .expect("headers");
            out
        };
        let default = [
            ("access-control-allow-origin".to_owned(), "*".to_owned()),
            ("timing-allow-origin".to_owned(), "*".to_owned()),
            (
                "cross-origin-resource-policy".to_owned(),
                "cross-origin".to_owned(),
            ),
        ];
        assert_eq!(set(200, &f, &req), default);
        assert_eq!(set(404, &f, &req), default, "any status");
        let mut f = f;
        f.set_content_disposition(Some("attachment; filename=\"a\"".to_owned()));
        assert_eq!(set(200, &f, &req).len(), 4);
        assert_eq!(set(206, &f, &req)[3].0, "content-disposition");
        assert_eq!(set(404, &f, &req).len(), 3, "no download of an error");
    }

    #[test]
    fn origin_identity_headers_reach_the_auth_host_only() {
        let yaml = "sources:
  - name: assets
    hosts: [gw.example.com]
    secure_url_tokens: [t]
    origin_auth: {hosts: [o.example]}
    origin_user_agent: forward
    origin_headers: {X-Api-Key: k3y}
";
        let forward = |url: &str| forward_in(yaml, url);
        let client = req_with(&[("User-Agent", "browser/1"), ("Accept", "image/webp")]);
        let mut req = client.clone();
        let f = forward("https://o.example/a.png");
        rewrite_upstream_request(&mut req, &f, AuthHeaders::default(), false, "id")
            .expect("rewrite");
        assert_eq!(req.headers["user-agent"], "browser/1", "forwarded");
        assert_eq!(req.headers["x-api-key"], "k3y");
        assert!(req.headers["x-api-key"].is_sensitive());
        assert_eq!(req.headers["accept"], "image/webp");
        let mut req = client;
        let f = forward("https://elsewhere.example/a.png");
        rewrite_upstream_request(&mut req, &f, AuthHeaders::default(), false, "id")
            .expect("rewrite");
        assert!(req.headers.get("x-api-key").is_none());
        assert_eq!(req.headers["accept"], "image/webp");
    }

    #[test]
    fn in_list_mode_the_origins_vary_reaches_the_client() {
        let yaml = "sources:
  - name: assets
    hosts: [gw.example.com]
    secure_url_tokens: [t]
    cors: {allow_origin: [https://app.example]}
";
        let f = forward_in(yaml, "https://o.example/a.png");
        let req = req_with(&[("Origin", "https://app.example")]);
        let no_edits = || ResponseEdits {
            remove: Vec::new(),
            set: Vec::new(),
            policy_cache_control: None,
        };
        for (origin_vary, expected) in [
            (&["Origin, Accept-Encoding"][..], "Origin, Accept-Encoding"),
            (
                &["Accept-Encoding", "origin"][..],
                "Accept-Encoding, origin",
            ),
            (&["Accept-Encoding"][..], "Accept-Encoding, Origin"),
            (&["*"][..], "*"),
            (&[][..], "Origin"),
        ] {
            let mut resp = ResponseHeader::build(200, None).expect("resp");
            for value in origin_vary {
                resp.append_header("Vary", *value).expect("h");
            }
            apply_response_edits(&mut resp, no_edits(), Some((&f, &req))).expect("rewrite");
            let sent: Vec<_> = resp.headers.get_all("vary").iter().collect();
            assert_eq!(sent, [expected], "{origin_vary:?}");
            assert_eq!(
                resp.headers["access-control-allow-origin"],
                "https://app.example"
            );
        }
    }

    #[test]
    fn every_header_name_the_core_sets_has_its_own_constant() {
        for name in [
            "content-type",
            "cache-control",
            ixproxy_core::response::NOSNIFF.0,
            ixproxy_core::response::CONTENT_SECURITY_POLICY.0,
            auth::AUTHORIZATION,
            auth::ORIGIN_SECRET,
            auth::SIGNATURE_TIMESTAMP,
            auth::SIGNATURE_REQUEST_ID,
            auth::SIGNATURE,
            auth::SIGNATURE_HOST,
            "x-another",
        ] {
            assert_eq!(known_header_name(name).expect("valid").as_str(), name);
        }
        assert_eq!(X_REQUEST_ID.as_str(), REQUEST_ID_HEADER);
    }

    #[test]
    fn response_edits_apply_to_the_origin_header() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("Cache-Control", "public, max-age=31536000")
            .expect("h");
        resp.append_header("Set-Cookie", "a=1").expect("h");
        resp.append_header("Set-Cookie", "b=2").expect("h");
        resp.append_header("ETag", "\"x\"").expect("h");
        resp.append_header("Transfer-Encoding", "chunked")
            .expect("h");
        let edits = ResponseEdits {
            remove: vec!["set-cookie".to_owned()],
            set: vec![("cache-control", "public, max-age=60".to_owned())],
            policy_cache_control: None,
        };
        assert_eq!(origin_head(&resp).removed(), ["set-cookie"]);
        apply_response_edits(&mut resp, edits, None).expect("rewrite");
        assert_eq!(resp.headers["cache-control"], "public, max-age=60");
        assert!(resp.headers.get("set-cookie").is_none());
        assert_eq!(resp.headers["etag"], "\"x\"");
        assert_eq!(
            resp.headers["transfer-encoding"], "chunked",
            "framing stays Pingora's"
        );
    }

    fn req_with(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x?s=0", None).expect("req");
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn request_bodies_and_header_totals_are_measured() {
        assert!(!has_request_body(&req_with(&[])));
        assert!(!has_request_body(&req_with(&[("Content-Length", "0")])));
        assert!(has_request_body(&req_with(&[("Content-Length", "1")])));
        assert!(has_request_body(&req_with(&[(
            "Transfer-Encoding",
            "chunked"
        )])));
        let totals = header_totals(&req_with(&[("Accept", "a/b"), ("X-A", "1")]));
        assert_eq!(
            (totals.count, totals.bytes),
            (2, "accept".len() + 3 + "x-a".len() + 1)
        );
    }
}
