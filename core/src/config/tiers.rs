//! `cache.disk` and `cache.peers` (SPEC §16): the response cache's second tier on disk and the
//! fleet a purge reaches, validated.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::fleet::MAX_PEERS;

/// `cache.disk:` (serde layer): the second, on-disk tier of the response cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheDisk {
    /// The directory holding the tier's files (created if missing; one process at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The most bytes the tier's files may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// `cache.peers:` (serde layer): the other instances a purge is applied on, found by DNS or
/// listed. Exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCachePeers {
    /// `name:port`: every address the name resolves to (a headless Service), resolved at each
    /// purge; the port is the peers' admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// `host:port` of each peer's admin listener.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_list: Option<Vec<String>>,
}

/// The validated disk tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTier {
    /// The directory holding the tier's files.
    pub path: String,
    /// The most bytes the tier's files may take.
    pub max_bytes: u64,
    /// The size of one block of the tier: an entry (head, body and framing) must fit in one,
    /// and the tier is reclaimed a block at a time ([`disk_block_bytes`]).
    pub block_bytes: u64,
}

/// The fewest blocks a disk tier may have: fewer leave no room to reclaim one block while the
/// others keep serving.
pub const MIN_DISK_BLOCKS: u64 = 8;

/// What a disk entry may hold beyond its body (the stored head and the framing).
pub const DISK_ENTRY_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The block size of a disk tier whose largest object is `max_object_bytes`: the object and
/// its overhead, rounded up to a whole MiB, at least 4 MiB.
#[must_use]
pub fn disk_block_bytes(max_object_bytes: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let needed = max_object_bytes.saturating_add(DISK_ENTRY_OVERHEAD_BYTES);
    needed.div_ceil(MIB).saturating_mul(MIB).max(4 * MIB)
}

/// The page the disk tier's store works in (foyer's `PAGE`): its capacity is a whole number
/// of pages, and its tombstone log has one 16-byte slot per page of the capacity.
const DISK_PAGE_BYTES: u64 = 4096;

/// The share of a disk tier of `max_bytes` its store keeps for its tombstone log (foyer 0.22:
/// one 16-byte slot per 4 KiB page of the capacity, in whole pages): what is left is blocks.
#[must_use]
pub fn disk_tombstone_bytes(max_bytes: u64) -> u64 {
    (max_bytes / DISK_PAGE_BYTES).div_ceil(DISK_PAGE_BYTES / 16) * DISK_PAGE_BYTES
}

/// How many blocks of `block_bytes` a disk tier of `max_bytes` gets: its whole pages less the
/// tombstone log ([`disk_tombstone_bytes`]), in whole blocks.
#[must_use]
pub fn disk_blocks(max_bytes: u64, block_bytes: u64) -> u64 {
    let pages = max_bytes / DISK_PAGE_BYTES * DISK_PAGE_BYTES;
    pages.saturating_sub(disk_tombstone_bytes(max_bytes)) / block_bytes.max(1)
}

/// The smallest `max_bytes` that gives [`MIN_DISK_BLOCKS`] blocks of `block_bytes`.
fn least_disk_bytes(block_bytes: u64) -> u64 {
    let blocks = block_bytes.saturating_mul(MIN_DISK_BLOCKS);
    // The tombstone share grows with the total: a few rounds reach the fixed point.
    let mut least = blocks;
    for _ in 0..4 {
        least = blocks.saturating_add(disk_tombstone_bytes(least));
    }
    least
}

/// A peer's admin listener, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// A host name or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The admin listener's port.
    pub port: u16,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The validated fleet a purge reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Every address one name resolves to, resolved at each purge.
    Dns(PeerAddr),
    /// A fixed list.
    Static(Vec<PeerAddr>),
}

pub(super) fn disk(
    raw: Option<&RawCacheDisk>,
    max_object_bytes: u64,
) -> Result<Option<DiskTier>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let path = match raw.path.as_deref() {
        None => return Err(error("cache.disk.path", "required")),
        Some("") => return Err(error("cache.disk.path", "must not be empty")),
        Some(p) if p.contains('\0') => {
            return Err(error("cache.disk.path", "must not contain a NUL byte"))
        }
        Some(p) => p.to_owned(),
    };
    let Some(max_bytes) = raw.max_bytes else {
        return Err(error(
            "cache.disk.max_bytes",
            "required (the tier never takes more than this on disk)",
        ));
    };
    let block_bytes = disk_block_bytes(max_object_bytes);
    if disk_blocks(max_bytes, block_bytes) < MIN_DISK_BLOCKS {
        let least = least_disk_bytes(block_bytes);
        return Err(error(
            "cache.disk.max_bytes",
            format!(
                "must be at least {least} ({MIN_DISK_BLOCKS} blocks of {block_bytes} bytes, \
                 a block holding one cache.max_object_bytes object, and the tombstone log)"
            ),
        ));
    }
    Ok(Some(DiskTier {
        path,
        max_bytes,
        block_bytes,
    }))
}

pub(super) fn peers(raw: Option<&RawCachePeers>) -> Result<Option<Peers>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match (raw.dns.as_deref(), raw.static_list.as_deref()) {
        (Some(_), Some(_)) => Err(error("cache.peers", "set dns or static, not both")),
        (None, None) => Err(error("cache.peers", "set dns or static")),
        (Some(name), None) => peer_addr(name, "cache.peers.dns").map(|a| Some(Peers::Dns(a))),
        (None, Some([])) => Err(error("cache.peers.static", "must not be empty")),
        (None, Some(list)) if list.len() > MAX_PEERS => Err(error(
            "cache.peers.static",
            format!(
                "{} entries: at most {MAX_PEERS} (a purge asks them all at once)",
                list.len()
            ),
        )),
        (None, Some(list)) => static_peers(list).map(|list| Some(Peers::Static(list))),
    }
}

/// Each entry of `cache.peers.static`, none twice (a peer listed twice would be asked twice
/// and counted as two confirmations).
fn static_peers(list: &[String]) -> Result<Vec<PeerAddr>, ConfigError> {
    let mut peers: Vec<PeerAddr> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let path = format!("cache.peers.static[{i}]");
        let peer = peer_addr(entry, &path)?;
        if let Some(first) = peers.iter().position(|p| *p == peer) {
            return Err(error(
                path,
                format!("`{entry}` is cache.peers.static[{first}] again"),
            ));
        }
        peers.push(peer);
    }
    Ok(peers)
}

/// `host:port`, `[v6]:port` or `v4:port`; a host name is checked for its characters only (it
/// is resolved at each purge).
fn peer_addr(text: &str, path: &str) -> Result<PeerAddr, ConfigError> {
    let bad = || {
        error(
            path,
            format!("`{text}` is not host:port (e.g. ixproxy-headless.ixproxy.svc:9901)"),
        )
    };
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(PeerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if port == 0 || !name_ok {
        return Err(bad());
    }
    Ok(PeerAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapSecrets, RawConfig};

    fn validate(cache: &str) -> Result<crate::config::Config, ConfigError> {
        RawConfig::from_yaml(&format!(
            "cache: {cache}\nsources:\n  - {{name: a, hosts: [a.test], secure_url_tokens: [t]}}\n"
        ))
        .and_then(|raw| raw.validate(&MapSecrets::new()))
    }

    fn err(cache: &str) -> (String, String) {
        let e = validate(cache).expect_err(cache);
        (e.path, e.message)
    }

    #[test]
    fn a_disk_tier_is_validated_with_its_block_size() {
        let config = validate(
            "{max_bytes: 1048576, max_object_bytes: 65536, disk: {path: /var/cache/ixproxy, \
             max_bytes: 1073741824}}",
        )
        .expect("valid");
        let cache = config.cache.expect("cache on");
        let disk = cache.disk.expect("disk tier");
        assert_eq!(disk.path, "/var/cache/ixproxy");
        assert_eq!(disk.max_bytes, 1 << 30);
        assert_eq!(disk.block_bytes, 4 << 20, "at least 4 MiB");
        assert_eq!(
            disk_block_bytes(8 << 20),
            9 << 20,
            "object + overhead, whole MiB"
        );
        assert_eq!(disk_block_bytes(u64::MAX), u64::MAX, "saturates");
        // What foyer 0.22 gets from 32 MiB in 4 MiB blocks: 8192 slots of tombstones in 32
        // pages, then 7 blocks (the 8th does not fit).
        assert_eq!(disk_tombstone_bytes(32 << 20), 32 * 4096);
        assert_eq!(disk_blocks(32 << 20, 4 << 20), 7);
        assert_eq!(disk_blocks((32 << 20) + 33 * 4096, 4 << 20), 8);
        assert_eq!(disk_blocks(0, 0), 0);
    }

    #[test]
    fn disk_tier_errors_name_the_field() {
        assert_eq!(err("{disk: {max_bytes: 1073741824}}").0, "cache.disk.path");
        assert_eq!(
            err("{disk: {path: '', max_bytes: 1073741824}}").0,
            "cache.disk.path"
        );
        assert_eq!(err("{disk: {path: /d}}").0, "cache.disk.max_bytes");
        let (path, message) = err("{max_object_bytes: 1048576, disk: {path: /d, max_bytes: 1000}}");
        assert_eq!(path, "cache.disk.max_bytes");
        // 8 blocks of 4 MiB and 33 pages of tombstones.
        assert!(message.contains("at least 33689600"), "{message}");
        for max_bytes in [33_554_432, 33_689_599] {
            let (_, message) = err(&format!(
                "{{max_object_bytes: 1048576, disk: {{path: /d, max_bytes: {max_bytes}}}}}"
            ));
            assert!(
                message.contains("at least 33689600"),
                "{max_bytes}: {message}"
            );
        }
        validate("{max_object_bytes: 1048576, disk: {path: /d, max_bytes: 33689600}}")
            .expect("the least accepted");
        assert_eq!(
            err("{disk: {path: /d, max_bytes: 1073741824, size: 1}}").0,
            "cache.disk.size"
        );
        assert_eq!(
            err("{max_bytes: 0, disk: {path: /d, max_bytes: 1073741824}}").0,
            "cache.disk",
            "a disk tier needs the memory tier"
        );
    }

    #[test]
    fn with_a_disk_tier_an_object_may_be_larger_than_memory() {
        let config = validate(
            "{max_bytes: 1048576, max_object_bytes: 4194304, disk: {path: /d, max_bytes: \
             1073741824}}",
        )
        .expect("disk-only objects");
        assert_eq!(config.cache.expect("on").max_object_bytes, 4 << 20);
        assert_eq!(
            err("{max_bytes: 1048576, max_object_bytes: 4194304}").0,
            "cache.max_object_bytes",
            "without a disk tier it must fit in memory"
        );
    }

    #[test]
    fn peers_by_dns_or_a_static_list() {
        let dns = validate("{peers: {dns: ixproxy-headless.ixproxy.svc.cluster.local:9901}}")
            .expect("dns");
        assert_eq!(
            dns.cache.expect("on").peers,
            Some(Peers::Dns(PeerAddr {
                host: "ixproxy-headless.ixproxy.svc.cluster.local".into(),
                port: 9901
            }))
        );
        let list = validate("{peers: {static: ['127.0.0.2:9901', '[::1]:9902', 'Peer-3:80']}}")
            .expect("static");
        let Some(Peers::Static(list)) = list.cache.expect("on").peers else {
            panic!("static list");
        };
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.2:9901", "[::1]:9902", "peer-3:80"]);
    }

    #[test]
    fn peer_errors_name_the_field() {
        assert_eq!(err("{peers: {}}").0, "cache.peers");
        assert_eq!(
            err("{peers: {dns: 'a:1', static: ['b:1']}}").0,
            "cache.peers"
        );
        assert_eq!(err("{peers: {dns: headless}}").0, "cache.peers.dns");
        assert_eq!(err("{peers: {dns: 'headless:0'}}").0, "cache.peers.dns");
        assert_eq!(err("{peers: {static: []}}").0, "cache.peers.static");
        assert_eq!(
            err("{peers: {static: ['127.0.0.1:9901', 'bad host:1']}}").0,
            "cache.peers.static[1]"
        );
        assert_eq!(
            err("{peers: {static: ['a..b:1']}}").0,
            "cache.peers.static[0]"
        );
        // The same peer twice, however written (an IP's spelling, a name's case).
        let (path, message) =
            err("{peers: {static: ['127.0.0.1:9901', 'peer-2:9901', '[::1]:1', 'Peer-2:9901']}}");
        assert_eq!(path, "cache.peers.static[3]");
        assert_eq!(message, "`Peer-2:9901` is cache.peers.static[1] again");
        assert_eq!(
            err("{peers: {static: ['[::1]:1', '[0:0::1]:1']}}").0,
            "cache.peers.static[1]"
        );
        // A purge asks every entry at once: the list is bounded as a DNS answer is.
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("'127.0.{}.{}:9901'", i / 250, i % 250 + 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        validate(&format!("{{peers: {{static: [{}]}}}}", list(MAX_PEERS))).expect("at the bound");
        let (path, message) = err(&format!("{{peers: {{static: [{}]}}}}", list(MAX_PEERS + 1)));
        assert_eq!(path, "cache.peers.static");
        assert!(message.contains("at most 256"), "{message}");
        assert_eq!(
            err("{max_bytes: 0, peers: {static: ['127.0.0.1:9901']}}").0,
            "cache.peers",
            "peers purge a cache"
        );
    }
}
