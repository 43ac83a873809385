//! The source settings imgix Web Proxy users rely on (SPEC §15) that shape what the client and
//! the origin see: `enabled`, `cors`, `origin_user_agent`, `origin_headers`.

use super::secrets::resolve;
use super::{ConfigError, HostPattern, RawAllowOrigin, RawCors, RawSource, SecretResolver};
use crate::cors::{normalize_web_origin, Cors, ANY_ORIGIN};
use crate::identity::{origin_header_name, origin_header_value, OriginHeader, OriginUserAgent};
use crate::secret::Secret;

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// The validated §15 settings of one source.
pub(super) struct Extras {
    pub enabled: bool,
    pub cors: Cors,
    pub origin_user_agent: OriginUserAgent,
    pub origin_headers: Vec<OriginHeader>,
}

/// Validates the settings of `raw` (at `path`, `sources[i]`), resolving `origin_headers`'
/// secrets.
pub(super) fn extras(
    raw: &RawSource,
    secrets: &dyn SecretResolver,
    path: &str,
) -> Result<Extras, ConfigError> {
    Ok(Extras {
        enabled: raw.enabled.unwrap_or(true),
        cors: cors(raw.cors.as_ref(), &format!("{path}.cors"))?,
        origin_user_agent: match &raw.origin_user_agent {
            None => OriginUserAgent::Default,
            Some(value) => OriginUserAgent::parse(value)
                .map_err(|m| error(format!("{path}.origin_user_agent"), m))?,
        },
        origin_headers: origin_headers(raw, secrets, &format!("{path}.origin_headers"))?,
    })
}

fn cors(raw: Option<&RawCors>, path: &str) -> Result<Cors, ConfigError> {
    match raw {
        None => Ok(Cors::Any),
        Some(RawCors::Keyword(word)) if word == "off" => Ok(Cors::Off),
        Some(RawCors::Keyword(word)) => Err(error(
            path,
            format!("`{word}` is not `off` nor {{allow_origin: ...}}"),
        )),
        Some(RawCors::Allow(allow)) => {
            let path = format!("{path}.allow_origin");
            match &allow.allow_origin {
                RawAllowOrigin::One(any) if any == ANY_ORIGIN => Ok(Cors::Any),
                RawAllowOrigin::One(other) => Err(error(
                    path,
                    format!("`{other}` is not \"*\"; list origins as [scheme://host[:port], ...]"),
                )),
                RawAllowOrigin::List(list) if list.is_empty() => Err(error(
                    path,
                    "an empty list allows no page; use `cors: off` for no cors headers",
                )),
                RawAllowOrigin::List(list) => {
                    let mut origins: Vec<String> = Vec::with_capacity(list.len());
                    for (k, entry) in list.iter().enumerate() {
                        let origin = normalize_web_origin(entry)
                            .map_err(|m| error(format!("{path}[{k}]"), m))?;
                        if !origins.contains(&origin) {
                            origins.push(origin);
                        }
                    }
                    Ok(Cors::List(origins))
                }
            }
        }
    }
}

fn origin_headers(
    raw: &RawSource,
    secrets: &dyn SecretResolver,
    path: &str,
) -> Result<Vec<OriginHeader>, ConfigError> {
    let Some(map) = &raw.origin_headers else {
        return Ok(Vec::new());
    };
    let mut headers: Vec<OriginHeader> = Vec::with_capacity(map.len());
    for (name, secret) in map {
        let field = format!("{path}.{name}");
        let lower = origin_header_name(name).map_err(|m| error(&field, m))?;
        if headers.iter().any(|h| h.name == lower) {
            return Err(error(
                field,
                "named twice (header names are case-insensitive)",
            ));
        }
        let value = resolve(secret, secrets, &field)?;
        origin_header_value(&value).map_err(|m| error(&field, m))?;
        headers.push(OriginHeader {
            name: lower,
            value: Secret::new(value),
        });
    }
    Ok(headers)
}

/// The hosts that receive the origin auth headers and `origin_headers`: `auth_hosts` as the
/// origin auth rules made them, unless the source has `origin_headers` and no `origin_auth.hosts`
/// (`auth_hosts_given`), when they are `allowed_origin_hosts` (SPEC §11's default).
///
/// # Errors
/// `origin_headers` with neither list: they would go to any host a signed URL names.
pub(super) fn header_hosts(
    auth_hosts: Vec<HostPattern>,
    auth_hosts_given: bool,
    allowed_origin_hosts: Option<&Vec<HostPattern>>,
    extras: &Extras,
    path: &str,
) -> Result<Vec<HostPattern>, ConfigError> {
    if extras.origin_headers.is_empty() || auth_hosts_given {
        return Ok(auth_hosts);
    }
    match allowed_origin_hosts {
        Some(allowed) => Ok(allowed.clone()),
        None => Err(error(
            format!("{path}.origin_headers"),
            "origin headers need the hosts that may receive them (origin_auth.hosts or \
             allowed_origin_hosts); without them they would go to any host a signed url names",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{MapSecrets, RawConfig};
    use crate::cors::Cors;
    use crate::identity::OriginUserAgent;
    use crate::Source;

    fn source(fields: &str) -> Result<Source, crate::ConfigError> {
        let yaml = format!(
            "sources:\n  - name: a\n    hosts: [a.test]\n    secure_url_tokens: [t]\n{fields}"
        );
        let secrets = MapSecrets::new().with_env("KEY", "from-env");
        RawConfig::from_yaml(&yaml)
            .and_then(|raw| raw.validate(&secrets))
            .map(|config| config.sources.iter().next().expect("one source").clone())
    }

    fn error(fields: &str) -> crate::ConfigError {
        source(fields).expect_err(fields)
    }

    #[test]
    fn defaults() {
        let s = source("").expect("valid");
        assert!(s.enabled);
        assert_eq!(s.cors, Cors::Any);
        assert_eq!(s.origin_user_agent, OriginUserAgent::Default);
        assert!(s.origin_headers.is_empty() && s.origin_auth_hosts.is_empty());
    }

    #[test]
    fn enabled_and_user_agent() {
        assert!(!source("    enabled: false\n").expect("valid").enabled);
        assert_eq!(
            source("    origin_user_agent: forward\n")
                .expect("valid")
                .origin_user_agent,
            OriginUserAgent::Forward
        );
        let err = error("    origin_user_agent: \"a\\nb\"\n");
        assert_eq!(err.path, "sources[0].origin_user_agent");
        let err = error("    enabled: maybe\n");
        assert_eq!(err.path, "sources[0].enabled");
    }

    #[test]
    fn cors_settings() {
        assert_eq!(source("    cors: off\n").expect("off").cors, Cors::Off);
        assert_eq!(
            source("    cors: {allow_origin: \"*\"}\n")
                .expect("any")
                .cors,
            Cors::Any
        );
        assert_eq!(
            source("    cors: {allow_origin: [\"https://App.example.com:443\", \"http://localhost:3000\"]}\n")
                .expect("list")
                .cors,
            Cors::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ])
        );
        for (fields, path, message) in [
            ("    cors: on\n", "sources[0].cors", "`on`"),
            (
                "    cors: {allow_origin: \"https://a.example\"}\n",
                "sources[0].cors.allow_origin",
                "is not \"*\"",
            ),
            (
                "    cors: {allow_origin: []}\n",
                "sources[0].cors.allow_origin",
                "cors: off",
            ),
            (
                "    cors: {allow_origin: [\"https://a.example\", \"a.example\"]}\n",
                "sources[0].cors.allow_origin[1]",
                "not a web origin",
            ),
            (
                "    cors: {allow_origin: [\"https://a.example/\"]}\n",
                "sources[0].cors.allow_origin[0]",
                "not a web origin",
            ),
            ("    cors: {allow_origins: \"*\"}\n", "sources[0].cors", ""),
        ] {
            let err = error(fields);
            assert!(
                err.path == path && err.message.contains(message),
                "{fields}: {err}"
            );
        }
    }

    #[test]
    fn origin_headers_are_secrets_for_the_auth_hosts_only() {
        let s = source(
            "    allowed_origin_hosts: [cdn.example]\n    origin_headers: {X-Api-Key: {env: KEY}, Referer: \"https://www.example/\"}\n",
        )
        .expect("valid");
        let names: Vec<&str> = s.origin_headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["referer", "x-api-key"]);
        assert_eq!(s.origin_headers[1].value.expose(), "from-env");
        assert!(s.origin_auth_host_allowed("cdn.example", 443));
        assert!(!format!("{s:?}").contains("from-env"));
        // origin_auth.hosts, when given, decides for both.
        let s = source(
            "    origin_auth: {hosts: [auth.example]}\n    origin_headers: {X-Api-Key: k}\n",
        )
        .expect("valid");
        assert!(s.origin_auth_host_allowed("auth.example", 443));
        assert!(!s.origin_auth_host_allowed("cdn.example", 443));
    }

    #[test]
    fn origin_header_errors_name_the_header() {
        for (fields, path, message) in [
            (
                "    origin_headers: {X-Api-Key: k}\n",
                "sources[0].origin_headers",
                "any host",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {User-Agent: k}\n",
                "sources[0].origin_headers.User-Agent",
                "origin_user_agent",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {Connection: k}\n",
                "sources[0].origin_headers.Connection",
                "hop-by-hop",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {Accept-Language: k}\n",
                "sources[0].origin_headers.Accept-Language",
                "a client header the gateway forwards",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {Host: k}\n",
                "sources[0].origin_headers.Host",
                "host",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {X-Imgix-Origin-Secret: k}\n",
                "sources[0].origin_headers.X-Imgix-Origin-Secret",
                "origin_auth",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {\"bad name\": k}\n",
                "sources[0].origin_headers.bad name",
                "not a header name",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {X-Key: a, x-key: b}\n",
                "sources[0].origin_headers.x-key",
                "named twice",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {X-Key: \"zqx\\r\\nzqx\"}\n",
                "sources[0].origin_headers.X-Key",
                "control characters",
            ),
            (
                "    allowed_origin_hosts: [c]\n    origin_headers: {X-Key: {env: UNSET}}\n",
                "sources[0].origin_headers.X-Key",
                "UNSET",
            ),
        ] {
            let err = error(fields);
            assert!(
                err.path == path && err.message.contains(message),
                "{fields}: {err}"
            );
            assert!(!err.to_string().contains("zqx"), "{err}");
        }
    }
}
