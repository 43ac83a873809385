//! The state that carries a request's fallback image (SPEC §15) across the stream Envoy
//! recreates for it: what the filter stores in Envoy filter state ([`FALLBACK_PROPERTY`]) and
//! reads back. Pure, so it is tested natively.
//!
//! How the hop happens: when a forwarded request fails in a way the core gives a fallback for
//! ([`ixproxy_core::FallbackKind`]), the filter stores a [`FallbackState::Taken`] and marks the
//! response with [`FALLBACK_HOP_HEADER`]; Envoy's custom response filter (installed by
//! `ixproxy envoy-config` when a source has a fallback image) replaces the response with a new
//! request for [`FALLBACK_AUTHORITY`], which the filter recognises by that state and sends to
//! the fallback image's URL like an origin URL. The image's answer gets the original status.
//!
//! Before that, a request of a source whose fallback appends the request's params stores them
//! ([`FallbackState::Params`]): a redirect hop's stream no longer has the client's target.

use ixproxy_core::{FallbackKind, Outcome};

use crate::hop::{decode_fields, encode_fields};

pub use ixproxy_core::fallback::{FALLBACK_AUTHORITY, FALLBACK_HOP_HEADER, FALLBACK_PROPERTY};

/// A request's fallback state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackState {
    /// The request's gateway params, kept for a fallback that appends them.
    Params(String),
    /// The fallback was taken: what the stream Envoy recreates for it needs.
    Taken(Taken),
}

/// A fallback taken for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Source name.
    pub source: String,
    /// The fallback image's URL (params appended).
    pub url: String,
    /// Which fallback.
    pub kind: FallbackKind,
    /// The status the client would have got without it.
    pub status: u16,
    /// The outcome of the original failure when the gateway answered it (`None`: the origin
    /// answered, `forwarded`).
    pub outcome: Option<Outcome>,
    /// Cache-Control cap from `expires`.
    pub max_age: Option<u64>,
    /// The client request is a HEAD: so is the image's (Envoy recreates the request as a GET,
    /// and would then send the image's body to a HEAD).
    pub head: bool,
    /// The client's `Origin` when the source's CORS list needs it: the recreated request no
    /// longer has it (the first attempt removed it before the origin fetch).
    pub request_origin: Option<String>,
}

impl FallbackState {
    const MAGIC: &'static [u8] = b"ixfb1";

    /// Length-prefixed fields after a magic tag (no field can break the framing).
    pub fn encode(&self) -> Vec<u8> {
        let fields: Vec<String> = match self {
            FallbackState::Params(params) => vec!["p".into(), params.clone()],
            FallbackState::Taken(t) => vec![
                "t".into(),
                t.source.clone(),
                t.url.clone(),
                t.kind.as_str().into(),
                t.status.to_string(),
                t.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
                t.max_age.map(|a| a.to_string()).unwrap_or_default(),
                if t.head { "1" } else { "0" }.into(),
                // `o` + the value, so that an empty `Origin` stays apart from none.
                t.request_origin
                    .as_ref()
                    .map(|origin| format!("o{origin}"))
                    .unwrap_or_default(),
            ],
        };
        encode_fields(Self::MAGIC, fields)
    }

    /// Parses [`FallbackState::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<FallbackState> {
        let fields = decode_fields(Self::MAGIC, bytes)?;
        match fields.first().map(String::as_str) {
            Some("p") => {
                let [_, params]: [String; 2] = fields.try_into().ok()?;
                Some(FallbackState::Params(params))
            }
            Some("t") => {
                let [_, source, url, kind, status, outcome, max_age, head, request_origin]: [String;
                    9] = fields.try_into().ok()?;
                Some(FallbackState::Taken(Taken {
                    source,
                    url,
                    kind: FallbackKind::from_label(&kind)?,
                    status: status.parse().ok()?,
                    outcome: if outcome.is_empty() {
                        None
                    } else {
                        Some(Outcome::from_label(&outcome)?)
                    },
                    max_age: if max_age.is_empty() {
                        None
                    } else {
                        Some(max_age.parse().ok()?)
                    },
                    head: match head.as_str() {
                        "1" => true,
                        "0" => false,
                        _ => return None,
                    },
                    request_origin: match request_origin.strip_prefix('o') {
                        Some(origin) => Some(origin.to_owned()),
                        None if request_origin.is_empty() => None,
                        None => return None,
                    },
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_state_round_trips_and_refuses_anything_else() {
        let taken = FallbackState::Taken(Taken {
            source: "we:ird 1:".into(),
            url: "https://cdn.example/m.png?w=1:2".into(),
            kind: FallbackKind::Missing,
            status: 404,
            outcome: None,
            max_age: Some(60),
            head: false,
            request_origin: Some("https://app.example:8443".into()),
        });
        assert_eq!(FallbackState::decode(&taken.encode()), Some(taken.clone()));
        let failed = FallbackState::Taken(Taken {
            source: "s".into(),
            url: "http://127.0.0.1:8/e.png".into(),
            kind: FallbackKind::Error,
            status: 502,
            outcome: Some(Outcome::OriginError),
            max_age: None,
            head: true,
            request_origin: None,
        });
        assert_eq!(FallbackState::decode(&failed.encode()), Some(failed));
        let empty_origin = FallbackState::Taken(Taken {
            source: "s".into(),
            url: "http://127.0.0.1:8/e.png".into(),
            kind: FallbackKind::Error,
            status: 502,
            outcome: None,
            max_age: None,
            head: false,
            request_origin: Some(String::new()),
        });
        assert_eq!(
            FallbackState::decode(&empty_origin.encode()),
            Some(empty_origin)
        );
        let params = FallbackState::Params("w=1&fm=png".into());
        assert_eq!(
            FallbackState::decode(&params.encode()),
            Some(params.clone())
        );
        let empty = FallbackState::Params(String::new());
        assert_eq!(FallbackState::decode(&empty.encode()), Some(empty));
        let encoded = taken.encode();
        for bad in [
            &b""[..],
            b"ixfb1",
            b"ixfb11:x",
            b"ixhop31:p0:",
            &encoded[..encoded.len() - 1],
            &[encoded.as_slice(), b"1:x"].concat(),
            b"ixfb11:t1:s1:u7:unknown3:4040:0:1:00:",
            b"ixfb11:t1:s1:u7:missing3:4048:not-one0:1:00:",
            b"ixfb11:t1:s1:u7:missing3:4040:0:1:x0:",
            b"ixfb11:t1:s1:u7:missing3:4040:0:1:01:x",
            b"ixfb11:t1:s1:u7:missing3:4040:0:1:0",
        ] {
            assert_eq!(FallbackState::decode(bad), None, "{bad:?}");
        }
    }
}
