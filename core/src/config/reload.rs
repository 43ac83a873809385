//! What a running native gateway takes from a re-read config (SIGHUP, README: Operating) and
//! what only a restart or an upgrade (`ixproxy serve -u`) can change.
//!
//! Everything the request path reads per request is reloadable: the sources (hosts, tokens,
//! origin auth and every secret), the request and response limits carried by [`Sources`]
//! (`max_request_*`, `max_redirects`, `max_body_bytes`, `max_inflight_per_source`) and
//! `upstream` (timeouts, `ca_file`), the purge API's keys (`purge_api_keys`, read per
//! admin request) and the fleet a purge reaches (`cache.peers`). What the process fixed when it started (sockets, worker
//! threads, the cache's memory, the listener's protocol and connection handling, the shutdown
//! timings) is not: [`restart_required`] names each such field that differs, and the runtime
//! keeps its running value.
//!
//! [`Sources`]: super::Sources

use super::Config;

/// The result label of `ixproxy_config_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new config was valid and is in use for every new request.
    Ok,
    /// The new config was refused; the running one stays.
    Error,
}

impl ReloadResult {
    /// Every label, for exposing all series at zero.
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Ok, ReloadResult::Error];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
    }
}

/// The config fields whose value differs between `running` and `new` but cannot change without
/// a restart (or `ixproxy serve -u`), in config order; empty when the whole new config applies.
///
/// The runtime keeps the running value of each. `tls` counts only when HTTPS is switched on or
/// off (new certificate files are reloaded); `cache` when it is switched or resized (not when
/// only `cache.peers` changed).
pub fn restart_required(running: &Config, new: &Config) -> Vec<&'static str> {
    let (old_op, new_op) = (&running.operating, &new.operating);
    let (old_client, new_client) = (&running.client, &new.client);
    [
        ("listen", running.listen != new.listen),
        ("admin_listen", running.admin_listen != new.admin_listen),
        (
            "limits.client_header_timeout",
            old_client.header_timeout != new_client.header_timeout,
        ),
        (
            "limits.client_idle_timeout",
            old_client.idle_timeout != new_client.idle_timeout,
        ),
        (
            "limits.client_write_timeout",
            old_client.write_timeout != new_client.write_timeout,
        ),
        (
            "limits.max_connections",
            old_client.max_connections != new_client.max_connections,
        ),
        (
            "limits.max_connections_per_client",
            old_client.max_connections_per_client != new_client.max_connections_per_client,
        ),
        ("cache", storage(&running.cache) != storage(&new.cache)),
        ("server.threads", old_op.threads != new_op.threads),
        (
            "server.grace_period",
            old_op.grace_period != new_op.grace_period,
        ),
        ("tls", old_op.tls.is_some() != new_op.tls.is_some()),
        ("h2c", old_op.h2c != new_op.h2c),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}

/// The part of `cache:` the process fixes at start: everything but `cache.peers`, which is read
/// at each purge (a static list can grow with the fleet without a restart).
fn storage(cache: &Option<super::CacheLimits>) -> Option<super::CacheLimits> {
    cache
        .clone()
        .map(|c| super::CacheLimits { peers: None, ..c })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapSecrets, RawConfig};

    fn config(extra: &str) -> Config {
        RawConfig::from_yaml(&format!(
            "{extra}sources:\n  - name: a\n    hosts: [a.test]\n    secure_url_tokens: [t]\n"
        ))
        .and_then(|raw| raw.validate(&MapSecrets::default()))
        .expect("valid")
    }

    #[test]
    fn the_request_path_settings_reload_without_a_restart() {
        let running = config("");
        let new = RawConfig::from_yaml(
            "upstream: {timeout: 2s, connect_timeout: 1s, max_redirects: 1}\nlimits: \
             {max_inflight_per_source: 3, max_request_headers: 10}\nsources:\n  - name: b\n    \
             hosts: [b.test, c.test]\n    secure_url_tokens: [new-token, other]\n",
        )
        .and_then(|raw| raw.validate(&MapSecrets::default()))
        .expect("valid");
        assert_ne!(running, new);
        assert_eq!(restart_required(&running, &new), Vec::<&str>::new());
        assert!(restart_required(&running, &running).is_empty());
    }

    #[test]
    fn what_the_process_fixed_at_start_is_named_in_config_order() {
        let running = config("");
        let new = config(
            "listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\nlimits: {client_idle_timeout: 1s, \
             max_connections: 5, max_connections_per_client: 3}\ncache: {max_bytes: 1000, max_object_bytes: 100}\nserver: {threads: 2, grace_period: \
             1s}\ntls: {cert_file: /c, key_file: /k}\nh2c: true\naccess_log: text\n\
             trusted_proxies: [10.0.0.0/8]\n",
        );
        assert_eq!(
            restart_required(&running, &new),
            [
                "listen",
                "admin_listen",
                "limits.client_idle_timeout",
                "limits.max_connections",
                "limits.max_connections_per_client",
                "cache",
                "server.threads",
                "server.grace_period",
                "tls",
                "h2c"
            ]
        );
    }

    #[test]
    fn new_tls_files_reload_only_switching_tls_needs_a_restart() {
        let on = config("tls: {cert_file: /c, key_file: /k}\n");
        let other_files = config("tls: {cert_file: /c2, key_file: /k2}\n");
        assert!(restart_required(&on, &other_files).is_empty());
        assert_eq!(restart_required(&on, &config("")), ["tls"]);
    }

    #[test]
    fn peers_reload_the_cache_s_storage_needs_a_restart() {
        let running = config("cache: {max_bytes: 1000, max_object_bytes: 100}\n");
        let peers = config(
            "cache: {max_bytes: 1000, max_object_bytes: 100, peers: {static: ['127.0.0.1:9']}}\n",
        );
        assert!(restart_required(&running, &peers).is_empty());
        let resized = config(
            "cache: {max_bytes: 2000, max_object_bytes: 100, peers: {static: ['127.0.0.1:9']}}\n",
        );
        assert_eq!(restart_required(&peers, &resized), ["cache"]);
    }

    #[test]
    fn reload_labels() {
        assert_eq!(ReloadResult::ALL.map(ReloadResult::as_str), ["ok", "error"]);
    }
}
