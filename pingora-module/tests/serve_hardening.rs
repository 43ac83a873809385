//! `ixproxy serve` against hostile clients and misbehaving origins (issue 5): redirects,
//! request and response limits, origin faults, bounded memory. The real binary runs on
//! 127.0.0.1 with OS-picked ports; the origin is a raw loopback TCP server whose behaviour is
//! chosen by the request path, and the client is a raw TCP client that sees exactly what went
//! over the wire (so an aborted transfer is told apart from a complete one).

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::{
    exchange, free_port, header_value, request, request_path, signed, Gateway, Origin, OriginConn,
    Raw,
};

/// `max_body_bytes` of the test gateway.
const MAX_BODY: usize = 65_536;
/// Marker in bodies that must never reach the client.
const SECRET_BODY: &str = "ORIGIN-BODY-NOT-FOR-CLIENTS";

const TOKEN: &str = "tok-hard";

/// A loopback origin misbehaving on purpose; the path picks the behaviour.
fn serve(mut conn: OriginConn) {
    let me = conn.me;
    let mut peeked = [0u8; 64];
    let n = conn.peek(&mut peeked);
    if peeked[..n].starts_with(b"GET /reset-mid-body ") {
        // The request stays unread, so closing the socket sends a reset. The header goes out
        // first and alone, so the gateway has committed to a 200 when the reset comes.
        let _ = conn
            .out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50000\r\n\r\n");
        thread::sleep(Duration::from_millis(200));
        let _ = conn.out.write_all(&[b'x'; 1000]);
        thread::sleep(Duration::from_millis(200));
        return;
    }
    let Some(head) = conn.read_head() else {
        return;
    };
    let path = request_path(&head);
    let out = &mut conn.out;
    let ok = |ct: &str, body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let redirect = |status: &str, location: &str| {
        format!(
            "HTTP/1.1 {status}\r\nlocation: {location}\r\ncontent-type: text/plain\r\n\
             content-length: {}\r\nset-cookie: hop=1\r\nconnection: close\r\n\r\n{SECRET_BODY}",
            SECRET_BODY.len()
        )
    };
    let reply = match path {
        "/final" | "/ok" => ok("image/png", "final body"),
        "/text" => ok("text/html", SECRET_BODY),
        "/r301" => redirect("301 Moved Permanently", "/r302"),
        "/r302" => redirect("302 Found", "/r303"),
        "/r303" => redirect("303 See Other", &format!("http://{me}/final")),
        "/r307-other-host" => redirect(
            "307 Temporary Redirect",
            &format!("http://localhost:{}/final", me.port()),
        ),
        "/r308-scheme" => redirect("308 Permanent Redirect", "file:///etc/passwd"),
        "/loop" => redirect("302 Found", "/loop"),
        "/huge-claim" => {
            "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 10000000000\r\n\r\n"
                .to_owned()
        }
        "/stream-big" => {
            // Chunked, far past max_body_bytes, bounded so the thread ends.
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            // The header alone first: the gateway commits to the 200 before the body grows.
            thread::sleep(Duration::from_millis(200));
            let chunk = format!("4000\r\n{}\r\n", "y".repeat(0x4000));
            for _ in 0..64 {
                if out.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            let _ = out.write_all(b"0\r\n\r\n");
            return;
        }
        "/close-delimited-big" => {
            // No length at all: the body ends when the origin closes.
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n\r\n");
            thread::sleep(Duration::from_millis(200));
            for _ in 0..64 {
                if out.write_all(&[b'z'; 0x4000]).is_err() {
                    return;
                }
            }
            return;
        }
        "/drip" => {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 1000\r\n\r\n",
            );
            // A byte every 200 ms, for at most 10 s.
            for _ in 0..50 {
                if out.write_all(b"d").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
            return;
        }
        "/drip-headers" => {
            // The header never completes: a header byte every 200 ms, for at most 10 s.
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nx-slow: ");
            for _ in 0..50 {
                if out.write_all(b"s").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
            return;
        }
        "/no-answer" => {
            thread::sleep(Duration::from_secs(5));
            return;
        }
        "/huge-headers" => {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n");
            let line = format!("x-filler: {}\r\n", "h".repeat(1000));
            for _ in 0..1100 {
                if out.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
            let _ = out.write_all(b"content-length: 2\r\n\r\nok");
            return;
        }
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
    };
    let _ = out.write_all(reply.as_bytes());
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Write);
}

const CONFIG: &str = "upstream:
  connect_timeout: 1s
  timeout: 1s
  max_redirects: 3
  max_body_bytes: 65536
sources:
  - name: local
    hosts: [gw.test]
    secure_url_tokens: [tok-hard]
    origin_auth:
      request_handshake: hs-secret
      request_signing_key: k3y
    allow_private_origins: true
  - name: images
    hosts: [img.test]
    secure_url_tokens: [tok-hard]
    allow_private_origins: true
    allowed_content_types: [image/]
  - name: pinned
    hosts: [pinned.test]
    secure_url_tokens: [tok-hard]
    allow_private_origins: true
    allowed_origin_hosts: [127.0.0.1]
";

impl Gateway {
    /// A GET of `origin_url`, signed with [`TOKEN`], as the client received it (resets
    /// included).
    fn get_signed(&self, host: &str, origin_url: &str) -> Raw {
        request(
            self.listen,
            "GET",
            host,
            &signed(TOKEN, origin_url, &[]),
            &[],
        )
    }

    /// Resident memory of the gateway process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// A normal request still works (the gateway survived the previous fault).
    fn assert_serving(&self, origin: &Origin, after: &str) {
        let reply = self.get_signed("gw.test", &origin.url("/ok"));
        assert_eq!(reply.status(), 200, "after {after}: {}", reply.text());
        assert_eq!(reply.body(), b"final body", "after {after}");
    }
}

#[test]
fn serve_follows_redirects_revalidating_each_hop_with_fresh_auth() {
    let origin = Origin::start(serve);
    let gw = Gateway::start(CONFIG, &[("RUST_LOG", "off")]);

    // 301 → 302 → 303 → 200: three hops (the limit), one answer, nothing of the 3xx leaks.
    let reply = gw.get_signed("gw.test", &origin.url("/r301"));
    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert_eq!(reply.body(), b"final body");
    assert!(!reply.text().contains(SECRET_BODY), "{}", reply.text());
    assert_eq!(reply.header("set-cookie"), None);
    assert_eq!(reply.header("location"), None);
    // Every hop on the signed origin's host got its own origin auth: a request id is never
    // reused across attempts.
    let mut ids = Vec::new();
    for prefix in ["/r301", "/r302", "/r303", "/final"] {
        let heads = origin.heads(prefix);
        let head = heads
            .last()
            .unwrap_or_else(|| panic!("{prefix} never reached"));
        assert!(head.starts_with("GET "), "303 keeps GET: {head}");
        assert_eq!(
            header_value(head, "x-imgix-origin-secret").as_deref(),
            Some("hs-secret")
        );
        ids.push(header_value(head, "x-imgix-signature-request-id").expect("request id"));
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids reused: {ids:?}");

    // HEAD stays HEAD through a 303.
    let reply = request(
        gw.listen,
        "HEAD",
        "gw.test",
        &signed(TOKEN, &origin.url("/r303"), &[]),
        &[],
    );
    assert_eq!(reply.status(), 200, "{}", reply.text());
    assert!(origin
        .heads("/final")
        .iter()
        .any(|h| h.starts_with("HEAD ")));

    // A hop to another host gets no origin auth.
    let before = origin.heads("/final").len();
    let reply = gw.get_signed("gw.test", &origin.url("/r307-other-host"));
    assert_eq!(reply.status(), 200, "{}", reply.text());
    let heads = origin.heads("/final");
    assert_eq!(heads.len(), before + 1);
    let hop = heads.last().expect("hop").to_ascii_lowercase();
    assert!(
        hop.contains(&format!("host: localhost:{}", origin.addr.port())),
        "{hop}"
    );
    assert!(
        !hop.contains("x-imgix"),
        "auth leaked to another host: {hop}"
    );

    // Past the limit → 502; a non-http Location → 502; a hop to a host the source does not
    // allow → 403. None of the redirect bodies reach the client.
    let looping = gw.get_signed("gw.test", &origin.url("/loop"));
    assert_eq!(looping.status(), 502, "{}", looping.text());
    assert_eq!(origin.heads("/loop").len(), 4, "first request plus 3 hops");
    let scheme = gw.get_signed("gw.test", &origin.url("/r308-scheme"));
    assert_eq!(scheme.status(), 502, "{}", scheme.text());
    let denied = gw.get_signed("pinned.test", &origin.url("/r307-other-host"));
    assert_eq!(denied.status(), 403, "{}", denied.text());
    for reply in [&looping, &scheme, &denied] {
        assert!(!reply.text().contains(SECRET_BODY), "{}", reply.text());
    }

    assert_eq!(gw.metric("bad_redirect"), 2);
    assert_eq!(gw.metric("origin_denied"), 1);
    assert_eq!(gw.metric("forwarded"), 3);
}

#[test]
fn serve_enforces_request_and_response_limits() {
    let origin = Origin::start(serve);
    let gw = Gateway::start(CONFIG, &[("RUST_LOG", "off")]);
    let ok = signed(TOKEN, &origin.url("/ok"), &[]);

    // 431: too many header fields (default limit 100), checked before anything else.
    let many: Vec<String> = (0..120).map(|i| format!("X-Filler-{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        request(gw.listen, "GET", "gw.test", &ok, &many).status(),
        431
    );
    // 414: request target over 8 KiB.
    let long = signed(
        TOKEN,
        &origin.url(&format!("/ok?pad={}", "a".repeat(9000))),
        &[],
    );
    assert_eq!(
        request(gw.listen, "GET", "gw.test", &long, &[]).status(),
        414
    );

    // Smuggling shapes and request bodies are refused and never reach the origin.
    let before = origin.heads("/ok").len();
    let smuggle = [
        format!(
            "GET {ok} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "GET {ok} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\
             Connection: close\r\n\r\nhello!"
        ),
        format!(
            "GET {ok} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nConnection: close\r\n\
             \r\nhello"
        ),
        format!(
            "GET {ok} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "GET {ok} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: abc\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET {ok} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: gzip\r\n\
             Connection: close\r\n\r\n"
        ),
        // Ambiguous framing is refused before the signature is even looked at.
        "GET /unsigned HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
            .to_owned(),
    ];
    for raw in &smuggle {
        let reply = exchange(gw.listen, raw.as_bytes());
        assert_eq!(reply.status(), 400, "{raw:?} → {}", reply.text());
    }
    assert_eq!(
        origin.heads("/ok").len(),
        before,
        "a refused request reached the origin"
    );
    gw.assert_serving(&origin, "smuggling attempts");

    // A declared length over max_body_bytes → 502 before any byte of it; a 10 GB claim is
    // refused at once.
    let huge = gw.get_signed("gw.test", &origin.url("/huge-claim"));
    assert_eq!(huge.status(), 502, "{}", huge.text());
    assert!(huge.took < Duration::from_millis(900), "{:?}", huge.took);

    // A content type outside allowed_content_types → 403, the origin body never sent.
    let text = gw.get_signed("img.test", &origin.url("/text"));
    assert_eq!(text.status(), 403, "{}", text.text());
    assert!(!text.text().contains(SECRET_BODY), "{}", text.text());
    assert_eq!(gw.get_signed("img.test", &origin.url("/ok")).status(), 200);

    // A streamed body over the limit (chunked, or delimited by close) is cut: the client gets
    // an incomplete transfer, never a complete-looking 200, and at most the limit plus one
    // chunk of it.
    for path in ["/stream-big", "/close-delimited-big"] {
        let reply = gw.get_signed("gw.test", &origin.url(path));
        assert_eq!(reply.status(), 200, "{path}");
        assert!(
            !reply.is_complete(),
            "{path}: looks complete: {}",
            reply.head()
        );
        assert!(
            reply.body().len() < MAX_BODY + 0x4000 + 1024,
            "{path}: {} bytes",
            reply.body().len()
        );
        gw.assert_serving(&origin, path);
    }

    // Refused by the gateway (Pingora's own 400s for invalid or conflicting Content-Length
    // come before any gateway code and are not counted).
    assert!(gw.metric("bad_request") >= 4);
    assert_eq!(gw.metric("request_too_large"), 2);
    assert_eq!(gw.metric("origin_too_large"), 3);
    assert_eq!(gw.metric("content_type_denied"), 1);
}

#[test]
fn serve_survives_origin_faults_with_bounded_time_and_memory() {
    let origin = Origin::start(serve);
    let gw = Gateway::start(CONFIG, &[("RUST_LOG", "off")]);
    gw.assert_serving(&origin, "start");
    let rss_before = gw.rss_kib();

    // Refused connection → 502.
    let closed = format!("http://127.0.0.1:{}/x.png", free_port());
    assert_eq!(gw.get_signed("gw.test", &closed).status(), 502);
    gw.assert_serving(&origin, "refused");

    // No answer → 504 within the 1 s timeout.
    let reply = gw.get_signed("gw.test", &origin.url("/no-answer"));
    assert_eq!(reply.status(), 504, "{}", reply.text());
    assert!(reply.took < Duration::from_millis(2500), "{:?}", reply.took);
    gw.assert_serving(&origin, "no answer");

    // Reset mid-body → the client sees an aborted transfer, not a short complete body.
    let reply = gw.get_signed("gw.test", &origin.url("/reset-mid-body"));
    assert_eq!(reply.status(), 200, "{}", reply.head());
    assert!(!reply.is_complete(), "{}", reply.head());
    gw.assert_serving(&origin, "reset mid-body");

    // Slow drip (a byte every 200 ms, each read well inside the timeout): the 1 s total
    // deadline cuts the transfer.
    let reply = gw.get_signed("gw.test", &origin.url("/drip"));
    assert_eq!(reply.status(), 200);
    assert!(!reply.is_complete(), "{}", reply.head());
    assert!(reply.took < Duration::from_millis(2500), "{:?}", reply.took);
    gw.assert_serving(&origin, "slow drip");

    // Dripped response headers never complete, and every byte restarts a per-read timer: the
    // total deadline (plus a short grace) still ends the request, with no response at all.
    let reply = gw.get_signed("gw.test", &origin.url("/drip-headers"));
    assert_eq!(reply.header_end(), None, "{}", reply.text());
    assert!(!reply.text().contains("x-slow"), "{}", reply.text());
    assert!(reply.took < Duration::from_millis(2500), "{:?}", reply.took);
    gw.assert_serving(&origin, "dripped headers");

    // Enormous response headers (over 1 MB) → 502.
    let reply = gw.get_signed("gw.test", &origin.url("/huge-headers"));
    assert_eq!(reply.status(), 502, "{}", reply.head());
    gw.assert_serving(&origin, "huge headers");

    // A 10 GB Content-Length claim → 502 at once.
    let reply = gw.get_signed("gw.test", &origin.url("/huge-claim"));
    assert_eq!(reply.status(), 502);
    assert!(reply.took < Duration::from_millis(900), "{:?}", reply.took);

    // TLS handshake failure: a plain-text server on an https origin → 502.
    let reply = gw.get_signed("gw.test", &format!("https://{}/ok", origin.addr));
    assert_eq!(reply.status(), 502, "{}", reply.text());
    gw.assert_serving(&origin, "tls failure");

    // A batch of faults and over-limit bodies, then memory must not have grown much.
    for _ in 0..5 {
        for path in [
            "/stream-big",
            "/close-delimited-big",
            "/huge-headers",
            "/huge-claim",
        ] {
            let _ = gw.get_signed("gw.test", &origin.url(path));
        }
    }
    gw.assert_serving(&origin, "batch");
    let rss_after = gw.rss_kib();
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 64,
        "gateway memory grew by {growth_mib} MiB ({rss_before} → {rss_after} KiB)"
    );

    assert!(gw.metric("origin_timeout") >= 3);
    assert!(gw.metric("origin_too_large") >= 11);
}
