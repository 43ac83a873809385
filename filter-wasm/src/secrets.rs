//! Secrets of the Envoy filter: `{env: NAME}` comes from the Wasm VM's environment, which Envoy
//! fills from `vm_config.environment_variables` (`host_env_keys` copies the Envoy process's own
//! variables). `{file: PATH}` has no meaning inside the VM.

use ixproxy_core::config::SecretResolver;

/// Message for a `{file: PATH}` secret in the filter's configuration.
pub const FILE_SECRETS_UNSUPPORTED: &str = "file secrets are not supported in the envoy filter";

/// Resolves `{env: NAME}` from the Wasm VM environment and refuses `{file: PATH}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmEnvSecrets;

impl SecretResolver for VmEnvSecrets {
    fn env(&self, name: &str) -> Result<String, String> {
        std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => format!(
                "environment variable {name} is not set in the wasm vm \
                 (add it to vm_config.environment_variables)"
            ),
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable {name} is not valid unicode")
            }
        })
    }

    fn file(&self, _path: &str) -> Result<String, String> {
        Err(FILE_SECRETS_UNSUPPORTED.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secrets_are_refused_and_missing_env_is_named() {
        assert_eq!(
            VmEnvSecrets.file("/etc/secret"),
            Err(FILE_SECRETS_UNSUPPORTED.to_owned())
        );
        let err = VmEnvSecrets
            .env("IXPROXY_FILTER_TEST_SURELY_UNSET_VARIABLE")
            .expect_err("variable is unset");
        assert!(
            err.contains("IXPROXY_FILTER_TEST_SURELY_UNSET_VARIABLE"),
            "{err}"
        );
    }
}
