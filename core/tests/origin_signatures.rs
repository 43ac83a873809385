//! Data-driven checks of per-request origin signing (README: Origin authentication) over
//! `core/tests/vectors/origin-signatures.json`; every failure names its vector.

use std::path::PathBuf;

use ixproxy_core::auth::{
    request_signature, verify_origin_signature, OriginSignatureError, DEFAULT_MAX_SKEW,
};
use ixproxy_core::Secret;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    key: String,
    request_id: String,
    timestamp: String,
    signature: String,
}

fn vectors() -> Vec<Vector> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/origin-signatures.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: Vec<Vector> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!all.is_empty(), "{} holds no vectors", path.display());
    all
}

fn name(i: usize, v: &Vector) -> String {
    format!("vector #{i} (key {:?}, timestamp {})", v.key, v.timestamp)
}

fn now_of(v: &Vector) -> u64 {
    v.timestamp
        .parse()
        .expect("vector timestamps are unix seconds")
}

fn verify_at(v: &Vector, signature: &str, now: u64) -> Result<(), OriginSignatureError> {
    verify_origin_signature(
        &Secret::new(v.key.as_str()),
        &v.request_id,
        &v.timestamp,
        signature,
        now,
        DEFAULT_MAX_SKEW,
    )
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn request_signature_reproduces_each_vector() {
    let mut failures = Vec::new();
    for (i, v) in vectors().iter().enumerate() {
        let got = request_signature(&Secret::new(v.key.as_str()), &v.request_id, &v.timestamp);
        if got != v.signature {
            failures.push(format!(
                "{}: computed {got}, vector has {}",
                name(i, v),
                v.signature
            ));
        }
    }
    assert_no_failures(failures);
}

#[test]
fn each_vector_verifies_within_the_window() {
    let mut failures = Vec::new();
    for (i, v) in vectors().iter().enumerate() {
        let ts = now_of(v);
        for now in [ts, ts + DEFAULT_MAX_SKEW, ts - DEFAULT_MAX_SKEW] {
            if let Err(e) = verify_at(v, &v.signature, now) {
                failures.push(format!("{}: refused at now={now}: {e}", name(i, v)));
            }
        }
    }
    assert_no_failures(failures);
}

#[test]
fn each_vector_fails_outside_the_window() {
    let mut failures = Vec::new();
    for (i, v) in vectors().iter().enumerate() {
        let ts = now_of(v);
        for now in [ts + DEFAULT_MAX_SKEW + 1, ts - DEFAULT_MAX_SKEW - 1] {
            match verify_at(v, &v.signature, now) {
                Err(OriginSignatureError::OutsideWindow { skew: 301, .. }) => {}
                other => failures.push(format!(
                    "{}: at now={now} expected outside window (skew 301), got {other:?}",
                    name(i, v)
                )),
            }
        }
    }
    assert_no_failures(failures);
}

/// A different character of the same class at position `pos`: another uppercase hex digit in the
/// hex part, another character in the `v1,` prefix.
fn mutate(signature: &str, pos: usize) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    chars[pos] = match chars[pos] {
        '0' => '1',
        '9' => 'A',
        'F' => '0',
        c @ ('1'..='8' | 'A'..='E') => char::from(c as u8 + 1),
        'v' => 'V',
        _ => ';',
    };
    chars.into_iter().collect()
}

#[test]
fn changing_any_one_signature_character_fails() {
    let mut failures = Vec::new();
    for (i, v) in vectors().iter().enumerate() {
        let now = now_of(v);
        for pos in 0..v.signature.chars().count() {
            let changed = mutate(&v.signature, pos);
            assert_ne!(changed, v.signature);
            if verify_at(v, &changed, now).is_ok() {
                failures.push(format!(
                    "{}: accepted {changed} (char {pos} changed)",
                    name(i, v)
                ));
            }
        }
    }
    assert_no_failures(failures);
}

#[test]
fn a_changed_request_id_timestamp_or_key_fails() {
    let mut failures = Vec::new();
    for (i, v) in vectors().iter().enumerate() {
        let now = now_of(v);
        let flip = |s: &str| {
            let last = s.chars().last().expect("non-empty");
            let repl = if last == '0' { '1' } else { '0' };
            format!("{}{repl}", &s[..s.len() - 1])
        };
        let other_id = flip(&v.request_id);
        let other_ts = flip(&v.timestamp);
        let other_key = format!("{}x", &v.key[..v.key.len() - 1]);
        let attempts = [
            ("request id", &v.key, &other_id, &v.timestamp),
            ("timestamp", &v.key, &v.request_id, &other_ts),
            ("key", &other_key, &v.request_id, &v.timestamp),
        ];
        for (what, key, id, ts) in attempts {
            let result = verify_origin_signature(
                &Secret::new(key.as_str()),
                id,
                ts,
                &v.signature,
                now,
                DEFAULT_MAX_SKEW,
            );
            if result != Err(OriginSignatureError::Mismatch) {
                failures.push(format!("{}: changed {what} gave {result:?}", name(i, v)));
            }
        }
    }
    assert_no_failures(failures);
}
