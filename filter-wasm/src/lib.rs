//! ixproxy's proxy-wasm HTTP filter for Envoy.
//!
//! A thin adapter over [`ixproxy_core::decide`]: the root context parses and validates the
//! plugin configuration (`{"sources": [...]}`) once, and every HTTP stream translates the
//! decision for its request into Envoy terms — a local reply for a rejection, or rewritten
//! request headers that send the request to one of the two dynamic-forward-proxy clusters
//! (plain or TLS) for a forward. No policy lives here, so this runtime cannot drift from the
//! native Pingora gateway.
//!
//! Origin redirects are followed through Envoy's internal redirects: the filter keeps each
//! request's hop state in Envoy filter state (which clients cannot set) and re-validates every
//! hop with the core; the same module, loaded as the router's upstream filter ([`location`]),
//! adapts two Envoy details of that. Response limits (content types, body size, the address
//! Envoy connected to) are enforced before any byte reaches the client, or by aborting the
//! transfer for a body that grows past the limit.
//!
//! The pure part of the translation lives in [`edits`] (header edits, local replies) and
//! [`hop`] (the state kept across redirect hops), [`inflight`] (the per-source in-flight count
//! across worker threads) and is unit-tested natively; the host glue
//! (contexts, metrics, secrets from the Wasm VM environment) is in the other modules.

pub mod edits;
pub mod fallback;
mod headers;
pub mod hop;
pub mod inflight;
pub mod location;
pub mod metrics;
pub mod secrets;

mod http;
mod root;

/// The Wasm module's entry point (`_initialize`): installs the root context factory.
#[allow(unsafe_code)] // proxy-wasm's `main!` needs `#[no_mangle]` and calls the Wasm ctors.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(crate::root::FilterRoot::default())
        });
    }}
}
