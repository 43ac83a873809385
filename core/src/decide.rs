//! The one decision both runtimes share: a request (method, Host, raw target) becomes either a
//! [`Forward`] to an origin or a [`Rejection`] with the status of SPEC §6.

use crate::addr::is_denied_ip;
use crate::config::{Source, Sources};
use crate::expires::{check_target_expires, ExpiresError};
use crate::origin::{decode_origin, parse_origin, OriginUrl};
use crate::signature;

/// The parts of a client request the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// HTTP method as sent (`GET`, `HEAD`, ...).
    pub method: &'a str,
    /// Host / `:authority` value as sent (port allowed).
    pub host: &'a str,
    /// Raw request target (path and query) exactly as on the wire.
    pub target: &'a str,
}

/// What happened to a request; the metric label both runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Forwarded to the origin.
    Forwarded,
    /// `s` missing, malformed, not last, duplicated or wrong.
    BadSignature,
    /// `expires` in the past.
    Expired,
    /// `expires` not an integer.
    BadExpires,
    /// Origin URL not usable.
    BadOriginUrl,
    /// Origin host not allowed or private.
    OriginDenied,
    /// Host matches no source.
    UnknownHost,
    /// Method other than GET/HEAD.
    MethodNotAllowed,
    /// Request target or headers over the limits (414, 431).
    RequestTooLarge,
    /// Origin response refused by policy: Content-Type outside `allowed_content_types` (403).
    ContentTypeDenied,
    /// Origin response body over `upstream.max_body_bytes` (502, or an aborted transfer).
    OriginTooLarge,
    /// Origin redirect not followed: too many hops or an unusable `Location` (502).
    BadRedirect,
    /// A GET or HEAD carrying a body (400): refused so no framing trick reaches an origin.
    BadRequest,
}

impl Outcome {
    /// Every outcome, for pre-registering metrics.
    pub const ALL: [Outcome; 13] = [
        Outcome::Forwarded,
        Outcome::BadSignature,
        Outcome::Expired,
        Outcome::BadExpires,
        Outcome::BadOriginUrl,
        Outcome::OriginDenied,
        Outcome::UnknownHost,
        Outcome::MethodNotAllowed,
        Outcome::RequestTooLarge,
        Outcome::ContentTypeDenied,
        Outcome::OriginTooLarge,
        Outcome::BadRedirect,
        Outcome::BadRequest,
    ];

    /// The metric label (`forwarded`, `bad_signature`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::BadSignature => "bad_signature",
            Outcome::Expired => "expired",
            Outcome::BadExpires => "bad_expires",
            Outcome::BadOriginUrl => "bad_origin_url",
            Outcome::OriginDenied => "origin_denied",
            Outcome::UnknownHost => "unknown_host",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::RequestTooLarge => "request_too_large",
            Outcome::ContentTypeDenied => "content_type_denied",
            Outcome::OriginTooLarge => "origin_too_large",
            Outcome::BadRedirect => "bad_redirect",
            Outcome::BadRequest => "bad_request",
        }
    }
}

/// A request to answer locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status (SPEC §6).
    pub status: u16,
    /// Metric label.
    pub outcome: Outcome,
    /// Short plain-text reason for the body; never reveals the origin URL to an unsigned request.
    pub reason: String,
    /// Extra response headers (`Allow` on 405).
    pub headers: Vec<(&'static str, &'static str)>,
}

/// A request to send to an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Name of the source that matched.
    pub source: String,
    /// Where to connect and what to ask for.
    pub origin: OriginUrl,
    /// Whether the source allows private/loopback origin addresses (the native runtime checks
    /// resolved addresses with [`crate::addr::is_denied_ip`] unless this is true).
    pub allow_private: bool,
    /// Headers to set on the origin request (lower-case names): origin auth. `Host` is not in
    /// here; set it to [`OriginUrl::authority`].
    pub set_headers: Vec<(&'static str, String)>,
    /// Upper bound for the response's `Cache-Control` max-age, from `expires`.
    pub max_age: Option<u64>,
    /// Host of the first origin URL: origin auth headers go only to hops on this host.
    pub auth_host: String,
    /// Redirect hops followed so far (0 for the origin URL the client signed).
    pub redirects: u32,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send to the origin.
    Forward(Box<Forward>),
    /// Answer locally.
    Reject(Rejection),
}

/// Client request headers that may reach the origin (lower-case); every other client header is
/// dropped by the runtimes.
pub const FORWARDED_CLIENT_HEADERS: [&str; 7] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "if-none-match",
    "if-modified-since",
    "range",
    "user-agent",
];

/// Whether a client request header (any case) may be forwarded to the origin.
pub fn is_forwarded_client_header(name: &str) -> bool {
    FORWARDED_CLIENT_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// Origin response headers the runtimes remove before answering the client (lower-case).
pub const DROPPED_RESPONSE_HEADERS: [&str; 1] = ["set-cookie"];

/// Decides what to do with one request.
///
/// `now` is unix seconds from the host clock and `random` 32 fresh random bytes (the per-request
/// signing id). Check order: method, host, signature, `expires`, then the origin URL and the
/// source's origin policy, so an unsigned request learns nothing about the origin URL.
pub fn decide(sources: &Sources, req: &RequestInfo<'_>, now: u64, random: &[u8; 32]) -> Decision {
    match decide_inner(sources, req, now, random) {
        Ok(forward) => Decision::Forward(Box::new(forward)),
        Err(rejection) => Decision::Reject(rejection),
    }
}

fn reject(status: u16, outcome: Outcome, reason: impl ToString) -> Rejection {
    Rejection {
        status,
        outcome,
        reason: reason.to_string(),
        headers: Vec::new(),
    }
}

fn decide_inner(
    sources: &Sources,
    req: &RequestInfo<'_>,
    now: u64,
    random: &[u8; 32],
) -> Result<Forward, Rejection> {
    if req.method != "GET" && req.method != "HEAD" {
        let mut rejection = reject(405, Outcome::MethodNotAllowed, "method not allowed");
        rejection.headers.push(("allow", "GET, HEAD"));
        return Err(rejection);
    }
    if req.target.len() > sources.limits().max_request_target_bytes {
        return Err(reject(
            414,
            Outcome::RequestTooLarge,
            "request target too long",
        ));
    }
    let source = sources
        .by_host(req.host)
        .ok_or_else(|| reject(410, Outcome::UnknownHost, "no source serves this host"))?;
    let signed = signature::verify(req.target, &source.tokens)
        .map_err(|e| reject(403, Outcome::BadSignature, e))?;

    let max_age = check_target_expires(&signed, now).map_err(|e| match e {
        ExpiresError::Expired => reject(404, Outcome::Expired, e),
        ExpiresError::NotInteger | ExpiresError::Duplicated => reject(400, Outcome::BadExpires, e),
    })?;

    let origin = decode_origin(signed.path).map_err(|e| reject(400, Outcome::BadOriginUrl, e))?;

    check_origin_policy(source, &origin)?;
    Ok(Forward {
        source: source.name.clone(),
        set_headers: source.origin_auth.headers(&origin.host, now, random),
        allow_private: source.allow_private_origins,
        auth_host: origin.host.clone(),
        origin,
        max_age,
        redirects: 0,
    })
}

/// The source's origin policy: `allowed_origin_hosts`, then (unless `allow_private_origins`) no
/// IP literal from the deny list and no `localhost` name.
fn check_origin_policy(source: &Source, origin: &OriginUrl) -> Result<(), Rejection> {
    if !source.origin_host_allowed(&origin.host) {
        return Err(reject(
            403,
            Outcome::OriginDenied,
            "origin host is not allowed for this source",
        ));
    }
    if !source.allow_private_origins && is_private_host(origin) {
        return Err(reject(
            403,
            Outcome::OriginDenied,
            "origin address is private, loopback or otherwise not public",
        ));
    }
    Ok(())
}

/// Checks the client's request header count and total size (names plus values) against the
/// limits; runtimes call it before [`decide`].
///
/// # Errors
/// A 431 rejection.
pub fn check_request_headers(
    sources: &Sources,
    count: usize,
    bytes: usize,
) -> Result<(), Rejection> {
    let limits = sources.limits();
    if count > limits.max_request_headers || bytes > limits.max_request_header_bytes {
        return Err(reject(
            431,
            Outcome::RequestTooLarge,
            "request header fields too large",
        ));
    }
    Ok(())
}

/// Refuses a GET or HEAD that carries a body; runtimes call it first, before
/// [`check_request_headers`] and [`decide`]. `has_body` is the runtime's view: a
/// `Transfer-Encoding`, a `Content-Length` other than 0, or a stream not ended with the headers.
/// A body is never forwarded, and refusing it outright means no `Content-Length` /
/// `Transfer-Encoding` combination can be read one way here and another way by an origin.
/// Other methods are left to [`decide`] (405).
///
/// # Errors
/// A 400 rejection.
pub fn check_request_body(method: &str, has_body: bool) -> Result<(), Rejection> {
    if has_body && (method == "GET" || method == "HEAD") {
        return Err(reject(
            400,
            Outcome::BadRequest,
            "a GET or HEAD request must not carry a body",
        ));
    }
    Ok(())
}

/// Whether an origin status is a redirect the gateway follows (301, 302, 303, 307, 308).
pub fn is_followed_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

impl Forward {
    /// The origin auth headers for one (new) attempt at this forward: fresh timestamp and
    /// request id, and none at all on a hop away from the first origin's host.
    pub fn auth_headers(
        &self,
        sources: &Sources,
        now: u64,
        random: &[u8; 32],
    ) -> Vec<(&'static str, String)> {
        match sources.by_name(&self.source) {
            Some(source) if self.origin.host == self.auth_host => {
                source.origin_auth.headers(&self.origin.host, now, random)
            }
            _ => Vec::new(),
        }
    }

    /// Follows an origin redirect: resolves `location` against the current origin URL and
    /// re-validates it like the first URL (http/https, no userinfo, valid port, the source's
    /// `allowed_origin_hosts` and private-address rules). Origin auth headers are set only when
    /// the hop stays on the first origin's host.
    ///
    /// # Errors
    /// 502 [`Outcome::BadRedirect`] past `upstream.max_redirects` or for an unusable `Location`;
    /// 403 [`Outcome::OriginDenied`] when the hop's host is not allowed.
    pub fn redirect(
        &self,
        sources: &Sources,
        location: &str,
        now: u64,
        random: &[u8; 32],
    ) -> Result<Forward, Rejection> {
        let bad = |why: &str| {
            reject(
                502,
                Outcome::BadRedirect,
                format!("origin redirect not followed: {why}"),
            )
        };
        if self.redirects >= sources.limits().max_redirects {
            return Err(bad("too many redirects"));
        }
        let source = sources
            .by_name(&self.source)
            .ok_or_else(|| bad("unknown source"))?;
        let base =
            url::Url::parse(&self.origin.to_url_string()).map_err(|_| bad("bad base url"))?;
        let target = base
            .join(location.trim())
            .map_err(|_| bad("location is not a url"))?;
        let origin = parse_origin(target.as_str()).map_err(|e| bad(&e.to_string()))?;
        check_origin_policy(source, &origin)?;
        let mut next = Forward {
            source: self.source.clone(),
            origin,
            allow_private: self.allow_private,
            set_headers: Vec::new(),
            max_age: self.max_age,
            auth_host: self.auth_host.clone(),
            redirects: self.redirects + 1,
        };
        next.set_headers = next.auth_headers(sources, now, random);
        Ok(next)
    }

    /// Checks an origin response before anything of it reaches the client: the Content-Type
    /// against the source's `allowed_content_types` (on every response that can carry a body:
    /// not 1xx, 204 or 304) and a declared `Content-Length` against `upstream.max_body_bytes`.
    ///
    /// # Errors
    /// 403 [`Outcome::ContentTypeDenied`] or 502 [`Outcome::OriginTooLarge`].
    pub fn check_response(
        &self,
        sources: &Sources,
        status: u16,
        content_type: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<(), Rejection> {
        if content_length.is_some_and(|len| len > sources.limits().max_body_bytes) {
            return Err(reject(
                502,
                Outcome::OriginTooLarge,
                "origin response too large",
            ));
        }
        let has_body = !(status < 200 || status == 204 || status == 304);
        let allowed = sources
            .by_name(&self.source)
            .and_then(|s| s.allowed_content_types.as_ref());
        if let (true, Some(prefixes)) = (has_body, allowed) {
            let media_type = content_type
                .map(|ct| {
                    ct.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            // `image/` is a prefix; `application/pdf` names one media type exactly.
            let matches = |p: &String| {
                if p.ends_with('/') {
                    media_type.starts_with(p.as_str())
                } else {
                    media_type == *p
                }
            };
            if media_type.is_empty() || !prefixes.iter().any(matches) {
                return Err(reject(
                    403,
                    Outcome::ContentTypeDenied,
                    "origin content type is not allowed for this source",
                ));
            }
        }
        Ok(())
    }
}

/// Whether the origin host is known to be non-public before any DNS lookup: a denied IP literal
/// or a `localhost` name.
fn is_private_host(origin: &OriginUrl) -> bool {
    match origin.ip() {
        Some(ip) => is_denied_ip(ip),
        None => {
            let host = origin.host.trim_end_matches('.');
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}
