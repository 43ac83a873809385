//! The one decision both runtimes share: a request (method, Host, raw target) becomes either a
//! [`Forward`] to an origin or a [`Rejection`] with the status of SPEC §6.

use percent_encoding::percent_decode_str;

use crate::addr::is_denied_ip;
use crate::config::Sources;
use crate::expires::{check_expires, ExpiresError};
use crate::origin::{decode_origin, OriginUrl};
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
}

impl Outcome {
    /// Every outcome, for pre-registering metrics.
    pub const ALL: [Outcome; 8] = [
        Outcome::Forwarded,
        Outcome::BadSignature,
        Outcome::Expired,
        Outcome::BadExpires,
        Outcome::BadOriginUrl,
        Outcome::OriginDenied,
        Outcome::UnknownHost,
        Outcome::MethodNotAllowed,
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
    let source = sources
        .by_host(req.host)
        .ok_or_else(|| reject(410, Outcome::UnknownHost, "no source serves this host"))?;
    let signed = signature::verify(req.target, &source.tokens)
        .map_err(|e| reject(403, Outcome::BadSignature, e))?;

    let expires_values: Vec<String> = signed
        .params()
        .filter(|(key, _)| *key == "expires")
        .map(|(_, value)| percent_decode_str(value).decode_utf8_lossy().into_owned())
        .collect();
    let max_age =
        check_expires(expires_values.iter().map(String::as_str), now).map_err(|e| match e {
            ExpiresError::Expired => reject(404, Outcome::Expired, e),
            ExpiresError::NotInteger | ExpiresError::Duplicated => {
                reject(400, Outcome::BadExpires, e)
            }
        })?;

    let origin = decode_origin(signed.path).map_err(|e| reject(400, Outcome::BadOriginUrl, e))?;
    if !source.origin_host_allowed(&origin.host) {
        return Err(reject(
            403,
            Outcome::OriginDenied,
            "origin host is not allowed for this source",
        ));
    }
    if !source.allow_private_origins && is_private_host(&origin) {
        return Err(reject(
            403,
            Outcome::OriginDenied,
            "origin address is private, loopback or otherwise not public",
        ));
    }

    Ok(Forward {
        source: source.name.clone(),
        set_headers: source.origin_auth.headers(&origin.host, now, random),
        allow_private: source.allow_private_origins,
        origin,
        max_age,
    })
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
