//! How the gateway presents itself to origins (SPEC §15, imgix's "ensuring origin
//! deliverability"): the `User-Agent` of every origin request (`origin_user_agent`) and the
//! source's fixed `origin_headers`, which go only where the origin auth headers go (§11).

use crate::request::FORWARDED_CLIENT_HEADERS;
use crate::secret::Secret;

/// `User-Agent`.
pub const USER_AGENT: &str = "user-agent";
/// The default `origin_user_agent`: `ixproxy/<version>`, as imgix sends `imgix/…` (origins
/// allowlist fetchers by it).
pub const DEFAULT_ORIGIN_USER_AGENT: &str = concat!("ixproxy/", env!("CARGO_PKG_VERSION"));
/// The `origin_user_agent` value that forwards the client's `User-Agent` instead.
pub const FORWARD_USER_AGENT: &str = "forward";
/// Longest custom `origin_user_agent`, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// A source's validated `origin_user_agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OriginUserAgent {
    /// [`DEFAULT_ORIGIN_USER_AGENT`] (the setting absent).
    #[default]
    Default,
    /// A fixed value (visible ASCII and spaces, at most [`MAX_USER_AGENT_CHARS`]).
    Custom(String),
    /// `forward`: the client's `User-Agent`, except on a cache fill (SPEC §13: it could select
    /// a variant), which then sends none.
    Forward,
}

impl OriginUserAgent {
    /// The value every origin request carries, or `None` for [`OriginUserAgent::Forward`] (the
    /// client's goes, under the forwarded-header rule).
    pub fn fixed(&self) -> Option<&str> {
        match self {
            OriginUserAgent::Default => Some(DEFAULT_ORIGIN_USER_AGENT),
            OriginUserAgent::Custom(value) => Some(value),
            OriginUserAgent::Forward => None,
        }
    }

    /// Parses the setting.
    ///
    /// # Errors
    /// A lower-case reason: empty, longer than [`MAX_USER_AGENT_CHARS`], or a character other
    /// than visible ASCII and space.
    pub fn parse(value: &str) -> Result<OriginUserAgent, String> {
        if value == FORWARD_USER_AGENT {
            return Ok(OriginUserAgent::Forward);
        }
        if value.trim().is_empty() {
            return Err(
                "empty user agent (absent = ixproxy/<version>, `forward` = the client's)".into(),
            );
        }
        if value.len() > MAX_USER_AGENT_CHARS {
            return Err(format!("longer than {MAX_USER_AGENT_CHARS} characters"));
        }
        if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err("only visible ascii characters and spaces are allowed".into());
        }
        Ok(OriginUserAgent::Custom(value.to_owned()))
    }
}

/// Header names `origin_headers` may not name (lower-case), with why: the gateway's own, the
/// connection's framing, or a credential the origin auth rules own.
const REFUSED_NAMES: [(&str, &str); 14] = [
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("transfer-encoding", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
    ("host", "the origin url's host is sent"),
    ("authorization", "use origin_auth.basic_auth"),
    ("content-length", "the gateway frames the request"),
    (USER_AGENT, "use origin_user_agent"),
    ("x-request-id", "the gateway sends the request's id"),
    ("x-forwarded-proto", "the gateway's routing header"),
    ("x-forwarded-for", "the gateway's own"),
    ("forwarded", "the gateway's own"),
];

/// Name prefixes `origin_headers` may not use, with why.
const REFUSED_PREFIXES: [(&str, &str); 4] = [
    ("proxy-", "a hop-by-hop header"),
    ("x-imgix-", "the origin auth headers are origin_auth's"),
    ("x-ixproxy-", "the gateway's routing headers"),
    ("x-envoy-", "envoy's control headers"),
];

/// Checks one `origin_headers` name and returns it lower-cased.
///
/// # Errors
/// A lower-case reason: not an RFC 9110 token, a pseudo-header, or a refused name.
pub fn origin_header_name(name: &str) -> Result<String, String> {
    if name.starts_with(':') {
        return Err("pseudo-headers cannot be set".into());
    }
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("`{name}` is not a header name"));
    }
    let lower = name.to_ascii_lowercase();
    // A name the gateway forwards from the client (Accept, Range, ...) would replace the
    // client's value, and on Envoy a redirect hop keeps the first attempt's edited request, so
    // the secret would follow the hop as "the client's header" outside origin_auth.hosts.
    let forwarded = FORWARDED_CLIENT_HEADERS
        .contains(&lower.as_str())
        .then_some("a client header the gateway forwards; it would replace the client's");
    let refused = REFUSED_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .or_else(|| REFUSED_PREFIXES.iter().find(|(p, _)| lower.starts_with(p)))
        .map(|(_, why)| *why)
        .or(forwarded);
    match refused {
        Some(why) => Err(format!("`{name}` cannot be set here ({why})")),
        None => Ok(lower),
    }
}

/// Checks one `origin_headers` value (resolved secret).
///
/// # Errors
/// A lower-case reason that never quotes the value: control characters (RFC 5234 CTL but tab)
/// or surrounding whitespace.
pub fn origin_header_value(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| (c <= '\u{1f}' && c != '\t') || c == '\u{7f}')
    {
        return Err("must not contain control characters".into());
    }
    if value.trim() != value {
        return Err("must not start or end with whitespace".into());
    }
    Ok(())
}

/// One validated `origin_headers` entry: the lower-case name and its secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginHeader {
    /// Lower-case header name.
    pub name: String,
    /// The value (never logged; `Debug` prints `***`).
    pub value: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents() {
        assert_eq!(
            OriginUserAgent::default().fixed(),
            Some(DEFAULT_ORIGIN_USER_AGENT)
        );
        assert!(DEFAULT_ORIGIN_USER_AGENT.starts_with("ixproxy/0."));
        assert_eq!(
            OriginUserAgent::parse("forward"),
            Ok(OriginUserAgent::Forward)
        );
        assert_eq!(OriginUserAgent::Forward.fixed(), None);
        assert_eq!(
            OriginUserAgent::parse("imgix/1.0 (+https://x)").map(|u| u.fixed().map(str::to_owned)),
            Ok(Some("imgix/1.0 (+https://x)".to_owned()))
        );
        assert!(OriginUserAgent::parse(&"a".repeat(256)).is_ok());
        for bad in ["", "  ", "a\r\nb", "é", "a\tb", &"a".repeat(257)] {
            assert!(OriginUserAgent::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names() {
        assert_eq!(origin_header_name("X-Api-Key").as_deref(), Ok("x-api-key"));
        assert_eq!(origin_header_name("Referer").as_deref(), Ok("referer"));
        for (bad, why) in [
            ("Connection", "hop-by-hop"),
            ("Proxy-Authorization", "hop-by-hop"),
            ("TE", "hop-by-hop"),
            ("Upgrade", "hop-by-hop"),
            ("Host", "host"),
            ("authorization", "basic_auth"),
            ("X-Imgix-Origin-Secret", "origin_auth"),
            ("Content-Length", "frames"),
            ("User-Agent", "origin_user_agent"),
            (":authority", "pseudo"),
            ("X Key", "not a header name"),
            ("", "not a header name"),
            ("x-key:", "not a header name"),
            ("X-Ixproxy-Upstream", "routing"),
            ("x-envoy-upstream-rq-timeout-ms", "envoy"),
            ("Accept", "client header the gateway forwards"),
            ("accept-encoding", "client header the gateway forwards"),
            ("Accept-Language", "client header the gateway forwards"),
            ("Range", "client header the gateway forwards"),
            ("If-None-Match", "client header the gateway forwards"),
            ("If-Modified-Since", "client header the gateway forwards"),
            ("X-Request-ID", "request's id"),
        ] {
            let err = origin_header_name(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn header_values() {
        assert!(origin_header_value("k3y with spaces\tand tab").is_ok());
        assert!(origin_header_value("").is_ok());
        for bad in ["zq\nzq", "zq\rzq", "zq\u{0}", "zq\u{7f}", " zq", "zq "] {
            let err = origin_header_value(bad).expect_err(bad);
            assert!(!err.contains("zq"), "{err}");
        }
    }
}
