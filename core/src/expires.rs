//! `expires` (README: URL format, `expires`) and the `Cache-Control` cap it implies.

use percent_encoding::percent_decode_str;

use crate::verify::SignedTarget;

/// Why an `expires` value refuses the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExpiresError {
    /// Not an integer (→ 400).
    #[error("expires must be an integer number of unix seconds")]
    NotInteger,
    /// Given more than once (→ 400): which one would count is ambiguous.
    #[error("expires must be given at most once")]
    Duplicated,
    /// At or before now (→ 404).
    #[error("this url has expired")]
    Expired,
}

/// Checks the raw `expires` values of a signed query against `now` (unix seconds) and returns
/// the seconds remaining, or `None` when there is no `expires`.
///
/// An integer is an optional `-` followed by ASCII digits; a value too large for 64 bits is far
/// in the future.
///
/// # Errors
/// [`ExpiresError::NotInteger`], [`ExpiresError::Duplicated`] or [`ExpiresError::Expired`].
pub fn check_expires<'a>(
    mut values: impl Iterator<Item = &'a str>,
    now: u64,
) -> Result<Option<u64>, ExpiresError> {
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExpiresError::Duplicated);
    }
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ExpiresError::NotInteger);
    }
    if negative {
        return Err(ExpiresError::Expired);
    }
    let at = digits.parse::<u64>().unwrap_or(u64::MAX);
    if at <= now {
        return Err(ExpiresError::Expired);
    }
    Ok(Some(at - now))
}

/// Checks the `expires` parameters of a verified target (values percent-decoded once) against
/// `now`; the one reading of `expires` the gateway and `ixproxy verify` share.
///
/// # Errors
/// As [`check_expires`].
pub fn check_target_expires(
    signed: &SignedTarget<'_>,
    now: u64,
) -> Result<Option<u64>, ExpiresError> {
    let values: Vec<String> = signed
        .params()
        .filter(|(key, _)| *key == "expires")
        .map(|(_, value)| percent_decode_str(value).decode_utf8_lossy().into_owned())
        .collect();
    check_expires(values.iter().map(String::as_str), now)
}

/// The `Cache-Control` value to send when the response may be cached for at most `max_age`
/// seconds: `max-age` and `s-maxage` are lowered to `max_age` when larger (or unparsable),
/// `max-age` is added when missing, `stale-while-revalidate` and `stale-if-error` are removed
/// (either would let a cache serve the response past the URL's expiry), other directives are
/// kept.
pub fn cap_cache_control(existing: Option<&str>, max_age: u64) -> String {
    let mut directives = Vec::new();
    let mut has_max_age = false;
    for directive in existing.unwrap_or("").split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name_lower = name.trim().to_ascii_lowercase();
        // Serving stale past the URL's expiry would outlive it.
        if name_lower == "stale-while-revalidate" || name_lower == "stale-if-error" {
            continue;
        }
        if name_lower == "max-age" || name_lower == "s-maxage" {
            has_max_age |= name_lower == "max-age";
            let capped = value
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .map_or(max_age, |v| v.min(max_age));
            directives.push(format!("{name_lower}={capped}"));
        } else {
            directives.push(directive.to_owned());
        }
    }
    if !has_max_age {
        directives.push(format!("max-age={max_age}"));
    }
    directives.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules() {
        let check = |v: &[&str], now| check_expires(v.iter().copied(), now);
        assert_eq!(check(&[], 100), Ok(None));
        assert_eq!(check(&["160"], 100), Ok(Some(60)));
        assert_eq!(check(&["100"], 100), Err(ExpiresError::Expired));
        assert_eq!(check(&["99"], 100), Err(ExpiresError::Expired));
        assert_eq!(check(&["-5"], 100), Err(ExpiresError::Expired));
        assert_eq!(
            check(&["99999999999999999999999"], 100),
            Ok(Some(u64::MAX - 100))
        );
        for bad in ["", "1.5", "abc", "+5", "1e9", " 5", "-"] {
            assert_eq!(check(&[bad], 100), Err(ExpiresError::NotInteger), "{bad:?}");
        }
        assert_eq!(check(&["200", "300"], 100), Err(ExpiresError::Duplicated));
    }

    #[test]
    fn cache_control_is_capped() {
        assert_eq!(cap_cache_control(None, 60), "max-age=60");
        assert_eq!(
            cap_cache_control(
                Some("public, max-age=600, stale-while-revalidate=30, Stale-If-Error=86400"),
                60
            ),
            "public, max-age=60"
        );
        assert_eq!(
            cap_cache_control(Some("public, max-age=31536000"), 60),
            "public, max-age=60"
        );
        assert_eq!(cap_cache_control(Some("max-age=10"), 60), "max-age=10");
        assert_eq!(
            cap_cache_control(Some("public, s-maxage=600, Max-Age=\"900\""), 60),
            "public, s-maxage=60, max-age=60"
        );
        assert_eq!(
            cap_cache_control(Some("no-store"), 60),
            "no-store, max-age=60"
        );
    }
}
