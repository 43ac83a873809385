//! The two entries that load the ixproxy Wasm filter: the HTTP filter, which decides and
//! rewrites every request (root id `ixproxy`), and the router's upstream filter, the filter's
//! second role ([`UPSTREAM_ROOT_ID`]), which makes relative redirect `Location`s absolute.

use ixproxy_core::envoy::UPSTREAM_ROOT_ID;
use serde_yaml::{Mapping, Value};

use crate::{typed, Parts};

/// Name and root id of the filter's main role, and the id of the VM both roles share.
const ROOT_ID: &str = "ixproxy";

/// The HTTP filter entry: the plugin configuration (the sources, limits and timeout as JSON),
/// the VM with the module and the `{env: NAME}` variables Envoy copies into it. Fails closed:
/// a filter that cannot run must not let requests through undecided.
pub(crate) fn wasm_filter(p: &Parts) -> Value {
    let mut vm_config = map! {
        "vm_id" => ROOT_ID,
        "runtime" => "envoy.wasm.runtime.v8",
        "code" => map! {
            "local" => map! { "filename" => p.wasm_path.to_string_lossy().into_owned() },
        },
    };
    if !p.env_keys.is_empty() {
        vm_config["environment_variables"] = map! {
            "host_env_keys" => Value::Sequence(p.env_keys.iter().map(|k| k.as_str().into()).collect()),
        };
    }
    map! {
        "name" => "envoy.filters.http.wasm",
        "typed_config" => typed("envoy.extensions.filters.http.wasm.v3.Wasm", map! {
            "config" => map! {
                "name" => ROOT_ID,
                "root_id" => ROOT_ID,
                "failure_policy" => "FAIL_CLOSED",
                "configuration" => typed("google.protobuf.StringValue", map! {
                    "value" => p.plugin_json.as_str(),
                }),
                "vm_config" => vm_config,
            },
        }),
    }
}

/// The router's upstream filters: the filter's upstream role, then the codec (required last).
///
/// The upstream role runs in the same VM (same `vm_config`, so Envoy shares it) and needs no
/// configuration of its own.
pub(crate) fn upstream_http_filters(p: &Parts) -> Value {
    let mut location = wasm_filter(p);
    let config = &mut location["typed_config"]["config"];
    config["name"] = UPSTREAM_ROOT_ID.into();
    config["root_id"] = UPSTREAM_ROOT_ID.into();
    if let Value::Mapping(config) = config {
        config.remove("configuration");
    }
    Value::Sequence(vec![
        location,
        map! {
            "name" => "envoy.filters.http.upstream_codec",
            "typed_config" => typed(
                "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                Mapping::new().into(),
            ),
        },
    ])
}
