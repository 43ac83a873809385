//! The names the Envoy filter (`filter-wasm`) and the bootstrap `ixproxy envoy-config` generates
//! must agree on, and how Envoy's own replies map onto the core's outcomes. Keeping them in one
//! place means the filter and the generated bootstrap cannot drift apart.

use crate::cache::CacheResult;
use crate::config::{CacheTtl, CacheTtlBehavior};
use crate::failure::Failure;
use crate::metrics;
use crate::outcome::{Outcome, Rejection};
use crate::request::HeaderTotals;
use crate::response::{check_head, is_followed_redirect, policy_cache_control, OriginHead};

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
/// URL's scheme (its value never comes from the client); the routes (without the cache) or the
/// filter's upstream role (with it) remove it from the origin request, and the role puts it on
/// redirect responses, from which Envoy copies it into the recreated request.
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Root id of the filter's second role, as the router's upstream HTTP filter: it makes a
/// relative `Location` of an origin redirect absolute (Envoy only follows absolute URLs).
pub const UPSTREAM_ROOT_ID: &str = "ixproxy_location";

/// The filter's counter of one client request of `source` (its label) with `outcome`:
/// `wasmcustom.ixproxy_requests_total.source.<source>.outcome.<outcome>` in Envoy, which the
/// bootstrap's [`STATS_TAGS`] turn into `ixproxy_requests_total{source,outcome}`.
pub fn requests_metric(source: &str, outcome: Outcome) -> String {
    format!(
        "{}.source.{source}.outcome.{}",
        metrics::REQUESTS_TOTAL,
        outcome.as_str()
    )
}

/// The filter's counter of response bytes of `source`.
pub fn response_bytes_metric(source: &str) -> String {
    format!("{}.source.{source}", metrics::RESPONSE_BYTES_TOTAL)
}

/// The filter's gauge of origin fetches in flight of `source`.
pub fn upstream_inflight_metric(source: &str) -> String {
    format!("{}.source.{source}", metrics::UPSTREAM_INFLIGHT)
}

/// The filter's counter of requests of `source` that `token` (its label) verified.
pub fn token_metric(source: &str, token: &str) -> String {
    format!(
        "{}.source.{source}.token.{token}",
        metrics::TOKEN_VERIFICATIONS_TOTAL
    )
}

/// The filter's build info gauge (always 1).
pub fn build_info_metric() -> String {
    format!(
        "{}.runtime.envoy.version.{}",
        metrics::BUILD_INFO,
        metrics::VERSION
    )
}

/// Envoy `stats_config.stats_tags` (tag name, regex) that turn the filter's metric names into
/// Prometheus labels. Envoy applies each regex to the whole name: the first group is cut from
/// the name, the second is the label's value.
pub const STATS_TAGS: [(&str, &str); 5] = [
    (
        "source",
        r"^wasmcustom\.ixproxy_[a-z_]+(\.source\.([A-Za-z0-9_-]+))(?:\..*)?$",
    ),
    (
        "outcome",
        r"^wasmcustom\.ixproxy_requests_total\.source\.[A-Za-z0-9_-]+(\.outcome\.([a-z_]+))$",
    ),
    (
        "token",
        r"^wasmcustom\.ixproxy_token_verifications_total\.source\.[A-Za-z0-9_-]+(\.token\.([A-Za-z0-9_-]+))$",
    ),
    (
        "runtime",
        r"^wasmcustom\.ixproxy_build_info(\.runtime\.([a-z]+))\.version\..+$",
    ),
    (
        "version",
        r"^wasmcustom\.ixproxy_build_info\.runtime\.[a-z]+(\.version\.(.+))$",
    ),
];

/// Envoy filter state properties (`wasm.<name>`) the filter fills for the bootstrap's access log
/// (`%FILTER_STATE(wasm.<name>:PLAIN)%`): the request id, the client's Host (the filter rewrites `:authority` to
/// the origin's), the client address, the source's name, the outcome, the origin host and the cache result. Declared
/// with the downstream request's life span, so they survive Envoy's internal redirects.
pub const LOG_PROPERTIES: [&str; 7] = [
    LOG_REQUEST_ID,
    LOG_HOST,
    LOG_CLIENT_IP,
    LOG_SOURCE,
    LOG_OUTCOME,
    LOG_ORIGIN_HOST,
    LOG_CACHE,
];
/// See [`LOG_PROPERTIES`]: the request id as the filter settled it (never a client value the
/// core's rule refuses).
pub const LOG_REQUEST_ID: &str = "ixproxy_request_id";
/// See [`LOG_PROPERTIES`].
pub const LOG_HOST: &str = "ixproxy_host";
/// See [`LOG_PROPERTIES`]: Envoy's downstream address of the client's stream (after
/// `trusted_proxies`), without its port; filled only with `trusted_proxies` (without, the
/// bootstrap logs Envoy's own operator, see [`crate::config::RawPluginConfig::client_ip_by_envoy`]).
pub const LOG_CLIENT_IP: &str = "ixproxy_client_ip";
/// See [`LOG_PROPERTIES`].
pub const LOG_SOURCE: &str = "ixproxy_source";
/// See [`LOG_PROPERTIES`].
pub const LOG_OUTCOME: &str = "ixproxy_outcome";
/// See [`LOG_PROPERTIES`].
pub const LOG_ORIGIN_HOST: &str = "ixproxy_origin_host";
/// See [`LOG_PROPERTIES`].
pub const LOG_CACHE: &str = "ixproxy_cache";

/// Name of the generated RBAC policy that refuses private origin addresses; Envoy's
/// `response.code_details` for its refusals is `rbac_access_denied_matched_policy[<name>]`.
pub const PRIVATE_ORIGIN_POLICY: &str = "ixproxy-private-origin-address";

/// Request headers Envoy's connection manager sets itself before any filter runs (with the
/// generated `use_remote_address: true`, a client-sent one is replaced or removed first); they
/// are not the client's, so the filter does not count them against the client header limits.
pub const ENVOY_ADDED_REQUEST_HEADERS: [&str; 3] = [
    FORWARDED_PROTO,
    "x-envoy-external-address",
    "x-envoy-internal",
];

/// The client's request header totals as Envoy's filter sees them: the core's one counting rule
/// ([`HeaderTotals`], `:authority` as `Host`) over every field but
/// [`ENVOY_ADDED_REQUEST_HEADERS`]. `headers` are `(name, value length)` pairs.
pub fn client_header_totals<'a>(
    headers: impl IntoIterator<Item = (&'a str, usize)>,
) -> HeaderTotals {
    HeaderTotals::of(headers.into_iter().filter(|(name, _)| {
        !ENVOY_ADDED_REQUEST_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }))
}

/// Envoy's `response.code_details` for a response that came from the origin.
pub const VIA_UPSTREAM: &str = "via_upstream";

/// Envoy response flags meaning "the origin could not be reached or gave no usable answer"
/// (connection or TLS failure, no resolved host, DNS failure, connection closed or reset before
/// a response, protocol error such as oversized response headers). The generated bootstrap
/// turns Envoy's local reply for them into [`Rejection::origin_error`] (Envoy answers 503 for
/// most of them by default; the README's status table says 502).
pub const ORIGIN_ERROR_FLAGS: [&str; 6] = ["UF", "UH", "DF", "UC", "UR", "UPE"];

/// The status Envoy 1.40 gives its own timeout replies (`UT`, and `SI` on a request the router
/// forwarded; `SI` on a request the client never finished is its 408): the generated bootstrap
/// maps only these to the core's timeout reply.
pub const ENVOY_TIMEOUT_STATUS: u16 = 504;

/// Envoy response flags of an origin that did not answer in time: [`Rejection::origin_timeout`].
/// `UT` is the route timeout (`upstream.timeout`); `SI` the route's idle timeout
/// (`upstream.body_timeout`) or the connection manager's stream idle timeout. The generated
/// bootstrap maps them only on Envoy's 504, which is what Envoy answers once the client's request
/// was complete (every forwarded request); an `SI` on an unfinished request is Envoy's 408.
pub const ORIGIN_TIMEOUT_FLAGS: [&str; 2] = ["UT", "SI"];

/// Envoy response flags of a request refused by one of Envoy's own concurrency limits (circuit
/// breaker overflow, overload manager): [`Rejection::overloaded`].
pub const OVERLOADED_FLAGS: [&str; 2] = ["UO", "OM"];

/// The status of the replies Envoy's dynamic forward proxy makes, before the router, when its DNS
/// cache is full (`max_hosts`) or has too many lookups pending; they carry no response flag, so the
/// generated bootstrap recognises them by this status on a request the router has not sent yet
/// (still carrying [`UPSTREAM_HEADER`]) and answers [`Rejection::overloaded`].
pub const DNS_CACHE_OVERFLOW_STATUS: u16 = 503;

/// Envoy's `response.code_details` of the stream it replaced by a new one to follow an origin
/// redirect (seen on Envoy 1.40 in the replaced stream's access-log phase).
pub const INTERNAL_REDIRECT: &str = "internal_redirect";

/// The address part of Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`); anything
/// else as it is.
pub fn address_without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(address, |(ip, _)| ip);
    }
    match address.rsplit_once(':') {
        // One colon: IPv4 and port. More: a bare IPv6 address.
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

/// Whether a forwarded stream that ended with `details` handed its downstream request over to
/// the stream Envoy recreated for a redirect: that stream continues the same client request, so
/// whatever the request holds (its `max_inflight_per_source` slot) goes with it. Only the exact
/// [`INTERNAL_REDIRECT`] counts: a slot kept for a stream that never comes would be lost for good.
pub fn handed_over_to_redirect(details: &str) -> bool {
    details == INTERNAL_REDIRECT
}

/// Envoy's `response.code_details` of a response its HTTP cache filter served from its store
/// (its response flag is `RFCF`, `ResponseFromCacheFilter`); seen on Envoy 1.40 for a fresh hit
/// and for a stale entry the origin confirmed with a 304. No router ran for such a response, so
/// Envoy reports no `upstream.address` for it.
pub const RESPONSE_FROM_CACHE: &str = "cache.response_from_cache_filter";

/// Whether a response with these `response.code_details` was served from Envoy's cache: the
/// filter then treats it as forwarded (the origin's answer, stored), applies the same response
/// checks and edits, and takes the address it came from from [`UPSTREAM_ADDRESS_HEADER`].
pub fn is_cache_hit(details: &str) -> bool {
    details == RESPONSE_FROM_CACHE
}

/// Response header the filter's upstream role (with the cache: on every origin response, before
/// Envoy's cache stores it) sets to the address Envoy connected to, after removing any
/// origin-sent one; without the cache the filter reads `upstream.address` itself and ignores the
/// header (the origin's then). Envoy
/// 1.40's cache fetches cacheable requests on its own side channel, so the downstream stream
/// never learns `upstream.address`, neither on the miss nor on later hits: the stored header is
/// what the filter checks instead. Never reaches the client (not on the response allowlist).
pub const UPSTREAM_ADDRESS_HEADER: &str = "x-ixproxy-upstream-address";

/// Request headers the filter's upstream role removes from every origin request. The routes'
/// `request_headers_to_remove` do not apply to the cache's side channel (Envoy 1.40), and that
/// channel adds `x-envoy-internal` and an `x-forwarded-for` of its own.
pub const ORIGIN_REQUEST_REMOVED: [&str; 7] = [
    FORWARDED_PROTO,
    UPSTREAM_HEADER,
    ALLOW_PRIVATE_HEADER,
    CACHE_TTL_HEADER,
    "x-forwarded-for",
    "x-envoy-internal",
    // Set on a request the filter gives its own per-hop timeout (a redirect hop, a fallback
    // image) even with the router's `suppress_envoy_headers`.
    "x-envoy-expected-rq-timeout-ms",
];

/// Request header the filter sets on every forward to what its upstream role needs to judge a
/// cache fill ([`CacheFill`], [`CacheFill::encode`]): that role sees the origin's response
/// before Envoy's cache stores it and replaces its `Cache-Control` with what the cache may keep
/// ([`CacheFill::stored_cache_control`]). Set only with the cache (its presence is how the
/// upstream role knows the cache is on). A client-sent one never survives (not on the forwarded
/// allowlist); the upstream role removes it from the origin request ([`ORIGIN_REQUEST_REMOVED`]).
pub const CACHE_TTL_HEADER: &str = "x-ixproxy-cache-ttl";

/// What the filter's upstream role needs, with Envoy's cache, to say how long the cache may keep
/// an origin answer: the source's cache TTL settings and the checks that refuse a response head
/// whatever it says (`upstream.max_body_bytes`, `allowed_content_types`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFill {
    /// The source's `cache_ttl_behavior`, `cache_ttl` and `cache_ttl_error`.
    pub ttl: CacheTtl,
    /// `upstream.max_body_bytes`.
    pub max_body_bytes: u64,
    /// The source's `allowed_content_types` (`None` = any).
    pub allowed_content_types: Option<Vec<String>>,
}

impl CacheFill {
    /// [`CACHE_TTL_HEADER`]'s value: `<behavior> <cache_ttl> <cache_ttl_error> <max_body_bytes>`,
    /// behavior as in the config (`respect_origin`, `override_origin`, `enforce_minimum`), then
    /// for a source with `allowed_content_types` a fifth field, its entries joined with `,`
    /// (validated tokens: never a space or a comma).
    pub fn encode(
        ttl: &CacheTtl,
        max_body_bytes: u64,
        allowed_content_types: Option<&[String]>,
    ) -> String {
        let behavior = match ttl.behavior {
            CacheTtlBehavior::RespectOrigin => "respect_origin",
            CacheTtlBehavior::OverrideOrigin => "override_origin",
            CacheTtlBehavior::EnforceMinimum => "enforce_minimum",
        };
        let mut value = format!("{behavior} {} {} {max_body_bytes}", ttl.ttl, ttl.error_ttl);
        if let Some(types) = allowed_content_types {
            value.push(' ');
            for (k, entry) in types.iter().enumerate() {
                if k > 0 {
                    value.push(',');
                }
                value.push_str(entry);
            }
        }
        value
    }

    /// Reads a [`CacheFill::encode`] value; `None` for anything else (the upstream role then
    /// leaves the origin's `Cache-Control` alone, and the main filter still applies the policy
    /// and the checks for the client).
    pub fn decode(value: &str) -> Option<CacheFill> {
        let mut fields = value.split(' ');
        let behavior = match fields.next()? {
            "respect_origin" => CacheTtlBehavior::RespectOrigin,
            "override_origin" => CacheTtlBehavior::OverrideOrigin,
            "enforce_minimum" => CacheTtlBehavior::EnforceMinimum,
            _ => return None,
        };
        let ttl = fields.next()?.parse().ok()?;
        let error_ttl = fields.next()?.parse().ok()?;
        let max_body_bytes = fields.next()?.parse().ok()?;
        let allowed_content_types = fields.next().map(|types| {
            types
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        });
        fields.next().is_none().then_some(CacheFill {
            ttl: CacheTtl {
                behavior,
                ttl,
                error_ttl,
            },
            max_body_bytes,
            allowed_content_types,
        })
    }

    /// The `Cache-Control` Envoy's cache stores an origin answer `head` under: the §12 policy
    /// value (uncapped); for an answer the gateway refuses whatever it says (a redirect, which
    /// the cache's side channel never follows; a head [`check_head`] refuses), the policy value
    /// of the failure the client gets (`cache_ttl_error`). So neither that refusal nor a
    /// fallback image served for it outlives `cache_ttl_error` (SPEC §15): a soft 404 (an HTML
    /// page with a 200) is asked for again once that has passed.
    pub fn stored_cache_control(&self, head: &OriginHead) -> String {
        let status = head.status();
        let refused = if is_followed_redirect(status) {
            Some(Rejection::bad_redirect(
                crate::forward::UNFOLLOWABLE_LOCATION,
            ))
        } else {
            check_head(
                head,
                self.max_body_bytes,
                self.allowed_content_types.as_deref(),
            )
            .err()
        };
        match refused {
            Some(rejection) => policy_cache_control(&self.ttl, rejection.status(), None),
            None => policy_cache_control(&self.ttl, status, head.cache_control().as_deref()),
        }
    }
}

/// The address a forwarded response came from: Envoy's `upstream.address` when the router
/// fetched it, else the [`UPSTREAM_ADDRESS_HEADER`] the upstream role stored with it (a cache
/// miss on the side channel, or a hit).
pub fn response_upstream_address<'a>(
    property: Option<&'a str>,
    stored: Option<&'a str>,
) -> Option<&'a str> {
    property.or(stored)
}

/// The failure behind a response that reached the filter through Envoy's cache without coming
/// from any origin: not a hit, and neither `upstream.address` nor the
/// [`UPSTREAM_ADDRESS_HEADER`] the upstream role adds to every origin answer on the cache's side
/// channel (`None` from [`response_upstream_address`]). Envoy 1.40's cache hands its own reply to
/// a fill that failed (refused, reset, timed out) to the client stream as if an origin had sent
/// it, so its details say only that the fill ended; a known failure in them counts, otherwise it
/// is a reset (a 502, like a connection that broke).
pub fn cache_fill_failure(details: &str) -> Failure {
    match failure_of_details(details) {
        Some(failure) if failure != Failure::ClientGone => failure,
        _ => Failure::Reset,
    }
}

/// What Envoy's cache did for a forwarded response (its `Cache-Status` is
/// [`CacheResult::cache_status`]), or `None` when the cache took no part (no cache configured,
/// or a request it does not cache, which Envoy sends through the router): a hit is
/// [`CacheResult::Hit`]; a response without `upstream.address` but with the stored address came
/// through the cache's side channel, [`CacheResult::Miss`]. Envoy 1.40 reports a revalidated
/// stale entry exactly like a hit, so [`CacheResult::Revalidated`] is never told apart here.
pub fn cache_result(
    details: &str,
    property: Option<&str>,
    stored: Option<&str>,
) -> Option<CacheResult> {
    if is_cache_hit(details) {
        Some(CacheResult::Hit)
    } else if property.is_none() && stored.is_some() {
        Some(CacheResult::Miss)
    } else {
        None
    }
}

/// Prefix of the proxy-wasm shared data keys counting each source's origin fetches in flight
/// (`max_inflight_per_source`). Shared data belongs to the VM id, so every worker thread's VM
/// counts in the same place.
pub const INFLIGHT_KEY_PREFIX: &str = "ixproxy.inflight.";

/// The shared data key counting the origin fetches in flight of the source named `source`.
pub fn inflight_key(source: &str) -> String {
    format!("{INFLIGHT_KEY_PREFIX}{source}")
}

/// Fragments of Envoy's `response.code_details` that mean a timeout although Envoy's response
/// flag says a failure (`UF`, `DF`): its `connect_timeout` covers the TCP connect and the TLS
/// handshake, and its DNS cache's lookup can time out (`resolve_timeout`, in the details of a
/// `dns_resolution_failure` in Envoy 1.40's binary). Any of them running out is a timeout, a 504
/// (SPEC §6): the generated bootstrap maps Envoy's replies carrying one of these to the core's
/// timeout answer before its flag mappers run.
pub const TIMEOUT_DETAILS: [&str; 2] = ["{connection_timeout", "resolve_timeout"];

/// The [`Failure`] behind Envoy's `response.code_details` of a reply it made itself on a request
/// the filter forwarded (not [`VIA_UPSTREAM`]): Envoy's half of the one failure vocabulary.
/// `None` for details that are not a failure of the fetch: the RBAC filter refusing a private
/// resolved address (a policy refusal, [`Outcome::OriginDenied`]) and details the gateway does not
/// know.
pub fn failure_of_details(details: &str) -> Option<Failure> {
    // Envoy cannot tell a TCP connect timeout from a TLS handshake one: both run out its
    // `connect_timeout`, and both are timeouts.
    const TIMEOUTS: [(&str, Failure); 8] = [
        ("response_timeout", Failure::HeaderTimeout),
        ("upstream_response_timeout", Failure::HeaderTimeout),
        ("request_overall_timeout", Failure::HeaderTimeout),
        ("upstream_per_try_timeout", Failure::HeaderTimeout),
        ("max_duration_timeout", Failure::HeaderTimeout),
        (
            "upstream_max_stream_duration_reached",
            Failure::HeaderTimeout,
        ),
        ("stream_idle_timeout", Failure::BodyPause),
        ("upstream_per_try_idle_timeout", Failure::BodyPause),
    ];
    const OTHERS: [(&str, Failure); 10] = [
        ("downstream_remote_disconnect", Failure::ClientGone),
        ("downstream_local_disconnect", Failure::ClientGone),
        ("client_disconnected", Failure::ClientGone),
        ("overload_manager", Failure::Overloaded),
        ("envoy_overloaded", Failure::Overloaded),
        (
            "upstream_reset_before_response_started{overflow",
            Failure::Overloaded,
        ),
        ("dns_cache_overflow", Failure::Overloaded),
        (
            "dynamic_forward_proxy_pending_request_overflow",
            Failure::Overloaded,
        ),
        ("dns_resolution_failure", Failure::DnsUnknown),
        ("upstream_response_headers_too_large", Failure::Protocol),
    ];
    let found = |table: &[(&str, Failure)]| {
        table
            .iter()
            .find(|(prefix, _)| details.starts_with(prefix))
            .map(|(_, failure)| *failure)
    };
    if details.contains(TIMEOUT_DETAILS[0]) {
        return Some(Failure::ConnectTimeout);
    }
    if details.contains(TIMEOUT_DETAILS[1]) {
        return Some(Failure::DnsTimeout);
    }
    if let Some(failure) = found(&TIMEOUTS).or_else(|| found(&OTHERS)) {
        return Some(failure);
    }
    let reset = |why: &str| details.contains(why);
    if details.starts_with("upstream_reset_before_response_started")
        || details.starts_with("upstream_reset_after_response_started")
    {
        return Some(if reset("TLS") || reset("tls") {
            Failure::TlsError
        } else if reset("connection_failure") {
            Failure::Refused
        } else if reset("{protocol_error") {
            Failure::Protocol
        } else {
            Failure::Reset
        });
    }
    details
        .starts_with("no_healthy_upstream")
        .then_some(Failure::Refused)
}

/// The outcome of a response Envoy produced itself on a request the filter forwarded (not
/// [`VIA_UPSTREAM`]), from its `response.code_details`: the same outcome the native gateway
/// counts for the same failure ([`failure_of_details`]).
///
/// Unknown details count as [`Outcome::Internal`]: Envoy answered for a reason the gateway does
/// not expect, which is the gateway's fault rather than the origin's or the client's.
pub fn local_reply_outcome(details: &str) -> Outcome {
    if details.starts_with("rbac_access_denied") {
        return Outcome::OriginDenied;
    }
    failure_of_details(details).map_or(Outcome::Internal, Failure::outcome)
}

/// The outcome of a forwarded request whose stream ended before the filter saw its answer end
/// (Envoy's access-log phase), from its `response.code_details`; `None` when the stream counts
/// nothing because Envoy replaced it to follow an origin redirect (no details are set then; the
/// recreated stream counts).
///
/// [`VIA_UPSTREAM`] here means the origin's answer was flowing and neither its end nor an
/// origin reset reached the filter: the client went away.
pub fn unfinished_stream_outcome(details: &str) -> Option<Outcome> {
    match details {
        "" | INTERNAL_REDIRECT => None,
        VIA_UPSTREAM => Some(Outcome::ClientClosed),
        _ => Some(local_reply_outcome(details)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_lose_their_port() {
        assert_eq!(address_without_port("203.0.113.5:41000"), "203.0.113.5");
        assert_eq!(address_without_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(address_without_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(address_without_port("192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn header_totals_count_what_the_client_sent() {
        let headers = [
            (":method", 3),
            (":authority", 9),
            ("accept", 3),
            ("x-forwarded-proto", 4),
            ("x-envoy-external-address", 9),
            ("X-Big", 10),
            ("cookie", 1),
        ];
        assert_eq!(
            client_header_totals(headers),
            HeaderTotals {
                count: 4,
                bytes: 4 + 9 + 6 + 3 + 5 + 10 + 6 + 1
            }
        );
    }

    #[test]
    fn envoy_local_replies_map_to_the_native_outcomes() {
        for (details, outcome) in [
            ("response_timeout", Outcome::OriginTimeout),
            ("upstream_response_timeout", Outcome::OriginTimeout),
            ("request_overall_timeout", Outcome::OriginTimeout),
            (
                "upstream_reset_before_response_started{connection_failure}",
                Outcome::OriginError,
            ),
            (
                "upstream_reset_before_response_started{remote_connection_failure,TLS_error:_268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED}",
                Outcome::OriginError,
            ),
            (
                "upstream_reset_before_response_started{overflow}",
                Outcome::Overloaded,
            ),
            ("upstream_reset_after_response_started{remote_reset}", Outcome::OriginError),
            ("dns_resolution_failure", Outcome::OriginError),
            ("no_healthy_upstream", Outcome::OriginError),
            (
                &format!("rbac_access_denied_matched_policy[{PRIVATE_ORIGIN_POLICY}]"),
                Outcome::OriginDenied,
            ),
            ("downstream_remote_disconnect", Outcome::ClientClosed),
            ("overload_manager", Outcome::Overloaded),
            ("dns_cache_overflow", Outcome::Overloaded),
            (
                "dynamic_forward_proxy_pending_request_overflow",
                Outcome::Overloaded,
            ),
            ("stream_idle_timeout", Outcome::OriginTimeout),
            ("route_not_found", Outcome::Internal),
            // Seen on Envoy 1.40 for an https origin that accepts the connection and never
            // answers the TLS handshake (and for a connect that never completes): a timeout.
            (
                "upstream_reset_before_response_started{connection_timeout}",
                Outcome::OriginTimeout,
            ),
        ] {
            assert_eq!(local_reply_outcome(details), outcome, "{details}");
        }
        for (details, failure) in [
            (
                "upstream_reset_before_response_started{connection_timeout}",
                Failure::ConnectTimeout,
            ),
            (
                "upstream_reset_before_response_started{remote_connection_failure,TLS_error:_268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED}",
                Failure::TlsError,
            ),
            (
                "upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}",
                Failure::Refused,
            ),
            ("upstream_reset_after_response_started{remote_reset}", Failure::Reset),
            ("dns_resolution_failure", Failure::DnsUnknown),
            ("dns_resolution_failure{resolve_timeout}", Failure::DnsTimeout),
            ("upstream_response_headers_too_large", Failure::Protocol),
            ("downstream_remote_disconnect", Failure::ClientGone),
        ] {
            assert_eq!(failure_of_details(details), Some(failure), "{details}");
        }
        assert_eq!(failure_of_details("route_not_found"), None);
        // Seen on Envoy 1.40: the stream it replaces to follow a redirect logs this.
        assert_eq!(unfinished_stream_outcome("internal_redirect"), None);
        assert_eq!(unfinished_stream_outcome(""), None);
        assert_eq!(
            unfinished_stream_outcome(VIA_UPSTREAM),
            Some(Outcome::ClientClosed)
        );
        assert_eq!(
            unfinished_stream_outcome("upstream_reset_after_response_started{remote_reset}"),
            Some(Outcome::OriginError)
        );
    }

    #[test]
    fn cache_hits_are_forwarded_and_checked_against_the_stored_address() {
        // Seen on Envoy 1.40 (tests/tests/envoy_cache.rs): a hit's details, no upstream address.
        assert!(is_cache_hit("cache.response_from_cache_filter"));
        for details in [
            VIA_UPSTREAM,
            "",
            "cache.insert_via_upstream",
            "cache.aborted_lookup",
        ] {
            assert!(!is_cache_hit(details), "{details}");
        }
        let (router, stored) = (Some("192.0.2.1:80"), Some("192.0.2.9:80"));
        assert_eq!(response_upstream_address(router, stored), router);
        assert_eq!(response_upstream_address(None, stored), stored);
        assert_eq!(response_upstream_address(None, None), None);
        assert_eq!(
            cache_result(RESPONSE_FROM_CACHE, None, stored),
            Some(CacheResult::Hit)
        );
        assert_eq!(
            cache_result(VIA_UPSTREAM, None, stored),
            Some(CacheResult::Miss)
        );
        assert_eq!(cache_result(VIA_UPSTREAM, router, stored), None);
        assert_eq!(cache_result(VIA_UPSTREAM, None, None), None);
        for removed in [UPSTREAM_HEADER, ALLOW_PRIVATE_HEADER, FORWARDED_PROTO] {
            assert!(ORIGIN_REQUEST_REMOVED.contains(&removed), "{removed}");
        }
    }

    #[test]
    fn cache_fill_settings_round_trip_through_their_header() {
        let types = vec!["image/".to_owned(), "application/pdf".to_owned()];
        for behavior in [
            CacheTtlBehavior::RespectOrigin,
            CacheTtlBehavior::OverrideOrigin,
            CacheTtlBehavior::EnforceMinimum,
        ] {
            for allowed in [None, Some(types.clone()), Some(Vec::new())] {
                let fill = CacheFill {
                    ttl: CacheTtl {
                        behavior,
                        ttl: 31_536_000,
                        error_ttl: 300,
                    },
                    max_body_bytes: 1 << 20,
                    allowed_content_types: allowed,
                };
                let value = CacheFill::encode(
                    &fill.ttl,
                    fill.max_body_bytes,
                    fill.allowed_content_types.as_deref(),
                );
                assert_eq!(CacheFill::decode(&value), Some(fill), "{value}");
            }
        }
        assert_eq!(
            CacheFill::encode(&CacheTtl::default(), 100, None),
            "respect_origin 31536000 300 100"
        );
        assert_eq!(
            CacheFill::encode(&CacheTtl::default(), 100, Some(&types)),
            "respect_origin 31536000 300 100 image/,application/pdf"
        );
        for bad in [
            "",
            "respect_origin",
            "sometimes 1 2 3",
            "override_origin 1 x 3",
            "override_origin 1 2",
            "override_origin 1 2 x",
            "override_origin 1 2 3 image/ extra",
        ] {
            assert_eq!(CacheFill::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cache_keeps_an_answer_the_gateway_refuses_for_cache_ttl_error_only() {
        let fill = |allowed: Option<&[&str]>| CacheFill {
            ttl: CacheTtl {
                behavior: CacheTtlBehavior::RespectOrigin,
                ttl: 1000,
                error_ttl: 30,
            },
            max_body_bytes: 100,
            allowed_content_types: allowed.map(|a| a.iter().map(|t| (*t).to_owned()).collect()),
        };
        let head = |status: u16, fields: &[(&str, &str)]| {
            OriginHead::of(status, fields.iter().map(|(n, v)| (*n, v.as_bytes())))
        };
        let error = "public, max-age=30";
        let images = fill(Some(&["image/"]));
        let png = [
            ("content-type", "image/png"),
            ("cache-control", "max-age=600"),
        ];
        assert_eq!(images.stored_cache_control(&head(200, &png)), "max-age=600");
        assert_eq!(images.stored_cache_control(&head(404, &png)), error);
        let html = [
            ("content-type", "text/html"),
            ("cache-control", "max-age=600"),
        ];
        assert_eq!(images.stored_cache_control(&head(200, &html)), error);
        assert_eq!(
            fill(None).stored_cache_control(&head(200, &html)),
            "max-age=600"
        );
        assert_eq!(images.stored_cache_control(&head(404, &html)), error);
        let two_types = [("content-type", "image/png"), ("content-type", "image/gif")];
        assert_eq!(
            fill(None).stored_cache_control(&head(200, &two_types)),
            error
        );
        let large = [("content-type", "image/png"), ("content-length", "101")];
        assert_eq!(fill(None).stored_cache_control(&head(200, &large)), error);
        let fits = [("content-type", "image/png"), ("content-length", "100")];
        assert_eq!(
            fill(None).stored_cache_control(&head(200, &fits)),
            "public, max-age=1000"
        );
        for status in crate::response::FOLLOWED_REDIRECTS {
            let moved = [("location", "/x"), ("cache-control", "max-age=600")];
            assert_eq!(
                fill(None).stored_cache_control(&head(status, &moved)),
                error,
                "{status}"
            );
        }
    }

    #[test]
    fn only_the_replaced_stream_hands_its_request_over() {
        assert!(handed_over_to_redirect(INTERNAL_REDIRECT));
        for details in [
            "",
            VIA_UPSTREAM,
            "downstream_remote_disconnect",
            "internal_redirect2",
        ] {
            assert!(!handed_over_to_redirect(details), "{details}");
        }
        assert_eq!(inflight_key("assets"), "ixproxy.inflight.assets");
    }
}
