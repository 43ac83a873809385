//! Fuzzes the config parsers and validation (YAML file and Envoy plugin JSON).
#![no_main]

use ixproxy_core::config::{MapSecrets, RawConfig, RawPluginConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let secrets = MapSecrets::new().with_env("T", "tok").with_file("/f", "x");
    if let Ok(raw) = RawConfig::from_yaml(text) {
        if let Err(e) = raw.validate(&secrets) {
            assert!(!e.message.is_empty());
        }
    }
    if let Ok(raw) = RawPluginConfig::from_json(text) {
        let _ = raw.validate(&secrets);
    }
});
