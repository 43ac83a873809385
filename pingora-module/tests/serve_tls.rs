//! `ixproxy serve` with `tls:` and `h2c:` (README: TLS and HTTP/2), driven by the real `curl`
//! and a rustls client: HTTP/2 negotiated through ALPN over TLS, HTTP/1.1 over TLS on one
//! keep-alive connection with the client timeouts still enforced, h2c with prior knowledge and
//! HTTP/1.1 on the same plain port, silent TLS handshakes held to `max_connections` and
//! `client_header_timeout`, and the start-up errors for bad certificate or key files.
//! A CA and the gateway's certificate are generated for each test. Without `curl` on the PATH
//! the curl tests print why and pass.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ixproxy_conformance::origin::RecordingOrigin;
use ixproxy_conformance::tls::{
    certificates_yaml, have_curl, served_by_sni, write_issued, Issued, SniCertificates, TestCa,
    SNI_TEST_HOSTS,
};
use ixproxy_conformance::{ServeProcess, Signal};
use ixproxy_core::sign::{sign_url, SignOptions};

const TOKEN: &str = "tls-test-token-0123456789";
const TIMEOUT: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ixproxy"))
}

/// The generated CA, the gateway's certificate for `localhost` / `127.0.0.1` written to files,
/// and the directory holding them.
struct Pki {
    ca: TestCa,
    dir: tempfile::TempDir,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
    issued: Issued,
}

fn pki() -> Pki {
    let ca = TestCa::generate("ixproxy serve TLS test CA").expect("ca");
    let issued = ca.issue_localhost().expect("server certificate");
    let dir = tempfile::Builder::new()
        .prefix("ixproxy-serve-tls-")
        .tempdir()
        .expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let cert_file = write("tls.crt", &issued.cert_pem);
    let key_file = write("tls.key", &issued.key_pem);
    let ca_file = write("ca.pem", &ca.pem());
    Pki {
        ca,
        dir,
        cert_file,
        key_file,
        ca_file,
        issued,
    }
}

/// A config with source `a` on host `localhost` (private origins allowed, for the recording
/// origin on 127.0.0.1) and `extra` top-level YAML.
fn config(extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{extra}\
         sources:\n  - name: a\n    hosts: [localhost]\n    secure_url_tokens: [{TOKEN}]\n    \
         allow_private_origins: true\n"
    )
}

fn tls_yaml(cert: &Path, key: &Path) -> String {
    format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key.display()
    )
}

fn start(config: &str) -> ServeProcess {
    ServeProcess::start_temp(bin(), config, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn signed(origin: &RecordingOrigin, path: &str) -> String {
    sign_url(
        TOKEN,
        &format!("http://{}{path}", origin.http),
        &[],
        &SignOptions::default(),
    )
}

/// One transfer of a curl run: what `-w` reported and the headers `-D` wrote.
#[derive(Debug)]
struct Transfer {
    version: String,
    status: u16,
    connects: u32,
    headers: Vec<(String, String)>,
}

impl Transfer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const WRITE_OUT: &str = "\\n@@ %{http_version} %{http_code} %{num_connects}\\n";

/// Runs curl with `args` then `urls` (bodies to stdout), at most [`TIMEOUT`]; returns each
/// transfer and stdout (each body followed by its `-w` line).
fn curl(args: &[&str], urls: &[String]) -> (Vec<Transfer>, String) {
    let timeout = TIMEOUT.as_secs().to_string();
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--path-as-is",
            "--max-time",
            &timeout,
            "-w",
            WRITE_OUT,
        ])
        .args(["-D", "/dev/stderr"])
        .args(args);
    for url in urls {
        command.arg(url);
    }
    let out: Output = command.output().expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl failed: {stderr}\n{stdout}");
    // `-D /dev/stderr` writes each transfer's header block; split them at their status lines.
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    for line in stderr.lines() {
        let line = line.trim_end();
        if line.starts_with("HTTP/") {
            blocks.push(Vec::new());
        } else if let (Some(block), Some((name, value))) = (blocks.last_mut(), line.split_once(':'))
        {
            block.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let mut transfers = Vec::new();
    // Each body is followed by its `-w` line.
    for line in stdout.lines().filter_map(|l| l.strip_prefix("@@ ")) {
        let fields: Vec<&str> = line.split(' ').collect();
        let [version, status, connects] = fields[..] else {
            panic!("curl -w line {line:?}");
        };
        transfers.push(Transfer {
            version: version.to_owned(),
            status: status.parse().expect("status"),
            connects: connects.parse().expect("num_connects"),
            headers: Vec::new(),
        });
    }
    assert_eq!(transfers.len(), urls.len(), "{stdout}\n{stderr}");
    assert_eq!(blocks.len(), urls.len(), "{stderr}");
    for (transfer, headers) in transfers.iter_mut().zip(blocks) {
        transfer.headers = headers;
    }
    (transfers, stdout)
}

fn assert_security_headers(transfer: &Transfer) {
    assert_eq!(transfer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        transfer.header("content-security-policy"),
        Some("default-src 'none'; img-src data:; style-src 'unsafe-inline'")
    );
    assert_eq!(transfer.header("set-cookie"), None);
}

#[test]
fn curl_negotiates_http2_over_tls_and_gets_the_origin_body_with_the_security_headers() {
    if !have_curl() {
        return;
    }
    let pki = pki();
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config(&tls_yaml(&pki.cert_file, &pki.key_file)));
    assert!(
        serve
            .log()
            .contains(&format!("ixproxy: gateway on https://{}, ", serve.listen())),
        "{}",
        serve.log()
    );
    let url = format!(
        "https://localhost:{}{}",
        serve.listen().port(),
        signed(&origin, "/asset/over-h2.jpg")
    );
    let ca = pki.ca_file.display().to_string();
    let (transfers, body) = curl(&["--http2", "--cacert", &ca], &[url]);
    let t = &transfers[0];
    assert_eq!((t.version.as_str(), t.status), ("2", 200), "{t:?}");
    assert!(body.starts_with("asset /asset/over-h2.jpg"), "{body}");
    assert_security_headers(t);
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/asset/over-h2.jpg");
    assert_eq!(
        serve
            .settled_outcome_count("forwarded", 1, Duration::from_secs(5))
            .expect("metric"),
        1
    );

    // A client that does not trust the CA gets no answer at all.
    let unknown = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "5"])
        .arg(format!("https://localhost:{}/x", serve.listen().port()))
        .output()
        .expect("curl");
    assert!(!unknown.status.success());
}

#[test]
fn http1_over_tls_keeps_two_requests_on_one_connection() {
    if !have_curl() {
        return;
    }
    let pki = pki();
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config(&tls_yaml(&pki.cert_file, &pki.key_file)));
    let port = serve.listen().port();
    let urls = [
        format!(
            "https://localhost:{port}{}",
            signed(&origin, "/asset/ka-1.jpg")
        ),
        format!(
            "https://localhost:{port}{}",
            signed(&origin, "/asset/ka-2.jpg")
        ),
    ];
    let ca = pki.ca_file.display().to_string();
    let (transfers, body) = curl(&["--http1.1", "--cacert", &ca], &urls);
    let got: Vec<(&str, u16, u32)> = transfers
        .iter()
        .map(|t| (t.version.as_str(), t.status, t.connects))
        .collect();
    // The second transfer made no new connection: it reused the first one.
    assert_eq!(got, [("1.1", 200, 1), ("1.1", 200, 0)], "{transfers:?}");
    assert!(body.contains("asset /asset/ka-1.jpg"), "{body}");
    assert!(body.contains("asset /asset/ka-2.jpg"), "{body}");
    for t in &transfers {
        assert_security_headers(t);
    }
    assert_eq!(
        serve
            .settled_outcome_count("forwarded", 2, Duration::from_secs(5))
            .expect("metric"),
        2
    );
}

#[test]
fn h2c_with_prior_knowledge_and_http1_share_the_plain_port() {
    if !have_curl() {
        return;
    }
    let origin = RecordingOrigin::start().expect("origin");
    let serve = start(&config("h2c: true\n"));
    let url = |path: &str| {
        format!(
            "http://localhost:{}{}",
            serve.listen().port(),
            signed(&origin, path)
        )
    };
    let (h2, body) = curl(&["--http2-prior-knowledge"], &[url("/asset/h2c.jpg")]);
    assert_eq!((h2[0].version.as_str(), h2[0].status), ("2", 200), "{h2:?}");
    assert!(body.starts_with("asset /asset/h2c.jpg"), "{body}");
    assert_security_headers(&h2[0]);
    let (h1, body) = curl(&["--http1.1"], &[url("/asset/h1.jpg")]);
    assert_eq!(
        (h1[0].version.as_str(), h1[0].status),
        ("1.1", 200),
        "{h1:?}"
    );
    assert!(body.starts_with("asset /asset/h1.jpg"), "{body}");
    assert_eq!(
        serve
            .settled_outcome_count("forwarded", 2, Duration::from_secs(5))
            .expect("metric"),
        2
    );

    // Without `h2c: true` the preface is not HTTP/2: no HTTP/2 answer.
    let plain = start(&config(""));
    let refused = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "5"])
        .arg(format!("http://localhost:{}/x", plain.listen().port()))
        .output()
        .expect("curl");
    assert!(!refused.status.success(), "h2c answered without h2c: true");
}

/// A blocking TLS client that trusts only `ca` and offers `http/1.1`.
fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_connect_alpn(addr, ca, b"http/1.1")
}

/// [`tls_connect`] offering only `alpn`.
fn tls_connect_alpn(
    addr: SocketAddr,
    ca: &TestCa,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_connect_to(addr, ca, "localhost", alpn)
}

/// [`tls_connect_alpn`] sending (and checking the certificate against) `name`.
fn tls_connect_to(
    addr: SocketAddr,
    ca: &TestCa,
    name: &str,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().into()).expect("ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    tcp.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Completes the handshake.
    tls.flush().expect("handshake");
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

/// A real TLS client (HTTP/1.1) gets the origin's 200 for `path`: the gateway has a slot for it.
fn assert_served(serve: &ServeProcess, ca: &TestCa, origin: &RecordingOrigin, path: &str) {
    let mut tls = tls_connect(serve.listen(), ca);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        signed(origin, path)
    );
    tls.write_all(request.as_bytes()).expect("send");
    tls.flush().expect("flush");
    let (got, _) = read_to_close(&mut tls);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
}

/// Reads until the server closes; returns what arrived and when the close came.
fn read_to_close(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the server kept the connection open for {TIMEOUT:?}")
            }
            // A close without close_notify or a reset: closed all the same.
            Err(_) => break,
        }
    }
    (got, Instant::now())
}

#[test]
fn http1_over_tls_keeps_the_client_header_and_idle_timeouts() {
    let pki = pki();
    let origin = RecordingOrigin::start().expect("origin");
    let limits = "limits:\n  client_header_timeout: 1s\n  client_idle_timeout: 1s\n";
    let serve = start(&config(&format!(
        "{}{limits}",
        tls_yaml(&pki.cert_file, &pki.key_file)
    )));

    // A request header trickled a byte at a time is cut at client_header_timeout, unanswered.
    let mut slow = tls_connect(serve.listen(), &pki.ca);
    let started = Instant::now();
    for byte in b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Slow: " {
        if slow
            .write_all(&[*byte])
            .and_then(|()| slow.flush())
            .is_err()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let (got, closed) = read_to_close(&mut slow);
    let took = closed - started;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&took),
        "cut after {took:?}"
    );

    // A keep-alive connection is answered, then closed once idle for client_idle_timeout.
    let mut idle = tls_connect(serve.listen(), &pki.ca);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        signed(&origin, "/asset/idle.jpg")
    );
    idle.write_all(request.as_bytes()).expect("send");
    idle.flush().expect("flush");
    let answered = Instant::now();
    let (got, closed) = read_to_close(&mut idle);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.ends_with("asset /asset/idle.jpg"), "{text}");
    let idle_for = closed - answered;
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(4)).contains(&idle_for),
        "closed after {idle_for:?} idle"
    );
    assert_eq!(
        tls_peer_cert(&idle),
        pki.issued.cert_der,
        "the configured certificate is served"
    );
}

/// How long after its connect `conn` was closed by the server (EOF or reset), if within
/// `limit`.
fn closed_after(mut conn: TcpStream, connected: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let end = connected + limit;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match conn.read(&mut buf) {
            Ok(0) => return Some(connected.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(connected.elapsed())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn silent_tls_handshakes_count_in_max_connections_and_end_at_the_header_timeout() {
    const LIMIT: usize = 20;
    const EXTRA: usize = 10;
    let pki = pki();
    let origin = RecordingOrigin::start().expect("origin");
    let limits = format!("limits:\n  client_header_timeout: 1s\n  max_connections: {LIMIT}\n");
    let serve = start(&config(&format!(
        "{}{limits}",
        tls_yaml(&pki.cert_file, &pki.key_file)
    )));

    // An attacker opens TCP connections to the HTTPS port and never starts the handshake.
    let silent: Vec<(TcpStream, Instant)> = (0..LIMIT + EXTRA)
        .map(|_| {
            let conn = TcpStream::connect_timeout(&serve.listen(), TIMEOUT).expect("connect");
            (conn, Instant::now())
        })
        .collect();
    let closed: Vec<Option<Duration>> = std::thread::scope(|scope| {
        let waits: Vec<_> = silent
            .into_iter()
            .map(|(conn, at)| scope.spawn(move || closed_after(conn, at, Duration::from_secs(5))))
            .collect();
        waits
            .into_iter()
            .map(|w| w.join().expect("reader"))
            .collect()
    });
    let at_once = closed
        .iter()
        .filter(|c| c.is_some_and(|took| took < Duration::from_millis(500)))
        .count();
    let at_timeout = closed
        .iter()
        .filter(|c| {
            c.is_some_and(|took| {
                (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took)
            })
        })
        .count();
    assert_eq!(
        (at_once, at_timeout),
        (EXTRA, LIMIT),
        "closed after: {closed:?}"
    );

    // Their slots are free again: a real TLS client is served.
    assert_served(&serve, &pki.ca, &origin, "/asset/after.jpg");
}

fn tls_peer_cert(tls: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> Vec<u8> {
    tls.conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .expect("server certificate")
}

/// Runs `ixproxy serve -c` on `config` to its end (at most [`TIMEOUT`]).
fn refuse(dir: &Path, config: &str) -> Output {
    let path = dir.join("refused.yaml");
    std::fs::write(&path, config).expect("write");
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ixproxy serve kept running with bad TLS files");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn unreadable_or_invalid_tls_files_stop_the_start_naming_the_field_never_the_key() {
    let pki = pki();
    let dir = pki.dir.path();
    let other = pki.ca.issue_localhost().expect("other");
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, &other.key_pem).expect("write");
    let missing = dir.join("missing.crt");
    let cases = [
        (
            tls_yaml(&missing, &pki.key_file),
            "error: tls.cert_file: cannot read ",
        ),
        // The key where the certificate belongs: no certificate in it.
        (
            tls_yaml(&pki.key_file, &pki.key_file),
            "error: tls.cert_file: no PEM certificate",
        ),
        (
            tls_yaml(&pki.cert_file, &pki.cert_file),
            "error: tls.key_file: no PEM private key",
        ),
        (
            tls_yaml(&pki.cert_file, &other_key),
            "error: tls.key_file: the key in ",
        ),
    ];
    let key_body: String = pki
        .issued
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (tls, wanted) in cases {
        let out = refuse(dir, &config(&tls));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tls}: {stderr}");
        assert!(stderr.starts_with(wanted), "{tls}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
        assert!(
            !stderr.contains(&key_body[..40]),
            "key material printed: {stderr}"
        );
    }
}

/// Sends `frames` after the HTTP/2 client preface and an empty SETTINGS frame on a new h2c
/// connection, then nothing; returns what the server sent and how long until it closed.
fn h2c_then_silence(addr: SocketAddr, frames: &[u8]) -> (Vec<u8>, Duration) {
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    tcp.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    // The client connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("preface");
    tcp.write_all(frames).expect("frames");
    let opened = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the HTTP/2 connection stayed open for {TIMEOUT:?}")
            }
            Err(_) => break,
        }
    }
    (got, opened.elapsed())
}

/// The type of each whole HTTP/2 frame in `bytes` (9-byte header: 24-bit length, type, flags,
/// stream id).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = rest.get(9 + len..).unwrap_or_default();
    }
    types
}

#[test]
fn an_idle_or_stalled_http2_connection_is_closed_after_client_idle_timeout() {
    let serve = start(&config(
        "h2c: true\nlimits:\n  client_idle_timeout: 1s\n  client_header_timeout: 1s\n",
    ));
    let window = Duration::from_millis(900)..Duration::from_secs(4);
    // No stream at all.
    let (got, idle_for) = h2c_then_silence(serve.listen(), &[]);
    // The server spoke HTTP/2: its first frame is SETTINGS (type 4).
    assert_eq!(frame_types(&got).first(), Some(&4), "{got:?}");
    assert!(
        window.contains(&idle_for),
        "idle: closed after {idle_for:?}"
    );
    // A HEADERS frame whose header block never ends (no END_HEADERS, no CONTINUATION):
    // `:method GET`, `:scheme http`, `:path /` from the HPACK static table.
    let headers = [0, 0, 3, 0x1, 0x0, 0, 0, 0, 1, 0x82, 0x86, 0x84];
    let (got, stalled_for) = h2c_then_silence(serve.listen(), &headers);
    assert!(
        !frame_types(&got).contains(&1),
        "a response HEADERS frame was sent: {got:?}"
    );
    assert!(
        window.contains(&stalled_for),
        "stalled header: closed after {stalled_for:?}"
    );
    assert_eq!(serve.outcome_count("forwarded").expect("metric"), 0);
}

/// Polls `ixproxy_config_reloads_total{result}` (bounded) until it reaches `value`.
fn await_reloads(serve: &ServeProcess, result: &str, value: u64) {
    let sample = format!("ixproxy_config_reloads_total{{result=\"{result}\"}}");
    let started = Instant::now();
    while serve.metric(&sample).unwrap_or(0) < value {
        assert!(
            started.elapsed() < TIMEOUT,
            "{sample} never reached {value}:\n{}",
            serve.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_serves_the_new_certificate_to_new_connections_and_keeps_it_on_a_bad_file() {
    if !have_curl() {
        return;
    }
    let origin = RecordingOrigin::start().expect("origin");
    let first = pki();
    let serve = start(&config(&tls_yaml(&first.cert_file, &first.key_file)));
    let url = format!(
        "https://localhost:{}{}",
        serve.listen().port(),
        signed(&origin, "/asset/reload.jpg")
    );
    let resolve = format!("localhost:{}:127.0.0.1", serve.listen().port());
    let trusts = |ca: &Path| {
        let status = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
            ])
            .arg("--cacert")
            .arg(ca)
            .arg(&url)
            .stderr(Stdio::null())
            .status()
            .expect("run curl");
        status.success()
    };
    assert!(trusts(&first.ca_file));

    // Another CA's certificate and key replace the files; SIGHUP makes new handshakes use them.
    let second = pki();
    std::fs::copy(&second.cert_file, &first.cert_file).expect("copy cert");
    std::fs::copy(&second.key_file, &first.key_file).expect("copy key");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_reloads(&serve, "ok", 1);
    assert!(trusts(&second.ca_file), "the new certificate is not served");
    assert!(
        !trusts(&first.ca_file),
        "the old certificate is still served"
    );

    // A broken key refuses the whole reload: the running pair stays.
    std::fs::write(&first.key_file, "not a key\n").expect("write");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_reloads(&serve, "error", 1);
    assert!(
        trusts(&second.ca_file),
        "a bad key file replaced the running pair"
    );
    let log = serve.log();
    assert!(
        log.contains("tls.key_file"),
        "the refusal names no field:\n{log}"
    );
}

#[test]
fn an_http2_client_that_opens_no_stream_is_closed_at_the_header_timeout() {
    const LIMIT: usize = 3;
    let pki = pki();
    let origin = RecordingOrigin::start().expect("origin");
    let limits = format!(
        "limits:\n  client_header_timeout: 1s\n  client_idle_timeout: 30s\n  max_connections: {LIMIT}\n"
    );
    let serve = start(&config(&format!(
        "{}{limits}",
        tls_yaml(&pki.cert_file, &pki.key_file)
    )));
    // Every slot taken by a client that negotiates h2, then sends not even the preface.
    let silent: Vec<_> = (0..LIMIT)
        .map(|_| {
            let tls = tls_connect_alpn(serve.listen(), &pki.ca, b"h2");
            assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
            (tls, Instant::now())
        })
        .collect();
    for (mut tls, at) in silent {
        let (_, closed) = read_to_close(&mut tls);
        let took = closed.duration_since(at);
        assert!(
            took < Duration::from_secs(4),
            "an h2 connection without a stream held its slot for {took:?}"
        );
    }
    // The slots are free again.
    assert_served(&serve, &pki.ca, &origin, "/asset/after-h2.jpg");
}

/// [`served_by_sni`] as `"<HTTP version> <status> <certificate's common name>"`, failing the
/// test when curl fails.
fn served(port: u16, host: &str, path: &str, args: &[&str]) -> String {
    let seen = served_by_sni(port, host, path, args).unwrap_or_else(|e| panic!("{e}"));
    format!("{} {} {}", seen.version, seen.status, seen.cn)
}

#[test]
fn certificates_are_chosen_by_sni_served_over_http2_and_swapped_on_sighup() {
    if !have_curl() {
        return;
    }
    let origin = RecordingOrigin::start().expect("origin");
    let certs = SniCertificates::generate().expect("certificates");
    let (ca, ca_file, tls) = (&certs.ca, &certs.ca_file, &certs.tls_yaml);
    let serve = start(&format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{tls}sources:\n  - name: a\n    \
         hosts: {SNI_TEST_HOSTS}\n    secure_url_tokens: [{TOKEN}]\n    \
         allow_private_origins: true\n"
    ));
    let port = serve.listen().port();
    let path = signed(&origin, "/asset/sni.jpg");
    let ca_arg = ca_file.display().to_string();
    // curl offers h2 over TLS unless told otherwise.
    let trusted = ["--cacert", ca_arg.as_str()];
    let h2 = ["--http2", "--cacert", ca_arg.as_str()];

    // Each name gets its own certificate, which curl checks against the name; HTTP/2 on each.
    for (host, cn) in [
        ("a.test", "cert-ab"),
        ("b.test", "cert-ab"),
        ("img.wild.test", "cert-wild"),
        ("localhost", "cert-default"),
    ] {
        let seen = served(port, host, &path, &h2);
        assert_eq!(seen, format!("2 200 {cn}"), "{host}");
    }
    let seen = served(port, "a.test", &path, &["--http1.1", "--cacert", &ca_arg]);
    assert_eq!(seen, "1.1 200 cert-ab");
    // A name no entry lists (a wildcard covers one label only) and a client without SNI (curl
    // sends none to an address) get the first entry's certificate.
    for host in ["other.test", "deep.img.wild.test", "127.0.0.1"] {
        let seen = served(port, host, &path, &["--http2", "-k"]);
        assert_eq!(seen, "2 200 cert-default", "{host}");
    }

    // A connection made before the reload, its request sent after it.
    let mut before = tls_connect_to(serve.listen(), ca, "a.test", b"http/1.1");
    let old_leaf = tls_peer_cert(&before);

    // One entry's files replaced: SIGHUP serves the new certificate to new connections.
    certs
        .reissue(1, &["a.test", "b.test"], "cert-ab-renewed")
        .expect("reissue");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_reloads(&serve, "ok", 1);
    for (host, cn) in [
        ("a.test", "cert-ab-renewed"),
        ("b.test", "cert-ab-renewed"),
        ("img.wild.test", "cert-wild"),
    ] {
        assert_eq!(
            served(port, host, &path, &trusted),
            format!("2 200 {cn}"),
            "{host}"
        );
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    before.write_all(request.as_bytes()).expect("send");
    before.flush().expect("flush");
    let (got, _) = read_to_close(&mut before);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(tls_peer_cert(&before), old_leaf);

    // A broken key in another entry refuses the whole reload, naming that entry.
    std::fs::write(&certs.files[2].1, "not a key\n").expect("break key");
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    await_reloads(&serve, "error", 1);
    let log = serve.log();
    assert!(
        log.contains("tls.certificates[2].key_file"),
        "the refusal names no entry:\n{log}"
    );
    assert_eq!(
        served(port, "img.wild.test", &path, &trusted),
        "2 200 cert-wild"
    );
    assert_eq!(
        served(port, "a.test", &path, &trusted),
        "2 200 cert-ab-renewed"
    );
}

#[test]
fn check_reads_every_certificate_and_names_the_entry_that_fails() {
    let pki = pki();
    let dir = pki.dir.path();
    let other = pki.ca.issue_names(&["b.test"], "other").expect("other");
    let other_pair = write_issued(dir, "other", &other).expect("write");
    let pair = (pki.cert_file.clone(), pki.key_file.clone());
    let check = |tls: &str| {
        let path = dir.join("check.yaml");
        std::fs::write(&path, config(tls)).expect("write");
        let out = Command::new(bin())
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = certificates_yaml(&[("[localhost]", &pair), ("[b.test]", &other_pair)]);
    assert_eq!(check(&good).0, Some(0), "{}", check(&good).1);
    // The second entry's key is the first entry's: not the key of its certificate.
    let mismatched = (other_pair.0.clone(), pki.key_file.clone());
    for (tls, wanted) in [
        (
            certificates_yaml(&[("[localhost]", &pair), ("[b.test]", &mismatched)]),
            "error: tls.certificates[1].key_file: the key in ",
        ),
        (
            certificates_yaml(&[("[localhost]", &pair), ("[a.test, LOCALHOST]", &other_pair)]),
            "error: tls.certificates[1].hosts[1]: localhost is already tls.certificates[0].hosts[0]",
        ),
        (tls_yaml(&pki.cert_file, &other_pair.1), "error: tls.key_file: the key in "),
    ] {
        let (code, stderr) = check(&tls);
        assert_eq!(code, Some(1), "{tls}: {stderr}");
        assert!(stderr.starts_with(wanted), "{tls}: {stderr}");
    }
}
