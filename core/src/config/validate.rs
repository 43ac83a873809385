//! The rules that turn the serde layer into the validated config (README: Configuration, Origin authentication).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::hosts::normalize_host;
use super::secrets::resolve;
use super::{
    CacheLimits, CacheTtl, CacheTtlBehavior, ClientLimits, ConfigError, HostPattern, Limits,
    RawBasicAuth, RawCache, RawLimits, RawOriginAuth, RawSource, RawUpstream, SecretResolver,
    Source, Sources, Upstream,
};
use crate::auth::{BasicAuth, OriginAuth, SigningKey};
use crate::secret::Secret;

/// Default gateway listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default `upstream.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `upstream.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `limits.max_request_target_bytes` (8 KiB).
pub const DEFAULT_MAX_REQUEST_TARGET_BYTES: usize = 8 * 1024;
/// Default `limits.max_request_headers`.
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
/// Default `limits.max_request_header_bytes` (32 KiB).
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;
/// Default `upstream.max_redirects`.
pub const DEFAULT_MAX_REDIRECTS: u32 = 3;
/// Default `upstream.max_body_bytes` (100 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;
/// Default `upstream.body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `limits.client_header_timeout`.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `limits.client_idle_timeout`.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `limits.client_write_timeout`.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `limits.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `sources[].cache_ttl` (one year, in seconds).
pub const DEFAULT_CACHE_TTL: u64 = 31_536_000;
/// Default `sources[].cache_ttl_error` (seconds).
pub const DEFAULT_CACHE_TTL_ERROR: u64 = 300;
/// Default `cache.max_bytes` (256 MiB).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default `cache.max_object_bytes` (8 MiB).
pub const DEFAULT_CACHE_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
/// Most redirect hops `upstream.max_redirects` may ask for.
pub const MAX_MAX_REDIRECTS: u32 = 20;
/// Longest `request_handshake`, in characters.
pub const MAX_HANDSHAKE_CHARS: usize = 256;
/// Longest `request_signing_key`, in characters.
pub const MAX_SIGNING_KEY_CHARS: usize = 32;

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Parses a config duration: a whole number followed by `ms`, `s`, `m` or `h` (`500ms`, `3s`,
/// `1m`, `2h`).
///
/// # Errors
/// A lower-case message when the text has another shape, overflows, or is zero (every duration in
/// the config is a timeout, and a zero timeout would fail every request).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let shape = || {
        format!(
            "invalid duration `{s}`: expected a whole number followed by ms, s, m or h \
             (e.g. 3s, 500ms)"
        )
    };
    if number.is_empty() {
        return Err(shape());
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration `{s}` is too large"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration `{s}` is too large"))
    };
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => seconds(60)?,
        "h" => seconds(3600)?,
        _ => return Err(shape()),
    };
    if duration.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    Ok(duration)
}

pub(super) fn socket_addr(
    value: Option<&str>,
    default: &str,
    path: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(default);
    text.parse().map_err(|_| {
        error(
            path,
            format!("`{text}` is not a socket address (expected ip:port, e.g. 127.0.0.1:8080)"),
        )
    })
}

/// A duration field: `default` when absent.
fn duration(value: Option<&str>, default: Duration, path: &str) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|m| error(path, m)),
    }
}

pub(super) fn client_limits(raw: &RawLimits) -> Result<ClientLimits, ConfigError> {
    let max_connections = match raw.max_connections {
        Some(0) => return Err(error("limits.max_connections", "must be greater than zero")),
        other => other.unwrap_or(DEFAULT_MAX_CONNECTIONS),
    };
    let max_connections_per_client = raw.max_connections_per_client.unwrap_or(0);
    // A share as large as the whole could never refuse anything: a mistake, not a setting.
    if max_connections_per_client > max_connections {
        return Err(error(
            "limits.max_connections_per_client",
            format!("at most limits.max_connections ({max_connections}); 0 = no per-client limit"),
        ));
    }
    Ok(ClientLimits {
        header_timeout: duration(
            raw.client_header_timeout.as_deref(),
            DEFAULT_CLIENT_HEADER_TIMEOUT,
            "limits.client_header_timeout",
        )?,
        idle_timeout: duration(
            raw.client_idle_timeout.as_deref(),
            DEFAULT_CLIENT_IDLE_TIMEOUT,
            "limits.client_idle_timeout",
        )?,
        write_timeout: duration(
            raw.client_write_timeout.as_deref(),
            DEFAULT_CLIENT_WRITE_TIMEOUT,
            "limits.client_write_timeout",
        )?,
        max_connections,
        max_connections_per_client,
    })
}

pub(super) fn cache(raw: Option<&RawCache>) -> Result<Option<CacheLimits>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES);
    if max_bytes == 0 {
        for (set, field) in [
            (raw.disk.is_some(), "cache.disk"),
            (raw.peers.is_some(), "cache.peers"),
        ] {
            if set {
                return Err(error(
                    field,
                    "needs the memory tier (cache.max_bytes is 0: no cache)",
                ));
            }
        }
        return Ok(None);
    }
    let max_object_bytes = match raw.max_object_bytes {
        Some(0) => return Err(error("cache.max_object_bytes", "must be greater than zero")),
        other => other.unwrap_or(DEFAULT_CACHE_MAX_OBJECT_BYTES),
    };
    // With a disk tier, an object too large for memory is stored on disk only.
    if max_object_bytes > max_bytes && raw.disk.is_none() {
        return Err(error(
            "cache.max_object_bytes",
            format!("larger than cache.max_bytes ({max_bytes})"),
        ));
    }
    Ok(Some(CacheLimits {
        max_bytes,
        max_object_bytes,
        disk: super::tiers::disk(raw.disk.as_ref(), max_object_bytes)?,
        peers: super::tiers::peers(raw.peers.as_ref())?,
    }))
}

fn cache_ttl(raw: &RawSource, path: &str) -> Result<CacheTtl, ConfigError> {
    let behavior = match raw.cache_ttl_behavior.as_deref() {
        None | Some("respect_origin") => CacheTtlBehavior::RespectOrigin,
        Some("override_origin") => CacheTtlBehavior::OverrideOrigin,
        Some("enforce_minimum") => CacheTtlBehavior::EnforceMinimum,
        Some(other) => {
            return Err(error(
                format!("{path}.cache_ttl_behavior"),
                format!("`{other}` is not one of respect_origin, override_origin, enforce_minimum"),
            ))
        }
    };
    Ok(CacheTtl {
        behavior,
        ttl: raw.cache_ttl.unwrap_or(DEFAULT_CACHE_TTL),
        error_ttl: raw.cache_ttl_error.unwrap_or(DEFAULT_CACHE_TTL_ERROR),
    })
}

pub(super) fn upstream(raw: RawUpstream) -> Result<Upstream, ConfigError> {
    if raw.ca_file.as_deref() == Some("") {
        return Err(error("upstream.ca_file", "empty path"));
    }
    Ok(Upstream {
        ca_file: raw.ca_file,
        connect_timeout: duration(
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
            "upstream.connect_timeout",
        )?,
        timeout: duration(raw.timeout.as_deref(), DEFAULT_TIMEOUT, "upstream.timeout")?,
        body_timeout: duration(
            raw.body_timeout.as_deref(),
            DEFAULT_BODY_TIMEOUT,
            "upstream.body_timeout",
        )?,
    })
}

fn limits(upstream: &RawUpstream, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let positive = |value: Option<usize>, default: usize, path: &str| match value {
        None => Ok(default),
        Some(0) => Err(error(path, "must be greater than zero")),
        Some(n) => Ok(n),
    };
    let max_redirects = upstream.max_redirects.unwrap_or(DEFAULT_MAX_REDIRECTS);
    if max_redirects > MAX_MAX_REDIRECTS {
        return Err(error(
            "upstream.max_redirects",
            format!("at most {MAX_MAX_REDIRECTS}"),
        ));
    }
    let max_body_bytes = match upstream.max_body_bytes {
        Some(0) => {
            return Err(error(
                "upstream.max_body_bytes",
                "must be greater than zero",
            ))
        }
        other => other.unwrap_or(DEFAULT_MAX_BODY_BYTES),
    };
    Ok(Limits {
        max_request_target_bytes: positive(
            raw.max_request_target_bytes,
            DEFAULT_MAX_REQUEST_TARGET_BYTES,
            "limits.max_request_target_bytes",
        )?,
        max_request_headers: positive(
            raw.max_request_headers,
            DEFAULT_MAX_REQUEST_HEADERS,
            "limits.max_request_headers",
        )?,
        max_request_header_bytes: positive(
            raw.max_request_header_bytes,
            DEFAULT_MAX_REQUEST_HEADER_BYTES,
            "limits.max_request_header_bytes",
        )?,
        max_redirects,
        max_body_bytes,
        max_inflight_per_source: raw.max_inflight_per_source.unwrap_or(0),
    })
}

/// Validates `sources` (path prefix `sources`) with the limits from `upstream` and `limits`,
/// shared by the YAML file and the Envoy plugin JSON.
pub(super) fn sources(
    raw: Vec<RawSource>,
    raw_upstream: &RawUpstream,
    raw_limits: &RawLimits,
    secrets: &dyn SecretResolver,
) -> Result<Sources, ConfigError> {
    let limits = limits(raw_upstream, raw_limits)?;
    if raw.is_empty() {
        return Err(error("sources", "must list at least one source"));
    }
    let mut list: Vec<Source> = Vec::with_capacity(raw.len());
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw_source) in raw.into_iter().enumerate() {
        let path = format!("sources[{i}]");
        if raw_source.name.is_empty() {
            return Err(error(format!("{path}.name"), "empty source name"));
        }
        if !crate::metrics::is_labelable(&raw_source.name) {
            return Err(error(
                format!("{path}.name"),
                "a source name needs at least one letter or digit",
            ));
        }
        if let Some(other) = list.iter().position(|s| s.name == raw_source.name) {
            return Err(error(
                format!("{path}.name"),
                format!(
                    "duplicate source name `{}` (also sources[{other}])",
                    raw_source.name
                ),
            ));
        }
        let label = crate::metrics::label(&raw_source.name);
        if let Some(other) = list.iter().position(|s| s.label == label) {
            return Err(error(
                format!("{path}.name"),
                format!(
                    "`{}` and sources[{other}] `{}` share the metrics label `{label}`",
                    raw_source.name, list[other].name
                ),
            ));
        }
        if raw_source.hosts.is_empty() {
            return Err(error(
                format!("{path}.hosts"),
                "must list at least one host",
            ));
        }
        let mut hosts = Vec::with_capacity(raw_source.hosts.len());
        for (j, host) in raw_source.hosts.iter().enumerate() {
            let host_path = format!("{path}.hosts[{j}]");
            let key = normalize_host(host)
                .map_err(|m| error(&host_path, m))?
                .into_key();
            if let Some(&owner) = index.get(&key) {
                let by = if owner == i {
                    "this source".to_owned()
                } else {
                    format!("source `{}`", list[owner].name)
                };
                return Err(error(
                    host_path,
                    format!("host `{key}` is already served by {by}"),
                ));
            }
            index.insert(key.clone(), i);
            hosts.push(key);
        }
        let mut source = source(raw_source, hosts, secrets, &path)?;
        source.position = i;
        list.push(source);
    }
    Ok(Sources {
        list: list.into_iter().map(Arc::new).collect(),
        limits,
        index,
    })
}

fn source(
    mut raw: RawSource,
    hosts: Vec<String>,
    secrets: &dyn SecretResolver,
    path: &str,
) -> Result<Source, ConfigError> {
    let cache_ttl = cache_ttl(&raw, path)?;
    let fallbacks = super::fallbacks::RawFallbacks::take(&mut raw);
    let tokens_path = format!("{path}.secure_url_tokens");
    if raw.secure_url_tokens.is_empty() {
        return Err(error(tokens_path, "must list at least one token"));
    }
    let mut tokens = Vec::with_capacity(raw.secure_url_tokens.len());
    let mut token_labels: Vec<String> = Vec::with_capacity(raw.secure_url_tokens.len());
    for (k, token) in raw.secure_url_tokens.iter().enumerate() {
        let token_path = format!("{tokens_path}[{k}]");
        let value = resolve(&token.secret, secrets, &token_path)?;
        if value.is_empty() {
            return Err(error(token_path, "empty token"));
        }
        tokens.push(Secret::new(value));
        let token_label = match &token.id {
            Some(id) => {
                crate::metrics::check_token_id(id)
                    .map_err(|m| error(format!("{token_path}.id"), m))?;
                id.clone()
            }
            None => k.to_string(),
        };
        if let Some(other) = token_labels.iter().position(|l| *l == token_label) {
            return Err(error(
                format!("{token_path}.id"),
                format!("`{token_label}` already names secure_url_tokens[{other}]"),
            ));
        }
        token_labels.push(token_label);
    }
    let allowed_origin_hosts = match &raw.allowed_origin_hosts {
        Some(patterns) => Some(host_patterns(
            patterns,
            &format!("{path}.allowed_origin_hosts"),
        )?),
        None => None,
    };
    let extras = super::imgix::extras(&raw, secrets, path)?;
    let auth_hosts_given = raw.origin_auth.as_ref().is_some_and(|a| a.hosts.is_some());
    let auth_path = format!("{path}.origin_auth");
    let (origin_auth, origin_auth_hosts) = match raw.origin_auth {
        Some(mut auth) => {
            let hosts = auth.hosts.take();
            let auth = origin_auth(auth, secrets, &auth_path)?;
            let hosts =
                match (hosts, &allowed_origin_hosts) {
                    (Some(patterns), _) => host_patterns(&patterns, &format!("{auth_path}.hosts"))?,
                    (None, Some(allowed)) => allowed.clone(),
                    (None, None) if auth.is_configured() => return Err(error(
                        format!("{auth_path}.hosts"),
                        "origin auth needs the hosts that may receive it (origin_auth.hosts or \
                         allowed_origin_hosts); without them the credentials would go to any \
                         host a signed url names",
                    )),
                    (None, None) => Vec::new(),
                };
            (auth, hosts)
        }
        None => (OriginAuth::default(), Vec::new()),
    };
    let origin_auth_hosts = super::imgix::header_hosts(
        origin_auth_hosts,
        auth_hosts_given,
        allowed_origin_hosts.as_ref(),
        &extras,
        path,
    )?;
    let allowed_content_types = match raw.allowed_content_types {
        Some(types) => Some(
            types
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    content_type_prefix(t)
                        .map_err(|m| error(format!("{path}.allowed_content_types[{k}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let source = Source {
        position: 0,
        cache_ttl,
        label: crate::metrics::label(&raw.name),
        name: raw.name,
        hosts,
        tokens,
        token_labels,
        origin_auth,
        allowed_origin_hosts,
        origin_auth_hosts,
        allow_private_origins: raw.allow_private_origins,
        allowed_content_types,
        enabled: extras.enabled,
        cors: extras.cors,
        origin_user_agent: extras.origin_user_agent,
        origin_headers: extras.origin_headers,
        image_missing: None,
        image_error: None,
    };
    fallbacks.validate(source, path)
}

/// The host patterns of a list at `path` (`…allowed_origin_hosts`, `…origin_auth.hosts`).
fn host_patterns(patterns: &[String], path: &str) -> Result<Vec<HostPattern>, ConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(k, p)| HostPattern::parse(p).map_err(|m| error(format!("{path}[{k}]"), m)))
        .collect()
}

/// A Content-Type prefix such as `image/` or `application/pdf`: a media type token, optionally
/// with the subtype, lower-cased.
fn content_type_prefix(value: &str) -> Result<String, String> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let (kind, subtype) = value
        .split_once('/')
        .ok_or_else(|| format!("`{value}` is not a media type prefix (e.g. image/)"))?;
    if !token(kind) || !(subtype.is_empty() || token(subtype)) {
        return Err(format!(
            "`{value}` is not a media type prefix (e.g. image/)"
        ));
    }
    Ok(value.to_ascii_lowercase())
}

fn origin_auth(
    raw: RawOriginAuth,
    secrets: &dyn SecretResolver,
    path: &str,
) -> Result<OriginAuth, ConfigError> {
    let basic = match raw.basic_auth {
        Some(basic) => Some(basic_auth(basic, secrets, &format!("{path}.basic_auth"))?),
        None => None,
    };
    let handshake = match raw.request_handshake {
        Some(secret) => {
            let field = format!("{path}.request_handshake");
            let value = resolve(&secret, secrets, &field)?;
            check_handshake(&value).map_err(|m| error(field, m))?;
            Some(Secret::new(value))
        }
        None => None,
    };
    let signing_key = match raw.request_signing_key {
        Some(secret) => {
            let field = format!("{path}.request_signing_key");
            let value = resolve(&secret, secrets, &field)?;
            check_signing_key(&value).map_err(|m| error(field, m))?;
            Some(SigningKey::new(Secret::new(value)))
        }
        None => None,
    };
    Ok(OriginAuth {
        basic,
        handshake,
        signing_key,
    })
}

fn basic_auth(
    raw: RawBasicAuth,
    secrets: &dyn SecretResolver,
    path: &str,
) -> Result<BasicAuth, ConfigError> {
    let part = |secret, field: &str| {
        let field = format!("{path}.{field}");
        let value = resolve(secret, secrets, &field)?;
        check_basic_part(&value).map_err(|m| error(field, m))?;
        Ok::<_, ConfigError>(Secret::new(value))
    };
    let username = part(&raw.username, "username")?;
    if username.expose().is_empty() {
        return Err(error(format!("{path}.username"), "empty user name"));
    }
    let password = part(&raw.password, "password")?;
    Ok(BasicAuth { username, password })
}

/// RFC 5234 CTL: %x00-1F and %x7F.
fn is_ctl(c: char) -> bool {
    c <= '\u{1f}' || c == '\u{7f}'
}

fn check_basic_part(value: &str) -> Result<(), String> {
    if value.contains(':') {
        return Err("must not contain `:`".into());
    }
    if value.chars().any(is_ctl) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn check_handshake(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty handshake".into());
    }
    if value.chars().count() > MAX_HANDSHAKE_CHARS {
        return Err(format!("longer than {MAX_HANDSHAKE_CHARS} characters"));
    }
    if value.chars().any(is_ctl) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn check_signing_key(value: &str) -> Result<(), String> {
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_SIGNING_KEY_CHARS {
        return Err(format!(
            "must be 1 to {MAX_SIGNING_KEY_CHARS} characters long"
        ));
    }
    if value.chars().any(|c| c > '\u{ff}') {
        return Err("must contain latin-1 characters only (u+0000 to u+00ff)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "3", "3 s", "-3s", "1.5s", "3sec", "soon", "3S"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("expected a whole number"), "{bad}: {err}");
        }
        assert!(parse_duration("0s")
            .expect_err("zero")
            .contains("greater than zero"));
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("99999999999999999999s")
            .expect_err("overflow")
            .contains("too large"));
        assert!(parse_duration("9999999999999999999h")
            .expect_err("overflow")
            .contains("too large"));
    }

    #[test]
    fn basic_auth_parts() {
        assert!(check_basic_part("user").is_ok());
        assert!(check_basic_part("pässwörd with spaces").is_ok());
        assert!(check_basic_part("a:b").is_err());
        assert!(check_basic_part("a\tb").is_err());
        assert!(check_basic_part("a\u{7f}").is_err());
    }

    #[test]
    fn handshake_limits() {
        assert!(
            check_handshake(&"é".repeat(256)).is_ok(),
            "characters, not bytes"
        );
        assert!(check_handshake(&"x".repeat(257)).is_err());
        assert!(check_handshake("").is_err());
        assert!(check_handshake("a\nb").is_err());
    }

    #[test]
    fn signing_key_limits() {
        assert!(check_signing_key("k").is_ok());
        assert!(check_signing_key(&"ÿ".repeat(32)).is_ok());
        assert!(check_signing_key(&"k".repeat(33)).is_err());
        assert!(check_signing_key("").is_err());
        assert!(check_signing_key("€").is_err());
    }
}
