//! The metrics both runtimes expose (README: Operating, Metrics): names, labels and the rules that
//! keep the label sets bounded.
//!
//! A source's label is its name with every character outside `[A-Za-z0-9_-]` replaced by `_`
//! ([`label`]), so it survives Envoy's stat names (dots separate tags there) and Prometheus alike;
//! a request whose Host no source serves is counted under [`NO_SOURCE_LABEL`]. A token is named
//! by its `id` or, without one, by its position in `secure_url_tokens` (`"0"`, `"1"`): never by
//! its value.

/// Client requests, by `source` and `outcome`.
pub const REQUESTS_TOTAL: &str = "ixproxy_requests_total";
/// Response body bytes sent to clients, by `source`.
pub const RESPONSE_BYTES_TOTAL: &str = "ixproxy_response_bytes_total";
/// Origin fetches in flight (what `limits.max_inflight_per_source` bounds), by `source`.
pub const UPSTREAM_INFLIGHT: &str = "ixproxy_upstream_inflight";
/// Requests whose signature verified, by `source` and the `token` that verified it.
pub const TOKEN_VERIFICATIONS_TOTAL: &str = "ixproxy_token_verifications_total";
/// Always 1, with the `version` and `runtime` labels.
pub const BUILD_INFO: &str = "ixproxy_build_info";
/// Config reloads (SIGHUP), by `result` (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "ixproxy_config_reloads_total";

/// The `source` label of a request no source serves (unknown Host, or refused before the Host
/// was looked up). Never a source's label: those always hold a letter or digit.
pub const NO_SOURCE_LABEL: &str = "-";

/// The ixproxy version every runtime reports in [`BUILD_INFO`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The longest token `id`.
pub const MAX_TOKEN_ID_CHARS: usize = 64;

/// The metrics label of a source called `name`: `[A-Za-z0-9_-]` kept, anything else `_`.
pub fn label(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `name` makes a usable label: at least one ASCII letter or digit (so no source's label
/// is [`NO_SOURCE_LABEL`] or made of underscores only).
pub fn is_labelable(name: &str) -> bool {
    name.chars().any(|c| c.is_ascii_alphanumeric())
}

/// Checks a token `id`: 1 to [`MAX_TOKEN_ID_CHARS`] of `[A-Za-z0-9_-]`, with a letter or digit.
///
/// # Errors
/// A lower-case message saying which rule the id breaks.
pub fn check_token_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_TOKEN_ID_CHARS {
        return Err(format!(
            "a token id has 1 to {MAX_TOKEN_ID_CHARS} characters"
        ));
    }
    if label(id) != id || !is_labelable(id) {
        return Err("a token id is made of A-Z, a-z, 0-9, `_` and `-` only".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_safe_characters_and_replace_the_rest() {
        assert_eq!(label("assets"), "assets");
        assert_eq!(label("my-source_2"), "my-source_2");
        assert_eq!(label("a.b c/ä"), "a_b_c__");
        assert!(is_labelable("a.b") && !is_labelable("--") && !is_labelable("_"));
        assert!(!is_labelable(NO_SOURCE_LABEL));
    }

    #[test]
    fn token_ids() {
        for good in ["0", "2026-q4", "old_token", "A"] {
            assert_eq!(check_token_id(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_TOKEN_ID_CHARS + 1);
        for bad in ["", "a.b", "ä", "-", "a b", long.as_str()] {
            assert!(check_token_id(bad).is_err(), "{bad}");
        }
    }
}
