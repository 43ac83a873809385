//! The one decision both runtimes share: a request (method, Host, raw target) becomes either a
//! [`Forward`] to an origin or a [`Rejection`] with the status of SPEC §6.

use crate::config::Sources;
use crate::origin::OriginUrl;

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
    let _ = (sources, req, now, random);
    todo!()
}
