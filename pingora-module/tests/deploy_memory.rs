//! The shipped deployment files leave clients no way past the memory limit they set (README:
//! Limits): for each deployment with a memory limit, read from the files themselves,
//!
//! limit ≥ base + `cache.max_bytes` + cache fills in flight + the disk tier's buffers and
//! index + `max_connections` × the cost of one connection,
//!
//! where a fill in flight holds up to `cache.max_object_bytes` outside `max_bytes` and at most
//! `max_inflight_per_source` of them run per source (so with the cache on that limit must be
//! set), the disk tier (`cache.disk`) holds what `cache_disk_memory.rs` says (its writes, the
//! budget of bytes disk hits hold, twice: a read in flight holds its buffer and the decoded
//! entry, and foyer's index of up to `cache.disk.max_bytes / 4096` entries), and the cost of a
//! connection is the larger measured figure of the README (before and after its first
//! request; TLS when the config serves HTTPS). Fails naming the file and the numbers when a
//! change to any of them breaks the inequality.

use std::path::{Path, PathBuf};

use ixproxy_core::config::{RawConfig, SecretResolver};
use ixproxy_core::limits::max_request_head_bytes;
use ixproxy_core::Config;

const MIB: u64 = 1024 * 1024;
/// The process with its threads, TLS and DNS state, metrics and the allocator's own reserve,
/// before any client connects: measured 22 MiB RSS after a warm-up (README: Limits), taken
/// with room to spare.
const BASE_BYTES: u64 = 48 * MIB;
/// One plain HTTP/1 client connection, the larger of before and after its first request as
/// measured by `bench/conn_memory.py` (15 to 16 KB, README: Limits), doubled: the allocator keeps
/// what closed connections freed and does not always reuse it for the next ones.
const CONNECTION_BYTES: u64 = 32 * 1024;
/// The same over TLS (measured 27 to 32 KB, rustls' state included), doubled.
const TLS_CONNECTION_BYTES: u64 = 64 * 1024;

/// The figures the disk tier is built with (the same file).
#[path = "../src/serve/cache_disk_memory.rs"]
mod disk_memory;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Any secret resolves to a value every rule accepts: only the config's limits matter here.
struct Placeholders;

impl SecretResolver for Placeholders {
    fn env(&self, _name: &str) -> Result<String, String> {
        Ok("placeholder-secret-0123456789".to_owned())
    }
    fn file(&self, _path: &str) -> Result<String, String> {
        Ok("placeholder-secret-0123456789".to_owned())
    }
}

fn config(yaml: &str, what: &str) -> Config {
    RawConfig::from_yaml(yaml)
        .and_then(|raw| raw.validate(&Placeholders))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `text` in bytes: a number with at most one of the `units` suffixes.
fn size(text: &str, units: &[(&str, u64)]) -> u64 {
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((text, 1));
    number
        .trim()
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("size {text}: {e}"))
        * unit
}

/// A Kubernetes quantity (`384Mi`, `1Gi`, `400M`, `268435456`) in bytes.
fn quantity(text: &str) -> u64 {
    size(
        text,
        &[
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("k", 1000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
        ],
    )
}

/// A systemd size (`MemoryMax=256M`: K, M, G are powers of 1024).
fn systemd_size(text: &str) -> u64 {
    size(text, &[("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)])
}

/// What `config` may hold at most, by the inequality above, with its terms for the message.
fn worst_case(config: &Config, what: &str) -> (u64, String) {
    // A connection may also hold a request head still being sent, up to the head limit.
    let head = max_request_head_bytes(config.sources.limits()) as u64;
    let per_connection = head
        + if config.operating.tls.is_some() {
            TLS_CONNECTION_BYTES
        } else {
            CONNECTION_BYTES
        };
    let connections = config.client.max_connections as u64 * per_connection;
    let (cache, fills) = match &config.cache {
        None => (0, 0),
        Some(cache) => {
            let per_source = u64::from(config.sources.limits().max_inflight_per_source);
            assert_ne!(
                per_source, 0,
                "{what}: with the cache on, limits.max_inflight_per_source bounds the fills in \
                 flight (each up to cache.max_object_bytes outside max_bytes); 0 = unbounded"
            );
            let sources = config.sources.len() as u64;
            (
                cache.max_bytes,
                sources * per_source * cache.max_object_bytes,
            )
        }
    };
    let disk = config
        .cache
        .as_ref()
        .and_then(|cache| cache.disk.as_ref())
        .map_or(0, |disk| {
            disk_memory::memory_bytes(disk.block_bytes, disk.max_bytes)
        });
    let total = BASE_BYTES + cache + fills + disk + connections;
    let terms = format!(
        "base {} MiB + cache {} MiB + fills {} MiB + disk tier {} MiB + {} connections × {} B \
         = {} MiB",
        BASE_BYTES / MIB,
        cache / MIB,
        fills / MIB,
        disk / MIB,
        config.client.max_connections,
        per_connection,
        total / MIB
    );
    (total, terms)
}

#[test]
fn the_kubernetes_memory_limit_holds_the_configmaps_worst_case() {
    let statefulset: serde_yaml::Value =
        serde_yaml::from_str(&read(&deploy().join("kubernetes/statefulset.yaml"))).expect("yaml");
    let containers = statefulset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let gateway = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("ixproxy"))
        .expect("the ixproxy container");
    let limit = quantity(
        gateway["resources"]["limits"]["memory"]
            .as_str()
            .expect("resources.limits.memory"),
    );
    let configmap: serde_yaml::Value =
        serde_yaml::from_str(&read(&deploy().join("kubernetes/configmap.yaml"))).expect("yaml");
    let embedded = configmap["data"]["ixproxy.yaml"]
        .as_str()
        .expect("data: ixproxy.yaml");
    let config = config(embedded, "kubernetes/configmap.yaml");
    let (worst, terms) = worst_case(&config, "kubernetes/configmap.yaml");
    assert!(
        worst <= limit,
        "kubernetes/statefulset.yaml memory limit {} MiB < {terms}",
        limit / MIB
    );
}

#[test]
fn the_systemd_memory_limit_holds_its_configs_worst_case() {
    let unit = read(&deploy().join("systemd/ixproxy.service"));
    let limit = unit
        .lines()
        .find_map(|line| line.trim().strip_prefix("MemoryMax="))
        .map(systemd_size)
        .expect("MemoryMax= in systemd/ixproxy.service");
    let config = config(
        &read(&deploy().join("systemd/ixproxy.yaml")),
        "systemd/ixproxy.yaml",
    );
    let (worst, terms) = worst_case(&config, "systemd/ixproxy.yaml");
    assert!(
        worst <= limit,
        "systemd/ixproxy.service MemoryMax {} MiB < {terms}",
        limit / MIB
    );
}

#[test]
fn sizes_are_read_as_kubernetes_and_systemd_mean_them() {
    assert_eq!(quantity("384Mi"), 384 * MIB);
    assert_eq!(quantity("1Gi"), 1024 * MIB);
    assert_eq!(quantity("400M"), 400_000_000);
    assert_eq!(quantity("268435456"), 256 * MIB);
    assert_eq!(systemd_size("256M"), 256 * MIB);
    assert_eq!(systemd_size("1G"), 1024 * MIB);
}

#[test]
fn a_disk_tier_adds_its_buffers_and_reads_in_blocks_and_its_index() {
    let yaml = |disk: &str| {
        format!(
            "limits: {{max_inflight_per_source: 4}}\ncache: {{max_bytes: 67108864, \
             max_object_bytes: 8388608{disk}}}\nsources:\n  - {{name: a, hosts: [a.test], \
             secure_url_tokens: [t0123456789abcdef]}}\n"
        )
    };
    let without = config(&yaml(""), "memory only");
    let with = config(
        &yaml(", disk: {path: /var/cache/ixproxy, max_bytes: 10737418240}"),
        "with a disk tier",
    );
    let block = with
        .cache
        .as_ref()
        .and_then(|c| c.disk.as_ref())
        .expect("disk")
        .block_bytes;
    assert_eq!(block, 9 * MIB, "8 MiB objects and their heads");
    let (a, _) = worst_case(&without, "memory only");
    let (b, terms) = worst_case(&with, "with a disk tier");
    let blocks = disk_memory::WRITE_BLOCKS + 2 * disk_memory::HELD_BLOCKS;
    assert_eq!(blocks, 13, "writes 5 blocks, held reads 4 blocks twice");
    // foyer's index: one entry per 4 KiB page of the capacity at most.
    let index = disk_memory::index_bytes(10 << 30);
    assert_eq!(index, (10 << 30) / 4096 * 192, "{terms}");
    assert_eq!(b - a, blocks * block + index, "{terms}");
    assert!(terms.contains("disk tier 597 MiB"), "{terms}");
}
