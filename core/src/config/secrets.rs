//! Secret references as written in the config (`literal`, `{env: NAME}`, `{file: PATH}`) and the
//! resolvers that turn them into values.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{ConfigError, RawToken, SecretRef, SecretResolver};
use crate::secret::Secret;

/// What a secret field accepts, for error messages.
const EXPECTED: &str = "a string, {env: NAME} or {file: PATH}";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretRefVisitor)
    }
}

/// Hand-written rather than `#[serde(untagged)]`: an untagged enum only says "did not match any
/// variant", and serde's default type errors quote the offending value, which here is a secret.
struct SecretRefVisitor;

impl SecretRefVisitor {
    fn wrong_type<E: de::Error>(what: &str) -> E {
        E::custom(format_args!(
            "invalid type: {what}, expected {EXPECTED} (quote secrets that look like numbers)"
        ))
    }
}

impl<'de> Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretRef, E> {
        Ok(SecretRef::Literal(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretRef, E> {
        Ok(SecretRef::Literal(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretRef, E> {
        Err(Self::wrong_type("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
        Err(Self::wrong_type("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretRef, E> {
        Err(Self::wrong_type("a number"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<SecretRef, E> {
        Err(Self::wrong_type("a number"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<SecretRef, E> {
        Err(Self::wrong_type("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
        Err(Self::wrong_type("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<SecretRef, E> {
        Err(Self::wrong_type("null"))
    }

    fn visit_none<E: de::Error>(self) -> Result<SecretRef, E> {
        Err(Self::wrong_type("null"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
        Err(Self::wrong_type("a list"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
        const FIELDS: &[&str] = &["env", "file"];
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                "empty secret reference, expected {env: NAME} or {file: PATH}",
            ));
        };
        let secret = match key.as_str() {
            "env" => SecretRef::Env {
                env: map.next_value()?,
            },
            "file" => SecretRef::File {
                file: map.next_value()?,
            },
            other => return Err(de::Error::unknown_field(other, FIELDS)),
        };
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(
                "a secret reference holds exactly one of `env` or `file`",
            ));
        }
        Ok(secret)
    }
}

/// What a `secure_url_tokens` entry accepts, for error messages.
const TOKEN_EXPECTED: &str =
    "a string, {env: NAME}, {file: PATH}, or one of them with an id ({id: ID, value: TOKEN})";

impl<'de> Deserialize<'de> for RawToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawTokenVisitor)
    }
}

/// A token is a secret (every shape [`SecretRefVisitor`] takes, with its value-free errors) or a
/// map of `id` and exactly one of `value`, `env` or `file`.
struct RawTokenVisitor;

macro_rules! token_as_secret {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method<E: de::Error>(self, v: $ty) -> Result<RawToken, E> {
            SecretRefVisitor.$method(v).map(RawToken::from)
        })*
    };
}

impl<'de> Visitor<'de> for RawTokenVisitor {
    type Value = RawToken;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TOKEN_EXPECTED)
    }

    token_as_secret!(visit_str: &str, visit_string: String, visit_bool: bool, visit_i64: i64,
        visit_u64: u64, visit_i128: i128, visit_u128: u128, visit_f64: f64);

    fn visit_unit<E: de::Error>(self) -> Result<RawToken, E> {
        SecretRefVisitor.visit_unit().map(RawToken::from)
    }

    fn visit_none<E: de::Error>(self) -> Result<RawToken, E> {
        SecretRefVisitor.visit_none().map(RawToken::from)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<RawToken, A::Error> {
        SecretRefVisitor.visit_seq(seq).map(RawToken::from)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawToken, A::Error> {
        const FIELDS: &[&str] = &["id", "value", "env", "file"];
        let (mut id, mut secret) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            let value = match key.as_str() {
                "id" if id.is_none() => {
                    id = Some(map.next_value::<String>()?);
                    continue;
                }
                "value" => SecretRef::Literal(map.next_value::<SecretLiteral>()?.0),
                "env" => SecretRef::Env {
                    env: map.next_value()?,
                },
                "file" => SecretRef::File {
                    file: map.next_value()?,
                },
                "id" => return Err(de::Error::duplicate_field("id")),
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            };
            if secret.replace(value).is_some() {
                return Err(de::Error::custom(
                    "a token holds exactly one of `value`, `env` or `file`",
                ));
            }
        }
        let secret = secret.ok_or_else(|| {
            de::Error::custom("a token with an id needs one of `value`, `env` or `file`")
        })?;
        Ok(RawToken { id, secret })
    }
}

/// A literal `value:`, read with [`SecretRefVisitor`]'s value-free type errors.
struct SecretLiteral(String);

impl<'de> Deserialize<'de> for SecretLiteral {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_any(SecretRefVisitor)? {
            SecretRef::Literal(value) => Ok(SecretLiteral(value)),
            SecretRef::Env { .. } | SecretRef::File { .. } => Err(de::Error::custom(
                "`value` is the token itself; write `env:` or `file:` beside `id` instead",
            )),
        }
    }
}

impl Serialize for RawToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(id) = &self.id else {
            return self.secret.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("id", id)?;
        match &self.secret {
            SecretRef::Literal(value) => map.serialize_entry("value", value)?,
            SecretRef::Env { env } => map.serialize_entry("env", env)?,
            SecretRef::File { file } => map.serialize_entry("file", file)?,
        }
        map.end()
    }
}

/// Resolves `secret` through `resolver`; errors carry `path` and the resolver's message.
pub(super) fn resolve(
    secret: &SecretRef,
    resolver: &dyn SecretResolver,
    path: &str,
) -> Result<String, ConfigError> {
    let fail = |message: String| ConfigError {
        path: path.to_owned(),
        message,
    };
    match secret {
        SecretRef::Literal(value) => Ok(value.clone()),
        SecretRef::Env { env } if env.is_empty() => {
            Err(fail("empty environment variable name".into()))
        }
        SecretRef::Env { env } => resolver.env(env).map_err(fail),
        SecretRef::File { file } if file.is_empty() => Err(fail("empty file path".into())),
        SecretRef::File { file } => resolver.file(file).map_err(fail),
    }
}

/// The value [`DeferredSecrets`] gives every `{env: NAME}`; it passes every validation rule.
pub const DEFERRED_PLACEHOLDER: &str = "x";

/// A resolver for checking a config's structure when the secrets belong to another process.
///
/// `ixproxy envoy-config` uses it: the `{env: NAME}` references are resolved later by Envoy's Wasm
/// VM, so here each resolves to [`DEFERRED_PLACEHOLDER`] (`"x"`), a value that satisfies every
/// rule (non-empty token, no `:` nor control characters, at most 32 latin-1 characters). Only use
/// the resulting [`super::Config`] for its structure, never to sign or authenticate.
/// `{file: PATH}` is an error, because the Envoy filter cannot read files.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeferredSecrets;

impl SecretResolver for DeferredSecrets {
    fn env(&self, _name: &str) -> Result<String, String> {
        Ok(DEFERRED_PLACEHOLDER.to_owned())
    }

    fn file(&self, _path: &str) -> Result<String, String> {
        Err(
            "{file: PATH} secrets are not available to the envoy filter; \
             use a literal or {env: NAME}"
                .to_owned(),
        )
    }
}

/// A resolver backed by in-memory maps, for tests and embedders that already hold the values.
///
/// An unknown name is an error (`environment variable NAME is not set`, `no such secret file
/// PATH`). `Debug` shows names only; values are kept as [`Secret`].
#[derive(Debug, Default, Clone)]
pub struct MapSecrets {
    env: BTreeMap<String, Secret>,
    files: BTreeMap<String, Secret>,
}

impl MapSecrets {
    /// An empty resolver: every reference fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the resolver with environment variable `name` set to `value`.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), Secret::new(value));
        self
    }

    /// Returns the resolver with file `path` holding `value` (as read, trailing newline removed).
    pub fn with_file(mut self, path: impl Into<String>, value: impl Into<String>) -> Self {
        self.files.insert(path.into(), Secret::new(value));
        self
    }
}

impl SecretResolver for MapSecrets {
    fn env(&self, name: &str) -> Result<String, String> {
        self.env
            .get(name)
            .map(|s| s.expose().to_owned())
            .ok_or_else(|| format!("environment variable {name} is not set"))
    }

    fn file(&self, path: &str) -> Result<String, String> {
        self.files
            .get(path)
            .map(|s| s.expose().to_owned())
            .ok_or_else(|| format!("no such secret file {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<SecretRef, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_the_three_forms() {
        assert_eq!(parse("abc"), Ok(SecretRef::Literal("abc".into())));
        assert_eq!(
            parse("{env: OLD_TOKEN}"),
            Ok(SecretRef::Env {
                env: "OLD_TOKEN".into()
            })
        );
        assert_eq!(
            parse("{file: /run/secret}"),
            Ok(SecretRef::File {
                file: "/run/secret".into()
            })
        );
    }

    #[test]
    fn serializes_back_to_the_same_shape() {
        for yaml in ["abc", "{env: A}", "{file: /p}"] {
            let secret = parse(yaml).expect("parses");
            let json = serde_json::to_string(&secret).expect("serializes");
            let again: SecretRef = serde_json::from_str(&json).expect("round trip");
            assert_eq!(again, secret, "{json}");
        }
    }

    #[test]
    fn rejects_other_shapes_without_echoing_the_value() {
        let err = parse("12345678").expect_err("number");
        assert!(err.contains("expected a string"), "{err}");
        assert!(!err.contains("12345678"), "{err}");
        assert!(parse("{env: A, file: B}").is_err());
        assert!(parse("{vault: A}").expect_err("unknown").contains("vault"));
        assert!(parse("{}").is_err());
        assert!(parse("[a]").is_err());
    }

    #[test]
    fn deferred_resolves_env_but_not_files() {
        assert_eq!(
            DeferredSecrets.env("ANY"),
            Ok(DEFERRED_PLACEHOLDER.to_owned())
        );
        assert!(DeferredSecrets.file("/etc/secret").is_err());
    }

    #[test]
    fn map_secrets_resolves_known_names_only() {
        let secrets = MapSecrets::new().with_env("A", "1").with_file("/f", "2");
        assert_eq!(secrets.env("A"), Ok("1".to_owned()));
        assert_eq!(secrets.file("/f"), Ok("2".to_owned()));
        assert_eq!(
            secrets.env("B"),
            Err("environment variable B is not set".to_owned())
        );
        assert!(!format!("{secrets:?}").contains('1'));
    }
}
