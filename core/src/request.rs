//! Rules over the client request itself, before [`crate::decide`]: a GET or HEAD must not
//! carry a body, the header limits (and how both runtimes count headers), and which client
//! headers may reach the origin.

use crate::config::Sources;
use crate::outcome::Rejection;

/// Client request headers that may reach the origin (lower-case); every other client header is
/// dropped by the runtimes. `x-request-id` reaches it as the gateway settled it (the client's
/// when valid, else a new one: see [`crate::access_log::kept_request_id`]), so origin logs join up.
pub const FORWARDED_CLIENT_HEADERS: [&str; 8] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "if-none-match",
    "if-modified-since",
    "range",
    "user-agent",
    crate::access_log::REQUEST_ID_HEADER,
];

/// Forwarded client headers with which an origin can choose what it answers (content type,
/// encoding, language, a build for a browser). The response cache is keyed on the URL alone, so
/// a request whose answer may be stored for other clients never sends them (SPEC §13): one
/// client's `Accept-Encoding: gzip` or `Accept: image/avif` would otherwise choose what the
/// next client gets.
pub const VARIANT_SELECTING_HEADERS: [&str; 4] =
    ["accept", "accept-encoding", "accept-language", "user-agent"];

/// Whether a client request header (any case) may be forwarded to the origin: one of
/// [`FORWARDED_CLIENT_HEADERS`], and, when `cached` (the response cache is on, so the answer may
/// be stored for other clients), not one of [`VARIANT_SELECTING_HEADERS`].
pub fn is_forwarded_client_header(name: &str, cached: bool) -> bool {
    let listed = |list: &[&str]| list.iter().any(|h| h.eq_ignore_ascii_case(name));
    listed(&FORWARDED_CLIENT_HEADERS) && !(cached && listed(&VARIANT_SELECTING_HEADERS))
}

/// The number of request header fields and their total size (names plus values), counted the
/// same way on both runtimes: every field the client sent, `Host` included. HTTP/2's
/// `:authority` is the `Host` field and counts as `host`; the other pseudo-headers (`:method`,
/// `:path`, `:scheme`) are the request line and do not count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderTotals {
    /// Header fields counted.
    pub count: usize,
    /// Their names and values, in bytes.
    pub bytes: usize,
}

impl HeaderTotals {
    /// Counts one header field as received (`name` in any case).
    pub fn add(&mut self, name: &str, value_len: usize) {
        let name_len = match name {
            ":authority" => "host".len(),
            _ if name.starts_with(':') => return,
            _ => name.len(),
        };
        self.count += 1;
        self.bytes += name_len + value_len;
    }

    /// Counts every `(name, value length)` pair of `headers`.
    pub fn of<'a>(headers: impl IntoIterator<Item = (&'a str, usize)>) -> HeaderTotals {
        let mut totals = HeaderTotals::default();
        for (name, len) in headers {
            totals.add(name, len);
        }
        totals
    }
}

/// Checks the client's request header totals against the limits; runtimes call it before
/// [`crate::decide`].
///
/// # Errors
/// A 431 rejection.
pub fn check_request_headers(sources: &Sources, totals: HeaderTotals) -> Result<(), Rejection> {
    let limits = sources.limits();
    if totals.count > limits.max_request_headers || totals.bytes > limits.max_request_header_bytes {
        return Err(Rejection::headers_too_large());
    }
    Ok(())
}

/// Refuses a GET or HEAD that carries a body; runtimes call it first, before
/// [`check_request_headers`] and [`crate::decide`]. `has_body` is the runtime's view: a
/// `Transfer-Encoding`, a `Content-Length` other than 0, or a stream not ended with the headers.
/// A body is never forwarded, and refusing it outright means no `Content-Length` /
/// `Transfer-Encoding` combination can be read one way here and another way by an origin.
/// Other methods are left to [`crate::decide`] (405).
///
/// # Errors
/// A 400 rejection.
pub fn check_request_body(method: &str, has_body: bool) -> Result<(), Rejection> {
    if has_body && (method == "GET" || method == "HEAD") {
        return Err(Rejection::body_not_allowed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_authority_count_alike_and_the_request_line_does_not() {
        let h1 = HeaderTotals::of([("host", 9), ("accept", 3), ("X-Big", 10)]);
        let h2 = HeaderTotals::of([
            (":method", 3),
            (":scheme", 4),
            (":path", 20),
            (":authority", 9),
            ("accept", 3),
            ("x-big", 10),
        ]);
        assert_eq!(h1, h2);
        assert_eq!(
            h1,
            HeaderTotals {
                count: 3,
                bytes: 4 + 9 + 6 + 3 + 5 + 10
            }
        );
    }

    #[test]
    fn no_variant_selecting_header_reaches_the_origin_when_the_answer_may_be_stored() {
        for name in ["Accept", "accept-encoding", "Accept-Language", "User-Agent"] {
            assert!(is_forwarded_client_header(name, false), "{name}");
            assert!(!is_forwarded_client_header(name, true), "{name}");
        }
        for name in [
            "range",
            "If-None-Match",
            "if-modified-since",
            "x-request-id",
        ] {
            assert!(is_forwarded_client_header(name, true), "{name}");
        }
        for name in ["cookie", "authorization", "x-forwarded-for"] {
            assert!(!is_forwarded_client_header(name, false), "{name}");
        }
    }

    #[test]
    fn bodies_are_refused_on_get_and_head_only() {
        assert_eq!(
            check_request_body("GET", true).map_err(|r| r.status()),
            Err(400)
        );
        assert_eq!(
            check_request_body("HEAD", true).map_err(|r| r.status()),
            Err(400)
        );
        assert!(check_request_body("GET", false).is_ok());
        assert!(
            check_request_body("POST", true).is_ok(),
            "decide answers 405"
        );
    }
}
