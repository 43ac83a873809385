//! Origin names with several addresses on the real Envoy 1.40 (README: Security; envoy/README.md:
//! *Names with several addresses*): which resolved address the RBAC filter checks, and where the
//! connection goes when that address refuses it.
//!
//! Only loopback addresses take part: a DNS server on 127.0.0.1 ([`DnsServer`]) answers
//! `multi.test` with 127.0.0.2 then 127.0.0.3; Envoy's dynamic forward proxy is pointed at it
//! (a test-only `typed_dns_resolver_config`), and the RBAC deny list is cut down to one of the two
//! addresses (a test-only edit), so one loopback address plays "public" and the other "private".
//! The source does not allow private origins, so the filter's own check of the address Envoy
//! connected to (`upstream.address`, the core's full deny list) still refuses both.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::dns::DnsServer;
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::envoy::PRIVATE_ORIGIN_POLICY;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Rejection;
use serde_yaml::Value;

const TIMEOUT: Duration = Duration::from_secs(15);
const NAME: &str = "multi.test";
const FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const SECOND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// An origin on `ip` that answers every request with a small image and records each request
/// line; serves at most `max` connections.
fn origin_on(ip: Ipv4Addr, port: u16, max: usize) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((ip, port)).expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(TIMEOUT)).ok();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 12\r\n\
                      connection: close\r\n\r\nsecret-bytes",
                )
                .ok();
        }
    });
    (addr, seen)
}

/// A port on which neither loopback address of the test listens.
fn port_free_on_both() -> u16 {
    for _ in 0..100 {
        let Ok(listener) = TcpListener::bind((SECOND, 0)) else {
            continue;
        };
        let port = listener.local_addr().expect("address").port();
        if TcpListener::bind((FIRST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Points every DNS cache config of `bootstrap` at `dns` only, and cuts the RBAC deny list down
/// to `denied`.
fn edit(bootstrap: &mut Value, dns: SocketAddr, denied: Ipv4Addr) {
    let resolver: Value = serde_yaml::from_str(&format!(
        r#"
name: envoy.network.dns_resolver.cares
typed_config:
  "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
  resolvers: [{{socket_address: {{address: "{}", port_value: {}, protocol: UDP}}}}]
  use_resolvers_as_fallback: false
  dns_resolver_options: {{no_default_search_domain: true}}
"#,
        dns.ip(),
        dns.port()
    ))
    .expect("resolver yaml");
    fn each_dns_cache(value: &mut Value, resolver: &Value) {
        match value {
            Value::Mapping(map) => {
                for (key, child) in map.iter_mut() {
                    if key.as_str() == Some("dns_cache_config") {
                        child["typed_dns_resolver_config"] = resolver.clone();
                    } else {
                        each_dns_cache(child, resolver);
                    }
                }
            }
            Value::Sequence(items) => items.iter_mut().for_each(|v| each_dns_cache(v, resolver)),
            _ => {}
        }
    }
    each_dns_cache(bootstrap, &resolver);
    let filters = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["http_filters"];
    let rbac = filters
        .as_sequence_mut()
        .and_then(|f| {
            f.iter_mut()
                .find(|f| f["name"] == "envoy.filters.http.rbac")
        })
        .expect("rbac filter");
    let networks = &mut rbac["typed_config"]["rules"]["policies"][PRIVATE_ORIGIN_POLICY]
        ["permissions"][0]["and_rules"]["rules"][1]["or_rules"]["rules"];
    *networks = serde_yaml::from_str(&format!(
        r#"
- matcher:
    name: envoy.rbac.matchers.upstream_ip_port
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher
      upstream_ip: {{address_prefix: "{denied}", prefix_len: 32}}
"#
    ))
    .expect("rule yaml");
}

fn start(dir: &Path, dns: SocketAddr, denied: Ipv4Addr) -> EnvoyGateway {
    let config = dir.join("ixproxy.yaml");
    std::fs::write(
        &config,
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {timeout: 5s, connect_timeout: 1s}
sources:
  - name: public
    hosts: [public.test]
    secure_url_tokens: [tok]
"#,
    )
    .expect("write config");
    EnvoyGateway::start_edited(&config, &[], dir, |b| edit(b, dns, denied))
        .unwrap_or_else(|e| panic!("envoy does not start: {e}"))
}

fn fetch(envoy: &EnvoyGateway, port: u16, path: &str) -> RawResponse {
    let target = sign_url(
        "tok",
        &format!("http://{NAME}:{port}{path}"),
        &[],
        &SignOptions::default(),
    );
    send(
        envoy.addr(),
        &RawRequest::get("public.test", &target),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{path}: {e}\n{}", envoy.log_tail()))
}

/// One counter of Envoy's `/stats` (0 when absent).
fn stat(envoy: &EnvoyGateway, name: &str) -> u64 {
    let text = send(
        envoy.admin_addr(),
        &RawRequest::get("admin", &format!("/stats?filter=^{name}$")),
        TIMEOUT,
    )
    .expect("admin answers")
    .body_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn assert_denied(response: &RawResponse) {
    let denied = Rejection::origin_address_denied();
    assert_eq!(response.status, denied.status(), "{response:?}");
    assert_eq!(response.body_text(), denied.body(), "{response:?}");
}

#[test]
fn rbac_checks_the_first_address_and_envoy_may_connect_to_the_next() {
    let dns = DnsServer::start(vec![(NAME.to_owned(), vec![FIRST, SECOND])]).expect("dns");
    let port = port_free_on_both();
    let (_, seen) = origin_on(SECOND, port, 8);
    let seen = || seen.lock().unwrap_or_else(PoisonError::into_inner).clone();

    // RBAC denies the first address: refused before any connection is made.
    let dir = tempfile::tempdir().expect("temp dir");
    let envoy = start(dir.path(), dns.addr(), FIRST);
    let response = fetch(&envoy, port, "/first-denied");
    assert_denied(&response);
    assert_eq!(
        stat(&envoy, "http.ixproxy.rbac.denied"),
        1,
        "RBAC refused it"
    );
    assert!(seen().is_empty(), "{:?}", seen());
    drop(envoy);

    // RBAC denies only the second address. It checks the first (what the dynamic forward proxy
    // saves as the upstream address) and lets the request pass; the first refuses the
    // connection and Envoy connects to the second: the request reaches an address RBAC would
    // have refused. The filter's check of the address actually connected to keeps the answer
    // from the client.
    let dir = tempfile::tempdir().expect("temp dir");
    let envoy = start(dir.path(), dns.addr(), SECOND);
    let response = fetch(&envoy, port, "/second-denied");
    assert_denied(&response);
    assert!(
        !response.body_text().contains("secret-bytes"),
        "{response:?}"
    );
    assert_eq!(
        stat(&envoy, "http.ixproxy.rbac.denied"),
        0,
        "RBAC passed it"
    );
    assert_eq!(seen(), ["GET /second-denied HTTP/1.1"]);
    assert!(dns.queries() > 0);
}
