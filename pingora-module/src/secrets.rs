//! The native runtime's secret resolver: `{env: NAME}` from the process environment and
//! `{file: PATH}` from the file system.

use ixproxy_core::config::SecretResolver;

/// Resolves config secrets for the native gateway and the CLI.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeSecrets;

impl SecretResolver for NativeSecrets {
    fn env(&self, name: &str) -> Result<String, String> {
        std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("environment variable {name} is not set"),
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable {name} is not valid unicode")
            }
        })
    }

    fn file(&self, path: &str) -> Result<String, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file {path}: {e}"))?;
        let trimmed = text.strip_suffix('\n').unwrap_or(&text);
        Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned())
    }
}

/// Reads, parses and validates a config file.
///
/// # Errors
/// A message naming the file or the field that is wrong (never a secret value).
pub fn load_config(path: &std::path::Path) -> Result<ixproxy_core::Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    ixproxy_core::config::RawConfig::from_yaml(&text)
        .and_then(|raw| raw.validate(&NativeSecrets))
        .map_err(|e| e.to_string())
}
