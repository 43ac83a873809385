//! What every gateway under test is given: the recording origin, the config file (four test
//! sources plus one holding the imgix SDK vectors' hosts and tokens), the environment the
//! gateway process needs, and the plain values cases sign with and checks compare against.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::cases::Vector;
use crate::origin::RecordingOrigin;
use crate::HarnessError;

/// Environment variable holding source `a`'s Basic auth password (an `{env: NAME}` secret).
pub const PASSWORD_ENV: &str = "IXPROXY_CONFORMANCE_ORIGIN_PASSWORD";
/// Environment variable holding source `i`'s `X-Api-Key` origin header (an `{env: NAME}`
/// secret, resolved in Envoy's Wasm VM too).
pub const ORIGIN_KEY_ENV: &str = "IXPROXY_CONFORMANCE_ORIGIN_KEY";
/// Source `i`'s `X-Api-Key` value.
pub const ORIGIN_KEY: &str = "conformance-api-key-5c1";
/// Source `h`'s `origin_user_agent`.
pub const CUSTOM_USER_AGENT: &str = "conformance-fetcher/7 (+https://ops.example)";
/// Origin connect timeout in the test config.
pub const CONNECT_TIMEOUT: &str = "1s";
/// Origin timeout in the test config, until the response header (`/slow/...` takes longer).
pub const ORIGIN_TIMEOUT: &str = "3s";
/// Longest pause inside an origin body in the test config (`/pause/...` pauses longer,
/// `/drip/...` pauses shorter).
pub const BODY_TIMEOUT: &str = "1s";
/// `upstream.max_redirects` in the test config.
pub const MAX_REDIRECTS: u32 = 3;
/// `limits.max_inflight_per_source` in the test config: above the multi-request checks'
/// concurrency on one source, so only the in-flight check reaches it.
pub const MAX_INFLIGHT_PER_SOURCE: u32 = 12;
/// `upstream.max_body_bytes` in the test config (1 MiB).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The origin authentication source `a` sends, in plain text, for checking what the origin got.
#[derive(Debug, Clone)]
pub struct ExpectedAuth {
    /// Exact `Authorization` value.
    pub basic_header: String,
    /// Exact `X-Imgix-Origin-Secret` value.
    pub handshake: String,
    /// Per-request signing key.
    pub signing_key: String,
}

/// A running recording origin plus the config and environment for a gateway.
pub struct Harness {
    /// The recording origin servers.
    pub origin: RecordingOrigin,
    /// Scratch directory: config, CA file, gateway logs.
    pub dir: TempDir,
    /// The YAML config (listen addresses `127.0.0.1:0`; runners assign real ports).
    pub config_path: PathBuf,
    /// Environment variables the gateway process must get.
    pub env: Vec<(String, String)>,
    /// Token by case name (`a.new`, `a.old`, `b.main`, ...).
    pub tokens: BTreeMap<String, String>,
    /// Origin auth by source name; sources not listed send none.
    pub auth: BTreeMap<String, ExpectedAuth>,
    /// A loopback port nothing listens on (held for the harness's lifetime, so it stays so).
    pub dead: SocketAddr,
    _dead_port: DeadPort,
    /// A loopback port that accepts connections and never says anything ([`SilentPort`]).
    pub silent: SocketAddr,
    _silent_port: SilentPort,
    /// A host name that resolves to a loopback address through `/etc/hosts` but that the
    /// core cannot recognise as private by its spelling (see [`loopback_alias`]).
    pub loopback_alias: String,
}

/// One source as the config's JSON/YAML; private origins allowed unless changed.
fn source(name: &str, hosts: &[&str], tokens: &[&str]) -> Value {
    json!({
        "name": name,
        "hosts": hosts,
        "secure_url_tokens": tokens,
        "allow_private_origins": true,
    })
}

impl Harness {
    /// Starts the recording origin and writes the config.
    ///
    /// Sources: `a` (hosts `a.test`, `a2.test`; tokens `a.new` and `a.old` for rotation; Basic
    /// auth with the password from [`PASSWORD_ENV`], handshake and per-request signing), `b`
    /// (`b.test`, its own token, no origin auth), `c` (`c.test`, private origins denied even
    /// though loopback spellings are allow-listed), `d` (`d.test`, private origins allowed,
    /// only `127.0.0.1` and `*.allowed.test`), `e` (`e.test`, only `image/` responses), `f`
    /// (`f.test`, `a`'s origin auth but only for `localhost`, origins `127.0.0.1` and
    /// `localhost`), and `vectors` (the SDK vectors' hosts and tokens, public origins only).
    /// Upstream: short timeouts ([`ORIGIN_TIMEOUT`] to the response header, [`BODY_TIMEOUT`]
    /// inside the body), [`MAX_REDIRECTS`] and a 1 MiB [`MAX_BODY_BYTES`];
    /// [`MAX_INFLIGHT_PER_SOURCE`].
    ///
    /// # Errors
    /// Origin start-up or file errors.
    pub fn new(vectors: &[Vector]) -> Result<Self, HarnessError> {
        Harness::with_h2c(vectors, false)
    }

    /// [`Harness::new`], with `h2c: true` in the config when `h2c` is set (the native gateway
    /// then also serves HTTP/2 with prior knowledge; Envoy's listener always does).
    ///
    /// # Errors
    /// As [`Harness::new`].
    pub fn with_h2c(vectors: &[Vector], h2c: bool) -> Result<Self, HarnessError> {
        let origin = RecordingOrigin::start()?;
        let dead_port = DeadPort::bind()?;
        let silent_port = SilentPort::bind()?;
        let dir = tempfile::Builder::new()
            .prefix("ixproxy-conformance-")
            .tempdir()
            .map_err(|e| HarnessError::io("temp dir", e))?;
        let ca_path = dir.path().join("test-ca.pem");
        std::fs::write(&ca_path, &origin.ca_pem).map_err(|e| HarnessError::io("write ca", e))?;

        let tokens: BTreeMap<String, String> = [
            ("a.new", "aNewToken123"),
            ("a.old", "aOldToken456"),
            ("b.main", "bSourceToken789"),
            ("c.main", "cSourceToken000"),
            ("d.main", "dSourceToken111"),
            ("e.main", "eSourceToken222"),
            ("f.main", "fSourceToken333"),
            ("r.main", "rSourceToken444"),
            ("o.main", "oSourceToken555"),
            ("m.main", "mSourceToken666"),
            ("g.main", "gSourceToken777"),
            ("h.main", "hSourceToken888"),
            ("i.main", "iSourceToken999"),
            ("j.main", "jSourceToken000"),
            ("k.main", "kSourceToken111"),
            ("l.main", "lSourceToken222"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let token = |name: &str| tokens.get(name).map_or("", String::as_str);

        let username = "ixuser";
        let password = "env-password-9f3";
        let handshake = "handshake-secret-42";
        let signing_key = "conformance-signing-key";

        let mut a = source(
            "a",
            &["a.test", "a2.test"],
            &[token("a.new"), token("a.old")],
        );
        let loopback_alias = loopback_alias();
        // Credentials go only to the loopback origins the cases fetch from
        // (`origin_auth.hosts`: without it, or `allowed_origin_hosts`, `a` is a config error).
        a["origin_auth"] = json!({
            "basic_auth": {"username": username, "password": {"env": PASSWORD_ENV}},
            "request_handshake": handshake,
            "request_signing_key": signing_key,
            "hosts": ["127.0.0.1", "localhost", loopback_alias],
        });
        let b = source("b", &["b.test"], &[token("b.main")]);
        let mut c = source("c", &["c.test"], &[token("c.main")]);
        c["allow_private_origins"] = json!(false);
        // Loopback spellings are allow-listed so that only the private-address rule can
        // deny them.
        c["allowed_origin_hosts"] = json!([
            "127.0.0.1",
            "localhost",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            loopback_alias
        ]);
        let mut d = source("d", &["d.test"], &[token("d.main")]);
        d["allowed_origin_hosts"] = json!(["127.0.0.1", "*.allowed.test"]);

        let mut e = source("e", &["e.test"], &[token("e.main")]);
        e["allowed_content_types"] = json!(["image/"]);

        // `f` may fetch 127.0.0.1 and localhost but sends its origin auth only to localhost.
        let mut f = source("f", &["f.test"], &[token("f.main")]);
        f["allowed_origin_hosts"] = json!(["127.0.0.1", "localhost"]);
        f["origin_auth"] = a["origin_auth"].clone();
        f["origin_auth"]["hosts"] = json!(["localhost"]);

        // One source per cache TTL behaviour, with short TTLs the cases can tell apart.
        let ttl_source = |name: &str, host: &str, token_name: &str, behavior: &str| {
            let mut s = source(name, &[host], &[token(token_name)]);
            s["cache_ttl_behavior"] = json!(behavior);
            s["cache_ttl"] = json!(1000);
            s["cache_ttl_error"] = json!(30);
            s
        };
        let r = ttl_source("r", "r.test", "r.main", "respect_origin");
        let o = ttl_source("o", "o.test", "o.main", "override_origin");
        let m = ttl_source("m", "m.test", "m.main", "enforce_minimum");

        // SPEC §15: `g` answers two listed page origins and forwards the client's user agent,
        // `h` has CORS off and its own user agent, `i` sends fixed origin headers to 127.0.0.1
        // only (its origin_auth.hosts; it may also fetch localhost), `j` is disabled.
        let mut g = source("g", &["g.test"], &[token("g.main")]);
        g["cors"] = json!({"allow_origin": ["http://app.test", "https://app2.test:8443"]});
        g["origin_user_agent"] = json!("forward");
        let mut h = source("h", &["h.test"], &[token("h.main")]);
        h["cors"] = json!("off");
        h["origin_user_agent"] = json!(CUSTOM_USER_AGENT);
        let mut i = source("i", &["i.test"], &[token("i.main")]);
        i["allowed_origin_hosts"] = json!(["127.0.0.1", "localhost"]);
        i["origin_auth"] = json!({"hosts": ["127.0.0.1"]});
        i["origin_headers"] = json!({
            "X-Api-Key": {"env": ORIGIN_KEY_ENV},
            "Referer": "https://www.example/",
        });
        let mut j = source("j", &["j.test"], &[token("j.main")]);
        j["enabled"] = json!(false);

        // Fallback images (SPEC §15), served by the recording origin. `k`: both images, only
        // `image/` answers, `a`'s origin auth for 127.0.0.1 (the images' host too). `l`: the
        // missing image with the request's params appended, an error image that fails itself
        // (a 500), origin auth only for localhost (so never for its 127.0.0.1 images), and a
        // CORS list (the fallback's answer gets the listed page's origin too).
        let http = origin.http;
        let mut k = source("k", &["k.test"], &[token("k.main")]);
        k["allowed_content_types"] = json!(["image/"]);
        k["cache_ttl_error"] = json!(30);
        k["origin_auth"] = a["origin_auth"].clone();
        k["origin_auth"]["hosts"] = json!(["127.0.0.1"]);
        k["image_missing"] = json!(format!("http://{http}/image/missing.png"));
        k["image_error"] = json!(format!("http://{http}/image/error.png"));
        let mut l = source("l", &["l.test"], &[token("l.main")]);
        l["allowed_origin_hosts"] = json!(["127.0.0.1", "localhost"]);
        l["cache_ttl_error"] = json!(30);
        l["origin_auth"] = a["origin_auth"].clone();
        l["origin_auth"]["hosts"] = json!(["localhost"]);
        l["image_missing"] = json!(format!("http://{http}/image/m.png?v=1"));
        l["image_missing_append_qs"] = json!(true);
        l["image_error"] = json!(format!("http://{http}/status/500"));
        l["cors"] = json!({"allow_origin": ["http://app.test"]});

        let mut sources = vec![a, b, c, d, e, f, r, o, m, g, h, i, j, k, l];
        let mut vector_hosts: Vec<&str> = vectors.iter().map(|v| v.host.as_str()).collect();
        vector_hosts.sort_unstable();
        vector_hosts.dedup();
        let mut vector_tokens: Vec<&str> = vectors.iter().map(|v| v.token.as_str()).collect();
        vector_tokens.sort_unstable();
        vector_tokens.dedup();
        if !vector_hosts.is_empty() {
            let mut v = source("vectors", &vector_hosts, &vector_tokens);
            v["allow_private_origins"] = json!(false);
            sources.push(v);
        }

        let config = json!({
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "upstream": {
                "ca_file": ca_path.display().to_string(),
                "connect_timeout": CONNECT_TIMEOUT,
                "timeout": ORIGIN_TIMEOUT,
                "body_timeout": BODY_TIMEOUT,
                "max_redirects": MAX_REDIRECTS,
                "max_body_bytes": MAX_BODY_BYTES,
            },
            "limits": {"max_inflight_per_source": MAX_INFLIGHT_PER_SOURCE},
            "h2c": h2c,
            "sources": sources,
        });
        let yaml = serde_yaml::to_string(&config)
            .map_err(|e| HarnessError::Cases(format!("serialize config: {e}")))?;
        let config_path = dir.path().join("ixproxy.yaml");
        std::fs::write(&config_path, yaml).map_err(|e| HarnessError::io("write config", e))?;

        let expected = ExpectedAuth {
            basic_header: format!(
                "Basic {}",
                STANDARD.encode(format!("{username}:{password}"))
            ),
            handshake: handshake.to_owned(),
            signing_key: signing_key.to_owned(),
        };
        let mut auth = BTreeMap::new();
        auth.insert("a".to_owned(), expected.clone());
        auth.insert("f".to_owned(), expected.clone());
        auth.insert("k".to_owned(), expected);

        Ok(Harness {
            loopback_alias,
            origin,
            config_path,
            env: vec![
                (PASSWORD_ENV.to_owned(), password.to_owned()),
                (ORIGIN_KEY_ENV.to_owned(), ORIGIN_KEY.to_owned()),
            ],
            tokens,
            auth,
            dead: dead_port.addr(),
            _dead_port: dead_port,
            silent: silent_port.addr(),
            _silent_port: silent_port,
            dir,
        })
    }

    /// The environment the gateway gets, as a resolver for validating the test config.
    pub fn secrets(&self) -> ixproxy_core::config::MapSecrets {
        self.env
            .iter()
            .fold(ixproxy_core::config::MapSecrets::new(), |m, (k, v)| {
                m.with_env(k.clone(), v.clone())
            })
    }

    /// The placeholders cases may use, with their values.
    pub fn placeholders(&self) -> Vec<(String, String)> {
        let o = &self.origin;
        [
            ("{http}", format!("http://{}", o.http)),
            ("{http_alt}", format!("http://{}", o.http_alt)),
            ("{http_alt_authority}", o.http_alt.to_string()),
            ("{https}", format!("https://{}", o.https)),
            ("{https_wrong}", format!("https://{}", o.https_wrong)),
            ("{dead}", format!("http://{}", self.dead)),
            ("{silent_authority}", self.silent.to_string()),
            ("{http_authority}", o.http.to_string()),
            ("{https_authority}", o.https.to_string()),
            ("{http_port}", o.http.port().to_string()),
            ("{https_port}", o.https.port().to_string()),
            ("{loopback_alias}", self.loopback_alias.clone()),
            (
                "{default_user_agent}",
                ixproxy_core::identity::DEFAULT_ORIGIN_USER_AGENT.to_owned(),
            ),
            ("{custom_user_agent}", CUSTOM_USER_AGENT.to_owned()),
            ("{origin_key}", ORIGIN_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// The first name in `/etc/hosts` mapped to a loopback address that is not `localhost` or
/// `*.localhost` (e.g. the machine's own name, `ip6-localhost`): only a check of the resolved
/// address can deny it. Falls back to `localhost` (denied by its spelling) when there is none.
pub fn loopback_alias() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let ip: std::net::IpAddr = fields.next()?.parse().ok()?;
            ip.is_loopback().then_some(fields)
        })
        .flatten()
        .map(str::to_ascii_lowercase)
        .find(|name| {
            name != "localhost"
                && !name.ends_with(".localhost")
                && name.parse::<std::net::IpAddr>().is_err()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A loopback TCP port that refuses connections for as long as this lives: the socket is bound
/// but never listens, so the kernel answers every connect with a reset and gives the port to
/// no one else (a port that was merely free a moment ago could be taken by the next server).
#[derive(Debug)]
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl DeadPort {
    /// Binds the port on `127.0.0.1`.
    ///
    /// # Errors
    /// The socket cannot be created or bound.
    pub fn bind() -> Result<Self, HarnessError> {
        let socket =
            tokio::net::TcpSocket::new_v4().map_err(|e| HarnessError::io("dead port socket", e))?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| HarnessError::io("bind dead port", e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| HarnessError::io("dead port address", e))?;
        Ok(DeadPort {
            _socket: socket,
            addr,
        })
    }

    /// The refusing address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A loopback TCP port that completes every TCP handshake and then stays silent for as long as
/// this lives: the socket listens but nothing ever accepts, so the kernel queues the
/// connections and no byte (no TLS ServerHello, no HTTP response) ever comes back. An `https`
/// origin there times out in its TLS handshake, an `http` one waiting for its header.
#[derive(Debug)]
pub struct SilentPort {
    listener: std::net::TcpListener,
}

impl SilentPort {
    /// Listens on a free port of `127.0.0.1`.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn bind() -> Result<Self, HarnessError> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| HarnessError::io("bind silent port", e))?;
        Ok(SilentPort { listener })
    }

    /// The silent address.
    pub fn addr(&self) -> SocketAddr {
        // A bound listener always has its address; 0.0.0.0:0 would refuse, never pass.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

#[cfg(test)]
mod tests {
    use ixproxy_core::config::RawConfig;

    use super::*;
    use crate::cases::{default_vectors_path, load_vectors};

    #[test]
    fn the_test_config_is_valid_and_routes_hosts_to_the_right_sources() {
        let vectors = load_vectors(&default_vectors_path()).expect("vectors");
        let harness = Harness::new(&vectors).expect("harness");
        let text = std::fs::read_to_string(&harness.config_path).expect("config");
        let config = RawConfig::from_yaml(&text)
            .and_then(|raw| raw.validate(&harness.secrets()))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let sources = &config.sources;
        let name = |host: &str| sources.by_host(host).map(|s| s.name.clone());
        assert_eq!(name("A2.TEST:8080").as_deref(), Some("a"));
        assert_eq!(name("d.test").as_deref(), Some("d"));
        assert_eq!(name("demo.imgix.net").as_deref(), Some("vectors"));
        assert_eq!(name("unknown.test"), None);
        let a = sources.by_host("a.test").expect("a");
        assert_eq!(a.tokens.len(), 2);
        let headers = a.origin_auth.headers("127.0.0.1", 1, &[7; 32]);
        let expected = harness.auth.get("a").expect("auth a");
        assert_eq!(
            headers.get("authorization"),
            Some(expected.basic_header.as_str())
        );
        let c = sources.by_host("c.test").expect("c");
        assert!(c.origin_host_allowed("127.0.0.1", 80) && !c.allow_private_origins);
        assert!(c.origin_host_allowed("::1", 80) && c.origin_host_allowed("::ffff:127.0.0.1", 80));
        assert_eq!(config.sources.limits().max_body_bytes, MAX_BODY_BYTES);
        let d = sources.by_host("d.test").expect("d");
        assert!(d.origin_host_allowed("127.0.0.1", 80) && !d.origin_host_allowed("localhost", 80));
        assert!(
            text.contains(PASSWORD_ENV),
            "the password stays an env reference"
        );
    }
}
