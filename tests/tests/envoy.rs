//! The whole conformance table against Envoy 1.40 with the ixproxy Wasm filter (`ixproxy envoy-config`).
//!
//! Needs the binaries built first (see the crate README / scripts/test-all.sh).

use ixproxy_conformance::{run_suite, EnvoyGateway};

#[test]
fn every_conformance_case_passes_on_envoy() {
    let report = match run_suite::<EnvoyGateway>() {
        Ok(report) => report,
        Err(e) => panic!("envoy conformance harness failed: {e}"),
    };
    println!("{}", report.summary());
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed on envoy:\n{}",
        failures.len(),
        report.results.len(),
        failures
            .iter()
            .map(|f| format!("  {}: {}", f.name, f.problems.join("; ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
