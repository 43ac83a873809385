//! Rules over the origin's response, read from raw header values the same way on both
//! runtimes: which redirects are followed, the declared `Content-Length`, the one strictly
//! parsed `Content-Type`, the joined `Cache-Control`, and the edits that make the origin's
//! response head the client's: the header allowlist and the headers that keep whatever an
//! origin serves inert on the customer's domain.

use crate::config::{CacheTtl, CacheTtlBehavior};
use crate::expires::cap_cache_control;

/// Origin statuses the gateway follows as redirects.
pub const FOLLOWED_REDIRECTS: [u16; 5] = [301, 302, 303, 307, 308];

/// Whether an origin status is a redirect the gateway follows (see [`FOLLOWED_REDIRECTS`]).
pub fn is_followed_redirect(status: u16) -> bool {
    FOLLOWED_REDIRECTS.contains(&status)
}

/// Origin response headers that may reach the client (lower-case); every other header of the
/// origin's answer is removed (`Set-Cookie`, `Strict-Transport-Security`, `Refresh`,
/// `Access-Control-*`, `Link`, `Clear-Site-Data`, `Server`, ...).
pub const RESPONSE_HEADER_ALLOWLIST: [&str; 10] = [
    "content-type",
    "content-length",
    "content-range",
    "content-encoding",
    "accept-ranges",
    "cache-control",
    "etag",
    "expires",
    "last-modified",
    "vary",
];

/// Hop-by-hop framing headers each runtime manages itself on both sides; the response edits
/// never touch them (removing them would break the runtime's own framing of the body).
pub const FRAMING_HEADERS: [&str; 3] = ["transfer-encoding", "connection", "keep-alive"];

/// `X-Content-Type-Options` on every response, forwarded or local.
pub const NOSNIFF: (&str, &str) = ("x-content-type-options", "nosniff");

/// `Content-Security-Policy` on every response, forwarded or local: whatever an origin serves
/// runs no script and loads nothing on the customer's domain.
pub const CONTENT_SECURITY_POLICY: (&str, &str) = (
    "content-security-policy",
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
);

/// The headers every response carries, forwarded or local.
pub const SECURITY_HEADERS: [(&str, &str); 2] = [NOSNIFF, CONTENT_SECURITY_POLICY];

/// `Content-Type` of a forwarded response whose origin sent none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Media types that run script in a browser although a listed prefix would match them:
/// `image/` in `allowed_content_types` never admits these unless listed themselves.
pub const SCRIPTABLE_UNDER_PREFIX: [&str; 1] = ["image/svg+xml"];

/// Whether a response with this status can carry a body (not 1xx, 204 or 304).
pub fn status_has_body(status: u16) -> bool {
    !(status < 200 || status == 204 || status == 304)
}

/// A parsed `Content-Type`: one `type/subtype` and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    essence: String,
    params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses one `Content-Type` value strictly: `type "/" subtype *( OWS ";" OWS name "="
    /// value )`, tokens per RFC 9110 and values as tokens or quoted strings. An empty parameter
    /// (a trailing `;`) is dropped.
    ///
    /// # Errors
    /// A lower-case reason: a comma outside a quoted string (a list of types), or anything that
    /// is not one media type.
    pub fn parse(value: &str) -> Result<MediaType, &'static str> {
        let mut parts = split_unquoted(value)?.into_iter();
        let essence = parts.next().unwrap_or_default();
        let (kind, subtype) = essence
            .split_once('/')
            .ok_or("content-type is not one media type")?;
        if !is_token(kind) || !is_token(subtype) {
            return Err("content-type is not one media type");
        }
        let mut params = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let (name, value) = part
                .split_once('=')
                .ok_or("content-type has a malformed parameter")?;
            if !is_token(name) || !(is_token(value) || is_quoted_string(value)) {
                return Err("content-type has a malformed parameter");
            }
            params.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        Ok(MediaType {
            essence: essence.to_ascii_lowercase(),
            params,
        })
    }

    /// The lower-case `type/subtype`.
    pub fn essence(&self) -> &str {
        &self.essence
    }

    /// The one normalised value sent to the client: the lower-case `type/subtype`, then each
    /// parameter as `; name=value` (name lower-cased, value as sent).
    pub fn to_header_value(&self) -> String {
        let mut out = self.essence.clone();
        for (name, value) in &self.params {
            out.push_str("; ");
            out.push_str(name);
            out.push('=');
            out.push_str(value);
        }
        out
    }

    /// Whether an `allowed_content_types` entry admits this type: an entry ending in `/` is a
    /// prefix (but never admits [`SCRIPTABLE_UNDER_PREFIX`]), any other names one type exactly.
    pub fn allowed_by(&self, entry: &str) -> bool {
        if entry.ends_with('/') {
            self.essence.starts_with(entry)
                && !SCRIPTABLE_UNDER_PREFIX.contains(&self.essence.as_str())
        } else {
            self.essence == entry
        }
    }
}

/// RFC 9110 `token`: one or more tchars.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 9110 `quoted-string` (escapes allowed, no control characters but tab).
fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for b in inner.bytes() {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            return false;
        }
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return false,
            _ => {}
        }
    }
    !escaped
}

/// Splits a header value at `;` outside quoted strings, trimming each part.
///
/// # Errors
/// A comma outside a quoted string, or an unterminated quoted string.
fn split_unquoted(value: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => quoted = false,
            (false, _, b'"') => quoted = true,
            (false, _, b',') => return Err("content-type is a list of media types"),
            (false, _, b';') => {
                parts.push(value[start..i].trim_matches([' ', '\t']));
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("content-type has an unterminated quoted string");
    }
    parts.push(value[start..].trim_matches([' ', '\t']));
    Ok(parts)
}

/// What the response rules read from an origin response head, collected from its raw header
/// fields ([`OriginHead::add`] for each, in order, any name case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginHead {
    status: u16,
    content_types: Vec<String>,
    lengths: Vec<Option<u64>>,
    cache_control: Vec<String>,
    location: Option<String>,
    removed: Vec<String>,
}

impl OriginHead {
    /// An empty head with the origin's status.
    pub fn new(status: u16) -> OriginHead {
        OriginHead {
            status,
            ..OriginHead::default()
        }
    }

    /// The head of `status` with every `(name, value)` field of `fields`.
    pub fn of<'a>(
        status: u16,
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> OriginHead {
        let mut head = OriginHead::new(status);
        for (name, value) in fields {
            head.add(name, value);
        }
        head
    }

    /// Records one header field as received. Bytes that are not UTF-8 are replaced, which can
    /// only make a value fail a check, never pass one. Pseudo-headers (`:status`) are the
    /// runtime's and are ignored.
    pub fn add(&mut self, name: &str, value: &[u8]) {
        if name.starts_with(':') {
            return;
        }
        // Only the values kept are copied (a length is read in place).
        let text = || String::from_utf8_lossy(value);
        if name.eq_ignore_ascii_case("content-type") {
            self.content_types.push(text().trim().to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            self.lengths.push(text().trim().parse().ok());
        } else if name.eq_ignore_ascii_case("cache-control") {
            self.cache_control.push(text().trim().to_owned());
        } else if name.eq_ignore_ascii_case("location") {
            self.location
                .get_or_insert_with(|| text().trim().to_owned());
        }
        let kept = RESPONSE_HEADER_ALLOWLIST
            .iter()
            .chain(FRAMING_HEADERS.iter())
            .any(|h| h.eq_ignore_ascii_case(name));
        // `removed` holds lower-case names: a repeated field is found without lower-casing it.
        if !kept && !self.removed.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            self.removed.push(name.to_ascii_lowercase());
        }
    }

    /// Replaces the status: the head as served with another status (a fallback image's
    /// answer served with the original answer's status).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The origin's status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The origin's `Content-Type`, parsed: `Ok(None)` when there is none.
    ///
    /// # Errors
    /// A lower-case reason when there are several `Content-Type` fields, a list, or a value
    /// that is not one media type: the answer is ambiguous and must not be served.
    pub fn media_type(&self) -> Result<Option<MediaType>, &'static str> {
        match self.content_types.as_slice() {
            [] => Ok(None),
            [one] => MediaType::parse(one).map(Some),
            _ => Err("several content-type fields"),
        }
    }

    /// The declared body length: `Some` only when every `Content-Length` field is the same
    /// non-negative integer (the runtimes' codecs refuse conflicting ones before this).
    pub fn content_length(&self) -> Option<u64> {
        let first = (*self.lengths.first()?)?;
        self.lengths
            .iter()
            .all(|l| *l == Some(first))
            .then_some(first)
    }

    /// Every `Cache-Control` field joined with `, `, or `None` when there is none.
    pub fn cache_control(&self) -> Option<String> {
        (!self.cache_control.is_empty()).then(|| self.cache_control.join(", "))
    }

    /// The first `Location` value.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The names (lower-case) of this head's fields outside [`RESPONSE_HEADER_ALLOWLIST`] (and
    /// [`FRAMING_HEADERS`]): what never reaches the client.
    pub fn removed(&self) -> &[String] {
        &self.removed
    }
}

/// The `Cache-Control` a source's cache TTL settings make of an origin answer (imgix's source
/// settings), before any `expires` cap:
///
/// - an origin 4xx/5xx: `public, max-age=<cache_ttl_error>`, in every mode;
/// - `respect_origin`: the origin's `Cache-Control` as sent; none → `public,
///   max-age=<cache_ttl>`;
/// - `override_origin`: `public, max-age=<cache_ttl>`;
/// - `enforce_minimum`: `public, max-age=max(origin max-age, cache_ttl)` (no or an unreadable
///   origin `max-age` counts as 0).
///
/// `origin` is the origin's `Cache-Control` (every field joined, see
/// [`OriginHead::cache_control`]). A cache stores the answer under this value; each response
/// then gets its own URL's `expires` cap ([`crate::expires::cap_cache_control`]).
pub fn policy_cache_control(ttl: &CacheTtl, status: u16, origin: Option<&str>) -> String {
    let public = |seconds: u64| {
        let mut value = String::with_capacity(36);
        value.push_str("public, max-age=");
        crate::origin::push_decimal(&mut value, seconds);
        value
    };
    if (400..600).contains(&status) {
        return public(ttl.error_ttl);
    }
    match (ttl.behavior, origin) {
        (CacheTtlBehavior::RespectOrigin, Some(origin)) => origin.to_owned(),
        (CacheTtlBehavior::RespectOrigin | CacheTtlBehavior::OverrideOrigin, _) => public(ttl.ttl),
        (CacheTtlBehavior::EnforceMinimum, origin) => {
            public(origin.and_then(max_age_of).unwrap_or(0).max(ttl.ttl))
        }
    }
}

/// The checks of an origin response head that refuse it whatever else it says (the first
/// part of [`crate::Forward::check_response`]): a declared `Content-Length` over
/// `max_body_bytes`, a `Content-Type` that is not one media type, or, on a status with a body,
/// a media type outside `allowed_content_types` (`None` = any). Returns the parsed media type.
///
/// # Errors
/// The rejection the client gets for the head (`origin_too_large`, `bad_origin_response`,
/// `content_type_denied`).
pub fn check_head(
    head: &OriginHead,
    max_body_bytes: u64,
    allowed_content_types: Option<&[String]>,
) -> Result<Option<MediaType>, crate::outcome::Rejection> {
    use crate::outcome::Rejection;
    if head
        .content_length()
        .is_some_and(|len| len > max_body_bytes)
    {
        return Err(Rejection::origin_too_large());
    }
    let media_type = head.media_type().map_err(Rejection::bad_origin_response)?;
    if let (true, Some(allowed)) = (status_has_body(head.status()), allowed_content_types) {
        let admitted = media_type
            .as_ref()
            .is_some_and(|t| allowed.iter().any(|entry| t.allowed_by(entry)));
        if !admitted {
            return Err(Rejection::content_type_denied());
        }
    }
    Ok(media_type)
}

/// The `max-age` seconds of a `Cache-Control` value, if it has a readable one.
pub fn max_age_of(cache_control: &str) -> Option<u64> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// The changes to an origin response head before it reaches the client: headers to remove
/// (every value), then headers to set (replacing every value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdits {
    /// Lower-case names to remove.
    pub remove: Vec<String>,
    /// Lower-case names and values to set.
    pub set: Vec<(&'static str, String)>,
    /// The source's policy `Cache-Control` for this answer before any `expires` cap (see
    /// [`policy_cache_control`]): what a cache stores it under. `None` for a 1xx.
    pub policy_cache_control: Option<String>,
}

/// The edits for a forwarded response whose `Content-Type` is `media_type` (parsed by
/// [`OriginHead::media_type`]): remove every header outside the allowlist, send the one
/// normalised `Content-Type` ([`DEFAULT_CONTENT_TYPE`] when the origin sent none on a response
/// that can carry a body), add [`SECURITY_HEADERS`], and send the source's policy
/// `Cache-Control` ([`policy_cache_control`] under `ttl`), capped, when the URL carried
/// `expires` (`max_age`), at the seconds remaining.
pub fn response_edits(
    head: &OriginHead,
    media_type: Option<&MediaType>,
    ttl: &CacheTtl,
    max_age: Option<u64>,
) -> ResponseEdits {
    let mut set = Vec::with_capacity(4);
    match media_type {
        Some(media_type) => {
            let value = media_type.to_header_value();
            // The origin's one Content-Type, already in normal form, stays as it is: setting it
            // again would change nothing but cost a header rewrite on every response.
            if head.content_types != [value.as_str()] {
                set.push(("content-type", value));
            }
        }
        None if status_has_body(head.status()) => {
            set.push(("content-type", DEFAULT_CONTENT_TYPE.to_owned()));
        }
        None => {}
    }
    set.extend(SECURITY_HEADERS.iter().map(|(n, v)| (*n, (*v).to_owned())));
    let policy = (head.status() >= 200)
        .then(|| policy_cache_control(ttl, head.status(), head.cache_control().as_deref()));
    if let Some(policy) = &policy {
        let sent = match max_age {
            Some(max_age) => cap_cache_control(Some(policy), max_age),
            None => policy.clone(),
        };
        set.push(("cache-control", sent));
    }
    ResponseEdits {
        remove: head.removed().to_vec(),
        set,
        policy_cache_control: policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> OriginHead {
        OriginHead::of(200, fields.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    fn edits(h: &OriginHead, max_age: Option<u64>) -> ResponseEdits {
        let media_type = h.media_type().expect("one content type");
        response_edits(h, media_type.as_ref(), &CacheTtl::default(), max_age)
    }

    #[test]
    fn content_length_needs_one_agreeing_number() {
        assert_eq!(
            head(&[("Content-Length", "10737418240")]).content_length(),
            Some(10_737_418_240)
        );
        assert_eq!(head(&[("content-length", " 5 ")]).content_length(), Some(5));
        assert_eq!(
            head(&[("content-length", "5"), ("content-length", "5")]).content_length(),
            Some(5)
        );
        for bad in [
            &[("content-length", "5, 5")][..],
            &[("content-length", "-1")],
            &[],
            &[("content-length", "5"), ("content-length", "6")],
        ] {
            assert_eq!(head(bad).content_length(), None, "{bad:?}");
        }
    }

    #[test]
    fn repeated_cache_control_fields_are_joined() {
        let h = head(&[
            ("cache-control", "public"),
            ("etag", "x"),
            ("Cache-Control", "max-age=10"),
        ]);
        assert_eq!(h.cache_control().as_deref(), Some("public, max-age=10"));
        assert_eq!(head(&[]).cache_control(), None);
    }

    #[test]
    fn only_allowlisted_headers_survive_and_every_answer_is_inert() {
        let h = head(&[
            ("Cache-Control", "public, max-age=3600"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Strict-Transport-Security", "max-age=1"),
            ("Refresh", "0; url=https://evil.example/"),
            ("Access-Control-Allow-Origin", "*"),
            ("Server", "origin/1"),
            ("Link", "</x>; rel=preload"),
            ("Transfer-Encoding", "chunked"),
            ("ETag", "\"e\""),
            ("Content-Type", "Image/PNG"),
            (":status", "200"),
        ]);
        let e = edits(&h, Some(60));
        assert_eq!(
            e.remove,
            [
                "set-cookie",
                "strict-transport-security",
                "refresh",
                "access-control-allow-origin",
                "server",
                "link"
            ]
        );
        let expected: Vec<(&str, String)> = [
            ("content-type", "image/png"),
            NOSNIFF,
            CONTENT_SECURITY_POLICY,
            ("cache-control", "public, max-age=60"),
        ]
        .into_iter()
        .map(|(n, v)| (n, v.to_owned()))
        .collect();
        assert_eq!(e.set, expected);
        // Without expires the origin's Cache-Control is sent as it came (respect_origin).
        assert!(edits(&h, None)
            .set
            .contains(&("cache-control", "public, max-age=3600".to_owned())));
        // No Content-Type: octet-stream on a body, nothing on a 304.
        let none = edits(&head(&[]), Some(30));
        assert_eq!(
            none.set[0],
            ("content-type", DEFAULT_CONTENT_TYPE.to_owned())
        );
        assert_eq!(
            none.set.last(),
            Some(&("cache-control", "public, max-age=30".to_owned()))
        );
        assert_eq!(
            none.policy_cache_control.as_deref(),
            Some("public, max-age=31536000"),
            "the cache stores the uncapped policy value"
        );
        // One Content-Type already in normal form is left as it is; two are made one.
        let normal = edits(&head(&[("Content-Type", "image/png")]), None);
        assert!(!normal.set.iter().any(|(n, _)| *n == "content-type"));
        let two = head(&[("Content-Type", "image/png"), ("Content-Type", "image/png")]);
        let two = response_edits(
            &two,
            Some(&MediaType::parse("image/png").expect("type")),
            &CacheTtl::default(),
            None,
        );
        assert_eq!(two.set[0], ("content-type", "image/png".to_owned()));
        let not_modified = OriginHead::new(304);
        assert!(
            !response_edits(&not_modified, None, &CacheTtl::default(), None)
                .set
                .iter()
                .any(|(n, _)| *n == "content-type")
        );
    }

    #[test]
    fn content_type_is_parsed_strictly_and_normalised() {
        for (value, normalised) in [
            ("image/png", "image/png"),
            ("Image/PNG ; Q=1", "image/png; q=1"),
            (
                "text/plain;charset=\"a,b;c\"",
                "text/plain; charset=\"a,b;c\"",
            ),
            ("image/webp;", "image/webp"),
            (
                "application/vnd.api+json; charset=utf-8",
                "application/vnd.api+json; charset=utf-8",
            ),
        ] {
            let parsed = MediaType::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(parsed.to_header_value(), normalised, "{value}");
        }
        for bad in [
            "image/png, text/html",
            "text/html,image/png",
            "image/png; a=b, text/html",
            "image",
            "image/",
            "/png",
            "image/png; charset",
            "image/png; =x",
            "image/pn g",
            "image/png; a=\"open",
            "",
        ] {
            assert!(MediaType::parse(bad).is_err(), "{bad} must be refused");
        }
        let two = head(&[("content-type", "image/png"), ("Content-Type", "text/html")]);
        assert_eq!(two.media_type(), Err("several content-type fields"));
        assert_eq!(head(&[]).media_type(), Ok(None));
    }

    #[test]
    fn cache_ttl_policy_for_each_mode_origin_and_status() {
        let ttl = |behavior| CacheTtl {
            behavior,
            ttl: 1000,
            error_ttl: 30,
        };
        use CacheTtlBehavior::*;
        let cases: [(CacheTtlBehavior, u16, Option<&str>, &str); 15] = [
            (
                RespectOrigin,
                200,
                Some("public, max-age=60"),
                "public, max-age=60",
            ),
            (RespectOrigin, 200, Some("no-store"), "no-store"),
            (RespectOrigin, 200, None, "public, max-age=1000"),
            (RespectOrigin, 404, Some("max-age=60"), "public, max-age=30"),
            (RespectOrigin, 503, None, "public, max-age=30"),
            (
                OverrideOrigin,
                200,
                Some("private, max-age=60"),
                "public, max-age=1000",
            ),
            (
                OverrideOrigin,
                200,
                Some("no-store"),
                "public, max-age=1000",
            ),
            (OverrideOrigin, 200, None, "public, max-age=1000"),
            (OverrideOrigin, 500, Some("max-age=9"), "public, max-age=30"),
            (
                EnforceMinimum,
                200,
                Some("max-age=60"),
                "public, max-age=1000",
            ),
            (
                EnforceMinimum,
                200,
                Some("public, max-age=5000"),
                "public, max-age=5000",
            ),
            (
                EnforceMinimum,
                200,
                Some("no-store"),
                "public, max-age=1000",
            ),
            (EnforceMinimum, 200, None, "public, max-age=1000"),
            (
                EnforceMinimum,
                404,
                Some("max-age=5000"),
                "public, max-age=30",
            ),
            (
                EnforceMinimum,
                304,
                Some("max-age=\"2000\""),
                "public, max-age=2000",
            ),
        ];
        for (behavior, status, origin, expected) in cases {
            assert_eq!(
                policy_cache_control(&ttl(behavior), status, origin),
                expected,
                "{behavior:?} {status} {origin:?}"
            );
        }
        assert_eq!(max_age_of("public, Max-Age=12, s-maxage=4"), Some(12));
        assert_eq!(max_age_of("s-maxage=4"), None);
    }

    #[test]
    fn prefixes_never_admit_svg() {
        let t = |v: &str| MediaType::parse(v).expect("media type");
        assert!(t("image/png").allowed_by("image/"));
        assert!(!t("image/svg+xml").allowed_by("image/"));
        assert!(t("image/svg+xml").allowed_by("image/svg+xml"));
        assert!(t("application/pdf").allowed_by("application/pdf"));
        assert!(!t("application/pdfx").allowed_by("application/pdf"));
    }

    #[test]
    fn followed_redirects_and_bodies() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_followed_redirect(s));
        }
        for s in [200, 300, 304, 305, 306, 309] {
            assert!(!is_followed_redirect(s));
        }
        assert!(!status_has_body(100) && !status_has_body(204) && !status_has_body(304));
        assert!(status_has_body(200) && status_has_body(404));
    }
}
