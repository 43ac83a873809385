//! Checks that run after the table on each gateway and need what a table row cannot express:
//! a [`ScriptedOrigin`] misbehaving at the TCP level, every byte an aborted transfer delivered,
//! or how long a refusal took.

use std::net::SocketAddr;

use std::time::Duration;

use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::Outcome;

use crate::client::{send_until_close, RawRequest, Received};
use crate::harness::{Harness, MAX_BODY_BYTES};
use crate::runner::{CaseResult, CLIENT_TIMEOUT};
use crate::scripted::{OriginConn, ScriptedOrigin};

/// `upstream.timeout` of the test config ([`crate::harness::ORIGIN_TIMEOUT`]).
pub const ORIGIN_DEADLINE: Duration = Duration::from_secs(3);
/// How long past [`ORIGIN_DEADLINE`] a gateway may take to end a request it gave up on.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(1500);
/// Bytes past `max_body_bytes` an aborted transfer may still deliver: what was in flight when
/// the gateway noticed (two of the origin's 64 KiB writes, chunk framing included).
pub const OVER_LIMIT_SLACK: usize = 2 * 64 * 1024 + 1024;
/// Marker a scripted response header carries; it must never reach the client.
const SLOW_HEADER: &str = "x-slow-origin-header";

/// The scripted origin's behaviours, chosen by the request path.
fn misbehave(mut conn: OriginConn) {
    let Some(head) = conn.read_head() else {
        return;
    };
    match crate::scripted::request_path(&head) {
        "/close-delimited-big" => {
            // No Content-Length, not chunked: the body ends when the origin closes. The head
            // goes first and alone, so the gateway has committed to the 200 before the body.
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
            let chunk = [b'z'; 16 * 1024];
            // 1.5 MiB, past the 1 MiB limit, bounded so the thread ends.
            for _ in 0..96 {
                if !conn.send(&chunk) {
                    return;
                }
            }
        }
        "/drip-headers" => {
            conn.drip(format!("HTTP/1.1 200 OK\r\n{SLOW_HEADER}: ").as_bytes());
        }
        _ => {
            conn.send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    }
}

/// Whether a response arrived complete by its own framing: all of its `Content-Length`, or the
/// final chunk of a chunked body. A body delimited by the close is never complete by framing,
/// since a client cannot tell it from a cut one.
pub fn complete_by_framing(received: &Received) -> bool {
    let Some(end) = received.header_end() else {
        return false;
    };
    let head = String::from_utf8_lossy(&received.bytes[..end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_owned)
    };
    let body = received.body();
    if let Some(len) = header("content-length") {
        return len.parse::<usize>().ok() == Some(body.len());
    }
    if header("transfer-encoding").is_some_and(|te| te == "chunked") {
        return body.ends_with(b"\r\n0\r\n\r\n") || body == b"0\r\n\r\n";
    }
    false
}

fn result(name: &str, req: &RawRequest) -> CaseResult {
    CaseResult {
        name: name.to_owned(),
        sent: format!("{} {} (Host: {})", req.method, req.target, req.host),
        problems: Vec::new(),
        elapsed: Duration::ZERO,
    }
}

fn signed_get(harness: &Harness, origin_url: &str) -> RawRequest {
    let token = harness.tokens.get("a.new").map_or("", String::as_str);
    RawRequest::get(
        "a.test",
        &sign_url(token, origin_url, &[], &SignOptions::default()),
    )
}

/// Every check of this module against the gateway at `addr`, one result each. `judge` runs one
/// check and requires the gateway to count the given outcome for its one request.
pub fn raw_origin_checks(
    addr: SocketAddr,
    harness: &Harness,
    mut judge: impl FnMut(Outcome, &mut dyn FnMut() -> CaseResult) -> CaseResult,
) -> Vec<CaseResult> {
    let origin = match ScriptedOrigin::start(misbehave) {
        Ok(origin) => origin,
        Err(e) => {
            let mut r = result("scripted origin", &RawRequest::get("-", "-"));
            r.problems.push(format!("cannot start: {e}"));
            return vec![r];
        }
    };
    vec![
        judge(Outcome::OriginTooLarge, &mut || {
            close_delimited_body_over_the_limit_is_cut(addr, harness, &origin)
        }),
        judge(Outcome::OriginTooLarge, &mut || {
            streamed_body_over_the_limit_stops_near_it(addr, harness)
        }),
        judge(Outcome::OriginTimeout, &mut || {
            dripped_response_headers_end_at_the_deadline(addr, harness, &origin)
        }),
        judge(Outcome::OriginTooLarge, &mut || {
            huge_claim_is_refused_at_once(addr, harness)
        }),
    ]
}

fn close_delimited_body_over_the_limit_is_cut(
    addr: SocketAddr,
    harness: &Harness,
    origin: &ScriptedOrigin,
) -> CaseResult {
    let req = signed_get(harness, &origin.url("/close-delimited-big"));
    let mut r = result(
        "a body delimited by the origin's close is cut at max_body_bytes, never complete",
        &req,
    );
    match send_until_close(addr, &req, CLIENT_TIMEOUT) {
        Ok(got) => {
            r.elapsed = got.elapsed;
            check_cut_near_the_limit(&got, &mut r.problems);
        }
        Err(e) => r.problems.push(format!("request failed: {e}")),
    }
    if origin.heads("/close-delimited-big").len() != 1 {
        r.problems
            .push("the origin did not get the request once".to_owned());
    }
    r
}

fn streamed_body_over_the_limit_stops_near_it(addr: SocketAddr, harness: &Harness) -> CaseResult {
    let req = signed_get(
        harness,
        &format!("http://{}/bytes/2000000", harness.origin.http),
    );
    let mut r = result(
        "a chunked body over max_body_bytes delivers at most the limit and what was in flight",
        &req,
    );
    match send_until_close(addr, &req, CLIENT_TIMEOUT) {
        Ok(got) => {
            r.elapsed = got.elapsed;
            check_cut_near_the_limit(&got, &mut r.problems);
        }
        Err(e) => r.problems.push(format!("request failed: {e}")),
    }
    r
}

/// A 200 head, then a transfer that is not complete by its framing and stops near the limit.
fn check_cut_near_the_limit(got: &Received, problems: &mut Vec<String>) {
    let status_ok = got.bytes.starts_with(b"HTTP/1.1 200 ");
    if !status_ok {
        problems.push(format!(
            "expected a 200 head, got {:?}",
            got.text().chars().take(200).collect::<String>()
        ));
    }
    if complete_by_framing(got) {
        problems.push("the cut transfer looks complete to the client".to_owned());
    }
    let limit = usize::try_from(MAX_BODY_BYTES).unwrap_or(usize::MAX);
    if got.body().len() > limit + OVER_LIMIT_SLACK {
        problems.push(format!(
            "{} body bytes reached the client, more than max_body_bytes ({limit}) + {OVER_LIMIT_SLACK}",
            got.body().len()
        ));
    }
}

fn dripped_response_headers_end_at_the_deadline(
    addr: SocketAddr,
    harness: &Harness,
    origin: &ScriptedOrigin,
) -> CaseResult {
    let req = signed_get(harness, &origin.url("/drip-headers"));
    let mut r = result(
        "origin response headers dripping past upstream.timeout end the request at the deadline",
        &req,
    );
    match send_until_close(addr, &req, CLIENT_TIMEOUT) {
        Ok(got) => {
            r.elapsed = got.elapsed;
            if got.elapsed > ORIGIN_DEADLINE + DEADLINE_GRACE {
                r.problems.push(format!(
                    "took {:?}, upstream.timeout is {ORIGIN_DEADLINE:?}",
                    got.elapsed
                ));
            }
            if got.text().to_ascii_lowercase().contains(SLOW_HEADER) {
                r.problems.push(format!(
                    "the unfinished origin head reached the client: {}",
                    got.text()
                ));
            }
            if let Some(status) = got.response(false).ok().map(|resp| resp.status) {
                if status != 504 {
                    r.problems.push(format!(
                        "status {status} (expected 504 or no response at all)"
                    ));
                }
            }
        }
        Err(e) => r.problems.push(format!("request failed: {e}")),
    }
    r
}

fn huge_claim_is_refused_at_once(addr: SocketAddr, harness: &Harness) -> CaseResult {
    let req = signed_get(
        harness,
        &format!("http://{}/claim-huge", harness.origin.http),
    );
    let mut r = result(
        "a 10 GiB Content-Length claim is a 502 at once, not at upstream.timeout",
        &req,
    );
    match send_until_close(addr, &req, CLIENT_TIMEOUT) {
        Ok(got) => {
            r.elapsed = got.elapsed;
            match got.response(false) {
                Ok(resp) if resp.status == 502 => {}
                Ok(resp) => r
                    .problems
                    .push(format!("status {} (expected 502)", resp.status)),
                Err(e) => r.problems.push(format!("no whole response: {e}")),
            }
            if got.elapsed >= ORIGIN_DEADLINE / 3 {
                r.problems.push(format!(
                    "took {:?}: the declared length alone must refuse it",
                    got.elapsed
                ));
            }
        }
        Err(e) => r.problems.push(format!("request failed: {e}")),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(bytes: &[u8]) -> Received {
        Received {
            bytes: bytes.to_vec(),
            elapsed: Duration::ZERO,
            reset: false,
        }
    }

    #[test]
    fn framing_tells_complete_from_cut_transfers() {
        assert!(complete_by_framing(&received(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )));
        assert!(!complete_by_framing(&received(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"
        )));
        assert!(complete_by_framing(&received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )));
        assert!(!complete_by_framing(&received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
        )));
        assert!(!complete_by_framing(&received(
            b"HTTP/1.1 200 OK\r\n\r\nzzz"
        )));
        assert!(!complete_by_framing(&received(b"HTTP/1.1 200 OK\r\nx-")));
    }

    #[test]
    fn the_deadline_is_the_test_configs_timeout() {
        assert_eq!(
            crate::harness::ORIGIN_TIMEOUT,
            format!("{}s", ORIGIN_DEADLINE.as_secs())
        );
    }
}
