//! The access log both runtimes write (README: Operating, Access log): the request id rule, the
//! client address rule, and one line per request in the `json` or `text` format.
//!
//! A line never holds the path, the query, `s`, a token or an auth header: the path and query
//! carry the signature and the origin URL, so the record has no field for them at all.

use std::cell::Cell;
use std::net::IpAddr;

use crate::addr::IpNet;
use crate::cache::CacheResult;
use crate::config::AccessLogFormat;
use crate::origin::OriginUrl;
use crate::Outcome;

/// The request and response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest client-sent request id kept.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Random bytes a generated request id is made from (rendered as hex: 32 characters).
pub const REQUEST_ID_RANDOM_BYTES: usize = 16;

/// Whether a client's `X-Request-ID` is kept: 1 to 128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_CHARS).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The client's `X-Request-ID` (its values, in order) when the request keeps it as its id:
/// exactly one value was sent and it is valid. Otherwise the request gets [`new_request_id`], so
/// randomness is drawn only for those.
pub fn kept_request_id<'a>(mut client_values: impl Iterator<Item = &'a [u8]>) -> Option<&'a str> {
    match (client_values.next(), client_values.next()) {
        // Valid ids are ASCII, so UTF-8.
        (Some(value), None) if is_valid_request_id(value) => std::str::from_utf8(value).ok(),
        _ => None,
    }
}

/// A request id made by the gateway: 32 lower-case hex characters from `random`.
pub fn new_request_id(random: [u8; REQUEST_ID_RANDOM_BYTES]) -> String {
    crate::hex::encode(&random, crate::hex::LOWER)
}

/// The client address of a request that arrived from `peer` with these `X-Forwarded-For`
/// values (in header order).
///
/// A peer outside `trusted` is the client, whatever it sent. From a trusted peer, the list is
/// walked from its end (the address the nearest proxy appended) towards its start, skipping
/// trusted addresses: the first untrusted one is the client. An entry that is not an address
/// stops the walk, and the last trusted address seen is the client; so does the start of the list.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(canonical(ip)));
    let mut client = peer;
    if !is_trusted(peer) {
        return client;
    }
    let entries = forwarded_for.rev().flat_map(|value| value.rsplit(','));
    for entry in entries {
        let Some(ip) = parse_forwarded_entry(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so `10.0.0.0/8` covers
/// `::ffff:10.0.0.1` (a dual-stack listener's view of an IPv4 peer).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `X-Forwarded-For` entry: an address, optionally `[v6]`, `v4:port` or `[v6]:port`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse().ok().map(canonical);
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// One request's access log record (every field of the README's table).
///
/// [`render_into`](Self::render_into) writes it without serde, formatting or allocation: it runs
/// once per request on the native gateway's hot path (bench/NOTES.md, access log).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRecord<'a> {
    /// When the request arrived, in microseconds since the epoch; written as RFC 3339 UTC with
    /// milliseconds (`2026-12-01T11:32:32.123Z`).
    pub ts_micros: u64,
    /// See [`kept_request_id`] and [`new_request_id`].
    pub request_id: &'a str,
    /// See [`client_ip`]; `None` for a client without an address (a Unix socket), written `-`.
    pub client_ip: Option<IpAddr>,
    /// The request method as sent.
    pub method: &'a str,
    /// The Host (or `:authority`) as sent.
    pub host: &'a str,
    /// The source's name; `None` when the Host names no source.
    pub source: Option<&'a str>,
    /// The request's one outcome.
    pub outcome: Outcome,
    /// The status sent; 0 when no response header went out.
    pub status: u16,
    /// The origin of the last hop: written as `origin_host`, its host (and port when not the
    /// scheme's default, see [`OriginUrl::authority`]).
    pub origin: Option<&'a OriginUrl>,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// From the request's arrival to its end, in microseconds; written as `duration_ms`,
    /// milliseconds with three decimals.
    pub duration_us: u64,
    /// From the start of the origin request to its response header, in microseconds (written
    /// as `upstream_ms`); `None` without one.
    pub upstream_us: Option<u64>,
    /// What the response cache did; `None` when it was not used.
    pub cache: Option<CacheResult>,
}

/// A duration in whole microseconds, as the record holds it.
pub fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl AccessRecord<'_> {
    /// The line for `format` (no trailing newline); `None` for [`AccessLogFormat::Off`].
    pub fn render(&self, format: AccessLogFormat) -> Option<String> {
        let mut line = Vec::with_capacity(320);
        if !self.render_into(format, &mut line) {
            return None;
        }
        // Every piece is ASCII or a whole `&str`: always UTF-8.
        String::from_utf8(line).ok()
    }

    /// Appends the line for `format` (no trailing newline, UTF-8) to `out`; false (nothing
    /// written) for [`AccessLogFormat::Off`].
    pub fn render_into(&self, format: AccessLogFormat, out: &mut Vec<u8>) -> bool {
        match format {
            AccessLogFormat::Off => return false,
            AccessLogFormat::Json => self.json(out),
            AccessLogFormat::Text => self.text(out),
        }
        true
    }

    /// One JSON object, in the README's field order; `null` for an absent value. Strings are
    /// escaped as serde_json does (quote, backslash, control characters).
    fn json(&self, out: &mut Vec<u8>) {
        let opt = |out: &mut Vec<u8>, v: Option<&str>| match v {
            Some(v) => json_string(out, v),
            None => out.extend_from_slice(b"null"),
        };
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339_millis(out, self.ts_micros);
        out.extend_from_slice(b"\",\"request_id\":");
        json_string(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":\"");
        push_ip(out, self.client_ip);
        out.extend_from_slice(b"\",\"method\":");
        match self.method {
            // The methods a gateway answers, compared whole: nothing to scan.
            "GET" => out.extend_from_slice(b"\"GET\""),
            "HEAD" => out.extend_from_slice(b"\"HEAD\""),
            other => json_string(out, other),
        }
        out.extend_from_slice(b",\"host\":");
        json_string(out, self.host);
        out.extend_from_slice(b",\"source\":");
        opt(out, self.source);
        // Labels of the core's own: nothing to escape.
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        // A punycode name, an address and a port: nothing to escape.
        match self.origin {
            Some(origin) => {
                out.extend_from_slice(b",\"origin_host\":\"");
                origin.write_authority(out);
                out.push(b'"');
            }
            None => out.extend_from_slice(b",\"origin_host\":null"),
        }
        out.extend_from_slice(b",\"bytes_sent\":");
        push_u64(out, self.bytes_sent);
        out.extend_from_slice(b",\"duration_ms\":");
        push_millis(out, self.duration_us);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_us {
            Some(us) => push_millis(out, us),
            None => out.extend_from_slice(b"null"),
        }
        match self.cache {
            Some(cache) => {
                out.extend_from_slice(b",\"cache\":\"");
                out.extend_from_slice(cache.as_str().as_bytes());
                out.extend_from_slice(b"\"}");
            }
            None => out.extend_from_slice(b",\"cache\":null}"),
        }
    }

    /// `key=value` pairs in the JSON field order; `-` for an absent value, client-sent values
    /// quoted when they hold a space, a quote, `=` or a control character.
    fn text(&self, out: &mut Vec<u8>) {
        let opt = |out: &mut Vec<u8>, v: Option<&str>| text_value(out, v.unwrap_or("-"));
        out.extend_from_slice(b"ts=");
        push_rfc3339_millis(out, self.ts_micros);
        out.extend_from_slice(b" request_id=");
        text_value(out, self.request_id);
        out.extend_from_slice(b" client_ip=");
        push_ip(out, self.client_ip);
        out.extend_from_slice(b" method=");
        text_value(out, self.method);
        out.extend_from_slice(b" host=");
        text_value(out, self.host);
        out.extend_from_slice(b" source=");
        opt(out, self.source);
        out.extend_from_slice(b" outcome=");
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.extend_from_slice(b" status=");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(b" origin_host=");
        match self.origin {
            Some(origin) => origin.write_authority(out),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" bytes_sent=");
        push_u64(out, self.bytes_sent);
        out.extend_from_slice(b" duration_ms=");
        push_millis(out, self.duration_us);
        out.extend_from_slice(b" upstream_ms=");
        match self.upstream_us {
            Some(us) => push_millis(out, us),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" cache=");
        out.extend_from_slice(self.cache.map_or("-", CacheResult::as_str).as_bytes());
    }
}

fn text_value(out: &mut Vec<u8>, value: &str) {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_control() && !matches!(c, ' ' | '"' | '=' | '\\'));
    if plain {
        out.extend_from_slice(value.as_bytes());
    } else {
        // JSON string escaping: unambiguous, and a control character cannot forge a line.
        json_string(out, value);
    }
}

/// `value` as a JSON string: quote, backslash and control characters escaped (serde_json's
/// rule), the rest as is.
fn json_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.push(b'"');
    if !any_needs_escape(bytes) {
        // Every value a well-behaved client sends: one copy.
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                let hex = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(hex[usize::from(b >> 4)]);
                out.push(hex[usize::from(b & 0x0f)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `bytes` [`needs_escape`], eight at a time: a byte below 0x20, or equal to
/// `"` or `\\`, leaves its high bit set in one of the three words below (the classic "has a
/// zero byte" test; a false alarm only sends the value down the exact per-byte path).
fn any_needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        if below_space
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    words.remainder().iter().any(|&b| needs_escape(b))
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Microseconds as milliseconds with three decimals: `12.345`.
fn push_millis(out: &mut Vec<u8>, micros: u64) {
    push_u64(out, micros / 1000);
    let mut fraction = *b".000";
    put_digits(&mut fraction[1..], micros % 1000);
    out.extend_from_slice(&fraction);
}

/// An address as `Display` writes it; IPv4 without the formatting machinery. `-` for none.
fn push_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    thread_local! {
        /// The last IPv4 address written and its text: a keep-alive connection's requests come
        /// from one address.
        static LAST_V4: Cell<(u32, [u8; 15], u8)> = const { Cell::new((u32::MAX, [0; 15], 0)) };
    }
    if let Some(IpAddr::V4(v4)) = ip {
        let (bits, text, len) = LAST_V4.get();
        // Nothing written yet has no length.
        if len != 0 && bits == u32::from(v4) {
            out.extend_from_slice(&text[..usize::from(len)]);
            return;
        }
        let start = out.len();
        push_ip_uncached(out, ip);
        let written = &out[start..];
        let mut text = [0u8; 15];
        text[..written.len()].copy_from_slice(written);
        LAST_V4.set((u32::from(v4), text, written.len() as u8));
        return;
    }
    push_ip_uncached(out, ip);
}

fn push_ip_uncached(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        Some(IpAddr::V4(v4)) => {
            let mut text = [0u8; 16];
            let mut len = 0;
            for octet in v4.octets() {
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + (octet / 10) % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                text[len + 1] = b'.';
                len += 2;
            }
            // Without the last octet's point.
            out.extend_from_slice(&text[..len - 1]);
        }
        Some(ip @ IpAddr::V6(_)) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
}

thread_local! {
    /// The last second written and its `YYYY-MM-DDTHH:MM:SS` text: the lines of one second
    /// share it, so the calendar is worked out once per second per thread.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// `unix_micros` (microseconds since the epoch) as RFC 3339 UTC with milliseconds:
/// `2026-12-01T11:32:32.123Z`.
fn push_rfc3339_millis(out: &mut Vec<u8>, unix_micros: u64) {
    let secs = unix_micros / 1_000_000;
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        if year > 9999 {
            // Past the four-digit years of RFC 3339: written in full rather than wrapped.
            push_u64(out, year);
            let mut rest = *b"-00-00T00:00:00";
            put_digits(&mut rest[1..3], month);
            put_digits(&mut rest[4..6], day);
            put_digits(&mut rest[7..9], rem / 3600);
            put_digits(&mut rest[10..12], (rem % 3600) / 60);
            put_digits(&mut rest[13..15], rem % 60);
            out.extend_from_slice(&rest);
            push_millis_part(out, unix_micros);
            return;
        }
        text = *b"0000-00-00T00:00:00";
        put_digits(&mut text[0..4], year);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        put_digits(&mut text[11..13], rem / 3600);
        put_digits(&mut text[14..16], (rem % 3600) / 60);
        put_digits(&mut text[17..19], rem % 60);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    push_millis_part(out, unix_micros);
}

/// `.mmmZ` of `unix_micros`.
fn push_millis_part(out: &mut Vec<u8>, unix_micros: u64) {
    let mut millis = *b".000Z";
    put_digits(&mut millis[1..4], (unix_micros / 1000) % 1000);
    out.extend_from_slice(&millis);
}

/// `n`'s last `digits.len()` decimal digits into `digits`, zero-padded.
fn put_digits(digits: &mut [u8], mut n: u64) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The proleptic Gregorian date `(year, month, day)` of `days` after 1970-01-01 (H. Hinnant's
/// algorithm); public so that the test harness dates its origins' answers with it.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339_millis(unix_micros: u64) -> String {
        let mut out = Vec::new();
        push_rfc3339_millis(&mut out, unix_micros);
        String::from_utf8(out).expect("ascii")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_valid_client_request_id_is_kept_else_one_is_made() {
        let random = [0xab; REQUEST_ID_RANDOM_BYTES];
        let made = "ab".repeat(REQUEST_ID_RANDOM_BYTES);
        let id = |values: &[&[u8]]| {
            kept_request_id(values.iter().copied())
                .map_or_else(|| new_request_id(random), str::to_owned)
        };
        let ok: &[u8] = b"req-1.2_X";
        assert_eq!(id(&[ok]), "req-1.2_X");
        let longest = "a".repeat(MAX_REQUEST_ID_CHARS);
        assert_eq!(id(&[longest.as_bytes()]), longest);
        let too_long = "a".repeat(MAX_REQUEST_ID_CHARS + 1);
        for bad in [
            &b""[..],
            b"has space",
            b"a/b",
            b"caf\xc3\xa9",
            b"x\r\ny",
            too_long.as_bytes(),
        ] {
            assert_eq!(id(&[bad]), made, "{bad:?}");
        }
        assert_eq!(id(&[]), made);
        // Two values: neither is believed.
        assert_eq!(id(&[ok, ok]), made);
        assert!(is_valid_request_id(made.as_bytes()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = [
            IpNet::parse("10.0.0.0/8").expect("net"),
            IpNet::parse("::1").expect("net"),
        ];
        let xff = |values: &'static [&'static str]| values.iter().copied();
        // Untrusted peer: its own address, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.9"), xff(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // Trusted peer: the last untrusted entry, walking from the end.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                xff(&["1.1.1.1, 198.51.100.7, 10.0.0.5"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Across several header lines, the last line is the nearest.
        assert_eq!(
            client_ip(ip("10.0.0.2"), xff(&["198.51.100.7", "10.9.9.9"]), &trusted),
            ip("198.51.100.7")
        );
        // Everything trusted: the first entry.
        assert_eq!(
            client_ip(ip("::1"), xff(&["10.1.1.1", "10.2.2.2"]), &trusted),
            ip("10.1.1.1")
        );
        // No header: the peer.
        assert_eq!(
            client_ip(ip("10.0.0.2"), xff(&[]), &trusted),
            ip("10.0.0.2")
        );
        // Garbage stops the walk at the last trusted address.
        assert_eq!(
            client_ip(ip("10.0.0.2"), xff(&["1.1.1.1, junk, 10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // Ports and brackets; a mapped v4 peer is matched as v4.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), xff(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), xff(&["192.0.2.1:8080"]), &trusted),
            ip("192.0.2.1")
        );
        // Nothing trusted: never believed.
        assert_eq!(
            client_ip(ip("10.0.0.2"), xff(&["1.2.3.4"]), &[]),
            ip("10.0.0.2")
        );
    }

    static ORIGIN: std::sync::OnceLock<OriginUrl> = std::sync::OnceLock::new();

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            ts_micros: 1_764_588_752_123_456,
            request_id: "abc",
            client_ip: Some(ip("192.0.2.1")),
            method: "GET",
            host: "a.test",
            source: Some("a"),
            outcome: Outcome::Forwarded,
            status: 200,
            origin: ORIGIN
                .get_or_init(|| OriginUrl {
                    scheme: crate::origin::Scheme::Https,
                    host: "origin.test".into(),
                    port: 8443,
                    path_and_query: "/a.png".into(),
                })
                .into(),
            bytes_sent: 1024,
            duration_us: 12_345,
            upstream_us: Some(3_500),
            cache: None,
        }
    }

    #[test]
    fn json_lines_hold_every_field_and_nulls_for_absent_values() {
        let line = record().render(AccessLogFormat::Json).expect("json");
        let value: serde_json::Value = serde_json::from_str(&line).expect("parses");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "ts",
            "request_id",
            "client_ip",
            "method",
            "host",
            "source",
            "outcome",
            "status",
            "origin_host",
            "bytes_sent",
            "duration_ms",
            "upstream_ms",
            "cache",
        ];
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        assert_eq!(value["ts"], "2025-12-01T11:32:32.123Z");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes_sent"], 1024);
        assert_eq!(value["cache"], serde_json::Value::Null);
        assert!(!line.contains('\n'));
        assert_eq!(record().render(AccessLogFormat::Off), None);
    }

    #[test]
    fn text_lines_quote_what_could_forge_a_field() {
        let mut rec = record();
        rec.host = "a.test x=1";
        rec.method = "GET\n";
        let line = rec.render(AccessLogFormat::Text).expect("text");
        assert!(
            line.starts_with("ts=2025-12-01T11:32:32.123Z request_id=abc "),
            "{line}"
        );
        assert!(line.contains(r#"host="a.test x=1" "#), "{line}");
        assert!(line.contains(r#"method="GET\n" "#), "{line}");
        assert!(line.contains(" upstream_ms=3.500 cache=-"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_lines_escape_what_serde_json_escapes_and_format_numbers_exactly() {
        let hostile = [
            "plain.example",
            "quote\"back\\slash",
            "ctl\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}",
            "caf\u{e9} \u{1f600}",
            "",
        ];
        for value in hostile {
            let mut rec = record();
            rec.host = value;
            rec.source = Some(value);
            let line = rec.render(AccessLogFormat::Json).expect("json");
            let parsed: serde_json::Value = serde_json::from_str(&line).expect(&line);
            assert_eq!(parsed["host"], value);
            let expected = serde_json::to_string(value).expect("json");
            assert!(line.contains(&format!("\"host\":{expected},")), "{line}");
        }
        let mut rec = record();
        rec.client_ip = Some(ip("2001:db8::1"));
        rec.duration_us = 7;
        rec.upstream_us = None;
        rec.bytes_sent = u64::MAX;
        let line = rec.render(AccessLogFormat::Json).expect("json");
        let mut longest = Vec::new();
        push_millis(&mut longest, u64::MAX);
        assert_eq!(longest, b"18446744073709551.615");
        assert!(line.contains(r#""client_ip":"2001:db8::1""#), "{line}");
        assert!(
            line.contains(r#""duration_ms":0.007,"upstream_ms":null"#),
            "{line}"
        );
        assert!(
            line.contains(&format!(r#""bytes_sent":{},"#, u64::MAX)),
            "{line}"
        );
        // The first on a thread of its own is the initial value's address.
        let first = std::thread::spawn(|| {
            let mut line = Vec::new();
            push_ip(&mut line, Some(ip("255.255.255.255")));
            line
        });
        assert_eq!(first.join().expect("thread"), b"255.255.255.255");
        for v4 in [
            "0.0.0.0",
            "10.200.3.45",
            "10.200.3.45",
            "255.255.255.255",
            "1.2.3.4",
        ] {
            rec.client_ip = Some(ip(v4));
            let line = rec.render(AccessLogFormat::Text).expect("text");
            assert!(line.contains(&format!(" client_ip={v4} ")), "{line}");
        }
        rec.client_ip = None;
        let line = rec.render(AccessLogFormat::Json).expect("json");
        assert!(line.contains(r#""client_ip":"-""#), "{line}");
        let line = record().render(AccessLogFormat::Json).expect("json");
        assert!(
            line.contains(r#""duration_ms":12.345,"upstream_ms":3.500,"#),
            "{line}"
        );
        let mut hit = record();
        hit.cache = Some(CacheResult::Hit);
        let line = hit.render(AccessLogFormat::Json).expect("json");
        let tail = r#""outcome":"forwarded","status":200,"origin_host":"origin.test:8443","bytes_sent":1024,"duration_ms":12.345,"upstream_ms":3.500,"cache":"hit"}"#;
        assert!(line.ends_with(tail), "{line}");
        let text = hit.render(AccessLogFormat::Text).expect("text");
        let tail = " outcome=forwarded status=200 origin_host=origin.test:8443 bytes_sent=1024 \
                    duration_ms=12.345 upstream_ms=3.500 cache=hit";
        assert!(text.ends_with(tail), "{text}");
    }

    #[test]
    fn the_word_scan_finds_every_byte_that_needs_escaping_at_every_position() {
        for b in 0..=255u8 {
            for at in 0..19 {
                let mut bytes = [b'a'; 19];
                bytes[at] = b;
                assert_eq!(
                    any_needs_escape(&bytes),
                    needs_escape(b),
                    "byte {b:#04x} at {at}"
                );
            }
        }
        // Bytes above 0x7f next to each other (UTF-8) are plain.
        assert!(!any_needs_escape("caf\u{e9}\u{1f600}\u{1f600}".as_bytes()));
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(4_107_542_399_999_999),
            "2100-02-28T23:59:59.999Z"
        );
        // The same second again (its text cached), then the next millisecond and second.
        assert_eq!(
            rfc3339_millis(4_107_542_399_000_000),
            "2100-02-28T23:59:59.000Z"
        );
        assert_eq!(
            rfc3339_millis(4_107_542_400_001_000),
            "2100-03-01T00:00:00.001Z"
        );
        assert_eq!(
            rfc3339_millis(253_402_300_800_000_000),
            "10000-01-01T00:00:00.000Z"
        );
    }
}
