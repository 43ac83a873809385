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
//! - A purge writes a tombstone (foyer's tombstone log), so it survives a restart, for the
//!   keys the tier holds only: the log is a ring of one slot per 4 KiB of `cache.disk.max_bytes`
//!   ([`tombstone_slots`]), and a tombstone older than the ring is forgotten at the next start.
//!   A purge that arrives while the directory is still locked by another process is kept
//!   ([`MAX_PENDING_PURGES`] keys) and applied when the tier opens.
//! - A disk hit holds the entry it read until the hit finishes. Hits of one key share one read
//!   (one copy), and what all disk hits hold at once is bounded by [`HELD_BLOCKS`] blocks: when
//!   that budget is spent, a lookup on disk is a miss (the request goes to the origin, bounded
//!   as every origin answer is) rather than a wait.
//! - One process at a time: the directory is locked (`ixproxy.lock`). A process that finds it
//!   locked (the old process of a `serve -u` upgrade, still draining) runs on its memory tier
//!   and opens the tier when the lock comes free.
//! - Writes are best effort: foyer drops a write when its queue (one block) or its write buffer
//!   is full; the entry then stays in memory only (or, too large for memory, is not stored).
//!   Each drop is counted (`ixproxy_cache_disk_writes_dropped_total`) and logged at most every
//!   10 s.
//! - foyer runs on its own runtime, kept for the life of the process: Pingora's runtimes stop
//!   service by service at shutdown, the tier must outlive them to be closed last.

use std::collections::{HashMap, HashSet};
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, Error as FoyerError, ErrorKind, FsDeviceBuilder,
    HybridCache, HybridCacheBuilder, HybridCachePolicy, Load, PsyncIoEngineConfig, RecoverMode,
    Spawner,
};
use ixproxy_core::config::{DiskTier, DISK_ENTRY_OVERHEAD_BYTES};
use mixtrics::metrics::{BoxedCounter, BoxedCounterVec, BoxedGaugeVec, BoxedHistogramVec};
use mixtrics::metrics::{CounterOps, CounterVecOps, RegistryOps};
use mixtrics::registry::noop::NoopMetricsRegistry;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The format version byte that starts every disk entry; an entry of another version is a miss.
pub const FORMAT_VERSION: u8 = 1;

/// The lock file in the tier's directory.
pub const LOCK_FILE: &str = "ixproxy.lock";

/// How long a process that finds the directory locked keeps trying (the old process of an
/// upgrade holds it until it has drained and closed the tier).
pub const LOCK_RETRY_FOR: Duration = Duration::from_secs(600);

#[path = "cache_disk_memory.rs"]
mod memory;
pub use memory::{memory_bytes, HELD_BLOCKS};

/// The most purged keys kept while another process holds the directory; past it the whole tier
/// is emptied when it opens (a purge is never lost).
pub const MAX_PENDING_PURGES: usize = 65_536;

/// The unit of the held-bytes budget (a tokio semaphore counts permits in `u32`).
const BUDGET_UNIT: u64 = 4096;

/// The prefix of foyer's files in the tier's directory (`FsDevice`, one file per partition:
/// the tombstone log, then each block).
const FOYER_FILE_PREFIX: &str = "foyer-storage-direct-fs-";

/// How many purges the tombstone log of a tier of `max_bytes` remembers across a restart
/// (foyer 0.22: one slot per 4 KiB page of the capacity).
#[must_use]
pub fn tombstone_slots(max_bytes: u64) -> u64 {
    max_bytes / 4096
}

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
    /// Counted per purge: a key purged twice stays here until both purges are flushed.
    purged: Mutex<HashMap<u128, u32>>,
    /// The reads in flight or held by hits, per key: hits of one key share one.
    reads: Mutex<HashMap<u128, Weak<SharedRead>>>,
    /// The budget of bytes disk hits hold ([`HELD_BLOCKS`], in [`BUDGET_UNIT`]s).
    budget: Arc<Semaphore>,
    /// One block in [`BUDGET_UNIT`]s.
    block_units: u32,
    /// Kept open: the lock lasts as long as the file stays open.
    _lock: File,
}

/// One read of a key's entry, shared by the hits that want it while any of them holds it.
struct SharedRead {
    store: &'static DiskStore,
    key: u128,
    entry: tokio::sync::OnceCell<Option<(DiskEntry, OwnedSemaphorePermit)>>,
}

impl Drop for SharedRead {
    fn drop(&mut self) {
        // A newer read of the key may have taken the slot: only a dead one is removed.
        let mut reads = self.store.reads.lock();
        if reads.get(&self.key).is_some_and(|r| r.strong_count() == 0) {
            reads.remove(&self.key);
        }
    }
}

/// An entry read from disk, whole and checked, held (and counted in the tier's budget) until
/// the last hit sharing it is dropped.
#[derive(Clone)]
pub struct DiskHit(Arc<SharedRead>);

impl DiskHit {
    /// The entry.
    pub fn entry(&self) -> &DiskEntry {
        // A `DiskHit` is only made of a read that found its entry.
        match self.0.entry.get() {
            Some(Some((entry, _))) => entry,
            _ => unreachable!("a DiskHit holds an entry"),
        }
    }
}

/// The tier for the process, once it is open.
static OPENED: OnceLock<&'static DiskStore> = OnceLock::new();

/// Purges that arrived while the directory was locked by another process.
#[derive(Default)]
struct Pending {
    /// The tier is configured and waits for its directory.
    waiting: bool,
    keys: HashSet<u128>,
    /// More than [`MAX_PENDING_PURGES`] keys were purged: the tier is emptied when it opens.
    wipe: bool,
}

static PENDING: std::sync::LazyLock<Mutex<Pending>> = std::sync::LazyLock::new(Mutex::default);

/// For a purge while no tier is attached to the memory store: keeps the keys when the tier
/// waits for its directory (they are removed when it opens), or answers the tier when it has
/// just opened (so the caller removes them itself).
pub fn purge_unattached(keys: &[u128]) -> Option<&'static DiskStore> {
    let mut pending = PENDING.lock();
    if !pending.waiting {
        return opened();
    }
    if !pending.wipe {
        pending.keys.extend(keys.iter().copied());
        if pending.keys.len() > MAX_PENDING_PURGES {
            pending.wipe = true;
            pending.keys = HashSet::new();
        }
    }
    None
}

/// Logs at most once per `every` for one `last` clock (seconds since the process's first log).
fn rate_limited(last: &std::sync::atomic::AtomicU64, every: Duration) -> bool {
    use std::sync::atomic::Ordering;
    static START: OnceLock<Instant> = OnceLock::new();
    // Never 0, which means "never logged".
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let before = last.load(Ordering::Relaxed);
    (before == 0 || now >= before + every.as_secs())
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

fn budget_spent() {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if rate_limited(&LAST, Duration::from_secs(10)) {
        log::warn!(
            "disk tier: the bytes disk hits may hold ({HELD_BLOCKS} blocks) are in use; \
             lookups on disk are misses until hits finish (logged at most every 10 s)"
        );
    }
}

/// foyer's metrics, of which only its dropped writes are taken: `foyer_storage_inner_op_total`
/// with `op` `buffer_overflow` (the flusher's buffer was full) or `channel_overflow` (its queue
/// was); everything else is discarded.
#[derive(Debug)]
struct DroppedWrites(IntCounter);

impl RegistryOps for DroppedWrites {
    fn register_counter_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedCounterVec {
        if name == "foyer_storage_inner_op_total" {
            Box::new(DroppedWritesVec(self.0.clone()))
        } else {
            NoopMetricsRegistry.register_counter_vec(name, desc, label_names)
        }
    }

    fn register_gauge_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedGaugeVec {
        NoopMetricsRegistry.register_gauge_vec(name, desc, label_names)
    }

    fn register_histogram_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedHistogramVec {
        NoopMetricsRegistry.register_histogram_vec(name, desc, label_names)
    }

    fn register_histogram_vec_with_buckets(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> BoxedHistogramVec {
        NoopMetricsRegistry.register_histogram_vec_with_buckets(name, desc, label_names, buckets)
    }
}

#[derive(Debug)]
struct DroppedWritesVec(IntCounter);

impl CounterVecOps for DroppedWritesVec {
    fn counter(&self, labels: &[std::borrow::Cow<'static, str>]) -> BoxedCounter {
        match labels.get(1).map(AsRef::as_ref) {
            Some("buffer_overflow" | "channel_overflow") => {
                Box::new(DroppedWritesCounter(self.0.clone()))
            }
            _ => NoopMetricsRegistry.counter(labels),
        }
    }
}

#[derive(Debug)]
struct DroppedWritesCounter(IntCounter);

impl CounterOps for DroppedWritesCounter {
    fn increase(&self, val: u64) {
        self.0.inc_by(val);
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if rate_limited(&LAST, Duration::from_secs(10)) {
            log::warn!(
                "disk tier: writes dropped (foyer's write queue or buffer was full; the entries \
                 stay in memory only), {} so far (logged at most every 10 s)",
                self.0.get()
            );
        }
    }
}

/// Removes foyer's files numbered `partitions` and above: blocks of a larger capacity the
/// tier had in an earlier run (`cache.disk.max_bytes` shrank), which foyer no longer opens.
fn remove_files_past(dir: &Path, partitions: usize) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(FOYER_FILE_PREFIX))
            .and_then(|n| n.parse::<usize>().ok());
        if number.is_some_and(|n| n >= partitions) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                log::warn!(
                    "disk tier: cannot remove {} (past the tier's capacity): {e}",
                    entry.path().display()
                );
            }
        }
    }
}

/// Removes every foyer file of the tier (it is not open: its lock is held by this process).
fn remove_all_files(dir: &Path) {
    remove_files_past(dir, 0);
}

/// The runtime foyer's flushers, reclaimers, reads and writes run on (one per process).
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        // Each blocking thread reads (or writes) one whole entry at a time; what reads hold is
        // bounded by the held-bytes budget ([`HELD_BLOCKS`]), these threads bound the I/O.
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

/// How the tier's directory is named in the errors of [`super::upgrade::check_private_dir`].
/// Its group may write it when that group is the process's own: Kubernetes' `fsGroup` makes a
/// volume (and, when it walks it again, what is in it) writable by the pod's group.
const PRIVATE_DIR: super::upgrade::PrivateDir<'static> = super::upgrade::PrivateDir {
    dir: "the directory",
    path: "the path",
    harm: "read the cached answers or plant answers of their own",
    hint: "use a directory only ixproxy's user owns and can write (one that does not exist \
           yet is created 0700)",
    own_group: true,
};

/// Creates the directory if missing (0700, and so is any missing directory above it: cached
/// answers may have been fetched with the origin's credentials), checks that it is private to
/// this process's user, and takes its lock (without waiting).
///
/// # Errors
/// [`OpenError::Locked`] when another process holds it, [`OpenError::Io`] when the directory
/// or the lock file cannot be created, or the directory is not private.
pub fn lock_dir(path: &Path) -> Result<File, OpenError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |e: std::io::Error| OpenError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io)?;
    super::upgrade::check_private_dir(path, &PRIVATE_DIR).map_err(|error| OpenError::Io {
        path: path.display().to_string(),
        error,
    })?;
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
    fn open(tier: &DiskTier, lock: File, dropped: IntCounter) -> Result<DiskStore, OpenError> {
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
            .with_metrics_registry(Box::new(DroppedWrites(dropped)))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(false)
            // foyer's memory tier stays empty: entries go to disk only (`storage_writer`).
            .memory(1)
            .storage()
            .with_io_engine_config(PsyncIoEngineConfig::new())
            // What foyer buffers in memory (`memory::WRITE_BLOCKS`): two write buffers of one block
            // each (an entry must fit in one) for its one flusher, and entries waiting for it
            // bounded by one block more (a write past that is dropped: the entry stays in
            // memory only).
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
        remove_files_past(Path::new(&tier.path), cache.storage().device().partitions());
        let block_units = u32::try_from(tier.block_bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        let budget = (block_units as usize).saturating_mul(HELD_BLOCKS as usize);
        Ok(DiskStore {
            cache,
            runtime: rt.handle().clone(),
            purged: Mutex::default(),
            reads: Mutex::default(),
            budget: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            block_units,
            _lock: lock,
        })
    }

    /// Writes an entry (best effort: foyer drops it when its write queue is full).
    pub fn insert(&self, key: u128, entry: DiskEntry) {
        // A hit from now on reads the new entry, not one held from before.
        self.reads.lock().remove(&key);
        self.cache.storage_writer(key).force().insert(entry);
    }

    /// Whether the tier holds an entry of `key` (its index does; the entry itself is read and
    /// checked only by [`DiskStore::get`]).
    pub fn contains(&self, key: u128) -> bool {
        self.cache.storage().may_contains(&key)
    }

    /// Removes the entries of those keys the tier holds (written or queued), with tombstones
    /// that survive a restart; returns the keys removed. A key the tier does not hold writes no
    /// tombstone: the log is a ring ([`tombstone_slots`]), purges of absent keys would push
    /// real ones out of it.
    pub fn remove(&'static self, keys: &[u128]) -> Vec<u128> {
        let keys: Vec<u128> = keys.iter().copied().filter(|k| self.contains(*k)).collect();
        if keys.is_empty() {
            return keys;
        }
        {
            let mut purged = self.purged.lock();
            let mut reads = self.reads.lock();
            for key in &keys {
                *purged.entry(*key).or_default() += 1;
                reads.remove(key);
                self.cache.remove(key);
            }
        }
        let queued = keys.clone();
        // Once the flusher has written what was queued before the purge, nothing purged is
        // left in the write queue (the tombstones are newer than any queued write).
        self.runtime.spawn(async move {
            self.cache.storage().wait().await;
            let mut purged = self.purged.lock();
            for key in &queued {
                if let Some(n) = purged.get_mut(key) {
                    *n -= 1;
                    if *n == 0 {
                        purged.remove(key);
                    }
                }
            }
        });
        keys
    }

    /// The entry of `key`, whole and checked, or `None` (a miss, a damaged entry, an I/O error,
    /// or the held-bytes budget spent). Concurrent hits of a key share one read and one copy.
    pub async fn get(&'static self, key: u128) -> Option<DiskHit> {
        // The index is in memory: a key the tier never held costs no task and no I/O.
        if !self.contains(key) {
            return None;
        }
        let shared = {
            let mut reads = self.reads.lock();
            match reads.get(&key).and_then(Weak::upgrade) {
                Some(shared) => shared,
                None => {
                    let shared = Arc::new(SharedRead {
                        store: self,
                        key,
                        entry: tokio::sync::OnceCell::new(),
                    });
                    reads.insert(key, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        shared.entry.get_or_init(|| self.read(key)).await;
        matches!(shared.entry.get(), Some(Some(_))).then_some(DiskHit(shared))
    }

    /// Reads `key`'s entry within the held-bytes budget.
    async fn read(&'static self, key: u128) -> Option<(DiskEntry, OwnedSemaphorePermit)> {
        let Ok(mut permit) = self.budget.clone().try_acquire_many_owned(self.block_units) else {
            budget_spent();
            return None;
        };
        let entry = self.load(key).await?;
        // Keep what the entry weighs; the rest of the block goes back to the budget.
        let keep = (entry.estimated_size() as u64)
            .div_ceil(BUDGET_UNIT)
            .clamp(1, u64::from(self.block_units)) as usize;
        if let Some(rest) = permit.split(permit.num_permits().saturating_sub(keep)) {
            drop(rest);
        }
        Some((entry, permit))
    }

    async fn load(&'static self, key: u128) -> Option<DiskEntry> {
        let load = self
            .runtime
            .spawn(async move { self.cache.storage().load(&key).await });
        match load.await {
            Ok(Ok(Load::Entry { value, .. })) => Some(value),
            Ok(Ok(Load::Piece { piece, .. })) => {
                (!self.purged.lock().contains_key(&key)).then(|| piece.value().clone())
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
/// `on_open` runs once the tier is open. `bytes_gauge` is kept at the space its files take,
/// `dropped_writes` counts the writes foyer drops.
///
/// # Errors
/// The directory cannot be created or locked for another reason, or foyer refuses to open it.
pub fn start(
    tier: &DiskTier,
    bytes_gauge: IntGauge,
    dropped_writes: IntCounter,
    on_open: impl FnOnce(&'static DiskStore) + Send + 'static,
) -> Result<(), OpenError> {
    let path = PathBuf::from(&tier.path);
    match lock_dir(&path) {
        Ok(lock) => {
            let store = install(
                DiskStore::open(tier, lock, dropped_writes)?,
                tier,
                bytes_gauge,
            );
            on_open(store);
            Ok(())
        }
        Err(OpenError::Locked(dir)) => {
            PENDING.lock().waiting = true;
            log::warn!(
                "disk tier: {dir} is in use by another process (the old process of an \
                 upgrade?); serving from memory only until it is free"
            );
            let tier = tier.clone();
            let dir = path.display().to_string();
            std::thread::Builder::new()
                .name("ixproxy-disk-lock".to_owned())
                .spawn(move || wait_for_lock(&tier, &path, bytes_gauge, dropped_writes, on_open))
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
    dropped_writes: IntCounter,
    on_open: impl FnOnce(&'static DiskStore),
) {
    let since = Instant::now();
    let stop_waiting = || *PENDING.lock() = Pending::default();
    while since.elapsed() < LOCK_RETRY_FOR {
        std::thread::sleep(RETRY_EVERY);
        match lock_dir(path) {
            Ok(lock) => {
                // Too many purges to keep: whatever the tier holds may be purged.
                let wipe = std::mem::take(&mut PENDING.lock().wipe);
                if wipe {
                    remove_all_files(path);
                }
                match DiskStore::open(tier, lock, dropped_writes.clone()) {
                    Ok(store) => {
                        let store = install(store, tier, bytes_gauge);
                        // Purges that came while it opened are applied before it serves; the
                        // lock is held until it is attached, so none falls between.
                        let mut pending = PENDING.lock();
                        let keys: Vec<u128> = pending.keys.drain().collect();
                        store.remove(&keys);
                        if pending.wipe {
                            let cleared = store.runtime.block_on(store.cache.clear());
                            if let Err(e) = cleared {
                                log::error!("disk tier: cannot empty it after a purge: {e}");
                                *pending = Pending::default();
                                return;
                            }
                        }
                        on_open(store);
                        *pending = Pending::default();
                        drop(pending);
                        log::warn!(
                            "disk tier: {} opened (its previous holder left)",
                            path.display()
                        );
                        return;
                    }
                    Err(e) => {
                        stop_waiting();
                        log::error!("disk tier: {e}; serving from memory only");
                        return;
                    }
                }
            }
            Err(OpenError::Locked(_)) => {}
            Err(e) => {
                stop_waiting();
                log::error!("disk tier: {e}; serving from memory only");
                return;
            }
        }
    }
    stop_waiting();
    log::error!(
        "disk tier: {} stayed locked for {} s; serving from memory only",
        path.display(),
        LOCK_RETRY_FOR.as_secs()
    );
}

fn install(store: DiskStore, tier: &DiskTier, bytes_gauge: IntGauge) -> &'static DiskStore {
    let store: &'static DiskStore = Box::leak(Box::new(store));
    let _ = OPENED.set(store);
    log::info!(
        "disk tier: {} open: {} blocks of {} bytes, at most {} bytes in memory, {} purges \
         remembered across a restart",
        tier.path,
        store
            .cache
            .storage()
            .device()
            .partitions()
            .saturating_sub(1),
        tier.block_bytes,
        memory_bytes(tier.block_bytes, tier.max_bytes),
        tombstone_slots(tier.max_bytes)
    );
    let path = PathBuf::from(&tier.path);
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
/// it): its directory, or the nearest existing one above it, is a directory private to this
/// process's user (as `serve` checks it) that it can write in (a probe file is created and
/// removed).
///
/// # Errors
/// A message naming `cache.disk.path` and what is wrong.
pub fn check(tier: &DiskTier) -> Result<(), String> {
    let path = Path::new(&tier.path);
    let existing = nearest_existing(path);
    let fail = |what: String| Err(format!("cache.disk.path: {}: {what}", tier.path));
    if !existing.is_dir() {
        return fail(format!("{} is not a directory", existing.display()));
    }
    super::upgrade::check_private_dir(existing, &PRIVATE_DIR).or_else(fail)?;
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

/// `path` or the nearest of its ancestors that exists (a relative path's last ancestor is "":
/// the working directory).
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("."))
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
        // Relative: checked in the working directory, not in "/".
        let relative = Path::new("no-such-dir-ixproxy/tier");
        assert_eq!(nearest_existing(relative), Path::new("."));
        check(&tier(relative)).expect("creatable in the working directory");
        assert!(
            !Path::new("no-such-dir-ixproxy").exists(),
            "check creates nothing"
        );
    }

    #[test]
    fn the_directory_is_made_0700_and_one_other_users_can_write_is_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("new/tier");
        let tier = DiskTier {
            path: path.display().to_string(),
            max_bytes: 1 << 30,
            block_bytes: 4 << 20,
        };
        let mode = |p: &Path| std::fs::metadata(p).expect("made").mode() & 0o7777;
        drop(lock_dir(&path).expect("created and locked"));
        assert_eq!(mode(&path), 0o700);
        assert_eq!(
            mode(&dir.path().join("new")),
            0o700,
            "and what was missing above"
        );
        check(&tier).expect("private");
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        let refused = |what: &str| {
            let prefix = format!("cache.disk.path: {}: ", path.display());
            let err = check(&tier).expect_err(what);
            assert!(err.starts_with(&prefix), "{what}: {err}");
            assert!(err.contains("writable by other users"), "{what}: {err}");
            let err = lock_dir(&path).expect_err(what).to_string();
            assert!(err.starts_with(&prefix), "{what}: {err}");
            assert!(err.contains("writable by other users"), "{what}: {err}");
        };
        chmod(&path, 0o777);
        refused("world-writable");
        // Its group's, when that group is the process's own (fsGroup): no other user's.
        chmod(&path, 0o2770);
        drop(lock_dir(&path).expect("the process's own group"));
        if nix::unistd::geteuid().is_root() {
            let nogroup = nix::unistd::Gid::from_raw(65534);
            nix::unistd::chown(&path, None, Some(nogroup)).expect("chown");
            refused("writable by another group");
            nix::unistd::chown(&path, None, Some(nix::unistd::getegid())).expect("chown");
        }
        // A directory above it others can write (no sticky bit) could have it replaced.
        chmod(&path, 0o700);
        chmod(&dir.path().join("new"), 0o777);
        let err = check(&tier).expect_err("an open parent");
        assert!(err.contains("could replace the directory"), "{err}");
        assert!(lock_dir(&path).is_err());
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

    /// A tier on `dir` (its directory lock is left to the caller: a stand-in file).
    fn open_on(dir: &Path, lock: &Path) -> &'static DiskStore {
        open_counting(dir, lock, IntCounter::new("d", "d").expect("counter"))
    }

    fn open_counting(dir: &Path, lock: &Path, dropped: IntCounter) -> &'static DiskStore {
        let tier = DiskTier {
            path: dir.display().to_string(),
            max_bytes: 32 * 1024 * 1024 + 33 * 4096,
            block_bytes: 4 << 20,
        };
        let lock = File::create(lock).expect("lock stand-in");
        Box::leak(Box::new(
            DiskStore::open(&tier, lock, dropped).expect("open"),
        ))
    }

    #[test]
    fn purges_of_absent_keys_write_no_tombstone_and_a_purge_survives_many_of_them() {
        let dir = tempfile::tempdir().expect("dir");
        let tier = dir.path().join("tier");
        let rt = runtime().expect("runtime");
        let store = open_on(&tier, &dir.path().join("a"));
        assert_eq!(
            store.cache.storage().device().partitions(),
            1 + 8,
            "8 blocks"
        );
        store.insert(1, entry());
        store.insert(2, entry());
        rt.block_on(store.cache.storage().wait());
        assert_eq!(store.remove(&[1, 3]), vec![1], "only what the tier holds");
        // More purges of absent keys than the tombstone log has slots.
        let absent: Vec<u128> = (1000..1000 + 9000).collect();
        assert!(absent.len() as u64 > tombstone_slots(32 << 20));
        assert!(store.remove(&absent).is_empty());
        store.close();
        let store = open_on(&tier, &dir.path().join("b"));
        assert!(rt.block_on(store.get(1)).is_none(), "the purge stayed");
        let kept = rt.block_on(store.get(2)).expect("kept");
        assert_eq!(kept.entry(), &entry());
        store.close();
    }

    #[test]
    fn hits_of_a_key_share_one_read_and_the_budget_bounds_reads() {
        let dir = tempfile::tempdir().expect("dir");
        let rt = runtime().expect("runtime");
        let store = open_on(&dir.path().join("tier"), &dir.path().join("lock"));
        let keys: Vec<u128> = (0..=HELD_BLOCKS as u128).collect();
        let big = |key: u128| DiskEntry {
            body: Bytes::from(vec![key as u8; 3 << 20]),
            ..entry()
        };
        for key in &keys {
            store.insert(*key, big(*key));
            rt.block_on(store.cache.storage().wait());
        }
        let first = rt.block_on(store.get(0)).expect("hit");
        let second = rt.block_on(store.get(0)).expect("hit");
        assert!(
            Arc::ptr_eq(&first.0, &second.0),
            "one read, one copy for both hits"
        );
        let held: Vec<DiskHit> = keys[1..HELD_BLOCKS as usize]
            .iter()
            .map(|k| rt.block_on(store.get(*k)).expect("within the budget"))
            .collect();
        let last = keys[HELD_BLOCKS as usize];
        assert!(
            rt.block_on(store.get(last)).is_none(),
            "the budget is spent"
        );
        drop((first, second));
        let hit = rt.block_on(store.get(last)).expect("the budget is back");
        assert_eq!(hit.entry(), &big(last));
        // A purge: the next lookup does not share the held read.
        store.remove(&[1]);
        assert!(rt.block_on(store.get(1)).is_none());
        drop(held);
        assert!(store.reads.lock().len() <= 1, "dead reads are forgotten");
        store.close();
    }

    #[test]
    fn writes_dropped_under_a_burst_are_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let rt = runtime().expect("runtime");
        let dropped = IntCounter::new("d", "d").expect("counter");
        let store = open_counting(
            &dir.path().join("tier"),
            &dir.path().join("lock"),
            dropped.clone(),
        );
        // Six entries of most of a block at once: the queue holds one block.
        let keys: Vec<u128> = (0..6).collect();
        for key in &keys {
            store.insert(
                *key,
                DiskEntry {
                    body: Bytes::from(vec![1u8; 3 << 20]),
                    ..entry()
                },
            );
        }
        rt.block_on(store.cache.storage().wait());
        let missing = keys.iter().filter(|k| !store.contains(**k)).count() as u64;
        assert!(dropped.get() > 0, "a burst past the queue drops writes");
        assert_eq!(dropped.get(), missing, "each dropped write counted once");
        store.close();
    }

    #[test]
    fn block_files_past_a_shrunk_capacity_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tier");
        let files = || std::fs::read_dir(&path).expect("dir").count();
        let tier = |max_bytes: u64| DiskTier {
            path: path.display().to_string(),
            max_bytes,
            block_bytes: 4 << 20,
        };
        let counter = || IntCounter::new("d", "d").expect("counter");
        let lock = |name: &str| File::create(dir.path().join(name)).expect("lock");
        let big = DiskStore::open(&tier(64 << 20), lock("a"), counter()).expect("open");
        assert_eq!(files(), 1 + 15, "the tombstone log and 15 blocks");
        big.close();
        let small =
            DiskStore::open(&tier((32 << 20) + 33 * 4096), lock("b"), counter()).expect("open");
        assert_eq!(files(), 1 + 8, "the blocks past 8 are gone");
        small.close();
    }
}
