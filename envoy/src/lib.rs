//! `ixproxy envoy-config`: the Envoy v3 bootstrap that runs the ixproxy Wasm filter for the same
//! YAML file the native gateway serves (README: Configuration, Command line).
//!
//! The generated Envoy listens on `listen`, serves its admin API on `admin_listen`, runs the Wasm
//! filter (which decides and rewrites the request), then Envoy's dynamic forward proxy, which
//! resolves the origin host the filter put in `:authority`, then an RBAC filter refusing private
//! resolved addresses. Two dynamic-forward-proxy clusters share one DNS cache: a plain one and a
//! TLS one (SNI and certificate names from the origin host, trusted CAs = system roots plus
//! `upstream.ca_file`). The routes pick one by the `:scheme` the filter set.
//!
//! The generator holds no policy of its own: the deny list, the followed redirect statuses, the
//! statuses and bodies of Envoy's own replies and the wire names shared with the filter all come
//! from `ixproxy_core`, so the bootstrap, the filter and the native gateway cannot drift apart.
//!
//! - [`listener`](crate::listener): the listener, its HTTP connection manager and the routes;
//! - [`listener_tls`](crate::listener_tls): `tls:` as filter chains chosen by SNI;
//! - [`local_reply`](crate::local_reply): Envoy's own replies mapped onto the core's rejections;
//! - [`rbac`](crate::rbac): the filter refusing private resolved origin addresses;
//! - [`clusters`](crate::clusters): the two dynamic-forward-proxy clusters, TLS and trusted CAs;
//! - [`wasm`](crate::wasm): the ixproxy filter entries (HTTP filter and upstream filter);
//! - [`bounds`](crate::bounds): Envoy's own bounds on connections, buffers and concurrency
//!   (overload manager, circuit breakers, HTTP/2 windows).
//!
//! Secrets never enter the bootstrap as values: `{env: NAME}` stays a reference in the filter's
//! JSON configuration and `NAME` is listed in `vm_config.environment_variables.host_env_keys`,
//! so Envoy copies the variable from its own environment into the Wasm VM. A literal secret
//! would be part of the bootstrap, which Envoy's admin API shows to anyone who asks
//! (`/config_dump`), so it is refused unless [`Options::allow_literal_secrets`] says otherwise
//! (`--allow-literal-secrets`), and then stays in the plugin configuration where it was written.
//! `{file: PATH}` is refused: the filter cannot read files.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ixproxy_core::config::{
    warnings, CacheLimits, ClientLimits, ConfigWarning, DeferredSecrets, Limits, RawConfig,
    RawPluginConfig, RawSource, RawUpstream, SecretRef, SecretResolver,
};
use ixproxy_core::envoy::STATS_TAGS;
use ixproxy_core::ConfigError;
use serde_yaml::{Mapping, Value};

/// A YAML mapping whose keys keep the order written (Envoy configs read top-down: `name` first).
macro_rules! map {
    ($($key:expr => $value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut mapping = ::serde_yaml::Mapping::new();
        $(mapping.insert(::serde_yaml::Value::from($key), ::serde_yaml::Value::from($value));)*
        ::serde_yaml::Value::Mapping(mapping)
    }};
}

mod access_log;
mod bounds;
mod cache;
pub mod cache_files;
mod clusters;
mod listener;
mod listener_tls;
mod local_reply;
mod rbac;
mod wasm;

pub use clusters::SYSTEM_CA_BUNDLE;

/// Why no Envoy config could be generated.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyConfigError {
    /// The ixproxy config is invalid (the message names the field), including `{file: PATH}`
    /// secrets, which the Envoy filter cannot read.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// `upstream.ca_file` could not be read.
    #[error("upstream.ca_file: cannot read {path}: {source}")]
    CaFile {
        /// The path as resolved against the config file's directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The wasm path could not be made absolute.
    #[error("--wasm: cannot make {path} absolute: {source}")]
    WasmPath {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// JSON or YAML serialization failed (not expected for the values built here).
    #[error("cannot write the envoy config: {0}")]
    Serialize(String),
    /// The config holds literal secrets and [`Options::allow_literal_secrets`] is off; `paths`
    /// names every field holding one (`sources[0].secure_url_tokens[0]`), in config order.
    #[error(
        "literal secrets would be readable in envoy's /config_dump (the filter's configuration \
         is part of the bootstrap): {}; write each as {{env: NAME}} (envoy then passes the \
         variable to the filter through host_env_keys) or pass --allow-literal-secrets",
        paths.join(", ")
    )]
    LiteralSecrets {
        /// The field paths, never the values.
        paths: Vec<String>,
    },
}

/// What [`generate_with`] may do beyond the safe defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Embed literal secrets in the bootstrap (where Envoy's `/config_dump` shows them)
    /// instead of refusing the config (`ixproxy envoy-config --allow-literal-secrets`).
    pub allow_literal_secrets: bool,
}

/// The warning for each native-only operating field set in a config given to the generator.
pub const NATIVE_ONLY_WARNING: &str = "not rendered into the Envoy bootstrap: only ixproxy serve \
    applies it (Envoy has its own --concurrency and --drain-time-s, and no per-client connection \
    limit)";

/// Said by `ixproxy envoy-config` when `purge_api_keys` is set: imgix's purge API is served by
/// the native gateway's admin listener only.
pub const PURGE_API_WARNING: &str = "not rendered into the Envoy bootstrap: only ixproxy serve \
    has imgix's purge API (Envoy's admin listener is Envoy's own and its cache has no purge); the \
    keys are not read";

/// Said by `ixproxy envoy-config` when `cache.peers` is set: purges reach the fleet through the
/// native gateway's admin listener only.
pub const PEERS_WARNING: &str = "not rendered into the Envoy bootstrap: only ixproxy serve \
    forwards a purge to its peers (Envoy's cache has no purge)";

/// The part of [`CACHE_WARNING`] that holds with either store.
macro_rules! cache_channel_warning {
    () => {
        "on envoy 1.40 a cacheable miss is fetched through the cache filter's own channel: an \
         origin redirect there is a 502, upstream.timeout and body_timeout do not apply, \
         concurrent misses each fetch the origin"
    };
}

/// What Envoy 1.40's HTTP cache changes for a cacheable miss (README, *Caching*, *Envoy*): said
/// by `ixproxy envoy-config` whenever `cache:` is on without `cache.disk`.
pub const CACHE_WARNING: &str = concat!(
    cache_channel_warning!(),
    ", and max_bytes is not enforced (nothing is evicted)"
);

/// [`CACHE_WARNING`] with `cache.disk`, whose store evicts (see [`DISK_CACHE_WARNING`]).
pub const DISK_CACHE_CHANNEL_WARNING: &str = cache_channel_warning!();

/// What `cache.disk` is on Envoy 1.40 (README, *Caching*, *`cache.disk` on Envoy*): said by
/// `ixproxy envoy-config` whenever it is set.
pub const DISK_CACHE_WARNING: &str = "on envoy 1.40 cache.disk renders envoy's file-system \
cache store in place of the memory store (one cache filter holds one store; cache.max_bytes is \
not used, envoy evicts the files least recently accessed or changed, as the filesystem records it, \
under cache.disk.max_bytes: not true LRU on relatime or noatime mounts): the directory must exist, be \
writable by envoy and be on a filesystem with O_TMPFILE (ext4, xfs, btrfs, tmpfs) BEFORE envoy \
starts (else nothing is stored until envoy restarts), its entries carry no checksum (bytes \
changed in a file are served as they are, and a truncated file crashes envoy when it is \
requested: run `ixproxy envoy-cache-purge --damaged` on the directory before envoy starts), and \
envoy has no purge API (`ixproxy envoy-cache-purge --url` removes a URL's files; a fill or a \
304 refresh in flight can store it again: re-run at least upstream.timeout plus \
upstream.body_timeout later, which envoy's cache channel does not apply)";

/// Said by `ixproxy envoy-config` when `limits.client_write_timeout` is shorter than
/// `upstream.body_timeout`: on Envoy one stream idle timer bounds both (see the route's
/// `idle_timeout` in `listener`).
pub const CLIENT_STALL_WARNING: &str = "on envoy a stream whose client stops reading while the \
origin's body still streams is reset after upstream.body_timeout, not this shorter \
client_write_timeout: envoy's stream idle timer cannot tell it from an origin that pauses (set \
upstream.body_timeout to at most client_write_timeout for the same bound on both runtimes)";

/// A generated bootstrap and what is worth telling the user about the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The Envoy bootstrap (YAML) behind a two-line comment saying it is generated.
    pub bootstrap: String,
    /// The config's warnings (`ixproxy_core::config::warnings`), except those about the value
    /// of an `{env: NAME}` secret, which only Envoy's environment holds.
    pub warnings: Vec<ConfigWarning>,
}

/// Generates the Envoy bootstrap (YAML) for the ixproxy config `config_yaml`, refusing literal
/// secrets: [`generate_with`] with the default [`Options`], without the warnings.
///
/// `config_dir` is the directory a relative `upstream.ca_file` is read from; pass the current
/// directory to read it the way `ixproxy serve` does (as written, relative to where it runs).
/// `wasm_path` is where Envoy will find the built filter (`ixproxy_filter.wasm`); a
/// relative path is made absolute against the current directory. The file is not opened, so a
/// config can be generated for another machine or a container path.
///
/// Returns the bootstrap as one YAML document behind a two-line comment saying it is generated.
///
/// # Errors
/// An invalid config (the field is named), a `{file: PATH}` secret, an unreadable
/// `upstream.ca_file`, a wasm path that cannot be made absolute, or literal secrets.
pub fn generate(
    config_yaml: &str,
    config_dir: &Path,
    wasm_path: &Path,
) -> Result<String, EnvoyConfigError> {
    generate_with(config_yaml, config_dir, wasm_path, &Options::default()).map(|g| g.bootstrap)
}

/// [`generate`] with `options`; also returns the config's warnings.
///
/// # Errors
/// As [`generate`]; [`EnvoyConfigError::LiteralSecrets`] only without
/// [`Options::allow_literal_secrets`], and only once everything else is valid.
pub fn generate_with(
    config_yaml: &str,
    config_dir: &Path,
    wasm_path: &Path,
    options: &Options,
) -> Result<Generated, EnvoyConfigError> {
    render(
        config_yaml,
        config_dir,
        wasm_path,
        Path::new(SYSTEM_CA_BUNDLE),
        options,
    )
}

/// [`generate_with`] with the system CA bundle location as a parameter (tests use a fake one).
fn render(
    config_yaml: &str,
    config_dir: &Path,
    wasm_path: &Path,
    system_ca: &Path,
    options: &Options,
) -> Result<Generated, EnvoyConfigError> {
    let mut raw = RawConfig::from_yaml(config_yaml)?;
    // Envoy has no purge API: its keys are neither resolved here (an `{env:}` key would join
    // the Wasm VM's environment, a `{file:}` one cannot be read) nor rendered, only named.
    let purge_api_keys = std::mem::take(&mut raw.purge_api_keys);
    let literals = secret_paths(&raw.sources, |s| matches!(s, SecretRef::Literal(_)));
    let deferred = secret_paths(&raw.sources, |s| matches!(s, SecretRef::Env { .. }));
    let secrets = RecordingSecrets::default();
    let config = raw.clone().validate(&secrets)?;
    // The filter needs the sources and the request-path limits, and the timeout (which it
    // spreads over redirect hops); Envoy's clusters carry the CA file and connect timeout.
    let plugin_json = serde_json::to_string(&RawPluginConfig {
        sources: raw.sources.clone(),
        upstream: RawUpstream {
            timeout: raw.upstream.timeout.clone(),
            max_redirects: raw.upstream.max_redirects,
            max_body_bytes: raw.upstream.max_body_bytes,
            ..RawUpstream::default()
        },
        limits: raw.limits.clone(),
        access_log: raw.access_log,
        cached: config.cache.is_some(),
        client_ip_by_envoy: config.operating.trusted_proxies.is_empty(),
        fallback_redirects: raw
            .sources
            .iter()
            .any(|s| s.image_missing.is_some() || s.image_error.is_some()),
    })
    .map_err(|e| EnvoyConfigError::Serialize(e.to_string()))?;
    // A warning about an `{env: NAME}` secret's value would be about the placeholder.
    let mut warnings: Vec<ConfigWarning> = warnings(&config)
        .into_iter()
        .filter(|w| !deferred.contains(&w.path))
        .collect();
    match config.cache.as_ref().map(|c| c.disk.is_some()) {
        None => {}
        Some(false) => warnings.push(ConfigWarning {
            path: "cache".to_owned(),
            message: CACHE_WARNING.to_owned(),
        }),
        Some(true) => warnings.extend([
            ConfigWarning {
                path: "cache".to_owned(),
                message: DISK_CACHE_CHANNEL_WARNING.to_owned(),
            },
            ConfigWarning {
                path: "cache.disk".to_owned(),
                message: DISK_CACHE_WARNING.to_owned(),
            },
        ]),
    }
    if config.client.write_timeout < config.upstream.body_timeout {
        warnings.push(ConfigWarning {
            path: "limits.client_write_timeout".to_owned(),
            message: CLIENT_STALL_WARNING.to_owned(),
        });
    }
    let native_only = config.client.native_only_fields().into_iter();
    for field in native_only.chain(config.operating.native_only_fields()) {
        warnings.push(ConfigWarning {
            path: field.to_owned(),
            message: NATIVE_ONLY_WARNING.to_owned(),
        });
    }
    if !purge_api_keys.is_empty() {
        warnings.push(ConfigWarning {
            path: "purge_api_keys".to_owned(),
            message: PURGE_API_WARNING.to_owned(),
        });
    }
    if config.cache.as_ref().is_some_and(|c| c.peers.is_some()) {
        // The core's `cache.peers` warning is about the native admin listener: replaced here.
        warnings.retain(|w| w.path != "cache.peers");
        warnings.push(ConfigWarning {
            path: "cache.peers".to_owned(),
            message: PEERS_WARNING.to_owned(),
        });
    }
    let env_keys = secrets.names.into_inner();
    // What is embedded is parsed back the way the filter's on_configure parses it, and the
    // routes' limits and timeout are taken from that result: Envoy then enforces exactly what
    // the filter was configured with.
    let plugin = RawPluginConfig::from_json(&plugin_json)?.validate(&DeferredSecrets)?;

    let wasm_path =
        std::path::absolute(wasm_path).map_err(|source| EnvoyConfigError::WasmPath {
            path: wasm_path.to_owned(),
            source,
        })?;
    let trusted_ca =
        clusters::trusted_ca(config.upstream.ca_file.as_deref(), config_dir, system_ca)?;
    // Refused only once everything else is valid: the config itself is fine, the bootstrap is
    // just not where these values should be.
    if !literals.is_empty() && !options.allow_literal_secrets {
        return Err(EnvoyConfigError::LiteralSecrets { paths: literals });
    }

    let bootstrap = bootstrap(&Parts {
        limits: *plugin.sources.limits(),
        listen: config.listen,
        admin_listen: config.admin_listen,
        connect_timeout: config.upstream.connect_timeout,
        timeout: plugin.timeout,
        body_timeout: config.upstream.body_timeout,
        client: config.client,
        cache: config.cache.map(|cache| cache::absolute(cache, config_dir)),
        plugin_json,
        env_keys,
        wasm_path,
        trusted_ca,
        access_log: config.operating.access_log,
        trusted_proxies: config.operating.trusted_proxies.clone(),
        tls: config
            .operating
            .tls
            .as_ref()
            .map(|tls| listener_tls::absolute(tls, config_dir)),
        fallbacks: plugin.fallback_redirects,
    });
    let yaml = serde_yaml::to_string(&bootstrap)
        .map_err(|e| EnvoyConfigError::Serialize(e.to_string()))?;
    Ok(Generated {
        bootstrap: format!(
            "# Envoy bootstrap generated by `ixproxy envoy-config`; edit the ixproxy config and\n\
             # regenerate rather than editing this file.\n{yaml}"
        ),
        warnings,
    })
}

/// [`render`] allowing literal secrets, returning the bootstrap only: the tests' configs carry
/// literal secrets on purpose.
#[cfg(test)]
fn generate_with_system_ca(
    config_yaml: &str,
    config_dir: &Path,
    wasm_path: &Path,
    system_ca: &Path,
) -> Result<String, EnvoyConfigError> {
    let options = Options {
        allow_literal_secrets: true,
    };
    render(config_yaml, config_dir, wasm_path, system_ca, &options).map(|g| g.bootstrap)
}

/// The paths of the secret fields of `sources` (`sources[0].secure_url_tokens[1]`) for which
/// `pick` holds, in config order.
fn secret_paths(sources: &[RawSource], pick: fn(&SecretRef) -> bool) -> Vec<String> {
    let mut paths = Vec::new();
    let mut add = |path: String, secret: &SecretRef| {
        if pick(secret) {
            paths.push(path);
        }
    };
    for (i, source) in sources.iter().enumerate() {
        for (k, token) in source.secure_url_tokens.iter().enumerate() {
            add(
                format!("sources[{i}].secure_url_tokens[{k}]"),
                &token.secret,
            );
        }
        for (name, secret) in source.origin_headers.iter().flatten() {
            add(format!("sources[{i}].origin_headers.{name}"), secret);
        }
        let Some(auth) = &source.origin_auth else {
            continue;
        };
        let auth_path = format!("sources[{i}].origin_auth");
        if let Some(basic) = &auth.basic_auth {
            add(format!("{auth_path}.basic_auth.username"), &basic.username);
            add(format!("{auth_path}.basic_auth.password"), &basic.password);
        }
        if let Some(secret) = &auth.request_handshake {
            add(format!("{auth_path}.request_handshake"), secret);
        }
        if let Some(secret) = &auth.request_signing_key {
            add(format!("{auth_path}.request_signing_key"), secret);
        }
    }
    paths
}

/// Resolves `{env: NAME}` like [`DeferredSecrets`] (a placeholder, the value belongs to Envoy's
/// environment) and remembers each `NAME`, in config order, for `host_env_keys`.
#[derive(Debug, Default)]
struct RecordingSecrets {
    names: RefCell<Vec<String>>,
}

impl SecretResolver for RecordingSecrets {
    fn env(&self, name: &str) -> Result<String, String> {
        let mut names = self.names.borrow_mut();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        DeferredSecrets.env(name)
    }

    fn file(&self, path: &str) -> Result<String, String> {
        DeferredSecrets.file(path)
    }
}

/// Everything the bootstrap depends on, validated.
struct Parts {
    /// The filter's limits (`max_redirects` and the request limits matter to Envoy).
    limits: Limits,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    connect_timeout: Duration,
    /// `upstream.timeout`: the route timeout.
    timeout: Duration,
    /// `upstream.body_timeout`: the route's idle timeout.
    body_timeout: Duration,
    /// The client connection limits (`limits.client_*`, `limits.max_connections`).
    client: ClientLimits,
    /// The response cache (`cache:`), if on.
    cache: Option<CacheLimits>,
    /// The filter's plugin configuration, as embedded.
    plugin_json: String,
    /// `{env: NAME}` names, in config order.
    env_keys: Vec<String>,
    wasm_path: PathBuf,
    /// The TLS cluster's `trusted_ca` data source.
    trusted_ca: Value,
    /// `access_log`.
    access_log: ixproxy_core::config::AccessLogFormat,
    /// `trusted_proxies`.
    trusted_proxies: Vec<ixproxy_core::addr::IpNet>,
    /// `tls:`, its files made absolute.
    tls: Option<ixproxy_core::config::Tls>,
    /// Some source has a fallback image: the custom response filter takes the filter's
    /// fallback hops (see [`crate::listener`]).
    fallbacks: bool,
}

fn bootstrap(p: &Parts) -> Value {
    map! {
        // The admin API (metrics, readiness) stays reachable when clients use up
        // `max_connections`.
        "admin" => map! {
            "address" => socket_address(p.admin_listen),
            "ignore_global_conn_limit" => true,
        },
        "stats_config" => map! {
            "stats_tags" => STATS_TAGS
                .iter()
                .map(|(name, regex)| map! { "tag_name" => *name, "regex" => *regex })
                .collect::<Vec<_>>(),
        },
        "static_resources" => map! {
            "listeners" => vec![listener::listener(p)],
            "clusters" => clusters::clusters(p),
        },
        "overload_manager" => bounds::overload_manager(&p.client),
    }
}

/// Envoy's JSON form of a duration (`3s`, `0.500000000s`).
/// `file` made absolute against `config_dir`, where the generator resolves every relative path
/// of the config (Envoy would take it relative to its own working directory).
fn absolute_in(config_dir: &Path, file: &str) -> String {
    let joined = config_dir.join(file);
    std::path::absolute(&joined)
        .unwrap_or(joined)
        .to_string_lossy()
        .into_owned()
}

fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

fn socket_address(addr: SocketAddr) -> Value {
    map! {
        "socket_address" => map! {
            "address" => addr.ip().to_string(),
            "port_value" => addr.port(),
        },
    }
}

/// A typed extension config: `@type` first, then `fields`.
fn typed(type_name: &str, mut fields: Value) -> Value {
    let mut mapping = Mapping::new();
    mapping.insert(
        "@type".into(),
        format!("type.googleapis.com/{type_name}").into(),
    );
    if let Value::Mapping(fields) = &mut fields {
        mapping.extend(std::mem::take(fields));
    }
    Value::Mapping(mapping)
}

fn strings(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(*s)).collect())
}

/// What the tests of every module share: a config using every kind of secret and accessors
/// into the generated bootstrap.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use serde_yaml::Value;

    /// The generator's test config: every kind of secret, two sources (shared with the
    /// real-Envoy tests of the conformance crate).
    pub(crate) const CONFIG: &str = include_str!("../testdata/two-sources.yaml");

    /// Generates `yaml` with a system CA bundle that does not exist.
    pub(crate) fn generate_ok(yaml: &str) -> (String, Value) {
        let text = super::generate_with_system_ca(
            yaml,
            Path::new("/nonexistent-config-dir"),
            Path::new("/opt/ixproxy/ixproxy_filter.wasm"),
            Path::new("/nonexistent/ca.pem"),
        )
        .unwrap_or_else(|e| panic!("generation failed: {e}"));
        let value: Value = serde_yaml::from_str(&text).expect("generated yaml parses");
        (text, value)
    }

    pub(crate) fn hcm(bootstrap: &Value) -> &Value {
        &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]
    }

    /// The names of the listener's HTTP filters, in order.
    pub(crate) fn filter_names(bootstrap: &Value) -> Vec<String> {
        hcm(bootstrap)["http_filters"]
            .as_sequence()
            .expect("filters")
            .iter()
            .filter_map(|f| f["name"].as_str().map(str::to_owned))
            .collect()
    }

    pub(crate) fn wasm_config(bootstrap: &Value) -> &Value {
        &hcm(bootstrap)["http_filters"][0]["typed_config"]["config"]
    }

    pub(crate) fn cluster<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
        bootstrap["static_resources"]["clusters"]
            .as_sequence()
            .and_then(|clusters| clusters.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ixproxy_core::config::MapSecrets;
    use ixproxy_core::envoy::UPSTREAM_ROOT_ID;

    use super::testing::{generate_ok, wasm_config, CONFIG};
    use super::*;

    #[test]
    fn env_secrets_become_host_env_keys_and_stay_references() {
        let (_, bootstrap) = generate_ok(CONFIG);
        let wasm = wasm_config(&bootstrap);
        assert_eq!(
            wasm["vm_config"]["environment_variables"]["host_env_keys"],
            serde_yaml::from_str::<Value>(
                "[IXPROXY_TEST_TOKEN, IXPROXY_TEST_PASSWORD, IXPROXY_TEST_SIGNING_KEY]"
            )
            .expect("yaml")
        );
        assert_eq!(
            wasm["vm_config"]["code"]["local"]["filename"],
            "/opt/ixproxy/ixproxy_filter.wasm"
        );
        assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        let plugin = wasm["configuration"]["value"]
            .as_str()
            .expect("string value");
        // The filter's own parser accepts it, and resolving it needs exactly those variables.
        let secrets = MapSecrets::new()
            .with_env("IXPROXY_TEST_TOKEN", "t")
            .with_env("IXPROXY_TEST_PASSWORD", "p")
            .with_env("IXPROXY_TEST_SIGNING_KEY", "k");
        let validated = RawPluginConfig::from_json(plugin)
            .and_then(|raw| raw.validate(&secrets))
            .expect("plugin configuration validates");
        assert_eq!(validated.sources.iter().count(), 2);
        assert_eq!(validated.timeout, Duration::from_secs(7));
        assert!(
            plugin.contains(r#"{"env":"IXPROXY_TEST_PASSWORD"}"#),
            "{plugin}"
        );
        let missing = RawPluginConfig::from_json(plugin)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect_err("unresolved env refs fail in the filter");
        assert!(
            missing.to_string().contains("IXPROXY_TEST_TOKEN"),
            "{missing}"
        );
    }

    #[test]
    fn literal_secrets_are_refused_naming_every_field_and_no_value() {
        let err = generate(CONFIG, Path::new("."), Path::new("/x.wasm"))
            .expect_err("literal secrets without the option");
        let EnvoyConfigError::LiteralSecrets { paths } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            paths,
            &[
                "sources[0].secure_url_tokens[0]",
                "sources[0].origin_auth.basic_auth.username",
                "sources[0].origin_auth.request_handshake",
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with(
                "literal secrets would be readable in envoy's /config_dump (the filter's \
                 configuration is part of the bootstrap): sources[0].secure_url_tokens[0], \
                 sources[0].origin_auth.basic_auth.username, \
                 sources[0].origin_auth.request_handshake; write each as {env: NAME}"
            ),
            "{text}"
        );
        assert!(text.ends_with("or pass --allow-literal-secrets"), "{text}");
        assert!(!text.contains("literal-token") && !text.contains("literal-handshake"));
        // The same config with env references only generates without the option.
        let env_only = CONFIG
            .replace("[literal-token, ", "[")
            .replace("username: user", "username: {env: USER_NAME}")
            .replace(
                "request_handshake: literal-handshake",
                "request_handshake: {env: HS}",
            );
        let generated = generate_with(
            &env_only,
            Path::new("."),
            Path::new("/x.wasm"),
            &Options::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            generated.bootstrap.contains("- USER_NAME"),
            "{}",
            generated.bootstrap
        );
    }

    #[test]
    fn origin_headers_are_secrets_like_the_origin_auth() {
        let yaml = |value: &str| {
            format!(
                "sources:\n  - name: a\n    hosts: [a.test]\n    secure_url_tokens: [{{env: T}}]\n    \
                 allowed_origin_hosts: [o.example]\n    origin_headers: {{X-Api-Key: {value}}}\n"
            )
        };
        let err = generate(&yaml("hunter2-key"), Path::new("."), Path::new("/x.wasm"))
            .expect_err("a literal origin header");
        let EnvoyConfigError::LiteralSecrets { paths } = &err else {
            panic!("{err}");
        };
        assert_eq!(paths, &["sources[0].origin_headers.X-Api-Key"]);
        assert!(!err.to_string().contains("hunter2"));
        let (_, bootstrap) = generate_ok(&yaml("{env: API_KEY}"));
        assert_eq!(
            wasm_config(&bootstrap)["vm_config"]["environment_variables"]["host_env_keys"],
            serde_yaml::from_str::<Value>("[T, API_KEY]").expect("yaml")
        );
    }

    #[test]
    fn a_cache_section_is_warned_about() {
        let yaml = format!("{CONFIG}cache: {{max_bytes: 1048576, max_object_bytes: 65536}}\n");
        let generated = generate_with(
            &yaml,
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        assert!(generated
            .warnings
            .iter()
            .any(|w| w.path == "cache" && w.message == CACHE_WARNING));
        let without = generate_with(
            CONFIG,
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        assert!(!without.warnings.iter().any(|w| w.path == "cache"));
        assert!(!generated.warnings.iter().any(|w| w.path == "cache.peers"));
        let peers = generate_with(
            &format!(
                "{CONFIG}cache: {{max_bytes: 1048576, max_object_bytes: 65536, peers: {{dns: \
                 ixproxy-headless.ixproxy.svc.cluster.local:9901}}}}\n"
            ),
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        let named: Vec<&str> = peers
            .warnings
            .iter()
            .filter(|w| w.path == "cache.peers")
            .map(|w| w.message.as_str())
            .collect();
        assert_eq!(named, [PEERS_WARNING]);
        assert!(!generated.warnings.iter().any(|w| w.path == "cache.disk"));
        let disk = generate_with(
            &format!(
                "{CONFIG}cache: {{max_bytes: 1048576, max_object_bytes: 65536, \
                 disk: {{path: /var/cache/ixproxy, max_bytes: 41943040}}}}\n"
            ),
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        let paths: Vec<&str> = disk
            .warnings
            .iter()
            .filter(|w| w.path.starts_with("cache"))
            .map(|w| w.path.as_str())
            .collect();
        assert_eq!(paths, ["cache", "cache.disk"]);
        let messages: Vec<&str> = disk
            .warnings
            .iter()
            .filter(|w| w.path.starts_with("cache"))
            .map(|w| w.message.as_str())
            .collect();
        // The file-system store evicts: the memory store's "nothing is evicted" does not apply.
        assert_eq!(messages, [DISK_CACHE_CHANNEL_WARNING, DISK_CACHE_WARNING]);
        assert!(!DISK_CACHE_CHANNEL_WARNING.contains("max_bytes"));
        assert!(CACHE_WARNING.starts_with(DISK_CACHE_CHANNEL_WARNING));
        let native = generate_with(
            &format!(
                "limits: {{max_connections_per_client: 5}}\ntls:\n  cert_file: /c\n  \
                 key_file: /k\nh2c: true\n{CONFIG}"
            ),
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        let named: Vec<&str> = native
            .warnings
            .iter()
            .filter(|w| w.message == NATIVE_ONLY_WARNING)
            .map(|w| w.path.as_str())
            .collect();
        // `tls` is rendered (see `listener_tls`).
        assert_eq!(named, ["limits.max_connections_per_client", "h2c"]);
    }

    #[test]
    fn purge_api_keys_are_named_native_only_and_never_read_nor_rendered() {
        // A `{file:}` key (the filter could not read one) and an `{env:}` key whose name must
        // not reach the Wasm VM's environment.
        let yaml = format!(
            "purge_api_keys: [{{file: /run/ixproxy/purge}}, {{env: IXPROXY_PURGE_KEY}}, \
             literal-purge-key]\n{CONFIG}"
        );
        let generated = generate_with(
            &yaml,
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        let named: Vec<&str> = generated
            .warnings
            .iter()
            .filter(|w| w.message == PURGE_API_WARNING)
            .map(|w| w.path.as_str())
            .collect();
        assert_eq!(named, ["purge_api_keys"]);
        for absent in [
            "IXPROXY_PURGE_KEY",
            "/run/ixproxy/purge",
            "literal-purge-key",
        ] {
            assert!(!generated.bootstrap.contains(absent), "{absent}");
        }
        let plain = generate_with(
            CONFIG,
            Path::new("."),
            Path::new("/x.wasm"),
            &Options {
                allow_literal_secrets: true,
            },
        )
        .expect("generates");
        assert!(!plain.warnings.iter().any(|w| w.path == "purge_api_keys"));
    }

    #[test]
    fn a_write_timeout_shorter_than_the_body_timeout_is_warned_about() {
        let stall = |limits: &str| {
            let yaml = format!("{CONFIG}{limits}");
            let options = Options {
                allow_literal_secrets: true,
            };
            generate_with(&yaml, Path::new("."), Path::new("/x.wasm"), &options)
                .expect("generates")
                .warnings
                .into_iter()
                .filter(|w| w.message == CLIENT_STALL_WARNING)
                .map(|w| w.path)
                .collect::<Vec<_>>()
        };
        // Both 30 s by default: one bound, nothing to say; a longer write timeout neither.
        assert!(stall("").is_empty());
        assert!(stall("limits: {client_write_timeout: 60s}\n").is_empty());
        assert_eq!(
            stall("limits: {client_write_timeout: 5s}\n"),
            ["limits.client_write_timeout"]
        );
    }

    #[test]
    fn warnings_leave_out_env_secrets_whose_values_envoy_holds() {
        let allow = Options {
            allow_literal_secrets: true,
        };
        let generated = generate_with(CONFIG, Path::new("."), Path::new("/x.wasm"), &allow)
            .unwrap_or_else(|e| panic!("{e}"));
        // `literal-token` is short; the `{env: IXPROXY_TEST_TOKEN}` entries resolve to a
        // placeholder here and are not judged.
        let paths: Vec<&str> = generated.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["sources[0].secure_url_tokens[0]"]);
        let public_admin = CONFIG.replace("admin_listen: 127.0.0.1:0", "admin_listen: 0.0.0.0:0");
        let generated = generate_with(&public_admin, Path::new("."), Path::new("/x.wasm"), &allow)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(generated.warnings[0].path, "admin_listen");
    }

    #[test]
    fn allowed_literal_secrets_stay_in_the_plugin_configuration_only() {
        let (text, bootstrap) = generate_ok(CONFIG);
        let plugin = wasm_config(&bootstrap)["configuration"]["value"]
            .as_str()
            .expect("string value");
        assert!(plugin.contains("\"literal-token\""), "{plugin}");
        assert!(plugin.contains("\"literal-handshake\""), "{plugin}");
        assert_eq!(
            text.matches("literal-token").count(),
            1,
            "only in the plugin json"
        );
        let keys = &wasm_config(&bootstrap)["vm_config"]["environment_variables"];
        assert!(!serde_yaml::to_string(keys)
            .expect("yaml")
            .contains("literal"));
    }

    #[test]
    fn file_secrets_are_refused_with_their_field_and_a_hint() {
        let yaml = CONFIG.replace(
            "request_handshake: literal-handshake",
            "request_handshake: {file: /run/secrets/handshake}",
        );
        let err = generate(&yaml, Path::new("."), Path::new("/x.wasm"))
            .expect_err("file secrets cannot reach the filter")
            .to_string();
        assert!(
            err.starts_with("sources[0].origin_auth.request_handshake"),
            "{err}"
        );
        assert!(err.contains("{env: NAME}"), "{err}");
    }

    #[test]
    fn durations_use_envoys_json_form() {
        assert_eq!(duration(Duration::from_secs(3)), "3s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.500000000s");
    }

    #[test]
    fn shipped_envoy_config_is_generated_from_the_shipped_example() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(dir.join("ixproxy.yaml")).expect("envoy/ixproxy.yaml");
        // As validate.sh runs it: without --allow-literal-secrets.
        let generated = render(
            &yaml,
            dir,
            Path::new("/etc/envoy/ixproxy_filter.wasm"),
            Path::new(SYSTEM_CA_BUNDLE),
            &Options::default(),
        )
        .unwrap_or_else(|e| panic!("example generates: {e}"))
        .bootstrap;
        let shipped = std::fs::read_to_string(dir.join("envoy.yaml")).expect("envoy/envoy.yaml");
        assert!(
            generated == shipped,
            "envoy/envoy.yaml is stale; regenerate it with\n  ixproxy envoy-config -c envoy/ixproxy.yaml \
             --wasm /etc/envoy/ixproxy_filter.wasm > envoy/envoy.yaml"
        );
    }

    #[test]
    fn envoy_gateway_example_carries_a_valid_plugin_configuration() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = dir.join("../deploy/envoy-gateway/envoyextensionpolicy.yaml");
        let text = std::fs::read_to_string(path).expect("read");
        let policy: Value = serde_yaml::from_str(&text).expect("envoyextensionpolicy.yaml parses");
        assert_eq!(policy["kind"], "EnvoyExtensionPolicy");
        let wasm = &policy["spec"]["wasm"][0];
        assert_ne!(
            wasm["rootID"], UPSTREAM_ROOT_ID,
            "the main role, not the upstream one"
        );
        let json = serde_json::to_string(&wasm["config"]).expect("to json");
        let mut secrets = MapSecrets::new();
        for key in wasm["env"]["hostKeys"].as_sequence().expect("hostKeys") {
            secrets = secrets.with_env(key.as_str().expect("key"), "placeholder");
        }
        RawPluginConfig::from_json(&json)
            .and_then(|raw| raw.validate(&secrets))
            .unwrap_or_else(|e| panic!("config is not what the filter accepts: {e}"));
    }

    #[test]
    fn istio_example_carries_a_valid_plugin_configuration() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(dir.join("istio/wasmplugin.yaml")).expect("read");
        let plugin: Value = serde_yaml::from_str(&text).expect("wasmplugin.yaml parses");
        assert_eq!(plugin["kind"], "WasmPlugin");
        let json = serde_json::to_string(&plugin["spec"]["pluginConfig"]).expect("to json");
        let mut secrets = MapSecrets::new();
        for var in plugin["spec"]["vmConfig"]["env"]
            .as_sequence()
            .expect("env list")
        {
            assert_eq!(var["valueFrom"], "HOST");
            secrets = secrets.with_env(var["name"].as_str().expect("name"), "placeholder");
        }
        RawPluginConfig::from_json(&json)
            .and_then(|raw| raw.validate(&secrets))
            .unwrap_or_else(|e| panic!("pluginConfig is not what the filter accepts: {e}"));
        // The local walkthrough config generates too.
        let local = std::fs::read_to_string(dir.join("local.yaml")).expect("envoy/local.yaml");
        generate(&local, dir, Path::new("/x.wasm")).expect("envoy/local.yaml generates");
    }
}
