//! The whole conformance table against the native Pingora gateway (`ixproxy serve`).
//!
//! Needs the binaries built first (see the crate README / scripts/test-all.sh).

#[test]
fn every_conformance_case_passes_on_pingora() {
    ixproxy_conformance::assert_suite_passes::<ixproxy_conformance::PingoraGateway>("pingora");
}

#[test]
fn every_conformance_case_passes_on_pingora_over_h2c() {
    ixproxy_conformance::assert_suite_passes_over::<ixproxy_conformance::PingoraGateway>(
        "pingora",
        ixproxy_conformance::Protocol::H2c,
    );
}
