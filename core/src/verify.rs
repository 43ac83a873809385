//! imgix URL signature verification over the raw request target (README: URL format).
//!
//! The signature base is `token + path + ("?" + query_without_s if non-empty)` over the bytes as
//! sent: nothing is decoded or re-encoded, so any client-side encoding difference shows up as a
//! mismatch rather than being silently "fixed".

use md5::{Digest, Md5};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::secret::Secret;

/// A request target split around its `s` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedTarget<'a> {
    /// Raw path (before the first `?`).
    pub path: &'a str,
    /// Raw query without the trailing `s` parameter; empty when `s` was the only parameter.
    pub query: &'a str,
    /// The 32 lowercase hex characters of `s`.
    pub signature: &'a str,
}

impl SignedTarget<'_> {
    /// The string whose MD5 is the signature, given a token: `token + path + ["?" + query]`.
    pub fn base(&self, token: &str) -> String {
        let mut base = String::with_capacity(token.len() + self.path.len() + self.query.len() + 1);
        base.push_str(token);
        base.push_str(self.path);
        if !self.query.is_empty() {
            base.push('?');
            base.push_str(self.query);
        }
        base
    }

    /// MD5 of [`SignedTarget::base`], hashed piece by piece (no copy of the target).
    pub fn digest(&self, token: &str) -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update(token.as_bytes());
        md5.update(self.path.as_bytes());
        if !self.query.is_empty() {
            md5.update(b"?");
            md5.update(self.query.as_bytes());
        }
        md5.finalize().into()
    }

    /// Raw `(key, value)` pairs of the signed query (no `s`), in order; a parameter without `=`
    /// has an empty value.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        // Byte scans rather than `split('&')` / `split_once('=')`: their searchers cost more to
        // set up than these short parameters take to scan (bench/NOTES.md: The core).
        let mut rest = Some(self.query);
        std::iter::from_fn(move || loop {
            let query = rest?;
            let (param, tail) = split_at_byte(query, b'&');
            rest = tail;
            if !param.is_empty() {
                let (key, value) = split_at_byte(param, b'=');
                return Some((key, value.unwrap_or("")));
            }
        })
    }
}

/// `text` split at the first `byte` (an ASCII character): before it, and after it when present.
fn split_at_byte(text: &str, byte: u8) -> (&str, Option<&str>) {
    match text.bytes().position(|b| b == byte) {
        // `byte` is ASCII, so both sides are on character boundaries.
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

/// Why a request target's signature is not acceptable (all map to 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `s` parameter.
    #[error("missing signature parameter s")]
    Missing,
    /// More than one `s` parameter.
    #[error("signature parameter s appears more than once")]
    Duplicated,
    /// `s` is not the last parameter.
    #[error("signature parameter s must be the last parameter")]
    NotLast,
    /// `s` is not 32 lowercase hex characters.
    #[error("signature parameter s must be 32 lowercase hex characters")]
    Malformed,
    /// Well-formed, but no token of the source produces it.
    #[error("signature does not match")]
    Mismatch,
}

/// Splits a raw request target into path, signed query and `s`, enforcing the form rules.
///
/// # Errors
/// [`SignatureError::Missing`], [`SignatureError::Duplicated`], [`SignatureError::NotLast`] or
/// [`SignatureError::Malformed`].
pub fn split_target(target: &str) -> Result<SignedTarget<'_>, SignatureError> {
    // `find` for the one `?` (a long path: its searcher scans words at a time), then one pass
    // over the query's bytes for where each parameter starts and which have the key `s` (`s`
    // alone or `s=...`).
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let bytes = query.as_bytes();
    let mut s_count = 0usize;
    let mut last_s_start = 0usize;
    let mut last_param_start = 0usize;
    let mut start = 0usize;
    let mut param_end = |start: usize, end: usize| {
        let param = &bytes[start..end];
        if param == b"s" || param.starts_with(b"s=") {
            s_count += 1;
            last_s_start = start;
        }
        last_param_start = start;
    };
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'&' {
            param_end(start, i);
            start = i + 1;
        }
    }
    param_end(start, bytes.len());
    let s_start = match s_count {
        0 => return Err(SignatureError::Missing),
        1 => last_s_start,
        _ => return Err(SignatureError::Duplicated),
    };
    if s_start != last_param_start {
        return Err(SignatureError::NotLast);
    }
    let signature = query[s_start..].strip_prefix("s=").unwrap_or("");
    if signature.len() != 32
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(SignatureError::Malformed);
    }
    let signed_query = query[..s_start]
        .strip_suffix('&')
        .unwrap_or(&query[..s_start]);
    Ok(SignedTarget {
        path,
        query: signed_query,
        signature,
    })
}

/// Lowercase hex MD5 of `base`.
pub fn md5_hex(base: &str) -> String {
    crate::hex::encode(&Md5::digest(base.as_bytes()), crate::hex::LOWER)
}

/// Verifies a raw request target against a source's tokens (any one may match).
///
/// The comparison is constant-time and every token is tried, so timing reveals neither the
/// expected signature nor which token matched.
///
/// # Errors
/// The form errors of [`split_target`], or [`SignatureError::Mismatch`].
pub fn verify<'a>(target: &'a str, tokens: &[Secret]) -> Result<SignedTarget<'a>, SignatureError> {
    verify_token(target, tokens).map(|(signed, _)| signed)
}

/// [`verify`], also saying which token verified the target (its position in `tokens`; the last
/// one when several share a value). The position is selected without a branch, like the
/// comparison.
///
/// # Errors
/// As [`verify`].
pub fn verify_token<'a>(
    target: &'a str,
    tokens: &[Secret],
) -> Result<(SignedTarget<'a>, usize), SignatureError> {
    let signed = split_target(target)?;
    // `split_target` admits only 32 lowercase hex characters, so this always decodes.
    let sent: [u8; 16] =
        crate::hex::decode(signed.signature, crate::hex::LOWER).ok_or(SignatureError::Malformed)?;
    let mut matched = subtle::Choice::from(0);
    let mut position = 0u64;
    for (i, token) in tokens.iter().enumerate() {
        let expected = signed.digest(token.expose());
        let equal = expected.as_slice().ct_eq(&sent);
        position.conditional_assign(&(i as u64), equal);
        matched |= equal;
    }
    if bool::from(matched) {
        Ok((signed, usize::try_from(position).unwrap_or(0)))
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(t: &[&str]) -> Vec<Secret> {
        t.iter().map(|t| Secret::new(*t)).collect()
    }

    #[test]
    fn verify_token_names_the_token_that_matched() {
        let target = "/http%3A%2F%2Fa.test%2Fx.png?w=1&s=";
        let unsigned = format!("{target}{}", "0".repeat(32));
        let sig = md5_hex(&split_target(&unsigned).expect("form").base("second"));
        let signed = format!("{target}{sig}");
        let toks = tokens(&["first", "second", "third"]);
        assert_eq!(verify_token(&signed, &toks).map(|(_, i)| i), Ok(1));
        assert_eq!(verify_token(&signed, &toks[1..2]).map(|(_, i)| i), Ok(0));
        assert_eq!(
            verify_token(&signed, &tokens(&["first"])).map(|(_, i)| i),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn verifies_the_blueprint_example() {
        let target =
            "/http%3A%2F%2Favatars.com%2Fjohn-smith.png?s=493a52f008c91416351f8b33d4883135";
        let signed = verify(target, &tokens(&["FOO123bar"])).expect("valid");
        assert_eq!(signed.path, "/http%3A%2F%2Favatars.com%2Fjohn-smith.png");
        assert_eq!(signed.query, "");
    }

    #[test]
    fn any_token_of_the_source_verifies() {
        let target = "/users/1.png?w=400&h=300&s=c7b86f666a832434dd38577e38cf86d1";
        assert!(verify(target, &tokens(&["other", "FOO123bar"])).is_ok());
        assert_eq!(
            verify(target, &tokens(&["other"])),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(target, &[]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn form_errors() {
        let sig = "c7b86f666a832434dd38577e38cf86d1";
        let cases = [
            ("/a.png", SignatureError::Missing),
            ("/a.png?w=1", SignatureError::Missing),
            (
                "/a.png?S=c7b86f666a832434dd38577e38cf86d1",
                SignatureError::Missing,
            ),
            (
                &format!("/a.png?s={sig}&w=1") as &str,
                SignatureError::NotLast,
            ),
            (
                &format!("/a.png?s={sig}&s={sig}"),
                SignatureError::Duplicated,
            ),
            (&format!("/a.png?w=1&s={sig}&"), SignatureError::NotLast),
            (
                "/a.png?s=C7B86F666A832434DD38577E38CF86D1",
                SignatureError::Malformed,
            ),
            (
                "/a.png?s=c7b86f666a832434dd38577e38cf86d",
                SignatureError::Malformed,
            ),
            ("/a.png?s", SignatureError::Malformed),
            ("/a.png?s=", SignatureError::Malformed),
        ];
        for (target, want) in cases {
            assert_eq!(split_target(target).err(), Some(want), "{target}");
        }
    }

    #[test]
    fn params_are_raw_pairs_in_order() {
        let signed =
            split_target("/a.png?w=1&&flag&txt=a=b%26c&=v&s=00000000000000000000000000000000")
                .expect("well-formed");
        let params: Vec<_> = signed.params().collect();
        assert_eq!(
            params,
            [("w", "1"), ("flag", ""), ("txt", "a=b%26c"), ("", "v")]
        );
        let only_s = split_target("/a.png?s=00000000000000000000000000000000").expect("form");
        assert_eq!(only_s.params().count(), 0);
    }

    #[test]
    fn plus_and_percent_stay_raw_in_the_base() {
        let signed = split_target("/a+b%20c.png?x=a+b&s=00000000000000000000000000000000")
            .expect("well-formed");
        assert_eq!(signed.base("T"), "T/a+b%20c.png?x=a+b");
    }
}
