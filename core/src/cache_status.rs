//! The `Cache-Status` response header (RFC 9211) both runtimes send when their response cache
//! took part in a request (README: Caching): `ixproxy; hit` for a response served from the
//! cache, `ixproxy; fwd=miss` for one fetched from the origin to fill it, `ixproxy; fwd=stale`
//! for a stale entry revalidated with the origin.

/// The response header's name (lower-case).
pub const CACHE_STATUS: &str = "cache-status";

/// Served from the cache without contacting the origin.
pub const HIT: &str = "ixproxy; hit";

/// Not in the cache: fetched from the origin (and stored when cacheable).
pub const FWD_MISS: &str = "ixproxy; fwd=miss";

/// In the cache but stale: revalidated with the origin (a 304 refreshes the entry).
pub const FWD_STALE: &str = "ixproxy; fwd=stale";
