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

/// `text` with the raw bytes Pingora quotes in an error's context (`buf: …`, up to the last
/// ` cause: `, else to the end) replaced; `None` when there are none. Pingora logs a response
/// header from the origin it cannot parse that way at error level, and an origin may echo the
/// request (its path, query and origin auth headers) in it; the last ` cause: ` is Pingora's
/// own, so bytes the origin sent cannot end the redaction early.
fn redacted(text: &str) -> Option<String> {
    let start = text.find("buf: ")? + "buf: ".len();
    let end = text
        .rfind(" cause: ")
        .filter(|&end| end >= start)
        .unwrap_or(text.len());
    Some(format!(
        "{}[{} bytes not shown]{}",
        &text[..start],
        end - start,
        &text[end..]
    ))
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
        if !allowed(record.target(), record.level()) || !self.inner.enabled(record.metadata()) {
            return;
        }
        if is_own(record.target()) {
            self.inner.log(record);
            return;
        }
        // Formatted only for a line that is written: warnings and errors of other crates.
        let text = record.args().to_string();
        match redacted(&text) {
            Some(clean) => self.inner.log(
                &Record::builder()
                    .args(format_args!("{clean}"))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
            None => self.inner.log(record),
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

    #[test]
    fn the_bytes_pingora_quotes_are_not_shown() {
        // An origin's unparsable response head echoing the request, with a forged " cause: ".
        let line = "Fail to proxy: Upstream InvalidHTTPHeader context: buf: HTTP/1.1 200 \
                    OK\\r\\nx: /secret?q cause: secret cause: invalid header name, status: 502";
        let shown = redacted(line).expect("redacted");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.starts_with("Fail to proxy: Upstream InvalidHTTPHeader context: buf: ["),
            "{shown}"
        );
        assert!(
            shown.ends_with(" bytes not shown] cause: invalid header name, status: 502"),
            "{shown}"
        );
        let shown = redacted("Downstream InvalidHTTPHeader context: buf: GET /secret?s=1")
            .expect("redacted");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(
            redacted("Upstream ConnectRefused context: 127.0.0.1:1"),
            None
        );
    }
}
