//! The case table as data: `conformance/cases.yaml` (hand-written cases) plus cases generated
//! from every imgix SDK vector in `core/tests/vectors/url-signatures.json`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ixproxy_core::Outcome;
use serde::Deserialize;

use crate::origin::OriginKind;
use crate::HarnessError;

/// One conformance case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique name, printed on failure.
    pub name: String,
    /// What the client sends.
    pub request: RequestSpec,
    /// What the client and the origin must see.
    pub expect: Expect,
    /// The runtimes (`envoy`, `pingora`) the case holds for, when it states a documented
    /// difference between them; empty = every runtime.
    #[serde(default)]
    pub runtimes: Vec<String>,
}

/// The client request of a case. Exactly one of `sign` and `target` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// `Host` header (default `a.test`).
    #[serde(default = "default_host")]
    pub host: String,
    /// Build the target by signing.
    #[serde(default)]
    pub sign: Option<SignSpec>,
    /// Send this target as written (placeholders expanded).
    #[serde(default)]
    pub target: Option<String>,
    /// Extra headers, in order, as `[name, value]` pairs (placeholders expanded).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Headers `X-Filler-<i>: client-marker…` added after `headers`.
    #[serde(default)]
    pub filler: Option<Filler>,
    /// Bytes sent after the headers exactly as written (placeholders expanded); no
    /// `Content-Length` is added.
    #[serde(default)]
    pub body: Option<String>,
}

/// Many or large filler request headers.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filler {
    /// How many headers.
    pub count: usize,
    /// Length of each value (at least the marker's length).
    pub size: usize,
}

/// How to build a signed target with `ixproxy_core::sign::sign_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignSpec {
    /// Token name from the harness (`a.new`, `a.old`, `b.main`, ...).
    pub token: String,
    /// An origin URL, encoded as the SDKs do (`encodeURIComponent`).
    #[serde(default)]
    pub url: Option<String>,
    /// A path used exactly as written (`disable_path_encoding`), for malformed or raw forms.
    #[serde(default)]
    pub path: Option<String>,
    /// Gateway params in order, `[key, value]`; values may use `{now+N}` / `{now-N}`.
    #[serde(default)]
    pub params: Vec<(String, String)>,
    /// Damage applied to the signed target afterwards.
    #[serde(default)]
    pub tamper: Option<Tamper>,
}

/// Ways to break a correctly signed target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// Remove `s`.
    DropS,
    /// `s` in uppercase hex.
    UppercaseS,
    /// `s` one character short (31 chars).
    TruncateS,
    /// Move `s` to the front of the query (needs at least one param).
    SNotLast,
    /// Append a second, identical `s`.
    DuplicateS,
    /// Change the last hex digit of `s`.
    WrongS,
    /// Lower-case the hex digits of every `%XX` escape in the path (same URL, other bytes).
    LowercaseEscapes,
}

/// What must be observed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Response status (required unless `aborted`).
    #[serde(default)]
    pub status: Option<u16>,
    /// The transfer must be cut: the connection closes before the response is complete, so a
    /// client can never take a short body for the whole one.
    #[serde(default)]
    pub aborted: bool,
    /// Response headers that must be present with exactly this single value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response headers that must be absent.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// `Cache-Control` max-age must be present, positive and at most the seconds left until the
    /// request's `expires` (and not far below it).
    #[serde(default)]
    pub max_age_capped_by_expires: bool,
    /// `Cache-Control` directives (any case, name or `name=value`) the response must carry.
    #[serde(default)]
    pub cache_control_has: Vec<String>,
    /// Exact response body.
    #[serde(default)]
    pub body: Option<String>,
    /// The body must be exactly `origin::pattern(n)`.
    #[serde(default)]
    pub body_bytes: Option<usize>,
    /// Strings the response body must not contain.
    #[serde(default)]
    pub body_not_contains: Vec<String>,
    /// The one request the origin must have received. When neither this nor `origin_chain` is
    /// set, no origin may receive any request.
    #[serde(default)]
    pub origin: Option<OriginExpect>,
    /// The requests the origins must have received, in order (redirect hops).
    #[serde(default)]
    pub origin_chain: Vec<OriginExpect>,
    /// The `ixproxy_requests_total{outcome}` label this request must count, exactly once, or
    /// [`NO_OUTCOME`]. Required; optional here only so that [`validate`] can name the case that
    /// lacks it (see [`Expect::counted`]).
    #[serde(default)]
    pub outcome: Option<String>,
}

impl Expect {
    /// The origin requests expected, in order.
    pub fn origin_requests(&self) -> Vec<&OriginExpect> {
        self.origin.iter().chain(&self.origin_chain).collect()
    }

    /// What the case must count, from `outcome`.
    ///
    /// # Errors
    /// `outcome` missing, or neither an [`Outcome`] label nor [`NO_OUTCOME`].
    pub fn counted(&self) -> Result<Counted, String> {
        match self.outcome.as_deref() {
            None => Err("expect needs an outcome".to_owned()),
            Some(NO_OUTCOME) => Ok(Counted::Nothing),
            Some(label) => Outcome::from_label(label).map(Counted::One).ok_or_else(|| {
                let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                format!(
                    "unknown outcome {label:?} (expected {NO_OUTCOME} or one of {})",
                    labels.join(", ")
                )
            }),
        }
    }
}

/// `expect.outcome: none`: no outcome may be counted for the request at all. Only for a request
/// that the HTTP codec of both runtimes refuses before any ixproxy code sees it.
pub const NO_OUTCOME: &str = "none";

/// What one client request must add to `ixproxy_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// One, under this outcome, and nothing under any other.
    One(Outcome),
    /// Nothing under any outcome ([`NO_OUTCOME`]).
    Nothing,
}

impl Counted {
    /// The outcome counted, if any.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Counted::One(outcome) => Some(outcome),
            Counted::Nothing => None,
        }
    }
}

/// The request the origin must have received.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginExpect {
    /// Which recording server.
    pub server: OriginKind,
    /// Exact path and query.
    pub path: String,
    /// Exact `Host`.
    pub host: String,
    /// Source whose origin auth must be present and valid, or `none` for no auth headers.
    pub auth: String,
    /// Headers that must have arrived with exactly this single value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must not have arrived.
    #[serde(default)]
    pub absent: Vec<String>,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_host() -> String {
    "a.test".to_owned()
}

/// One entry of `core/tests/vectors/url-signatures.json` (the fields the suite uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Vector {
    /// Vector name.
    pub name: String,
    /// Host the SDK signed for.
    pub host: String,
    /// Token.
    pub token: String,
    /// Signed path and query.
    pub target: String,
    /// Whether the signature verifies.
    pub valid: bool,
    /// The decoded origin URL, for Web Proxy vectors.
    #[serde(default)]
    pub origin_url: Option<String>,
    /// What the SDK was asked to sign, when the vector records it.
    #[serde(default)]
    pub sign_inputs: Option<SignInputs>,
}

impl Vector {
    /// The signed params in order: `sign_inputs.params`, or else the target's query without
    /// `s`, percent-decoded.
    pub fn params(&self) -> Vec<(String, String)> {
        if let Some(inputs) = &self.sign_inputs {
            return inputs.params.clone();
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        self.target
            .split_once('?')
            .map(|(_, query)| query)
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .filter(|(k, _)| *k != "s")
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    }
}

/// A vector's signer inputs.
#[derive(Debug, Clone, Deserialize)]
pub struct SignInputs {
    /// Path or origin URL.
    pub path: String,
    /// Params in order.
    #[serde(default)]
    pub params: Vec<(String, String)>,
}

/// `tests/conformance/cases.yaml`.
pub fn default_cases_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/cases.yaml")
}

/// The imgix SDK vectors vendored at `core/tests/vectors/url-signatures.json` (env
/// `IXPROXY_VECTORS` overrides).
pub fn default_vectors_path() -> PathBuf {
    std::env::var_os("IXPROXY_VECTORS").map_or_else(
        || crate::workspace_root().join("core/tests/vectors/url-signatures.json"),
        PathBuf::from,
    )
}

/// Loads and checks the case table: unique names, exactly one of `sign`/`target`, exactly one
/// of `sign.url`/`sign.path`, a valid `expect.outcome`.
///
/// # Errors
/// Unreadable file, YAML errors, or a case breaking those rules.
pub fn load_cases(path: &Path) -> Result<Vec<Case>, HarnessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
    let cases: Vec<Case> = serde_yaml::from_str(&text)
        .map_err(|e| HarnessError::Cases(format!("{}: {e}", path.display())))?;
    validate(&cases)?;
    Ok(cases)
}

/// Checks the rules of [`load_cases`] on any list of cases.
///
/// # Errors
/// The first case breaking a rule.
pub fn validate(cases: &[Case]) -> Result<(), HarnessError> {
    let mut names = HashSet::new();
    for case in cases {
        let bad = |why: &str| Err(HarnessError::Cases(format!("case {:?}: {why}", case.name)));
        if !names.insert(case.name.as_str()) {
            return bad("duplicate name");
        }
        match (&case.request.sign, &case.request.target) {
            (Some(sign), None) => {
                if sign.url.is_some() == sign.path.is_some() {
                    return bad("sign needs exactly one of url and path");
                }
                if sign.tamper == Some(Tamper::SNotLast) && sign.params.is_empty() {
                    return bad("s_not_last needs at least one param");
                }
            }
            (None, Some(_)) => {}
            _ => return bad("request needs exactly one of sign and target"),
        }
        if case.expect.status.is_none() && !case.expect.aborted {
            return bad("expect needs a status unless aborted");
        }
        if case.expect.origin.is_some() && !case.expect.origin_chain.is_empty() {
            return bad("expect has both origin and origin_chain");
        }
        if let Err(why) = case.expect.counted() {
            return bad(&why);
        }
    }
    Ok(())
}

/// Loads the SDK vectors.
///
/// # Errors
/// Unreadable file or JSON errors.
pub fn load_vectors(path: &Path) -> Result<Vec<Vector>, HarnessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| HarnessError::Cases(format!("{}: {e}", path.display())))
}

/// Replaces an origin URL's `scheme://authority` with `{http}` (the recording HTTP origin),
/// keeping the rest (path, query, fragment) exactly as written.
pub fn rehome(origin_url: &str) -> Option<String> {
    let (_, rest) = origin_url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(format!("{{http}}{}", &rest[authority_end..]))
}

/// The path and query an origin URL asks for, per the WHATWG URL parser (fragment dropped).
pub fn origin_path(origin_url: &str) -> Option<String> {
    let url = url::Url::parse(origin_url).ok()?;
    let mut out = url.path().to_owned();
    if let Some(query) = url.query() {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

/// Cases generated from the SDK vectors, named `vector #<index in the file>: <name>`.
///
/// - Web Proxy vectors (`origin_url`, valid): the origin URL moved onto the recording origin,
///   re-signed with source `a`'s token and the vector's params → 200 `forwarded` and the exact
///   path the URL parser gives (404 `expired` and no origin request if the vector's `expires`
///   has passed).
/// - Other valid vectors, sent as-is to the `vectors` source: the signature verifies but the
///   path is no origin URL → 400 `bad_origin_url` (a 403 means the signature was checked over
///   altered bytes).
/// - Invalid vectors, sent as-is to the `vectors` source → 403 `bad_signature`.
pub fn vector_cases(vectors: &[Vector], now: i64) -> Vec<Case> {
    vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let name = format!("vector #{index}: {}", v.name);
            let no_origin = |status, outcome: Outcome| Expect {
                outcome: Some(outcome.as_str().to_owned()),
                status: Some(status),
                aborted: false,
                body_bytes: None,
                origin_chain: Vec::new(),
                headers: BTreeMap::new(),
                absent_headers: Vec::new(),
                max_age_capped_by_expires: false,
                cache_control_has: Vec::new(),
                body: None,
                body_not_contains: Vec::new(),
                origin: None,
            };
            let raw = |status, outcome| Case {
                name: name.clone(),
                request: RequestSpec {
                    method: default_method(),
                    host: v.host.clone(),
                    sign: None,
                    target: Some(v.target.clone()),
                    headers: Vec::new(),
                    filler: None,
                    body: None,
                },
                expect: no_origin(status, outcome),
                runtimes: Vec::new(),
            };
            let rehomed = v.origin_url.as_deref().and_then(|u| {
                let url = rehome(u)?;
                let path = origin_path(&url.replace("{http}", "http://127.0.0.1:1"))?;
                Some((url, path))
            });
            match (v.valid, rehomed) {
                (false, _) => raw(403, Outcome::BadSignature),
                (true, None) => raw(400, Outcome::BadOriginUrl),
                (true, Some((url, path))) => {
                    let params = v.params();
                    let expired = params.iter().any(|(k, val)| {
                        k == "expires" && val.parse::<i64>().is_ok_and(|e| e <= now)
                    });
                    let mut expect = if expired {
                        no_origin(404, Outcome::Expired)
                    } else {
                        no_origin(200, Outcome::Forwarded)
                    };
                    if !expired {
                        expect.body = Some(format!("asset {path}"));
                        expect.origin = Some(OriginExpect {
                            server: OriginKind::Http,
                            path,
                            host: "{http_authority}".to_owned(),
                            auth: "a".to_owned(),
                            headers: BTreeMap::new(),
                            absent: Vec::new(),
                        });
                    }
                    Case {
                        name,
                        request: RequestSpec {
                            method: default_method(),
                            host: default_host(),
                            sign: Some(SignSpec {
                                token: "a.new".to_owned(),
                                url: Some(url),
                                path: None,
                                params,
                                tamper: None,
                            }),
                            target: None,
                            headers: Vec::new(),
                            filler: None,
                            body: None,
                        },
                        expect,
                        runtimes: Vec::new(),
                    }
                }
            }
        })
        .collect()
}

/// Replaces every placeholder of `values` in `text`, then `{pad:N}` with `N` times `a` and
/// `{now+N}` / `{now-N}` with unix seconds relative to `now`.
pub fn expand(text: &str, values: &[(String, String)], now: i64) -> String {
    let mut out = text.to_owned();
    for (key, value) in values {
        out = out.replace(key.as_str(), value);
    }
    while let Some(start) = out.find("{pad:") {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        let Ok(n) = out[start + 5..start + len].parse::<usize>() else {
            break;
        };
        out.replace_range(start..=start + len, &"a".repeat(n));
    }
    while let Some(start) = out.find("{now") {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        let inner = &out[start + 4..start + len];
        let offset = match inner.split_at_checked(1) {
            Some(("+", n)) => n.parse::<i64>().ok(),
            Some(("-", n)) => n.parse::<i64>().ok().map(|n| -n),
            _ => None,
        };
        let Some(offset) = offset else {
            break;
        };
        out.replace_range(start..=start + len, &(now + offset).to_string());
    }
    out
}

/// Applies `tamper` to a signed `path?query&s=SIG` target.
pub fn tamper(target: &str, how: Tamper) -> String {
    let Some((before, sig)) = target.rsplit_once("s=") else {
        return target.to_owned();
    };
    let sep_removed = before.strip_suffix(['&', '?']).unwrap_or(before);
    match how {
        Tamper::DropS => sep_removed.to_owned(),
        Tamper::UppercaseS => format!("{before}s={}", sig.to_ascii_uppercase()),
        Tamper::TruncateS => format!("{before}s={}", &sig[..sig.len().saturating_sub(1)]),
        Tamper::DuplicateS => format!("{target}&s={sig}"),
        Tamper::WrongS => {
            let mut chars: Vec<char> = sig.chars().collect();
            if let Some(last) = chars.last_mut() {
                *last = if *last == '0' { '1' } else { '0' };
            }
            format!("{before}s={}", chars.into_iter().collect::<String>())
        }
        Tamper::SNotLast => match sep_removed.split_once('?') {
            Some((path, query)) => format!("{path}?s={sig}&{query}"),
            None => target.to_owned(),
        },
        Tamper::LowercaseEscapes => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut out = String::with_capacity(target.len());
            let mut escape_left = 0;
            for c in path.chars() {
                if escape_left > 0 {
                    out.push(c.to_ascii_lowercase());
                    escape_left -= 1;
                } else {
                    escape_left = if c == '%' { 2 } else { 0 };
                    out.push(c);
                }
            }
            format!("{out}?{query}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_case_table_loads_and_is_consistent() {
        let cases = load_cases(&default_cases_path()).expect("cases.yaml");
        assert!(cases.len() >= 40, "only {} cases", cases.len());
        for case in &cases {
            if let Some(sign) = &case.request.sign {
                assert!(
                    [
                        "a.new", "a.old", "b.main", "c.main", "d.main", "e.main", "f.main",
                        "r.main", "o.main", "m.main", "g.main", "h.main", "i.main", "j.main",
                        "k.main", "l.main"
                    ]
                    .contains(&sign.token.as_str()),
                    "{}: unknown token {}",
                    case.name,
                    sign.token
                );
            }
        }
    }

    fn parse(yaml: &str) -> Result<Vec<Case>, HarnessError> {
        let cases: Vec<Case> = serde_yaml::from_str(yaml).expect("yaml");
        validate(&cases).map(|()| cases)
    }

    #[test]
    fn every_case_states_a_known_outcome() {
        let case = |expect: &str| {
            format!(
                "- name: the case\n  request: {{target: /x}}\n  expect: {{status: 403{expect}}}\n"
            )
        };
        let missing = parse(&case("")).expect_err("outcome is required");
        assert!(
            missing
                .to_string()
                .contains("\"the case\": expect needs an outcome"),
            "{missing}"
        );
        let unknown = parse(&case(", outcome: forbidden")).expect_err("unknown label");
        assert!(
            unknown
                .to_string()
                .contains("\"the case\": unknown outcome \"forbidden\""),
            "{unknown}"
        );
        let cases = parse(&case(", outcome: bad_signature")).expect("valid");
        assert_eq!(
            cases[0].expect.counted(),
            Ok(Counted::One(Outcome::BadSignature))
        );
        let cases = parse(&case(", outcome: none")).expect("valid");
        assert_eq!(cases[0].expect.counted(), Ok(Counted::Nothing));
        assert_eq!(Counted::Nothing.outcome(), None);
    }

    #[test]
    fn vectors_become_cases_with_the_url_parsers_path() {
        let vectors = load_vectors(&default_vectors_path()).expect("vectors");
        let cases = vector_cases(&vectors, 1_700_000_000);
        validate(&cases).expect("unique names");
        assert_eq!(cases.len(), vectors.len());
        let fragment = cases
            .iter()
            .find(|c| {
                c.request.sign.as_ref().and_then(|s| s.url.as_deref())
                    == Some("{http}/a b/ü.jpg?x=1&y=2#frag")
            })
            .expect("the fragment vector is rehomed");
        let origin = fragment.expect.origin.as_ref().expect("forwarded");
        assert_eq!(origin.path, "/a%20b/%C3%BC.jpg?x=1&y=2");
        for case in &cases {
            let outcome = match case.expect.status {
                Some(200) => Outcome::Forwarded,
                Some(400) => Outcome::BadOriginUrl,
                Some(403) => Outcome::BadSignature,
                Some(404) => Outcome::Expired,
                other => panic!("{}: status {other:?}", case.name),
            };
            assert_eq!(
                case.expect.counted(),
                Ok(Counted::One(outcome)),
                "{}",
                case.name
            );
        }
        assert!(
            cases.iter().any(|c| c.expect.status == Some(404)),
            "the expired vector"
        );
        assert!(
            cases.iter().any(|c| c.expect.status == Some(403)),
            "invalid vectors"
        );
        assert!(
            cases.iter().any(|c| c.expect.status == Some(400)),
            "plain-path vectors"
        );
        let google = vectors
            .iter()
            .find(|v| v.sign_inputs.is_none() && v.origin_url.is_some())
            .expect("an origin vector without sign_inputs");
        assert_eq!(
            google.params(),
            vec![
                ("h".to_owned(), "200".to_owned()),
                ("w".to_owned(), "200".to_owned())
            ]
        );
    }

    #[test]
    fn expand_and_tamper() {
        let values = vec![("{http}".to_owned(), "http://127.0.0.1:80".to_owned())];
        assert_eq!(
            expand(
                "{http}/a?e={now+60}&f={now-5}&g={nope}&p={pad:3}",
                &values,
                1000
            ),
            "http://127.0.0.1:80/a?e=1060&f=995&g={nope}&p=aaa"
        );
        let t = "/p?w=1&s=0123456789abcdef0123456789abcdef";
        assert_eq!(tamper(t, Tamper::DropS), "/p?w=1");
        assert_eq!(tamper("/p?s=ab", Tamper::DropS), "/p");
        assert_eq!(
            tamper(t, Tamper::UppercaseS),
            "/p?w=1&s=0123456789ABCDEF0123456789ABCDEF"
        );
        assert_eq!(
            tamper(t, Tamper::TruncateS),
            "/p?w=1&s=0123456789abcdef0123456789abcde"
        );
        assert_eq!(
            tamper(t, Tamper::SNotLast),
            "/p?s=0123456789abcdef0123456789abcdef&w=1"
        );
        assert_eq!(
            tamper(t, Tamper::DuplicateS),
            format!("{t}&s=0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            tamper(t, Tamper::WrongS),
            "/p?w=1&s=0123456789abcdef0123456789abcde0"
        );
        assert_eq!(
            tamper("/http%3A%2F%2FA?w=%3A&s=ab", Tamper::LowercaseEscapes),
            "/http%3a%2f%2fA?w=%3A&s=ab"
        );
        assert_eq!(
            rehome("https://Example.com:8443/a b?x#f").as_deref(),
            Some("{http}/a b?x#f")
        );
    }
}
