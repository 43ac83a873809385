//! The native half of the one failure vocabulary: Pingora's errors and the origin resolver's
//! answers translated into the core's [`Failure`]. What a failure means to the client (status,
//! outcome, reason) is the core's ([`Failure::rejection`]); the Envoy half is
//! `ixproxy_core::envoy::failure_of_details`.

use ixproxy_core::{Failure, Rejection};
use pingora::{Error, ErrorSource, ErrorType};

use super::resolve::ResolveError;

/// The failure behind a proxy error that the phases did not classify themselves; `None` when
/// the client sent something Pingora's codec refused (not a failure of the fetch: a 400).
/// `header_received`: the origin's response header had arrived, so a read that timed out was a
/// pause inside the body.
pub fn of_error(e: &Error, header_received: bool) -> Option<Failure> {
    use ErrorType::*;
    if *e.esource() == ErrorSource::Downstream {
        return match e.etype() {
            WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => {
                Some(Failure::ClientGone)
            }
            _ => None,
        };
    }
    Some(match e.etype() {
        ConnectTimedout => Failure::ConnectTimeout,
        TLSHandshakeTimedout => Failure::TlsHandshakeTimeout,
        ReadTimedout if header_received => Failure::BodyPause,
        ReadTimedout | WriteTimedout => Failure::HeaderTimeout,
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => {
            Failure::Refused
        }
        TLSWantX509Lookup | TLSHandshakeFailure | InvalidCert | HandshakeError => Failure::TlsError,
        InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2 => Failure::Protocol,
        HTTPStatus(500) | InternalError if *e.esource() != ErrorSource::Upstream => {
            Failure::Internal
        }
        _ => Failure::Reset,
    })
}

/// The failure of an origin name lookup.
pub fn of_resolve(e: &ResolveError) -> Failure {
    match e {
        ResolveError::TimedOut => Failure::DnsTimeout,
        ResolveError::NotFound(_) => Failure::DnsUnknown,
    }
}

/// The core's answer to a proxy error (see [`of_error`]): a 400 for a request the codec
/// refused, `None` when the client is gone.
pub fn answer(e: &Error, header_received: bool) -> Option<Rejection> {
    match of_error(e, header_received) {
        Some(failure) => failure.rejection(),
        None => Some(Rejection::bad_request()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ixproxy_core::Outcome;

    #[test]
    fn pingora_errors_become_the_cores_failures() {
        let up = |t: ErrorType| of_error(&Error::new_up(t), false);
        assert_eq!(
            up(ErrorType::ConnectTimedout),
            Some(Failure::ConnectTimeout)
        );
        assert_eq!(
            up(ErrorType::TLSHandshakeTimedout),
            Some(Failure::TlsHandshakeTimeout)
        );
        assert_eq!(up(ErrorType::ReadTimedout), Some(Failure::HeaderTimeout));
        assert_eq!(
            of_error(&Error::new_up(ErrorType::ReadTimedout), true),
            Some(Failure::BodyPause)
        );
        assert_eq!(up(ErrorType::ConnectRefused), Some(Failure::Refused));
        assert_eq!(up(ErrorType::TLSHandshakeFailure), Some(Failure::TlsError));
        assert_eq!(up(ErrorType::InvalidCert), Some(Failure::TlsError));
        assert_eq!(up(ErrorType::ConnectionClosed), Some(Failure::Reset));
        assert_eq!(up(ErrorType::InvalidHTTPHeader), Some(Failure::Protocol));
        let gone = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(of_error(&gone, true), Some(Failure::ClientGone));
        assert_eq!(answer(&gone, true), None, "no answer to a closed client");
        let garbage = Error::new_down(ErrorType::InvalidHTTPHeader);
        assert_eq!(
            answer(&garbage, false).map(|r| (r.status(), r.outcome())),
            Some((400, Outcome::BadRequest))
        );
        let internal = Error::new(ErrorType::InternalError);
        assert_eq!(of_error(&internal, false), Some(Failure::Internal));
        assert_eq!(
            of_resolve(&ResolveError::TimedOut)
                .rejection()
                .map(|r| r.status()),
            Some(504)
        );
        assert_eq!(
            of_resolve(&ResolveError::NotFound("x".to_owned()))
                .rejection()
                .map(|r| r.status()),
            Some(502)
        );
    }
}
