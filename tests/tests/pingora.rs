//! The whole conformance table against the native Pingora gateway (`ixproxy serve`).
//!
//! Needs the binaries built first (see the crate README / scripts/test-all.sh).

use ixproxy_conformance::{run_suite, PingoraGateway};

#[test]
fn every_conformance_case_passes_on_pingora() {
    let report = match run_suite::<PingoraGateway>() {
        Ok(report) => report,
        Err(e) => panic!("pingora conformance harness failed: {e}"),
    };
    println!("{}", report.summary());
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed on pingora:\n{}",
        failures.len(),
        report.results.len(),
        failures
            .iter()
            .map(|f| format!("  {}: {}", f.name, f.problems.join("; ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
