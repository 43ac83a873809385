//! Rules over how much one gateway takes on at once (README: Configuration, `limits:`): client
//! connections open together, in all and from one client address, and origin fetches in flight
//! per source. The runtimes count; the
//! core says whether one more is admitted and what the client gets when it is not.

use crate::config::{ClientLimits, Limits};
use crate::outcome::Rejection;

/// Whether one more client connection may be served while `open` are already being served.
pub fn admits_connection(limits: &ClientLimits, open: usize) -> bool {
    open < limits.max_connections
}

/// Whether one more connection from a client address may be served while `open_from_client`
/// connections from that address are already being served (`limits.max_connections_per_client`,
/// 0 = no limit), so that one address cannot take every slot of `max_connections`. Asked after
/// [`admits_connection`]; a connection refused by either is closed at once.
pub fn admits_client_connection(limits: &ClientLimits, open_from_client: usize) -> bool {
    limits.max_connections_per_client == 0 || open_from_client < limits.max_connections_per_client
}

/// Room in a request head beyond its target and header fields: the method, the version, the
/// spaces and line ends.
const HEAD_SLACK_BYTES: usize = 1024;

/// The longest request head a runtime collects before the request is decided: the target and
/// header limits (`limits.max_request_target_bytes` + `max_request_header_bytes`) and
/// [`HEAD_SLACK_BYTES`]. A head within it reaches the core, whose 414 / 431 answer an
/// over-limit one; a client still sending past it is closed without a reply, so one
/// connection's head costs at most this much memory (README: Limits).
pub fn max_request_head_bytes(limits: &Limits) -> usize {
    limits
        .max_request_target_bytes
        .saturating_add(limits.max_request_header_bytes)
        .saturating_add(HEAD_SLACK_BYTES)
}

/// Whether one more origin fetch of a source may start while `in_flight` of its fetches are
/// already running, under `limits.max_inflight_per_source` = `limit` (0 = unlimited). Redirect
/// hops belong to the request that holds the slot and do not ask again. For a runtime that
/// counts in its own store (the Envoy filter's shared data); [`check_inflight`] is the same
/// rule with the answer.
pub fn admits_inflight(in_flight: u32, limit: u32) -> bool {
    limit == 0 || in_flight < limit
}

/// Checks one more origin fetch for a source that has `in_flight` fetches running already
/// (`limits.max_inflight_per_source`, 0 = unlimited). Runtimes call it once per client request
/// the core forwards, before any origin work, and hold the slot until the request ends.
///
/// # Errors
/// The 503 [`Rejection::overloaded`] (`Retry-After: 1`) when the source is at its limit.
pub fn check_inflight(limits: &Limits, in_flight: u32) -> Result<(), Rejection> {
    if admits_inflight(in_flight, limits.max_inflight_per_source) {
        Ok(())
    } else {
        Err(Rejection::overloaded())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Outcome;

    #[test]
    fn connections_are_admitted_below_the_limit_only() {
        let limits = ClientLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_connections: 2,
            max_connections_per_client: 0,
        };
        assert!(admits_connection(&limits, 0));
        assert!(admits_connection(&limits, 1));
        assert!(!admits_connection(&limits, 2));
        assert!(!admits_connection(&limits, 3));
    }

    #[test]
    fn connections_from_one_address_are_admitted_below_its_share_and_zero_is_no_limit() {
        let mut limits = ClientLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_connections: 100,
            max_connections_per_client: 0,
        };
        assert!(admits_client_connection(&limits, 0));
        assert!(
            admits_client_connection(&limits, usize::MAX - 1),
            "0 = no limit"
        );
        limits.max_connections_per_client = 3;
        assert!(admits_client_connection(&limits, 2));
        assert!(!admits_client_connection(&limits, 3));
        assert!(!admits_client_connection(&limits, 4));
    }

    #[test]
    fn inflight_over_the_limit_is_a_503_and_zero_is_unlimited() {
        let unlimited = Limits::default();
        assert_eq!(unlimited.max_inflight_per_source, 0);
        assert!(check_inflight(&unlimited, u32::MAX).is_ok());

        let two = Limits {
            max_inflight_per_source: 2,
            ..Limits::default()
        };
        assert!(check_inflight(&two, 0).is_ok());
        assert!(check_inflight(&two, 1).is_ok());
        let over = check_inflight(&two, 2).expect_err("third fetch");
        assert_eq!((over.status(), over.outcome()), (503, Outcome::Overloaded));
        assert!(over.headers().any(|h| h == ("retry-after", "1")));
        assert!(admits_inflight(11, 12) && !admits_inflight(12, 12) && !admits_inflight(13, 12));
        assert!(admits_inflight(u32::MAX, 0), "0 = unlimited");
    }
}
