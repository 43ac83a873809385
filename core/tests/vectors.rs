//! Data-driven checks over the imgix SDKs' own test vectors in `core/tests/vectors/` (where
//! they come from: its README).

use std::path::PathBuf;

use ixproxy_core::origin::{decode_origin, parse_origin};
use ixproxy_core::secret::Secret;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::verify::verify;
use serde_json::Value;

fn vectors(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector {v} has no string {key}"))
}

/// A path that already holds `%XX` escapes was signed by the SDK with path encoding disabled
/// (js-core's `disablePathEncoding`), which is also what `ixproxy sign --no-path-encoding` does.
fn is_pre_encoded(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

#[test]
fn url_signature_vectors() {
    let all = vectors("url-signatures.json");
    assert!(
        all.len() >= 40,
        "expected the full vector file, got {}",
        all.len()
    );
    let mut failures = Vec::new();
    for (i, v) in all.iter().enumerate() {
        let name = format!("#{i} {:?}", field(v, "name"));
        let token = field(v, "token");
        let target = field(v, "target");
        let valid = v["valid"]
            .as_bool()
            .unwrap_or_else(|| panic!("{name}: no valid flag"));

        let verified = verify(target, &[Secret::new(token)]);
        if verified.is_ok() != valid {
            failures.push(format!(
                "{name}: verify gave {verified:?}, vector says valid={valid}"
            ));
        }

        if let Some(inputs) = v.get("sign_inputs") {
            let path = field(inputs, "path");
            let params: Vec<(String, String)> = inputs["params"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: params"))
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap_or("").to_owned(),
                        p[1].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let options = SignOptions {
                disable_path_encoding: is_pre_encoded(path),
            };
            let signed = sign_url(token, path, &params, &options);
            if signed != target {
                failures.push(format!("{name}: signer gave {signed}, vector has {target}"));
            }
        }

        if let Some(origin_url) = v.get("origin_url").and_then(Value::as_str) {
            let path = target.split_once('?').map_or(target, |(p, _)| p);
            let decoded_once = percent_encoding::percent_decode_str(&path[1..]).decode_utf8_lossy();
            if decoded_once != origin_url {
                failures.push(format!(
                    "{name}: path decodes to {decoded_once}, vector has {origin_url}"
                ));
            }
            match (decode_origin(path), parse_origin(origin_url)) {
                (Ok(got), Ok(want)) if got == want => {}
                (got, want) => failures.push(format!("{name}: decode_origin {got:?} != {want:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
