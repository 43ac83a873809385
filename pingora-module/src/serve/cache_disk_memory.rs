//! What the disk tier ([`super`], `cache_disk.rs`) may hold in memory, in blocks of the tier
//! (`cache.disk` block size, one `cache.max_object_bytes` entry and its head). A file of its own
//! so that `tests/deploy_memory.rs` counts the same figures the tier is built with.

/// What disk hits may hold at once, in blocks: a read takes a whole block of this budget before
/// it starts (the entry's size is known only once read) and keeps what its entry weighs until
/// the last hit sharing it finishes. When it is spent, a lookup on disk is a miss.
pub const HELD_BLOCKS: u64 = 4;

/// What the tier's writes hold, in blocks: foyer's two write buffers of its one flusher (the
/// buffer size is one block), the entries in them (held until written: up to a block per
/// buffer), and its write queue, bounded by one block (a write past that is dropped).
pub const WRITE_BLOCKS: u64 = 5;

/// The most the disk tier holds in memory with blocks of `block_bytes`: its writes, and its
/// held reads twice (a read in flight holds its read buffer and the decoded entry at once).
#[must_use]
pub const fn memory_bytes(block_bytes: u64) -> u64 {
    (WRITE_BLOCKS + 2 * HELD_BLOCKS) * block_bytes
}
