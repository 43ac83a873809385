//! The gateway's own CORS headers (SPEC §15, imgix's defaults): `Access-Control-Allow-Origin`,
//! `Timing-Allow-Origin` and `Cross-Origin-Resource-Policy` on every forwarded response, cache
//! hits included, per the source's `cors` setting. The origin's own `Access-Control-*` never
//! pass (§9, [`crate::response::RESPONSE_HEADER_ALLOWLIST`]); these are added after the cache,
//! so a stored answer never carries one client's `Origin`.

/// `Access-Control-Allow-Origin`.
pub const ALLOW_ORIGIN: &str = "access-control-allow-origin";
/// `Timing-Allow-Origin` (Resource Timing details for cross-origin pages), same value.
pub const TIMING_ALLOW_ORIGIN: &str = "timing-allow-origin";
/// `Cross-Origin-Resource-Policy`: lets pages of any origin embed the response under COEP.
pub const RESOURCE_POLICY: &str = "cross-origin-resource-policy";
/// [`RESOURCE_POLICY`]'s value.
pub const CROSS_ORIGIN: &str = "cross-origin";
/// The allow-origin value of the default (`cors` absent or `{allow_origin: "*"}`).
pub const ANY_ORIGIN: &str = "*";
/// The request header a browser names its page's origin in.
pub const ORIGIN_HEADER: &str = "origin";
/// `Vary`.
pub const VARY: &str = "vary";
/// What list mode adds to `Vary`: the answer depends on the request's `Origin`.
pub const VARY_ORIGIN: &str = "Origin";

/// A source's validated `cors` setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// `cors: {allow_origin: "*"}`, also when `cors` is absent (imgix's default).
    #[default]
    Any,
    /// `cors: {allow_origin: [...]}`: web origins (`scheme://host[:port]`), lower-case, without
    /// a default port.
    List(Vec<String>),
    /// `cors: off`: none of these headers.
    Off,
}

/// What one response gets: the allow-origin value (`*` or the request's `Origin`, also the
/// `Timing-Allow-Origin` value), whether `Cross-Origin-Resource-Policy: cross-origin` is added,
/// and whether `Origin` joins `Vary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorsHeaders<'a> {
    /// `*`, or the request's `Origin` as sent when the list has it; `None`: no
    /// `Access-Control-Allow-Origin` nor `Timing-Allow-Origin`.
    pub allow_origin: Option<&'a str>,
    /// Whether `Cross-Origin-Resource-Policy: cross-origin` is added.
    pub resource_policy: bool,
    /// Whether `Origin` joins the response's `Vary` (list mode, whatever the request's
    /// `Origin`: a shared cache must not give one page's answer to another).
    pub vary_origin: bool,
}

impl Cors {
    /// Whether the answer depends on the request's `Origin` (list mode): only then do the
    /// runtimes read it.
    pub fn needs_request_origin(&self) -> bool {
        matches!(self, Cors::List(_))
    }

    /// The headers for a response to a request that sent `request_origin` (its `Origin`
    /// header, read only when [`Cors::needs_request_origin`]).
    pub fn headers<'a>(&'a self, request_origin: Option<&'a str>) -> CorsHeaders<'a> {
        match self {
            Cors::Any => CorsHeaders {
                allow_origin: Some(ANY_ORIGIN),
                resource_policy: true,
                vary_origin: false,
            },
            Cors::List(list) => CorsHeaders {
                allow_origin: request_origin.filter(|o| is_listed(list, o)),
                resource_policy: true,
                vary_origin: true,
            },
            Cors::Off => CorsHeaders {
                allow_origin: None,
                resource_policy: false,
                vary_origin: false,
            },
        }
    }
}

/// Whether a request's `Origin` value names one of the listed web origins (normalized by
/// [`normalize_web_origin`]): scheme and host compared case-insensitively, a default port
/// written or not. The sent value is normalized once, whatever the list's length.
fn is_listed(list: &[String], sent: &str) -> bool {
    match normalize_web_origin(sent.trim()) {
        Ok(sent) => list.contains(&sent),
        Err(_) => false,
    }
}

/// A web origin (`scheme://host[:port]`, as browsers send it in `Origin`) in the form the list
/// holds: lower-case, no default port (80 for http, 443 for https), no trailing slash.
///
/// # Errors
/// A lower-case reason: not `http`/`https`, no host, a path, query, userinfo or bad port.
pub fn normalize_web_origin(value: &str) -> Result<String, String> {
    let shape = || format!("`{value}` is not a web origin (scheme://host[:port])");
    let (scheme, rest) = value.split_once("://").ok_or_else(shape)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return Err(shape()),
    };
    if rest.is_empty()
        || rest
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || !b.is_ascii_graphic())
    {
        return Err(shape());
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's own colons are inside its brackets.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return Err(shape());
    }
    let mut out = format!("{scheme}://{}", host.to_ascii_lowercase());
    if let Some(port) = port {
        let number: u16 = port.parse().map_err(|_| shape())?;
        if number == 0 || port.starts_with('0') {
            return Err(shape());
        }
        if port != default_port {
            out.push(':');
            out.push_str(port);
        }
    }
    Ok(out)
}

/// The response's `Vary` in list mode, from `existing` (the response's `Vary` fields joined):
/// each of its members once, trimmed and joined with `, ` (the runtimes hand over repeated
/// fields differently, Envoy already joined with a bare `,`), then `Origin` unless a member is
/// `Origin` or `*` (which already varies on everything). `None` when `existing` has no member:
/// the value is `Origin` alone ([`VARY_ORIGIN`]).
pub fn vary_with_origin(existing: Option<&str>) -> Option<String> {
    let mut members = existing
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .peekable();
    members.peek()?;
    let mut out = String::new();
    let mut covered = false;
    for member in members {
        covered |= member == "*" || member.eq_ignore_ascii_case(VARY_ORIGIN);
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(member);
    }
    if !covered {
        out.push_str(", ");
        out.push_str(VARY_ORIGIN);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_imgixs_three_headers() {
        let default = Cors::default();
        let any = default.headers(Some("https://evil.example"));
        assert_eq!(any.allow_origin, Some("*"));
        assert!(any.resource_policy && !any.vary_origin);
        assert!(!Cors::Any.needs_request_origin());
        let off = Cors::Off.headers(Some("https://a.example"));
        assert_eq!(off.allow_origin, None);
        assert!(!off.resource_policy && !off.vary_origin);
    }

    #[test]
    fn a_list_echoes_a_listed_origin_only_and_always_varies() {
        let list = Cors::List(vec![
            normalize_web_origin("https://App.Example.com").expect("origin"),
            normalize_web_origin("http://localhost:3000").expect("origin"),
        ]);
        assert!(list.needs_request_origin());
        for sent in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "http://localhost:3000",
        ] {
            let h = list.headers(Some(sent));
            assert_eq!(h.allow_origin, Some(sent), "{sent}");
            assert!(h.vary_origin && h.resource_policy);
        }
        for sent in [
            "https://evil.example",
            "http://app.example.com",
            "https://app.example.com.evil.example",
            "https://app.example.com:8443",
            "http://localhost:3001",
            "null",
            "",
        ] {
            let h = list.headers(Some(sent));
            assert_eq!(h.allow_origin, None, "{sent}");
            assert!(h.vary_origin && h.resource_policy, "{sent}");
        }
        assert_eq!(list.headers(None).allow_origin, None);
    }

    #[test]
    fn web_origins_are_validated() {
        assert_eq!(
            normalize_web_origin("HTTPS://Example.com:443").as_deref(),
            Ok("https://example.com")
        );
        assert_eq!(
            normalize_web_origin("http://[::1]:8080").as_deref(),
            Ok("http://[::1]:8080")
        );
        assert_eq!(
            normalize_web_origin("http://[::1]").as_deref(),
            Ok("http://[::1]")
        );
        for bad in [
            "*",
            "example.com",
            "ftp://example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:65536",
            "https://example.com:x",
            "https://exa mple.com",
            "https://:443",
        ] {
            assert!(normalize_web_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origin_joins_vary_once() {
        assert_eq!(vary_with_origin(None), None);
        assert_eq!(vary_with_origin(Some(" , ")), None);
        assert_eq!(
            vary_with_origin(Some("Accept-Encoding")).as_deref(),
            Some("Accept-Encoding, Origin")
        );
        assert_eq!(
            vary_with_origin(Some("accept,origin")).as_deref(),
            Some("accept, origin")
        );
        assert_eq!(vary_with_origin(Some("*")).as_deref(), Some("*"));
    }
}
