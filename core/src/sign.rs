//! The js-core-compatible signer (README: Command line, `sign`): builds the signed path and query an imgix SDK would.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::verify::md5_hex;

/// Options of [`sign_url`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignOptions {
    /// Use the path exactly as given (js-core's `disablePathEncoding`), for paths that are
    /// already encoded.
    pub disable_path_encoding: bool,
}

/// Characters `encodeURIComponent` leaves alone besides ASCII alphanumerics.
const COMPONENT_SAFE: &[u8] = b"-_.!~*'()";
/// Characters js-core's plain-path encoding leaves alone besides [`COMPONENT_SAFE`]:
/// `encodeURI`'s reserved set minus `#`, `?`, `:` and `+`, which js-core encodes.
const PATH_SAFE: &[u8] = b";,/@&=$";

fn encode(input: &str, extra_safe: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || COMPONENT_SAFE.contains(&b) || extra_safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// JavaScript's `encodeURIComponent`: UTF-8 bytes, uppercase hex.
pub fn encode_uri_component(input: &str) -> String {
    encode(input, &[])
}

/// The path part of a signed URL, as js-core's `_sanitizePath` builds it: one leading `/`, then
/// an `http(s)://` origin URL as `encodeURIComponent`, any other path with `encodeURI` plus
/// `#?:+` encoded, or the path untouched with [`SignOptions::disable_path_encoding`].
pub fn encode_path(path: &str, options: &SignOptions) -> String {
    let path = path.strip_prefix('/').unwrap_or(path);
    let encoded = if options.disable_path_encoding {
        path.to_owned()
    } else if path.starts_with("http://") || path.starts_with("https://") {
        encode_uri_component(path)
    } else {
        encode(path, PATH_SAFE)
    };
    format!("/{encoded}")
}

/// One `key=value` query pair as js-core writes it; a key ending in `64` gets its value as
/// unpadded base64url of its UTF-8 bytes.
pub fn encode_param(key: &str, value: &str) -> String {
    let value = if key.ends_with("64") {
        URL_SAFE_NO_PAD.encode(value.as_bytes())
    } else {
        encode_uri_component(value)
    };
    format!("{}={}", encode_uri_component(key), value)
}

/// Signs `path` (an origin URL for a Web Proxy source, or a plain path) with `params` in the
/// order given and returns the path and query with `s` appended last.
///
/// Any `s` among `params` is dropped: the signature is always recomputed and appended.
pub fn sign_url(
    token: &str,
    path: &str,
    params: &[(String, String)],
    options: &SignOptions,
) -> String {
    let path = encode_path(path, options);
    let query = params
        .iter()
        .filter(|(k, _)| k != "s")
        .map(|(k, v)| encode_param(k, v))
        .collect::<Vec<_>>()
        .join("&");
    let mut base = String::with_capacity(token.len() + path.len() + query.len() + 1);
    base.push_str(token);
    base.push_str(&path);
    if !query.is_empty() {
        base.push('?');
        base.push_str(&query);
    }
    let signature = md5_hex(&base);
    if query.is_empty() {
        format!("{path}?s={signature}")
    } else {
        format!("{path}?{query}&s={signature}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_uri_component_matches_javascript() {
        assert_eq!(
            encode_uri_component("http://a.com/x y?q=1&r=ü#f"),
            "http%3A%2F%2Fa.com%2Fx%20y%3Fq%3D1%26r%3D%C3%BC%23f"
        );
        assert_eq!(encode_uri_component("-_.!~*'()"), "-_.!~*'()");
    }

    #[test]
    fn plain_paths_keep_slashes_and_encode_js_core_specials() {
        let o = SignOptions::default();
        assert_eq!(encode_path("users/image 1.png", &o), "/users/image%201.png");
        assert_eq!(
            encode_path("/[a]/b:c+d#e?f.png", &o),
            "/%5Ba%5D/b%3Ac%2Bd%23e%3Ff.png"
        );
        assert_eq!(encode_path("a;b,c@d&e=f$g.png", &o), "/a;b,c@d&e=f$g.png");
    }

    #[test]
    fn params_ending_in_64_are_base64url() {
        assert_eq!(
            encode_param("txt64", "Hello, World?"),
            "txt64=SGVsbG8sIFdvcmxkPw"
        );
        assert_eq!(encode_param("txt", "a b"), "txt=a%20b");
    }

    #[test]
    fn an_existing_s_is_replaced() {
        let params = vec![
            ("s".to_owned(), "abc".to_owned()),
            ("width".to_owned(), "400".to_owned()),
        ];
        assert_eq!(
            sign_url("token", "/image.png", &params, &SignOptions::default()),
            "/image.png?width=400&s=72d5ac8cf655aec51fc58ff075161440"
        );
    }
}
