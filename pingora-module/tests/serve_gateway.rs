//! `ixproxy serve` end to end: the real binary on 127.0.0.1 with OS-picked ports, a local
//! origin that records what reaches it, and a plain HTTP/1.1 client.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    free_port, ixproxy, request, request_path, sigint, signed, temp_dir, wait_with_timeout,
    Gateway, Origin, OriginConn, IO_TIMEOUT,
};

/// Answers every request with a cacheable 200 carrying a cookie; `/slow` answers only
/// after 3 s.
fn serve(mut conn: OriginConn) {
    let Some(head) = conn.read_head() else {
        return;
    };
    if request_path(&head) == "/slow" {
        // Longer than the gateway's 1 s timeout, bounded so the thread ends.
        thread::sleep(Duration::from_secs(3));
    }
    let body = b"hello origin";
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         cache-control: public, max-age=3600\r\nset-cookie: origin=1\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.out.write_all(response.as_bytes());
    let _ = conn.out.write_all(body);
}

/// The first request head received for `path_prefix`.
fn head_for(origin: &Origin, path_prefix: &str) -> String {
    origin
        .heads(path_prefix)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("origin never saw {path_prefix}: {:?}", origin.heads("")))
}

const SOURCES: &str = "upstream:
  connect_timeout: 1s
  timeout: 1s
sources:
  - name: local
    hosts: [gw.test]
    secure_url_tokens: [tok-local]
    origin_auth:
      request_handshake: {env: IXPROXY_TEST_HANDSHAKE}
    allow_private_origins: true
  - name: public-only
    hosts: [public.test]
    secure_url_tokens: [tok-public]
";

#[test]
fn serve_proxies_signed_requests_maps_failures_and_stops_on_sigint() {
    let origin = Origin::start(serve);
    let gw = Gateway::start(SOURCES, &[("IXPROXY_TEST_HANDSHAKE", "hs-from-env")]);

    // A signed request reaches the origin with only allowlisted client headers.
    let target = signed("tok-local", &origin.url("/asset.png?v=1"), &[("w", "10")]);
    let reply = gw.get(
        "GW.test:443",
        &target,
        &[
            "User-Agent: conformance/1",
            "Accept: image/webp",
            "Cookie: session=secret",
            "Authorization: Bearer client",
            "X-Imgix-Origin-Secret: forged",
            "X-Forwarded-For: 10.9.9.9",
        ],
    );
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert_eq!(reply.body(), b"hello origin");
    assert_eq!(reply.header("set-cookie"), None, "Set-Cookie is stripped");
    assert_eq!(
        reply.header("cache-control").as_deref(),
        Some("public, max-age=3600")
    );
    let head = head_for(&origin, "/asset.png").to_ascii_lowercase();
    assert!(
        head.starts_with("get /asset.png?v=1 http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: {}\r\n", origin.addr)),
        "{head}"
    );
    assert!(
        head.contains("x-imgix-origin-secret: hs-from-env\r\n"),
        "{head}"
    );
    assert!(head.contains("user-agent: conformance/1\r\n"), "{head}");
    assert!(head.contains("accept: image/webp\r\n"), "{head}");
    for absent in [
        "cookie:",
        "authorization:",
        "forged",
        "x-forwarded-for",
        "w=10",
    ] {
        assert!(
            !head.contains(absent),
            "{absent} reached the origin: {head}"
        );
    }

    // `expires` caps the cache lifetime.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expires = (now + 100).to_string();
    let target = signed(
        "tok-local",
        &origin.url("/expiring.png"),
        &[("expires", &expires)],
    );
    let reply = gw.get("gw.test", &target, &[]);
    assert_eq!(reply.status(), 200, "{reply:?}");
    let max_age: u64 = reply
        .header("cache-control")
        .as_deref()
        .and_then(|v| v.strip_prefix("public, max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert!((90..=100).contains(&max_age), "{max_age}");

    // Local rejections.
    let unsigned = format!("/{}", urlencode(&origin.url("/asset.png")));
    let reply = gw.get("gw.test", &unsigned, &[]);
    assert_eq!(reply.status(), 403);
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));
    let reply = request(
        gw.listen,
        "POST",
        "gw.test",
        &target,
        &["Content-Length: 0"],
    )
    .whole();
    assert_eq!(
        (reply.status(), reply.header("allow").as_deref()),
        (405, Some("GET, HEAD"))
    );
    assert_eq!(gw.get("nobody.test", &target, &[]).status(), 410);
    let private = signed("tok-public", &origin.url("/asset.png"), &[]);
    assert_eq!(gw.get("public.test", &private, &[]).status(), 403);

    // Upstream failures: refused → 502, too slow → 504.
    let closed = format!("http://127.0.0.1:{}/x.png", free_port());
    let reply = gw.get("gw.test", &signed("tok-local", &closed, &[]), &[]);
    assert_eq!(reply.status(), 502, "{reply:?}");
    let started = Instant::now();
    let slow = signed("tok-local", &origin.url("/slow"), &[]);
    let reply = gw.get("gw.test", &slow, &[]);
    assert_eq!(reply.status(), 504, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timeout not applied"
    );

    assert_eq!(gw.metric("forwarded"), 2);
    assert_eq!(gw.metric("bad_signature"), 1);
    assert_eq!(gw.metric("method_not_allowed"), 1);
    assert_eq!(gw.metric("unknown_host"), 1);
    assert_eq!(gw.metric("origin_denied"), 1);
    assert_eq!(gw.metric("origin_error"), 1);
    assert_eq!(gw.metric("origin_timeout"), 1);

    let (status, took) = gw.stop();
    assert!(took < Duration::from_secs(5), "SIGINT stop took {took:?}");
    assert!(status.success(), "{status}");
}

fn urlencode(s: &str) -> String {
    ixproxy_core::signer::encode_uri_component(s)
}

fn run_to_end(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if wait_with_timeout(&mut child, Duration::from_secs(10)).is_none() {
        sigint(&child);
        let _ = child.wait();
        panic!("ixproxy serve kept running when it should have refused to start");
    }
    child.wait_with_output().expect("output")
}

#[test]
fn serve_refuses_an_invalid_config_with_the_field_named() {
    let dir = temp_dir("serve-invalid");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nsources:\n  - name: a\n    hosts: []\n    secure_url_tokens: [t]\n",
    )
    .expect("write");
    let out = run_to_end(ixproxy().arg("serve").arg("-c").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: sources[0].hosts"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_refuses_a_busy_listen_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = temp_dir("serve-busy");
    let path = dir.join("busy.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {addr}\nadmin_listen: 127.0.0.1:{}\nsources:\n  - name: a\n    \
             hosts: [a.test]\n    secure_url_tokens: [t]\n",
            free_port()
        ),
    )
    .expect("write");
    let out = run_to_end(ixproxy().arg("serve").arg("-c").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("error: listen: cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Runs `openssl` with `args` in `dir`, panicking with its stderr on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the TLS test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a `localhost`-only server certificate it signed.
fn make_test_pki(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req", "-x509", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem",
    ];
    ca.extend(ec);
    ca.extend([
        "-subj",
        "/CN=ixproxy test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// `openssl s_server -www` on 127.0.0.1: an https origin answering every GET with 200.
struct TlsOrigin {
    child: Child,
    port: u16,
}

impl TlsOrigin {
    fn start(dir: &std::path::Path) -> TlsOrigin {
        let port = free_port();
        let child = Command::new("openssl")
            .args([
                "s_server", "-quiet", "-www", "-cert", "srv.pem", "-key", "srv.key",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < IO_TIMEOUT, "s_server not listening");
            thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin { child, port }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_origins_are_verified_against_system_roots_plus_ca_file() {
    let dir = temp_dir("serve-tls");
    make_test_pki(&dir);
    let origin = TlsOrigin::start(&dir);
    let source = "sources:
  - name: tls
    hosts: [tls.test]
    secure_url_tokens: [tok-tls]
    allow_private_origins: true
";
    let good = signed(
        "tok-tls",
        &format!("https://localhost:{}/", origin.port),
        &[],
    );
    let wrong_name = signed(
        "tok-tls",
        &format!("https://127.0.0.1:{}/", origin.port),
        &[],
    );

    let ca_file = dir.join("ca.pem");
    let with_ca = Gateway::start(
        &format!(
            "upstream:\n  ca_file: {}\n  connect_timeout: 2s\n  timeout: 5s\n{source}",
            ca_file.display()
        ),
        &[],
    );
    let reply = with_ca.get("tls.test", &good, &[]);
    assert_eq!(reply.status(), 200, "{reply:?}");
    assert!(
        String::from_utf8_lossy(reply.body()).contains("s_server"),
        "{reply:?}"
    );
    // The certificate names only `localhost`: host name verification must refuse it for an IP.
    assert_eq!(with_ca.get("tls.test", &wrong_name, &[]).status(), 502);
    drop(with_ca);

    // Without the CA file the private CA is unknown: TLS failure → 502.
    let without_ca = Gateway::start(source, &[]);
    assert_eq!(without_ca.get("tls.test", &good, &[]).status(), 502);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A keep-alive origin that counts the connections it accepts.
fn keep_alive_origin() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Ok(mut n) = count.lock() {
                *n += 1;
            }
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let Ok(mut out) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                // At most 100 requests per connection, each answered with keep-alive.
                for _ in 0..100 {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn origin_connections_are_pooled_per_origin_host() {
    let (origin, accepted) = keep_alive_origin();
    let gw = Gateway::start(
        "sources:
  - name: pool
    hosts: [pool.test]
    secure_url_tokens: [tok-pool]
    allow_private_origins: true
",
        &[],
    );
    let by_ip = signed("tok-pool", &format!("http://{origin}/a.png"), &[]);
    for _ in 0..3 {
        assert_eq!(gw.get("pool.test", &by_ip, &[]).status(), 200);
    }
    assert_eq!(*accepted.lock().expect("lock"), 1, "one pooled connection");
    // Another origin name on the same address gets its own connection (the pool key holds
    // the host), then reuses it.
    let by_name = signed(
        "tok-pool",
        &format!("http://localhost:{}/a.png", origin.port()),
        &[],
    );
    for _ in 0..2 {
        assert_eq!(gw.get("pool.test", &by_name, &[]).status(), 200);
    }
    assert_eq!(*accepted.lock().expect("lock"), 2);
}
