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

/// `tls:` (serde layer): one certificate for every host (`cert_file` and `key_file`) or one per
/// custom domain (`certificates`), never both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Certificates chosen by SNI; the first is also the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<RawCertificate>,
}

/// One entry of `tls.certificates` (serde layer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// The SNI names it is served for: exact names or `*.example.com`.
    #[serde(default)]
    pub hosts: Vec<String>,
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

/// One certificate HTTPS on `listen` serves, with the SNI names it is chosen for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// Lower-case names (no trailing dot), each exact or a `*.` wildcard standing for exactly
    /// one more leftmost label (`*.example.com` is `a.example.com`, not `example.com` nor
    /// `a.b.example.com`). Empty only for the single pair of `tls: {cert_file, key_file}` or a
    /// first entry that is only the default.
    pub hosts: Vec<String>,
    /// Its certificate and key files.
    pub files: TlsFiles,
    /// Where it was configured (`tls` or `tls.certificates[1]`): errors about its files name
    /// `<field>.cert_file` / `<field>.key_file`.
    pub field: String,
}

/// HTTPS on `listen`: the certificates, chosen by the client's SNI (an exact name first, then
/// a wildcard); the first one for every other name and for clients that send none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Never empty; the first is the default.
    pub certificates: Vec<TlsCertificate>,
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
    pub tls: Option<Tls>,
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
    /// applies (the Envoy bootstrap has its own threads and drain): what `ixproxy envoy-config`
    /// warns about. `access_log`, `trusted_proxies` and `tls` are rendered into the bootstrap
    /// and are not among them.
    pub fn native_only_fields(&self) -> Vec<&'static str> {
        let defaults = Operating::default();
        let mut fields = Vec::new();
        if self.threads != defaults.threads {
            fields.push("server.threads");
        }
        if self.grace_period != defaults.grace_period {
            fields.push("server.grace_period");
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
    let tls = raw.tls.as_ref().map(tls).transpose()?;
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

/// Validates `tls:`: either form, the files named, the hosts normalized and never twice.
fn tls(raw: &RawTls) -> Result<Tls, ConfigError> {
    let certificates = match (&raw.cert_file, &raw.key_file, raw.certificates.is_empty()) {
        (Some(cert_file), Some(key_file), true) => vec![certificate(
            "tls".to_owned(),
            Vec::new(),
            cert_file,
            key_file,
        )?],
        (None, None, false) => {
            let mut seen: std::collections::HashMap<String, String> =
                std::collections::HashMap::new();
            let mut certificates = Vec::with_capacity(raw.certificates.len());
            for (i, entry) in raw.certificates.iter().enumerate() {
                let field = format!("tls.certificates[{i}]");
                if entry.hosts.is_empty() && i > 0 {
                    return Err(error(
                        format!("{field}.hosts"),
                        "must name at least one host: only the first entry (the default) may \
                         have none",
                    ));
                }
                let mut hosts = Vec::with_capacity(entry.hosts.len());
                for (j, host) in entry.hosts.iter().enumerate() {
                    let path = format!("{field}.hosts[{j}]");
                    let name = sni_name(host).map_err(|m| error(&path, m))?;
                    if let Some(first) = seen.get(&name) {
                        return Err(error(
                            &path,
                            format!("{name} is already {first}: each name picks one certificate"),
                        ));
                    }
                    seen.insert(name.clone(), path);
                    hosts.push(name);
                }
                certificates.push(certificate(
                    field,
                    hosts,
                    &entry.cert_file,
                    &entry.key_file,
                )?);
            }
            certificates
        }
        (Some(_), None, true) => return Err(error("tls.key_file", "required with cert_file")),
        (None, Some(_), true) => return Err(error("tls.cert_file", "required with key_file")),
        (None, None, true) => {
            return Err(error(
                "tls",
                "needs cert_file and key_file, or certificates: [{hosts, cert_file, key_file}]",
            ))
        }
        (_, _, false) => {
            return Err(error(
                "tls.certificates",
                "not together with tls.cert_file / tls.key_file: the first entry of \
                 certificates is the default (move that pair there)",
            ))
        }
    };
    Ok(Tls { certificates })
}

/// One validated certificate entry at `field`.
fn certificate(
    field: String,
    hosts: Vec<String>,
    cert_file: &str,
    key_file: &str,
) -> Result<TlsCertificate, ConfigError> {
    for (name, value) in [("cert_file", cert_file), ("key_file", key_file)] {
        if value.trim().is_empty() {
            return Err(error(format!("{field}.{name}"), "must not be empty"));
        }
    }
    Ok(TlsCertificate {
        hosts,
        files: TlsFiles {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
        },
        field,
    })
}

/// Normalizes a `tls.certificates[].hosts` entry: a DNS name (lower-case punycode, no trailing
/// dot) or `*.` and one, never an IP address (SNI cannot carry one).
fn sni_name(host: &str) -> Result<String, String> {
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.contains('*') {
        return Err(format!(
            "{host}: `*` only as the whole leftmost label (`*.example.com`)"
        ));
    }
    match super::hosts::normalize_host(name) {
        Ok(super::hosts::NormalHost::Name(name)) if wildcard => Ok(format!("*.{name}")),
        Ok(super::hosts::NormalHost::Name(name)) => Ok(name),
        Ok(super::hosts::NormalHost::Ip(_)) => Err(format!(
            "{host} is an IP address, which SNI never carries (a client connecting by address \
             gets the first certificate)"
        )),
        Err(m) => Err(format!("{host}: {m}")),
    }
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
            Some(Tls {
                certificates: vec![TlsCertificate {
                    hosts: Vec::new(),
                    files: TlsFiles {
                        cert_file: "/c.pem".into(),
                        key_file: "/k.pem".into()
                    },
                    field: "tls".into(),
                }]
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
            ["server.threads", "server.grace_period", "h2c"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, path) in [
            ("server:\n  threads: 5000\n", "server.threads"),
            ("server:\n  grace_period: soon\n", "server.grace_period"),
            ("tls:\n  cert_file: \"\"\n  key_file: /k\n", "tls.cert_file"),
            ("tls:\n  cert_file: /c\n", "tls.key_file"),
            ("tls:\n  key_file: /k\n", "tls.cert_file"),
            ("tls: {}\n", "tls"),
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

    const PAIR: &str = "cert_file: /c\n    key_file: /k\n";

    #[test]
    fn certificates_are_read_in_order_with_hosts_lower_cased() {
        let op = operating(&format!(
            "tls:\n  certificates:\n  - hosts: [A.Example.COM, \"*.Wild.example.com\", \
             b.example.com.]\n    cert_file: /a.pem\n    key_file: /a.key\n  - hosts: \
             [bücher.example]\n    {PAIR}"
        ))
        .expect("valid");
        let tls = op.tls.expect("tls");
        assert_eq!(tls.certificates.len(), 2);
        let [first, second] = &tls.certificates[..] else {
            panic!("two entries")
        };
        assert_eq!(
            first.hosts,
            ["a.example.com", "*.wild.example.com", "b.example.com"]
        );
        assert_eq!(first.files.cert_file, "/a.pem");
        assert_eq!(first.files.key_file, "/a.key");
        assert_eq!(first.field, "tls.certificates[0]");
        assert_eq!(second.hosts, ["xn--bcher-kva.example"]);
        assert_eq!(second.field, "tls.certificates[1]");
        // The first entry may be the default only.
        let op = operating(&format!(
            "tls:\n  certificates:\n  - {PAIR}  - hosts: [a.test]\n    {PAIR}"
        ))
        .expect("valid");
        assert!(op.tls.expect("tls").certificates[0].hosts.is_empty());
    }

    #[test]
    fn certificate_errors_name_the_entry_and_host() {
        for (tls, path, says) in [
            (
                format!("cert_file: /c\n  key_file: /k\n  certificates:\n  - hosts: [a.test]\n    {PAIR}"),
                "tls.certificates",
                "not together",
            ),
            (
                format!("certificates:\n  - hosts: [a.test]\n    {PAIR}  - hosts: [b.test, A.TEST]\n    {PAIR}"),
                "tls.certificates[1].hosts[1]",
                "a.test is already tls.certificates[0].hosts[0]",
            ),
            (
                format!("certificates:\n  - hosts: [\"*.a.test\", \"*.A.test.\"]\n    {PAIR}"),
                "tls.certificates[0].hosts[1]",
                "already",
            ),
            (
                format!("certificates:\n  - hosts: [a.test]\n    {PAIR}  - hosts: []\n    {PAIR}"),
                "tls.certificates[1].hosts",
                "at least one host",
            ),
            (
                format!("certificates:\n  - hosts: [a.test, 127.0.0.1]\n    {PAIR}"),
                "tls.certificates[0].hosts[1]",
                "IP address",
            ),
            (
                format!("certificates:\n  - hosts: [\"a.*.test\"]\n    {PAIR}"),
                "tls.certificates[0].hosts[0]",
                "leftmost label",
            ),
            (
                format!("certificates:\n  - hosts: [\"*\"]\n    {PAIR}"),
                "tls.certificates[0].hosts[0]",
                "leftmost label",
            ),
            (
                format!("certificates:\n  - hosts: [\"a.test:443\"]\n    {PAIR}"),
                "tls.certificates[0].hosts[0]",
                "port",
            ),
            (
                "certificates:\n  - hosts: [a.test]\n    cert_file: /c\n    key_file: \" \"\n"
                    .to_owned(),
                "tls.certificates[0].key_file",
                "empty",
            ),
            (
                "certificates:\n  - hosts: [a.test]\n    cert_file: /c\n".to_owned(),
                "tls.certificates[0]",
                "key_file",
            ),
            (
                format!("certificates:\n  - hosts: [a.test]\n    {PAIR}    sni: x\n"),
                "tls.certificates[0]",
                "sni",
            ),
        ] {
            let yaml = format!("tls:\n  {tls}");
            let err = operating(&yaml).expect_err(&yaml);
            assert!(err.path.starts_with(path), "{yaml}: {err}");
            assert!(err.to_string().contains(says), "{yaml}: {err}");
        }
    }
}
