//! The disk tier of the native response cache (README: Caching, Disk tier), on the real binary
//! in front of the recording origin, with a memory tier far smaller than what goes through:
//! an answer the memory tier evicted is a hit from disk; an answer larger than the memory tier
//! is stored on disk only; entries survive a SIGTERM stop and a new start on the same
//! directory (the origin is not asked again); a purge removes the disk entry and stays purged
//! after a restart; bytes overwritten in the tier's files, or a file cut short, make a miss
//! that refetches (never a damaged answer); a second process on the same directory serves from
//! memory until the first one leaves, then opens the tier without damaging it; the metrics
//! say which tier answered; twice the tier written stays within `cache.disk.max_bytes`, the
//! oldest entries gone and the newest kept; imgix's purge API removes an entry held on disk.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ixproxy_conformance::client::{send, RawRequest, RawResponse};
use ixproxy_conformance::origin::{pattern, RecordingOrigin};
use ixproxy_conformance::ServeProcess;
use ixproxy_core::sign::{encode_uri_component, sign_url, SignOptions};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(15);
const TOKEN: &str = "tok-disk";
/// The memory tier: room for three of the 20 kB answers below.
const MEMORY_BYTES: u64 = 64 * 1024;
/// Larger than the memory tier (such answers go to disk only).
const MAX_OBJECT_BYTES: u64 = 256 * 1024;
/// The smallest tier the config accepts for that object size: 8 blocks of 4 MiB and the
/// tombstone log (33 pages).
const DISK_BYTES: u64 = 32 * 1024 * 1024 + 33 * 4096;

/// Answers near the block size: 6 MB bodies in the 7 MiB blocks of a 6 MiB
/// `max_object_bytes` (so four disk hits spend the budget of four blocks).
const BIG_BODY: usize = 6_000_000;
const BIG_OBJECT_BYTES: u64 = 6 * 1024 * 1024;
/// Eight blocks of 7 MiB and the tombstone log.
const BIG_DISK_BYTES: u64 = 64 * 1024 * 1024;

fn config(dir: &Path) -> String {
    config_sized(dir, MAX_OBJECT_BYTES, DISK_BYTES)
}

fn config_sized(dir: &Path, max_object_bytes: u64, disk_bytes: u64) -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
server: {{grace_period: 0s}}
upstream:
  connect_timeout: 2s
  timeout: 8s
cache:
  max_bytes: {MEMORY_BYTES}
  max_object_bytes: {max_object_bytes}
  disk: {{path: '{}', max_bytes: {disk_bytes}}}
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
        self.start_with(&config(&self.tier()))
    }

    fn start_with(&self, config: &str) -> ServeProcess {
        let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
        ServeProcess::start(bin, config, &[], self.work.path()).unwrap_or_else(|e| panic!("{e}"))
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

/// A client that sends its request and reads only the response head, with a receive buffer of
/// a few kB: the hit serving it stays in flight until the stream is dropped. Returns the
/// response's `Cache-Status` and the stream.
fn stalled_get(serve: &ServeProcess, url: &str) -> (String, TcpStream) {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let SocketAddr::V4(addr) = serve.listen() else {
        panic!("an IPv4 listener");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    // Before connecting: the window the client offers stays that small.
    setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    connect(fd.as_raw_fd(), &SockaddrIn::from(addr)).expect("connect");
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let target = sign_url(TOKEN, url, &[], &SignOptions::default());
    write!(stream, "GET {target} HTTP/1.1\r\nHost: assets.test\r\n\r\n").expect("send");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(head.len() < 64 * 1024, "no response head");
        let n = stream.read(&mut buf).expect("read the head");
        assert_ne!(n, 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .lines()
        .find_map(|l| l.strip_prefix("cache-status: "))
        .unwrap_or("none")
        .trim()
        .to_owned();
    (status, stream)
}

/// The resident memory of a process (`VmRSS`), in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
        .expect("VmRSS")
        * 1024
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
    let encoded = encode_uri_component(url);
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
fn a_second_process_on_the_directory_waits_for_it_keeps_its_purges_and_damages_nothing() {
    let fixture = Fixture::new();
    let first = fixture.start();
    let early = "/asset/written-by-the-first-process";
    fill(&fixture, &first, &fixture.url(early), early.as_bytes());
    let purged = "/asset/purged-while-locked-out";
    fill(&fixture, &first, &fixture.url(purged), purged.as_bytes());
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
    // A purge while the tier is not open yet: kept, and applied when it opens.
    assert_eq!(purge(&second, &fixture.url(purged)), "purged 0\n");
    // Once the first one has stopped, the second opens the tier.
    stop(first);
    eventually("the second process opens the tier", || {
        second.log().contains("opened (its previous holder left)")
    });
    let r = get(&second, &fixture.url(purged));
    assert_eq!(
        cache_status(&r),
        Some("ixproxy; fwd=miss"),
        "purged on disk"
    );
    assert_eq!(fixture.fetched(purged), 2);
    let late = "/asset/written-by-the-second-process";
    fill(&fixture, &second, &fixture.url(late), late.as_bytes());
    stop(second);
    let third = fixture.start();
    // What the second process stored while it was locked out stayed in its memory.
    let r = get(&third, &fixture.url(meanwhile));
    assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"), "not written");
    for path in [early, late, purged] {
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

#[test]
fn disk_hits_of_one_key_share_one_copy_and_a_budget_bounds_what_hits_hold() {
    let fixture = Fixture::new();
    let serve = fixture.start_with(&config_sized(
        &fixture.tier(),
        BIG_OBJECT_BYTES,
        BIG_DISK_BYTES,
    ));
    let paths: Vec<String> = (0..5)
        .map(|i| format!("/fresh/3600/{BIG_BODY}?held={i}"))
        .collect();
    // Five answers far larger than the memory tier: on disk only.
    for path in &paths {
        let r = get(&serve, &fixture.url(path));
        assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"), "{path}");
        // Stored (a write dropped under the burst is filled again).
        eventually("a hit from disk", || {
            cache_status(&get(&serve, &fixture.url(path))) == Some("ixproxy; hit")
        });
    }
    let before = rss(serve.pid());
    // Twelve clients stalled on one key: one read, one copy of the body.
    let mut held = Vec::new();
    for _ in 0..12 {
        let (status, stream) = stalled_get(&serve, &fixture.url(&paths[0]));
        assert_eq!(status, "ixproxy; hit");
        held.push(stream);
    }
    let grown = rss(serve.pid()).saturating_sub(before);
    assert!(
        grown < 6 * BIG_BODY,
        "{grown} bytes more for twelve hits of one {BIG_BODY}-byte answer"
    );
    // Three more keys: with the first, four reads of most of a block each.
    for path in &paths[1..4] {
        let (status, stream) = stalled_get(&serve, &fixture.url(path));
        assert_eq!(status, "ixproxy; hit", "{path}");
        held.push(stream);
    }
    // The budget of four blocks is spent: the fifth key is a miss, answered by the origin.
    let r = get(&serve, &fixture.url(&paths[4]));
    assert_eq!(
        (r.status, cache_status(&r)),
        (200, Some("ixproxy; fwd=miss"))
    );
    assert_eq!(r.body.len(), BIG_BODY);
    assert!(fixture.fetched(&paths[4]) >= 2);
    // Once those hits are gone, so is what they held.
    drop(held);
    eventually("a hit from disk again", || {
        cache_status(&get(&serve, &fixture.url(&paths[4]))) == Some("ixproxy; hit")
    });
}

/// The space the tier's files take on disk (whole allocated blocks, as `du` counts them).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .expect("tier directory")
        .map(|e| e.expect("entry").metadata().expect("metadata"))
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn twice_the_tier_written_stays_within_max_bytes_and_keeps_the_newest() {
    let fixture = Fixture::new();
    // 1 MB answers, on disk only (the memory tier is 64 KiB), in 4 MiB blocks: 4 per block.
    let serve = fixture.start_with(&config_sized(&fixture.tier(), 1 << 20, DISK_BYTES));
    let path = |n: usize| format!("/fresh/3600/1000000?n{n}");
    let count = (2 * DISK_BYTES / 1_000_000) as usize;
    for n in 0..count {
        let r = get(&serve, &fixture.url(&path(n)));
        assert_eq!(
            (r.status, cache_status(&r)),
            (200, Some("ixproxy; fwd=miss"))
        );
        let taken = allocated(&fixture.tier());
        assert!(taken <= DISK_BYTES, "{taken} bytes after {n} answers");
    }
    assert_eq!(
        serve
            .metric("ixproxy_cache_disk_writes_dropped_total")
            .unwrap_or_else(|e| panic!("{e}")),
        0,
        "one fill at a time drops no write: every answer was written"
    );
    // Sampled every 2 s: once it counts most of the tier, it is still within it.
    eventually("the tier's size is sampled after the writes", || {
        serve
            .metric("ixproxy_cache_bytes{tier=\"disk\"}")
            .unwrap_or(0)
            >= DISK_BYTES / 2
    });
    let sampled = serve
        .metric("ixproxy_cache_bytes{tier=\"disk\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sampled <= DISK_BYTES, "{sampled}");
    // The newest are hits from disk; then the oldest, whose blocks were reclaimed, are misses.
    let hits = requests(&serve, "hit", "disk");
    for n in count - 3..count {
        let r = get(&serve, &fixture.url(&path(n)));
        assert_eq!(
            (r.status, cache_status(&r)),
            (200, Some("ixproxy; hit")),
            "{n}"
        );
        assert_eq!(r.body.len(), 1_000_000);
    }
    eventually("counted as disk hits", || {
        requests(&serve, "hit", "disk") == hits + 3
    });
    for n in 0..4 {
        let r = get(&serve, &fixture.url(&path(n)));
        assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"), "{n}");
        assert_eq!(fixture.fetched(&path(n)), 2, "{n}");
    }
    let taken = allocated(&fixture.tier());
    assert!(taken <= DISK_BYTES, "{taken}");
}

#[test]
fn imgix_s_purge_api_removes_an_entry_held_only_on_disk() {
    const KEY: &str = "ak_disk-purge-0123456789";
    let fixture = Fixture::new();
    let serve = fixture.start_with(&format!(
        "purge_api_keys: [{KEY}]\n{}",
        config(&fixture.tier())
    ));
    // Larger than the memory tier: on disk only.
    let url = fixture.url("/fresh/3600/200000?purged-by-api");
    let before = allocated(&fixture.tier());
    let r = get(&serve, &url);
    assert_eq!(cache_status(&r), Some("ixproxy; fwd=miss"));
    eventually("the entry is written to disk", || {
        allocated(&fixture.tier()) >= before + 200_000
    });
    let r = get(&serve, &url);
    assert_eq!((r.status, cache_status(&r)), (200, Some("ixproxy; hit")));
    // What imgix's client sends: the signed path (without its query) on the source's host.
    let signed = sign_url(TOKEN, &url, &[], &SignOptions::default());
    let path = signed.split('?').next().unwrap_or_default();
    let body = format!(
        r#"{{"data":{{"attributes":{{"url":"https://assets.test{path}"}},"type":"purges"}}}}"#
    );
    let req = RawRequest {
        method: "POST".to_owned(),
        target: "/api/v1/purge".to_owned(),
        host: "api.imgix.com".to_owned(),
        headers: vec![
            ("Authorization".to_owned(), format!("Bearer {KEY}")),
            (
                "Content-Type".to_owned(),
                "application/vnd.api+json".to_owned(),
            ),
            ("Content-Length".to_owned(), body.len().to_string()),
        ],
        body: body.into_bytes(),
    };
    let response = send(serve.admin(), &req, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status, 200, "{}", response.body_text());
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("json");
    assert_eq!(json["meta"]["purged"], 1, "{json}");
    let r = get(&serve, &url);
    assert_eq!(
        cache_status(&r),
        Some("ixproxy; fwd=miss"),
        "purged from disk"
    );
    assert_eq!(r.body, pattern(200_000));
    assert_eq!(fixture.fetched("/fresh/3600/200000?purged-by-api"), 2);
}
