//! `ixproxy serve` without `-c`: a demo config on loopback plus a tiny built-in origin, so the
//! gateway can be tried offline with one `curl`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ixproxy_core::config::{RawConfig, SecretResolver};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Config;

/// The demo source's token. It is printed on purpose: the demo serves only loopback.
pub const DEMO_TOKEN: &str = "ixproxy-demo-token";
/// Where the built-in origin serves the sample asset.
pub const DEMO_ASSET_PATH: &str = "/ixproxy-demo.png";

/// A 16×16 two-colour checkerboard PNG (100 bytes).
pub const DEMO_PNG: [u8; 100] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10, 0x08, 0x03, 0x00, 0x00, 0x00, 0x28, 0x2d, 0x0f,
    0x53, 0x00, 0x00, 0x00, 0x06, 0x50, 0x4c, 0x54, 0x45, 0xf4, 0x7b, 0x20, 0x1d, 0x3c, 0x6e, 0xc8,
    0x53, 0x99, 0xa3, 0x00, 0x00, 0x00, 0x19, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x60, 0x00,
    0x02, 0x46, 0x20, 0x40, 0xa6, 0x49, 0x15, 0xa0, 0x54, 0x3f, 0x0c, 0x0c, 0x02, 0x77, 0x00, 0x00,
    0x45, 0x10, 0x00, 0x81, 0x76, 0x02, 0x4d, 0x61, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44,
    0xae, 0x42, 0x60, 0x82,
];

/// Connections the built-in origin serves at once; more are refused with 503.
const MAX_ORIGIN_CONNECTIONS: usize = 64;
/// How long the built-in origin waits for a (next) request on a connection.
const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request head the built-in origin reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The demo config YAML for an origin on `origin_port`.
pub fn demo_yaml(origin_port: u16) -> String {
    format!(
        "# ixproxy demo config (built in; run `ixproxy serve -c FILE` for a real one)
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9901
upstream:
  connect_timeout: 2s
  timeout: 10s
sources:
  - name: demo
    hosts: [127.0.0.1, localhost, demo.localhost]
    secure_url_tokens: [{DEMO_TOKEN}]
    allowed_origin_hosts: [127.0.0.1:{origin_port}]   # the built-in origin, no other port
    allow_private_origins: true   # the built-in origin lives on loopback
    origin_auth:
      request_handshake: demo-handshake
# built-in origin: http://127.0.0.1:{origin_port}{DEMO_ASSET_PATH}
"
    )
}

/// The validated demo config for an origin on `origin_port`.
///
/// # Errors
/// Only if the embedded YAML were invalid: the message names the field.
pub fn demo_config(origin_port: u16, secrets: &dyn SecretResolver) -> Result<Config, String> {
    RawConfig::from_yaml(&demo_yaml(origin_port))
        .and_then(|raw| raw.validate(secrets))
        .map_err(|e| format!("built-in demo config: {e}"))
}

/// The sample asset's origin URL.
pub fn demo_origin_url(origin: SocketAddr) -> String {
    format!("http://{origin}{DEMO_ASSET_PATH}")
}

/// What `ixproxy serve` prints at start in demo mode: the addresses the gateway (`listen`) and
/// the admin app (`admin`) were bound to, the signed example URL and a `curl` command that
/// fetches it.
pub fn banner(listen: SocketAddr, admin: SocketAddr, origin: SocketAddr) -> String {
    let signed = sign_url(
        DEMO_TOKEN,
        &demo_origin_url(origin),
        &[],
        &SignOptions::default(),
    );
    let url = format!("http://{listen}{signed}");
    format!(
        "ixproxy demo: no -c FILE given, serving the built-in demo config
  gateway: http://{listen}  (source \"demo\", token \"{DEMO_TOKEN}\")
  admin:   http://{admin}/healthz  http://{admin}/metrics
  origin:  {origin_url}  (built in)
  signed:  {url}
try:
  curl -sS -o ixproxy-demo.png -w '%{{http_code}} %{{content_type}} %{{size_download}} bytes\\n' '{url}'
",
        origin_url = demo_origin_url(origin),
    )
}

/// Starts the built-in origin on 127.0.0.1 with an OS-assigned port and returns its address.
///
/// It serves [`DEMO_PNG`] at [`DEMO_ASSET_PATH`] (GET and HEAD, keep-alive) and 404 elsewhere,
/// on plain threads so it is independent of the gateway's runtimes.
///
/// # Errors
/// The loopback listener cannot be bound.
pub fn start_origin() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("demo-origin".to_owned())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if active.load(Ordering::Relaxed) >= MAX_ORIGIN_CONNECTIONS {
                    let mut stream = stream;
                    let _ = write_response(&mut stream, false, 503, "text/plain", b"busy\n", true);
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let active = Arc::clone(&active);
                let spawned = std::thread::Builder::new()
                    .name("demo-origin-conn".to_owned())
                    .spawn(move || {
                        let _ = serve_connection(stream);
                        active.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    log::warn!("demo origin: cannot spawn a connection thread");
                }
            }
        })?;
    Ok(addr)
}

fn serve_connection(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ORIGIN_IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(ORIGIN_IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some((method, path, close)) = read_request_head(&mut reader)? else {
            return Ok(());
        };
        let head = method == "HEAD";
        let path_only = path.split('?').next().unwrap_or("");
        match (method.as_str(), path_only) {
            ("GET" | "HEAD", DEMO_ASSET_PATH) => {
                write_response(&mut writer, head, 200, "image/png", &DEMO_PNG, close)?;
            }
            ("GET" | "HEAD", _) => {
                write_response(&mut writer, head, 404, "text/plain", b"not found\n", close)?;
            }
            _ => {
                write_response(&mut writer, false, 405, "text/plain", b"get only\n", true)?;
                return Ok(());
            }
        }
        if close {
            return Ok(());
        }
    }
}

/// Reads one request head; `None` at a clean end of the connection. Returns method, target and
/// whether the client asked to close.
fn read_request_head(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(String, String, bool)>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let http10 = parts.next() == Some("HTTP/1.0");
    let mut close = http10;
    let mut total = request_line.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || total > MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
    }
    Ok(Some((method, target, close)))
}

fn write_response(
    out: &mut TcpStream,
    head_only: bool,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: public, max-age=86400\r\nconnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body);
    }
    out.write_all(&response)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::NativeSecrets;
    use ixproxy_core::{decide, Decision, RequestInfo};
    use std::io::Read;

    fn fetch(addr: SocketAddr, request: &str) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("write");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).expect("read");
        out
    }

    #[test]
    fn the_demo_config_validates_and_the_printed_url_is_forwarded_to_the_origin() {
        let origin: SocketAddr = "127.0.0.1:45678".parse().expect("addr");
        let config = demo_config(origin.port(), &NativeSecrets).expect("demo config");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9901");
        let banner = banner(config.listen, config.admin_listen, origin);
        let url = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("signed:  "))
            .expect("signed line")
            .to_owned();
        assert!(banner.contains("curl -sS -o ixproxy-demo.png"));
        assert!(banner.contains(&format!("'{url}'")));
        let target = url
            .strip_prefix("http://127.0.0.1:8080")
            .expect("gateway url");
        for host in ["127.0.0.1:8080", "localhost:8080", "demo.localhost"] {
            let req = RequestInfo {
                method: "GET",
                host,
                target,
            };
            match decide(&config.sources, &req, 1_700_000_000) {
                Decision::Forward(f) => {
                    assert_eq!(f.origin().to_url_string(), demo_origin_url(origin));
                    assert!(f.allow_private());
                    assert!(
                        f.may_receive_auth(),
                        "the handshake goes to the built-in origin"
                    );
                }
                Decision::Reject(r) => panic!("{host}: rejected {r:?}"),
            }
        }
    }

    #[test]
    fn the_demo_refuses_every_origin_but_its_own() {
        let config = demo_config(45678, &NativeSecrets).expect("demo config");
        for url in [
            "http://127.0.0.1:45679/ixproxy-demo.png",
            "http://127.0.0.1:9901/metrics",
            "http://127.0.0.1/ixproxy-demo.png",
            "http://localhost:45678/ixproxy-demo.png",
            "https://example.com/x.png",
        ] {
            let target = sign_url(DEMO_TOKEN, url, &[], &SignOptions::default());
            let req = RequestInfo {
                method: "GET",
                host: "127.0.0.1:8080",
                target: &target,
            };
            match decide(&config.sources, &req, 1_700_000_000) {
                Decision::Reject(r) => assert_eq!(r.status(), 403, "{url}: {r:?}"),
                Decision::Forward(f) => panic!("{url}: forwarded to {:?}", f.origin()),
            }
        }
    }

    #[test]
    fn the_builtin_origin_serves_the_png_with_keep_alive_and_404_elsewhere() {
        let addr = start_origin().expect("origin");
        let two = fetch(
            addr,
            "GET /ixproxy-demo.png HTTP/1.1\r\nHost: x\r\n\r\n\
             HEAD /ixproxy-demo.png HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8_lossy(&two);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.contains("content-type: image/png"));
        assert!(two.windows(DEMO_PNG.len()).any(|w| w == DEMO_PNG));
        assert!(two.ends_with(b"\r\n\r\n"), "HEAD has no body");
        let missing = fetch(addr, "GET /other HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(missing.starts_with(b"HTTP/1.1 404 "));
    }

    #[test]
    fn the_sample_is_a_png() {
        assert_eq!(&DEMO_PNG[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&DEMO_PNG[DEMO_PNG.len() - 8..DEMO_PNG.len() - 4], b"IEND");
    }
}
