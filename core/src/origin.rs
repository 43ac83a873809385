//! Web Proxy origin URLs (SPEC §2): the request path decoded once into a validated, typed origin.

use std::net::IpAddr;

/// Origin scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
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
        todo!()
    }

    /// The host as an IP address when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        todo!()
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// The full URL, for logs of signed requests.
    pub fn to_url_string(&self) -> String {
        todo!()
    }
}

/// Why a request path is not a usable origin URL (all map to 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Placeholder.
    #[error("bad origin url")]
    Bad,
}

/// Decodes the request path (without query) into an origin URL: the part after the first `/`,
/// percent-decoded once, or the raw `/https://host/...` form.
///
/// # Errors
/// Bad percent-encoding, not absolute http(s), no host, userinfo, bad port, control characters.
pub fn decode_origin(path: &str) -> Result<OriginUrl, OriginError> {
    let _ = path;
    todo!()
}
