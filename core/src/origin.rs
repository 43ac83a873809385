//! Web Proxy origin URLs (README: URL format): the request path decoded once into a validated, typed origin.

use std::fmt::Write as _;
use std::net::IpAddr;

use url::{Host, Url};

/// Origin scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A validated origin URL, ready for either runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginUrl {
    /// Scheme.
    pub scheme: Scheme,
    /// Lower-case host: punycode name, dotted IPv4, or IPv6 without brackets.
    pub host: String,
    /// Port (the scheme default when absent).
    pub port: u16,
    /// Path and query to request (starts with `/`; never a fragment).
    pub path_and_query: String,
}

impl OriginUrl {
    /// `Host` header / `:authority` value: host (IPv6 in brackets) plus `:port` when not the
    /// scheme default.
    pub fn authority(&self) -> String {
        let mut out = String::with_capacity(self.host.len() + 8);
        self.push_authority(&mut out);
        out
    }

    /// The web origin, `scheme://authority`: equal for two URLs exactly when their scheme, host
    /// and port are.
    pub fn web_origin(&self) -> String {
        let mut out = String::with_capacity(self.host.len() + 16);
        out.push_str(self.scheme.as_str());
        out.push_str("://");
        self.push_authority(&mut out);
        out
    }

    fn push_authority(&self, out: &mut String) {
        if self.host.contains(':') {
            out.push('[');
            out.push_str(&self.host);
            out.push(']');
        } else {
            out.push_str(&self.host);
        }
        if self.port != self.scheme.default_port() {
            // Writing to a String cannot fail.
            let _ = write!(out, ":{}", self.port);
        }
    }

    /// The host as an IP address when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// The full URL (`scheme://authority/path?query`).
    pub fn to_url_string(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path_and_query
        )
    }
}

/// Why a request path is not a usable origin URL (all map to 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in origin url")]
    BadPercentEncoding,
    /// The decoded bytes are not UTF-8.
    #[error("origin url is not valid utf-8 after decoding")]
    NotUtf8,
    /// A control character (%x00-1F, %x7F) after decoding.
    #[error("origin url contains a control character")]
    ControlCharacter,
    /// Not of the form `http://…` or `https://…`.
    #[error("origin url must be an absolute http or https url")]
    NotAbsoluteHttp,
    /// The URL parser refused it (bad host, bad port, ...).
    #[error("invalid origin url: {0}")]
    Invalid(String),
    /// User name or password in the URL.
    #[error("origin url must not contain userinfo")]
    Userinfo,
    /// Port 0.
    #[error("origin url has an invalid port")]
    BadPort,
}

/// Decodes the request path (without query) into an origin URL: the part after the first `/`,
/// percent-decoded once, or the raw `/https://host/...` form used as it is.
///
/// # Errors
/// Bad percent-encoding, not absolute http(s), no host, userinfo, bad port, control characters.
pub fn decode_origin(path: &str) -> Result<OriginUrl, OriginError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let decoded = if has_http_prefix(rest) {
        rest.to_owned()
    } else {
        percent_decode_strict(rest)?
    };
    parse_origin(&decoded)
}

/// Validates an absolute origin URL string (already decoded).
///
/// # Errors
/// As [`decode_origin`].
pub fn parse_origin(url: &str) -> Result<OriginUrl, OriginError> {
    // ASCII control characters are single bytes; no other character contains such a byte.
    if url.bytes().any(|b| b.is_ascii_control()) {
        return Err(OriginError::ControlCharacter);
    }
    if !has_http_prefix(url) {
        return Err(OriginError::NotAbsoluteHttp);
    }
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority_end = after_scheme
        .find(['/', '?', '#', '\\'])
        .unwrap_or(after_scheme.len());
    if after_scheme[..authority_end].contains('@') {
        return Err(OriginError::Userinfo);
    }
    let parsed = Url::parse(url).map_err(|e| OriginError::Invalid(e.to_string()))?;
    let scheme = match parsed.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(OriginError::NotAbsoluteHttp),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(OriginError::Userinfo);
    }
    let host = match parsed.host() {
        Some(Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(OriginError::Invalid("missing host".to_owned())),
    };
    let port = parsed
        .port_or_known_default()
        .unwrap_or(scheme.default_port());
    if port == 0 {
        return Err(OriginError::BadPort);
    }
    let mut path_and_query = parsed.path().to_owned();
    if let Some(query) = parsed.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok(OriginUrl {
        scheme,
        host,
        port,
        path_and_query,
    })
}

fn has_http_prefix(s: &str) -> bool {
    let starts = |prefix: &str| {
        s.as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    starts("http://") || starts("https://")
}

fn percent_decode_strict(input: &str) -> Result<String, OriginError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| char::from(*b).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|b| char::from(*b).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(OriginError::BadPercentEncoding),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| OriginError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> OriginUrl {
        decode_origin(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn decodes_once_and_keeps_the_origin_query() {
        let o = ok("/http%3A%2F%2Fa.abcnews.com%2Fassets%2Flogo.png%3Fr%3D20");
        assert_eq!(o.scheme, Scheme::Http);
        assert_eq!(o.host, "a.abcnews.com");
        assert_eq!(o.port, 80);
        assert_eq!(o.path_and_query, "/assets/logo.png?r=20");
        let o = ok("/https%3A%2F%2Fx.com%2Fa%2520b.png");
        assert_eq!(o.path_and_query, "/a%20b.png", "decoded exactly once");
    }

    #[test]
    fn raw_form_fragments_spaces_and_idn() {
        let o = ok("/https://example.com:8443/a.jpg");
        assert_eq!((o.port, o.authority().as_str()), (8443, "example.com:8443"));
        let o = ok("/https%3A%2F%2Fexample.com%2Fa%20b%2F%C3%BC.jpg%3Fx%3D1%23frag");
        assert_eq!(o.path_and_query, "/a%20b/%C3%BC.jpg?x=1");
        let o = ok("/https%3A%2F%2FB%C3%BCcher.example%2Fa.png");
        assert_eq!(o.host, "xn--bcher-kva.example");
    }

    #[test]
    fn ip_spellings_are_normalised() {
        for path in [
            "/http://2130706433/",
            "/http://0x7f.1/",
            "/http://127.1/",
            "/http://017700000001/",
        ] {
            assert_eq!(ok(path).ip(), Some(IpAddr::from([127, 0, 0, 1])), "{path}");
        }
        let o = ok("/http%3A%2F%2F%5B%3A%3A1%5D%3A8080%2F");
        assert_eq!(
            (o.host.as_str(), o.authority().as_str()),
            ("::1", "[::1]:8080")
        );
    }

    #[test]
    fn rejections() {
        let cases: [(&str, OriginError); 10] = [
            ("/users/1.png", OriginError::NotAbsoluteHttp),
            ("/ftp%3A%2F%2Fa.com%2Fx", OriginError::NotAbsoluteHttp),
            ("/file:///etc/passwd", OriginError::NotAbsoluteHttp),
            ("/http:a.com", OriginError::NotAbsoluteHttp),
            (
                "/http%3A%2F%2Fa.com%2Fx%ZZ",
                OriginError::BadPercentEncoding,
            ),
            (
                "/http%3A%2F%2Fa.com%2Fx%0d%0a",
                OriginError::ControlCharacter,
            ),
            ("/http%3A%2F%2Fa.com%2Fx%00", OriginError::ControlCharacter),
            ("/http%3A%2F%2Fu%3Ap%40a.com%2F", OriginError::Userinfo),
            ("/http://a.com:0/", OriginError::BadPort),
            ("/http%3A%2F%2Fa.com%2F%FF", OriginError::NotUtf8),
        ];
        for (path, want) in cases {
            assert_eq!(decode_origin(path), Err(want), "{path}");
        }
        assert!(matches!(
            decode_origin("/http://a.com:65536/"),
            Err(OriginError::Invalid(_))
        ));
        assert!(matches!(
            decode_origin("/http://"),
            Err(OriginError::Invalid(_))
        ));
        assert_eq!(decode_origin("/http://@a.com/"), Err(OriginError::Userinfo));
    }
}
