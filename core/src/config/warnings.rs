//! What a valid config may still get wrong: settings that work but weaken the gateway. The
//! runtimes print them (`ixproxy check`, `ixproxy serve`, `ixproxy envoy-config`) and go on.

use std::fmt;

use super::Config;

/// `secure_url_tokens` entries shorter than this many characters are warned about.
///
/// A signature is an unsalted MD5 over the token and the signed URL, so one public signed URL
/// lets anyone test token guesses offline, as fast as they can hash.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A setting that is valid but probably a mistake; `path` names the field as errors do.
///
/// Displays as `path: message`; never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Field path, e.g. `sources[0].secure_url_tokens[1]` or `admin_listen`.
    pub path: String,
    /// What is risky about it, lower-case.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The warnings for a validated config, in field order: an `admin_listen` that is not a
/// loopback address, then every `secure_url_tokens` entry shorter than [`MIN_TOKEN_CHARS`]
/// characters (counted, never shown), `origin_headers` that no host receives (an empty
/// `origin_auth.hosts`), a per-client connection limit behind `trusted_proxies` (every
/// connection from a proxy comes from its address), then those about `purge_api_keys`
/// ([`super::purge`]), then `cache.peers` others cannot reach this instance from
/// ([`crate::fleet::warnings`]). Empty when there is nothing to say.
pub fn warnings(config: &Config) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let admin = config.admin_listen;
    if !admin.ip().to_canonical().is_loopback() {
        out.push(ConfigWarning {
            path: "admin_listen".into(),
            message: format!(
                "{admin} is not a loopback address: the admin listener serves the metrics, and \
                 on envoy the admin api, which can dump the config and stop the server"
            ),
        });
    }
    for (i, source) in config.sources.iter().enumerate() {
        for (k, token) in source.tokens.iter().enumerate() {
            if token.expose().chars().count() < MIN_TOKEN_CHARS {
                out.push(ConfigWarning {
                    path: format!("sources[{i}].secure_url_tokens[{k}]"),
                    message: format!(
                        "token shorter than {MIN_TOKEN_CHARS} characters: one public signed url \
                         is enough to guess a short token offline"
                    ),
                });
            }
        }
    }
    for (i, source) in config.sources.iter().enumerate() {
        if !source.origin_headers.is_empty() && source.origin_auth_hosts.is_empty() {
            out.push(ConfigWarning {
                path: format!("sources[{i}].origin_headers"),
                message: "origin_auth.hosts is empty: these headers go to no origin".into(),
            });
        }
    }
    let per_client = config.client.max_connections_per_client;
    if per_client > 0 && !config.operating.trusted_proxies.is_empty() {
        out.push(ConfigWarning {
            path: "limits.max_connections_per_client".into(),
            message: format!(
                "{per_client} with trusted_proxies set: behind a proxy every connection comes \
                 from its address, so the limit counts the proxy's connections, not a client's"
            ),
        });
    }
    out.extend(super::purge::warnings(config));
    out.extend(crate::fleet::warnings(config));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapSecrets, RawConfig};

    fn warnings_for(yaml: &str) -> Vec<ConfigWarning> {
        let config = RawConfig::from_yaml(yaml)
            .and_then(|raw| raw.validate(&MapSecrets::new().with_env("T", "short-env")))
            .expect("valid config");
        warnings(&config)
    }

    fn paths(warnings: &[ConfigWarning]) -> Vec<&str> {
        warnings.iter().map(|w| w.path.as_str()).collect()
    }

    #[test]
    fn a_loopback_admin_and_long_tokens_say_nothing() {
        for admin in [
            "127.0.0.1:9901",
            "127.3.4.5:0",
            "[::1]:9901",
            "[::ffff:127.0.0.1]:1",
        ] {
            let yaml = format!(
                "admin_listen: '{admin}'\nsources: [{{name: a, hosts: [a.test], \
                 secure_url_tokens: [0123456789abcdef]}}]\n"
            );
            assert_eq!(warnings_for(&yaml), [], "{admin}");
        }
    }

    #[test]
    fn a_public_admin_listener_is_named() {
        for admin in ["0.0.0.0:9901", "[::]:9901", "192.0.2.7:9901"] {
            let yaml = format!(
                "admin_listen: '{admin}'\nsources: [{{name: a, hosts: [a.test], \
                 secure_url_tokens: [0123456789abcdef]}}]\n"
            );
            let found = warnings_for(&yaml);
            assert_eq!(paths(&found), ["admin_listen"], "{admin}");
            assert!(
                found[0].message.contains("not a loopback address"),
                "{found:?}"
            );
            assert!(found[0].message.contains("dump the config"), "{found:?}");
        }
    }

    #[test]
    fn each_short_token_is_named_by_its_path_without_its_value() {
        let found = warnings_for(
            "sources:
  - {name: a, hosts: [a.test], secure_url_tokens: [0123456789abcdef, hunter2]}
  - {name: b, hosts: [b.test], secure_url_tokens: [{env: T}, 'äöüäöüäöüäöüäöüä']}
",
        );
        assert_eq!(
            paths(&found),
            [
                "sources[0].secure_url_tokens[1]",
                "sources[1].secure_url_tokens[0]"
            ]
        );
        let text = found[0].to_string();
        assert!(
            text.starts_with("sources[0].secure_url_tokens[1]: token shorter than 16 characters"),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !found[1].to_string().contains("short-env"));
    }

    #[test]
    fn origin_headers_that_no_host_receives_are_named() {
        let source = "name: a, hosts: [a.test], secure_url_tokens: [0123456789abcdef]";
        let found = warnings_for(&format!(
            "sources:\n  - {{{source}, origin_headers: {{X-Api-Key: k}}, origin_auth: {{hosts: []}}}}\n"
        ));
        assert_eq!(paths(&found), ["sources[0].origin_headers"]);
        let found = warnings_for(&format!(
            "sources:\n  - {{{source}, origin_headers: {{X-Api-Key: k}}, origin_auth: {{hosts: [o.test]}}}}\n"
        ));
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_per_client_limit_behind_trusted_proxies_is_named() {
        let sources =
            "sources: [{name: a, hosts: [a.test], secure_url_tokens: [0123456789abcdef]}]\n";
        let limits = "limits: {max_connections_per_client: 8}\n";
        let proxies = "trusted_proxies: [10.0.0.0/8]\n";
        let found = warnings_for(&format!("{limits}{proxies}{sources}"));
        assert_eq!(paths(&found), ["limits.max_connections_per_client"]);
        assert!(found[0]
            .message
            .contains("every connection comes from its address"));
        // Either alone is fine: a limit without a proxy, a proxy without a limit.
        assert_eq!(warnings_for(&format!("{limits}{sources}")), []);
        assert_eq!(
            warnings_for(&format!(
                "limits: {{max_connections_per_client: 0}}\n{proxies}{sources}"
            )),
            []
        );
    }
}
