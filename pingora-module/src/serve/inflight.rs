//! Origin fetches in flight per source (`limits.max_inflight_per_source`).
//!
//! The gateway takes a [`Slot`] for each request the core forwards, before any origin work,
//! and keeps it in the request's context: it is released when the context is dropped, which
//! happens on every path (answered, failed, cut by a deadline, the client gone). Whether one
//! more is admitted is the core's rule ([`check_inflight`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use ixproxy_core::limits::check_inflight;
use ixproxy_core::{Rejection, Sources};

/// Counters of origin fetches in flight, one per source.
pub struct Inflight {
    by_source: HashMap<String, Arc<AtomicU32>>,
}

/// One origin fetch counted in; counted out when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inflight {
    /// A zero counter for every source of `sources`.
    pub fn new(sources: &Sources) -> Self {
        Inflight {
            by_source: sources
                .iter()
                .map(|s| (s.name.clone(), Arc::new(AtomicU32::new(0))))
                .collect(),
        }
    }

    /// Counters for `sources` after a reload: a source that keeps its name keeps its counter,
    /// so the fetches still running under the previous config count against the new limit;
    /// a new source starts at zero.
    pub fn carried_over(&self, sources: &Sources) -> Self {
        Inflight {
            by_source: sources
                .iter()
                .map(|s| {
                    let counter = self
                        .by_source
                        .get(&s.name)
                        .map_or_else(|| Arc::new(AtomicU32::new(0)), Arc::clone);
                    (s.name.clone(), counter)
                })
                .collect(),
        }
    }

    /// Counts one more fetch for `source` if the core admits it (`None`: no limit to keep).
    ///
    /// # Errors
    /// The core's 503 `overloaded` rejection when the source is at its limit.
    pub fn acquire(&self, sources: &Sources, source: &str) -> Result<Option<Slot>, Rejection> {
        let limits = sources.limits();
        let Some(counter) = self.by_source.get(source) else {
            return Ok(None);
        };
        if limits.max_inflight_per_source == 0 {
            return Ok(None);
        }
        let before = counter.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(counter));
        check_inflight(limits, before).map(|()| Some(slot))
    }
}

#[cfg(test)]
mod tests {
    use ixproxy_core::config::{MapSecrets, RawConfig};

    use super::*;

    fn sources(limit: u32) -> Sources {
        let yaml = format!(
            "limits: {{max_inflight_per_source: {limit}}}\nsources:\n  - {{name: a, hosts: [a.test], secure_url_tokens: [t]}}\n  - {{name: b, hosts: [b.test], secure_url_tokens: [t]}}\n"
        );
        RawConfig::from_yaml(&yaml)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid")
            .sources
    }

    #[test]
    fn slots_are_per_source_and_released_when_dropped() {
        let s = sources(2);
        let inflight = Inflight::new(&s);
        let one = inflight.acquire(&s, "a").expect("1st");
        let two = inflight.acquire(&s, "a").expect("2nd");
        assert!(one.is_some() && two.is_some());
        let third = inflight.acquire(&s, "a").expect_err("3rd");
        assert_eq!(third.status(), 503);
        // Another source has its own count; a refusal takes no slot.
        let b = inflight.acquire(&s, "b").expect("b");
        drop(one);
        let again = inflight.acquire(&s, "a").expect("after a release");
        assert!(inflight.acquire(&s, "a").is_err());
        drop((two, again, b));
        assert_eq!(inflight.by_source["a"].load(Ordering::SeqCst), 0);
        assert_eq!(inflight.by_source["b"].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_reload_keeps_the_counts_of_the_sources_it_keeps() {
        let before = sources(1);
        let inflight = Inflight::new(&before);
        let held = inflight.acquire(&before, "a").expect("a").expect("slot");
        let yaml = "limits: {max_inflight_per_source: 1}\nsources:\n  - {name: a, hosts: [a.test], secure_url_tokens: [t]}\n  - {name: c, hosts: [c.test], secure_url_tokens: [t]}\n";
        let after = RawConfig::from_yaml(yaml)
            .and_then(|raw| raw.validate(&MapSecrets::new()))
            .expect("valid")
            .sources;
        let renewed = inflight.carried_over(&after);
        assert_eq!(
            renewed
                .acquire(&after, "a")
                .expect_err("still held")
                .status(),
            503
        );
        assert!(renewed.acquire(&after, "c").expect("new source").is_some());
        assert!(!renewed.by_source.contains_key("b"));
        drop(held);
        assert!(renewed.acquire(&after, "a").expect("released").is_some());
    }

    #[test]
    fn zero_is_unlimited() {
        let s = sources(0);
        let inflight = Inflight::new(&s);
        for _ in 0..100 {
            assert!(inflight.acquire(&s, "a").expect("unlimited").is_none());
        }
    }
}
