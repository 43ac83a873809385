//! `cache.disk` on Envoy 1.40 (README: Caching, `cache.disk` on Envoy), run by the real Envoy
//! with the built filter and the bootstrap `ixproxy envoy-config` generates: a cacheable answer
//! is stored as a file in `cache.disk.path` under the configured bound, is a hit after Envoy
//! restarts without the origin being asked again, and `ixproxy envoy-cache-purge --url` makes
//! the next request for that URL (only) a miss. What 1.40 does with a damaged entry, as the
//! README says it: bytes changed in place are served, a truncated entry crashes Envoy, and
//! `ixproxy envoy-cache-purge --damaged` (or `--url`, the key being whole) removes the truncated
//! file so that it is a miss.
//!
//! Uses the prebuilt `target/debug/ixproxy` and `target/wasm32-wasip1/release/ixproxy_filter.wasm`
//! (or `IXPROXY_BIN`, `IXPROXY_WASM`, `IXPROXY_ENVOY`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::gateway::ixproxy_bin;
use ixproxy_conformance::scripted::{http_date, request_path, OriginConn, ScriptedOrigin};
use ixproxy_conformance::{EnvoyGateway, Gateway};
use ixproxy_core::cache::{CacheResult, CACHE_STATUS};
use ixproxy_core::sign::{sign_url, SignOptions};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

const TIMEOUT: Duration = Duration::from_secs(15);

/// `cache.disk.max_bytes`: the least the config accepts (8 blocks of 4 MiB and the native
/// tier's tombstone log, 33 pages).
const DISK_BYTES: u64 = 32 * 1024 * 1024 + 33 * 4096;

/// How long a test waits for Envoy to link a filled entry's file (it is written after the
/// answer went out).
const FILE_WAIT: Duration = Duration::from_secs(5);

fn hit() -> &'static str {
    CacheResult::Hit.cache_status()
}

fn miss() -> &'static str {
    CacheResult::Miss.cache_status()
}

/// The body the origin sends for `path`: long enough that cutting a few bytes off the file
/// leaves the header whole.
fn body_of(path: &str) -> String {
    format!("body of {path};").repeat(20)
}

/// Every path is an image fresh for 600 s.
fn serve(mut conn: OriginConn) {
    let Some(head) = conn.read_head() else {
        return;
    };
    let body = body_of(request_path(&head));
    let date = http_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    conn.send(
        format!(
            "HTTP/1.1 200 OK\r\ndate: {date}\r\ncontent-type: image/png\r\n\
             cache-control: max-age=600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// A loopback origin, an ixproxy config with `cache.disk` in a temporary directory, and Envoy
/// running the bootstrap generated from it.
struct Setup {
    origin: ScriptedOrigin,
    envoy: Option<EnvoyGateway>,
    config: PathBuf,
    cache: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let origin = ScriptedOrigin::start(serve).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("ixproxy-envoy-disk-")
            .tempdir()
            .expect("temp dir");
        // Envoy 1.40 does not create the directory (README).
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).expect("cache dir");
        let config = dir.path().join("ixproxy.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n\
                 upstream: {{timeout: 3s, connect_timeout: 1s}}\n\
                 cache: {{max_bytes: 1048576, max_object_bytes: 65536, \
                 disk: {{path: {}, max_bytes: {DISK_BYTES}}}}}\n\
                 sources:\n  - name: local\n    hosts: [localhost]\n    \
                 secure_url_tokens: [tok]\n    allow_private_origins: true\n",
                cache.display()
            ),
        )
        .expect("write config");
        let mut setup = Setup {
            origin,
            envoy: None,
            config,
            cache,
            dir,
        };
        setup.restart();
        setup
    }

    /// Stops Envoy (if running, SIGTERM and its exit awaited) and starts a new one on the same
    /// config and cache directory.
    fn restart(&mut self) {
        self.envoy = None;
        self.envoy = Some(
            EnvoyGateway::start(&self.config, &[], self.dir.path())
                .unwrap_or_else(|e| panic!("envoy does not start: {e}")),
        );
    }

    fn envoy(&self) -> &EnvoyGateway {
        self.envoy.as_ref().expect("envoy running")
    }

    fn try_get(&self, path: &str) -> Result<RawResponse, String> {
        let target = sign_url("tok", &self.origin.url(path), &[], &SignOptions::default());
        send(
            self.envoy().addr(),
            &RawRequest::get("localhost", &target),
            TIMEOUT,
        )
        .map_err(|e| e.to_string())
    }

    fn get(&self, path: &str) -> RawResponse {
        let response = self.try_get(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(response.status, 200, "{response:?}");
        response
    }

    /// The entry files in the cache directory.
    fn files(&self) -> BTreeSet<PathBuf> {
        std::fs::read_dir(&self.cache)
            .expect("list cache dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("cache-"))
            })
            .collect()
    }

    /// Requests `path`, asserting a miss with the origin's body, and returns the one entry file
    /// that appears for it.
    fn fill(&self, path: &str) -> PathBuf {
        self.fill_as(path, path)
    }

    /// [`Setup::fill`] for a `path` the origin receives as `wire` (percent-encoded).
    fn fill_as(&self, path: &str, wire: &str) -> PathBuf {
        let before = self.files();
        let response = self.get(path);
        assert_eq!(response.header(CACHE_STATUS), Some(miss()), "{response:?}");
        assert_eq!(response.body_text(), body_of(wire));
        let deadline = Instant::now() + FILE_WAIT;
        loop {
            let new: Vec<PathBuf> = self.files().difference(&before).cloned().collect();
            match new.as_slice() {
                [file] => return file.clone(),
                [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => panic!("{path}: entry files {new:?} after {FILE_WAIT:?}"),
            }
        }
    }

    /// Runs `ixproxy envoy-cache-purge --cache-path <cache> ARGS`: its exit success and stdout.
    fn purge(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(ixproxy_bin())
            .arg("envoy-cache-purge")
            .arg("--cache-path")
            .arg(&self.cache)
            .args(args)
            .output()
            .expect("run ixproxy envoy-cache-purge");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// Envoy's gauge `name` for the cache directory (`cache.size_limit_bytes`, ...).
    fn gauge(&self, name: &str) -> Option<u64> {
        let stats = send(
            self.envoy().admin_addr(),
            &RawRequest::get("admin", &format!("/stats?filter=^cache\\.{name}\\.")),
            TIMEOUT,
        )
        .expect("admin answers")
        .body_text();
        let wanted = format!("cache.{name}.cache_path.{}/: ", self.cache.display());
        stats
            .lines()
            .find_map(|l| l.strip_prefix(wanted.as_str()))
            .and_then(|v| v.trim().parse().ok())
    }
}

#[test]
fn the_generated_bootstrap_validates() {
    let setup = Setup::start();
    let bootstrap = setup.dir.path().join("validate.yaml");
    let text = EnvoyGateway::bootstrap(&setup.config, &[]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&bootstrap, text).expect("write bootstrap");
    let (ok, log) = EnvoyGateway::validate(&bootstrap, &[]).expect("envoy runs");
    assert!(ok, "{log}");
}

#[test]
fn an_entry_is_stored_on_disk_survives_a_restart_and_a_purge_makes_it_a_miss() {
    let mut s = Setup::start();
    // The bound reached Envoy's store (its gauges are set once the store is up, which may be
    // just after Envoy reports ready).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut limit = s.gauge("size_limit_bytes");
    while limit != Some(DISK_BYTES) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        limit = s.gauge("size_limit_bytes");
    }
    assert_eq!(limit, Some(DISK_BYTES));
    let file = s.fill("/fresh/a.png");
    let other = s.fill("/fresh/b.png");
    let stored = s.get("/fresh/a.png");
    assert_eq!(stored.header(CACHE_STATUS), Some(hit()), "{stored:?}");

    s.restart();
    for path in ["/fresh/a.png", "/fresh/b.png"] {
        let after = s.get(path);
        assert_eq!(after.header(CACHE_STATUS), Some(hit()), "{path}: {after:?}");
        assert_eq!(after.body_text(), body_of(path));
        assert_eq!(s.origin.heads(path).len(), 1, "{path}: origin asked again");
    }

    let (ok, out) = s.purge(&["--url", &s.origin.url("/fresh/a.png")]);
    assert!(ok, "{out}");
    assert!(out.ends_with("1 file(s) removed\n"), "{out}");
    assert!(!file.exists() && other.exists(), "{out}");
    // A miss, stored again.
    s.fill("/fresh/a.png");
    assert_eq!(s.origin.heads("/fresh/a.png").len(), 2);
    let kept = s.get("/fresh/b.png");
    assert_eq!(kept.header(CACHE_STATUS), Some(hit()), "{kept:?}");
    // A query, a space and non-ASCII: the URL as signed names the file Envoy stored under the
    // percent-encoded form the origin is asked for.
    let odd = "/fresh/caf\u{e9} menu.png?w=1&t=a b";
    let wire = "/fresh/caf%C3%A9%20menu.png?w=1&t=a%20b";
    let odd_file = s.fill_as(odd, wire);
    let stored = s.get(odd);
    assert_eq!(stored.header(CACHE_STATUS), Some(hit()), "{stored:?}");
    let (ok, out) = s.purge(&["--url", &s.origin.url(odd)]);
    assert!(ok, "{out}");
    let line = format!(
        "removed {}: {}\n1 file(s) removed\n",
        odd_file.display(),
        s.origin.url(wire)
    );
    assert_eq!(out, line);
    assert!(!odd_file.exists());
    s.fill_as(odd, wire);
    assert_eq!(s.origin.heads(wire).len(), 2);
    // A URL with nothing stored: nothing removed, not an error.
    let (ok, out) = s.purge(&["--url", &s.origin.url("/fresh/never.png")]);
    assert!(ok && out.ends_with("0 file(s) removed\n"), "{out}");
}

#[test]
fn a_damaged_entry_is_served_or_crashes_envoy_unless_swept() {
    // The crash below must leave no core file: with a plain `core_pattern` (`core`) it would
    // land in Envoy's working directory, which is this test's (the `tests` package directory,
    // not the temporary one), so the limit is 0 (Envoy inherits it when it is started). A piped
    // `core_pattern` hands the crash to the system's collector whatever the limit.
    let (_, hard) = getrlimit(Resource::RLIMIT_CORE).expect("core limit");
    setrlimit(Resource::RLIMIT_CORE, 0, hard).expect("no core files");
    let s = Setup::start();
    // Bytes changed in place (the last byte of the body): served as they are, a hit.
    let changed = s.fill("/fresh/changed.png");
    let mut bytes = std::fs::read(&changed).expect("read entry");
    let last = bytes.len() - 1;
    bytes[last] = b'#';
    std::fs::write(&changed, &bytes).expect("rewrite entry");
    let served = s.get("/fresh/changed.png");
    assert_eq!(served.header(CACHE_STATUS), Some(hit()), "{served:?}");
    assert!(served.body_text().ends_with('#'), "{served:?}");

    // Truncated, then swept: removed (and only it), and the next request is a miss.
    let cut = s.fill("/fresh/cut.png");
    truncate(&cut, 16);
    let (ok, out) = s.purge(&["--damaged"]);
    assert!(ok, "{out}");
    assert!(out.ends_with("1 file(s) removed\n"), "{out}");
    assert!(!cut.exists() && changed.exists(), "{out}");
    // A miss, stored again (waited for, so that the next fill sees only its own file).
    let cut = s.fill("/fresh/cut.png");
    // Truncated, then purged by URL: its key is at the start, so it is still found.
    truncate(&cut, 16);
    let (ok, out) = s.purge(&["--url", &s.origin.url("/fresh/cut.png")]);
    assert!(ok && out.ends_with("1 file(s) removed\n"), "{out}");
    assert!(!cut.exists(), "{out}");
    s.fill("/fresh/cut.png");
    // Cut inside its header, whose URL it is cannot be told: a purge by URL says so and fails.
    let head_only = s.cache.join("cache-head-only");
    let bytes = std::fs::read(&changed).expect("read entry");
    std::fs::write(&head_only, &bytes[..30]).expect("write entry");
    let (ok, out) = s.purge(&["--url", &s.origin.url("/fresh/other.png")]);
    assert!(!ok, "{out}");
    assert!(
        out.ends_with("0 file(s) removed, 1 not judged (may be the URL's)\n"),
        "{out}"
    );
    let (ok, out) = s.purge(&["--damaged"]);
    assert!(ok && out.ends_with("1 file(s) removed\n"), "{out}");
    assert!(!head_only.exists(), "{out}");

    // Truncated and requested: Envoy 1.40 crashes.
    let crash = s.fill("/fresh/crash.png");
    truncate(&crash, 16);
    let answer = s.try_get("/fresh/crash.png");
    assert!(answer.is_err(), "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.envoy().log().contains("Caught Segmentation fault") {
        assert!(Instant::now() < deadline, "no crash: {}", s.envoy().log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Cuts `n` bytes off the end of `file`.
fn truncate(file: &Path, n: u64) {
    let handle = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open entry");
    let len = handle.metadata().expect("entry metadata").len();
    handle.set_len(len - n).expect("truncate entry");
}
