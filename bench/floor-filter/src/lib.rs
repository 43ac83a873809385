//! The floor of the Wasm approach in `bench/`: the least a useful proxy-wasm HTTP filter does
//! on every request — read `:path` from the host and set one request header — so that
//! `Envoy + this filter` minus `Envoy DFP` is what any proxy-wasm filter costs.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let length = self
            .get_http_request_header(":path")
            .map_or(0, |path| path.len());
        self.set_http_request_header("x-bench-path-length", Some(&length.to_string()));
        Action::Continue
    }
}

#[allow(unsafe_code)] // proxy-wasm's `main!` needs `#[no_mangle]` and calls the Wasm ctors.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(crate::Root)
        });
    }}
}
