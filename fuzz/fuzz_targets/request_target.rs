//! Fuzzes the request path: signature form checks, verification, origin decoding and the whole
//! decision, over arbitrary request targets, with and without a valid signature.
#![no_main]

use std::sync::OnceLock;

use ixproxy_core::config::{MapSecrets, RawConfig};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::verify::{split_target, verify};
use ixproxy_core::{decide, Decision, RequestInfo, Secret, Sources};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-token";

fn sources() -> &'static Sources {
    static SOURCES: OnceLock<Sources> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let yaml = format!(
            "sources:\n  - name: f\n    hosts: [f.test]\n    secure_url_tokens: [{TOKEN}]\n    \
             origin_auth: {{request_signing_key: k, request_handshake: h, hosts: [\"*.example\"]}}\n"
        );
        let config = RawConfig::from_yaml(&yaml).and_then(|raw| raw.validate(&MapSecrets::new()));
        config.expect("fuzz config is valid").sources
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // As sent: mostly rejected at the signature.
    let _ = split_target(input);
    let _ = verify(input, &[Secret::new(TOKEN)]);
    let _ = decide(
        sources(),
        &RequestInfo {
            method: "GET",
            host: "f.test",
            target: input,
        },
        1_700_000_000,
    );
    // Signed: the input becomes the origin URL (as given, and behind an http scheme so the URL
    // parser and the origin policy are reached from the first run), or the raw path itself.
    for origin in [input.to_owned(), format!("http://{input}")] {
        check_signed(&sign_url(TOKEN, &origin, &[], &SignOptions::default()));
    }
    // A raw path is used as it is, so only one that is a path (no query, no fragment) can be a
    // request target.
    if !input.contains(['?', '#']) {
        let raw = SignOptions {
            disable_path_encoding: true,
        };
        check_signed(&sign_url(TOKEN, input, &[], &raw));
    }
});

fn check_signed(target: &str) {
    assert!(
        verify(target, &[Secret::new(TOKEN)]).is_ok(),
        "signed target must verify: {target}"
    );
    let decision = decide(
        sources(),
        &RequestInfo {
            method: "GET",
            host: "f.test",
            target,
        },
        1_700_000_000,
    );
    if let Decision::Forward(forward) = decision {
        let origin = forward.origin();
        assert!(origin.path_and_query.starts_with('/'));
        assert!(!origin.path_and_query.contains('#'));
        assert!(!origin.host.is_empty());
        assert!(origin.port != 0);
        assert!(
            !origin.to_url_string().chars().any(|c| c.is_ascii_control()),
            "control characters must never reach the origin request"
        );
    }
}
