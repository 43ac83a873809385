//! What the disk tier ([`super`], `cache_disk.rs`) may hold in memory: blocks of the tier
//! (`cache.disk` block size, one `cache.max_object_bytes` entry and its head) and foyer's index
//! of the entries it stores. A file of its own so that `tests/deploy_memory.rs` counts the same
//! figures the tier is built with.

/// What disk hits may hold at once, in blocks: a read takes a whole block of this budget before
/// it starts (the entry's size is known only once read) and keeps what its entry weighs until
/// the last hit sharing it finishes. When it is spent, a lookup on disk is a miss.
pub const HELD_BLOCKS: u64 = 4;

/// What the tier's writes hold, in blocks: foyer's two write buffers of its one flusher (the
/// buffer size is one block), the entries in them (held until written: up to a block per
/// buffer), and its write queue, bounded by one block (a write past that is dropped).
pub const WRITE_BLOCKS: u64 = 5;

/// The least space an entry takes on disk: foyer's block engine aligns every entry (its own
/// header, the key, the stored head and body) to a 4 KiB page, so a tier of `max_bytes` holds
/// at most `max_bytes / 4096` entries.
pub const MIN_ENTRY_BYTES: u64 = 4096;

/// What one stored entry costs in memory, for foyer's index: 64 `HashMap<u64, Index>` shards
/// of 40 bytes and a control byte per bucket, up to 16/7 buckets per entry right after a shard
/// doubles (94 bytes), and as much again for the tables outgrown on the way there, should the
/// allocator keep them all (188 bytes). Measured: the process's RSS grew by 87 to 157 bytes per
/// entry while a 1040 MiB tier was filled with 4 KiB entries (200 000 to 240 000 of them, across
/// the shards' doubling at 229 376; and 117 bytes full, after writing twice its capacity).
pub const INDEX_BYTES_PER_ENTRY: u64 = 192;

/// The most foyer's index of a tier of `max_bytes` holds: one entry per [`MIN_ENTRY_BYTES`].
#[must_use]
pub const fn index_bytes(max_bytes: u64) -> u64 {
    max_bytes / MIN_ENTRY_BYTES * INDEX_BYTES_PER_ENTRY
}

/// The most the disk tier holds in memory with blocks of `block_bytes` and a capacity of
/// `max_bytes`: its writes, its held reads twice (a read in flight holds its read buffer and the
/// decoded entry at once), and its index.
#[must_use]
pub const fn memory_bytes(block_bytes: u64, max_bytes: u64) -> u64 {
    (WRITE_BLOCKS + 2 * HELD_BLOCKS) * block_bytes + index_bytes(max_bytes)
}
