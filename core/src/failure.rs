//! One failure vocabulary: every way an origin fetch can fail, as either runtime sees it, mapped
//! once to the status and outcome of SPEC §6 (any timeout is a 504, every other transport failure
//! a 502).
//!
//! Each runtime only translates what it observes into a [`Failure`]: the native gateway its
//! Pingora errors and resolver results (`pingora-module/src/serve/failure.rs`), the Envoy filter
//! and bootstrap Envoy's response code details and flags ([`crate::envoy::failure_of_details`]).
//! What a failure means to the client is decided here and nowhere else.

use crate::forward::UNFOLLOWABLE_LOCATION;
use crate::outcome::{Outcome, Rejection};

/// A way an origin fetch failed (or the client left while it ran).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The origin's name does not resolve (no such name, no address).
    DnsUnknown,
    /// The origin's name lookup did not finish in time.
    DnsTimeout,
    /// The origin refused the TCP connection.
    Refused,
    /// The origin reset or closed the connection before its answer was complete.
    Reset,
    /// The TCP connection was not established within `upstream.connect_timeout`.
    ConnectTimeout,
    /// The TLS handshake with the origin failed (certificate, name, protocol).
    TlsError,
    /// The TLS handshake with the origin did not complete in time.
    TlsHandshakeTimeout,
    /// No response header within `upstream.timeout` (every redirect hop together).
    HeaderTimeout,
    /// The origin paused inside its body for longer than `upstream.body_timeout`.
    BodyPause,
    /// The origin broke the HTTP protocol (a malformed or oversized response head).
    Protocol,
    /// The origin's body is over `upstream.max_body_bytes`.
    TooLarge,
    /// An origin redirect the runtime's redirect machinery would not follow.
    BadRedirect,
    /// One of the runtime's own concurrency limits refused the fetch.
    Overloaded,
    /// The client went away before its answer was complete.
    ClientGone,
    /// A fault of the gateway itself.
    Internal,
}

impl Failure {
    /// Every failure, for tables and tests.
    pub const ALL: [Failure; 15] = [
        Failure::DnsUnknown,
        Failure::DnsTimeout,
        Failure::Refused,
        Failure::Reset,
        Failure::ConnectTimeout,
        Failure::TlsError,
        Failure::TlsHandshakeTimeout,
        Failure::HeaderTimeout,
        Failure::BodyPause,
        Failure::Protocol,
        Failure::TooLarge,
        Failure::BadRedirect,
        Failure::Overloaded,
        Failure::ClientGone,
        Failure::Internal,
    ];

    /// Whether the failure is a timeout in some phase: always a 504 (SPEC §6).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            Failure::DnsTimeout
                | Failure::ConnectTimeout
                | Failure::TlsHandshakeTimeout
                | Failure::HeaderTimeout
                | Failure::BodyPause
        )
    }

    /// The gateway's answer while no response header went out: the rejection with its status,
    /// outcome and reason; `None` for [`Failure::ClientGone`] (nobody is left to answer).
    pub fn rejection(self) -> Option<Rejection> {
        Some(match self {
            Failure::DnsTimeout
            | Failure::ConnectTimeout
            | Failure::TlsHandshakeTimeout
            | Failure::HeaderTimeout
            | Failure::BodyPause => Rejection::origin_timeout(),
            Failure::DnsUnknown
            | Failure::Refused
            | Failure::Reset
            | Failure::TlsError
            | Failure::Protocol => Rejection::origin_error(),
            Failure::TooLarge => Rejection::origin_too_large(),
            Failure::BadRedirect => Rejection::bad_redirect(UNFOLLOWABLE_LOCATION),
            Failure::Overloaded => Rejection::overloaded(),
            Failure::Internal => Rejection::internal(),
            Failure::ClientGone => return None,
        })
    }

    /// The outcome counted for the request, also once the response header went out (the
    /// transfer is then cut rather than answered).
    pub fn outcome(self) -> Outcome {
        self.rejection()
            .map_or(Outcome::ClientClosed, |rejection| rejection.outcome())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timeout_is_a_504_and_every_other_transport_failure_a_502() {
        let answer = |f: Failure| f.rejection().map(|r| (r.status(), r.outcome()));
        const TIMEOUT: Option<(u16, Outcome)> = Some((504, Outcome::OriginTimeout));
        const ERROR: Option<(u16, Outcome)> = Some((502, Outcome::OriginError));
        for failure in Failure::ALL {
            let expected = match failure {
                Failure::DnsTimeout
                | Failure::ConnectTimeout
                | Failure::TlsHandshakeTimeout
                | Failure::HeaderTimeout
                | Failure::BodyPause => TIMEOUT,
                Failure::DnsUnknown
                | Failure::Refused
                | Failure::Reset
                | Failure::TlsError
                | Failure::Protocol => ERROR,
                Failure::TooLarge => Some((502, Outcome::OriginTooLarge)),
                Failure::BadRedirect => Some((502, Outcome::BadRedirect)),
                Failure::Overloaded => Some((503, Outcome::Overloaded)),
                Failure::Internal => Some((500, Outcome::Internal)),
                Failure::ClientGone => None,
            };
            assert_eq!(answer(failure), expected, "{failure:?}");
            assert_eq!(failure.is_timeout(), expected == TIMEOUT, "{failure:?}");
        }
        assert_eq!(Failure::ClientGone.outcome(), Outcome::ClientClosed);
        assert_eq!(
            Failure::TlsHandshakeTimeout.outcome(),
            Outcome::OriginTimeout
        );
    }
}
