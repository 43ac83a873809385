//! The disk tier of the native response cache (README: Caching, Disk tier), on the real binary
//! in front of the recording origin, with a memory tier far smaller than what goes through:
//! an answer the memory tier evicted is a hit from disk; an answer larger than the memory tier
//! is stored on disk only; entries survive a SIGTERM stop and a new start on the same
//! directory (the origin is not asked again); a purge removes the disk entry and stays purged
//! after a restart; bytes overwritten in the tier's files, or a file cut short, make a miss
//! that refetches (never a damaged answer); a second process on the same directory serves from
//! memory until the first one leaves, then opens the tier without damaging it; the metrics
//! say which tier answered.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::origin::{pattern, RecordingOrigin};
use ixproxy_conformance::ServeProcess;
use ixproxy_core::sign::{sign_url, SignOptions};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(15);
const TOKEN: &str = "tok-disk";
/// The memory tier: room for three of the 20 kB answers below.
const MEMORY_BYTES: u64 = 64 * 1024;
/// Larger than the memory tier (such answers go to disk only).
const MAX_OBJECT_BYTES: u64 = 256 * 1024;
/// The smallest tier the config accepts for that object size: 8 blocks of 4 MiB.
const DISK_BYTES: u64 = 32 * 1024 * 1024;

fn config(dir: &Path) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
server: {{grace_period: 0s}}
upstream:
  connect_timeout: 2s
  timeout: 8s
cache:
  max_bytes: {MEMORY_BYTES}
  max_object_bytes: {MAX_OBJECT_BYTES}
  disk: {{path: '{}', max_bytes: {DISK_BYTES}}}
sources:
  - name: assets
    hosts: [assets.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
",
        dir.display()
    )
}

struct Fixture {
    origin: RecordingOrigin,
    /// Holds the tier's directory and the processes' configs and logs.
    work: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            origin: RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}")),
            work: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn tier(&self) -> PathBuf {
        self.work.path().join("tier")
    }

    fn start(&self) -> ServeProcess {
        let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
        ServeProcess::start(bin, &config(&self.tier()), &[], self.work.path())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The upgrade socket of the processes started with [`Fixture::start_upgradable`].
    fn sock(&self) -> String {
        self.work
            .path()
            .join("upgrade.sock")
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    /// A process with an upgrade socket (an upgrade can take its sockets over).
    fn start_upgradable(&self, config: &str) -> ServeProcess {
        let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
        let sock = self.sock();
        ServeProcess::start_with_args(
            bin,
            config,
            &["--upgrade-sock", &sock],
            &[],
            self.work.path(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.origin.http)
    }

    /// How many times the origin was asked for `path` (its whole target).
    fn fetched(&self, path: &str) -> usize {
        self.origin
            .requests()
            .iter()
            .filter(|r| r.target == path)
            .count()
    }

    /// The tier's block files (foyer's `foyer-storage-direct-fs-*`).
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.tier())
            .expect("tier directory")
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("foyer-storage"))
            })
            .collect();
        files.sort();
        files
    }

    /// The file holding `marker` and where it first occurs in it.
    fn find(&self, marker: &[u8]) -> Option<(PathBuf, usize)> {
        self.files().into_iter().find_map(|file| {
            let bytes = std::fs::read(&file).ok()?;
            let at = bytes.windows(marker.len()).position(|w| w == marker)?;
            Some((file, at))
        })
    }
}

fn get(serve: &ServeProcess, url: &str) -> RawResponse {
    let target = sign_url(TOKEN, url, &[], &SignOptions::default());
    send(
        serve.listen(),
        &RawRequest::get("assets.test", &target),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn cache_status(r: &RawResponse) -> Option<&str> {
    r.header("cache-status")
}

fn requests(serve: &ServeProcess, result: &str, tier: &str) -> u64 {
    serve
        .metric(&format!(
            "ixproxy_cache_requests_total{{result=\"{result}\",tier=\"{tier}\"}}"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls (every 20 ms, at most 5 s) until `check` holds; requests are counted just after their
/// response, and the disk tier writes in the background.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never: {what}");
}

/// Fills `url` (a miss) and waits until its entry is on disk (`marker` in the tier's files).
fn fill(fixture: &Fixture, serve: &ServeProcess, url: &str, marker: &[u8]) -> RawResponse {
    let r = get(serve, url);
    assert_eq!(
        (r.status, cache_status(&r)),
        (200, Some("ixproxy; fwd=miss"))
    );
    eventually("the entry is written to disk", || {
        fixture.find(marker).is_some()
    });
    r
}

fn purge(serve: &ServeProcess, url: &str) -> String {
    let encoded: String = url
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut req = RawRequest::get("admin", &format!("/cache/purge?url={encoded}"));
    req.method = "POST".to_owned();
    send(serve.admin(), &req, TIMEOUT)
        .unwrap_or_else(|e| panic!("purge: {e}"))
        .body_text()
}

fn stop(serve: ServeProcess) {
    let (status, _) = serve
        .stop(Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status}");
}

#[test]
fn evicted_and_oversized_answers_are_hits_from_disk_and_survive_a_restart_and_purges_stick() {
    let fixture = Fixture::new();
    let serve = fixture.start();
    let path = |name: &str| format!("/fresh/3600/20000?{name}");
    // Five 20 kB answers through a 64 kB memory tier: the first ones are evicted from memory.
    for name in ["a", "b", "c", "d", "e"] {
        let r = get(&serve, &fixture.url(&path(name)));
        assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"), "{name}");
    }
    // "a" is no longer in memory: a hit from disk (one queued for writing is served too).
    let r = get(&serve, &fixture.url(&path("a")));
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    assert_eq!(r.body, pattern(20000));
    let r = get(&serve, &fixture.url(&path("b")));
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    assert_eq!(r.body, pattern(20000));
    assert_eq!(fixture.fetched(&path("a")), 1);
    assert_eq!(fixture.fetched(&path("b")), 1);
    eventually("hits from disk are counted", || {
        requests(&serve, "hit", "disk") >= 2
    });
    // "b" is in memory again (promoted): a hit from memory.
    let before = requests(&serve, "hit", "memory");
    assert_eq!(
        cache_status(&get(&serve, &fixture.url(&path("b")))),
        Some("ixproxy; hit")
    );
    eventually("a hit from memory", || {
        requests(&serve, "hit", "memory") == before + 1
    });
    assert_eq!(requests(&serve, "miss", "none"), 5);

    // An answer larger than the memory tier: stored on disk only, then a hit from there.
    let big = "/fresh/3600/200000?big";
    let r = get(&serve, &fixture.url(big));
    assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"));
    let r = get(&serve, &fixture.url(big));
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    assert_eq!(r.body, pattern(200_000));
    assert_eq!(fixture.fetched(big), 1);
    eventually("the disk tier's size is reported", || {
        serve
            .metric("ixproxy_cache_bytes{tier=\"disk\"}")
            .unwrap_or(0)
            >= 200_000
    });
    let memory = serve
        .metric("ixproxy_cache_bytes{tier=\"memory\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(memory <= MEMORY_BYTES, "{memory}");

    // "c" is purged: memory evicted it, the disk entry goes (and stays gone after the restart).
    assert_eq!(purge(&serve, &fixture.url(&path("c"))), "purged 1\n");
    stop(serve);

    // A new process on the same directory: what was stored is served, the purge stayed.
    let serve = fixture.start();
    for name in ["a", "b", "d", "e"] {
        let r = get(&serve, &fixture.url(&path(name)));
        assert_eq!(
            (r.status, cache_status(&r)),
            (200, Some("ixproxy; hit")),
            "{name} after the restart"
        );
        assert_eq!(r.body, pattern(20000));
        assert_eq!(fixture.fetched(&path(name)), 1, "{name}");
    }
    let r = get(&serve, &fixture.url(big));
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    assert_eq!(fixture.fetched(big), 1);
    let r = get(&serve, &fixture.url(&path("c")));
    assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"), "purged");
    assert_eq!(fixture.fetched(&path("c")), 2);
    eventually("the hits are counted by tier", || {
        requests(&serve, "hit", "disk") >= 4 && requests(&serve, "miss", "none") == 1
    });
}

#[test]
fn overwritten_or_truncated_entries_are_misses_that_refetch() {
    let fixture = Fixture::new();
    let serve = fixture.start();
    let damaged = "/asset/damaged-entry-marker-7f3a";
    let cut = "/asset/truncated-entry-marker-91c2";
    let good = fill(&fixture, &serve, &fixture.url(damaged), damaged.as_bytes());
    fill(&fixture, &serve, &fixture.url(cut), cut.as_bytes());
    stop(serve);

    // Bytes of the first entry overwritten wherever its path appears (body and stored head).
    let (file, _) = fixture.find(damaged.as_bytes()).expect("stored");
    let mut bytes = std::fs::read(&file).expect("read");
    let positions: Vec<usize> = bytes
        .windows(damaged.len())
        .enumerate()
        .filter(|(_, w)| *w == damaged.as_bytes())
        .map(|(at, _)| at)
        .collect();
    for at in positions {
        bytes[at..at + damaged.len()].copy_from_slice(&vec![b'X'; damaged.len()]);
    }
    std::fs::write(&file, &bytes).expect("write");
    // The file of the second entry cut just after the start of its path.
    let (file, at) = fixture.find(cut.as_bytes()).expect("stored");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len((at + 4) as u64))
        .expect("truncate");

    let serve = fixture.start();
    for (path, before) in [(damaged, good.body.clone()), (cut, Vec::new())] {
        let r = get(&serve, &fixture.url(path));
        assert_eq!(
            (r.status, cache_status(&r)),
            (200, Some("ixproxy; fwd=miss")),
            "{path}: a damaged entry is a miss"
        );
        assert_eq!(r.body_text(), format!("asset {path}"));
        if !before.is_empty() {
            assert_eq!(r.body, before);
        }
        assert_eq!(fixture.fetched(path), 2, "{path} refetched");
        // The refetched answer is stored again: the next request is a hit.
        let r = get(&serve, &fixture.url(path));
        assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
        assert_eq!(r.body_text(), format!("asset {path}"));
    }
}

#[test]
fn a_second_process_on_the_directory_waits_for_it_and_damages_nothing() {
    let fixture = Fixture::new();
    let first = fixture.start();
    let early = "/asset/written-by-the-first-process";
    fill(&fixture, &first, &fixture.url(early), early.as_bytes());
    // The second process finds the directory locked: it serves from memory only.
    let second = fixture.start();
    eventually("the second process says the directory is in use", || {
        second.log().contains("is in use by another process")
    });
    let meanwhile = "/asset/filled-while-locked-out";
    let r = get(&second, &fixture.url(meanwhile));
    assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"));
    let r = get(&second, &fixture.url(early));
    assert_eq!(
        cache_status(&r),
        Some("ixproxy; fwd=miss"),
        "no disk tier yet in the second process"
    );
    assert!(fixture.find(meanwhile.as_bytes()).is_none(), "not written");
    // Once the first one has stopped, the second opens the tier.
    stop(first);
    eventually("the second process opens the tier", || {
        second.log().contains("opened (its previous holder left)")
    });
    let late = "/asset/written-by-the-second-process";
    fill(&fixture, &second, &fixture.url(late), late.as_bytes());
    stop(second);
    let third = fixture.start();
    for path in [early, late] {
        let r = get(&third, &fixture.url(path));
        assert_eq!(
            (r.status, cache_status(&r)),
            (200, Some("ixproxy; hit")),
            "{path}"
        );
        assert_eq!(r.body_text(), format!("asset {path}"));
    }
}

#[test]
fn a_304_refresh_reaches_the_disk_tier_and_survives_a_restart() {
    let fixture = Fixture::new();
    let serve = fixture.start();
    // Fresh for 3 s, larger than the memory tier: on disk only.
    let url = fixture.url("/fresh/3/200000?refresh");
    assert_eq!(cache_status(&get(&serve, &url)), Some("ixproxy; fwd=miss"));
    // Hits from disk until it is stale; then the origin's 304 refreshes it (every 20 ms, at
    // most 10 s).
    let mut refreshed = false;
    for _ in 0..500 {
        let r = get(&serve, &url);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, pattern(200_000));
        if cache_status(&r) == Some("ixproxy; fwd=stale") {
            refreshed = true;
            break;
        }
        assert_eq!(cache_status(&r), Some("ixproxy; hit"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refreshed, "never revalidated");
    eventually("the revalidation is counted on the disk tier", || {
        requests(&serve, "revalidated", "disk") == 1
    });
    stop(serve);
    // The refreshed freshness was written to disk: fresh after the restart.
    let serve = fixture.start();
    let r = get(&serve, &url);
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    assert_eq!(r.body, pattern(200_000));
    assert_eq!(
        fixture.fetched("/fresh/3/200000?refresh"),
        2,
        "one fill, one 304"
    );
}

#[test]
fn an_upgrade_hands_the_tier_over_once_the_old_process_has_left() {
    let fixture = Fixture::new();
    let old_config = config(&fixture.tier());
    let old = fixture.start_upgradable(&old_config);
    let before = "/asset/stored-before-the-upgrade";
    fill(&fixture, &old, &fixture.url(before), before.as_bytes());
    let new_config = old_config.replacen(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n",
        &format!("listen: {}\nadmin_listen: {}\n", old.listen(), old.admin()),
        1,
    );
    let starting = {
        let fixture_dir = fixture.work.path().to_path_buf();
        let sock = fixture.sock();
        let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy")).to_path_buf();
        std::thread::spawn(move || {
            ServeProcess::start_with_args(
                &bin,
                &new_config,
                &["-u", "--upgrade-sock", &sock],
                &[],
                &fixture_dir,
            )
            .map_err(|e| e.to_string())
        })
    };
    eventually("the new process waits on the upgrade socket", || {
        Path::new(&fixture.sock()).exists()
    });
    old.signal(Signal::SIGQUIT).expect("SIGQUIT");
    let mut old = old;
    let new = starting
        .join()
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{e}"));
    // The old process drains and closes the tier; the new one then opens it.
    let exit = old
        .wait_exit(Duration::from_secs(15))
        .expect("wait")
        .unwrap_or_else(|| panic!("the old process did not exit:\n{}", old.log_tail()));
    assert!(exit.success(), "{exit}");
    eventually("the new process opens the tier", || {
        new.log().contains("opened (its previous holder left)")
    });
    let r = get(&new, &fixture.url(before));
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    assert_eq!(r.body_text(), format!("asset {before}"));
    assert_eq!(fixture.fetched(before), 1);
}
