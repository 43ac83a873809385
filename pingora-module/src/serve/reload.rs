//! SIGHUP: re-reading the config file and its `{file:}`/`{env:}` secrets into the running
//! gateway without dropping a connection (README: Operating).
//!
//! A reload is a list of steps ([`Reloader::apply`]): first those that only prepare and may
//! fail (read and validate the file, build the new [`Live`] generation), then those that apply
//! their own change and may fail (each must keep its old state when it fails, and nothing after
//! it may fail), then the swap, which cannot fail. So a reload either applies everything it
//! can or nothing: an invalid config keeps the running one. Which changed settings need a
//! restart is the core's rule ([`restart_required`]); their running value stays.

use std::path::PathBuf;

use ixproxy_core::config::{restart_required, AccessLogFormat, ReloadResult};
use ixproxy_core::Config;
use log::{info, warn};

use super::live::{Live, LiveConfig};
use super::metrics::Metrics;
use super::tls::TlsCerts;
use crate::secrets::load_config;

/// Reloads the config file into the running gateway.
pub struct Reloader {
    /// The config file; `None` for the built-in demo, which has nothing to reload.
    path: Option<PathBuf>,
    /// The config the process started with: the values of the settings that need a restart.
    started: Config,
    live: LiveConfig,
    metrics: Metrics,
    /// The certificates HTTPS serves, re-read on every reload when TLS is on.
    tls: Option<TlsCerts>,
}

/// What a reload that was applied left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Changed fields that need a restart (or `ixproxy serve -u`); their running value stays.
    pub restart_required: Vec<&'static str>,
}

impl Reloader {
    /// A reloader of `path` (`None`: the demo) into `live`, for a process started with
    /// `started`, counting into `metrics`.
    pub fn new(path: Option<PathBuf>, started: Config, live: LiveConfig, metrics: Metrics) -> Self {
        Reloader {
            path,
            started,
            live,
            metrics,
            tls: None,
        }
    }

    /// The reloader also re-reading the TLS files into `tls` (when the new config has them;
    /// switching TLS on or off needs a restart).
    pub fn with_tls(mut self, tls: Option<TlsCerts>) -> Self {
        self.tls = tls;
        self
    }

    /// Handles one SIGHUP: reloads, logs one line for the result (the error names the field,
    /// never a secret value) and one per setting left for a restart, and counts
    /// `ixproxy_config_reloads_total{result}`. Returns the result, `None` for the demo.
    pub fn reload(&self) -> Option<ReloadResult> {
        let Some(path) = self.path.as_ref() else {
            info!("SIGHUP: nothing to reload: the built-in demo config runs (no -c FILE)");
            return None;
        };
        let result = match self.apply(path) {
            Ok(applied) => {
                info!(
                    "config reloaded from {}: new requests use it",
                    path.display()
                );
                for field in applied.restart_required {
                    warn!(
                        "config reload: {field} changed, which needs a restart (or ixproxy \
                         serve -u); the running value stays"
                    );
                }
                ReloadResult::Ok
            }
            Err(why) => {
                warn!("config reload refused, the running config stays: {why}");
                ReloadResult::Error
            }
        };
        self.metrics.count_reload(result);
        Some(result)
    }

    /// The reload steps, in order.
    ///
    /// # Errors
    /// The first step that failed, with the field it names; nothing was applied then.
    pub fn apply(&self, path: &std::path::Path) -> Result<Applied, String> {
        // Steps that only prepare: nothing is applied if one fails.
        let new = load_config(path)?;
        let next = Live::build(
            new.sources.clone(),
            new.upstream.clone(),
            Some(&self.live.current()),
        )?
        .with_access_log(
            new.operating.access_log,
            new.operating.trusted_proxies.clone(),
        )
        .with_purge_api_keys(new.purge_api_keys.clone())
        .with_peers(new.cache.as_ref().and_then(|c| c.peers.clone()));
        if new.operating.access_log != AccessLogFormat::Off {
            // Started once per process; a no-op when it runs already.
            super::access::start(self.metrics.access_log_dropped())
                .map_err(|e| format!("access_log: cannot start the writer: {e}"))?;
        }
        // Steps that apply their own change and may fail, each keeping its old state when it
        // fails: the TLS certificates (a bad file in any entry keeps the running set and refuses
        // the whole reload).
        if let (Some(tls), Some(files)) = (&self.tls, &new.operating.tls) {
            tls.reload(files)?;
        }

        // The swap: cannot fail. Requests in flight keep the generation they started with.
        let next = next.with_series(self.metrics.series(&new.sources));
        self.live.replace(next);
        crate::cli::print_warnings(&ixproxy_core::config::warnings(&new));
        Ok(Applied {
            restart_required: restart_required(&self.started, &new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:0\nsources:\n  - name: a\n    hosts: [a.test]\n    \
                        secure_url_tokens: [first-token-0123456]\n";

    fn reloader(dir: &std::path::Path) -> (Reloader, PathBuf, Metrics) {
        let path = dir.join("c.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let config = load_config(&path).expect("valid");
        let live = LiveConfig::new(
            Live::build(config.sources.clone(), config.upstream.clone(), None).expect("live"),
        );
        let metrics = Metrics::new().expect("metrics");
        let reloader = Reloader::new(Some(path.clone()), config, live, metrics.clone());
        (reloader, path, metrics)
    }

    fn token(reloader: &Reloader) -> String {
        reloader
            .live
            .current()
            .sources
            .by_name("a")
            .map(|s| s.tokens[0].expose().to_owned())
            .unwrap_or_default()
    }

    fn count(metrics: &Metrics, result: &str) -> bool {
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        text.contains(&format!(
            "ixproxy_config_reloads_total{{result=\"{result}\"}} 1"
        ))
    }

    #[test]
    fn a_good_reload_is_applied_and_names_what_needs_a_restart() {
        let dir = tempfile_dir("good");
        let (reloader, path, metrics) = reloader(&dir);
        std::fs::write(
            &path,
            GOOD.replace("first-token", "second-token")
                .replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1\nh2c: true"),
        )
        .expect("write");
        assert_eq!(
            reloader.apply(&path),
            Ok(Applied {
                restart_required: vec!["listen", "h2c"]
            })
        );
        assert_eq!(token(&reloader), "second-token-0123456");
        assert_eq!(reloader.reload(), Some(ReloadResult::Ok));
        assert!(count(&metrics, "ok"), "counted");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_invalid_reload_keeps_everything_and_names_the_field() {
        let dir = tempfile_dir("bad");
        let (reloader, path, metrics) = reloader(&dir);
        std::fs::write(&path, GOOD.replace("hosts: [a.test]", "hosts: []")).expect("write");
        let err = reloader.apply(&path).expect_err("invalid");
        assert!(err.starts_with("sources[0].hosts"), "{err}");
        // A secret that cannot be read fails the reload the same way, naming it.
        std::fs::write(
            &path,
            GOOD.replace(
                "[first-token-0123456]",
                "[{env: IXPROXY_TEST_UNSET_TOKEN_VAR}]",
            ),
        )
        .expect("write");
        let err = reloader.apply(&path).expect_err("unset env");
        assert!(err.contains("IXPROXY_TEST_UNSET_TOKEN_VAR"), "{err}");
        assert_eq!(token(&reloader), "first-token-0123456");
        assert_eq!(reloader.reload(), Some(ReloadResult::Error));
        assert!(count(&metrics, "error") && !count(&metrics, "ok"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_demo_has_nothing_to_reload() {
        let dir = tempfile_dir("demo");
        let (reloader, _, metrics) = reloader(&dir);
        let demo = Reloader::new(
            None,
            reloader.started.clone(),
            reloader.live.clone(),
            metrics,
        );
        assert_eq!(demo.reload(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ixproxy-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
