//! The ixproxy conformance suite: one table of cases (`conformance/cases.yaml` plus cases
//! generated from `core/tests/vectors/url-signatures.json`) run against either gateway runtime.
//!
//! - [`origin`]: the recording origin servers (plain HTTP, HTTPS, HTTPS with a wrong name).
//! - [`gateway`]: the [`gateway::Gateway`] trait and its two runners, Envoy with the ixproxy
//!   Wasm filter and the native Pingora gateway.
//! - [`harness`]: the test config both gateways receive, and the tokens cases sign with.
//! - [`cases`]: the case table and the vector-driven case generator.
//! - [`runner`]: sends each case through a gateway and checks what the client and the origin saw,
//!   and the outcome the gateway counted.
//! - [`metrics`]: the outcome counter read from a gateway's admin metrics, and its deltas.
//! - [`client`]: a raw HTTP/1.1 client that never rewrites the request target.
//! - [`h2`]: an HTTP/2 (h2c) client for the same requests, and the [`Protocol`] a run speaks.
//! - [`h2_stall`]: a hostile HTTP/2 client that opens streams and never reads them.
//! - [`scripted`]: a raw TCP origin driven by a test's own function, per connection.
//! - [`raw_origin`]: the checks after the table that need a scripted origin, every byte of an
//!   aborted transfer, or a time bound.
//! - [`soak`]: a bounded soak of valid, hostile and faulty-origin requests over pooled
//!   keep-alive connections, with the outcome counts and the gateway's memory checked.

pub mod access_log;
pub mod cases;
pub mod client;
pub mod dns;
pub mod gateway;
pub mod h2;
pub mod h2_stall;
pub mod harness;
pub mod metrics;
pub mod origin;
pub mod raw_origin;
pub mod runner;
pub mod scripted;
pub mod soak;
pub mod tls;

pub use gateway::{EnvoyGateway, Gateway, PingoraGateway, ServeProcess};
pub use h2::Protocol;
/// The signals [`ServeProcess::stop`] sends.
pub use nix::sys::signal::Signal;
pub use runner::{
    assert_suite_passes, assert_suite_passes_over, run_suite, run_suite_over, Report,
};

use std::path::PathBuf;

/// Why the harness itself (not a case) failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Generating the test PKI or the TLS config failed.
    #[error("tls setup: {0}")]
    Tls(String),
    /// A malformed HTTP response, or none before the deadline.
    #[error("http: {0}")]
    Http(String),
    /// The server closed or reset the connection before the response was complete (an
    /// aborted transfer).
    #[error("incomplete response: {0}")]
    Incomplete(String),
    /// The case table or the vectors file is invalid.
    #[error("case table: {0}")]
    Cases(String),
    /// A gateway could not be started or did not become ready.
    #[error("gateway: {0}")]
    Gateway(String),
    /// A required binary or file is missing.
    #[error("missing {what} at {}: {hint}", path.display())]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
}

impl HarnessError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), std::path::Path::to_path_buf)
}
