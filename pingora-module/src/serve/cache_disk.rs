//! The disk tier of the response cache (README: Caching, Disk tier): a bounded block store
//! under [`super::cache_store::MemoryStore`], on `foyer` (its disk engine only: foyer's own
//! memory tier is not used, the memory store is the memory tier).
//!
//! - Every fill the memory store keeps (and every fill too large for the memory tier) is also
//!   written here (write-through): an entry survives a restart or a crash without a flush of
//!   the memory tier at exit, and eviction from memory costs nothing.
//! - A lookup reads and checks the whole entry (foyer's checksums, then this module's own
//!   format and the stored length) before it answers: a damaged, truncated or unreadable entry
//!   is a miss, never a partial answer.
//! - A purge writes a tombstone (foyer's tombstone log), so it survives a restart.
//! - One process at a time: the directory is locked (`ixproxy.lock`). A process that finds it
//!   locked (the old process of a `serve -u` upgrade, still draining) runs on its memory tier
//!   and opens the tier when the lock comes free.
//! - foyer runs on its own runtime, kept for the life of the process: Pingora's runtimes stop
//!   service by service at shutdown, the tier must outlive them to be closed last.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, Error as FoyerError, ErrorKind, FsDeviceBuilder,
    HybridCache, HybridCacheBuilder, HybridCachePolicy, Load, PsyncIoEngineConfig, RecoverMode,
    Spawner,
};
use ixproxy_core::config::{DiskTier, DISK_ENTRY_OVERHEAD_BYTES};
use parking_lot::Mutex;
use prometheus::IntGauge;

/// The format version byte that starts every disk entry; an entry of another version is a miss.
pub const FORMAT_VERSION: u8 = 1;

/// The lock file in the tier's directory.
pub const LOCK_FILE: &str = "ixproxy.lock";

/// How long a process that finds the directory locked keeps trying (the old process of an
/// upgrade holds it until it has drained and closed the tier).
pub const LOCK_RETRY_FOR: Duration = Duration::from_secs(600);

/// How often the locked directory is tried again, and how often the tier's size is sampled.
const RETRY_EVERY: Duration = Duration::from_millis(200);
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One stored answer on disk: the serialised [`pingora::cache::CacheMeta`] parts and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// `CacheMeta::serialize().0` (internal part).
    pub meta_internal: Vec<u8>,
    /// `CacheMeta::serialize().1` (response header part).
    pub meta_header: Vec<u8>,
    /// The whole body.
    pub body: Bytes,
}

/// The largest body [`DiskEntry::decode`] accepts: what a block of the largest configurable
/// size may hold (a larger length is damage, not an entry).
const MAX_DECODED_BODY: u64 = 1 << 40;

fn parse_error(what: &str) -> FoyerError {
    FoyerError::new(ErrorKind::Parse, format!("ixproxy disk entry: {what}"))
}

fn read_len<const N: usize>(reader: &mut impl Read) -> foyer::Result<u64> {
    let mut buf = [0u8; 8];
    reader
        .read_exact(&mut buf[8 - N..])
        .map_err(|_| parse_error("truncated length"))?;
    Ok(u64::from_be_bytes(buf))
}

fn read_bytes(reader: &mut impl Read, len: u64, max: u64, what: &str) -> foyer::Result<Vec<u8>> {
    if len > max {
        return Err(parse_error(what));
    }
    let len = usize::try_from(len).map_err(|_| parse_error(what))?;
    let mut out = Vec::new();
    // `take` bounds the read; the vector grows with what is really there (a length that claims
    // more than the entry holds allocates no more than the entry).
    reader
        .take(len as u64)
        .read_to_end(&mut out)
        .map_err(FoyerError::io_error)?;
    if out.len() != len {
        return Err(parse_error("truncated"));
    }
    Ok(out)
}

impl Code for DiskEntry {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        let meta_len = |v: &Vec<u8>| u32::try_from(v.len()).map_err(|_| parse_error("meta size"));
        let (internal_len, header_len) =
            (meta_len(&self.meta_internal)?, meta_len(&self.meta_header)?);
        writer
            .write_all(&[FORMAT_VERSION])
            .and_then(|()| writer.write_all(&internal_len.to_be_bytes()))
            .and_then(|()| writer.write_all(&self.meta_internal))
            .and_then(|()| writer.write_all(&header_len.to_be_bytes()))
            .and_then(|()| writer.write_all(&self.meta_header))
            .and_then(|()| writer.write_all(&(self.body.len() as u64).to_be_bytes()))
            .and_then(|()| writer.write_all(&self.body))
            .map_err(FoyerError::io_error)
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut version = [0u8; 1];
        reader
            .read_exact(&mut version)
            .map_err(|_| parse_error("empty"))?;
        if version[0] != FORMAT_VERSION {
            return Err(parse_error("unknown format version"));
        }
        let len = read_len::<4>(reader)?;
        let meta_internal = read_bytes(reader, len, DISK_ENTRY_OVERHEAD_BYTES, "meta size")?;
        let len = read_len::<4>(reader)?;
        let meta_header = read_bytes(reader, len, DISK_ENTRY_OVERHEAD_BYTES, "header size")?;
        let len = read_len::<8>(reader)?;
        let body = read_bytes(reader, len, MAX_DECODED_BODY, "body size")?;
        Ok(DiskEntry {
            meta_internal,
            meta_header,
            body: Bytes::from(body),
        })
    }

    fn estimated_size(&self) -> usize {
        1 + 4 + self.meta_internal.len() + 4 + self.meta_header.len() + 8 + self.body.len()
    }
}

/// The open disk tier.
pub struct DiskStore {
    cache: HybridCache<u128, DiskEntry>,
    runtime: tokio::runtime::Handle,
    /// Keys purged while a write of theirs may still wait for the flusher (foyer answers a
    /// lookup from its write queue before the device): such a queued entry is not served.
    purged: Mutex<HashSet<u128>>,
    /// Kept open: the lock lasts as long as the file stays open.
    _lock: File,
}

/// The tier for the process, once it is open.
static OPENED: OnceLock<&'static DiskStore> = OnceLock::new();

/// The runtime foyer's flushers, reclaimers, reads and writes run on (one per process).
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        // Each blocking thread reads (or writes) one whole entry at a time; a read holds the
        // entry twice until it is decoded (counted in tests/deploy_memory.rs).
        .max_blocking_threads(4)
        .thread_name("ixproxy-disk")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Why the tier could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    #[error("{0} is in use by another process (its {LOCK_FILE} is locked)")]
    Locked(String),
    /// The directory or its lock file cannot be created or opened.
    #[error("cache.disk.path: {path}: {error}")]
    Io {
        /// The directory.
        path: String,
        /// What failed.
        error: String,
    },
    /// foyer refused to open the tier.
    #[error("cache.disk: cannot open the tier in {path}: {error}")]
    Foyer {
        /// The directory.
        path: String,
        /// foyer's error.
        error: String,
    },
}

/// Creates the directory if missing and takes its lock (without waiting).
///
/// # Errors
/// [`OpenError::Locked`] when another process holds it, [`OpenError::Io`] when the directory
/// or the lock file cannot be created.
pub fn lock_dir(path: &Path) -> Result<File, OpenError> {
    let io = |e: std::io::Error| OpenError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    std::fs::create_dir_all(path).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked(path.display().to_string())),
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

impl DiskStore {
    fn open(tier: &DiskTier, lock: File) -> Result<DiskStore, OpenError> {
        let rt = runtime().map_err(|e| OpenError::Io {
            path: tier.path.clone(),
            error: format!("cannot start the disk runtime: {e}"),
        })?;
        let foyer_error = |e: FoyerError| OpenError::Foyer {
            path: tier.path.clone(),
            error: e.to_string(),
        };
        let block = usize::try_from(tier.block_bytes).unwrap_or(usize::MAX);
        let capacity = usize::try_from(tier.max_bytes).unwrap_or(usize::MAX);
        let device = FsDeviceBuilder::new(&tier.path)
            .with_capacity(capacity)
            .build()
            .map_err(foyer_error)?;
        let builder = HybridCacheBuilder::new()
            .with_name("ixproxy")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(false)
            // foyer's memory tier stays empty: entries go to disk only (`storage_writer`).
            .memory(1)
            .storage()
            .with_io_engine_config(PsyncIoEngineConfig::new())
            // What foyer buffers in memory (counted in tests/deploy_memory.rs): two write
            // buffers of one block each (an entry must fit in one) for its one flusher, and
            // entries waiting for it bounded by one block more (a write past that is dropped:
            // the entry stays in memory only).
            .with_engine_config(
                BlockEngineConfig::new(device)
                    .with_block_size(block)
                    .with_buffer_pool_size(block)
                    .with_submit_queue_size_threshold(block)
                    .with_tombstone_log(true),
            )
            .with_recover_mode(RecoverMode::Quiet)
            .with_spawner(Spawner::from(rt.handle().clone()));
        let cache = rt.block_on(builder.build()).map_err(foyer_error)?;
        Ok(DiskStore {
            cache,
            runtime: rt.handle().clone(),
            purged: Mutex::default(),
            _lock: lock,
        })
    }

    /// Writes an entry (best effort: foyer drops it when its write queue is full).
    pub fn insert(&self, key: u128, entry: DiskEntry) {
        self.cache.storage_writer(key).force().insert(entry);
    }

    /// Whether the tier holds an entry of `key` (its index does; the entry itself is read and
    /// checked only by [`DiskStore::get`]).
    pub fn contains(&self, key: u128) -> bool {
        self.cache.storage().may_contains(&key)
    }

    /// Removes entries (tombstones that survive a restart).
    pub fn remove(&'static self, keys: &[u128]) {
        if keys.is_empty() {
            return;
        }
        self.purged.lock().extend(keys.iter().copied());
        for key in keys {
            self.cache.remove(key);
        }
        let keys = keys.to_vec();
        // Once the flusher has written what was queued before the purge, nothing purged is
        // left in the write queue (the tombstones are newer than any queued write).
        self.runtime.spawn(async move {
            self.cache.storage().wait().await;
            let mut purged = self.purged.lock();
            for key in &keys {
                purged.remove(key);
            }
        });
    }

    /// The entry of `key`, whole and checked, or `None` (a miss, a damaged entry, an I/O error).
    pub async fn get(&'static self, key: u128) -> Option<DiskEntry> {
        // The index is in memory: a key the tier never held costs no task and no I/O.
        if !self.contains(key) {
            return None;
        }
        let load = self
            .runtime
            .spawn(async move { self.cache.storage().load(&key).await });
        match load.await {
            Ok(Ok(Load::Entry { value, .. })) => Some(value),
            Ok(Ok(Load::Piece { piece, .. })) => {
                (!self.purged.lock().contains(&key)).then(|| piece.value().clone())
            }
            Ok(Ok(Load::Miss | Load::Throttled)) => None,
            Ok(Err(e)) => {
                log::warn!("disk tier: a lookup failed (served as a miss): {e}");
                None
            }
            Err(e) => {
                log::warn!("disk tier: a lookup task failed (served as a miss): {e}");
                None
            }
        }
    }

    fn close(&self) {
        let close = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), self.cache.close()).await
        });
        match close {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("disk tier: closing failed: {e}"),
            Err(_) => log::warn!("disk tier: closing took over 30 s; left unfinished"),
        }
    }
}

/// The disk tier once it is open (`None` before, or without one).
pub fn opened() -> Option<&'static DiskStore> {
    OPENED.get().copied()
}

/// Opens the tier for the process: at once when its directory is free; when another process
/// holds it (an upgrade's old process, draining), in the background as soon as it comes free
/// (for at most [`LOCK_RETRY_FOR`]), the process running on its memory tier until then.
/// `on_open` runs once the tier is open. `bytes_gauge` is kept at the space its files take.
///
/// # Errors
/// The directory cannot be created or locked for another reason, or foyer refuses to open it.
pub fn start(
    tier: &DiskTier,
    bytes_gauge: IntGauge,
    on_open: impl FnOnce(&'static DiskStore) + Send + 'static,
) -> Result<(), OpenError> {
    let path = PathBuf::from(&tier.path);
    match lock_dir(&path) {
        Ok(lock) => {
            let store = install(DiskStore::open(tier, lock)?, &path, bytes_gauge);
            on_open(store);
            Ok(())
        }
        Err(OpenError::Locked(dir)) => {
            log::warn!(
                "disk tier: {dir} is in use by another process (the old process of an \
                 upgrade?); serving from memory only until it is free"
            );
            let tier = tier.clone();
            let dir = path.display().to_string();
            std::thread::Builder::new()
                .name("ixproxy-disk-lock".to_owned())
                .spawn(move || wait_for_lock(&tier, &path, bytes_gauge, on_open))
                .map(|_| ())
                .map_err(|e| OpenError::Io {
                    path: dir,
                    error: e.to_string(),
                })
        }
        Err(e) => Err(e),
    }
}

fn wait_for_lock(
    tier: &DiskTier,
    path: &Path,
    bytes_gauge: IntGauge,
    on_open: impl FnOnce(&'static DiskStore),
) {
    let since = Instant::now();
    while since.elapsed() < LOCK_RETRY_FOR {
        std::thread::sleep(RETRY_EVERY);
        match lock_dir(path) {
            Ok(lock) => match DiskStore::open(tier, lock) {
                Ok(store) => {
                    on_open(install(store, path, bytes_gauge));
                    log::warn!(
                        "disk tier: {} opened (its previous holder left)",
                        path.display()
                    );
                    return;
                }
                Err(e) => {
                    log::error!("disk tier: {e}; serving from memory only");
                    return;
                }
            },
            Err(OpenError::Locked(_)) => {}
            Err(e) => {
                log::error!("disk tier: {e}; serving from memory only");
                return;
            }
        }
    }
    log::error!(
        "disk tier: {} stayed locked for {} s; serving from memory only",
        path.display(),
        LOCK_RETRY_FOR.as_secs()
    );
}

fn install(store: DiskStore, path: &Path, bytes_gauge: IntGauge) -> &'static DiskStore {
    let store: &'static DiskStore = Box::leak(Box::new(store));
    let _ = OPENED.set(store);
    let path = path.to_path_buf();
    store.runtime.spawn(async move {
        loop {
            bytes_gauge.set(i64::try_from(space_taken(&path)).unwrap_or(i64::MAX));
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    });
    store
}

/// The space the tier's files take on disk (they are sparse: what was written, block by block).
fn space_taken(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.blocks().saturating_mul(512))
        .sum()
}

/// What `ixproxy check` can tell of a disk tier without opening it (a running `serve` may hold
/// it): its directory, or the nearest existing one above it, is a directory this process can
/// write in (a probe file is created and removed).
///
/// # Errors
/// A message naming `cache.disk.path` and what is wrong.
pub fn check(tier: &DiskTier) -> Result<(), String> {
    let path = Path::new(&tier.path);
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let fail = |what: String| Err(format!("cache.disk.path: {}: {what}", tier.path));
    if !existing.is_dir() {
        return fail(format!("{} is not a directory", existing.display()));
    }
    let probe = existing.join(format!(".ixproxy-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if existing == path => fail(format!("cannot write in it: {e}")),
        Err(e) => fail(format!(
            "cannot be created: cannot write in {}: {e}",
            existing.display()
        )),
    }
}

/// Closes the tier if it is open (its queued writes and tombstones are flushed), at exit.
pub fn close() {
    if let Some(store) = opened() {
        store.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> DiskEntry {
        DiskEntry {
            meta_internal: b"internal".to_vec(),
            meta_header: b"HTTP/1.1 200".to_vec(),
            body: Bytes::from_static(b"the body"),
        }
    }

    fn encoded() -> Vec<u8> {
        let mut out = Vec::new();
        entry().encode(&mut out).expect("encode");
        assert_eq!(out.len(), entry().estimated_size());
        out
    }

    #[test]
    fn an_entry_round_trips() {
        let bytes = encoded();
        assert_eq!(DiskEntry::decode(&mut &bytes[..]).expect("decode"), entry());
    }

    #[test]
    fn truncated_input_is_an_error() {
        let bytes = encoded();
        for len in 0..bytes.len() {
            assert!(
                DiskEntry::decode(&mut &bytes[..len]).is_err(),
                "truncated at {len}"
            );
        }
    }

    #[test]
    fn garbage_and_nonsense_lengths_are_errors() {
        let mut bad_version = encoded();
        bad_version[0] = 2;
        assert!(DiskEntry::decode(&mut &bad_version[..]).is_err());
        // A meta length far past the overhead bound.
        let mut huge_meta = encoded();
        huge_meta[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(DiskEntry::decode(&mut &huge_meta[..]).is_err());
        // A body length past what the input holds (and past any block).
        let mut bytes = encoded();
        let at = bytes.len() - 8 - 8;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(DiskEntry::decode(&mut &bytes[..]).is_err());
        bytes[at..at + 8].copy_from_slice(&9u64.to_be_bytes());
        assert!(
            DiskEntry::decode(&mut &bytes[..]).is_err(),
            "one byte short"
        );
        let zeros = [0u8; 64];
        assert!(DiskEntry::decode(&mut &zeros[..]).is_err());
        let noise: Vec<u8> = (0u8..=255).cycle().take(4096).collect();
        assert!(DiskEntry::decode(&mut &noise[..]).is_err());
    }

    #[test]
    fn check_names_a_directory_that_cannot_be_made_or_written() {
        let dir = tempfile::tempdir().expect("dir");
        let tier = |path: &Path| DiskTier {
            path: path.display().to_string(),
            max_bytes: 1 << 30,
            block_bytes: 4 << 20,
        };
        check(&tier(&dir.path().join("new/tier"))).expect("creatable");
        assert!(!dir.path().join("new").exists(), "check creates nothing");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("file");
        let err = check(&tier(&file.join("tier"))).expect_err("under a file");
        assert!(err.starts_with("cache.disk.path: "), "{err}");
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn a_locked_directory_is_reported_and_freed_when_its_holder_closes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tier");
        let held = lock_dir(&path).expect("created and locked");
        assert!(matches!(lock_dir(&path), Err(OpenError::Locked(_))));
        drop(held);
        lock_dir(&path).expect("free again");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("file");
        assert!(matches!(lock_dir(&file), Err(OpenError::Io { .. })));
    }
}
