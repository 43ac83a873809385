//! One case per config rule of the README's Configuration section: each invalid document must be refused with the
//! field path named and a recognisable message, and never with a secret value in the error.

use std::time::Duration;

use ixproxy_core::config::{
    DeferredSecrets, MapSecrets, RawConfig, RawPluginConfig, SecretResolver,
};
use ixproxy_core::ConfigError;

/// The configuration example of the product contract (as in the README), verbatim.
const SPEC_EXAMPLE: &str = r#"
listen: 127.0.0.1:8080            # where the gateway serves
admin_listen: 127.0.0.1:9901      # /metrics (Prometheus) and /healthz
upstream:
  ca_file: /path/extra-ca.pem     # optional, trusted for https origins besides system roots
  connect_timeout: 3s
  timeout: 10s
sources:
  - name: assets
    hosts: [assets.example.com, img.example.com]   # Host values, port ignored, case-insensitive
    secure_url_tokens: [aBcD1234, {env: OLD_TOKEN}]
    origin_auth:
      basic_auth: {username: user, password: {env: ORIGIN_PASSWORD}}
      request_handshake: some-secret
      request_signing_key: {env: SIGNING_KEY}
    allowed_origin_hosts: ["cdn.example.com", "*.example.org"]  # absent = any public host
    allow_private_origins: false   # true only for local development and tests
"#;

/// A valid base with two sources; each case below changes one thing in it.
const BASE: &str = r#"
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9901
upstream:
  connect_timeout: 3s
  timeout: 10s
sources:
  - name: assets
    hosts: [assets.example.com, img.example.com]
    secure_url_tokens: [aBcD1234]
    origin_auth:
      basic_auth: {username: user, password: Pa55w0rd}
      request_handshake: some-secret
      request_signing_key: k3y
    allowed_origin_hosts: [cdn.example.com, "*.example.org"]
  - name: media
    hosts: [media.example.com]
    secure_url_tokens: [t0ken]
"#;

fn spec_secrets() -> MapSecrets {
    MapSecrets::new()
        .with_env("OLD_TOKEN", "old-token-value")
        .with_env("ORIGIN_PASSWORD", "origin-password-value")
        .with_env("SIGNING_KEY", "signing-key-value")
}

fn load(yaml: &str, secrets: &dyn SecretResolver) -> Result<ixproxy_core::Config, ConfigError> {
    RawConfig::from_yaml(yaml).and_then(|raw| raw.validate(secrets))
}

/// Replaces `from` (which must occur in BASE) by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "case edits text not in BASE: {from}");
    BASE.replacen(from, to, 1)
}

struct Case {
    rule: &'static str,
    yaml: String,
    path: &'static str,
    message: &'static str,
    /// A secret value the error must not contain.
    secret: Option<String>,
}

fn case(rule: &'static str, yaml: String, path: &'static str, message: &'static str) -> Case {
    Case {
        rule,
        yaml,
        path,
        message,
        secret: None,
    }
}

fn secret_case(
    rule: &'static str,
    yaml: String,
    path: &'static str,
    message: &'static str,
    secret: impl Into<String>,
) -> Case {
    Case {
        secret: Some(secret.into()),
        ..case(rule, yaml, path, message)
    }
}

fn cases() -> Vec<Case> {
    let long_handshake = "h".repeat(257);
    let long_key = "k".repeat(33);
    vec![
        case(
            "listen is a socket address",
            edit("listen: 127.0.0.1:8080", "listen: nowhere"),
            "listen",
            "not a socket address",
        ),
        case(
            "admin_listen needs a port",
            edit("admin_listen: 127.0.0.1:9901", "admin_listen: 127.0.0.1"),
            "admin_listen",
            "not a socket address",
        ),
        case(
            "admin_listen differs from listen",
            edit("127.0.0.1:9901", "127.0.0.1:8080"),
            "admin_listen",
            "same address as listen",
        ),
        case(
            "durations have a unit",
            edit("connect_timeout: 3s", "connect_timeout: soon"),
            "upstream.connect_timeout",
            "invalid duration `soon`",
        ),
        case(
            "durations have a unit even when numeric",
            edit("timeout: 10s", "timeout: 10"),
            "upstream.timeout",
            "invalid duration `10`",
        ),
        case(
            "durations are not zero",
            edit("timeout: 10s", "timeout: 0s"),
            "upstream.timeout",
            "greater than zero",
        ),
        case(
            "ca_file is not empty",
            edit("upstream:\n", "upstream:\n  ca_file: ''\n"),
            "upstream.ca_file",
            "empty path",
        ),
        case(
            "sources is required",
            "listen: 127.0.0.1:8080\n".into(),
            "",
            "missing field `sources`",
        ),
        case(
            "at least one source",
            "sources: []\n".into(),
            "sources",
            "at least one source",
        ),
        case(
            "unknown top-level field",
            edit("listen:", "colour: blue\nlisten:"),
            "colour",
            "unknown field `colour`",
        ),
        case(
            "unknown upstream field",
            edit("  timeout: 10s", "  timeout: 10s\n  retries: 3"),
            "upstream.retries",
            "unknown field `retries`",
        ),
        case(
            "unknown source field",
            edit("    hosts: [media", "    colour: blue\n    hosts: [media"),
            "sources[1].colour",
            "unknown field `colour`",
        ),
        case(
            "unknown origin_auth field",
            edit("request_handshake:", "request_handshak:"),
            "sources[0].origin_auth.request_handshak",
            "unknown field `request_handshak`",
        ),
        case(
            "source name is not empty",
            edit("name: media", "name: ''"),
            "sources[1].name",
            "empty source name",
        ),
        case(
            "source names are unique",
            edit("name: media", "name: assets"),
            "sources[1].name",
            "duplicate source name `assets`",
        ),
        case(
            "hosts is not empty",
            edit("[media.example.com]", "[]"),
            "sources[1].hosts",
            "at least one host",
        ),
        case(
            "hosts have no port",
            edit("[media.example.com]", "['media.example.com:8080']"),
            "sources[1].hosts[0]",
            "must not contain a port",
        ),
        case(
            "hosts are host names",
            edit("[media.example.com]", "['media example.com']"),
            "sources[1].hosts[0]",
            "invalid character",
        ),
        case(
            "hosts have no empty label",
            edit("[media.example.com]", "['media..example.com']"),
            "sources[1].hosts[0]",
            "empty label",
        ),
        case(
            "hosts are unique across sources",
            edit(
                "[media.example.com]",
                "[media.example.com, IMG.Example.com]",
            ),
            "sources[1].hosts[1]",
            "already served by source `assets`",
        ),
        case(
            "hosts are unique within a source",
            edit(
                "[media.example.com]",
                "[media.example.com, 'media.example.com.']",
            ),
            "sources[1].hosts[1]",
            "already served by this source",
        ),
        case(
            "at least one token",
            edit("[aBcD1234]", "[]"),
            "sources[0].secure_url_tokens",
            "at least one token",
        ),
        case(
            "tokens are not empty",
            edit("[aBcD1234]", "[aBcD1234, '']"),
            "sources[0].secure_url_tokens[1]",
            "empty token",
        ),
        case(
            "env secrets must resolve",
            edit("[t0ken]", "[t0ken, {env: NOT_SET_ANYWHERE}]"),
            "sources[1].secure_url_tokens[1]",
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        case(
            "file secrets must resolve",
            edit("[t0ken]", "[{file: /nonexistent/token}]"),
            "sources[1].secure_url_tokens[0]",
            "no such secret file /nonexistent/token",
        ),
        secret_case(
            "secrets are strings",
            edit("[t0ken]", "[20240229]"),
            "sources[1].secure_url_tokens[0]",
            "expected a string",
            "20240229",
        ),
        case(
            "secret references have one known key",
            edit("[t0ken]", "[{vault: x}]"),
            "sources[1].secure_url_tokens[0]",
            "unknown field `vault`",
        ),
        secret_case(
            "basic_auth is a mapping",
            edit("{username: user, password: Pa55w0rd}", "'user:Pa55w0rd'"),
            "sources[0].origin_auth.basic_auth",
            "invalid type",
            "Pa55w0rd",
        ),
        secret_case(
            "username has no colon",
            edit("username: user", "username: 'us:er'"),
            "sources[0].origin_auth.basic_auth.username",
            "must not contain `:`",
            "us:er",
        ),
        secret_case(
            "password has no colon",
            edit("password: Pa55w0rd", "password: 'Pa:55w0rd'"),
            "sources[0].origin_auth.basic_auth.password",
            "must not contain `:`",
            "Pa:55w0rd",
        ),
        secret_case(
            "username has no control character",
            edit("username: user", "username: \"us\\ter\""),
            "sources[0].origin_auth.basic_auth.username",
            "control characters",
            "us\ter",
        ),
        secret_case(
            "password has no DEL",
            edit("password: Pa55w0rd", "password: \"Pa55\\x7fw0rd\""),
            "sources[0].origin_auth.basic_auth.password",
            "control characters",
            "Pa55\u{7f}w0rd",
        ),
        case(
            "username is not empty",
            edit("username: user", "username: ''"),
            "sources[0].origin_auth.basic_auth.username",
            "empty user name",
        ),
        secret_case(
            "handshake is at most 256 characters",
            edit("some-secret", &long_handshake),
            "sources[0].origin_auth.request_handshake",
            "longer than 256 characters",
            long_handshake.clone(),
        ),
        case(
            "handshake is not empty",
            edit("request_handshake: some-secret", "request_handshake: ''"),
            "sources[0].origin_auth.request_handshake",
            "empty handshake",
        ),
        secret_case(
            "handshake has no control character",
            edit("some-secret", "\"some\\nsecret\""),
            "sources[0].origin_auth.request_handshake",
            "control characters",
            "some\nsecret",
        ),
        case(
            "signing key is not empty",
            edit("request_signing_key: k3y", "request_signing_key: ''"),
            "sources[0].origin_auth.request_signing_key",
            "1 to 32 characters",
        ),
        secret_case(
            "signing key is at most 32 characters",
            edit(
                "request_signing_key: k3y",
                &format!("request_signing_key: {long_key}"),
            ),
            "sources[0].origin_auth.request_signing_key",
            "1 to 32 characters",
            long_key.clone(),
        ),
        secret_case(
            "signing key is latin-1",
            edit("request_signing_key: k3y", "request_signing_key: k€y"),
            "sources[0].origin_auth.request_signing_key",
            "latin-1",
            "k€y",
        ),
        case(
            "wildcard only as the whole leftmost label",
            edit("\"*.example.org\"", "\"exa*mple.org\""),
            "sources[0].allowed_origin_hosts[1]",
            "`*` is only allowed as the whole leftmost label",
        ),
        case(
            "wildcard is not alone",
            edit("\"*.example.org\"", "\"*\""),
            "sources[0].allowed_origin_hosts[1]",
            "omit allowed_origin_hosts",
        ),
        case(
            "wildcard never over an ip",
            edit("\"*.example.org\"", "\"*.10.0.0.1\""),
            "sources[0].allowed_origin_hosts[1]",
            "cannot apply to an ip address",
        ),
        case(
            "a pattern's port is 1-65535",
            edit("[cdn.example.com,", "['cdn.example.com:0',"),
            "sources[0].allowed_origin_hosts[0]",
            "not in 1-65535",
        ),
        case(
            "a pattern's port is a number",
            edit("[cdn.example.com,", "['cdn.example.com:https',"),
            "sources[0].allowed_origin_hosts[0]",
            "invalid port `https`",
        ),
        case(
            "origin_auth.hosts patterns follow the same rules",
            edit(
                "      request_signing_key: k3y\n",
                "      request_signing_key: k3y\n      hosts: [cdn.example.com, '[::1]:70000']\n",
            ),
            "sources[0].origin_auth.hosts[1]",
            "not in 1-65535",
        ),
        case(
            "source hosts still carry no port",
            edit("[media.example.com]", "['media.example.com:443']"),
            "sources[1].hosts[0]",
            "must not contain a port",
        ),
        case(
            "max_redirects is bounded",
            edit("  timeout: 10s\n", "  timeout: 10s\n  max_redirects: 21\n"),
            "upstream.max_redirects",
            "at most 20",
        ),
        case(
            "max_body_bytes is positive",
            edit("  timeout: 10s\n", "  timeout: 10s\n  max_body_bytes: 0\n"),
            "upstream.max_body_bytes",
            "greater than zero",
        ),
        case(
            "limits are positive",
            edit(
                "sources:\n",
                "limits: {max_request_target_bytes: 0}\nsources:\n",
            ),
            "limits.max_request_target_bytes",
            "greater than zero",
        ),
        case(
            "limits has no unknown fields",
            edit("sources:\n", "limits: {max_uri: 10}\nsources:\n"),
            "limits.max_uri",
            "unknown field",
        ),
        case(
            "content types are media type prefixes",
            edit(
                "    secure_url_tokens: [t0ken]\n",
                "    secure_url_tokens: [t0ken]\n    allowed_content_types: [image/, 'image']\n",
            ),
            "sources[1].allowed_content_types[1]",
            "not a media type prefix",
        ),
        case(
            "origin auth needs the hosts that may receive it",
            edit(
                "    allowed_origin_hosts: [cdn.example.com, \"*.example.org\"]\n",
                "",
            ),
            "sources[0].origin_auth.hosts",
            "origin auth needs the hosts that may receive it",
        ),
        case(
            "origin_auth.hosts are host patterns",
            edit(
                "      request_signing_key: k3y\n",
                "      request_signing_key: k3y\n      hosts: [cdn.example.com, 'a b']\n",
            ),
            "sources[0].origin_auth.hosts[1]",
            "invalid character",
        ),
        case(
            "upstream.body_timeout is a positive duration",
            edit("  timeout: 10s\n", "  timeout: 10s\n  body_timeout: 0s\n"),
            "upstream.body_timeout",
            "greater than zero",
        ),
        case(
            "client timeouts are durations",
            edit(
                "sources:\n",
                "limits: {client_header_timeout: soon}\nsources:\n",
            ),
            "limits.client_header_timeout",
            "invalid duration",
        ),
        case(
            "max_connections is at least one",
            edit("sources:\n", "limits: {max_connections: 0}\nsources:\n"),
            "limits.max_connections",
            "greater than zero",
        ),
        case(
            "max_connections_per_client is a share of max_connections",
            edit(
                "sources:\n",
                "limits: {max_connections: 10, max_connections_per_client: 11}\nsources:\n",
            ),
            "limits.max_connections_per_client",
            "at most limits.max_connections (10)",
        ),
        case(
            "max_connections_per_client is a count",
            edit(
                "sources:\n",
                "limits: {max_connections_per_client: -1}\nsources:\n",
            ),
            "limits.max_connections_per_client",
            "expected usize",
        ),
    ]
}

#[test]
fn each_rule_names_its_field() {
    let secrets = spec_secrets();
    let mut failures = Vec::new();
    for c in cases() {
        match load(&c.yaml, &secrets) {
            Ok(_) => failures.push(format!("{}: accepted", c.rule)),
            Err(err) => {
                let text = err.to_string();
                if err.path != c.path {
                    failures.push(format!(
                        "{}: path `{}`, want `{}` ({text})",
                        c.rule, err.path, c.path
                    ));
                }
                if !err.message.contains(c.message) {
                    failures.push(format!(
                        "{}: message `{}` lacks `{}`",
                        c.rule, err.message, c.message
                    ));
                }
                if !err.message.starts_with(|ch: char| !ch.is_uppercase()) {
                    failures.push(format!("{}: message not lower-case: {text}", c.rule));
                }
                if let Some(secret) = &c.secret {
                    if text.contains(secret.as_str()) {
                        failures.push(format!("{}: error reveals the secret: {text}", c.rule));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_base_of_the_cases_is_valid() {
    let config = load(BASE, &MapSecrets::new()).expect("BASE validates");
    assert_eq!(config.sources.len(), 2);
}

#[test]
fn the_spec_example_validates() {
    let config = load(SPEC_EXAMPLE, &spec_secrets()).expect("the configuration example validates");
    assert_eq!(config.listen, "127.0.0.1:8080".parse().expect("addr"));
    assert_eq!(config.admin_listen, "127.0.0.1:9901".parse().expect("addr"));
    assert_eq!(
        config.upstream.ca_file.as_deref(),
        Some("/path/extra-ca.pem")
    );
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.upstream.timeout, Duration::from_secs(10));

    let source = config
        .sources
        .by_host("IMG.example.com:8443")
        .expect("source by host");
    assert_eq!(source.name, "assets");
    assert_eq!(source.hosts, ["assets.example.com", "img.example.com"]);
    let tokens: Vec<&str> = source.tokens.iter().map(|t| t.expose()).collect();
    assert_eq!(tokens, ["aBcD1234", "old-token-value"]);
    let basic = source.origin_auth.basic.as_ref().expect("basic auth");
    assert_eq!(basic.username.expose(), "user");
    assert_eq!(basic.password.expose(), "origin-password-value");
    let handshake = source.origin_auth.handshake.as_ref().expect("handshake");
    assert_eq!(handshake.expose(), "some-secret");
    let key = source
        .origin_auth
        .signing_key
        .as_ref()
        .expect("signing key");
    assert_eq!(key.secret().expose(), "signing-key-value");
    assert!(source.origin_host_allowed("cdn.example.com", 443));
    assert!(source.origin_host_allowed("a.b.example.org", 443));
    assert!(!source.origin_host_allowed("example.org", 443));
    assert!(!source.origin_host_allowed("cdn.example.com.evil.net", 443));
    assert!(!source.allow_private_origins);

    let dump = format!("{config:?}");
    for secret in [
        "aBcD1234",
        "old-token-value",
        "origin-password-value",
        "some-secret",
        "signing-key-value",
    ] {
        assert!(!dump.contains(secret), "Debug output reveals {secret}");
    }
}

#[test]
fn defaults_apply_when_fields_are_absent() {
    let config = load(
        "sources: [{name: a, hosts: [a.test], secure_url_tokens: [t]}]",
        &MapSecrets::new(),
    )
    .expect("minimal config validates");
    assert_eq!(config.listen, "127.0.0.1:8080".parse().expect("addr"));
    assert_eq!(config.admin_listen, "127.0.0.1:9901".parse().expect("addr"));
    assert_eq!(config.upstream.ca_file, None);
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.upstream.timeout, Duration::from_secs(10));
    assert_eq!(config.upstream.body_timeout, Duration::from_secs(30));
    assert_eq!(config.client.header_timeout, Duration::from_secs(10));
    assert_eq!(config.client.idle_timeout, Duration::from_secs(30));
    assert_eq!(config.client.write_timeout, Duration::from_secs(30));
    assert_eq!(config.client.max_connections, 10_000);
    assert_eq!(
        config.client.max_connections_per_client, 0,
        "no per-client limit"
    );
    assert_eq!(config.sources.limits().max_inflight_per_source, 0);
    let source = config.sources.by_host("a.test").expect("source");
    assert_eq!(source.origin_auth, Default::default());
    assert_eq!(source.allowed_origin_hosts, None);
    assert!(source.origin_host_allowed("anything.example", 443));
}

#[test]
fn origin_auth_hosts_default_to_the_allowed_origin_hosts() {
    let config = load(BASE, &MapSecrets::new()).expect("base validates");
    let assets = config
        .sources
        .by_host("assets.example.com")
        .expect("assets");
    assert!(assets.origin_auth_host_allowed("cdn.example.com", 443));
    assert!(assets.origin_auth_host_allowed("a.example.org", 443));
    assert!(!assets.origin_auth_host_allowed("elsewhere.example", 443));
    let narrowed = edit(
        "      request_signing_key: k3y\n",
        "      request_signing_key: k3y\n      hosts: [cdn.example.com]\n",
    );
    let config = load(&narrowed, &MapSecrets::new()).expect("narrowed validates");
    let assets = config
        .sources
        .by_host("assets.example.com")
        .expect("assets");
    assert!(assets.origin_auth_host_allowed("cdn.example.com", 443));
    assert!(!assets.origin_auth_host_allowed("a.example.org", 443));
    assert!(
        assets.origin_host_allowed("a.example.org", 443),
        "still fetched, without auth"
    );
}

#[test]
fn an_empty_allow_list_allows_nothing() {
    let yaml =
        "sources: [{name: a, hosts: [a.test], secure_url_tokens: [t], allowed_origin_hosts: []}]";
    let config = load(yaml, &MapSecrets::new()).expect("valid");
    let source = config.sources.by_host("a.test").expect("source");
    assert!(!source.origin_host_allowed("cdn.example.com", 443));
}

#[test]
fn deferred_secrets_check_structure_only() {
    let config =
        load(SPEC_EXAMPLE, &DeferredSecrets).expect("env references pass with placeholders");
    assert_eq!(config.sources.len(), 1);
    let with_file = SPEC_EXAMPLE.replace("{env: SIGNING_KEY}", "{file: /run/key}");
    let err = load(&with_file, &DeferredSecrets).expect_err("files are not available to envoy");
    assert_eq!(err.path, "sources[0].origin_auth.request_signing_key");
}

/// The `sources` part of SPEC_EXAMPLE as the Envoy filter receives it.
fn plugin_json() -> String {
    let raw = RawConfig::from_yaml(SPEC_EXAMPLE).expect("parses");
    serde_json::json!({ "sources": raw.sources }).to_string()
}

#[test]
fn plugin_json_round_trips_and_validates() {
    let raw = RawPluginConfig::from_json(&plugin_json()).expect("plugin json parses");
    let plugin = raw.validate(&spec_secrets()).expect("validates");
    let source = plugin
        .sources
        .by_host("assets.example.com")
        .expect("source");
    assert_eq!(source.tokens[1].expose(), "old-token-value");
    assert_eq!(plugin.timeout, ixproxy_core::config::DEFAULT_TIMEOUT);
    let with_timeout = plugin_json().replacen('{', r#"{"upstream": {"timeout": "250ms"}, "#, 1);
    let plugin = RawPluginConfig::from_json(&with_timeout)
        .and_then(|raw| raw.validate(&spec_secrets()))
        .expect("validates");
    assert_eq!(plugin.timeout, std::time::Duration::from_millis(250));
    let bad = plugin_json().replacen('{', r#"{"upstream": {"timeout": "soon"}, "#, 1);
    let err = RawPluginConfig::from_json(&bad)
        .and_then(|raw| raw.validate(&spec_secrets()))
        .expect_err("bad timeout");
    assert_eq!(err.path, "upstream.timeout");
}

#[test]
fn plugin_json_errors_name_the_field() {
    let json = plugin_json().replace("\"request_handshake\"", "\"handshake\"");
    let err = RawPluginConfig::from_json(&json).expect_err("unknown field");
    assert_eq!(err.path, "sources[0].origin_auth.handshake");
    assert!(err.message.contains("unknown field `handshake`"), "{err}");

    let err =
        RawPluginConfig::from_json(&format!("{} trailing", plugin_json())).expect_err("trailing");
    assert_eq!(err.path, "");

    let json = plugin_json().replace("some-secret", &"s".repeat(300));
    let err = RawPluginConfig::from_json(&json)
        .and_then(|raw| raw.validate(&spec_secrets()))
        .expect_err("too long");
    assert_eq!(
        err.to_string(),
        "sources[0].origin_auth.request_handshake: longer than 256 characters"
    );

    let err = RawPluginConfig::from_json(r#"{"sources": []}"#)
        .and_then(|raw| raw.validate(&spec_secrets()))
        .expect_err("empty");
    assert_eq!(err.path, "sources");
}
