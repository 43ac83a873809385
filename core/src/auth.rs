//! Origin authentication (README: Origin authentication): the headers the gateway adds when it fetches from an origin,
//! and the origin-side verifier of per-request signatures.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use std::fmt;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Longest request id the origin-side check accepts (README, Origin authentication: "an imgix generated id", 1 to
/// 128 visible ASCII characters; the gateway itself sends 64 lowercase hex).
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// The origin auth headers of one origin request (lower-case names, in sending order).
///
/// The values carry credentials, so `Debug` prints the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthHeaders(Vec<(&'static str, String)>);

impl AuthHeaders {
    /// The headers as `(name, value)` pairs, in sending order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(name, value)| (*name, value.as_str()))
    }

    /// Whether there are none (the source has no origin auth, or the hop gets none).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of header `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl IntoIterator for AuthHeaders {
    type Item = (&'static str, String);
    type IntoIter = std::vec::IntoIter<(&'static str, String)>;

    /// The headers as owned `(name, value)` pairs, in sending order (values move into the
    /// request without a copy).
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Debug for AuthHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}: ***")))
            .finish()
    }
}

/// Default clock skew window of the origin-side check, in seconds.
pub const DEFAULT_MAX_SKEW: u64 = 300;

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
    pub signing_key: Option<SigningKey>,
}

/// A per-request signing key with its HMAC-SHA256 state prepared once, at configuration: the
/// key's inner and outer pads are hashed here, so each origin request hashes only its own
/// message.
#[derive(Clone)]
pub struct SigningKey {
    key: Secret,
    mac: HmacSha256,
}

impl SigningKey {
    /// Prepares `key` (its latin-1 bytes are the HMAC key, see [`request_signature`]).
    pub fn new(key: Secret) -> Self {
        // HMAC takes keys of any length (long ones are hashed first), so this cannot fail.
        let mac = match HmacSha256::new_from_slice(&latin1_key(key.expose())) {
            Ok(mac) => mac,
            Err(_) => unreachable!("hmac accepts keys of every length"),
        };
        SigningKey { key, mac }
    }

    /// The key itself.
    pub fn secret(&self) -> &Secret {
        &self.key
    }

    /// `v1,` + UPPERCASE hex HMAC-SHA256 of `<request_id>.<timestamp>` (as
    /// [`request_signature`], from the prepared state).
    pub fn sign(&self, request_id: &str, timestamp: &str) -> String {
        let mut out = String::with_capacity(3 + 64);
        out.push_str("v1,");
        let mac = self.mac(request_id, timestamp);
        crate::hex::push(&mut out, &mac.finalize().into_bytes(), crate::hex::UPPER);
        out
    }

    /// The HMAC over `<request_id>.<timestamp>`, from the prepared state.
    fn mac(&self, request_id: &str, timestamp: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(request_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for SigningKey {}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SigningKey").field(&self.key).finish()
    }
}

impl OriginAuth {
    /// Builds the headers to add to one origin request (lower-case names).
    ///
    /// `origin_host` is the origin host name (no port) sent as `X-Imgix-Signature-Host`; `now`
    /// is unix seconds and `random` 32 fresh random bytes that become the request id.
    ///
    /// Returns, for whichever methods are configured and in this order: `authorization`,
    /// `x-imgix-origin-secret`, then `x-imgix-signature-timestamp`,
    /// `x-imgix-signature-request-id`, `x-imgix-signature` and `x-imgix-signature-host`. Empty
    /// when the source has no origin authentication.
    pub fn headers(&self, origin_host: &str, now: u64, random: &[u8; 32]) -> AuthHeaders {
        let mut headers = Vec::with_capacity(6);
        if let Some(basic) = &self.basic {
            let credentials = format!("{}:{}", basic.username.expose(), basic.password.expose());
            headers.push((
                AUTHORIZATION,
                format!("Basic {}", BASE64.encode(credentials)),
            ));
        }
        if let Some(handshake) = &self.handshake {
            headers.push((ORIGIN_SECRET, handshake.expose().to_owned()));
        }
        if let Some(key) = &self.signing_key {
            let timestamp = itoa::Buffer::new().format(now).to_owned();
            let id = request_id(random);
            let signature = key.sign(&id, &timestamp);
            headers.push((SIGNATURE_TIMESTAMP, timestamp));
            headers.push((SIGNATURE_REQUEST_ID, id));
            headers.push((SIGNATURE, signature));
            headers.push((SIGNATURE_HOST, origin_host.to_owned()));
        }
        AuthHeaders(headers)
    }

    /// Whether any origin authentication is configured.
    pub fn is_configured(&self) -> bool {
        self.basic.is_some() || self.handshake.is_some() || self.signing_key.is_some()
    }
}

/// Turns 32 random bytes into the 64 lowercase hex chars of `X-Imgix-Signature-Request-Id`.
pub fn request_id(random: &[u8; 32]) -> String {
    crate::hex::encode(random, crate::hex::LOWER)
}

/// Computes `v1,` + UPPERCASE hex HMAC-SHA256(key, `<request_id>.<timestamp>`), the key being the
/// latin-1 bytes of `key`.
///
/// Config validation only admits latin-1 keys; should a character above U+00FF get here anyway,
/// it contributes its UTF-8 bytes rather than panicking. Such a key is outside the scheme and
/// [`verify_origin_signature`] refuses it.
pub fn request_signature(key: &Secret, request_id: &str, timestamp: &str) -> String {
    SigningKey::new(key.clone()).sign(request_id, timestamp)
}

/// The key as latin-1 bytes: one byte per character up to U+00FF (see [`request_signature`]).
fn latin1_key(key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len());
    for c in key.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => bytes.push(b),
            Err(_) => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    bytes
}

/// Why an origin-side signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginSignatureError {
    /// The key is empty, longer than 32 characters, or has a character above U+00FF.
    #[error("signing key must be 1 to 32 latin-1 characters")]
    InvalidKey,
    /// The request id is not 1 to 128 visible ASCII characters.
    #[error("malformed request id: expected 1 to 128 visible ascii characters")]
    MalformedRequestId,
    /// The timestamp is not decimal unix seconds.
    #[error("malformed timestamp: expected decimal unix seconds")]
    MalformedTimestamp,
    /// The signature is not `v1,` followed by 64 uppercase hex characters.
    #[error("malformed signature: expected `v1,` followed by 64 uppercase hex characters")]
    MalformedSignature,
    /// The timestamp is more than `max_skew` seconds away from `now`.
    #[error("timestamp is {skew} s away from now, outside the allowed {max_skew} s")]
    OutsideWindow {
        /// Distance between the timestamp and now, in seconds.
        skew: u64,
        /// The window that was allowed.
        max_skew: u64,
    },
    /// Well-formed, but not made with this key over this request id and timestamp.
    #[error("signature does not match")]
    Mismatch,
}

/// Origin side: checks a received per-request signature (constant-time) and that `timestamp` is
/// within `max_skew` seconds of `now` (either direction).
///
/// The gateway always sends uppercase hex, so lowercase hex is refused as malformed: accepting it
/// would let a changed signature string still verify, and there is no sender that needs it.
/// [`DEFAULT_MAX_SKEW`] is the usual window; a timestamp exactly `max_skew` away still passes.
///
/// # Errors
/// Malformed inputs, a timestamp outside the window, or a signature that does not match (see
/// [`OriginSignatureError`]; checked in that order).
pub fn verify_origin_signature(
    key: &Secret,
    request_id: &str,
    timestamp: &str,
    signature: &str,
    now: u64,
    max_skew: u64,
) -> Result<(), OriginSignatureError> {
    let key_chars = key.expose().chars().count();
    if key_chars == 0 || key_chars > 32 || key.expose().chars().any(|c| c > '\u{ff}') {
        return Err(OriginSignatureError::InvalidKey);
    }
    if request_id.is_empty()
        || request_id.len() > MAX_REQUEST_ID_CHARS
        || !request_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(OriginSignatureError::MalformedRequestId);
    }
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginSignatureError::MalformedTimestamp);
    }
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| OriginSignatureError::MalformedTimestamp)?;
    let expected = signature
        .strip_prefix("v1,")
        .and_then(|hex| crate::hex::decode::<32>(hex, crate::hex::UPPER))
        .ok_or(OriginSignatureError::MalformedSignature)?;
    let skew = now.abs_diff(ts);
    if skew > max_skew {
        return Err(OriginSignatureError::OutsideWindow { skew, max_skew });
    }
    SigningKey::new(key.clone())
        .mac(request_id, timestamp)
        .verify_slice(&expected)
        .map_err(|_| OriginSignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "test-signing-key";
    const ID: &str = "a3c1f07cd7f9dc17fe9352dd391aa052f90ba51df95231f09fadc760b8457564";
    const TS: &str = "1709332618";
    const SIG: &str = "v1,861B47427F21119C916A6BC56618D5E191C3208535A28A590D1D84E083F29A88";

    fn verify(sig: &str, now: u64) -> Result<(), OriginSignatureError> {
        verify_origin_signature(&Secret::new(KEY), ID, TS, sig, now, DEFAULT_MAX_SKEW)
    }

    #[test]
    fn request_id_is_lowercase_hex_of_the_bytes() {
        let mut random = [0u8; 32];
        random[0] = 0xAB;
        random[31] = 0x0F;
        let id = request_id(&random);
        assert_eq!(id.len(), 64);
        assert!(id.starts_with("ab00"));
        assert!(id.ends_with("000f"));
    }

    #[test]
    fn signature_matches_the_known_vector() {
        assert_eq!(request_signature(&Secret::new(KEY), ID, TS), SIG);
    }

    #[test]
    fn the_prepared_key_signs_like_the_key() {
        assert_eq!(SigningKey::new(Secret::new(KEY)).sign(ID, TS), SIG);
        // A latin-1 key above U+007F: its one byte per character, not its UTF-8.
        let key = Secret::new("clé-ÿ");
        let prepared = SigningKey::new(key.clone());
        // Used once already, the state still signs another message like a fresh key.
        let _ = prepared.sign(ID, TS);
        assert_eq!(
            prepared.sign(ID, "1"),
            SigningKey::new(key.clone()).sign(ID, "1")
        );
        assert_ne!(
            prepared.sign(ID, TS),
            SigningKey::new(Secret::new("clé-y")).sign(ID, TS)
        );
        assert!(
            !format!("{prepared:?}").contains("clé"),
            "Debug must not show the key"
        );
    }

    #[test]
    fn latin1_key_uses_one_byte_per_character() {
        // "é" as latin-1 is the single byte 0xE9, not its two UTF-8 bytes.
        let mut mac = HmacSha256::new_from_slice(&[0xE9]).expect("any key length");
        mac.update(b"id.1");
        let expected = format!(
            "v1,{}",
            crate::hex::encode(&mac.finalize().into_bytes(), crate::hex::UPPER)
        );
        assert_eq!(request_signature(&Secret::new("é"), "id", "1"), expected);
        assert_ne!(
            request_signature(&Secret::new("é"), "id", "1"),
            request_signature(&Secret::new("\u{c3}\u{a9}"), "id", "1")
        );
    }

    #[test]
    fn headers_for_each_method() {
        let random = [0x11u8; 32];
        let auth = OriginAuth {
            basic: Some(BasicAuth {
                username: Secret::new("Aladdin"),
                password: Secret::new("open sesame"),
            }),
            handshake: Some(Secret::new("hs")),
            signing_key: Some(SigningKey::new(Secret::new(KEY))),
        };
        let headers = auth.headers("cdn.example.com", 1_709_332_618, &random);
        let id = "11".repeat(32);
        let expected: Vec<(&str, String)> = vec![
            (AUTHORIZATION, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".into()),
            (ORIGIN_SECRET, "hs".into()),
            (SIGNATURE_TIMESTAMP, TS.into()),
            (SIGNATURE_REQUEST_ID, id.clone()),
            (SIGNATURE, request_signature(&Secret::new(KEY), &id, TS)),
            (SIGNATURE_HOST, "cdn.example.com".into()),
        ];
        let got: Vec<(&str, String)> = headers.iter().map(|(n, v)| (n, v.to_owned())).collect();
        assert_eq!(got, expected);
        assert!(OriginAuth::default().headers("h", 1, &random).is_empty());
    }

    #[test]
    fn signed_headers_verify_at_the_origin() {
        let key = Secret::new("k");
        let auth = OriginAuth {
            signing_key: Some(SigningKey::new(key.clone())),
            ..OriginAuth::default()
        };
        let headers = auth.headers("h", 42, &[7u8; 32]);
        let get = |name| headers.get(name).expect("header present");
        let result = verify_origin_signature(
            &key,
            get(SIGNATURE_REQUEST_ID),
            get(SIGNATURE_TIMESTAMP),
            get(SIGNATURE),
            42,
            0,
        );
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn any_visible_ascii_request_id_verifies() {
        let key = Secret::new(KEY);
        for id in ["1", "imgix-req.01_AB~!", &"Z".repeat(MAX_REQUEST_ID_CHARS)] {
            let sig = request_signature(&key, id, TS);
            assert_eq!(
                verify_origin_signature(&key, id, TS, &sig, 1_709_332_618, DEFAULT_MAX_SKEW),
                Ok(()),
                "{id}"
            );
        }
    }

    #[test]
    fn auth_header_values_never_print() {
        let auth = OriginAuth {
            handshake: Some(Secret::new("hunter2-handshake")),
            ..OriginAuth::default()
        };
        let headers = auth.headers("h", 1, &[0; 32]);
        let printed = format!("{headers:?}");
        assert_eq!(printed, r#"["x-imgix-origin-secret: ***"]"#);
        assert_eq!(headers.get(ORIGIN_SECRET), Some("hunter2-handshake"));
    }

    #[test]
    fn verify_accepts_the_window_and_rejects_outside_it() {
        assert_eq!(verify(SIG, 1_709_332_618), Ok(()));
        assert_eq!(verify(SIG, 1_709_332_918), Ok(()));
        assert_eq!(verify(SIG, 1_709_332_318), Ok(()));
        assert_eq!(
            verify(SIG, 1_709_332_919),
            Err(OriginSignatureError::OutsideWindow {
                skew: 301,
                max_skew: 300
            })
        );
        assert!(matches!(
            verify(SIG, 1_709_332_317),
            Err(OriginSignatureError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn verify_reports_each_malformed_input() {
        let now = 1_709_332_618;
        let check = |key: &str, id: &str, ts: &str, sig: &str| {
            verify_origin_signature(&Secret::new(key), id, ts, sig, now, DEFAULT_MAX_SKEW)
        };
        use OriginSignatureError as E;
        assert_eq!(check("", ID, TS, SIG), Err(E::InvalidKey));
        assert_eq!(check(&"k".repeat(33), ID, TS, SIG), Err(E::InvalidKey));
        assert_eq!(check("€", ID, TS, SIG), Err(E::InvalidKey));
        // Any 1-128 visible ASCII characters are a well-formed id (README: Origin authentication); another id than the
        // signed one is a mismatch, not malformed.
        assert_eq!(check(KEY, &ID.to_uppercase(), TS, SIG), Err(E::Mismatch));
        assert_eq!(check(KEY, &ID[1..], TS, SIG), Err(E::Mismatch));
        for bad in [
            String::new(),
            "x".repeat(MAX_REQUEST_ID_CHARS + 1),
            "has space".to_owned(),
            "tab\tid".to_owned(),
            "caf\u{e9}".to_owned(),
            "nul\0".to_owned(),
        ] {
            assert_eq!(
                check(KEY, &bad, TS, SIG),
                Err(E::MalformedRequestId),
                "{bad:?}"
            );
        }
        assert_eq!(check(KEY, ID, "", SIG), Err(E::MalformedTimestamp));
        assert_eq!(check(KEY, ID, "-1", SIG), Err(E::MalformedTimestamp));
        assert_eq!(
            check(KEY, ID, "1709332618.0", SIG),
            Err(E::MalformedTimestamp)
        );
        assert_eq!(
            check(KEY, ID, "99999999999999999999999", SIG),
            Err(E::MalformedTimestamp)
        );
        assert_eq!(check(KEY, ID, TS, &SIG[3..]), Err(E::MalformedSignature));
        assert_eq!(
            check(KEY, ID, TS, &SIG.replace("v1,", "v2,")),
            Err(E::MalformedSignature)
        );
        assert_eq!(
            check(KEY, ID, TS, &SIG.to_lowercase()),
            Err(E::MalformedSignature)
        );
        assert_eq!(
            check(KEY, ID, TS, &SIG[..SIG.len() - 1]),
            Err(E::MalformedSignature)
        );
        assert_eq!(check("other-key", ID, TS, SIG), Err(E::Mismatch));
        assert_eq!(check(KEY, ID, "1709332619", SIG), Err(E::Mismatch));
    }

    #[test]
    fn error_messages_are_lower_case() {
        let all = [
            OriginSignatureError::InvalidKey,
            OriginSignatureError::MalformedRequestId,
            OriginSignatureError::MalformedTimestamp,
            OriginSignatureError::MalformedSignature,
            OriginSignatureError::OutsideWindow {
                skew: 1,
                max_skew: 0,
            },
            OriginSignatureError::Mismatch,
        ];
        for e in all {
            let text = e.to_string();
            assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        }
    }
}
