//! What happened to a request: the [`Outcome`] label both runtimes count, and the
//! [`Rejection`]s the gateway answers itself, each with its status and reason written once here.
//!
//! Every status either runtime can produce on its own has a constructor below; adapters never
//! build a status, a label or a reason text themselves, so the two runtimes cannot drift.

use std::borrow::Cow;

/// What happened to one client request; the `outcome` label of `ixproxy_requests_total`.
///
/// Exactly one outcome is counted per client request, on both runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The origin's answer (any status) was passed to the client, completely.
    Forwarded,
    /// `s` missing, malformed, not last, duplicated or wrong (403).
    BadSignature,
    /// `expires` in the past (404).
    Expired,
    /// `expires` not an integer, or given twice (400).
    BadExpires,
    /// Origin URL not usable (400).
    BadOriginUrl,
    /// Origin host not allowed, or a private / loopback / link-local address (403).
    OriginDenied,
    /// Host matches no source (410).
    UnknownHost,
    /// Method other than GET/HEAD (405).
    MethodNotAllowed,
    /// Request target or headers over the limits (414, 431).
    RequestTooLarge,
    /// Origin response refused by policy: Content-Type outside `allowed_content_types` (403).
    ContentTypeDenied,
    /// Origin response body over `upstream.max_body_bytes` (502, or an aborted transfer).
    OriginTooLarge,
    /// Origin redirect not followed: too many hops or an unusable `Location` (502).
    BadRedirect,
    /// A malformed request, or a GET or HEAD carrying a body (400).
    BadRequest,
    /// The origin could not be reached or broke off: refused, reset, DNS or TLS failure, a
    /// protocol error (502, or an aborted transfer once the header went out).
    OriginError,
    /// The origin did not answer in time (504, or an aborted transfer).
    OriginTimeout,
    /// The origin answered with a response the gateway cannot pass on safely (502).
    BadOriginResponse,
    /// Over a concurrency limit of the gateway (503 with `Retry-After`).
    Overloaded,
    /// A fault of the gateway itself (500).
    Internal,
    /// The client went away before its answer was complete; nobody is left to answer, and the
    /// origin is not to blame.
    ClientClosed,
    /// The Host names a source with `enabled: false` (410), cache hits included.
    SourceDisabled,
}

impl Outcome {
    /// Every outcome, for pre-registering metrics.
    pub const ALL: [Outcome; 20] = [
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
        Outcome::OriginError,
        Outcome::OriginTimeout,
        Outcome::BadOriginResponse,
        Outcome::Overloaded,
        Outcome::Internal,
        Outcome::ClientClosed,
        Outcome::SourceDisabled,
    ];

    /// The outcome's position in [`Outcome::ALL`] (for tables of per-outcome series).
    pub fn index(self) -> usize {
        self as usize
    }

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
            Outcome::OriginError => "origin_error",
            Outcome::OriginTimeout => "origin_timeout",
            Outcome::BadOriginResponse => "bad_origin_response",
            Outcome::Overloaded => "overloaded",
            Outcome::Internal => "internal",
            Outcome::ClientClosed => "client_closed",
            Outcome::SourceDisabled => "source_disabled",
        }
    }

    /// Whether the gateway refused the request or its answer by policy (an origin or content
    /// type the source does not allow): logged like a rejection, not as a proxy error.
    pub fn is_policy_refusal(self) -> bool {
        matches!(self, Outcome::OriginDenied | Outcome::ContentTypeDenied)
    }

    /// The outcome with this metric label, if any.
    pub fn from_label(label: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == label)
    }
}

use crate::response::SECURITY_HEADERS;

/// `Content-Type` of every local reply: the body is the reason as one line of text.
pub const LOCAL_REPLY_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// `Cache-Control` of every local reply: the gateway's own answers are never cached.
pub const LOCAL_REPLY_CACHE_CONTROL: (&str, &str) = ("cache-control", "no-store");

/// The headers every reply the gateway makes itself carries, whatever made it (a rejection, or
/// a runtime's own codec refusing a request): never cached, inert for browsers.
pub const LOCAL_REPLY_HEADERS: [(&str, &str); 3] = [
    LOCAL_REPLY_CACHE_CONTROL,
    SECURITY_HEADERS[0],
    SECURITY_HEADERS[1],
];

/// Reason of the 403 for an origin whose address (an IP literal, or any address its name
/// resolved to) is private, loopback or otherwise not public.
pub const ORIGIN_ADDRESS_DENIED: &str =
    "origin address is private, loopback or otherwise not public";
/// Reason of the 502 for an origin that could not be reached or broke off.
pub const ORIGIN_UNREACHABLE: &str = "origin unreachable";
/// Reason of the 504 for an origin that did not answer in time.
pub const ORIGIN_TIMED_OUT: &str = "origin timed out";
/// Reason of the 500 for a fault of the gateway itself.
pub const INTERNAL_ERROR: &str = "internal error";
/// Reason of the 503 over a concurrency limit.
pub const OVERLOADED: &str = "too many requests in flight, retry shortly";

/// A request the gateway answers itself: status, outcome label, a short plain-text reason and
/// any extra response headers (`Allow` on 405, `Retry-After` on 503).
///
/// The reason never reveals anything about the origin URL to an unsigned request: rejections
/// before the signature check carry fixed texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: u16,
    outcome: Outcome,
    reason: Cow<'static, str>,
    headers: &'static [(&'static str, &'static str)],
}

impl Rejection {
    const fn fixed(status: u16, outcome: Outcome, reason: &'static str) -> Rejection {
        Rejection {
            status,
            outcome,
            reason: Cow::Borrowed(reason),
            headers: &[],
        }
    }

    fn with_reason(status: u16, outcome: Outcome, reason: String) -> Rejection {
        Rejection {
            status,
            outcome,
            reason: Cow::Owned(reason),
            headers: &[],
        }
    }

    /// 405 for a method other than GET/HEAD, with `Allow: GET, HEAD`.
    pub const fn method_not_allowed() -> Rejection {
        Rejection {
            status: 405,
            outcome: Outcome::MethodNotAllowed,
            reason: Cow::Borrowed("method not allowed"),
            headers: &[("allow", "GET, HEAD")],
        }
    }

    /// 414 for a request target over `limits.max_request_target_bytes`.
    pub const fn target_too_long() -> Rejection {
        Rejection::fixed(414, Outcome::RequestTooLarge, "request target too long")
    }

    /// 431 for request headers over `limits.max_request_headers` / `max_request_header_bytes`.
    pub const fn headers_too_large() -> Rejection {
        Rejection::fixed(
            431,
            Outcome::RequestTooLarge,
            "request header fields too large",
        )
    }

    /// 410 for a Host no source serves.
    pub const fn unknown_host() -> Rejection {
        Rejection::fixed(410, Outcome::UnknownHost, "no source serves this host")
    }

    /// 410 for a source with `enabled: false`: said before the signature is looked at, so
    /// nothing else about the request is revealed.
    pub const fn source_disabled() -> Rejection {
        Rejection::fixed(410, Outcome::SourceDisabled, "this source is disabled")
    }

    /// 403 for a missing, malformed or wrong signature; `why` is the signature error.
    pub fn bad_signature(why: impl ToString) -> Rejection {
        Rejection::with_reason(403, Outcome::BadSignature, why.to_string())
    }

    /// 404 for an `expires` at or before now; `why` is the expires error.
    pub fn expired(why: impl ToString) -> Rejection {
        Rejection::with_reason(404, Outcome::Expired, why.to_string())
    }

    /// 400 for an `expires` that is not one integer; `why` is the expires error.
    pub fn bad_expires(why: impl ToString) -> Rejection {
        Rejection::with_reason(400, Outcome::BadExpires, why.to_string())
    }

    /// 400 for an origin URL that is not usable; `why` is the origin URL error.
    pub fn bad_origin_url(why: impl ToString) -> Rejection {
        Rejection::with_reason(400, Outcome::BadOriginUrl, why.to_string())
    }

    /// 403 for an origin host outside the source's `allowed_origin_hosts`.
    pub const fn origin_host_not_allowed() -> Rejection {
        Rejection::fixed(
            403,
            Outcome::OriginDenied,
            "origin host is not allowed for this source",
        )
    }

    /// 403 for an origin address that is private, loopback or otherwise not public.
    pub const fn origin_address_denied() -> Rejection {
        Rejection::fixed(403, Outcome::OriginDenied, ORIGIN_ADDRESS_DENIED)
    }

    /// 400 for a GET or HEAD carrying a body.
    pub const fn body_not_allowed() -> Rejection {
        Rejection::fixed(
            400,
            Outcome::BadRequest,
            "a GET or HEAD request must not carry a body",
        )
    }

    /// 400 for a request the runtime's HTTP codec could not read.
    pub const fn bad_request() -> Rejection {
        Rejection::fixed(400, Outcome::BadRequest, "bad request")
    }

    /// 403 for an origin response whose Content-Type the source does not allow.
    pub const fn content_type_denied() -> Rejection {
        Rejection::fixed(
            403,
            Outcome::ContentTypeDenied,
            "origin content type is not allowed for this source",
        )
    }

    /// 502 for an origin response over `upstream.max_body_bytes`.
    pub const fn origin_too_large() -> Rejection {
        Rejection::fixed(502, Outcome::OriginTooLarge, "origin response too large")
    }

    /// 502 for an origin redirect that is not followed; `why` says which rule refused it.
    pub fn bad_redirect(why: impl std::fmt::Display) -> Rejection {
        Rejection::with_reason(
            502,
            Outcome::BadRedirect,
            format!("origin redirect not followed: {why}"),
        )
    }

    /// 502 for an origin that could not be reached or broke off (refused, reset, DNS or TLS
    /// failure, protocol error).
    pub const fn origin_error() -> Rejection {
        Rejection::fixed(502, Outcome::OriginError, ORIGIN_UNREACHABLE)
    }

    /// 504 for an origin that did not answer within `upstream.timeout`.
    pub const fn origin_timeout() -> Rejection {
        Rejection::fixed(504, Outcome::OriginTimeout, ORIGIN_TIMED_OUT)
    }

    /// 502 for an origin response the gateway cannot pass on safely; `why` names the problem.
    pub fn bad_origin_response(why: impl std::fmt::Display) -> Rejection {
        Rejection::with_reason(
            502,
            Outcome::BadOriginResponse,
            format!("bad origin response: {why}"),
        )
    }

    /// 503 over a concurrency limit, with `Retry-After: 1`.
    pub const fn overloaded() -> Rejection {
        Rejection {
            status: 503,
            outcome: Outcome::Overloaded,
            reason: Cow::Borrowed(OVERLOADED),
            headers: &[("retry-after", "1")],
        }
    }

    /// 500 for a fault of the gateway itself (no clock, no randomness, a host call that failed).
    pub const fn internal() -> Rejection {
        Rejection::fixed(500, Outcome::Internal, INTERNAL_ERROR)
    }

    /// The Envoy filter's answer when the origin answered `status` (404, 410 or a 5xx), its
    /// fallback image failed too, and the origin's own answer is gone (Envoy replaced it to
    /// fetch the image): that status with a fixed reason, counted as the origin's answer
    /// (`forwarded`). The native gateway fetches the origin URL again instead.
    pub fn fallback_failed(status: u16) -> Rejection {
        Rejection::with_reason(
            status,
            Outcome::Forwarded,
            format!("the origin answered {status} and its fallback image failed"),
        )
    }

    /// HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The outcome to count.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The short reason, without a trailing newline.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The body of the local reply: the reason and a newline.
    pub fn body(&self) -> String {
        format!("{}\n", self.reason)
    }

    /// Response headers of the local reply (lower-case names): `content-type`, the
    /// rejection's own (`allow`, `retry-after`), then `cache-control: no-store` and the
    /// [`SECURITY_HEADERS`] every response carries. Runtimes add `content-length` themselves.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        std::iter::once(("content-type", LOCAL_REPLY_CONTENT_TYPE))
            .chain(self.headers.iter().copied())
            .chain(LOCAL_REPLY_HEADERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_round_trip() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(
                outcome.index(),
                i,
                "{outcome:?}: ALL is in declaration order"
            );
            let label = outcome.as_str();
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
            assert_eq!(Outcome::from_label(label), Some(*outcome));
            assert!(
                !Outcome::ALL[..i].iter().any(|o| o.as_str() == label),
                "duplicate {label}"
            );
        }
        assert_eq!(Outcome::from_label("nope"), None);
    }

    #[test]
    fn rejections_carry_their_status_outcome_and_headers() {
        let cases = [
            (
                Rejection::method_not_allowed(),
                405,
                Outcome::MethodNotAllowed,
            ),
            (Rejection::target_too_long(), 414, Outcome::RequestTooLarge),
            (
                Rejection::headers_too_large(),
                431,
                Outcome::RequestTooLarge,
            ),
            (Rejection::unknown_host(), 410, Outcome::UnknownHost),
            (Rejection::source_disabled(), 410, Outcome::SourceDisabled),
            (Rejection::bad_signature("x"), 403, Outcome::BadSignature),
            (Rejection::expired("x"), 404, Outcome::Expired),
            (Rejection::bad_expires("x"), 400, Outcome::BadExpires),
            (Rejection::bad_origin_url("x"), 400, Outcome::BadOriginUrl),
            (
                Rejection::origin_host_not_allowed(),
                403,
                Outcome::OriginDenied,
            ),
            (
                Rejection::origin_address_denied(),
                403,
                Outcome::OriginDenied,
            ),
            (Rejection::body_not_allowed(), 400, Outcome::BadRequest),
            (Rejection::bad_request(), 400, Outcome::BadRequest),
            (
                Rejection::content_type_denied(),
                403,
                Outcome::ContentTypeDenied,
            ),
            (Rejection::origin_too_large(), 502, Outcome::OriginTooLarge),
            (Rejection::bad_redirect("x"), 502, Outcome::BadRedirect),
            (Rejection::origin_error(), 502, Outcome::OriginError),
            (Rejection::origin_timeout(), 504, Outcome::OriginTimeout),
            (
                Rejection::bad_origin_response("x"),
                502,
                Outcome::BadOriginResponse,
            ),
            (Rejection::overloaded(), 503, Outcome::Overloaded),
            (Rejection::internal(), 500, Outcome::Internal),
        ];
        for (rejection, status, outcome) in cases {
            assert_eq!((rejection.status(), rejection.outcome()), (status, outcome));
            assert!(!rejection.reason().is_empty() && !rejection.reason().ends_with('\n'));
            assert_eq!(rejection.body(), format!("{}\n", rejection.reason()));
        }
        let headers: Vec<_> = Rejection::method_not_allowed().headers().collect();
        assert_eq!(
            headers,
            [
                ("content-type", LOCAL_REPLY_CONTENT_TYPE),
                ("allow", "GET, HEAD"),
                ("cache-control", "no-store"),
                ("x-content-type-options", "nosniff"),
                (
                    "content-security-policy",
                    "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
                ),
            ]
        );
        let headers: Vec<_> = Rejection::overloaded().headers().collect();
        assert_eq!(headers[1], ("retry-after", "1"));
        assert_eq!(
            Rejection::bad_redirect("too many redirects").reason(),
            "origin redirect not followed: too many redirects"
        );
    }
}
