//! imgix's `dl=<filename>` (and `dl64=`, base64url as the signer's `64` convention): the
//! response asks the browser to download, as `Content-Disposition: attachment;
//! filename="<ASCII>"; filename*=UTF-8''<percent-encoded>` (RFC 6266, RFC 8187). The parameter
//! is signed like any gateway parameter, never forwarded, and not part of the cache key (the
//! key is the source and the decoded origin URL); the header is added per response, hits too.
//!
//! The name is made safe before either form is built: control characters, invisible Unicode
//! format characters (bidi overrides, zero-width), `"`, `\` and `/`
//! become `_` (so `../x` cannot name a path and CR/LF can never split the header); the ASCII
//! form also replaces every non-ASCII character and `%` (some browsers percent-decode
//! `filename`); the name is cut at [`MAX_FILENAME_CHARS`] characters. `+` is a plus sign: the
//! imgix SDKs encode a space as `%20` (`encodeURIComponent`), so the value is percent-decoded
//! only, never form-decoded.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// The parameter that asks for a download.
pub const DL_PARAM: &str = "dl";
/// The same, its value base64url-encoded (unpadded or padded).
pub const DL64_PARAM: &str = "dl64";
/// `Content-Disposition`.
pub const CONTENT_DISPOSITION: &str = "content-disposition";
/// Longest file name kept, in characters (longer ones are cut on a character boundary).
pub const MAX_FILENAME_CHARS: usize = 200;
/// The name used when neither the parameter nor the origin path gives one.
pub const FALLBACK_FILENAME: &str = "download";

/// The `Content-Disposition` value for the signed params (raw `(key, value)` pairs, see
/// [`crate::verify::SignedTarget::params`]) of a request for an origin whose path is
/// `origin_path` (raw, percent-encoded, without the query): `None` when no `dl`/`dl64` is
/// present. The first `dl` or `dl64` counts. An empty value (or a `dl64` that is not base64url
/// of UTF-8) names the file after the origin path's last segment.
pub fn content_disposition<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    origin_path: &str,
) -> Option<String> {
    let (key, raw) = params
        .into_iter()
        .find(|(k, _)| *k == DL_PARAM || *k == DL64_PARAM)?;
    let requested = if key == DL64_PARAM {
        decode_base64(raw)
    } else {
        percent_decode(raw)
    };
    let name = match requested.filter(|n| !n.is_empty()) {
        Some(name) => name,
        None => last_segment(origin_path),
    };
    Some(header_value(&safe_name(&name)))
}

/// Whether a raw signed query may hold a `dl` or `dl64` parameter: a `d` at a parameter's start
/// followed by `l`. A fast filter for [`content_disposition`] (one SIMD `memchr` per `d`, where
/// walking the parameters one by one costs ≈1,000 instructions for an SDK URL's six).
pub fn may_ask_download(query: &str) -> bool {
    let bytes = query.as_bytes();
    let mut from = 0;
    while let Some(found) = bytes
        .get(from..)
        .and_then(|rest| memchr::memchr(b'd', rest))
    {
        let at = from + found;
        let starts_param = at == 0 || bytes.get(at - 1) == Some(&b'&');
        if starts_param && bytes.get(at + 1) == Some(&b'l') {
            return true;
        }
        from = at + 1;
    }
    false
}

fn percent_decode(raw: &str) -> Option<String> {
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

fn decode_base64(raw: &str) -> Option<String> {
    let raw = percent_decode(raw)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(raw.as_bytes())
        .or_else(|_| URL_SAFE.decode(raw.as_bytes()))
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The last segment of a raw origin path, percent-decoded (empty for `/` or a path ending in
/// `/`).
fn last_segment(origin_path: &str) -> String {
    let path = origin_path.split(['?', '#']).next().unwrap_or_default();
    let segment = path.rsplit('/').next().unwrap_or_default();
    percent_decode(segment).unwrap_or_default()
}

/// The name with every character that must not reach the header replaced, cut at
/// [`MAX_FILENAME_CHARS`]; [`FALLBACK_FILENAME`] when nothing but dots and spaces is left.
fn safe_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .take(MAX_FILENAME_CHARS)
        .map(|c| {
            if c.is_control() || is_invisible_format(c) || matches!(c, '"' | '\\' | '/') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if safe.chars().all(|c| c == '.' || c.is_whitespace()) {
        FALLBACK_FILENAME.to_owned()
    } else {
        safe
    }
}

/// Unicode format and separator characters a file name must not carry: bidi overrides,
/// embeddings and isolates (`invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`), zero-width
/// characters, the line and paragraph separators and the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// RFC 8187 `attr-char`: what `filename*` carries unencoded.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

fn header_value(name: &str) -> String {
    let mut out = String::with_capacity(40 + name.len() * 4);
    out.push_str("attachment; filename=\"");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_graphic() && c != '%' || c == ' ' {
            c
        } else {
            '_'
        }
    }));
    out.push_str("\"; filename*=UTF-8''");
    for b in name.bytes() {
        if is_attr_char(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(value: &str) -> String {
        content_disposition([("w", "1"), ("dl", value)], "/assets/photo%20one.jpg").expect("dl")
    }

    /// Whether `value` is one header value a browser cannot misread: visible ASCII and spaces
    /// only, the quoted name free of quotes and backslashes.
    fn assert_inert(value: &str) {
        assert!(
            value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "{value:?}"
        );
        let quoted = value
            .strip_prefix("attachment; filename=\"")
            .and_then(|rest| rest.split_once("\"; filename*=UTF-8''"))
            .expect("shape");
        assert!(!quoted.0.contains(['"', '\\', '/', '%']), "{value}");
        assert!(
            quoted.1.bytes().all(|b| is_attr_char(b) || b == b'%'),
            "{value}"
        );
    }

    #[test]
    fn the_fast_filter_finds_every_dl_parameter_and_few_others() {
        for query in [
            "dl=a",
            "w=1&dl=a",
            "w=1&dl64=YQ",
            "dl",
            "w=1&dl&h=2",
            "a=1&dlx=2",
        ] {
            assert!(may_ask_download(query), "{query}");
        }
        for query in [
            "",
            "w=1",
            "w=1&adl=2",
            "x=dl",
            "w=1&d=2",
            "d",
            "fit=crop&ixlib=js-3.8.0",
        ] {
            assert!(!may_ask_download(query), "{query}");
            let params = query
                .split('&')
                .map(|p| p.split_once('=').unwrap_or((p, "")));
            assert_eq!(content_disposition(params, "/a.jpg"), None, "{query}");
        }
    }

    #[test]
    fn no_dl_no_header() {
        assert_eq!(content_disposition([("w", "1")], "/a.jpg"), None);
        assert_eq!(content_disposition([("dlx", "a")], "/a.jpg"), None);
    }

    #[test]
    fn plain_names_pass_in_both_forms() {
        assert_eq!(
            dl("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            dl("a%20b+c.png"),
            "attachment; filename=\"a b+c.png\"; filename*=UTF-8''a%20b+c.png",
            "+ stays a plus sign"
        );
    }

    #[test]
    fn hostile_names_never_reach_the_header() {
        for (raw, ascii) in [
            ("a%22b%22.jpg", "a_b_.jpg"),
            ("a%0D%0ASet-Cookie:%20x=1", "a__Set-Cookie: x=1"),
            ("..%2F..%2Fetc%2Fpasswd", ".._.._etc_passwd"),
            ("../../etc/passwd", ".._.._etc_passwd"),
            ("a%5Cb.jpg", "a_b.jpg"),
            ("%C3%A9t%C3%A9.jpg", "_t_.jpg"),
            ("%E6%97%A5%E6%9C%AC.png", "__.png"),
            ("100%25.jpg", "100_.jpg"),
            ("%00%7F%C2%85", "___"),
            ("%FF.jpg", "_.jpg"),
            ("invoice%E2%80%AEfdp.exe", "invoice_fdp.exe"),
            ("a%E2%80%8Bb%E2%81%A6c%E2%80%A8d%EF%BB%BF", "a_b_c_d_"),
        ] {
            let value = dl(raw);
            assert_inert(&value);
            assert!(
                value.starts_with(&format!("attachment; filename=\"{ascii}\";")),
                "{raw}: {value}"
            );
        }
        assert!(dl("%C3%A9t%C3%A9.jpg").ends_with("filename*=UTF-8''%C3%A9t%C3%A9.jpg"));
        assert!(dl("%E6%97%A5%E6%9C%AC.png").ends_with("''%E6%97%A5%E6%9C%AC.png"));
        assert!(
            dl("a%0D%0Ab").ends_with("''a__b"),
            "controls replaced first"
        );
        assert!(
            dl("invoice%E2%80%AEfdp.exe").ends_with("''invoice_fdp.exe"),
            "no bidi override in either form"
        );
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let long = "%C3%A9".repeat(1500);
        let value = dl(&long);
        assert_inert(&value);
        let ascii = "_".repeat(MAX_FILENAME_CHARS);
        assert!(value.contains(&format!("filename=\"{ascii}\"")), "{value}");
        assert!(value.ends_with(&"%C3%A9".repeat(MAX_FILENAME_CHARS)));
    }

    #[test]
    fn empty_names_come_from_the_origin_path() {
        assert_eq!(
            dl(""),
            "attachment; filename=\"photo one.jpg\"; filename*=UTF-8''photo%20one.jpg"
        );
        let from = |path: &str| content_disposition([("dl", "")], path).expect("dl");
        assert!(from("/").contains("filename=\"download\""));
        assert!(from("/dir/").contains("filename=\"download\""));
        assert!(from("/a/..").contains("filename=\"download\""));
        assert!(from("/a/b%2Fc.jpg").contains("filename=\"b_c.jpg\""));
    }

    #[test]
    fn dl64_is_base64url_and_the_first_dl_counts() {
        // "résumé.pdf" in unpadded base64url, as the signer's `64` convention writes it.
        let encoded = URL_SAFE_NO_PAD.encode("résumé.pdf");
        let value = content_disposition([("dl64", encoded.as_str())], "/x").expect("dl64");
        assert_eq!(
            value,
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
        let padded = URL_SAFE.encode("a.txt");
        assert!(content_disposition([("dl64", padded.as_str())], "/x")
            .expect("padded")
            .contains("filename=\"a.txt\""));
        assert!(content_disposition([("dl64", "!!")], "/x/y.jpg")
            .expect("bad base64")
            .contains("filename=\"y.jpg\""));
        let first = content_disposition([("dl", "one"), ("dl", "two")], "/x").expect("dl");
        assert!(first.contains("\"one\""), "{first}");
    }
}
