//! The root context: parses and validates the plugin configuration once per (re)configuration
//! and hands the validated sources to every HTTP stream.

use std::rc::Rc;
use std::time::Duration;

use ixproxy_core::config::{AccessLogFormat, PluginConfig, RawPluginConfig, DEFAULT_TIMEOUT};
use ixproxy_core::envoy::LOG_PROPERTIES;
use ixproxy_core::Sources;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use crate::fallback;
use crate::hop;
use crate::http::FilterHttp;
use crate::inflight;
use crate::location::{LocationFilter, UPSTREAM_ROOT_ID};
use crate::metrics::Counters;
use crate::secrets::VmEnvSecrets;

/// Root context of the filter.
#[derive(Default)]
pub struct FilterRoot {
    sources: Option<Rc<Sources>>,
    counters: Option<Rc<Counters>>,
    /// `upstream.timeout` (the route timeout; the filter bounds redirect hops with it too).
    timeout: Option<Duration>,
    /// Whether this root runs as the router's upstream filter ([`UPSTREAM_ROOT_ID`]).
    upstream: bool,
    /// Whether Envoy writes an access log (`access_log` other than `off`).
    access_log: bool,
    /// Whether the response cache sits in front of the origin.
    cached: bool,
    /// Whether the filter fills the client address log property (Envoy's own operator logs it
    /// when no trusted proxy is configured).
    log_client_ip: bool,
    /// Whether Envoy's bootstrap takes fallback hops.
    fallbacks: bool,
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten()
            .unwrap_or_default();
        if root_id == UPSTREAM_ROOT_ID.as_bytes() {
            // The upstream role needs no configuration and defines no counters.
            self.upstream = true;
            return true;
        }
        if self.counters.is_none() {
            declare_properties();
        }
        match load_config(plugin_configuration_size) {
            Ok(PluginConfig {
                sources,
                timeout,
                access_log,
                cached,
                client_ip_by_envoy,
                fallback_redirects,
            }) => {
                if let Err(e) = inflight::init(&inflight::SharedData, &sources) {
                    log::error!("ixproxy: cannot create the in-flight counters: {e}");
                    return false;
                }
                // Every series of this configuration's sources (a metric defined again by
                // name is the same Envoy stat).
                self.counters = Some(Rc::new(Counters::define(&sources)));
                self.sources = Some(Rc::new(sources));
                self.timeout = Some(timeout);
                self.access_log = access_log != AccessLogFormat::Off;
                self.log_client_ip = self.access_log && !client_ip_by_envoy;
                self.cached = cached;
                self.fallbacks = fallback_redirects;
                if fallback_redirects {
                    declare(fallback::FALLBACK_PROPERTY);
                }
                true
            }
            Err(message) => {
                // Config errors name the field, never a secret value.
                log::error!("ixproxy: invalid plugin configuration: {message}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.upstream {
            return Some(Box::<LocationFilter>::default());
        }
        Some(Box::new(FilterHttp::new(
            self.sources.clone(),
            self.counters.clone().unwrap_or_default(),
            self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            self.access_log,
            self.log_client_ip,
            self.cached,
            self.fallbacks,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Declares the hop state and the access log properties with the downstream-request life span
/// so they survive Envoy's internal redirects. Without it (a host lacking `declare_property`)
/// the hop state lives only as long as one filter chain: a redirect hop then looks like a
/// client request and is refused, never let through unchecked.
/// Declares `name` as filter state the filter writes for the downstream request.
fn declare(name: &str) {
    if let Err(status) = hostcalls::call_foreign_function(
        "declare_property",
        Some(&hop::declare_property_args(name)),
    ) {
        log::warn!("ixproxy: cannot declare the property {name}: {status:?}");
    }
}

fn declare_properties() {
    if let Err(status) = hostcalls::call_foreign_function(
        "declare_property",
        Some(&hop::declare_property_args(hop::HOP_PROPERTY)),
    ) {
        log::warn!("ixproxy: cannot declare the hop state property: {status:?}; origin redirects will be refused");
    }
    for name in LOG_PROPERTIES {
        if let Err(status) = hostcalls::call_foreign_function(
            "declare_property",
            Some(&hop::declare_property_args(name)),
        ) {
            log::warn!("ixproxy: cannot declare the access log property {name}: {status:?}");
        }
    }
}

/// Reads the plugin configuration buffer and validates it with secrets from the VM environment.
fn load_config(size: usize) -> Result<PluginConfig, String> {
    let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
        .map_err(|status| format!("cannot read the plugin configuration: {status:?}"))?
        .ok_or_else(|| {
            "the plugin configuration is empty; expected {\"sources\": [...]}".to_owned()
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| "the plugin configuration is not valid utf-8".to_owned())?;
    RawPluginConfig::from_json(text)
        .and_then(|raw| raw.validate(&VmEnvSecrets))
        .map_err(|e| e.to_string())
}
