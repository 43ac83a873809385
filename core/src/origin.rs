//! Web Proxy origin URLs (README: URL format): the request path decoded once into a validated, typed origin.

use std::net::IpAddr;

use url::{Host, Position, Url};

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

    /// [`OriginUrl::authority`] appended to `out` as bytes, without a `String` of its own (the
    /// access log writes it for every request).
    pub fn write_authority(&self, out: &mut Vec<u8>) {
        // Only an IPv6 host has a colon (a short byte loop: cheaper than `str::contains`).
        if self.host.bytes().any(|b| b == b':') {
            out.push(b'[');
            out.extend_from_slice(self.host.as_bytes());
            out.push(b']');
        } else {
            out.extend_from_slice(self.host.as_bytes());
        }
        if self.port != self.scheme.default_port() {
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(self.port).as_bytes());
        }
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
            out.push(':');
            push_decimal(out, u64::from(self.port));
        }
    }

    /// Whether `web_origin` is this URL's [`OriginUrl::web_origin`], compared in place (the
    /// origin auth check runs on every origin request; building the string would allocate).
    pub fn has_web_origin(&self, web_origin: &str) -> bool {
        let Some(authority) = web_origin
            .strip_prefix(self.scheme.as_str())
            .and_then(|rest| rest.strip_prefix("://"))
        else {
            return false;
        };
        let after_host = if self.host.contains(':') {
            authority
                .strip_prefix('[')
                .and_then(|rest| rest.strip_prefix(self.host.as_str()))
                .and_then(|rest| rest.strip_prefix(']'))
        } else {
            authority.strip_prefix(self.host.as_str())
        };
        match after_host {
            Some(port) if self.port != self.scheme.default_port() => {
                port.strip_prefix(':') == Some(decimal(u64::from(self.port), &mut [0; 20]))
            }
            Some(rest) => rest.is_empty(),
            None => false,
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
    if http_prefix_len(rest).is_some() {
        parse_origin(rest)
    } else {
        parse_origin(&percent_decode_strict(rest)?)
    }
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
    let Some(prefix) = http_prefix_len(url) else {
        return Err(OriginError::NotAbsoluteHttp);
    };
    // The authority: after `http://` or `https://`, up to the first of `/?#\\`.
    let after_scheme = &url.as_bytes()[prefix..];
    let authority_end = after_scheme
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
        .unwrap_or(after_scheme.len());
    if after_scheme[..authority_end].contains(&b'@') {
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
        // The parser has already written the address in dotted decimal, as `Ipv4Addr`'s
        // `Display` does: copied rather than formatted again.
        Some(Host::Ipv4(_)) => parsed.host_str().unwrap_or_default().to_owned(),
        // Formatted by `Ipv6Addr` (RFC 5952), which differs from the URL's own serialisation
        // for IPv4-mapped addresses.
        Some(Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(OriginError::Invalid("missing host".to_owned())),
    };
    let port = parsed
        .port_or_known_default()
        .unwrap_or(scheme.default_port());
    if port == 0 {
        return Err(OriginError::BadPort);
    }
    Ok(OriginUrl {
        scheme,
        host,
        port,
        // The path, then `?` and the query when there is one (never the fragment).
        path_and_query: parsed[Position::BeforePath..Position::AfterQuery].to_owned(),
    })
}

/// The length of `s`'s `http://` or `https://` prefix (any case), if it has one.
fn http_prefix_len(s: &str) -> Option<usize> {
    ["http://", "https://"].into_iter().find_map(|prefix| {
        s.as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
            .then_some(prefix.len())
    })
}

/// Appends `n` in decimal: what `write!(out, "{n}")` writes, without the formatting machinery
/// (on every request: the authority's port, a `Cache-Control` max-age).
pub(crate) fn push_decimal(out: &mut String, n: u64) {
    out.push_str(decimal(n, &mut [0; 20]));
}

/// `n` in decimal, written into `buf`.
fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut start = buf.len();
    let mut rest = n;
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // Only ASCII digits were written, so this is always UTF-8.
    std::str::from_utf8(&buf[start..]).unwrap_or_default()
}

fn percent_decode_strict(input: &str) -> Result<String, OriginError> {
    let hex = |b: Option<&u8>| match b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    // Copies each run up to the next `%` whole, then decodes the escape.
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        out.extend_from_slice(&rest[..at]);
        match (hex(rest.get(at + 1)), hex(rest.get(at + 2))) {
            (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
            _ => return Err(OriginError::BadPercentEncoding),
        }
        rest = &rest[at + 3..];
    }
    out.extend_from_slice(rest);
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
    fn web_origin_is_compared_in_place() {
        for (path, other) in [
            ("/http://a.example/x", "http://a.example:80"),
            ("/https://a.example:8443/x", "https://a.example:443"),
            ("/http://a.example:8080/x", "http://a.example:808"),
            ("/http://[::1]:8080/x", "http://::1:8080"),
            ("/http://127.0.0.1/x", "https://127.0.0.1"),
            ("/http://a.example/x", "http://a.example.evil"),
        ] {
            let o = ok(path);
            assert!(o.has_web_origin(&o.web_origin()), "{path}");
            assert!(!o.has_web_origin(other), "{path} vs {other}");
            assert!(!o.has_web_origin(""), "{path}");
        }
        assert_eq!(
            ok("/http://a.example:65535/").web_origin(),
            "http://a.example:65535"
        );
        assert_eq!(ok("/http://a.example:1/").authority(), "a.example:1");
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
