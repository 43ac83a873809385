//! `limits.max_inflight_per_source` on Envoy: each source's origin fetches in flight, counted in
//! proxy-wasm shared data ([`inflight_key`]) so that every worker thread's VM (each worker has
//! its own) counts in one place. Updates are compare-and-swap loops, bounded by
//! [`MAX_ATTEMPTS`]. Whether one more fetch may start is the core's rule ([`admits_inflight`]).
//!
//! A client request takes its slot when the filter forwards it and gives it back exactly once
//! when its stream ends; the stream Envoy replaces to follow a redirect hands the slot to the
//! hop's stream through the hop state instead ([`crate::hop::Hop::holds_slot`]).

use ixproxy_core::envoy::inflight_key;
use ixproxy_core::limits::admits_inflight;
use ixproxy_core::Sources;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Compare-and-swap attempts before giving up on one update; each failed attempt means another
/// worker changed the count in between, so a few suffice.
pub const MAX_ATTEMPTS: usize = 64;

/// A shared counter store: proxy-wasm shared data, or a map in tests.
pub trait Store {
    /// The value under `key` and its compare-and-swap token (`None`: no value yet).
    ///
    /// # Errors
    /// The host refused the call.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String>;

    /// Stores `value` under `key` if its token is still `cas`; `Ok(false)` when another update
    /// came first.
    ///
    /// # Errors
    /// The host refused the call.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, String>;
}

/// Envoy's shared data of this VM id.
pub struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String> {
        hostcalls::get_shared_data(key).map_err(|status| format!("get_shared_data: {status:?}"))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, String> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(true),
            Err(Status::CasMismatch) => Ok(false),
            Err(status) => Err(format!("set_shared_data: {status:?}")),
        }
    }
}

/// The count stored as 4 little-endian bytes; anything else (no value yet) is 0.
fn decode(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map_or(0, u32::from_le_bytes)
}

/// Applies `update` to the count under `key` with compare-and-swap; `update` returning `None`
/// leaves it unchanged. Returns the count the update was applied to, or `None` when `update`
/// declined.
///
/// # Errors
/// A host call failed, or [`MAX_ATTEMPTS`] updates in a row lost to other workers.
fn update(
    store: &dyn Store,
    key: &str,
    update: impl Fn(u32) -> Option<u32>,
) -> Result<Option<u32>, String> {
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store.get(key)?;
        let current = decode(value.as_deref());
        let Some(next) = update(current) else {
            return Ok(None);
        };
        if store.set(key, &next.to_le_bytes(), cas)? {
            return Ok(Some(current));
        }
    }
    Err(format!(
        "{key}: {MAX_ATTEMPTS} compare-and-swap attempts in a row lost"
    ))
}

/// Creates the counter of every source that has none yet, so that the first acquisitions
/// already compare and swap (Envoy stores a value for a missing key whatever the token).
/// Called when the filter is configured, before any request of this VM.
///
/// # Errors
/// A host call failed.
pub fn init(store: &dyn Store, sources: &Sources) -> Result<(), String> {
    for source in sources.iter() {
        let key = inflight_key(&source.name);
        if store.get(&key)?.0.is_none() {
            store.set(&key, &0u32.to_le_bytes(), None)?;
        }
    }
    Ok(())
}

/// Takes one of `source`'s slots under `limit` (0 = unlimited, nothing is counted). Returns the
/// key of the slot taken, which [`release`] gives back, or `None` when the source is at its
/// limit: the request must be refused.
///
/// # Errors
/// A host call failed, or the count could not be updated.
pub fn acquire(
    store: &dyn Store,
    source: &str,
    limit: u32,
) -> Result<Result<Option<String>, Full>, String> {
    if limit == 0 {
        return Ok(Ok(None));
    }
    let key = inflight_key(source);
    let taken = update(store, &key, |n| {
        admits_inflight(n, limit).then(|| n.saturating_add(1))
    })?;
    Ok(match taken {
        Some(_) => Ok(Some(key)),
        None => Err(Full),
    })
}

/// The source is at its `max_inflight_per_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Gives back the slot under `key` taken by [`acquire`].
///
/// # Errors
/// A host call failed, or the count could not be updated (the slot stays taken).
pub fn release(store: &dyn Store, key: &str) -> Result<(), String> {
    update(store, key, |n| Some(n.saturating_sub(1))).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;
    use crate::edits::fixtures::sources;

    /// Shared data as Envoy keeps it: a value and a token that changes with every store; a set
    /// with a stale token fails, a missing key takes any set. `interfere` other updates happen
    /// between a get and the next set, as another worker's would.
    #[derive(Default)]
    struct Map {
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        interfere: Cell<usize>,
    }

    impl Map {
        fn count(&self, key: &str) -> u32 {
            decode(self.data.borrow().get(key).map(|(v, _)| v.as_slice()))
        }

        fn store(&self, key: &str, value: &[u8]) {
            self.next_cas.set(self.next_cas.get() + 1);
            self.data
                .borrow_mut()
                .insert(key.to_owned(), (value.to_vec(), self.next_cas.get()));
        }
    }

    impl Store for Map {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String> {
            let found = self.data.borrow().get(key).cloned();
            if self.interfere.get() > 0 {
                self.interfere.set(self.interfere.get() - 1);
                // Another worker takes a slot right after this read.
                let n = decode(found.as_ref().map(|(v, _)| v.as_slice()));
                self.store(key, &(n + 1).to_le_bytes());
            }
            Ok(match found {
                Some((value, cas)) => (Some(value), Some(cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, String> {
            let current = self.data.borrow().get(key).map(|(_, c)| *c);
            if let (Some(current), Some(cas)) = (current, cas) {
                if current != cas {
                    return Ok(false);
                }
            }
            self.store(key, value);
            Ok(true)
        }
    }

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back() {
        let map = Map::default();
        init(&map, &sources()).expect("init");
        let key = inflight_key("assets");
        assert_eq!(map.count(&key), 0);
        let first = acquire(&map, "assets", 2).expect("host").expect("free");
        let second = acquire(&map, "assets", 2).expect("host").expect("free");
        assert_eq!(first.as_deref(), Some(key.as_str()));
        assert_eq!(second, first);
        assert_eq!(acquire(&map, "assets", 2).expect("host"), Err(Full));
        assert_eq!(map.count(&key), 2, "a refused request takes nothing");
        release(&map, &key).expect("release");
        assert_eq!(map.count(&key), 1);
        assert!(acquire(&map, "assets", 2).expect("host").is_ok());
        // Unlimited sources count nothing; a count never goes below zero.
        assert_eq!(acquire(&map, "dev", 0).expect("host"), Ok(None));
        let dev = inflight_key("dev");
        release(&map, &dev).expect("release");
        assert_eq!(map.count(&dev), 0);
        // init leaves existing counts alone (another worker's VM configured first).
        init(&map, &sources()).expect("init again");
        assert_eq!(map.count(&key), 2);
    }

    #[test]
    fn concurrent_updates_are_retried_not_lost() {
        let map = Map::default();
        init(&map, &sources()).expect("init");
        let key = inflight_key("assets");
        // Three other workers' acquisitions land between this one's read and write.
        map.interfere.set(3);
        assert!(acquire(&map, "assets", 10).expect("host").is_ok());
        assert_eq!(map.count(&key), 4);
        // With the limit reached by the others in between, this one is refused.
        map.interfere.set(2);
        assert_eq!(acquire(&map, "assets", 6).expect("host"), Err(Full));
        assert_eq!(map.count(&key), 6);
        // Losing every attempt is an error, never a silent extra slot.
        map.interfere.set(MAX_ATTEMPTS);
        assert!(acquire(&map, "assets", u32::MAX).is_err());
    }
}
