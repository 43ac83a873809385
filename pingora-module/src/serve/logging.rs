//! `ixproxy serve`'s log (stderr), with every other crate's detail capped (README: Security).
//!
//! `RUST_LOG` sets the levels as usual, but no target outside ixproxy logs below
//! [`DEPENDENCY_CAP`], whatever `RUST_LOG` says: Pingora's `debug` and `trace` lines print
//! request and response headers and raw request bytes (the signed path, its query and `s=`,
//! `Authorization`, `Cookie`, the origin's `X-Imgix-Origin-Secret` and `X-Imgix-Signature`),
//! and rustls' `trace` prints handshake messages and session tickets. Their `info` and above
//! print lifecycle events and error kinds only (read in Pingora 0.9.1 and rustls 0.23). h2 and
//! hickory log through `tracing` without its `log` feature, so nothing of theirs reaches this
//! logger; the cap covers them too should that change.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The most detail a target outside ixproxy may log.
pub const DEPENDENCY_CAP: Level = Level::Info;

/// What `RUST_LOG` defaults to: warnings, and ixproxy's own lifecycle lines.
const DEFAULT_FILTER: &str = "warn,ixproxy=info";

/// Whether a record of `level` from `target` may be written at all.
fn allowed(target: &str, level: Level) -> bool {
    level <= DEPENDENCY_CAP || is_own(target)
}

/// ixproxy's own targets: `ixproxy`, `ixproxy_core` and their modules. Their log statements
/// never carry request data (what a request did goes to the access log, which names no path).
fn is_own(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "ixproxy" || krate == "ixproxy_core"
}

/// env_logger behind the cap.
struct Capped {
    inner: env_logger::Logger,
}

impl Log for Capped {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        allowed(metadata.target(), metadata.level()) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if allowed(record.target(), record.level()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the capped logger (once; a second call changes nothing).
pub fn init() {
    let env = env_logger::Env::default().default_filter_or(DEFAULT_FILTER);
    let inner = env_logger::Builder::from_env(env).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Capped { inner })).is_ok() {
        log::set_max_level(max.min(LevelFilter::Trace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_log_info_at_most_and_ixproxy_anything() {
        for target in [
            "pingora_core::protocols::http::v1::server",
            "pingora_proxy",
            "h2::codec",
            "hyper",
            "rustls::server::hs",
            "hickory_proto",
            "ixproxy_coreish",
            "tokio",
        ] {
            assert!(allowed(target, Level::Info), "{target}");
            assert!(allowed(target, Level::Error), "{target}");
            assert!(!allowed(target, Level::Debug), "{target}");
            assert!(!allowed(target, Level::Trace), "{target}");
        }
        for target in ["ixproxy", "ixproxy::serve::client", "ixproxy_core::sign"] {
            assert!(allowed(target, Level::Trace), "{target}");
        }
    }
}
