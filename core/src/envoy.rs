//! The names the Envoy filter (`filter-wasm`) and the bootstrap `ixproxy envoy-config` generates
//! must agree on. They are plain wire names with no policy; keeping them in one place means the
//! filter and the generated routes cannot drift apart.

/// Request header the filter sets on every forward (`tls` or `plain`), overwriting anything a
/// client sent; the routes strip it before the request leaves Envoy.
pub const UPSTREAM_HEADER: &str = "x-ixproxy-upstream";

/// Request header the filter sets (to `1`) when the source has `allow_private_origins`: the
/// generated RBAC filter denies origins whose resolved address is private unless it is present,
/// and the routes strip it before the request leaves Envoy. A client-sent one is always removed.
pub const ALLOW_PRIVATE_HEADER: &str = "x-ixproxy-allow-private";

/// Header Envoy copies from the origin's redirect response into the request it recreates
/// (`internal_redirect_policy.response_headers_to_copy`): the raw `Location`, which the core
/// resolves and re-validates. Never forwarded to the origin (not on the allowlist).
pub const LOCATION_HEADER: &str = "location";

/// Envoy's route matching finds no route for a request without it, and that includes the
/// request Envoy recreates to follow an origin redirect. The filter overwrites it with the origin
/// URL's scheme (its value never comes from the client); the filter's upstream role removes it
/// from the origin request and puts it on redirect responses, from which Envoy copies it into the
/// recreated request.
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Root id of the filter's second role, as the router's upstream HTTP filter: it makes a
/// relative `Location` of an origin redirect absolute (Envoy only follows absolute URLs).
pub const UPSTREAM_ROOT_ID: &str = "ixproxy_location";

/// Envoy `stats_config.stats_tags[].regex` that turns the filter's counters
/// (`wasmcustom.ixproxy_requests_total.outcome.<label>`) into
/// `ixproxy_requests_total{outcome="<label>"}`.
pub const OUTCOME_TAG_REGEX: &str = r"^wasmcustom\.ixproxy_requests_total(\.outcome\.([a-z_]+))$";

/// The tag name [`OUTCOME_TAG_REGEX`] extracts.
pub const OUTCOME_TAG_NAME: &str = "outcome";
