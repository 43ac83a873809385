//! The config model of SPEC §7 in two layers: strict serde structs ([`RawConfig`], unknown fields
//! rejected) and the validated [`Config`] the runtimes use, which cannot hold an invalid state.
//!
//! SKELETON: bodies are filled in by the config/auth work item. The public API below is fixed.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::OriginAuth;
use crate::secret::Secret;

/// An error in a config file; `path` names the field (`sources[1].origin_auth.request_handshake`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Field path, e.g. `sources[0].hosts[1]`; empty for whole-document errors.
    pub path: String,
    /// What is wrong, lower-case.
    pub message: String,
}

/// A secret as written in the config: a literal, `{env: NAME}` or `{file: PATH}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Sources.
    pub sources: Vec<RawSource>,
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
}

/// One entry of `sources:` (serde layer). Also the JSON the Envoy filter receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Name used in logs and metrics.
    pub name: String,
    /// Host header values served by this source.
    pub hosts: Vec<String>,
    /// Tokens; a URL signed with any of them verifies.
    pub secure_url_tokens: Vec<SecretRef>,
    /// Origin authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_auth: Option<RawOriginAuth>,
    /// Allowed origin host patterns; absent = any public host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origin_hosts: Option<Vec<String>>,
    /// Allow private/loopback origins (local development and tests only).
    #[serde(default)]
    pub allow_private_origins: bool,
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

/// The plugin configuration of the Envoy filter: `{"sources": [...]}` (serde layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginConfig {
    /// Sources, as in the YAML file.
    pub sources: Vec<RawSource>,
}

/// Validated upstream settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Extra CA bundle path.
    pub ca_file: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout.
    pub timeout: Duration,
}

/// An `allowed_origin_hosts` pattern: an exact host, or `*.example.com` (subdomains only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    _private: (),
}

impl HostPattern {
    /// Whether `host` (lower-case, no port) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let _ = host;
        todo!()
    }
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
    /// Origin authentication.
    pub origin_auth: OriginAuth,
    /// `None` = any public host.
    pub allowed_origin_hosts: Option<Vec<HostPattern>>,
    /// Allow private/loopback origins.
    pub allow_private_origins: bool,
}

impl Source {
    /// Whether the origin host (lower-case, no port, IPv6 without brackets) passes
    /// `allowed_origin_hosts`.
    pub fn origin_host_allowed(&self, host: &str) -> bool {
        let _ = host;
        todo!()
    }
}

/// The validated sources, looked up by Host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    list: Vec<Source>,
}

impl Sources {
    /// The source serving `host` (a Host/`:authority` value; port ignored, case-insensitive).
    pub fn by_host(&self, host: &str) -> Option<&Source> {
        let _ = host;
        todo!()
    }

    /// All sources in config order.
    pub fn iter(&self) -> std::slice::Iter<'_, Source> {
        self.list.iter()
    }
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
    /// Sources.
    pub sources: Sources,
}

impl RawConfig {
    /// Parses a YAML document strictly.
    ///
    /// # Errors
    /// Syntax, type or unknown-field errors, with the field path.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let _ = text;
        todo!()
    }

    /// Validates and resolves secrets.
    ///
    /// # Errors
    /// The first rule violated, with its field path.
    pub fn validate(self, secrets: &dyn SecretResolver) -> Result<Config, ConfigError> {
        let _ = secrets;
        todo!()
    }
}

impl RawPluginConfig {
    /// Parses the Envoy plugin configuration JSON strictly.
    ///
    /// # Errors
    /// Syntax, type or unknown-field errors, with the field path.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let _ = text;
        todo!()
    }

    /// Validates and resolves secrets.
    ///
    /// # Errors
    /// The first rule violated, with its field path.
    pub fn validate(self, secrets: &dyn SecretResolver) -> Result<Sources, ConfigError> {
        let _ = secrets;
        todo!()
    }
}
