//! The memory storage behind the native response cache: a Pingora cache [`Storage`] that is
//! bounded by `cache.max_bytes` on its own (least recently used entries go first, at the insert
//! that would pass the bound), counts what it holds, and never panics.
//!
//! Why not `pingora_cache::MemCache` (0.9.1, documented "for testing only"): it has no bound of
//! its own and relies on a separate eviction manager that purges asynchronously after the
//! insert (so the bound is passed for a while); it counts only body bytes; it copies the whole
//! body when a fill completes and again on every hit; `update_meta` panics when the entry was
//! evicted or purged during a revalidation, and `write_body` panics after the end. Here bodies
//! are [`Bytes`] shared with every hit (a hit or a range is a reference-counted slice), the
//! weight of an entry is its body, its serialised header and metadata and a fixed
//! [`ENTRY_OVERHEAD`], and each operation takes one short mutex (no body copy under it).
//!
//! With a disk tier ([`super::cache_disk`]) every stored fill is also written to disk, a fill
//! too large for memory goes to disk only, and a memory miss looks on disk: an entry found
//! there is served (and promoted into memory). A purge and a 304 refresh reach both tiers.
//!
//! Streaming partial writes are not offered: a fill is stored when it completes, so
//! concurrent misses wait on the cache lock and then hit, and a response that turns out larger
//! than `max_object_bytes` mid-stream is simply not stored (the client still gets all of it).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use parking_lot::Mutex;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora::{Error, ErrorType, Result};
use prometheus::IntGauge;

use super::cache_disk::{self, DiskEntry, DiskHit, DiskStore};

/// Bytes counted for each entry besides its body and serialised metadata: the hash map slot
/// and key, the LRU index node, the body's shared allocation header.
pub const ENTRY_OVERHEAD: usize = 256;

/// The most a fill reserves before its body arrives (the body then grows by doubling).
pub const FILL_RESERVE_BYTES: usize = 64 * 1024;

/// One stored answer.
struct Entry {
    /// Serialised [`CacheMeta`] (internal part, header part).
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    /// Position in the LRU order (larger = used more recently).
    tick: u64,
    weight: usize,
}

fn weight_of(meta: &(Vec<u8>, Vec<u8>), body: &Bytes) -> usize {
    body.len() + meta.0.len() + meta.1.len() + ENTRY_OVERHEAD
}

#[derive(Default)]
struct Inner {
    entries: HashMap<HashBinary, Entry>,
    /// tick → key, oldest first.
    lru: BTreeMap<u64, HashBinary>,
    tick: u64,
    bytes: usize,
    /// Bumped by every purge: a fill that started before it is not stored.
    purges: u64,
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn remove(&mut self, key: &HashBinary) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                self.lru.remove(&entry.tick);
                self.bytes -= entry.weight;
                true
            }
            None => false,
        }
    }

    /// Drops least recently used entries until `incoming` more bytes fit under `max_bytes`.
    fn make_room(&mut self, incoming: usize, max_bytes: usize) {
        while self.bytes + incoming > max_bytes {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes -= entry.weight;
            }
        }
    }
}

/// The bounded memory storage (see the module docs). Lives for the whole process (Pingora's
/// [`Storage`] methods take `&'static self`).
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_bytes: usize,
    max_object_bytes: usize,
    bytes_gauge: IntGauge,
    /// The disk tier, once it is open (never without `cache.disk`).
    disk: OnceLock<&'static DiskStore>,
}

/// The disk key of a cache key hash.
fn disk_key(hash: &HashBinary) -> u128 {
    u128::from_be_bytes(*hash)
}

impl MemoryStore {
    /// A store holding at most `max_bytes` (entry weights, see [`ENTRY_OVERHEAD`]), never an
    /// answer whose body is over `max_object_bytes`, reporting what it holds in `bytes_gauge`.
    pub fn new(max_bytes: u64, max_object_bytes: u64, bytes_gauge: IntGauge) -> Self {
        MemoryStore {
            inner: Mutex::default(),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_object_bytes: usize::try_from(max_object_bytes).unwrap_or(usize::MAX),
            bytes_gauge,
            disk: OnceLock::new(),
        }
    }

    /// Adds the disk tier under this store (once; later calls change nothing).
    pub fn attach_disk(&self, disk: &'static DiskStore) {
        let _ = self.disk.set(disk);
    }

    /// The weight of everything stored.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// How many answers are stored.
    #[cfg(test)]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Removes the entries of these keys (primary keys, see [`CacheKey::new`]) from both
    /// tiers; a fill in progress when this runs is not stored. Returns how many entries were
    /// removed (on disk: that the tier's index held the key).
    pub fn purge_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> usize {
        let hashes: Vec<HashBinary> = keys
            .into_iter()
            .map(|key| CacheKey::new(key, "").combined_bin())
            .collect();
        let mut inner = self.inner.lock();
        inner.purges += 1;
        // Under the lock: a fill that passed its epoch check has queued its disk write
        // already, so the tombstone is newer than it.
        let on_disk = self.purge_disk(&hashes);
        let removed = hashes
            .iter()
            .filter(|hash| inner.remove(hash) || on_disk.contains(&disk_key(hash)))
            .count();
        self.report(&inner);
        removed
    }

    /// Purges these keys on disk: in the attached tier, or kept for a tier still waiting for
    /// its directory. Returns the keys the tier held.
    fn purge_disk(&self, hashes: &[HashBinary]) -> Vec<u128> {
        let keys: Vec<u128> = hashes.iter().map(disk_key).collect();
        match self.disk.get().copied() {
            Some(disk) => disk.remove(&keys),
            None => cache_disk::purge_unattached(&keys).map_or_else(Vec::new, |d| d.remove(&keys)),
        }
    }

    fn report(&self, inner: &Inner) {
        self.bytes_gauge
            .set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
    }

    /// Stores a completed fill (unless a purge ran since it started, or it is over a bound) and
    /// writes it to the disk tier too (there even when it is too large for memory); or, with
    /// `promotion`, keeps an entry read from disk in memory, unless memory has one of the key
    /// already (stored since the lookup: newer).
    fn insert(
        &self,
        key: HashBinary,
        meta: (Vec<u8>, Vec<u8>),
        body: Bytes,
        epoch: u64,
        promotion: bool,
    ) -> usize {
        let weight = weight_of(&meta, &body);
        let mut inner = self.inner.lock();
        if inner.purges != epoch
            || body.len() > self.max_object_bytes
            || (promotion && inner.entries.contains_key(&key))
        {
            return 0;
        }
        if let (false, Some(disk)) = (promotion, self.disk.get()) {
            disk.insert(
                disk_key(&key),
                DiskEntry {
                    meta_internal: meta.0.clone(),
                    meta_header: meta.1.clone(),
                    body: body.clone(),
                },
            );
        }
        if weight > self.max_bytes {
            return 0;
        }
        inner.remove(&key);
        inner.make_room(weight, self.max_bytes);
        let tick = inner.next_tick();
        inner.lru.insert(tick, key);
        inner.entries.insert(
            key,
            Entry {
                meta,
                body,
                tick,
                weight,
            },
        );
        inner.bytes += weight;
        self.report(&inner);
        weight
    }
}

impl MemoryStore {
    /// The disk tier's entry of `hash`, checked (its head must read and say the body's length),
    /// promoted into memory unless a purge runs meanwhile. The [`DiskHit`] holds the read (and
    /// its share of the tier's held-bytes budget) until the hit finishes.
    async fn look_on_disk(
        &self,
        disk: &'static DiskStore,
        hash: HashBinary,
    ) -> Option<(CacheMeta, DiskHit)> {
        let epoch = self.inner.lock().purges;
        let hit = disk.get(disk_key(&hash)).await?;
        let entry = hit.entry();
        let meta = CacheMeta::deserialize(&entry.meta_internal, &entry.meta_header).ok()?;
        let stored_length = meta
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if stored_length != Some(entry.body.len()) {
            log::warn!("disk tier: an entry's length does not match its head (served as a miss)");
            return None;
        }
        let stored = (entry.meta_internal.clone(), entry.meta_header.clone());
        self.insert(hash, stored, entry.body.clone(), epoch, true);
        Some((meta, hit))
    }

    /// A 304 refresh of an entry held on disk only; whether it was there to refresh.
    async fn refresh_on_disk(
        &self,
        disk: &'static DiskStore,
        hash: HashBinary,
        meta: (Vec<u8>, Vec<u8>),
        epoch: u64,
    ) -> bool {
        // Shares the read of the hit being revalidated (no second copy of the body).
        let Some(hit) = disk.get(disk_key(&hash)).await else {
            return false;
        };
        let entry = DiskEntry {
            meta_internal: meta.0,
            meta_header: meta.1,
            body: hit.entry().body.clone(),
        };
        let inner = self.inner.lock();
        if inner.purges != epoch {
            return false;
        }
        disk.insert(disk_key(&hash), entry);
        true
    }
}

/// Whether a hit is served from the disk tier (it was not in memory when it was looked up).
pub fn served_from_disk(hit: &HitHandler) -> bool {
    hit.as_any()
        .downcast_ref::<BodyHit>()
        .is_some_and(|hit| hit.disk_hit.is_some())
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let found = {
            let mut inner = self.inner.lock();
            let tick = inner.next_tick();
            let hash = key.combined_bin();
            let Inner { entries, lru, .. } = &mut *inner;
            entries.get_mut(&hash).map(|entry| {
                lru.remove(&entry.tick);
                lru.insert(tick, hash);
                entry.tick = tick;
                (entry.meta.clone(), entry.body.clone())
            })
        };
        let (meta, body, disk_hit) = match found {
            Some((meta, body)) => (CacheMeta::deserialize(&meta.0, &meta.1)?, body, None),
            None => match self.disk.get() {
                None => return Ok(None),
                Some(disk) => match self.look_on_disk(disk, key.combined_bin()).await {
                    Some((meta, hit)) => (meta, hit.entry().body.clone(), Some(hit)),
                    None => return Ok(None),
                },
            },
        };
        let end = body.len();
        Ok(Some((
            meta,
            Box::new(BodyHit {
                body,
                start: 0,
                end,
                done: false,
                disk_hit,
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let epoch = self.inner.lock().purges;
        // Reserved up front: the declared length, but at most FILL_RESERVE_BYTES; the body
        // grows with what actually arrives, so a fill a stalled client cuts short (or an
        // origin that declares more than it sends) holds no more than it received.
        let expected = meta
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0)
            .min(self.max_object_bytes)
            .min(FILL_RESERVE_BYTES);
        Ok(Box::new(Fill {
            store: self,
            key: key.combined_bin(),
            meta: meta.serialize()?,
            body: BytesMut::with_capacity(expected),
            epoch,
            over: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let hash = target.key().combined_bin();
        let mut inner = self.inner.lock();
        inner.purges += 1;
        let removed = inner.remove(&hash);
        self.purge_disk(&[hash]);
        self.report(&inner);
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = meta.serialize()?;
        let hash = key.combined_bin();
        if let Some(disk) = self.disk.get() {
            let epoch = {
                let inner = self.inner.lock();
                (!inner.entries.contains_key(&hash)).then_some(inner.purges)
            };
            if let Some(epoch) = epoch {
                // Only on disk (too large for memory): refreshed there.
                return Ok(self.refresh_on_disk(disk, hash, meta, epoch).await);
            }
        }
        let mut inner = self.inner.lock();
        let Inner { entries, bytes, .. } = &mut *inner;
        // Evicted or purged while it was being revalidated: nothing to refresh.
        let Some(entry) = entries.get_mut(&hash) else {
            return Ok(false);
        };
        let weight = weight_of(&meta, &entry.body);
        *bytes = *bytes - entry.weight + weight;
        entry.weight = weight;
        entry.meta = meta;
        if let Some(disk) = self.disk.get() {
            disk.insert(
                disk_key(&hash),
                DiskEntry {
                    meta_internal: entry.meta.0.clone(),
                    meta_header: entry.meta.1.clone(),
                    body: entry.body.clone(),
                },
            );
        }
        self.report(&inner);
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A stored body being served: the whole of it, or the range a seek chose.
struct BodyHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    /// Looked up on disk (the memory tier did not hold it): the read, held (and counted in the
    /// tier's budget) until the hit finishes.
    disk_hit: Option<DiskHit>,
}

#[async_trait]
impl HandleHit for BodyHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "seek start {start} past the body ({} bytes)",
                    self.body.len()
                ),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |end| end.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill in progress: the body so far, stored by [`HandleMiss::finish`].
struct Fill {
    store: &'static MemoryStore,
    key: HashBinary,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    epoch: u64,
    /// The body passed `max_object_bytes`: nothing more is kept and nothing is stored.
    over: bool,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.over || self.body.len() + data.len() > self.store.max_object_bytes {
            self.over = true;
            self.body = BytesMut::new();
            return Error::e_explain(
                ErrorType::InternalError,
                "response over cache.max_object_bytes",
            );
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.over {
            return Ok(MissFinishType::Created(0));
        }
        // A body that grew by doubling may hold up to twice its length; only its length is
        // counted against `max_bytes`, so what is stored holds no more than that.
        let body = if self.body.capacity() > self.body.len() + self.body.len() / 8 {
            bytes::Bytes::copy_from_slice(&self.body)
        } else {
            self.body.freeze()
        };
        // The stored header says the body's length, so hits (and ranges of them) are framed by
        // Content-Length even when the origin sent its answer chunked.
        let mut meta = CacheMeta::deserialize(&self.meta.0, &self.meta.1)?;
        let head = meta.response_header_mut();
        head.remove_header(&header::TRANSFER_ENCODING);
        head.insert_header(header::CONTENT_LENGTH, body.len())?;
        let meta = meta.serialize()?;
        Ok(MissFinishType::Created(
            self.store.insert(self.key, meta, body, self.epoch, false),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn store(max_bytes: u64, max_object: u64) -> &'static MemoryStore {
        let gauge = IntGauge::new("t", "t").expect("gauge");
        Box::leak(Box::new(MemoryStore::new(max_bytes, max_object, gauge)))
    }

    fn meta(etag: &str) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).expect("header");
        header.append_header("etag", etag).expect("etag");
        header
            .append_header("transfer-encoding", "chunked")
            .expect("te");
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    async fn fill(store: &'static MemoryStore, key: &str, body: &[u8]) -> usize {
        let span = Span::inactive().handle();
        let mut miss = store
            .get_miss_handler(&CacheKey::new(key, ""), &meta(key), &span)
            .await
            .expect("miss handler");
        for chunk in body.chunks(7) {
            if miss
                .write_body(Bytes::copy_from_slice(chunk), false)
                .await
                .is_err()
            {
                break;
            }
        }
        match miss.finish().await.expect("finish") {
            MissFinishType::Created(n) => n,
            MissFinishType::Appended(n, _) => n,
        }
    }

    async fn read(
        store: &'static MemoryStore,
        key: &str,
        range: Option<(usize, usize)>,
    ) -> Option<Vec<u8>> {
        let span = Span::inactive().handle();
        let (meta, mut hit) = store.lookup(&CacheKey::new(key, ""), &span).await.ok()??;
        assert!(meta.headers().get("transfer-encoding").is_none());
        if let Some((start, end)) = range {
            hit.seek(start, Some(end)).expect("seek");
        }
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await.expect("read") {
            out.extend_from_slice(&b);
        }
        Some(out)
    }

    #[tokio::test]
    async fn fills_hits_ranges_and_the_stored_length() {
        let s = store(1 << 20, 1 << 16);
        let weight = fill(s, "a", b"hello, cache").await;
        assert!(weight > 12 + ENTRY_OVERHEAD, "{weight}");
        assert_eq!(s.bytes(), weight);
        assert_eq!(
            read(s, "a", None).await.as_deref(),
            Some(&b"hello, cache"[..])
        );
        assert_eq!(
            read(s, "a", Some((7, 12))).await.as_deref(),
            Some(&b"cache"[..])
        );
        let span = Span::inactive().handle();
        let (m, _) = s
            .lookup(&CacheKey::new("a", ""), &span)
            .await
            .expect("ok")
            .expect("hit");
        assert_eq!(m.headers()["content-length"], "12");
        assert_eq!(m.headers()["etag"], "a");
        assert!(read(s, "b", None).await.is_none());
    }

    #[tokio::test]
    async fn the_bound_evicts_least_recently_used_first() {
        let body = vec![b'x'; 1000];
        let one = fill(store(1 << 20, 1 << 20), "probe", &body).await;
        let s = store(3 * one as u64, 1 << 20);
        for key in ["a", "b", "c"] {
            fill(s, key, &body).await;
        }
        assert_eq!(s.len(), 3);
        // "a" used: "b" is now the least recently used.
        assert!(read(s, "a", None).await.is_some());
        fill(s, "d", &body).await;
        assert_eq!(s.len(), 3);
        assert!(s.bytes() <= 3 * one);
        assert!(read(s, "b", None).await.is_none(), "b evicted");
        for key in ["a", "c", "d"] {
            assert!(read(s, key, None).await.is_some(), "{key} kept");
        }
        for i in 0..100 {
            fill(s, &format!("k{i}"), &body).await;
            assert!(s.bytes() <= 3 * one);
        }
    }

    #[tokio::test]
    async fn objects_over_the_limits_are_not_stored() {
        let s = store(1 << 20, 100);
        assert_eq!(fill(s, "big", &[b'x'; 101]).await, 0);
        assert!(read(s, "big", None).await.is_none());
        assert!(fill(s, "ok", &[b'x'; 100]).await > 0);
        let tiny = store(100, 1 << 20);
        assert_eq!(fill(tiny, "a", b"x").await, 0, "weight over max_bytes");
        assert_eq!(tiny.bytes(), 0);
    }

    #[tokio::test]
    async fn purge_removes_and_a_fill_running_across_it_is_dropped() {
        let s = store(1 << 20, 1 << 20);
        fill(s, "a", b"one").await;
        let span = Span::inactive().handle();
        let mut running = s
            .get_miss_handler(&CacheKey::new("b", ""), &meta("b"), &span)
            .await
            .expect("miss");
        running
            .write_body(Bytes::from_static(b"two"), false)
            .await
            .expect("write");
        assert_eq!(s.purge_keys(["a", "zzz"]), 1);
        assert!(read(s, "a", None).await.is_none());
        assert!(matches!(
            running.finish().await,
            Ok(MissFinishType::Created(0))
        ));
        assert!(read(s, "b", None).await.is_none());
        assert_eq!(s.bytes(), 0);
        // A meta update of a purged entry is not an error (the revalidation just does not stick).
        let updated = s
            .update_meta(&CacheKey::new("a", ""), &meta("a"), &span)
            .await;
        assert!(matches!(updated, Ok(false)));
    }

    #[tokio::test]
    async fn a_promotion_from_disk_never_replaces_a_newer_entry_in_memory() {
        let s = store(1 << 20, 1 << 20);
        fill(s, "a", b"newer").await;
        let hash = CacheKey::new("a", "").combined_bin();
        let epoch = s.inner.lock().purges;
        let older = meta("a").serialize().expect("meta");
        // What a lookup read from disk before the fill above was stored.
        let promoted = s.insert(
            hash,
            older.clone(),
            Bytes::from_static(b"older"),
            epoch,
            true,
        );
        assert_eq!(promoted, 0);
        assert_eq!(read(s, "a", None).await.as_deref(), Some(&b"newer"[..]));
        // With nothing in memory, the entry read from disk is kept.
        let hash_b = CacheKey::new("b", "").combined_bin();
        assert!(s.insert(hash_b, older, Bytes::from_static(b"older"), epoch, true) > 0);
    }
}
