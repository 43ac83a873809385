//! The I/O-free signing core of ixproxy.
//!
//! Everything both runtimes (the proxy-wasm Envoy filter and the native Pingora gateway) need to
//! agree on lives here: imgix URL signature verification over the raw request target, Web Proxy
//! origin URL decoding and validation, `expires`, origin authentication headers, the config
//! model, the one [`decide`] entry point that turns a request into a [`Forward`] or a
//! [`Rejection`], the rules a forward meets afterwards (redirect hops, resolved addresses, the
//! origin's response), and every [`Outcome`] and status either runtime can produce.
//!
//! The core never reads the clock, randomness, the environment or the network: callers pass the
//! current time, random bytes (only where a per-request id is made) and a
//! [`config::SecretResolver`] in. That keeps it usable from a Wasm VM and deterministic under
//! test.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod addr;
pub mod auth;
pub mod cache;
pub mod config;
pub mod cors;
pub mod decide;
pub mod disposition;
pub mod envoy;
pub mod expires;
pub mod failure;
pub mod fallback;
pub mod fleet;
pub mod forward;
pub mod gateway_headers;
mod hex;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod outcome;
pub mod purge_api;
pub mod request;
pub mod response;
pub mod secret;
pub mod sign;
pub mod verify;

pub use config::{Config, ConfigError, Source, Sources};
pub use decide::{decide, decide_attributed, Attribution, Decision, RequestInfo};
pub use failure::Failure;
pub use fallback::FallbackKind;
pub use forward::Forward;
pub use origin::{OriginError, OriginUrl, Scheme};
pub use outcome::{Outcome, Rejection};
pub use secret::Secret;
