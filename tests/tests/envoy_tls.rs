//! `tls.certificates` rendered by `ixproxy envoy-config` and served by the real Envoy 1.40 with
//! the built filter (README: TLS and HTTP/2): `envoy --mode validate` accepts the filter
//! chains, and `curl --resolve` gets each name's certificate, HTTP/2 over each, and the first
//! entry's for other names and without SNI; a client that sends no hello is closed at
//! `client_header_timeout`.
//!
//! Uses the prebuilt `target/debug/ixproxy` and `target/wasm32-wasip1/release/ixproxy_filter.wasm`
//! (or `IXPROXY_BIN`, `IXPROXY_WASM`, `IXPROXY_ENVOY`); a missing one fails with how to build it.
//! Without `curl` on the PATH the test prints why and passes.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::tls::{have_curl, served_by_sni, SniCertificates, SNI_TEST_HOSTS};
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::sign::{sign_url, SignOptions};

const TOKEN: &str = "envoy-tls-token-0123456789";

#[test]
fn envoy_serves_each_certificate_by_sni_and_the_first_one_as_the_default() {
    if !have_curl() {
        return;
    }
    let origin = RecordingOrigin::start().expect("origin");
    let certs = SniCertificates::generate().expect("certificates");
    let (dir, tls) = (&certs.dir, &certs.tls_yaml);
    let config = dir.path().join("ixproxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n\
             limits: {{client_header_timeout: 1s}}\n{tls}sources:\n  - name: a\n    \
             hosts: {SNI_TEST_HOSTS}\n    secure_url_tokens: [{TOKEN}]\n    \
             allow_private_origins: true\n"
        ),
    )
    .expect("write config");

    let bootstrap = dir.path().join("envoy-validate.yaml");
    let text = EnvoyGateway::bootstrap(&config, &[]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&bootstrap, text).expect("write bootstrap");
    let (ok, log) = EnvoyGateway::validate(&bootstrap, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(ok, "envoy --mode validate failed:\n{log}");

    let envoy = EnvoyGateway::start(&config, &[], dir.path())
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"));
    let port = envoy.addr().port();
    let path = sign_url(
        TOKEN,
        &format!("http://{}/asset/sni.jpg", origin.http),
        &[],
        &SignOptions::default(),
    );
    let ca_arg = certs.ca_file.display().to_string();
    let served = |host: &str, args: &[&str]| {
        let seen = served_by_sni(port, host, &path, args)
            .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
        format!("{} {} {}", seen.version, seen.status, seen.cn)
    };
    // Each name gets its own certificate, which curl checks against the name.
    for (host, cn) in [
        ("a.test", "cert-ab"),
        ("b.test", "cert-ab"),
        ("img.wild.test", "cert-wild"),
        ("localhost", "cert-default"),
    ] {
        let h2 = served(host, &["--http2", "--cacert", &ca_arg]);
        assert_eq!(h2, format!("2 200 {cn}"), "{host}");
    }
    let h1 = served("a.test", &["--http1.1", "--cacert", &ca_arg]);
    assert_eq!(h1, "1.1 200 cert-ab");
    // A name no entry lists and a client without SNI get the first entry's certificate.
    for host in ["other.test", "127.0.0.1"] {
        assert_eq!(
            served(host, &["--http2", "-k"]),
            "2 200 cert-default",
            "{host}"
        );
    }
    // Envoy's `*.` server name also matches deeper names (the native gateway: one label only);
    // the wildcard certificate does not name them, so a verifying client refuses both answers.
    assert_eq!(
        served("deep.img.wild.test", &["--http2", "-k"]),
        "2 200 cert-wild"
    );
    // Every request above reached the origin: 4 + 1 + 2 + 1.
    assert_eq!(origin.requests().len(), 8);

    // A client that never sends its hello is closed at client_header_timeout (1 s).
    let mut silent = TcpStream::connect(envoy.addr()).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let connected = Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    let after = connected.elapsed();
    assert!(
        matches!(read, Ok(0)) || matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{read:?} after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
}
