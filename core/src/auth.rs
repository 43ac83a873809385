//! Origin authentication (SPEC §5): the headers the gateway adds when it fetches from an origin,
//! and the origin-side verifier of per-request signatures.
//!
//! SKELETON: bodies are filled in by the config/auth work item.

use crate::secret::Secret;

/// `Authorization` (Basic auth).
pub const AUTHORIZATION: &str = "authorization";
/// Handshake header carrying `request_handshake`.
pub const ORIGIN_SECRET: &str = "x-imgix-origin-secret";
/// Per-request signing: unix seconds.
pub const SIGNATURE_TIMESTAMP: &str = "x-imgix-signature-timestamp";
/// Per-request signing: 64 lowercase hex chars.
pub const SIGNATURE_REQUEST_ID: &str = "x-imgix-signature-request-id";
/// Per-request signing: `v1,` + uppercase hex HMAC-SHA256.
pub const SIGNATURE: &str = "x-imgix-signature";
/// Per-request signing: the origin host.
pub const SIGNATURE_HOST: &str = "x-imgix-signature-host";

/// Basic auth credentials (validated: no `:` and no control characters in either part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    /// User name.
    pub username: Secret,
    /// Password.
    pub password: Secret,
}

/// A source's origin authentication; any combination of the three may be set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginAuth {
    /// Basic auth.
    pub basic: Option<BasicAuth>,
    /// `X-Imgix-Origin-Secret` value.
    pub handshake: Option<Secret>,
    /// HMAC key for per-request signing (1 to 32 latin-1 characters).
    pub signing_key: Option<Secret>,
}

impl OriginAuth {
    /// Builds the headers to add to one origin request (lower-case names).
    ///
    /// `origin_host` is the origin host name (no port) sent as `X-Imgix-Signature-Host`; `now`
    /// is unix seconds and `random` 32 fresh random bytes that become the request id.
    pub fn headers(&self, origin_host: &str, now: u64, random: &[u8; 32]) -> Vec<(&'static str, String)> {
        let _ = (origin_host, now, random);
        todo!()
    }
}

/// Turns 32 random bytes into the 64 lowercase hex chars of `X-Imgix-Signature-Request-Id`.
pub fn request_id(random: &[u8; 32]) -> String {
    let _ = random;
    todo!()
}

/// Computes `v1,` + UPPERCASE hex HMAC-SHA256(key, `<request_id>.<timestamp>`), the key being the
/// latin-1 bytes of `key`.
pub fn request_signature(key: &Secret, request_id: &str, timestamp: &str) -> String {
    let _ = (key, request_id, timestamp);
    todo!()
}

/// Why an origin-side signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginSignatureError {
    /// Placeholder until filled in.
    #[error("invalid")]
    Invalid,
}

/// Origin side: checks a received per-request signature (constant-time) and that `timestamp` is
/// within `max_skew` seconds of `now` (either direction).
///
/// # Errors
/// Malformed inputs, a timestamp outside the window, or a signature that does not match.
pub fn verify_origin_signature(
    key: &Secret,
    request_id: &str,
    timestamp: &str,
    signature: &str,
    now: u64,
    max_skew: u64,
) -> Result<(), OriginSignatureError> {
    let _ = (key, request_id, timestamp, signature, now, max_skew);
    todo!()
}
