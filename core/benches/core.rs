//! The core's hot path next to the raw hash of the same bytes (bench/README.md).
//!
//! Each group pairs an ixproxy operation with the MD5 or HMAC-SHA256 it cannot avoid, over the
//! same bytes, so the report shows what the core adds on top of the cryptography:
//! - `verify`: a signed Web Proxy target against one token, next to MD5 of its signature base;
//! - `decide`: the whole decision for that request (host, signature, expires, origin URL,
//!   origin policy), next to the same MD5;
//! - `origin_auth`: the per-request signing headers of one origin request, next to one
//!   HMAC-SHA256 of `<request id>.<timestamp>` under the same key;
//! - `sign`: signing the origin URL the way js-core does, next to MD5 of the base it builds.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use ixproxy_core::config::{MapSecrets, RawConfig};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::verify::{split_target, verify};
use ixproxy_core::{decide, Decision, RequestInfo, Secret, Sources};

const TOKEN: &str = "bench-token-0123456789abcdef";
const SIGNING_KEY: &str = "bench-signing-key";
/// A typical user-supplied asset URL with imgix rendering parameters.
const ORIGIN_URL: &str = "https://cdn.example.com/users/12345/avatars/profile-picture.png?v=3";
const NOW: u64 = 1_780_000_000;

fn sources() -> Sources {
    let yaml = format!(
        "sources:
  - name: bench
    hosts: [assets.example.com]
    secure_url_tokens: [{TOKEN}]
    origin_auth:
      request_signing_key: {SIGNING_KEY}
    allowed_origin_hosts: [cdn.example.com]
"
    );
    RawConfig::from_yaml(&yaml)
        .and_then(|raw| raw.validate(&MapSecrets::default()))
        .expect("bench config is valid")
        .sources
}

fn signed_target() -> String {
    let params = [
        ("w".to_owned(), "400".to_owned()),
        ("auto".to_owned(), "format,compress".to_owned()),
    ];
    sign_url(TOKEN, ORIGIN_URL, &params, &SignOptions::default())
}

fn signature_base(target: &str) -> String {
    split_target(target).expect("signed").base(TOKEN)
}

fn bench_verify(c: &mut Criterion) {
    let target = signed_target();
    let tokens = [Secret::new(TOKEN.to_owned())];
    let base = signature_base(&target);
    let mut group = c.benchmark_group("verify");
    group.bench_function("ixproxy verify", |b| {
        b.iter(|| verify(black_box(&target), &tokens).expect("verifies"));
    });
    group.bench_function("raw md5 of the base", |b| {
        b.iter(|| Md5::digest(black_box(base.as_bytes())));
    });
    group.finish();
}

fn bench_decide(c: &mut Criterion) {
    let sources = sources();
    let target = signed_target();
    let base = signature_base(&target);
    let req = RequestInfo {
        method: "GET",
        host: "assets.example.com",
        target: &target,
    };
    let mut group = c.benchmark_group("decide");
    group.bench_function("ixproxy decide (forward)", |b| {
        b.iter(|| match decide(&sources, black_box(&req), NOW) {
            Decision::Forward(forward) => forward,
            Decision::Reject(r) => panic!("bench request refused: {r:?}"),
        });
    });
    group.bench_function("raw md5 of the base", |b| {
        b.iter(|| Md5::digest(black_box(base.as_bytes())));
    });
    group.finish();
}

fn bench_origin_auth(c: &mut Criterion) {
    let sources = sources();
    let target = signed_target();
    let req = RequestInfo {
        method: "GET",
        host: "assets.example.com",
        target: &target,
    };
    let Decision::Forward(forward) = decide(&sources, &req, NOW) else {
        panic!("bench request refused");
    };
    let random = [7u8; 32];
    let message = format!("{}.{NOW}", "07".repeat(32));
    let mut group = c.benchmark_group("origin_auth");
    group.bench_function("ixproxy per-request signing headers", |b| {
        b.iter(|| {
            let headers = forward.auth_headers(black_box(NOW), black_box(&random));
            assert_eq!(headers.iter().count(), 4);
            headers
        });
    });
    group.bench_function("raw hmac-sha256 of the message", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_KEY.as_bytes()).expect("any key");
            mac.update(black_box(message.as_bytes()));
            mac.finalize().into_bytes()
        });
    });
    group.finish();
}

fn bench_sign(c: &mut Criterion) {
    let params = [
        ("w".to_owned(), "400".to_owned()),
        ("auto".to_owned(), "format,compress".to_owned()),
    ];
    let base = signature_base(&signed_target());
    let mut group = c.benchmark_group("sign");
    group.bench_function("ixproxy sign_url", |b| {
        b.iter(|| {
            sign_url(
                TOKEN,
                black_box(ORIGIN_URL),
                &params,
                &SignOptions::default(),
            )
        });
    });
    group.bench_function("raw md5 of the base", |b| {
        b.iter(|| Md5::digest(black_box(base.as_bytes())));
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_verify,
    bench_decide,
    bench_origin_auth,
    bench_sign
);
criterion_main!(benches);
