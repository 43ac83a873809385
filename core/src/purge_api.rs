//! imgix's purge API on the native admin listener (README: Caching, *imgix's purge API*):
//! `POST /api/v1/purge` with `Authorization: Bearer <key>` and imgix's JSON:API document
//! `{"data":{"type":"purges","attributes":{"url":"https://<source host>/<path>"}}}`, the request
//! the imgix SDKs and CMS plugins send to `https://api.imgix.com/api/v1/purge`.
//!
//! Everything but the I/O is here: which keys admit a request, the bounds on its body, what the
//! document must hold, which cache entries its URL names, and every answer's status and JSON:API
//! body. The runtime reads the body within [`MAX_BODY_BYTES`] and [`BODY_TIMEOUT`], purges the
//! keys of the [`PurgeTarget`] and sends what [`PurgeApiError::answer`] or [`purged_answer`]
//! make.
//!
//! The URL names entries the way a request does: its host picks the source
//! ([`Sources::by_host`]), its path decodes to the origin URL exactly as a signed request's path
//! does ([`decode_origin`], encoded and raw forms), and its query (params, `s`) is ignored. The
//! cache key is the source and the decoded origin URL only ([`crate::cache::cache_key`]), so one
//! purge removes every variant, as imgix's "purging will remove all derivative copies" says.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::purge_keys;
use crate::fleet::{FleetReport, BUSY_STATUS, MAX_PURGES_IN_FLIGHT, RETRY_AFTER};
use crate::origin::decode_origin;
use crate::secret::Secret;
use crate::Sources;

/// The admin path of imgix's purge API (the path imgix's SDKs post to on `api.imgix.com`).
pub const PURGE_API_PATH: &str = "/api/v1/purge";

/// The largest request body read; a larger one is refused with 413 unread. imgix's document
/// for one URL is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole request body must arrive within this, else 408 and the connection closes: a
/// client that trickles its body holds its connection and buffer no longer, and a purge
/// document (at most [`MAX_BODY_BYTES`]) needs far less on any network.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// The `Content-Type` of every answer (JSON:API's media type, which imgix answers with).
pub const CONTENT_TYPE: &str = "application/vnd.api+json";

/// The `WWW-Authenticate` value of a 401 (RFC 6750 §3).
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"ixproxy\"";

/// The `Allow` value of a 405.
pub const ALLOW: &str = "POST";

/// The longest `detail` an error answer quotes (serde's syntax errors name a line and column,
/// never the value, so this only bounds a pathological message).
const MAX_DETAIL_CHARS: usize = 200;

/// Why a purge request is refused; each maps to one status and metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeApiError {
    /// Not `POST` (→ 405 with `Allow: POST`).
    #[error("the purge api accepts POST only")]
    Method,
    /// No `Authorization: Bearer <key>` with one of `purge_api_keys` (→ 401 with
    /// `WWW-Authenticate: Bearer`).
    #[error("a valid api key is required: Authorization: Bearer <key>")]
    Unauthorized,
    /// A body over [`MAX_BODY_BYTES`] (→ 413).
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body did not arrive within [`BODY_TIMEOUT`] (→ 408).
    #[error("the body did not arrive within {} seconds", BODY_TIMEOUT.as_secs())]
    Timeout,
    /// The body is not imgix's purge document; the message names the member (→ 400).
    #[error("{0}")]
    BadDocument(String),
    /// The URL is not `http(s)://<host>/<origin URL>`, or its path is not a usable origin URL
    /// (→ 400).
    #[error("data.attributes.url: {0}")]
    BadUrl(String),
    /// The URL's host is none of the sources' hosts (→ 404: no such object, imgix's answer for
    /// a resource that does not exist).
    #[error("data.attributes.url: its host is not one of a source's hosts")]
    UnknownSource,
    /// With `cache.peers`, [`MAX_PURGES_IN_FLIGHT`] purges are being forwarded already: not
    /// purged anywhere (→ 503 with `Retry-After`, [`crate::fleet::busy_text`]'s rule).
    #[error(
        "not purged: {MAX_PURGES_IN_FLIGHT} purges are being forwarded to the fleet already; \
         retry in {RETRY_AFTER} seconds"
    )]
    Busy,
}

impl PurgeApiError {
    /// Every metric label of a refusal, in variant order.
    pub const LABELS: [&'static str; 8] = [
        "method",
        "unauthorized",
        "too_large",
        "timeout",
        "bad_document",
        "bad_url",
        "unknown_source",
        "busy",
    ];

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            PurgeApiError::Method => 405,
            PurgeApiError::Unauthorized => 401,
            PurgeApiError::TooLarge => 413,
            PurgeApiError::Timeout => 408,
            PurgeApiError::BadDocument(_) | PurgeApiError::BadUrl(_) => 400,
            PurgeApiError::UnknownSource => 404,
            PurgeApiError::Busy => BUSY_STATUS,
        }
    }

    /// The header the refusal carries besides `Content-Type` (lower-case name, value):
    /// `www-authenticate` on a 401, `allow` on a 405.
    pub fn header(&self) -> Option<(&'static str, &'static str)> {
        match self {
            PurgeApiError::Unauthorized => Some(("www-authenticate", WWW_AUTHENTICATE)),
            PurgeApiError::Method => Some(("allow", ALLOW)),
            PurgeApiError::Busy => Some(("retry-after", RETRY_AFTER)),
            _ => None,
        }
    }

    /// The `ixproxy_purge_api_requests_total{result}` label.
    pub fn label(&self) -> &'static str {
        let i = match self {
            PurgeApiError::Method => 0,
            PurgeApiError::Unauthorized => 1,
            PurgeApiError::TooLarge => 2,
            PurgeApiError::Timeout => 3,
            PurgeApiError::BadDocument(_) => 4,
            PurgeApiError::BadUrl(_) => 5,
            PurgeApiError::UnknownSource => 6,
            PurgeApiError::Busy => 7,
        };
        Self::LABELS[i]
    }

    /// The JSON:API error document imgix answers with (`errors: [{id, status, title,
    /// detail}]`, status as a string), `id` naming this request (see [`answer_id`]); for a
    /// document error, `source.pointer` names the member.
    pub fn answer(&self, id: &str) -> Vec<u8> {
        let status = self.status();
        let mut detail = self.to_string();
        if let Some((end, _)) = detail.char_indices().nth(MAX_DETAIL_CHARS) {
            detail.truncate(end);
        }
        let mut error = json!({
            "id": id,
            "status": status.to_string(),
            "title": title(status),
            "detail": detail,
        });
        let pointer = match self {
            // A body that is not JSON names no member.
            PurgeApiError::BadDocument(m) => m
                .split(':')
                .next()
                .filter(|member| *member != "body")
                .map(pointer_of),
            PurgeApiError::BadUrl(_) | PurgeApiError::UnknownSource => {
                Some(pointer_of("data.attributes.url"))
            }
            _ => None,
        };
        if let (Some(pointer), Some(map)) = (pointer, error.as_object_mut()) {
            map.insert("source".to_owned(), json!({ "pointer": pointer }));
        }
        document(json!({ "errors": [error], "jsonapi": jsonapi() }))
    }
}

/// The reason phrase imgix's error `title` carries.
fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `data.attributes.url` → `/data/attributes/url` (JSON pointer, RFC 6901; the member names
/// here hold no `~` nor `/`).
fn pointer_of(path: &str) -> String {
    format!("/{}", path.replace('.', "/"))
}

fn jsonapi() -> Value {
    json!({ "version": "1.0" })
}

fn document(value: Value) -> Vec<u8> {
    // Serializing a `Value` built here cannot fail; an empty body would still be an answer.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The `id` of an answer: 24 lowercase hex characters from 12 random bytes the runtime draws
/// (imgix's resource ids have this shape), so a log line and a caller's report meet.
pub fn answer_id(random: [u8; 12]) -> String {
    crate::hex::encode(&random, crate::hex::LOWER)
}

/// Whether the request's `Authorization` values (every field, in order) hold exactly one
/// `Bearer <key>` whose key is one of `keys`.
///
/// Every key is compared, each through its SHA-256 digest in constant time, so timing reveals
/// neither which key matched nor how much of one did (nor its length).
///
/// # Errors
/// [`PurgeApiError::Unauthorized`] for no field, several, another scheme, or no such key.
pub fn authorize<'a>(
    authorization: impl IntoIterator<Item = &'a [u8]>,
    keys: &[Secret],
) -> Result<(), PurgeApiError> {
    let mut values = authorization.into_iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(PurgeApiError::Unauthorized);
    };
    let value = std::str::from_utf8(value).map_err(|_| PurgeApiError::Unauthorized)?;
    let (scheme, key) = value
        .trim_matches(' ')
        .split_once(' ')
        .ok_or(PurgeApiError::Unauthorized)?;
    let key = key.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(PurgeApiError::Unauthorized);
    }
    let sent = Sha256::digest(key.as_bytes());
    let mut found = subtle::Choice::from(0);
    for known in keys {
        found |= Sha256::digest(known.expose().as_bytes()).ct_eq(&sent);
    }
    if bool::from(found) {
        Ok(())
    } else {
        Err(PurgeApiError::Unauthorized)
    }
}

/// What can be checked before the body is read, in this order: the method, the key
/// ([`authorize`]) and a declared `Content-Length` over [`MAX_BODY_BYTES`]. The `Content-Type`
/// is not checked: imgix's SDKs send JSON:API's, scripts often plain JSON or none, and a body
/// that is not imgix's document is a 400 whatever its label (SPEC §15). The runtime then reads at most [`MAX_BODY_BYTES`] within
/// [`BODY_TIMEOUT`] ([`PurgeApiError::TooLarge`], [`PurgeApiError::Timeout`]).
///
/// # Errors
/// The first check that fails.
pub fn admit<'a>(
    method: &str,
    authorization: impl IntoIterator<Item = &'a [u8]>,
    content_length: Option<u64>,
    keys: &[Secret],
) -> Result<(), PurgeApiError> {
    if method != "POST" {
        return Err(PurgeApiError::Method);
    }
    authorize(authorization, keys)?;
    if content_length.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(PurgeApiError::TooLarge);
    }
    Ok(())
}

/// imgix's purge document, read: the URL to purge and the `sub_image` flag as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    /// `data.attributes.url`.
    pub url: String,
    /// `data.attributes.sub_image` (default false). ixproxy renders no marks nor blends, so a
    /// sub-image purge is a purge of that URL; `source_id`, which imgix requires with it, is
    /// not needed (the URL's host names the source).
    pub sub_image: bool,
}

/// Reads the body: a JSON object whose `data` is an object with `type` `"purges"` and
/// `attributes.url` a string (`attributes.sub_image`, if present, a boolean). Other members
/// (`jsonapi`, `meta`, `data.id`, `attributes.source_id`) are allowed and ignored, as JSON:API
/// lets a server do.
///
/// # Errors
/// [`PurgeApiError::BadDocument`], naming the member (`data.type: must be "purges"`).
pub fn parse_document(body: &[u8]) -> Result<PurgeRequest, PurgeApiError> {
    let bad = |m: &str| PurgeApiError::BadDocument(m.to_owned());
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| PurgeApiError::BadDocument(format!("body: not json ({e})")))?;
    let data = value
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| bad("data: must be an object"))?;
    if data.get("type").and_then(Value::as_str) != Some("purges") {
        return Err(bad("data.type: must be \"purges\""));
    }
    let attributes = data
        .get("attributes")
        .filter(|a| a.is_object())
        .ok_or_else(|| bad("data.attributes: must be an object"))?;
    let url = attributes
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("data.attributes.url: must be a string"))?;
    let sub_image = match attributes.get("sub_image") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("data.attributes.sub_image: must be a boolean")),
    };
    Ok(PurgeRequest {
        url: url.to_owned(),
        sub_image,
    })
}

/// The entries a purge URL names: one source and one decoded origin URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeTarget {
    /// The name of the source whose hosts hold the URL's host.
    pub source: String,
    /// The origin URL the path decodes to, normalised as a request's (the cache key's URL).
    pub origin_url: String,
}

impl PurgeTarget {
    /// The cache keys to remove (one: this source's entry for the origin URL, whatever params
    /// the URLs that filled it carried); what a runtime's purge of
    /// ([`Self::source`], [`Self::origin_url`]) removes.
    pub fn keys(&self) -> Vec<String> {
        purge_keys([self.source.as_str()], &self.origin_url)
    }
}

/// Resolves a purge URL, `http(s)://<source host>[:port]/<origin URL>[?query][#fragment]`:
/// the host picks the source (port ignored, as for a request's `Host`), the path decodes to
/// the origin URL as a request path does ([`decode_origin`]: encoded, or the raw
/// `/https://…` form), the query and fragment are ignored.
///
/// # Errors
/// [`PurgeApiError::BadUrl`] for a URL that is not absolute http(s), has userinfo, no host or
/// no path,
/// or whose path is not a usable origin URL; [`PurgeApiError::UnknownSource`] for a host no
/// source serves.
pub fn resolve(sources: &Sources, url: &str) -> Result<PurgeTarget, PurgeApiError> {
    let bad = |m: &str| PurgeApiError::BadUrl(m.to_owned());
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| {
            url.get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .map(|_| &url[scheme.len()..])
        })
        .ok_or_else(|| bad("must be an absolute http or https url"))?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(bad("must not contain userinfo"));
    }
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let source = sources
        .by_host(authority)
        .ok_or(PurgeApiError::UnknownSource)?;
    if path.len() <= 1 {
        return Err(bad("has no origin url in its path"));
    }
    let origin = decode_origin(path).map_err(|e| PurgeApiError::BadUrl(e.to_string()))?;
    Ok(PurgeTarget {
        source: source.name.clone(),
        origin_url: origin.to_url_string(),
    })
}

/// The answer of a purge without `cache.peers`: [`fleet::PURGED_STATUS`](crate::fleet::PURGED_STATUS) and imgix's JSON:API purge
/// resource (`data: {type: "purges", id, attributes: {url, sub_image}}`, `jsonapi: {version:
/// "1.0"}`), with the source and the number of entries removed in `meta` (JSON:API's place for
/// what is not part of the resource).
pub fn purged_answer(
    id: &str,
    request: &PurgeRequest,
    target: &PurgeTarget,
    purged: usize,
) -> (u16, Vec<u8>) {
    let meta =
        json!({ "source": target.source, "origin_url": target.origin_url, "purged": purged });
    (
        crate::fleet::PURGED_STATUS,
        document(resource(id, request, meta)),
    )
}

/// imgix's purge resource with `meta`.
fn resource(id: &str, request: &PurgeRequest, meta: Value) -> Value {
    json!({
        "data": {
            "type": "purges",
            "id": id,
            "attributes": { "url": request.url, "sub_image": request.sub_image },
        },
        "jsonapi": jsonapi(),
        "meta": meta,
    })
}

/// The answer of a purge applied here and forwarded to `cache.peers` ([`crate::fleet`]): with
/// every peer confirmed, [`purged_answer`] ([`fleet::PURGED_STATUS`](crate::fleet::PURGED_STATUS)) whose `meta` also holds `peers:
/// {confirmed: [{peer, purged}], failed: []}`; with a peer failed, 502 and a JSON:API error
/// document (an error document holds no `data`) with the same `meta`, so a client that retries
/// on failure purges again (harmless) and one that reads `meta` sees which instance may still
/// serve it.
pub fn fleet_answer(
    id: &str,
    request: &PurgeRequest,
    target: &PurgeTarget,
    purged: usize,
    report: &FleetReport,
) -> (u16, Vec<u8>) {
    let meta = json!({
        "source": target.source,
        "origin_url": target.origin_url,
        "purged": purged,
        "peers": report.json(),
    });
    let status = report.status();
    let value = if status == crate::fleet::PURGED_STATUS {
        resource(id, request, meta)
    } else {
        json!({
            "errors": [{
                "id": id,
                "status": status.to_string(),
                "title": title(status),
                "detail": report.failure_summary(),
            }],
            "jsonapi": jsonapi(),
            "meta": meta,
        })
    };
    (status, document(value))
}

/// The metric label of an answered purge (beside [`PurgeApiError::LABELS`]).
pub const PURGED_LABEL: &str = "purged";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{cache_key, key_of};
    use crate::config::{MapSecrets, RawConfig};
    use crate::sign::{sign_url, SignOptions};
    use crate::{decide, Decision, RequestInfo};

    fn sources() -> Sources {
        RawConfig::from_yaml(
            "sources:\n  - {name: assets, hosts: [assets.test, img.test], secure_url_tokens: [t]}\n  \
             - {name: other, hosts: [other.test], secure_url_tokens: [t]}\n",
        )
        .and_then(|raw| raw.validate(&MapSecrets::new()))
        .expect("valid")
        .sources
    }

    fn keys() -> Vec<Secret> {
        vec![Secret::new("first-key-0123456789"), Secret::new("second")]
    }

    /// The body imgix-rb's `Imgix::Client#purge` sends (`json_data_from`, imgix/imgix-rb
    /// lib/imgix/client.rb): `attributes` before `type`.
    fn imgix_rb_body(url: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"data": {"attributes": {"url": url}, "type": "purges"}}))
            .expect("json")
    }

    #[test]
    fn a_bearer_key_of_the_list_is_admitted_and_nothing_else() {
        let ok = |v: &[u8]| authorize([v], &keys());
        assert_eq!(ok(b"Bearer first-key-0123456789"), Ok(()));
        assert_eq!(ok(b"bearer second"), Ok(()));
        assert_eq!(ok(b"Bearer   second "), Ok(()));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer secon",
            b"Bearer second2",
            b"Bearer SECOND",
            b"Basic second",
            b"second",
            b"Bearer \xff",
        ] {
            assert_eq!(
                ok(bad),
                Err(PurgeApiError::Unauthorized),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            authorize([], &keys()),
            Err(PurgeApiError::Unauthorized),
            "none"
        );
        assert_eq!(
            authorize([&b"Bearer second"[..], b"Bearer second"], &keys()),
            Err(PurgeApiError::Unauthorized),
            "two fields"
        );
        assert_eq!(
            authorize([&b"Bearer x"[..]], &[]),
            Err(PurgeApiError::Unauthorized)
        );
    }

    #[test]
    fn admission_checks_method_key_and_declared_length_in_order() {
        let auth = [&b"Bearer second"[..]];
        let admit = |method, auth: &[&[u8]], len| admit(method, auth.iter().copied(), len, &keys());
        assert_eq!(admit("POST", &auth, Some(120)), Ok(()));
        assert_eq!(admit("POST", &auth, None), Ok(()));
        assert_eq!(admit("GET", &[], None), Err(PurgeApiError::Method));
        assert_eq!(admit("POST", &[], None), Err(PurgeApiError::Unauthorized));
        assert_eq!(admit("POST", &auth, Some(MAX_BODY_BYTES as u64)), Ok(()));
        assert_eq!(
            admit("POST", &auth, Some(MAX_BODY_BYTES as u64 + 1)),
            Err(PurgeApiError::TooLarge)
        );
    }

    #[test]
    fn the_document_is_imgix_s_shape() {
        let url = "https://assets.test/https%3A%2F%2Fo.test%2Fa.png";
        assert_eq!(
            parse_document(&imgix_rb_body(url)),
            Ok(PurgeRequest {
                url: url.to_owned(),
                sub_image: false
            })
        );
        // imgix's own bulk-purge script sends `sub_image: false`; ids and meta are allowed.
        let with_extras = json!({"data": {"type": "purges", "id": "x", "attributes":
            {"url": url, "sub_image": true, "source_id": "5e1"}}, "jsonapi": {"version": "1.0"}});
        assert_eq!(
            parse_document(&serde_json::to_vec(&with_extras).expect("json")).map(|r| r.sub_image),
            Ok(true)
        );
        for (body, member) in [
            (&b"{"[..], "body"),
            (b"", "body"),
            (b"[]", "data"),
            (br#"{"url":"x"}"#, "data"),
            (br#"{"data":[]}"#, "data"),
            (br#"{"data":{"attributes":{"url":"x"}}}"#, "data.type"),
            (
                br#"{"data":{"type":"sources","attributes":{"url":"x"}}}"#,
                "data.type",
            ),
            (br#"{"data":{"type":"purges"}}"#, "data.attributes"),
            (
                br#"{"data":{"type":"purges","attributes":{}}}"#,
                "data.attributes.url",
            ),
            (
                br#"{"data":{"type":"purges","attributes":{"url":5}}}"#,
                "data.attributes.url",
            ),
            (
                br#"{"data":{"type":"purges","attributes":{"url":"x","sub_image":"yes"}}}"#,
                "data.attributes.sub_image",
            ),
        ] {
            let err = parse_document(body).expect_err(&String::from_utf8_lossy(body));
            assert!(
                matches!(&err, PurgeApiError::BadDocument(m) if m.starts_with(&format!("{member}:"))),
                "{err:?}"
            );
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn the_url_names_the_entries_a_signed_request_fills() {
        let sources = sources();
        let origin = "https://o.test/a.png?v=1";
        // What two signed variants of one URL are stored under.
        let keys: Vec<String> = [vec![("w", "100")], vec![("fm", "webp"), ("h", "5")]]
            .iter()
            .map(|params| {
                let params: Vec<(String, String)> = params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                let target = sign_url("t", origin, &params, &SignOptions::default());
                let info = RequestInfo {
                    method: "GET",
                    host: "img.test",
                    target: &target,
                };
                match decide(&sources, &info, 1_700_000_000) {
                    Decision::Forward(f) => cache_key(&f),
                    Decision::Reject(r) => panic!("{r:?}"),
                }
            })
            .collect();
        assert_eq!(keys[0], keys[1]);
        let signed = sign_url("t", origin, &[], &SignOptions::default());
        for url in [
            format!("https://assets.test{signed}"),
            "https://assets.test/https%3A%2F%2Fo.test%2Fa.png%3Fv%3D1".to_owned(),
            "HTTP://Assets.Test:8443/https%3A%2F%2Fo.test%2Fa.png%3Fv%3D1?w=1#frag".to_owned(),
        ] {
            let target = resolve(&sources, &url).expect(&url);
            assert_eq!(target.source, "assets");
            assert_eq!(target.keys(), [keys[0].clone()], "{url}");
        }
        // The raw form: the query is the gateway's, as on a request.
        let raw = resolve(&sources, "https://assets.test/https://o.test/a.png?v=1").expect("raw");
        assert_eq!(raw.keys(), [key_of("assets", "https://o.test/a.png")]);
        assert_eq!(
            resolve(
                &sources,
                "https://other.test/https%3A%2F%2Fo.test%2Fa.png%3Fv%3D1"
            )
            .map(|t| t.source),
            Ok("other".to_owned())
        );
    }

    #[test]
    fn bad_and_unknown_urls() {
        let sources = sources();
        assert_eq!(
            resolve(&sources, "https://nobody.test/https%3A%2F%2Fo.test%2F"),
            Err(PurgeApiError::UnknownSource)
        );
        for url in [
            "assets.test/https%3A%2F%2Fo.test%2F",
            "ftp://assets.test/https%3A%2F%2Fo.test%2F",
            "https://u@assets.test/https%3A%2F%2Fo.test%2F",
            "https://assets.test",
            "https://assets.test/",
            "https://assets.test/?url=x",
            "https://assets.test/ftp%3A%2F%2Fo.test%2F",
            "https://assets.test/https%3A%2F%2Fo.test%2F%0A",
            "https://assets.test/%zz",
            "https:///https%3A%2F%2Fo.test%2F",
            "",
        ] {
            let err = resolve(&sources, url).expect_err(url);
            assert!(matches!(err, PurgeApiError::BadUrl(_)), "{url}: {err:?}");
        }
    }

    #[test]
    fn answers_are_json_api_documents() {
        let request = PurgeRequest {
            url: "https://assets.test/https%3A%2F%2Fo.test%2Fa.png".to_owned(),
            sub_image: false,
        };
        let target = resolve(&sources(), &request.url).expect("target");
        let id = answer_id([0xab; 12]);
        assert_eq!(id, "abababababababababababab");
        let (status, body) = purged_answer(&id, &request, &target, 1);
        assert_eq!(status, 200);
        let ok: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            ok,
            json!({"data": {"type": "purges", "id": id, "attributes": {"url": request.url,
                "sub_image": false}}, "jsonapi": {"version": "1.0"}, "meta": {"source": "assets",
                "origin_url": "https://o.test/a.png", "purged": 1}})
        );
        let err: Value = serde_json::from_slice(
            &PurgeApiError::BadDocument("data.type: must be \"purges\"".to_owned()).answer(&id),
        )
        .expect("json");
        assert_eq!(
            err,
            json!({"errors": [{"id": id, "status": "400", "title": "Bad Request",
                "detail": "data.type: must be \"purges\"", "source": {"pointer": "/data/type"}}],
                "jsonapi": {"version": "1.0"}})
        );
        let unauthorized: Value =
            serde_json::from_slice(&PurgeApiError::Unauthorized.answer(&id)).expect("json");
        assert_eq!(unauthorized["errors"][0]["status"], "401");
        assert!(unauthorized["errors"][0].get("source").is_none());
        let long = PurgeApiError::BadUrl("é".repeat(1000)).answer(&id);
        let long: Value = serde_json::from_slice(&long).expect("json");
        assert_eq!(
            long["errors"][0]["detail"]
                .as_str()
                .map(|d| d.chars().count()),
            Some(MAX_DETAIL_CHARS)
        );
        let statuses: Vec<(u16, &str)> = [
            PurgeApiError::Method,
            PurgeApiError::Unauthorized,
            PurgeApiError::TooLarge,
            PurgeApiError::Timeout,
            PurgeApiError::BadDocument(String::new()),
            PurgeApiError::BadUrl(String::new()),
            PurgeApiError::UnknownSource,
            PurgeApiError::Busy,
        ]
        .iter()
        .map(|e| (e.status(), e.label()))
        .collect();
        assert_eq!(
            PurgeApiError::Unauthorized.header(),
            Some(("www-authenticate", "Bearer realm=\"ixproxy\""))
        );
        assert_eq!(PurgeApiError::Method.header(), Some(("allow", "POST")));
        assert_eq!(PurgeApiError::TooLarge.header(), None);
        assert_eq!(PurgeApiError::Busy.header(), Some(("retry-after", "3")));
        let busy: Value = serde_json::from_slice(&PurgeApiError::Busy.answer("i")).expect("json");
        assert_eq!(busy["errors"][0]["title"], "Service Unavailable");
        assert_eq!(
            format!("{}\n", busy["errors"][0]["detail"].as_str().unwrap_or("")),
            crate::fleet::busy_text(),
            "one rule for both purges"
        );
        assert_eq!(
            statuses,
            [
                (405, "method"),
                (401, "unauthorized"),
                (413, "too_large"),
                (408, "timeout"),
                (400, "bad_document"),
                (400, "bad_url"),
                (404, "unknown_source"),
                (503, "busy")
            ]
        );
    }

    #[test]
    fn a_fleet_purge_answers_with_its_peers_and_502_when_one_failed() {
        use crate::fleet::{FleetReport, PeerResult};
        let request = PurgeRequest {
            url: "https://assets.test/https%3A%2F%2Fo.test%2Fa.png".to_owned(),
            sub_image: false,
        };
        let target = resolve(&sources(), &request.url).expect("target");
        let mut report = FleetReport {
            peers: vec![
                ("10.0.0.7:9901".into(), PeerResult::Confirmed(1)),
                ("10.0.0.6:9901".into(), PeerResult::Myself),
            ],
        };
        let (status, body) = fleet_answer("i", &request, &target, 1, &report);
        let ok: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(status, 200);
        // imgix's resource as without peers, `meta` gaining `peers`.
        let (alone_status, alone) = purged_answer("i", &request, &target, 1);
        assert_eq!(
            alone_status, status,
            "the same success with or without peers"
        );
        let mut alone: Value = serde_json::from_slice(&alone).expect("json");
        alone["meta"]["peers"] = json!({"confirmed": [{"peer": "10.0.0.7:9901", "purged": 1}],
                "failed": [], "self": ["10.0.0.6:9901"], "same": []});
        assert_eq!(ok, alone);

        report
            .peers
            .push(("10.0.0.8:9901".into(), PeerResult::Failed("refused".into())));
        let (status, body) = fleet_answer("i", &request, &target, 1, &report);
        let failed: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(status, 502);
        assert!(
            failed.get("data").is_none(),
            "JSON:API: errors without data"
        );
        assert_eq!(failed["errors"][0]["status"], "502");
        assert_eq!(failed["errors"][0]["title"], "Bad Gateway");
        assert_eq!(failed["meta"]["purged"], 1);
        assert_eq!(
            failed["meta"]["peers"]["failed"],
            json!([{"peer": "10.0.0.8:9901", "error": "refused"}])
        );
    }
}
