//! The config model of the README's Configuration section in two layers: strict serde structs ([`RawConfig`], unknown fields
//! rejected) and the validated [`Config`] the runtimes use, which cannot hold an invalid state.
//!
//! Parsing ([`RawConfig::from_yaml`], [`RawPluginConfig::from_json`]) checks syntax, types and
//! field names; `validate` resolves secrets and applies every rule. Either way an error names the
//! field path (`sources[1].origin_auth.request_handshake`) and never contains a secret value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::OriginAuth;
use crate::cors::Cors;
use crate::identity::{OriginHeader, OriginUserAgent};
use crate::secret::Secret;

mod fallbacks;
mod hosts;
mod imgix;
mod operating;
mod purge;
mod reload;
mod secrets;
mod tiers;
mod validate;
mod warnings;

pub use operating::{
    AccessLogFormat, Operating, RawCertificate, RawServer, RawTls, Tls, TlsCertificate, TlsFiles,
    DEFAULT_GRACE_PERIOD, MAX_THREADS,
};
pub use purge::MIN_PURGE_API_KEY_CHARS;
pub use reload::{restart_required, ReloadResult};
pub use secrets::{DeferredSecrets, MapSecrets, DEFERRED_PLACEHOLDER};
pub use tiers::{
    disk_block_bytes, disk_blocks, disk_tombstone_bytes, DiskTier, PeerAddr, Peers, RawCacheDisk,
    RawCachePeers, DISK_ENTRY_OVERHEAD_BYTES, MIN_DISK_BLOCKS,
};
pub use validate::{
    parse_duration, DEFAULT_ADMIN_LISTEN, DEFAULT_BODY_TIMEOUT, DEFAULT_CACHE_MAX_BYTES,
    DEFAULT_CACHE_MAX_OBJECT_BYTES, DEFAULT_CACHE_TTL, DEFAULT_CACHE_TTL_ERROR,
    DEFAULT_CLIENT_HEADER_TIMEOUT, DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_CLIENT_WRITE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REDIRECTS, DEFAULT_MAX_REQUEST_HEADERS, DEFAULT_MAX_REQUEST_HEADER_BYTES,
    DEFAULT_MAX_REQUEST_TARGET_BYTES, DEFAULT_TIMEOUT, MAX_HANDSHAKE_CHARS, MAX_MAX_REDIRECTS,
    MAX_SIGNING_KEY_CHARS,
};
pub use warnings::{warnings, ConfigWarning, MIN_TOKEN_CHARS};

/// An error in a config file; `path` names the field (`sources[1].origin_auth.request_handshake`).
///
/// Displays as `path: message`, or just the message for whole-document errors (empty path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", path_prefix(path))]
pub struct ConfigError {
    /// Field path, e.g. `sources[0].hosts[1]`; empty for whole-document errors.
    pub path: String,
    /// What is wrong, lower-case.
    pub message: String,
}

/// A secret as written in the config: a literal, `{env: NAME}` or `{file: PATH}`.
///
/// Deserializing accepts exactly these three shapes; anything else (a number, a map with other
/// or more keys) is an error that does not quote the value. `Debug` prints a literal as `***`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SecretRef {
    /// The value itself.
    Literal(String),
    /// `{env: NAME}`.
    Env {
        /// Variable name.
        env: String,
    },
    /// `{file: PATH}` (native runtime only).
    File {
        /// File path; the value is the file's content without a trailing newline.
        file: String,
    },
}

/// One `secure_url_tokens` entry: a secret, optionally with an `id` that names it in metrics
/// (`{id: 2026-q4, env: TOKEN}`, `{id: old, value: literal}`); without one, its position does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawToken {
    /// The metrics name of this token (`[A-Za-z0-9_-]`, at most 64), unique in its source.
    pub id: Option<String>,
    /// The token itself.
    pub secret: SecretRef,
}

impl From<SecretRef> for RawToken {
    fn from(secret: SecretRef) -> Self {
        RawToken { id: None, secret }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Literal(_) => f.write_str("Literal(***)"),
            SecretRef::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            SecretRef::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// How a runtime turns `{env: …}` / `{file: …}` into values.
pub trait SecretResolver {
    /// Value of environment variable `name`.
    ///
    /// # Errors
    /// A lower-case message (e.g. `environment variable OLD_TOKEN is not set`).
    fn env(&self, name: &str) -> Result<String, String>;
    /// Content of file `path`.
    ///
    /// # Errors
    /// A lower-case message (unreadable, or not supported by this runtime).
    fn file(&self, path: &str) -> Result<String, String>;
}

/// Top-level YAML document (serde layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the gateway serves (default `127.0.0.1:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Admin listener (default `127.0.0.1:9901`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Upstream settings.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Request limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: RawLimits,
    /// The response cache (absent or `max_bytes: 0` = no cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RawCache>,
    /// Worker threads and the SIGTERM drain (native gateway).
    #[serde(default, skip_serializing_if = "is_default")]
    pub server: RawServer,
    /// HTTPS on `listen` (native gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// HTTP/2 with prior knowledge on a plain `listen` (native gateway).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// `json` (default), `text` or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogFormat>,
    /// CIDRs whose `X-Forwarded-For` is believed for the client address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Sources.
    pub sources: Vec<RawSource>,
    /// The keys of imgix's purge API on the admin listener (`POST /api/v1/purge`, native
    /// gateway), each a secret; none = no purge API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purge_api_keys: Vec<SecretRef>,
}

/// `cache:` (serde layer): the response cache, all sources together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Bodies held in memory, all sources together (default 256 MiB; 0 = no cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Larger responses are streamed, never cached (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<u64>,
    /// The second tier on disk (SPEC §16); absent = memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<RawCacheDisk>,
    /// The instances a purge is also applied on (SPEC §16); absent = this one only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<RawCachePeers>,
}

/// `limits:` (serde layer): bounds on what a client may send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Longest request target (path and query) in bytes (default 8192) → 414.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_target_bytes: Option<usize>,
    /// Most request header fields (default 100) → 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers: Option<usize>,
    /// Largest total of request header names and values in bytes (default 32768) → 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_header_bytes: Option<usize>,
    /// The whole request header must arrive within this (default 10s), else the connection
    /// closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_header_timeout: Option<String>,
    /// A keep-alive connection idle between requests this long is closed (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout: Option<String>,
    /// A client that accepts no response bytes for this long is dropped (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_write_timeout: Option<String>,
    /// Client connections open at once (default 10000); more are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Client connections open at once from one client address (default 0 = no limit; native
    /// gateway only); more from that address are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<usize>,
    /// Origin fetches in flight per source (default 0 = unlimited); over it → 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight_per_source: Option<u32>,
}

/// `upstream:` (serde layer). Durations are strings such as `3s`, `500ms`, `1m`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Extra CA bundle (PEM) trusted for https origins besides system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Connect timeout (default 3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// Total timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Redirect hops followed per request (default 3; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_redirects: Option<u32>,
    /// Largest origin response body in bytes (default 100 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Longest pause inside an origin body (default 30s; not the whole download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<String>,
}

/// One entry of `sources:` (serde layer). Also the JSON the Envoy filter receives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Name used in logs and metrics.
    pub name: String,
    /// Host header values served by this source.
    pub hosts: Vec<String>,
    /// Tokens; a URL signed with any of them verifies.
    pub secure_url_tokens: Vec<RawToken>,
    /// Origin authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_auth: Option<RawOriginAuth>,
    /// Allowed origin host patterns; absent = any public host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origin_hosts: Option<Vec<String>>,
    /// Allow private/loopback origins (local development and tests only).
    #[serde(default)]
    pub allow_private_origins: bool,
    /// Content-Type prefixes (`image/`) an origin response must match; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_content_types: Option<Vec<String>>,
    /// `respect_origin` (default), `override_origin` or `enforce_minimum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_behavior: Option<String>,
    /// Seconds (default 31536000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<u64>,
    /// Seconds, for origin 4xx/5xx answers (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_error: Option<u64>,
    /// `false`: every request of the source is answered 410 (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The gateway's CORS headers: absent = `{allow_origin: "*"}`, `off`, or a list of origins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<RawCors>,
    /// `User-Agent` of origin requests (default `ixproxy/<version>`; `forward` = the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_user_agent: Option<String>,
    /// Fixed headers sent with the origin auth headers (name to secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_headers: Option<BTreeMap<String, SecretRef>>,
    /// Fallback image URL served when the origin answers 404 or 410 (SPEC §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_missing: Option<String>,
    /// Append the request's gateway params to `image_missing`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_missing_append_qs: bool,
    /// Fallback image URL served on any other origin failure (SPEC §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_error: Option<String>,
    /// Append the request's gateway params to `image_error`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_error_append_qs: bool,
}

/// `cors:` (serde layer): the word `off`, or `{allow_origin: ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawCors {
    /// `off` (any other word is a validation error naming the field).
    Keyword(String),
    /// `{allow_origin: "*"}` or `{allow_origin: [origins]}`.
    Allow(RawCorsAllow),
}

/// `cors: {allow_origin: ...}` (serde layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCorsAllow {
    /// `"*"` or a list of web origins (`scheme://host[:port]`).
    pub allow_origin: RawAllowOrigin,
}

/// `allow_origin:` (serde layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawAllowOrigin {
    /// `"*"` (any other single string is a validation error).
    One(String),
    /// Web origins.
    List(Vec<String>),
}

/// `origin_auth:` (serde layer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOriginAuth {
    /// Basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<RawBasicAuth>,
    /// Handshake header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_handshake: Option<SecretRef>,
    /// Per-request signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_signing_key: Option<SecretRef>,
    /// Origin host patterns that receive the origin auth headers (default: the source's
    /// `allowed_origin_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

/// `basic_auth:` (serde layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    /// User name.
    pub username: SecretRef,
    /// Password.
    pub password: SecretRef,
}

/// The plugin configuration of the Envoy filter: `{"sources": [...], "upstream": {...},
/// "limits": {...}}` (serde layer), the YAML file without its listeners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginConfig {
    /// Sources, as in the YAML file.
    pub sources: Vec<RawSource>,
    /// Upstream settings; the filter uses `max_redirects` and `max_body_bytes` (Envoy's
    /// clusters carry the rest).
    #[serde(default, skip_serializing_if = "is_default")]
    pub upstream: RawUpstream,
    /// Request limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: RawLimits,
    /// The access log format Envoy's bootstrap renders: the filter fills the log's properties
    /// only when there is a log (absent = `json`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogFormat>,
    /// Whether Envoy's bootstrap puts the response cache in front of the origin (the config has
    /// `cache:`): the filter then sends no variant-selecting client header to the origin
    /// ([`crate::request::is_forwarded_client_header`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Whether Envoy's bootstrap logs the client address with its own operator (no
    /// `trusted_proxies`: every stream of a request, a redirect's too, has the connection's peer
    /// as its downstream address), so the filter need not fill that log property.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_ip_by_envoy: bool,
    /// Whether Envoy's bootstrap has the custom response filter that takes the filter's
    /// fallback hops ([`crate::fallback::FALLBACK_HOP_HEADER`]); without it the filter serves no
    /// fallback image and answers as if the source had none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback_redirects: bool,
}

/// Validated upstream settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Extra CA bundle path.
    pub ca_file: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout: until the origin's response header, all redirect hops together.
    pub timeout: Duration,
    /// Longest pause inside an origin body.
    pub body_timeout: Duration,
}

/// How a source's `Cache-Control` is made from the origin's (imgix's source setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheTtlBehavior {
    /// The origin's `Cache-Control` as sent; none → `public, max-age=<cache_ttl>`.
    #[default]
    RespectOrigin,
    /// Always `public, max-age=<cache_ttl>`.
    OverrideOrigin,
    /// `public, max-age=max(origin max-age, cache_ttl)`.
    EnforceMinimum,
}

/// A source's validated cache TTL settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl {
    /// How the origin's `Cache-Control` is used.
    pub behavior: CacheTtlBehavior,
    /// Seconds (`cache_ttl`).
    pub ttl: u64,
    /// Seconds for origin 4xx/5xx answers (`cache_ttl_error`).
    pub error_ttl: u64,
}

impl Default for CacheTtl {
    fn default() -> Self {
        CacheTtl {
            behavior: CacheTtlBehavior::RespectOrigin,
            ttl: DEFAULT_CACHE_TTL,
            error_ttl: DEFAULT_CACHE_TTL_ERROR,
        }
    }
}

/// The validated response cache settings (present only when the cache is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bodies held in memory, all sources together (at least 1).
    pub max_bytes: u64,
    /// Larger responses are streamed, never cached. With a disk tier it may exceed
    /// `max_bytes`: such objects are stored on disk only.
    pub max_object_bytes: u64,
    /// The second tier on disk; `None` = memory only.
    pub disk: Option<DiskTier>,
    /// The instances a purge is also applied on; `None` = this one only.
    pub peers: Option<Peers>,
}

/// Validated client connection limits (`limits:` fields the listeners apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request header must arrive within this.
    pub header_timeout: Duration,
    /// Keep-alive idle time between requests.
    pub idle_timeout: Duration,
    /// Longest time a client may accept no response bytes.
    pub write_timeout: Duration,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Client connections open at once from one client address; 0 = no limit. Only the native
    /// gateway applies it.
    pub max_connections_per_client: usize,
}

impl ClientLimits {
    /// The fields set to something other than their default that only the native gateway
    /// applies (Envoy has no per-address connection limit): what `ixproxy envoy-config` warns
    /// about, with [`Operating::native_only_fields`].
    pub fn native_only_fields(&self) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if self.max_connections_per_client != 0 {
            fields.push("limits.max_connections_per_client");
        }
        fields
    }
}

/// Validated limits; everything on the request path needs, carried by [`Sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request target in bytes (→ 414).
    pub max_request_target_bytes: usize,
    /// Most request header fields (→ 431).
    pub max_request_headers: usize,
    /// Largest total of request header names and values in bytes (→ 431).
    pub max_request_header_bytes: usize,
    /// Redirect hops followed per request.
    pub max_redirects: u32,
    /// Largest origin response body in bytes.
    pub max_body_bytes: u64,
    /// Origin fetches in flight per source; 0 = unlimited.
    pub max_inflight_per_source: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_target_bytes: DEFAULT_MAX_REQUEST_TARGET_BYTES,
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
            max_request_header_bytes: DEFAULT_MAX_REQUEST_HEADER_BYTES,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inflight_per_source: 0,
        }
    }
}

/// An `allowed_origin_hosts` / `origin_auth.hosts` pattern: an exact host, an IP literal, or
/// `*.example.com` (subdomains only), optionally with a `:port` it then requires. Built by
/// [`HostPattern::parse`]; matched with [`HostPattern::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    kind: hosts::PatternKind,
    /// `None`: any port.
    port: Option<u16>,
}

/// A validated source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Name.
    pub name: String,
    /// Lower-case host names, no port.
    pub hosts: Vec<String>,
    /// Non-empty tokens, at least one.
    pub tokens: Vec<Secret>,
    /// The metrics name of each of `tokens` (same order): its `id`, or its position.
    pub token_labels: Vec<String>,
    /// The metrics label of this source (see [`crate::metrics::label`]).
    pub label: String,
    /// Origin authentication.
    pub origin_auth: OriginAuth,
    /// `None` = any public host; `Some(empty list)` = no host at all.
    pub allowed_origin_hosts: Option<Vec<HostPattern>>,
    /// Origin hosts that receive the origin auth headers and `origin_headers`
    /// (`origin_auth.hosts`, default `allowed_origin_hosts`); empty when the source has neither
    /// origin auth nor `origin_headers`.
    pub origin_auth_hosts: Vec<HostPattern>,
    /// Allow private/loopback origins.
    pub allow_private_origins: bool,
    /// Lower-case Content-Type prefixes an origin response must match; `None` = any.
    pub allowed_content_types: Option<Vec<String>>,
    /// Cache TTL settings.
    pub cache_ttl: CacheTtl,
    /// This source's position in `sources` (what per-source tables are indexed by).
    pub position: usize,
    /// `false`: every request is answered 410 `source_disabled` right after the Host lookup.
    pub enabled: bool,
    /// The gateway's CORS headers on forwarded responses.
    pub cors: Cors,
    /// `User-Agent` of origin requests.
    pub origin_user_agent: OriginUserAgent,
    /// Fixed origin request headers, sent only where the origin auth headers go
    /// ([`crate::Forward::may_receive_auth`]).
    pub origin_headers: Vec<OriginHeader>,
    /// `image_missing` (SPEC §15).
    pub image_missing: Option<crate::fallback::FallbackImage>,
    /// `image_error` (SPEC §15).
    pub image_error: Option<crate::fallback::FallbackImage>,
}

impl Source {
    /// Whether an origin URL's host (lower-case, no port, IPv6 without brackets) and port (the
    /// scheme's default when the URL has none) pass `allowed_origin_hosts`.
    ///
    /// Without a list every host passes (the private-address check is separate, see
    /// [`crate::addr::is_denied_ip`]); an empty list lets nothing pass; otherwise host and port
    /// must match one of the patterns (see [`HostPattern::matches`]).
    pub fn origin_host_allowed(&self, host: &str, port: u16) -> bool {
        match &self.allowed_origin_hosts {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(host, port)),
        }
    }

    /// Whether the origin host and port (as for [`Source::origin_host_allowed`]) may receive
    /// the source's origin auth headers (`origin_auth.hosts`).
    pub fn origin_auth_host_allowed(&self, host: &str, port: u16) -> bool {
        self.origin_auth_hosts.iter().any(|p| p.matches(host, port))
    }

    /// The source's fallback image of `kind`, if it has one.
    pub fn fallback(&self, kind: crate::FallbackKind) -> Option<&crate::fallback::FallbackImage> {
        match kind {
            crate::FallbackKind::Missing => self.image_missing.as_ref(),
            crate::FallbackKind::Error => self.image_error.as_ref(),
        }
    }

    /// Whether the source has any fallback image: the one check a runtime makes on the paths
    /// where a fallback could apply, so a source without them pays nothing more.
    pub fn has_fallbacks(&self) -> bool {
        self.image_missing.is_some() || self.image_error.is_some()
    }
}

/// The validated sources, looked up by Host.
///
/// Each source is shared (`Arc`), so a [`crate::Forward`] can keep its source without a lookup
/// and without copying its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    list: Vec<Arc<Source>>,
    limits: Limits,
    /// Normalized host (see [`Source::hosts`]) to its source's position in `list`.
    index: BTreeMap<String, usize>,
}

impl Sources {
    /// The source serving `host` (a Host/`:authority` value; port ignored, case-insensitive).
    ///
    /// `host:8080`, `[::1]:8080` and one trailing dot are accepted; `None` when no source lists
    /// the host.
    pub fn by_host(&self, host: &str) -> Option<&Arc<Source>> {
        let key = hosts::host_header_key(host)?;
        self.index.get(key.as_ref()).and_then(|&i| self.list.get(i))
    }

    /// The source called `name` (a linear search over the few sources: for resuming state
    /// that names its source, never on every request).
    pub fn by_name(&self, name: &str) -> Option<&Arc<Source>> {
        self.list.iter().find(|s| s.name == name)
    }

    /// The request and response limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Number of sources (at least one once validated).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false for validated sources; provided for API completeness.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All sources in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.list.iter().map(|s| s.as_ref())
    }
}

/// The validated configuration of the Envoy filter: the sources (with their limits) and
/// `upstream.timeout`, which bounds an origin request and all its redirect hops together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Sources.
    pub sources: Sources,
    /// `upstream.timeout` (default 10s).
    pub timeout: Duration,
    /// The access log format (`off`: no log properties to fill).
    pub access_log: AccessLogFormat,
    /// Whether answers may be stored by the response cache in front of the origin.
    pub cached: bool,
    /// Whether Envoy logs the client address itself ([`RawPluginConfig::client_ip_by_envoy`]).
    pub client_ip_by_envoy: bool,
    /// Whether fallback images can be served ([`RawPluginConfig::fallback_redirects`]).
    pub fallback_redirects: bool,
}

/// The validated whole config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Gateway listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Upstream settings.
    pub upstream: Upstream,
    /// Client connection limits.
    pub client: ClientLimits,
    /// The response cache; `None` = no cache.
    pub cache: Option<CacheLimits>,
    /// Threads, drain, TLS, h2c, access log and trusted proxies (README: Operating).
    pub operating: Operating,
    /// Sources.
    pub sources: Sources,
    /// The keys imgix's purge API admits (`purge_api_keys`); empty = no purge API.
    pub purge_api_keys: Vec<Secret>,
}

impl RawConfig {
    /// Parses a YAML document strictly.
    ///
    /// # Errors
    /// Syntax, type or unknown-field errors, with the field path.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(parse_error)
    }

    /// Validates and resolves secrets.
    ///
    /// Defaults: `listen` 127.0.0.1:8080, `admin_listen` 127.0.0.1:9901, `connect_timeout` 3s,
    /// `timeout` 10s.
    ///
    /// # Errors
    /// The first rule violated, with its field path.
    pub fn validate(self, secrets: &dyn SecretResolver) -> Result<Config, ConfigError> {
        let listen = validate::socket_addr(self.listen.as_deref(), DEFAULT_LISTEN, "listen")?;
        let admin_listen = validate::socket_addr(
            self.admin_listen.as_deref(),
            DEFAULT_ADMIN_LISTEN,
            "admin_listen",
        )?;
        // Port 0 asks the OS for a free port, so two such listeners never collide.
        if listen == admin_listen && listen.port() != 0 {
            return Err(ConfigError {
                path: "admin_listen".into(),
                message: format!("same address as listen ({listen})"),
            });
        }
        let operating = operating::validate(&self)?;
        Ok(Config {
            listen,
            admin_listen,
            operating,
            sources: validate::sources(self.sources, &self.upstream, &self.limits, secrets)?,
            client: validate::client_limits(&self.limits)?,
            cache: validate::cache(self.cache.as_ref())?,
            upstream: validate::upstream(self.upstream)?,
            purge_api_keys: purge::keys(&self.purge_api_keys, secrets)?,
        })
    }
}

impl RawPluginConfig {
    /// Parses the Envoy plugin configuration JSON strictly.
    ///
    /// # Errors
    /// Syntax, type or unknown-field errors, with the field path.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let raw = serde_path_to_error::deserialize(&mut deserializer).map_err(parse_error)?;
        deserializer.end().map_err(|e| ConfigError {
            path: String::new(),
            message: e.to_string(),
        })?;
        Ok(raw)
    }

    /// Validates and resolves secrets, with the same rules and paths (`sources[0]...`) as
    /// [`RawConfig::validate`].
    ///
    /// # Errors
    /// The first rule violated, with its field path.
    pub fn validate(self, secrets: &dyn SecretResolver) -> Result<PluginConfig, ConfigError> {
        let upstream = validate::upstream(self.upstream.clone())?;
        Ok(PluginConfig {
            sources: validate::sources(self.sources, &self.upstream, &self.limits, secrets)?,
            timeout: upstream.timeout,
            access_log: self.access_log.unwrap_or_default(),
            cached: self.cached,
            client_ip_by_envoy: self.client_ip_by_envoy,
            fallback_redirects: self.fallback_redirects,
        })
    }
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// Renders a serde path as `sources[1].origin_auth.request_handshake` (empty at the root).
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            // A map key that could not be read (syntax error): the enclosing path says enough.
            Segment::Unknown => {}
        }
    }
    out
}

fn parse_error<E: std::fmt::Display>(err: serde_path_to_error::Error<E>) -> ConfigError {
    let path = render_path(err.path());
    let mut message = err.inner().to_string();
    // serde_yaml prefixes its own copy of the path (for an unknown field, the path of the
    // enclosing mapping); the full path is already in `path`.
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.is_empty() && !head.contains(' ') && path.starts_with(head) {
            message = rest.to_owned();
        }
    }
    ConfigError {
        path,
        message: redact_quoted_string(&message),
    }
}

/// serde's type errors quote the offending string (`invalid type: string "…", expected …`); the
/// string may be a secret written in the wrong place, so it is dropped.
fn redact_quoted_string(message: &str) -> String {
    const MARK: &str = "string \"";
    match (message.find(MARK), message.rfind("\", expected")) {
        (Some(start), Some(end)) if end >= start + MARK.len() => {
            format!("{}string{}", &message[..start], &message[end + 1..])
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
sources:
  - name: assets
    hosts: [Assets.Example.com, "[::1]", 127.0.0.1]
    secure_url_tokens: [t]
  - name: media
    hosts: [media.example.com]
    secure_url_tokens: [t]
    allowed_origin_hosts: ["*.example.org", "2001:db8::1"]
"#;

    fn sources() -> Sources {
        RawConfig::from_yaml(YAML)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid config")
            .sources
    }

    fn name_for(sources: &Sources, host: &str) -> Option<String> {
        sources.by_host(host).map(|s| s.name.clone())
    }

    #[test]
    fn by_host_ignores_port_case_and_one_trailing_dot() {
        let sources = sources();
        for host in [
            "assets.example.com",
            "ASSETS.example.COM",
            "assets.example.com:8080",
            "assets.example.com.",
            "assets.example.com.:443",
            "[::1]:8080",
            "[::1]",
            "[0:0:0:0:0:0:0:1]:80",
            "127.0.0.1:8080",
        ] {
            assert_eq!(
                name_for(&sources, host).as_deref(),
                Some("assets"),
                "{host}"
            );
        }
        assert_eq!(
            name_for(&sources, "media.example.com:80").as_deref(),
            Some("media")
        );
        for host in [
            "",
            "example.com",
            "x.assets.example.com",
            "assets.example.com..",
            "[::2]:8080",
            "127.0.0.2",
        ] {
            assert_eq!(name_for(&sources, host), None, "{host}");
        }
    }

    #[test]
    fn sources_keep_config_order_and_normalized_hosts() {
        let sources = sources();
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["assets", "media"]);
        let first = sources.iter().next().expect("one source");
        assert_eq!(first.hosts, ["assets.example.com", "::1", "127.0.0.1"]);
        assert_eq!(sources.len(), 2);
        assert!(!sources.is_empty());
    }

    #[test]
    fn origin_host_allowed_follows_the_list() {
        let sources = sources();
        let any = sources.by_host("assets.example.com").expect("assets");
        assert!(any.origin_host_allowed("anything.example.net", 443));
        let media = sources.by_host("media.example.com").expect("media");
        assert!(media.origin_host_allowed("cdn.example.org", 443));
        assert!(media.origin_host_allowed("cdn.example.org", 8080));
        assert!(media.origin_host_allowed("2001:db8::1", 80));
        assert!(!media.origin_host_allowed("example.org", 443));
        assert!(!media.origin_host_allowed("cdn.example.net", 443));
        assert!(!media.origin_host_allowed("2001:db8::2", 80));
    }

    #[test]
    fn paths_render_with_dots_and_indexes() {
        let yaml = "sources:
  - {name: a, hosts: [a], secure_url_tokens: [t]}
  - {name: b, hosts: [b], secure_url_tokens: [t], origin_auth: {request_handshake: [x]}}
";
        let err = RawConfig::from_yaml(yaml).expect_err("list is not a secret");
        assert_eq!(err.path, "sources[1].origin_auth.request_handshake");
        assert!(err
            .to_string()
            .starts_with("sources[1].origin_auth.request_handshake: invalid type"));
    }

    #[test]
    fn whole_document_errors_have_no_path() {
        let err = RawConfig::from_yaml("- not a mapping").expect_err("wrong root type");
        assert_eq!(err.path, "");
        assert_eq!(err.to_string(), err.message);
        let err = RawPluginConfig::from_json("{").expect_err("syntax");
        assert_eq!(err.path, "");
    }

    #[test]
    fn the_plugin_config_says_whether_envoy_writes_an_access_log() {
        let sources = r#""sources":[{"name":"a","hosts":["a"],"secure_url_tokens":["t"]}]"#;
        let format = |extra: &str| {
            RawPluginConfig::from_json(&format!("{{{sources}{extra}}}"))
                .and_then(|raw| raw.validate(&MapSecrets::default()))
                .map(|config| config.access_log)
        };
        assert_eq!(
            format(""),
            Ok(AccessLogFormat::Json),
            "absent is the default"
        );
        assert_eq!(format(r#","access_log":"off""#), Ok(AccessLogFormat::Off));
        assert_eq!(format(r#","access_log":"text""#), Ok(AccessLogFormat::Text));
        let err = format(r#","access_log":"xml""#).expect_err("unknown format");
        assert_eq!(err.path, "access_log");
    }

    #[test]
    fn literal_secrets_never_print_through_debug() {
        let raw = RawConfig::from_yaml(
            "sources:\n  - {name: a, hosts: [a], secure_url_tokens: [hunter2-token, {env: T}],\n     origin_auth: {request_handshake: hunter2-hs, hosts: [cdn.example]}}\n",
        )
        .expect("parses");
        let printed = format!("{raw:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("Literal(***)") && printed.contains("env: \"T\""));
        let sources = raw
            .validate(&MapSecrets::new().with_env("T", "hunter2-env"))
            .expect("valid")
            .sources;
        let printed = format!("{sources:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn quoted_strings_are_dropped_from_type_errors() {
        assert_eq!(
            redact_quoted_string(r#"invalid type: string "hunter2", expected struct X"#),
            "invalid type: string, expected struct X"
        );
        assert_eq!(
            redact_quoted_string(r#"invalid type: string "a\", expected b", expected map"#),
            "invalid type: string, expected map"
        );
        assert_eq!(
            redact_quoted_string("missing field `x`"),
            "missing field `x`"
        );
    }

    #[test]
    fn tokens_may_carry_an_id_that_names_them_in_metrics() {
        let yaml = "sources:\n  - name: web.assets\n    hosts: [a.test]\n    secure_url_tokens:\n      \
                    - first\n      - {id: new-2026, value: second}\n      - {id: env_one, env: T}\n";
        let raw = RawConfig::from_yaml(yaml).expect("parses");
        assert_eq!(
            raw.sources[0].secure_url_tokens[1].id.as_deref(),
            Some("new-2026")
        );
        // The plugin JSON the Envoy generator writes reads back the same.
        let json = serde_json::to_string(&raw.sources).expect("json");
        assert!(
            json.contains(r#"{"id":"new-2026","value":"second"}"#),
            "{json}"
        );
        let config = raw
            .validate(&MapSecrets::new().with_env("T", "third"))
            .expect("valid");
        let source = config.sources.iter().next().expect("source");
        assert_eq!(source.token_labels, ["0", "new-2026", "env_one"]);
        assert_eq!(source.label, "web_assets");
        for (tokens, path, message) in [
            (
                "[a, {id: x, value: b}, {id: x, value: c}]",
                "sources[0].secure_url_tokens[2].id",
                "already names",
            ),
            (
                "[a, {id: \"0\", value: b}]",
                "sources[0].secure_url_tokens[1].id",
                "already names",
            ),
            (
                "[{id: a.b, value: b}]",
                "sources[0].secure_url_tokens[0].id",
                "A-Z",
            ),
            (
                "[{id: a}]",
                "sources[0].secure_url_tokens[0]",
                "needs one of",
            ),
            (
                "[{id: a, value: b, env: c}]",
                "sources[0].secure_url_tokens[0]",
                "exactly one",
            ),
            (
                "[{id: a, secret: b}]",
                "sources[0].secure_url_tokens[0]",
                "unknown field",
            ),
        ] {
            let yaml = format!(
                "sources:\n  - name: a\n    hosts: [a.test]\n    secure_url_tokens: {tokens}\n"
            );
            let err = RawConfig::from_yaml(&yaml)
                .and_then(|raw| raw.validate(&MapSecrets::new()))
                .expect_err(tokens);
            assert!(
                err.path.starts_with(path) && err.message.contains(message),
                "{tokens}: {err}"
            );
            assert!(!err.to_string().contains("value: b"), "{err}");
        }
        let err = RawConfig::from_yaml(
            "sources:\n  - name: \"--\"\n    hosts: [a]\n    secure_url_tokens: [t]\n",
        )
        .and_then(|raw| raw.validate(&MapSecrets::new()))
        .expect_err("unlabelable");
        assert_eq!(err.path, "sources[0].name");
        let err = RawConfig::from_yaml(
            "sources:\n  - {name: web.a, hosts: [a], secure_url_tokens: [t]}\n  - {name: web_a, hosts: [b], secure_url_tokens: [t]}\n",
        )
        .and_then(|raw| raw.validate(&MapSecrets::new()))
        .expect_err("one label for two sources");
        assert_eq!(err.path, "sources[1].name");
        assert!(err.message.contains("`web_a`"), "{err}");
    }
}
