//! Host names in the config: source `hosts` (matched against the request's Host) and
//! `allowed_origin_hosts` / `origin_auth.hosts` patterns (matched against the origin URL's host
//! and port).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::HostPattern;

/// A configured host after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NormalHost {
    /// Lower-case ASCII (punycode) name, no trailing dot.
    Name(String),
    /// IP literal.
    Ip(IpAddr),
}

impl NormalHost {
    /// The lookup key: the name, or the IP in its canonical text form (IPv6 without brackets).
    pub(super) fn into_key(self) -> String {
        match self {
            NormalHost::Name(name) => name,
            NormalHost::Ip(ip) => ip.to_string(),
        }
    }
}

/// Validates and normalizes a host written in the config: a DNS name (IDN allowed, stored as
/// lower-case punycode, one trailing dot ignored) or an IP literal (IPv6 with or without
/// brackets). A port is an error: hosts match whatever port the request used.
pub(super) fn normalize_host(input: &str) -> Result<NormalHost, String> {
    if input.is_empty() {
        return Err("empty host name".into());
    }
    if let Some(inner) = input.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(ip)) => Ok(NormalHost::Ip(IpAddr::V6(ip))),
            _ => Err("not a valid bracketed ipv6 address (ports are not matched)".into()),
        };
    }
    if let Ok(ip) = input.parse::<IpAddr>() {
        return Ok(NormalHost::Ip(ip));
    }
    if input.contains(':') {
        return Err("must not contain a port (ports are not matched)".into());
    }
    let name = input.strip_suffix('.').unwrap_or(input);
    let ascii: Cow<'_, str> = if name.is_ascii() {
        Cow::Borrowed(name)
    } else {
        match url::Host::parse(name) {
            Ok(url::Host::Domain(domain)) => Cow::Owned(domain),
            Ok(url::Host::Ipv4(ip)) => return Ok(NormalHost::Ip(IpAddr::V4(ip))),
            Ok(url::Host::Ipv6(ip)) => return Ok(NormalHost::Ip(IpAddr::V6(ip))),
            Err(e) => return Err(format!("not a valid host name: {e}")),
        }
    };
    let lower = ascii.to_ascii_lowercase();
    check_name(&lower)?;
    Ok(NormalHost::Name(lower))
}

/// Checks a lower-case ASCII name: 1 to 253 characters, labels of 1 to 63 letters, digits, `-`
/// (not at either end) or `_`, and a last label that is not all digits (which would read as a
/// malformed IPv4 address).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host name".into());
        }
        if label.len() > 63 {
            return Err("host name label longer than 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(match c {
                '*' => "`*` is only allowed as the whole leftmost label of an \
                        allowed_origin_hosts pattern (`*.example.com`)"
                    .into(),
                c if c.is_ascii_graphic() => format!("invalid character `{c}` in host name"),
                c => format!("invalid character {c:?} in host name"),
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("host name label starts or ends with `-`".into());
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a valid host name or ip address".into());
    }
    Ok(())
}

/// Turns a Host / `:authority` value into the key [`normalize_host`] produces for the config:
/// port removed (`host:8080`, `[::1]:8080`), one trailing dot removed, lower-case, IPv6 in its
/// canonical form. `None` when the value cannot name any configured host.
pub(super) fn host_header_key(value: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = value.strip_prefix('[') {
        let (inner, _port) = rest.split_once(']')?;
        let ip: Ipv6Addr = inner.parse().ok()?;
        return Some(Cow::Owned(ip.to_string()));
    }
    let host = match value.bytes().filter(|b| *b == b':').count() {
        0 => value,
        1 => value.split_once(':').map_or(value, |(host, _port)| host),
        // Not valid in a Host header, but unambiguous: a bare IPv6 address.
        _ => {
            return value
                .parse::<Ipv6Addr>()
                .ok()
                .map(|ip| Cow::Owned(ip.to_string()))
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// The kinds of [`HostPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PatternKind {
    /// Exactly this name.
    Exact(String),
    /// Any name ending in this suffix (stored with its leading dot: `.example.com`) that has at
    /// least one more label in front.
    Subdomains(String),
    /// Exactly this address.
    Ip(IpAddr),
}

/// Splits an optional `:port` off a pattern: `host:port`, `[v6]:port`; a bare IPv6 address has
/// no port (write `[2001:db8::1]:8443` for one). Returns the host part (brackets kept) and the
/// port.
fn split_port(pattern: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if pattern.starts_with('[') {
        match pattern.find(']') {
            Some(end) if end + 1 == pattern.len() => (pattern, None),
            Some(end) => match pattern[end + 1..].strip_prefix(':') {
                Some(port) => (&pattern[..=end], Some(port)),
                None => return Err("expected `:port` after `]`".into()),
            },
            None => return Err("not a valid bracketed ipv6 address".into()),
        }
    } else if pattern.parse::<Ipv6Addr>().is_ok() {
        (pattern, None)
    } else {
        match pattern.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (pattern, None),
        }
    };
    let port = match port {
        None => None,
        Some(digits) => Some(parse_port(digits)?),
    };
    Ok((host, port))
}

/// A port as written after the `:` of a pattern: decimal digits, 1 to 65535.
fn parse_port(digits: &str) -> Result<u16, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port `{digits}` (a pattern is host or host:port; write an ipv6 address \
             with a port as [2001:db8::1]:8443)"
        ));
    }
    match digits.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {digits} is not in 1-65535")),
    }
}

impl HostPattern {
    /// Parses an `allowed_origin_hosts` / `origin_auth.hosts` entry: an exact host name, an IP
    /// literal (exact match; IPv6 with or without brackets), or `*.example.com`, which matches
    /// `a.example.com` and `a.b.example.com` but neither `example.com` nor `badexample.com`;
    /// each optionally followed by `:port` (`127.0.0.1:40601`, `[::1]:8080`,
    /// `*.example.com:8443`), and then it matches only origin URLs on that port. Names are
    /// lower-cased and IDNs converted to punycode, like origin hosts.
    ///
    /// # Errors
    /// A lower-case message: a `*` anywhere but as the whole leftmost label, a wildcard over an
    /// IP address, a port that is not 1 to 65535, or an invalid host name.
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        let (host, port) = split_port(pattern)?;
        let kind = match host.strip_prefix("*.") {
            Some(domain) => match normalize_host(domain)? {
                NormalHost::Name(name) => PatternKind::Subdomains(format!(".{name}")),
                NormalHost::Ip(_) => {
                    return Err("a wildcard cannot apply to an ip address".into());
                }
            },
            None if host == "*" => {
                return Err(
                    "`*` alone is not allowed; omit allowed_origin_hosts to allow \
                            any public host"
                        .into(),
                )
            }
            None => match normalize_host(host)? {
                NormalHost::Name(name) => PatternKind::Exact(name),
                NormalHost::Ip(ip) => PatternKind::Ip(ip),
            },
        };
        Ok(HostPattern { kind, port })
    }

    /// Whether an origin URL with `host` (lower-case, no port, IPv6 without brackets) and
    /// `port` (the scheme's default when the URL has none) is allowed by this pattern. A
    /// pattern without a port matches every port.
    ///
    /// Host matching is ASCII case-insensitive and ignores one trailing dot; IP patterns
    /// compare addresses, so any textual form of the same address (IPv6 with or without
    /// brackets) matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        (self.port.is_none() || self.port == Some(port)) && self.matches_host(host)
    }

    fn matches_host(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match &self.kind {
            PatternKind::Exact(name) => host.eq_ignore_ascii_case(name),
            PatternKind::Subdomains(suffix) => {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len() && {
                    let (prefix, tail) = host.split_at(host.len() - suffix.len());
                    tail.eq_ignore_ascii_case(suffix) && !prefix.ends_with(b".")
                }
            }
            PatternKind::Ip(ip) => {
                let bare = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                bare.parse::<IpAddr>().is_ok_and(|h| h == *ip)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    /// The normalized pattern, as it would be written in the config (an IPv6 address in
    /// brackets when it carries a port).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, self.port) {
            (PatternKind::Exact(name), _) => f.write_str(name)?,
            (PatternKind::Subdomains(suffix), _) => write!(f, "*{suffix}")?,
            (PatternKind::Ip(IpAddr::V6(ip)), Some(_)) => write!(f, "[{ip}]")?,
            (PatternKind::Ip(ip), _) => write!(f, "{ip}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> HostPattern {
        HostPattern::parse(p).expect("valid pattern")
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = pattern("*.example.com");
        assert!(p.matches("a.example.com", 443));
        assert!(p.matches("a.b.example.com", 443));
        assert!(p.matches("A.Example.COM", 443));
        assert!(p.matches("a.example.com.", 443));
        assert!(!p.matches("example.com", 443));
        assert!(!p.matches(".example.com", 443));
        assert!(!p.matches("badexample.com", 443));
        assert!(!p.matches("a.example.com.evil.net", 443));
        assert!(!p.matches("a.example.co", 443));
    }

    #[test]
    fn exact_and_ip_patterns() {
        let p = pattern("CDN.example.com");
        assert_eq!(p.to_string(), "cdn.example.com");
        assert!(p.matches("cdn.example.com", 443));
        assert!(!p.matches("x.cdn.example.com", 443));
        assert!(!p.matches("cdn.example.co", 443));
        let v6 = pattern("[2001:DB8::1]");
        assert!(v6.matches("2001:db8::1", 443));
        assert!(v6.matches("2001:db8:0:0::1", 443));
        assert!(!v6.matches("2001:db8::2", 443));
        let v4 = pattern("93.184.216.34");
        assert!(v4.matches("93.184.216.34", 443));
        assert!(!v4.matches("93.184.216.3", 443));
    }

    #[test]
    fn a_port_restricts_a_pattern_to_that_port() {
        for (written, shown, host) in [
            ("127.0.0.1:40601", "127.0.0.1:40601", "127.0.0.1"),
            ("[::1]:8080", "[::1]:8080", "::1"),
            ("[0:0::1]:8080", "[::1]:8080", "::1"),
            ("*.Example.com:8443", "*.example.com:8443", "a.example.com"),
            (
                "cdn.example.com:443",
                "cdn.example.com:443",
                "cdn.example.com",
            ),
        ] {
            let p = pattern(written);
            assert_eq!(p.to_string(), shown);
            let port = shown.rsplit(':').next().and_then(|p| p.parse().ok());
            let port: u16 = port.expect("port");
            assert!(p.matches(host, port), "{written} on {host}:{port}");
            assert!(!p.matches(host, port + 1), "{written} on another port");
            assert_eq!(HostPattern::parse(shown), Ok(p), "display parses back");
        }
        assert!(!pattern("*.example.com:8443").matches("example.com", 8443));
        // Without a port every port matches; a bare IPv6 address never carries one.
        let any = pattern("127.0.0.1");
        assert!(any.matches("127.0.0.1", 1) && any.matches("127.0.0.1", 65535));
        let v6 = pattern("2001:db8::1");
        assert_eq!(v6.to_string(), "2001:db8::1");
        assert!(v6.matches("2001:db8::1", 8080));
    }

    #[test]
    fn bad_ports_are_refused_with_a_reason() {
        let err = |p: &str| HostPattern::parse(p).expect_err(p);
        assert!(err("a.example:0").contains("not in 1-65535"));
        assert!(err("a.example:99999").contains("not in 1-65535"));
        assert!(err("a.example:http").contains("invalid port `http`"));
        assert!(err("[::1]x").contains("`:port`"));
    }

    #[test]
    fn idn_patterns_become_punycode() {
        let p = pattern("*.bücher.example");
        assert_eq!(p.to_string(), "*.xn--bcher-kva.example");
        assert!(p.matches("www.xn--bcher-kva.example", 443));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "*",
            "exa*mple.org",
            "*example.org",
            "a.*.example.org",
            "*.*.example.org",
            "*.1.2.3.4",
            "cdn.example.com:",
            "cdn.example.com:0",
            "cdn.example.com:65536",
            "cdn.example.com:+443",
            "cdn.example.com:443:1",
            "*:8080",
            "[::1]8080",
            "[::1]:",
            "cdn..example.com",
            "-cdn.example.com",
            "cdn example.com",
            "1.2.3",
            "[::1",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn host_header_keys() {
        let key = |v: &str| host_header_key(v).map(Cow::into_owned);
        assert_eq!(
            key("Assets.Example.com:8080").as_deref(),
            Some("assets.example.com")
        );
        assert_eq!(
            key("assets.example.com.").as_deref(),
            Some("assets.example.com")
        );
        assert_eq!(key("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(key("[0:0::1]").as_deref(), Some("::1"));
        assert_eq!(key("::1").as_deref(), Some("::1"));
        assert_eq!(key("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(key(":80"), None);
        assert_eq!(key("[nope]:80"), None);
    }

    #[test]
    fn config_hosts_normalize_like_host_headers() {
        for (config, header) in [
            ("IMG.example.com", "img.example.com:443"),
            ("img.example.com.", "IMG.EXAMPLE.COM"),
            ("[::1]", "[::1]:8080"),
            ("::1", "[::1]"),
            ("127.0.0.1", "127.0.0.1:8080"),
            ("bücher.example", "xn--bcher-kva.example"),
        ] {
            let key = normalize_host(config).expect("valid").into_key();
            assert_eq!(
                host_header_key(header).as_deref(),
                Some(key.as_str()),
                "{config}"
            );
        }
    }
}
