//! `purge_api_keys`: the keys of imgix's purge API on the native admin listener
//! ([`crate::purge_api`]), validated, and what `ixproxy check` says about them.

use super::secrets::resolve;
use super::{Config, ConfigError, ConfigWarning, SecretRef, SecretResolver};
use crate::secret::Secret;

/// `purge_api_keys` entries shorter than this many characters are warned about: the admin
/// listener answers every guess, and a purge key empties the cache for any URL.
pub const MIN_PURGE_API_KEY_CHARS: usize = 16;

/// Resolves every key; each must be non-empty visible ASCII without spaces (it travels as
/// `Authorization: Bearer <key>`, where nothing else could be matched).
pub(super) fn keys(
    raw: &[SecretRef],
    secrets: &dyn SecretResolver,
) -> Result<Vec<Secret>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, secret)| {
            let path = format!("purge_api_keys[{i}]");
            let value = resolve(secret, secrets, &path)?;
            let message = if value.is_empty() {
                "must not be empty"
            } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
                "must be visible ascii characters without spaces (it is sent as \
                 `Authorization: Bearer <key>`)"
            } else {
                return Ok(Secret::new(value));
            };
            Err(ConfigError {
                path,
                message: message.to_owned(),
            })
        })
        .collect()
}

/// The warnings about `purge_api_keys`: every key shorter than [`MIN_PURGE_API_KEY_CHARS`]
/// (counted, never shown), and keys without a cache (the API then answers 200 with nothing
/// to remove).
pub(super) fn warnings(config: &Config) -> Vec<ConfigWarning> {
    let mut out: Vec<ConfigWarning> = config
        .purge_api_keys
        .iter()
        .enumerate()
        .filter(|(_, key)| key.expose().chars().count() < MIN_PURGE_API_KEY_CHARS)
        .map(|(i, _)| ConfigWarning {
            path: format!("purge_api_keys[{i}]"),
            message: format!(
                "key shorter than {MIN_PURGE_API_KEY_CHARS} characters: anyone who reaches the \
                 admin listener may guess it and purge the cache"
            ),
        })
        .collect();
    if !config.purge_api_keys.is_empty() && config.cache.is_none() {
        out.push(ConfigWarning {
            path: "purge_api_keys".to_owned(),
            message: "no cache: is configured, so the purge api answers every purge with \
                      nothing to remove"
                .to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{warnings, MapSecrets, RawConfig};

    const SOURCES: &str =
        "sources:\n  - {name: a, hosts: [a.test], secure_url_tokens: [0123456789abcdef]}\n";

    fn validate(extra: &str) -> Result<crate::Config, crate::ConfigError> {
        let secrets = MapSecrets::new()
            .with_env("PURGE", "env-key-0123456789")
            .with_env("EMPTY", "")
            .with_file("/run/purge", "file-key-0123456789");
        RawConfig::from_yaml(&format!("{extra}{SOURCES}")).and_then(|raw| raw.validate(&secrets))
    }

    #[test]
    fn keys_resolve_as_secrets() {
        let config = validate(
            "cache: {max_bytes: 1000, max_object_bytes: 100}\npurge_api_keys: [literal-key-0123456, {env: PURGE}, \
             {file: /run/purge}]\n",
        )
        .expect("valid");
        let keys: Vec<&str> = config.purge_api_keys.iter().map(|k| k.expose()).collect();
        assert_eq!(
            keys,
            [
                "literal-key-0123456",
                "env-key-0123456789",
                "file-key-0123456789"
            ]
        );
        assert_eq!(warnings(&config), []);
        assert!(!format!("{config:?}").contains("literal-key"));
        assert!(validate("").expect("valid").purge_api_keys.is_empty());
    }

    #[test]
    fn each_bad_key_is_named_by_its_path() {
        for (keys, path, message) in [
            (
                "[ok-key-0123456789, '']",
                "purge_api_keys[1]",
                "must not be empty",
            ),
            ("[{env: EMPTY}]", "purge_api_keys[0]", "must not be empty"),
            ("[{env: UNSET}]", "purge_api_keys[0]", "UNSET is not set"),
            (
                "[{file: /nope}]",
                "purge_api_keys[0]",
                "no such secret file",
            ),
            ("[a, 'with space']", "purge_api_keys[1]", "visible ascii"),
            (
                "['clé-0123456789abcdef']",
                "purge_api_keys[0]",
                "visible ascii",
            ),
            ("[5]", "purge_api_keys[0]", "invalid type"),
            ("k", "purge_api_keys", "invalid type"),
        ] {
            let err = validate(&format!("purge_api_keys: {keys}\n")).expect_err(keys);
            assert_eq!(err.path, path, "{keys}: {err}");
            assert!(err.message.contains(message), "{keys}: {err}");
            assert!(!err.to_string().contains("with space"), "{err}");
        }
    }

    #[test]
    fn short_keys_and_keys_without_a_cache_are_warned_about() {
        let config = validate("purge_api_keys: [long-enough-0123456, hunter2]\n").expect("valid");
        let found = warnings(&config);
        let paths: Vec<&str> = found.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["purge_api_keys[1]", "purge_api_keys"]);
        assert!(found[0].message.contains("shorter than 16"), "{found:?}");
        assert!(found[1].message.contains("no cache"), "{found:?}");
        assert!(!found.iter().any(|w| w.to_string().contains("hunter2")));
    }
}
