//! Property tests: what the signer produces always verifies and decodes back to the origin,
//! and no single-byte change of a signed target survives verification.

use ixproxy_core::origin::{decode_origin, parse_origin};
use ixproxy_core::secret::Secret;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::verify::verify;
use proptest::prelude::*;

fn host() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4)
        .prop_map(|labels| format!("{}.example", labels.join(".")))
}

fn origin_url() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        host(),
        prop::option::of(1u16..),
        prop::collection::vec("[^/?#\\x00-\\x1f\\x7f%]{0,12}", 0..4),
        prop::option::of("[^#\\x00-\\x1f\\x7f%]{0,20}"),
    )
        .prop_map(|(scheme, host, port, segments, query)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}://{host}{port}/{}{query}", segments.join("/"))
        })
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z][a-z0-9]{0,6}(64)?", "\\PC{0,16}"), 0..5)
        .prop_map(|ps| ps.into_iter().filter(|(k, _)| k != "s").collect())
}

proptest! {
    #[test]
    fn signed_urls_verify_and_decode_to_their_origin(
        token in "[A-Za-z0-9]{1,32}",
        url in origin_url(),
        params in params(),
    ) {
        let target = sign_url(&token, &url, &params, &SignOptions::default());
        let signed = verify(&target, &[Secret::new(token.clone())]);
        prop_assert!(signed.is_ok(), "{target} did not verify: {signed:?}");
        let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
        prop_assert_eq!(decode_origin(path), parse_origin(&url));
        prop_assert!(decode_origin(path).is_ok(), "{} did not decode", url);
    }

    #[test]
    fn any_single_byte_change_is_rejected(
        token in "[A-Za-z0-9]{1,32}",
        url in origin_url(),
        params in params(),
        index in any::<prop::sample::Index>(),
        replacement in 0x20u8..0x7f,
    ) {
        let target = sign_url(&token, &url, &params, &SignOptions::default());
        let mut bytes = target.clone().into_bytes();
        let i = index.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let changed = String::from_utf8(bytes).expect("signed targets are ASCII");
        let result = verify(&changed, &[Secret::new(token)]);
        prop_assert!(result.is_err(), "{changed} (from {target}) still verified");
    }
}
