//! The whole conformance table against Envoy 1.40 with the ixproxy Wasm filter
//! (`ixproxy envoy-config`).
//!
//! Needs the binaries built first (see the crate README / scripts/test-all.sh).

#[test]
fn every_conformance_case_passes_on_envoy() {
    ixproxy_conformance::assert_suite_passes::<ixproxy_conformance::EnvoyGateway>("envoy");
}

#[test]
fn every_conformance_case_passes_on_envoy_over_h2c() {
    ixproxy_conformance::assert_suite_passes_over::<ixproxy_conformance::EnvoyGateway>(
        "envoy",
        ixproxy_conformance::Protocol::H2c,
    );
}
