//! The soak (see `ixproxy_conformance::soak`) against each runtime: valid signed requests with
//! 1% hostile and 1% faulty-origin requests over pooled keep-alive connections, for
//! `IXPROXY_SOAK_SECONDS` (default 28) per runtime.
//!
//! Needs the binaries built first (see the crate README / scripts/test-all.sh).

use ixproxy_conformance::soak::{assert_soak, MemoryBound};
use ixproxy_conformance::{EnvoyGateway, PingoraGateway};

/// `ixproxy serve` (debug build, no cache): measured 33 MiB before the load, 42 MiB after a
/// quarter of it, 47 MiB peak (46 MiB over 120 s).
const NATIVE: MemoryBound = MemoryBound {
    peak_mib: 128,
    growth_mib: 16,
};
/// Envoy with the Wasm filter: measured 115 MiB before the load, 116 MiB after a quarter of
/// it and at the peak.
const ENVOY: MemoryBound = MemoryBound {
    peak_mib: 256,
    growth_mib: 16,
};

#[test]
fn pingora_holds_a_soak_of_valid_hostile_and_faulty_requests() {
    assert_soak::<PingoraGateway>(NATIVE);
}

#[test]
fn envoy_holds_a_soak_of_valid_hostile_and_faulty_requests() {
    assert_soak::<EnvoyGateway>(ENVOY);
}
