//! Runs the case table through a gateway and checks what the client got and what the origin saw.

use ixproxy_core::access_log::{is_valid_request_id, REQUEST_ID_HEADER};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ixproxy_core::auth::{self, verify_origin_signature};
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::{Outcome, Secret};

use crate::cases::{
    default_cases_path, default_vectors_path, expand, load_cases, load_vectors, tamper, validate,
    vector_cases, Case, OriginExpect,
};
use crate::client::{send_keep_alive, send_then_follow, FollowUp, RawRequest, RawResponse};
use crate::gateway::Gateway;
use crate::h2::Protocol;
use crate::harness::{Harness, MAX_INFLIGHT_PER_SOURCE};
use crate::metrics::{await_deltas, scrape, Deltas, OutcomeCounts};
use crate::origin::{pattern, Recorded};
use crate::HarnessError;

/// How long one request may take end to end (longer than the origin's `/slow` delay, so a
/// gateway that does not time out shows up as a wrong status, not a client timeout).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Cases put this in every client header value that must not reach the origin; no origin
/// request may contain it anywhere.
pub const CLIENT_MARKER: &str = "client-marker";
/// Clock skew allowed when verifying per-request origin signatures.
pub const MAX_SKEW: u64 = 300;

/// Origin-auth headers the gateway itself sets; any other `x-imgix-*` header at the origin
/// leaked from the client.
const GATEWAY_IMGIX_HEADERS: [&str; 5] = [
    auth::ORIGIN_SECRET,
    auth::SIGNATURE,
    auth::SIGNATURE_HOST,
    auth::SIGNATURE_REQUEST_ID,
    auth::SIGNATURE_TIMESTAMP,
];

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case name.
    pub name: String,
    /// The request line sent, for reports.
    pub sent: String,
    /// Every expectation that did not hold; empty when the case passed.
    pub problems: Vec<String>,
    /// How long the exchange with the gateway took.
    pub elapsed: Duration,
}

impl CaseResult {
    /// A result called `name` with nothing sent and no problem yet.
    pub fn named(name: impl Into<String>) -> CaseResult {
        CaseResult {
            name: name.into(),
            sent: String::new(),
            problems: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// The outcome of a whole run against one gateway.
#[derive(Debug, Clone)]
pub struct Report {
    /// Gateway runtime name.
    pub gateway: &'static str,
    /// One result per case, in table order.
    pub results: Vec<CaseResult>,
    /// The end of the gateway's log when the run finished.
    pub log_tail: String,
    /// How long the gateway took to become ready (zero when not measured).
    pub start_time: Duration,
}

impl Report {
    /// The failed cases.
    pub fn failures(&self) -> Vec<&CaseResult> {
        self.results
            .iter()
            .filter(|r| !r.problems.is_empty())
            .collect()
    }

    /// One line per case, then the failures with their reasons.
    pub fn summary(&self) -> String {
        let failures = self.failures();
        let mut out = String::new();
        for r in &self.results {
            let mark = if r.problems.is_empty() {
                "ok  "
            } else {
                "FAIL"
            };
            out.push_str(&format!(
                "{mark} {:>6} ms  {}\n",
                r.elapsed.as_millis(),
                r.name
            ));
        }
        out.push_str(&format!(
            "\n{}: {} of {} cases passed (ready in {} ms)\n",
            self.gateway,
            self.results.len() - failures.len(),
            self.results.len(),
            self.start_time.as_millis()
        ));
        for r in &failures {
            out.push_str(&format!("\nFAIL {}\n  sent: {}\n", r.name, r.sent));
            for p in &r.problems {
                out.push_str(&format!("  - {p}\n"));
            }
        }
        if !failures.is_empty() {
            out.push_str(&format!(
                "\n{} log (tail):\n{}\n",
                self.gateway, self.log_tail
            ));
        }
        out
    }
}

/// Loads the table and the vectors, starts the recording origin and gateway `G`, runs every
/// case and stops everything.
///
/// # Errors
/// Harness failures only (table, origin, gateway start-up); failing cases are in the report.
pub fn run_suite<G: Gateway>() -> Result<Report, HarnessError> {
    run_suite_over::<G>(Protocol::Http1)
}

/// [`run_suite`] with the client speaking `protocol`. Over HTTP/2 the gateway is configured
/// with `h2c: true` (the Envoy bootstrap's `codec_type: AUTO` needs nothing), every table case
/// whose [`h2_skip_reason`] is `None` runs with the same expectations, outcome counts included,
/// and so do the two checks of concurrent requests; the checks that need HTTP/1 framing (one
/// keep-alive connection, a hang-up mid-request, the raw-origin byte checks) run over
/// HTTP/1.1 only.
///
/// # Errors
/// As [`run_suite`].
pub fn run_suite_over<G: Gateway>(protocol: Protocol) -> Result<Report, HarnessError> {
    let vectors = load_vectors(&default_vectors_path())?;
    let mut cases = load_cases(&default_cases_path())?;
    cases.extend(vector_cases(&vectors, now_unix()));
    validate(&cases)?;
    let only = case_filter();
    if let Some(only) = &only {
        cases.retain(|case| case.name.contains(only.as_str()));
        if cases.is_empty() {
            return Err(HarnessError::Http(format!(
                "{CASE_FILTER_VAR}={only:?} names no conformance case"
            )));
        }
        println!(
            "{CASE_FILTER_VAR}={only:?}: {} table case(s), no other check",
            cases.len()
        );
    }
    cases.retain(|case| case.runtimes.is_empty() || case.runtimes.iter().any(|r| r == G::NAME));
    if protocol == Protocol::H2c {
        cases.retain(|case| match h2_skip_reason(case) {
            Some(why) => {
                println!("not over HTTP/2: {} ({why})", case.name);
                false
            }
            None => true,
        });
    }
    let harness = Harness::with_h2c(&vectors, protocol == Protocol::H2c)?;
    let started = Instant::now();
    let gateway = G::start(&harness.config_path, &harness.env, harness.dir.path())?;
    let start_time = started.elapsed();
    let mut ledger = OutcomeLedger::new(&gateway);
    let mut report = run_cases(&gateway, &harness, &cases, &mut ledger, protocol);
    if only.is_some() {
        ledger.finish(&mut report.results);
        report.start_time = start_time;
        return Ok(report);
    }
    let outcomes = hanging_outcomes();
    let hanging = ledger.check(&mut report.results, &outcomes, || {
        serves_while_origins_hang(gateway.addr(), &harness, protocol)
    });
    report.results.push(hanging);
    let mut outcomes = vec![Outcome::OriginTimeout; MAX_INFLIGHT_PER_SOURCE as usize];
    outcomes.extend([Outcome::Overloaded, Outcome::Forwarded]);
    let overloaded = ledger.check(&mut report.results, &outcomes, || {
        over_max_inflight_per_source_is_a_503(gateway.addr(), &harness, protocol)
    });
    report.results.push(overloaded);
    if protocol != Protocol::Http1 {
        ledger.finish(&mut report.results);
        report.start_time = start_time;
        return Ok(report);
    }
    let hung_up = ledger.check(&mut report.results, &[Outcome::ClientClosed], || {
        a_client_hanging_up_is_its_own_outcome(gateway.addr(), &harness)
    });
    report.results.push(hung_up);
    match keep_alive_sequence() {
        Ok(sequence) => {
            let outcomes = sequence_outcomes(&sequence);
            let keep_alive = ledger.check(&mut report.results, &outcomes, || {
                keep_alive_requests_are_independent(gateway.addr(), &harness, &sequence)
            });
            report.results.push(keep_alive);
        }
        Err(e) => report.results.push(CaseResult {
            name: KEEP_ALIVE_NAME.to_owned(),
            sent: String::new(),
            problems: vec![e],
            elapsed: Duration::ZERO,
        }),
    }
    let raw = crate::raw_origin::raw_origin_checks(gateway.addr(), &harness, |outcome, check| {
        ledger.check(&mut report.results, &[outcome], check)
    });
    report.results.extend(raw);
    ledger.finish(&mut report.results);
    report.start_time = start_time;
    Ok(report)
}

/// The environment variable that narrows a conformance run to the table cases whose name
/// contains its value (`IXPROXY_CASE="redirect Location" cargo test -p ixproxy-conformance
/// --test pingora`): one case against one runtime in seconds. The checks that are not table
/// rows (hanging origins, limits, keep-alive, raw origins) are skipped then.
pub const CASE_FILTER_VAR: &str = "IXPROXY_CASE";

/// The value of [`CASE_FILTER_VAR`], when set and not empty.
fn case_filter() -> Option<String> {
    std::env::var(CASE_FILTER_VAR)
        .ok()
        .filter(|v| !v.is_empty())
}

/// Runs the whole suite against gateway `G` (called `name` in messages) and panics with every
/// failing case and why; the body of each runtime's integration test.
///
/// # Panics
/// When the harness cannot start or any case fails.
pub fn assert_suite_passes<G: Gateway>(name: &str) {
    assert_suite_passes_over::<G>(name, Protocol::Http1);
}

/// [`assert_suite_passes`] over `protocol` (see [`run_suite_over`]).
///
/// # Panics
/// When the harness cannot start or any case fails.
pub fn assert_suite_passes_over<G: Gateway>(name: &str, protocol: Protocol) {
    let name = format!("{name} over {}", protocol.as_str());
    let report = match run_suite_over::<G>(protocol) {
        Ok(report) => report,
        Err(e) => panic!("{name} conformance harness failed: {e}"),
    };
    println!("{}", report.summary());
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed on {name}:\n{}",
        failures.len(),
        report.results.len(),
        failures
            .iter()
            .map(|f| format!("  {}: {}", f.name, f.problems.join("; ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs `cases` one after the other through a started gateway, each checked by `ledger` for
/// the outcome it must count (call [`OutcomeLedger::finish`] after the last check).
pub fn run_cases<G: Gateway>(
    gateway: &G,
    harness: &Harness,
    cases: &[Case],
    ledger: &mut OutcomeLedger<'_, G>,
    protocol: Protocol,
) -> Report {
    let mut request_ids = HashSet::new();
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        let outcomes: Vec<Outcome> = match case.expect.counted() {
            Ok(counted) => counted
                .outcome()
                .into_iter()
                .chain(follows_up(case, protocol).then_some(FOLLOW_UP_OUTCOME))
                .collect(),
            Err(e) => {
                results.push(CaseResult {
                    name: case.name.clone(),
                    sent: String::new(),
                    problems: vec![e],
                    elapsed: Duration::ZERO,
                });
                continue;
            }
        };
        let result = ledger.check(&mut results, &outcomes, || {
            run_case(gateway.addr(), harness, case, &mut request_ids, protocol)
        });
        results.push(result);
    }
    Report {
        gateway: G::NAME,
        results,
        log_tail: gateway.log_tail(),
        start_time: Duration::ZERO,
    }
}

/// Checks the outcomes each check counts on the gateway's `ixproxy_requests_total{outcome}`:
/// the counts before it, the exact deltas after it (polled up to
/// [`crate::metrics::COUNT_DEADLINE`]), and whether anything more was counted for it after
/// it was judged (seen in the counts the next check starts from, or at [`Self::finish`]).
pub struct OutcomeLedger<'g, G: Gateway> {
    gateway: &'g G,
    /// Counts when the last check was judged.
    last: Option<OutcomeCounts>,
}

impl<'g, G: Gateway> OutcomeLedger<'g, G> {
    /// A ledger for `gateway`.
    pub fn new(gateway: &'g G) -> Self {
        OutcomeLedger {
            gateway,
            last: None,
        }
    }

    /// The current counts; a change since the previous check was judged is added to the
    /// problems of `done`'s last result (the check that counted late).
    fn current(&mut self, done: &mut [CaseResult]) -> Result<OutcomeCounts, String> {
        let (admin, path) = self.gateway.metrics_endpoint();
        let now = scrape(admin, path).map_err(|e| format!("{} metrics: {e}", G::NAME))?;
        if let (Some(last), Some(previous)) = (self.last.take(), done.last_mut()) {
            let late = now.since(&last);
            if late != Deltas::default() {
                previous.problems.push(format!(
                    "{} counted {late} in {} after this check was judged",
                    G::NAME,
                    crate::metrics::OUTCOME_METRIC
                ));
            }
        }
        Ok(now)
    }

    /// Runs `check` and requires the gateway to count exactly `outcomes` for it (one per client
    /// request, repeats allowed) and nothing else; `done` are the results so far.
    pub fn check(
        &mut self,
        done: &mut [CaseResult],
        outcomes: &[Outcome],
        check: impl FnOnce() -> CaseResult,
    ) -> CaseResult {
        let before = self.current(done);
        let mut result = check();
        let before = match before {
            Ok(before) => before,
            Err(e) => {
                result.problems.push(e);
                return result;
            }
        };
        let (admin, path) = self.gateway.metrics_endpoint();
        let expected = Deltas::of(outcomes.iter().copied());
        match await_deltas(admin, path, G::NAME, &before, &expected) {
            Ok(after) => self.last = Some(after),
            Err(mismatch) => {
                result.problems.push(mismatch.problem);
                self.last = mismatch.last;
            }
        }
        result
    }

    /// Reports anything counted for the last check of `done` after it was judged.
    pub fn finish(&mut self, done: &mut [CaseResult]) {
        if let Err(e) = self.current(done) {
            if let Some(last) = done.last_mut() {
                last.problems.push(e);
            }
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The request a case describes, and the `expires` it signed (if any).
fn build_request(
    case: &Case,
    harness: &Harness,
    now: i64,
) -> Result<(RawRequest, Option<i64>), String> {
    let values = harness.placeholders();
    let x = |s: &str| expand(s, &values, now);
    let req = &case.request;
    let (target, expires) = match (&req.sign, &req.target) {
        (Some(sign), None) => {
            let token = harness
                .tokens
                .get(&sign.token)
                .ok_or_else(|| format!("unknown token {}", sign.token))?;
            let params: Vec<(String, String)> =
                sign.params.iter().map(|(k, v)| (x(k), x(v))).collect();
            let expires = params
                .iter()
                .find(|(k, _)| k == "expires")
                .and_then(|(_, v)| v.parse().ok());
            let (path, options) = match (&sign.url, &sign.path) {
                (Some(url), None) => (x(url), SignOptions::default()),
                (None, Some(path)) => (
                    x(path),
                    SignOptions {
                        disable_path_encoding: true,
                    },
                ),
                _ => return Err("sign needs exactly one of url and path".to_owned()),
            };
            let mut target = sign_url(token, &path, &params, &options);
            if let Some(how) = sign.tamper {
                target = tamper(&target, how);
            }
            (target, expires)
        }
        (None, Some(target)) => (x(target), None),
        _ => return Err("request needs exactly one of sign and target".to_owned()),
    };
    let mut headers: Vec<(String, String)> =
        req.headers.iter().map(|(k, v)| (x(k), x(v))).collect();
    if let Some(filler) = req.filler {
        let value = format!(
            "{CLIENT_MARKER}{}",
            "f".repeat(filler.size.saturating_sub(CLIENT_MARKER.len()))
        );
        headers.extend((0..filler.count).map(|i| (format!("X-Filler-{i}"), value.clone())));
    }
    Ok((
        RawRequest {
            method: req.method.clone(),
            target,
            host: x(&req.host),
            headers,
            body: req.body.as_deref().map(x).unwrap_or_default().into_bytes(),
        },
        expires,
    ))
}

fn run_case(
    addr: SocketAddr,
    harness: &Harness,
    case: &Case,
    request_ids: &mut HashSet<String>,
    protocol: Protocol,
) -> CaseResult {
    let now = now_unix();
    let mut result = CaseResult::named(case.name.clone());
    let (request, expires) = match build_request(case, harness, now) {
        Ok(built) => built,
        Err(e) => {
            result.problems.push(e);
            return result;
        }
    };
    result.sent = format!(
        "{} {} (Host: {})",
        request.method, request.target, request.host
    );
    harness.origin.clear();
    let sent_at = now_unix();
    let started = Instant::now();
    let sent = if follows_up(case, protocol) {
        send_then_follow(addr, &request, &follow_up_request(), CLIENT_TIMEOUT).map(
            |(response, follow)| {
                check_follow_up(&response, follow, &mut result.problems);
                response
            },
        )
    } else {
        protocol.send(addr, &request, CLIENT_TIMEOUT)
    };
    result.elapsed = started.elapsed();
    let values = harness.placeholders();
    let x = |s: &str| expand(s, &values, now);
    let problems = &mut result.problems;
    match (sent, case.expect.aborted) {
        (Ok(response), false) => check_response(case, &response, expires, sent_at, &x, problems),
        (Ok(response), true) => problems.push(format!(
            "the transfer must be aborted, but a complete response arrived: status {}, {} body bytes",
            response.status,
            response.body.len()
        )),
        (Err(HarnessError::Incomplete(_)), true) => {}
        (Err(e), _) => problems.push(format!("request failed: {e}")),
    }

    let recorded = harness.origin.requests();
    for r in &recorded {
        check_invariants(r, problems);
    }
    let wanted = case.expect.origin_requests();
    if wanted.is_empty() && !recorded.is_empty() {
        problems.push(format!(
            "the origin must not be contacted, but got: {}",
            describe(&recorded)
        ));
    } else if recorded.len() != wanted.len() {
        problems.push(format!(
            "the origins received {} requests, expected {}: {}",
            recorded.len(),
            wanted.len(),
            describe(&recorded)
        ));
    } else {
        for (got, want) in recorded.iter().zip(wanted) {
            check_origin(got, want, &request, harness, &x, request_ids, problems);
        }
    }
    result
}

/// What the request sent after each HTTP/1 case counts ([`follow_up_request`]).
const FOLLOW_UP_OUTCOME: Outcome = Outcome::BadSignature;

/// Whether an HTTP/1 case is followed by a second request the way a pooling client sends it
/// (SPEC §6: a response after which the gateway closes says `Connection: close`; a connection
/// kept open must serve the next request). Not after an aborted transfer (the client knows the
/// connection is dead) nor when the case sets `Connection` itself.
fn follows_up(case: &Case, protocol: Protocol) -> bool {
    protocol == Protocol::Http1
        && !case.expect.aborted
        && !case
            .request
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
}

/// The request a pooling client sends next: a bad signature for source a, answered by the
/// gateway itself (403) without contacting any origin, so it leaves the case's origin
/// recordings alone.
fn follow_up_request() -> RawRequest {
    RawRequest::get(
        "a.test",
        "/https%3A%2F%2Fexample.com%2Ffollow-up.jpg?s=00000000000000000000000000000000",
    )
}

/// Problems with what happened to the connection after `first`.
fn check_follow_up(first: &RawResponse, follow: FollowUp, problems: &mut Vec<String>) {
    let next = match follow {
        FollowUp::Kept(next) | FollowUp::Closed(next) => next,
        FollowUp::Broken(why) => {
            problems.push(format!(
                "the {} response did not say Connection: close, but the next request on the \
                 connection failed: {why}",
                first.status
            ));
            return;
        }
    };
    if next.status != 403 {
        problems.push(format!(
            "the request after it got {} instead of 403 (bad signature)",
            next.status
        ));
    }
}

/// HTTP/1 connection-specific headers. HTTP/2 forbids them (RFC 9113 §8.2.2) and the client
/// library drops them before sending, so over HTTP/2 a case that sends one would test another
/// request than its name says (the smuggling cases built on `Transfer-Encoding`).
const CONNECTION_SPECIFIC_HEADERS: [&str; 6] = [
    "connection",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Why `case` does not run over HTTP/2 (`None`: it runs, with the same expectations and the
/// same outcome count). A filter by what the request holds, not by case name:
///
/// - an HTTP/1 connection-specific header ([`CONNECTION_SPECIFIC_HEADERS`]);
/// - a `Content-Length` that is not exactly one value equal to the body's length: malformed in
///   HTTP/2 (RFC 9113 §8.1.1), where DATA frames carry the length, and refused by the client
///   library before anything is sent (these cases test the HTTP/1 codec's framing checks).
///
/// Everything else runs over HTTP/2 too, bodies on GET, 100+ headers, 32 KiB of headers and
/// 9 KiB targets included: both runtimes give the same 400 / 431 / 414 and outcome.
pub fn h2_skip_reason(case: &Case) -> Option<&'static str> {
    let req = &case.request;
    let is = |name: &str, wanted: &str| name.eq_ignore_ascii_case(wanted);
    if req
        .headers
        .iter()
        .any(|(name, _)| CONNECTION_SPECIFIC_HEADERS.iter().any(|h| is(name, h)))
    {
        return Some("an HTTP/1 connection-specific header, which HTTP/2 forbids");
    }
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(name, _)| is(name, "content-length"))
        .map(|(_, value)| value.trim())
        .collect();
    let body_len = req.body.as_ref().map_or(0, String::len);
    match lengths.as_slice() {
        [] => None,
        [one] if one.parse::<usize>().ok() == Some(body_len) => None,
        _ => Some("a Content-Length that disagrees with the body: malformed HTTP/2"),
    }
}

/// Requests sent on one keep-alive connection by [`keep_alive_requests_are_independent`]:
/// different sources, then a bad signature last (a gateway may close after an error).
const KEEP_ALIVE_SEQUENCE: &str = r#"
- name: keep-alive 1 - source a
  request: {host: a.test, sign: {token: a.new, url: "{http}/asset/ka-1.jpg"}}
  expect:
    outcome: forwarded
    status: 200
    body: asset /asset/ka-1.jpg
    origin: {server: http, path: /asset/ka-1.jpg, host: "{http_authority}", auth: a}
- name: keep-alive 2 - source b on the same connection
  request: {host: b.test, sign: {token: b.main, url: "{http}/asset/ka-2.jpg"}}
  expect:
    outcome: forwarded
    status: 200
    body: asset /asset/ka-2.jpg
    origin: {server: http, path: /asset/ka-2.jpg, host: "{http_authority}", auth: none}
- name: keep-alive 3 - source a again, HEAD
  request: {method: HEAD, host: a.test, sign: {token: a.old, url: "{http}/asset/ka-3.jpg"}}
  expect:
    outcome: forwarded
    status: 200
    origin: {server: http, path: /asset/ka-3.jpg, host: "{http_authority}", auth: a}
- name: keep-alive 4 - a bad signature is still checked
  request: {host: a.test, sign: {token: a.new, url: "{http}/asset/ka-4.jpg", tamper: wrong_s}}
  expect:
    outcome: bad_signature
    status: 403
"#;

/// Name of the [`keep_alive_requests_are_independent`] check.
const KEEP_ALIVE_NAME: &str = "requests on one keep-alive connection are decided independently";

/// [`KEEP_ALIVE_SEQUENCE`] as cases.
fn keep_alive_sequence() -> Result<Vec<Case>, String> {
    let cases: Vec<Case> =
        serde_yaml::from_str(KEEP_ALIVE_SEQUENCE).map_err(|e| format!("sequence: {e}"))?;
    validate(&cases).map_err(|e| format!("sequence: {e}"))?;
    Ok(cases)
}

/// The outcomes a sequence of valid cases counts, one per request.
fn sequence_outcomes(cases: &[Case]) -> Vec<Outcome> {
    cases
        .iter()
        .filter_map(|c| c.expect.counted().ok().and_then(|c| c.outcome()))
        .collect()
}

/// Not a table row: several requests on one keep-alive connection, for different sources,
/// must each get their own decision and their own source's origin auth (no state carried
/// over from an earlier request on the connection).
fn keep_alive_requests_are_independent(
    addr: SocketAddr,
    harness: &Harness,
    cases: &[Case],
) -> CaseResult {
    let mut result = CaseResult::named(KEEP_ALIVE_NAME.to_owned());
    let now = now_unix();
    let mut requests = Vec::new();
    for case in cases {
        match build_request(case, harness, now) {
            Ok((req, _)) => requests.push(req),
            Err(e) => result.problems.push(format!("{}: {e}", case.name)),
        }
    }
    result.sent = requests
        .iter()
        .map(|r| format!("{} {} (Host: {})", r.method, r.target, r.host))
        .collect::<Vec<_>>()
        .join(" then ");
    harness.origin.clear();
    let started = Instant::now();
    let responses = send_keep_alive(addr, &requests, CLIENT_TIMEOUT);
    result.elapsed = started.elapsed();
    let responses = match responses {
        Ok(responses) => responses,
        Err(e) => {
            result
                .problems
                .push(format!("keep-alive exchange failed: {e}"));
            return result;
        }
    };
    let values = harness.placeholders();
    let x = |s: &str| expand(s, &values, now);
    let recorded = harness.origin.requests();
    let mut request_ids = HashSet::new();
    for ((case, request), response) in cases.iter().zip(&requests).zip(&responses) {
        let mut problems = Vec::new();
        check_response(case, response, None, now, &x, &mut problems);
        if let Some(want) = &case.expect.origin {
            let path = x(&want.path);
            match recorded.iter().find(|r| r.target == path) {
                Some(got) => {
                    check_origin(
                        got,
                        want,
                        request,
                        harness,
                        &x,
                        &mut request_ids,
                        &mut problems,
                    );
                }
                None => problems.push(format!("the origin never received {path}")),
            }
        }
        result
            .problems
            .extend(problems.into_iter().map(|p| format!("{}: {p}", case.name)));
    }
    if recorded.len() != 3 {
        result.problems.push(format!(
            "the origin received {} requests, expected 3: {}",
            recorded.len(),
            describe(&recorded)
        ));
    }
    for r in &recorded {
        check_invariants(r, &mut result.problems);
    }
    result
}

/// How many origin requests hang while [`serves_while_origins_hang`] checks the gateway.
const HANGING: usize = 8;

/// What [`serves_while_origins_hang`] counts: each hanging request times out, the prompt one
/// is forwarded.
fn hanging_outcomes() -> Vec<Outcome> {
    let mut outcomes = vec![Outcome::OriginTimeout; HANGING];
    outcomes.push(Outcome::Forwarded);
    outcomes
}

/// Sends `n` signed requests for `/slow/<name>-<i>.jpg` from `host` with `token` on their own
/// threads and waits (at most 5 s) until all reached the origin, which is cleared first; a
/// shortfall is a problem of `result`. Returns the threads, each ending with its response.
fn hold_slow_requests(
    addr: SocketAddr,
    harness: &Harness,
    (host, token): (&str, &str),
    name: &str,
    n: usize,
    result: &mut CaseResult,
    protocol: Protocol,
) -> Vec<std::thread::JoinHandle<Result<RawResponse, HarnessError>>> {
    let http = format!("http://{}", harness.origin.http);
    harness.origin.clear();
    let held: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("{http}/slow/{name}-{i}.jpg");
            let req = RawRequest::get(host, &sign_url(token, &url, &[], &SignOptions::default()));
            std::thread::spawn(move || protocol.send(addr, &req, CLIENT_TIMEOUT))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.origin.requests().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let arrived = harness.origin.requests().len();
    if arrived < n {
        result.problems.push(format!(
            "only {arrived} of {n} slow requests reached the origin"
        ));
    }
    held
}

/// Joins the threads of [`hold_slow_requests`]: each must have ended in a 504.
fn expect_gateway_timeouts(
    held: Vec<std::thread::JoinHandle<Result<RawResponse, HarnessError>>>,
    what: &str,
    result: &mut CaseResult,
) {
    for (i, handle) in held.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(r)) if r.status == 504 => {}
            Ok(Ok(r)) => result.problems.push(format!(
                "{what} request {i}: status {} (expected 504)",
                r.status
            )),
            Ok(Err(e)) => result.problems.push(format!("{what} request {i}: {e}")),
            Err(_) => result
                .problems
                .push(format!("{what} request {i}: thread panicked")),
        }
    }
}

/// Not a table row: with [`HANGING`] requests stuck on a slow origin, another request must
/// still be answered promptly, and each stuck one must end in a 504.
fn serves_while_origins_hang(
    addr: SocketAddr,
    harness: &Harness,
    protocol: Protocol,
) -> CaseResult {
    let mut result = CaseResult::named(format!(
        "serves other requests while {HANGING} origin requests hang"
    ));
    let Some(token) = harness.tokens.get("a.new") else {
        result.problems.push("no token a.new".to_owned());
        return result;
    };
    let http = format!("http://{}", harness.origin.http);
    let signed = |path: &str| {
        sign_url(
            token,
            &format!("{http}{path}"),
            &[],
            &SignOptions::default(),
        )
    };
    let hanging = hold_slow_requests(
        addr,
        harness,
        ("a.test", token),
        "hang",
        HANGING,
        &mut result,
        protocol,
    );
    let req = RawRequest::get("a.test", &signed("/asset/while-hanging.jpg"));
    result.sent = format!("GET {} (Host: a.test)", req.target);
    let started = Instant::now();
    match protocol.send(addr, &req, CLIENT_TIMEOUT) {
        Ok(r) if r.status == 200 => {}
        Ok(r) => result
            .problems
            .push(format!("status {} (expected 200)", r.status)),
        Err(e) => result.problems.push(format!("request failed: {e}")),
    }
    result.elapsed = started.elapsed();
    if result.elapsed > Duration::from_secs(1) {
        result
            .problems
            .push(format!("took {:?} while origins hang", result.elapsed));
    }
    expect_gateway_timeouts(hanging, "hanging", &mut result);
    result
}

/// Not a table row: with [`MAX_INFLIGHT_PER_SOURCE`] requests of source `b` waiting on a slow
/// origin, one more request of `b` is refused with 503 and `Retry-After: 1` before any origin
/// is contacted, while source `a` (its own limit) is still served; each waiting request then
/// ends in a 504.
fn over_max_inflight_per_source_is_a_503(
    addr: SocketAddr,
    harness: &Harness,
    protocol: Protocol,
) -> CaseResult {
    let mut result = CaseResult::named("over max_inflight_per_source is a 503".to_owned());
    let (Some(b), Some(a)) = (harness.tokens.get("b.main"), harness.tokens.get("a.new")) else {
        result.problems.push("no token b.main or a.new".to_owned());
        return result;
    };
    let http = format!("http://{}", harness.origin.http);
    let signed = |token: &str, path: &str| {
        sign_url(
            token,
            &format!("{http}{path}"),
            &[],
            &SignOptions::default(),
        )
    };
    let limit = MAX_INFLIGHT_PER_SOURCE as usize;
    let waiting = hold_slow_requests(
        addr,
        harness,
        ("b.test", b),
        "inflight",
        limit,
        &mut result,
        protocol,
    );
    let started = Instant::now();
    let over = RawRequest::get("b.test", &signed(b, "/asset/one-too-many.jpg"));
    result.sent = format!("GET {} (Host: b.test)", over.target);
    match protocol.send(addr, &over, CLIENT_TIMEOUT) {
        Ok(r) => {
            if r.status != 503 {
                result
                    .problems
                    .push(format!("status {} (expected 503)", r.status));
            }
            if r.header("retry-after") != Some("1") {
                result.problems.push(format!(
                    "retry-after {:?} (expected \"1\")",
                    r.header("retry-after")
                ));
            }
        }
        Err(e) => result.problems.push(format!("request failed: {e}")),
    }
    if harness
        .origin
        .requests()
        .iter()
        .any(|r| r.target.contains("one-too-many"))
    {
        result
            .problems
            .push("the refused request reached the origin".to_owned());
    }
    let other = RawRequest::get("a.test", &signed(a, "/asset/other-source.jpg"));
    match protocol.send(addr, &other, CLIENT_TIMEOUT) {
        Ok(r) if r.status == 200 => {}
        Ok(r) => result.problems.push(format!(
            "source a while b is full: status {} (expected 200)",
            r.status
        )),
        Err(e) => result
            .problems
            .push(format!("source a while b is full: {e}")),
    }
    result.elapsed = started.elapsed();
    expect_gateway_timeouts(waiting, "waiting", &mut result);
    result
}

/// Not a table row: a client that closes its connection while the origin is still working on
/// its answer counts `client_closed` (checked by the caller), never an origin failure.
fn a_client_hanging_up_is_its_own_outcome(addr: SocketAddr, harness: &Harness) -> CaseResult {
    use std::io::Write;
    let mut result =
        CaseResult::named("a client hanging up before its answer is client_closed".to_owned());
    let Some(token) = harness.tokens.get("a.new") else {
        result.problems.push("no token a.new".to_owned());
        return result;
    };
    let http = format!("http://{}", harness.origin.http);
    let target = sign_url(
        token,
        &format!("{http}/slow/hang-up.jpg"),
        &[],
        &SignOptions::default(),
    );
    let req = RawRequest::get("a.test", &target);
    result.sent = format!("GET {} (Host: a.test), then close", req.target);
    let started = Instant::now();
    harness.origin.clear();
    let sent = std::net::TcpStream::connect(addr).and_then(|mut stream| {
        stream.write_all(&req.to_bytes_with(false))?;
        Ok(stream)
    });
    let stream = match sent {
        Ok(stream) => stream,
        Err(e) => {
            result.problems.push(format!("cannot send: {e}"));
            return result;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.origin.requests().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if harness.origin.requests().is_empty() {
        result
            .problems
            .push("the request never reached the origin".to_owned());
    }
    drop(stream);
    result.elapsed = started.elapsed();
    result
}

fn describe(recorded: &[Recorded]) -> String {
    recorded
        .iter()
        .map(|r| format!("{} {} on {:?}", r.method, r.target, r.server))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every answer of a request the gateway saw (not one its HTTP codec refused first:
/// [`crate::cases::NO_OUTCOME`]) carries one `X-Request-ID` under the core's rule: the
/// client's when it sent exactly one valid id, else one the gateway made.
fn check_request_id(
    case: &Case,
    response: &RawResponse,
    x: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) {
    if case.expect.outcome.as_deref() == Some(crate::cases::NO_OUTCOME) {
        return;
    }
    let sent: Vec<String> = case
        .request
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(REQUEST_ID_HEADER))
        .map(|(_, value)| x(value))
        .collect();
    let got = response.header_values(REQUEST_ID_HEADER);
    let [id] = got.as_slice() else {
        problems.push(format!("X-Request-ID: {got:?} (expected exactly one)"));
        return;
    };
    if !is_valid_request_id(id.as_bytes()) {
        problems.push(format!("X-Request-ID {id:?} breaks the request id rule"));
    }
    if let [client] = sent.as_slice() {
        let kept = is_valid_request_id(client.as_bytes());
        if kept != (id == client) {
            problems.push(format!(
                "X-Request-ID {id:?} for a client id {client:?} (expected it {})",
                if kept { "kept" } else { "replaced" }
            ));
        }
    }
}

fn check_response(
    case: &Case,
    response: &RawResponse,
    expires: Option<i64>,
    sent_at: i64,
    x: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) {
    let expect = &case.expect;
    if Some(response.status) != expect.status {
        problems.push(format!(
            "status {} (expected {}), body {:?}",
            response.status,
            expect
                .status
                .map_or_else(|| "none".to_owned(), |s| s.to_string()),
            truncate(&response.body_text())
        ));
    }
    for (name, value) in &expect.headers {
        let want = x(value);
        let got = response.header_values(name);
        if got != [want.as_str()] {
            problems.push(format!(
                "response header {name}: {got:?} (expected [{want:?}])"
            ));
        }
    }
    for name in &expect.absent_headers {
        let got = response.header_values(name);
        if !got.is_empty() {
            problems.push(format!(
                "response header {name} must be absent, got {got:?}"
            ));
        }
    }
    let cookies = response.header_values("set-cookie");
    if !cookies.is_empty() && !expect.absent_headers.iter().any(|h| h == "set-cookie") {
        problems.push(format!("origin Set-Cookie reached the client: {cookies:?}"));
    }
    check_request_id(case, response, x, problems);
    if expect.max_age_capped_by_expires {
        match (expires, max_age(response)) {
            (None, _) => problems.push("case signs no integer expires".to_owned()),
            (_, None) => problems.push(format!(
                "no Cache-Control max-age: {:?}",
                response.header_values("cache-control")
            )),
            (Some(expires), Some(age)) => {
                let remaining = expires - sent_at;
                // The gateway computes the remaining time at or after `sent_at`; allow it to
                // round generously below, never above.
                if age > remaining || age < remaining - 30 || age <= 0 {
                    problems.push(format!(
                        "Cache-Control max-age={age}, expected at most the {remaining} s left until expires"
                    ));
                }
            }
        }
    }
    if !expect.cache_control_has.is_empty() {
        let sent = response.header_values("cache-control").join(", ");
        let directives: Vec<String> = sent
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
        for want in &expect.cache_control_has {
            if !directives.contains(&want.to_ascii_lowercase()) {
                problems.push(format!("Cache-Control {sent:?} lacks {want:?}"));
            }
        }
    }
    if let Some(body) = &expect.body {
        let want = x(body);
        if response.body != want.as_bytes() {
            problems.push(format!(
                "body {:?} (expected {want:?})",
                truncate(&response.body_text())
            ));
        }
    }
    if let Some(n) = expect.body_bytes {
        if response.body != pattern(n) {
            problems.push(format!(
                "body of {} bytes is not the origin's {n}-byte pattern",
                response.body.len()
            ));
        }
    }
    let text = response.body_text();
    for needle in &expect.body_not_contains {
        let needle = x(needle);
        if text.contains(&needle) {
            problems.push(format!("body reveals {needle:?}: {:?}", truncate(&text)));
        }
    }
}

/// `max-age` of the response's `Cache-Control` (all values joined).
fn max_age(response: &RawResponse) -> Option<i64> {
    response
        .header_values("cache-control")
        .iter()
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=")?.trim().parse().ok())
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Rules every request that reaches an origin must obey, whatever the case.
fn check_invariants(r: &Recorded, problems: &mut Vec<String>) {
    for (name, value) in &r.headers {
        if value.contains(CLIENT_MARKER) {
            problems.push(format!(
                "client header value reached the origin: {name}: {value}"
            ));
        }
        if name == "cookie" {
            problems.push(format!("Cookie reached the origin: {value}"));
        }
        if name.starts_with("x-imgix-") && !GATEWAY_IMGIX_HEADERS.contains(&name.as_str()) {
            problems.push(format!(
                "client X-Imgix header reached the origin: {name}: {value}"
            ));
        }
        // The gateways' own plumbing (Envoy's x-envoy-* headers, the filter's markers) is
        // nothing an origin may see: it tells the origin about the gateway and, on a redirect
        // hop or a fallback, about the request before it.
        if name.starts_with("x-envoy-") || name.starts_with("x-ixproxy-") {
            problems.push(format!(
                "gateway-internal header reached the origin: {name}: {value}"
            ));
        }
    }
}

/// `host` of `host:port` / `[v6]:port`.
fn host_only(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn single<'a>(r: &'a Recorded, name: &str, problems: &mut Vec<String>) -> Option<&'a str> {
    match r.header_values(name).as_slice() {
        [one] => Some(one),
        other => {
            problems.push(format!(
                "origin header {name}: {other:?} (expected exactly one)"
            ));
            None
        }
    }
}

fn check_origin(
    r: &Recorded,
    want: &OriginExpect,
    request: &RawRequest,
    harness: &Harness,
    x: &dyn Fn(&str) -> String,
    request_ids: &mut HashSet<String>,
    problems: &mut Vec<String>,
) {
    if r.server != want.server {
        problems.push(format!(
            "origin server {:?} (expected {:?})",
            r.server, want.server
        ));
    }
    if r.method != request.method {
        problems.push(format!(
            "origin method {} (expected {})",
            r.method, request.method
        ));
    }
    let path = x(&want.path);
    if r.target != path {
        problems.push(format!("origin path {:?} (expected {path:?})", r.target));
    }
    let host = x(&want.host);
    if let Some(got) = single(r, "host", problems) {
        if got != host {
            problems.push(format!("origin Host {got:?} (expected {host:?})"));
        }
    }
    for (name, value) in &want.headers {
        let value = x(value);
        if let Some(got) = single(r, name, problems) {
            if got != value {
                problems.push(format!(
                    "origin header {name}: {got:?} (expected {value:?})"
                ));
            }
        }
    }
    for name in &want.absent {
        let got = r.header_values(name);
        if !got.is_empty() {
            problems.push(format!("origin header {name} must be absent, got {got:?}"));
        }
    }
    if want.auth == "none" {
        for name in std::iter::once(auth::AUTHORIZATION).chain(GATEWAY_IMGIX_HEADERS) {
            let got = r.header_values(name);
            if !got.is_empty() {
                problems.push(format!(
                    "origin header {name} must be absent (no origin auth), got {got:?}"
                ));
            }
        }
        return;
    }
    let Some(expected) = harness.auth.get(&want.auth) else {
        problems.push(format!("case names unknown auth source {}", want.auth));
        return;
    };
    if let Some(got) = single(r, auth::AUTHORIZATION, problems) {
        if got != expected.basic_header {
            problems.push(format!(
                "origin Authorization {got:?} is not the source's Basic credentials"
            ));
        }
    }
    if let Some(got) = single(r, auth::ORIGIN_SECRET, problems) {
        if got != expected.handshake {
            problems.push(format!(
                "origin {} {got:?} is not the source's handshake",
                auth::ORIGIN_SECRET
            ));
        }
    }
    if let Some(got) = single(r, auth::SIGNATURE_HOST, problems) {
        if got != host_only(&host) {
            problems.push(format!(
                "origin {} {got:?} (expected {:?})",
                auth::SIGNATURE_HOST,
                host_only(&host)
            ));
        }
    }
    let id = single(r, auth::SIGNATURE_REQUEST_ID, problems);
    let ts = single(r, auth::SIGNATURE_TIMESTAMP, problems);
    let sig = single(r, auth::SIGNATURE, problems);
    if let (Some(id), Some(ts), Some(sig)) = (id, ts, sig) {
        if id.len() != 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            problems.push(format!("request id {id:?} is not 64 lowercase hex chars"));
        }
        if !request_ids.insert(id.to_owned()) {
            problems.push(format!(
                "request id {id} was already used by an earlier request"
            ));
        }
        let now = u64::try_from(now_unix()).unwrap_or(0);
        let key = Secret::new(expected.signing_key.clone());
        if let Err(e) = verify_origin_signature(&key, id, ts, sig, now, MAX_SKEW) {
            problems.push(format!(
                "per-request origin signature does not verify ({e}): id={id} ts={ts} sig={sig}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use ixproxy_core::config::RawConfig;
    use ixproxy_core::request::{check_request_body, check_request_headers, HeaderTotals};
    use ixproxy_core::{decide, Decision, RequestInfo};

    use crate::cases::Counted;

    use super::*;

    /// Outcomes only a runtime can reach, after the core decided to forward: what the origin
    /// did, what its response was, or what its name resolved to.
    const AFTER_FORWARD: [Outcome; 9] = [
        Outcome::Forwarded,
        Outcome::OriginError,
        Outcome::OriginTimeout,
        Outcome::OriginTooLarge,
        Outcome::BadRedirect,
        Outcome::OriginDenied,
        Outcome::ContentTypeDenied,
        Outcome::BadOriginResponse,
        Outcome::Overloaded,
    ];

    /// The runtimes' view of "carries a body": `Transfer-Encoding`, a `Content-Length` other
    /// than 0, or bytes after the headers.
    fn has_body(req: &RawRequest) -> bool {
        !req.body.is_empty()
            || req.headers.iter().any(|(name, value)| {
                name.eq_ignore_ascii_case("transfer-encoding")
                    || (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
            })
    }

    #[test]
    fn the_table_agrees_with_the_cores_decision() {
        let vectors = load_vectors(&default_vectors_path()).expect("vectors");
        let mut cases = load_cases(&default_cases_path()).expect("cases");
        cases.extend(vector_cases(&vectors, now_unix()));
        cases.extend(keep_alive_sequence().expect("keep-alive sequence"));
        let harness = Harness::new(&vectors).expect("harness");
        let text = std::fs::read_to_string(&harness.config_path).expect("config");
        let config = RawConfig::from_yaml(&text)
            .and_then(|raw| raw.validate(&harness.secrets()))
            .expect("valid config");
        let mut wrong = Vec::new();
        for case in &cases {
            let Counted::One(outcome) = case.expect.counted().expect("validated") else {
                // Refused by both runtimes' HTTP codecs, before any ixproxy code.
                continue;
            };
            let now = now_unix();
            let (req, _) = build_request(case, &harness, now).expect("request");
            let info = RequestInfo {
                method: &req.method,
                host: &req.host,
                target: &req.target,
            };
            let now = u64::try_from(now).expect("now");
            let expect = &case.expect;
            let wanted = expect.origin_requests();
            // A name that only resolves to loopback is the runtime's to deny, after DNS.
            let resolved_by_runtime = harness.loopback_alias != "localhost"
                && case.request.sign.as_ref().is_some_and(|sign| {
                    [&sign.url, &sign.path]
                        .into_iter()
                        .flatten()
                        .any(|u| u.contains("{loopback_alias}"))
                });
            let forwarded = !wanted.is_empty()
                || expect.aborted
                || resolved_by_runtime
                || matches!(expect.status, Some(502 | 504));
            // Every field the client sends, as both runtimes count them.
            let totals = HeaderTotals::of(
                req.headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.len()))
                    .chain([("host", req.host.len()), ("connection", "close".len())]),
            );
            let decision = check_request_body(&req.method, has_body(&req))
                .and_then(|()| check_request_headers(&config.sources, totals))
                .map_or_else(Decision::Reject, |()| decide(&config.sources, &info, now));
            match decision {
                Decision::Forward(f) if forwarded => {
                    if let Some(first) = wanted.first() {
                        let path = expand(&first.path, &harness.placeholders(), 0);
                        // A fallback image's fetch is the only one an origin records when the
                        // origin URL itself is the unreachable `{dead}` one.
                        let dead = expand("{dead}", &harness.placeholders(), 0);
                        let fallback_only = f.source().has_fallbacks()
                            && f.origin().to_url_string().starts_with(&dead);
                        if f.origin().path_and_query != path && !fallback_only {
                            wrong.push(format!(
                                "{}: core forwards {}",
                                case.name,
                                f.origin().path_and_query
                            ));
                        }
                    }
                    if !AFTER_FORWARD.contains(&outcome) {
                        wrong.push(format!(
                            "{}: the core forwards, so the outcome cannot be {}",
                            case.name,
                            outcome.as_str()
                        ));
                    }
                }
                Decision::Reject(r)
                    if !forwarded
                        && Some(r.status()) == expect.status
                        && r.outcome() == outcome => {}
                Decision::Reject(r) if !forwarded && Some(r.status()) == expect.status => {
                    wrong.push(format!(
                        "{}: the core counts {} ({}), the case says {}",
                        case.name,
                        r.outcome().as_str(),
                        r.reason(),
                        outcome.as_str()
                    ));
                }
                other => wrong.push(format!("{}: {} -> {other:?}", case.name, req.target)),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn only_requests_http2_cannot_express_are_kept_off_it() {
        let cases: Vec<Case> = serde_yaml::from_str(
            r#"
- name: body with its length
  request: {target: /a, headers: [[Content-Length, "5"]], body: hello}
  expect: {outcome: bad_request, status: 400}
- name: many headers
  request: {target: /a, filler: {count: 120, size: 20}}
  expect: {outcome: request_too_large, status: 431}
- name: zero length, no body
  request: {target: /a, headers: [[content-length, "0"]]}
  expect: {outcome: forwarded, status: 200}
- name: chunked
  request: {target: /a, headers: [[Transfer-Encoding, chunked]], body: "0\r\n\r\n"}
  expect: {outcome: bad_request, status: 400}
- name: connection close
  request: {target: /a, headers: [[Connection, close]]}
  expect: {outcome: forwarded, status: 200}
- name: two lengths
  request: {target: /a, headers: [[Content-Length, "5"], [Content-Length, "6"]], body: hello!}
  expect: {outcome: none, status: 400}
- name: length not a number
  request: {target: /a, headers: [[Content-Length, "abc"]]}
  expect: {outcome: none, status: 400}
- name: length longer than the body
  request: {target: /a, headers: [[Content-Length, "9"]], body: hello}
  expect: {outcome: none, status: 400}
"#,
        )
        .expect("yaml");
        let runs: Vec<&str> = cases
            .iter()
            .filter(|c| h2_skip_reason(c).is_none())
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            runs,
            [
                "body with its length",
                "many headers",
                "zero length, no body"
            ]
        );
        // The real table: the skipped cases are the framing ones, a handful of the whole.
        let table = load_cases(&default_cases_path()).expect("cases");
        let skipped: Vec<&Case> = table
            .iter()
            .filter(|c| h2_skip_reason(c).is_some())
            .collect();
        assert!(
            !skipped.is_empty() && skipped.len() * 20 < table.len(),
            "{}",
            skipped.len()
        );
    }

    #[test]
    fn the_keep_alive_sequence_is_a_valid_table() {
        let cases: Vec<Case> = serde_yaml::from_str(KEEP_ALIVE_SEQUENCE).expect("yaml");
        validate(&cases).expect("valid");
        assert_eq!(
            cases.iter().filter(|c| c.expect.origin.is_some()).count(),
            3
        );
        assert_eq!(cases.last().and_then(|c| c.expect.status), Some(403));
    }

    #[test]
    fn host_only_strips_ports() {
        assert_eq!(host_only("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_only("[::1]:8080"), "::1");
        assert_eq!(host_only("example.com"), "example.com");
    }

    #[test]
    fn invariants_catch_leaks() {
        let r = Recorded {
            server: crate::origin::OriginKind::Http,
            method: "GET".to_owned(),
            target: "/".to_owned(),
            headers: vec![
                ("cookie".to_owned(), "a=b".to_owned()),
                ("x-imgix-foo".to_owned(), "1".to_owned()),
                (
                    "x-forwarded-for".to_owned(),
                    format!("10.0.0.1, {CLIENT_MARKER}"),
                ),
                ("x-imgix-origin-secret".to_owned(), "ok".to_owned()),
                (
                    "x-envoy-expected-rq-timeout-ms".to_owned(),
                    "3000".to_owned(),
                ),
                ("x-ixproxy-cache-ttl".to_owned(), "30".to_owned()),
            ],
        };
        let mut problems = Vec::new();
        check_invariants(&r, &mut problems);
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    /// A gateway that is only an admin listener serving `ixproxy_requests_total` from counts the
    /// test changes, to check the ledger without a runtime.
    struct FakeGateway {
        admin: SocketAddr,
        counts: std::sync::Arc<std::sync::Mutex<Vec<(Outcome, u64)>>>,
    }

    impl FakeGateway {
        fn new() -> FakeGateway {
            use std::io::{Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let admin = listener.local_addr().expect("addr");
            let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Outcome, u64)>::new()));
            let served = std::sync::Arc::clone(&counts);
            std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body: String = served
                        .lock()
                        .expect("counts")
                        .iter()
                        .map(|(o, n)| {
                            format!("ixproxy_requests_total{{outcome=\"{}\"}} {n}\n", o.as_str())
                        })
                        .collect();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            FakeGateway { admin, counts }
        }

        /// Counts one request under `outcome`, now or after `delay` (on another thread).
        fn count(&self, outcome: Outcome, delay: Duration) {
            let counts = std::sync::Arc::clone(&self.counts);
            let add = move || {
                let mut counts = counts.lock().expect("counts");
                match counts.iter_mut().find(|(o, _)| *o == outcome) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((outcome, 1)),
                }
            };
            if delay.is_zero() {
                add();
            } else {
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    add();
                });
            }
        }
    }

    impl Gateway for FakeGateway {
        const NAME: &'static str = "fake";

        fn start(
            _config: &std::path::Path,
            _env: &[(String, String)],
            _work_dir: &std::path::Path,
        ) -> Result<Self, HarnessError> {
            Err(HarnessError::Gateway(
                "the fake gateway is made with FakeGateway::new".to_owned(),
            ))
        }

        fn addr(&self) -> SocketAddr {
            self.admin
        }

        fn log_tail(&self) -> String {
            String::new()
        }

        fn metrics_endpoint(&self) -> (SocketAddr, &'static str) {
            (self.admin, "/metrics")
        }

        fn pid(&self) -> u32 {
            std::process::id()
        }
    }

    fn result(name: &str) -> CaseResult {
        CaseResult::named(name.to_owned())
    }

    #[test]
    fn the_ledger_requires_exact_deltas_and_catches_late_counts() {
        let gateway = FakeGateway::new();
        let mut ledger = OutcomeLedger::new(&gateway);
        let mut done = Vec::new();
        let no_delay = Duration::ZERO;

        // Counted at once, and counted a moment after the response (polled for).
        let r = ledger.check(&mut done, &[Outcome::Forwarded], || {
            gateway.count(Outcome::Forwarded, no_delay);
            result("at once")
        });
        done.push(r);
        let r = ledger.check(&mut done, &[Outcome::OriginTooLarge], || {
            gateway.count(Outcome::OriginTooLarge, Duration::from_millis(300));
            result("a moment later")
        });
        done.push(r);
        assert!(done.iter().all(|r| r.problems.is_empty()), "{done:?}");

        // Counted twice: named with the runtime and both deltas.
        let r = ledger.check(&mut done, &[Outcome::Forwarded], || {
            gateway.count(Outcome::Forwarded, no_delay);
            gateway.count(Outcome::BadRequest, no_delay);
            result("twice")
        });
        assert_eq!(
            r.problems,
            [
                "fake counted {bad_request: +1, forwarded: +1} in ixproxy_requests_total \
              (expected {forwarded: +1}, waited 2s)"
            ]
        );
        done.push(r);

        // Nothing expected, nothing counted.
        let r = ledger.check(&mut done, &[], || result("nothing"));
        assert!(r.problems.is_empty(), "{r:?}");
        done.push(r);

        // A second count after the check was judged fails that check, not the next one.
        let r = ledger.check(&mut done, &[Outcome::Expired], || {
            gateway.count(Outcome::Expired, no_delay);
            result("late")
        });
        done.push(r);
        gateway.count(Outcome::Expired, no_delay);
        let r = ledger.check(&mut done, &[Outcome::UnknownHost], || {
            gateway.count(Outcome::UnknownHost, no_delay);
            result("after the late one")
        });
        assert!(r.problems.is_empty(), "{r:?}");
        done.push(r);
        gateway.count(Outcome::Forwarded, no_delay);
        ledger.finish(&mut done);
        let late = |name: &str| {
            done.iter()
                .find(|r| r.name == name)
                .map(|r| r.problems.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            late("late"),
            ["fake counted {expired: +1} in ixproxy_requests_total after this check was judged"]
        );
        assert_eq!(
            late("after the late one"),
            ["fake counted {forwarded: +1} in ixproxy_requests_total after this check was judged"]
        );
    }
}
