//! How the native gateway is operated (README: Operating): `server`, `tls`, `h2c`, `access_log`
//! and `trusted_proxies`, in the serde layer and validated.
//!
//! The Envoy filter reads none of these (Envoy's own bootstrap has its threads, listeners and
//! access log); `ixproxy envoy-config` renders `access_log` into the bootstrap.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, RawConfig};
use crate::addr::IpNet;

/// Default `server.grace_period`: how long a SIGTERM drain lets in-flight requests finish.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// The most worker threads `server.threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// `server:` (serde layer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Worker threads; 0 or absent = one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// SIGTERM drain (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

/// `tls:` (serde layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `access_log:`: one line per request on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// `key=value` pairs, for people reading a terminal.
    Text,
    /// No access log.
    Off,
}

impl AccessLogFormat {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Text => "text",
            AccessLogFormat::Off => "off",
        }
    }
}

/// The certificate and key files of HTTPS on `listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (leaf first).
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// The validated operating settings of the native gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operating {
    /// Worker threads; `None` = one per core.
    pub threads: Option<usize>,
    /// On SIGTERM: how long the listeners keep serving after `/readyz` turned 503, then how
    /// long requests in flight may finish once they closed (README: Readiness and draining);
    /// after an upgrade's hand-over, the latter only.
    pub grace_period: Duration,
    /// HTTPS on `listen` (HTTP/2 offered through ALPN); `None` = plain HTTP.
    pub tls: Option<TlsFiles>,
    /// HTTP/2 with prior knowledge on a plain `listen`.
    pub h2c: bool,
    /// Access log format.
    pub access_log: AccessLogFormat,
    /// Peers whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Operating {
    fn default() -> Self {
        Operating {
            threads: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            tls: None,
            h2c: false,
            access_log: AccessLogFormat::Json,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Operating {
    /// The fields set to something other than their default that only the native gateway
    /// applies (the Envoy bootstrap has its own threads, drain and listener TLS): what
    /// `ixproxy envoy-config` warns about. `access_log` and `trusted_proxies` are rendered into
    /// the bootstrap and are not among them.
    pub fn native_only_fields(&self) -> Vec<&'static str> {
        let defaults = Operating::default();
        let mut fields = Vec::new();
        if self.threads != defaults.threads {
            fields.push("server.threads");
        }
        if self.grace_period != defaults.grace_period {
            fields.push("server.grace_period");
        }
        if self.tls.is_some() {
            fields.push("tls");
        }
        if self.h2c {
            fields.push("h2c");
        }
        fields
    }
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Validates the operating fields of `raw` (file names are checked for being non-empty here;
/// the gateway reads them when it starts and on every reload).
pub(super) fn validate(raw: &RawConfig) -> Result<Operating, ConfigError> {
    let threads = match raw.server.threads {
        None | Some(0) => None,
        Some(n) if n > MAX_THREADS => {
            return Err(error(
                "server.threads",
                format!("at most {MAX_THREADS} (0 = one per core)"),
            ))
        }
        Some(n) => Some(n),
    };
    let grace_period = match raw.server.grace_period.as_deref() {
        None => DEFAULT_GRACE_PERIOD,
        // `0s` is a valid drain: stop as soon as the listeners close.
        Some("0s" | "0ms") => Duration::ZERO,
        Some(text) => super::parse_duration(text).map_err(|m| error("server.grace_period", m))?,
    };
    let tls = match &raw.tls {
        None => None,
        Some(tls) => {
            for (field, value) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if value.trim().is_empty() {
                    return Err(error(format!("tls.{field}"), "must not be empty"));
                }
            }
            Some(TlsFiles {
                cert_file: tls.cert_file.clone(),
                key_file: tls.key_file.clone(),
            })
        }
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, text)| IpNet::parse(text).map_err(|m| error(format!("trusted_proxies[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Operating {
        threads,
        grace_period,
        tls,
        h2c: raw.h2c,
        access_log: raw.access_log.unwrap_or_default(),
        trusted_proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapSecrets;

    const SOURCES: &str =
        "sources:\n  - name: a\n    hosts: [a.test]\n    secure_url_tokens: [t]\n";

    fn operating(extra: &str) -> Result<Operating, ConfigError> {
        RawConfig::from_yaml(&format!("{extra}{SOURCES}"))
            .and_then(|raw| raw.validate(&MapSecrets::default()))
            .map(|config| config.operating)
    }

    #[test]
    fn defaults_are_one_thread_per_core_a_five_second_drain_and_json_logs() {
        assert_eq!(operating("").expect("valid"), Operating::default());
        let defaults = Operating::default();
        assert_eq!(defaults.threads, None);
        assert_eq!(defaults.grace_period, Duration::from_secs(5));
        assert_eq!(defaults.access_log, AccessLogFormat::Json);
        assert!(!defaults.h2c && defaults.tls.is_none() && defaults.trusted_proxies.is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let op = operating(
            "server:\n  threads: 3\n  grace_period: 30s\ntls:\n  cert_file: /c.pem\n  \
             key_file: /k.pem\nh2c: true\naccess_log: text\ntrusted_proxies: [10.0.0.0/8, \
             \"::1\", 192.168.1.7]\n",
        )
        .expect("valid");
        assert_eq!(op.threads, Some(3));
        assert_eq!(op.grace_period, Duration::from_secs(30));
        assert_eq!(
            op.tls,
            Some(TlsFiles {
                cert_file: "/c.pem".into(),
                key_file: "/k.pem".into()
            })
        );
        assert!(op.h2c);
        assert_eq!(op.access_log, AccessLogFormat::Text);
        assert_eq!(op.trusted_proxies.len(), 3);
        assert!(op.trusted_proxies[0].contains("10.1.2.3".parse().expect("ip")));
        assert!(op.trusted_proxies[1].contains("::1".parse().expect("ip")));
        assert!(!op.trusted_proxies[2].contains("192.168.1.8".parse().expect("ip")));
        assert_eq!(
            operating("server:\n  threads: 0\n  grace_period: 0s\naccess_log: off\n").map(|o| (
                o.threads,
                o.grace_period,
                o.access_log
            )),
            Ok((None, Duration::ZERO, AccessLogFormat::Off))
        );
    }

    #[test]
    fn native_only_fields_are_named_when_set() {
        assert!(operating("")
            .expect("valid")
            .native_only_fields()
            .is_empty());
        let set = operating(
            "server:\n  threads: 2\n  grace_period: 1s\ntls:\n  cert_file: /c\n  key_file: /k\n\
             h2c: true\naccess_log: off\ntrusted_proxies: [10.0.0.0/8]\n",
        )
        .expect("valid");
        assert_eq!(
            set.native_only_fields(),
            ["server.threads", "server.grace_period", "tls", "h2c"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, path) in [
            ("server:\n  threads: 5000\n", "server.threads"),
            ("server:\n  grace_period: soon\n", "server.grace_period"),
            ("tls:\n  cert_file: \"\"\n  key_file: /k\n", "tls.cert_file"),
            ("tls:\n  cert_file: /c\n", "tls"),
            ("trusted_proxies: [10.0.0.0/33]\n", "trusted_proxies[0]"),
            (
                "trusted_proxies: [\"::1\", example.com]\n",
                "trusted_proxies[1]",
            ),
            ("trusted_proxies: [10.0.0.1/8]\n", "trusted_proxies[0]"),
            ("access_log: yaml\n", "access_log"),
            ("server:\n  workers: 2\n", "server"),
        ] {
            let err = operating(yaml).expect_err(yaml);
            assert!(
                err.path == path || err.to_string().starts_with(path),
                "{yaml}: {err}"
            );
        }
    }
}
