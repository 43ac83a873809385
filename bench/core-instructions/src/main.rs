//! Instruction counts of the core's hot operations (bench/README.md: The core, in instructions).
//!
//! Each `op_*` marker runs one operation `N` times (the first argument, default 1,000) and is
//! never inlined, so `callgrind_annotate --inclusive=yes` reads its cost per call as the
//! marker's inclusive count divided by `N`. Each operation is paired with the cryptography it
//! cannot avoid over the same bytes: `decide` with the raw MD5 of its signature base, the
//! origin auth headers with the raw HMAC-SHA256 of `<request id>.<timestamp>`. Everything is
//! set up and checked once before the markers run, so a marker counts only its operation (and
//! the drop of what it returns, as a runtime pays it). `bench/core_instructions.py` builds and
//! runs this under valgrind and prints the table.

use std::hint::black_box;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use ixproxy_core::access_log::AccessRecord;
use ixproxy_core::config::{AccessLogFormat, MapSecrets, RawConfig};
use ixproxy_core::response::OriginHead;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::verify::split_target;
use ixproxy_core::{decide_attributed, Decision, Forward, Outcome, RequestInfo, Sources};

// The allocator of `ixproxy serve`, so allocations cost here what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// bench/bench.py's `TOKEN` and `SIGNING_KEY`.
const TOKEN: &str = "bench-token-0123456789abcdef";
const SIGNING_KEY: &str = "bench-signing-key";
/// The origin port of the config (any fixed value: nothing is connected to).
const ORIGIN_PORT: u16 = 8080;
const NOW: u64 = 1_780_000_000;
const HOST: &str = "127.0.0.1";

/// bench/bench.py's `ixproxy_yaml`, sources part: one source, per-request origin signing.
fn sources() -> Sources {
    let yaml = format!(
        "sources:
  - name: bench
    hosts: [{HOST}]
    secure_url_tokens: [{TOKEN}]
    origin_auth:
      request_signing_key: {SIGNING_KEY}
    allowed_origin_hosts: [\"127.0.0.1:{ORIGIN_PORT}\"]
    allow_private_origins: true
"
    );
    match RawConfig::from_yaml(&yaml).and_then(|raw| raw.validate(&MapSecrets::default())) {
        Ok(config) => config.sources,
        Err(e) => fail(&format!("bench config refused: {e}")),
    }
}

/// The Web Proxy targets decided: bench/bench.py's `imgix_target` (the origin URL alone, as
/// `bench/instructions.py` requests it) and an SDK-signed URL with rendering parameters and
/// `expires`.
fn targets() -> [(&'static str, String); 2] {
    let plain = sign_url(
        TOKEN,
        &format!("http://127.0.0.1:{ORIGIN_PORT}/s/1k.png"),
        &[],
        &SignOptions::default(),
    );
    let params: Vec<(String, String)> = [
        ("w", "400"),
        ("h", "300"),
        ("fit", "crop"),
        ("auto", "format,compress"),
        ("q", "75"),
        ("expires", "1780003600"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let with_params = sign_url(
        TOKEN,
        &format!("http://127.0.0.1:{ORIGIN_PORT}/s/users/12345/avatars/profile-picture.png?v=3"),
        &params,
        &SignOptions::default(),
    );
    [("bench", plain), ("params", with_params)]
}

/// An nginx static-file response head (`bench/instructions.py`'s origin).
const NGINX_HEAD: [(&str, &str); 8] = [
    ("server", "nginx/1.22.1"),
    ("date", "Sat, 05 Dec 2026 09:00:00 GMT"),
    ("content-type", "image/png"),
    ("content-length", "1024"),
    ("last-modified", "Fri, 04 Dec 2026 12:00:00 GMT"),
    ("connection", "keep-alive"),
    ("etag", "\"6751a2f0-400\""),
    ("accept-ranges", "bytes"),
];

fn fail(message: &str) -> ! {
    eprintln!("core-instructions: {message}");
    std::process::exit(1)
}

fn forward_of(sources: &Sources, target: &str) -> Forward {
    let req = RequestInfo {
        method: "GET",
        host: HOST,
        target,
    };
    match decide_attributed(sources, &req, NOW).0 {
        Decision::Forward(forward) => *forward,
        Decision::Reject(r) => fail(&format!("{target} refused: {r:?}")),
    }
}

/// A marker: `$name` runs `$body` `n` times and is never inlined. The name is passed through
/// `black_box` first so that two markers with the same body stay two functions (LLVM merges
/// identical functions, and callgrind would then count both under one name).
macro_rules! marker {
    ($name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        #[inline(never)]
        fn $name($($arg: $ty,)* n: u64) {
            black_box(stringify!($name));
            for _ in 0..n $body
        }
    };
}

marker!(op_decide_bench(sources: &Sources, req: &RequestInfo<'_>) {
    black_box(decide_attributed(black_box(sources), black_box(req), NOW));
});

marker!(op_decide_params(sources: &Sources, req: &RequestInfo<'_>) {
    black_box(decide_attributed(black_box(sources), black_box(req), NOW));
});

marker!(op_md5_bench(base: &[u8]) {
    black_box(Md5::digest(black_box(base)));
});

marker!(op_md5_params(base: &[u8]) {
    black_box(Md5::digest(black_box(base)));
});

marker!(op_auth_headers(forward: &Forward, random: &[u8; 32]) {
    black_box(black_box(forward).auth_headers(NOW, black_box(random)));
});

marker!(op_hmac(key: &[u8], message: &[u8]) {
    // Any key length is accepted.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(black_box(key)) {
        mac.update(black_box(message));
        black_box(mac.finalize().into_bytes());
    }
});

marker!(op_origin_head() {
    black_box(OriginHead::of(
        200,
        black_box(&NGINX_HEAD)
            .iter()
            .map(|(name, value)| (*name, value.as_bytes())),
    ));
});

marker!(op_check_response(forward: &Forward, head: &OriginHead) {
    black_box(black_box(forward).check_response(black_box(head)).is_ok());
});

marker!(op_access_log(record: &AccessRecord<'_>, line: &mut Vec<u8>) {
    // As the gateway renders it: into a buffer that is already there.
    line.clear();
    black_box(black_box(record).render_into(AccessLogFormat::Json, line));
});

fn main() {
    let n: u64 = match std::env::args().nth(1) {
        None => 1000,
        Some(arg) => arg
            .parse()
            .unwrap_or_else(|_| fail("the argument is the call count per operation")),
    };
    let sources = sources();
    let [(_, plain), (_, with_params)] = targets();
    let request = |target| RequestInfo {
        method: "GET",
        host: HOST,
        target,
    };
    let base = |target: &str| match split_target(target) {
        Ok(signed) => signed.base(TOKEN),
        Err(e) => fail(&format!("{target}: {e}")),
    };
    let (plain_base, params_base) = (base(&plain), base(&with_params));
    let forward = forward_of(&sources, &plain);
    forward_of(&sources, &with_params);

    let random = [0x5a_u8; 32];
    let auth = forward.auth_headers(NOW, &random);
    let id = auth
        .get("x-imgix-signature-request-id")
        .unwrap_or_else(|| fail("no request id: per-request signing is off"));
    let message = format!("{id}.{NOW}");

    let head = OriginHead::of(
        200,
        NGINX_HEAD
            .iter()
            .map(|(name, value)| (*name, value.as_bytes())),
    );
    if let Err(r) = forward.check_response(&head) {
        fail(&format!("the nginx head is refused: {r:?}"));
    }
    let record = AccessRecord {
        ts_micros: 1_780_650_000_123_456,
        request_id: id,
        client_ip: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        method: "GET",
        host: HOST,
        source: Some(forward.source_name()),
        outcome: Outcome::Forwarded,
        status: 200,
        origin: Some(forward.origin()),
        bytes_sent: 1024,
        duration_us: 412,
        upstream_us: Some(203),
        cache: None,
    };
    if record.render(AccessLogFormat::Json).is_none() {
        fail("no JSON line");
    }

    println!("calls {n}");
    println!("bytes md5_bench {}", plain_base.len());
    println!("bytes md5_params {}", params_base.len());
    println!("bytes hmac {}", message.len());
    let (plain_req, params_req) = (request(&plain), request(&with_params));
    op_decide_bench(&sources, &plain_req, n);
    op_md5_bench(plain_base.as_bytes(), n);
    op_decide_params(&sources, &params_req, n);
    op_md5_params(params_base.as_bytes(), n);
    op_auth_headers(&forward, &random, n);
    op_hmac(SIGNING_KEY.as_bytes(), message.as_bytes(), n);
    op_origin_head(n);
    op_check_response(&forward, &head, n);
    op_access_log(&record, &mut Vec::with_capacity(512), n);
}
