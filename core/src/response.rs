//! Rules over the origin's response, read from raw header values the same way on both
//! runtimes: which redirects are followed, the declared `Content-Length`, the joined
//! `Cache-Control`, and the edits that turn the origin's response head into the client's.

use crate::expires::cap_cache_control;

/// Origin statuses the gateway follows as redirects.
pub const FOLLOWED_REDIRECTS: [u16; 5] = [301, 302, 303, 307, 308];

/// Whether an origin status is a redirect the gateway follows (see [`FOLLOWED_REDIRECTS`]).
pub fn is_followed_redirect(status: u16) -> bool {
    FOLLOWED_REDIRECTS.contains(&status)
}

/// Origin response headers the runtimes remove before answering the client (lower-case).
pub const DROPPED_RESPONSE_HEADERS: [&str; 1] = ["set-cookie"];

/// Whether a response with this status can carry a body (not 1xx, 204 or 304).
pub fn status_has_body(status: u16) -> bool {
    !(status < 200 || status == 204 || status == 304)
}

/// What the response rules read from an origin response head, collected from its raw header
/// fields ([`OriginHead::add`] for each, in order, any name case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginHead {
    status: u16,
    content_type: Option<String>,
    lengths: Vec<Option<u64>>,
    cache_control: Vec<String>,
    location: Option<String>,
    dropped: Vec<&'static str>,
}

impl OriginHead {
    /// An empty head with the origin's status.
    pub fn new(status: u16) -> OriginHead {
        OriginHead {
            status,
            ..OriginHead::default()
        }
    }

    /// The head of `status` with every `(name, value)` field of `fields`.
    pub fn of<'a>(
        status: u16,
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> OriginHead {
        let mut head = OriginHead::new(status);
        for (name, value) in fields {
            head.add(name, value);
        }
        head
    }

    /// Records one header field as received. Bytes that are not UTF-8 are replaced, which can
    /// only make a value fail a check, never pass one.
    pub fn add(&mut self, name: &str, value: &[u8]) {
        let text = || String::from_utf8_lossy(value).trim().to_owned();
        if name.eq_ignore_ascii_case("content-type") {
            self.content_type.get_or_insert_with(text);
        } else if name.eq_ignore_ascii_case("content-length") {
            self.lengths.push(text().parse().ok());
        } else if name.eq_ignore_ascii_case("cache-control") {
            self.cache_control.push(text());
        } else if name.eq_ignore_ascii_case("location") {
            self.location.get_or_insert_with(text);
        } else if let Some(dropped) = DROPPED_RESPONSE_HEADERS
            .iter()
            .find(|d| d.eq_ignore_ascii_case(name))
        {
            if !self.dropped.contains(dropped) {
                self.dropped.push(dropped);
            }
        }
    }

    /// The origin's status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first `Content-Type` value.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The declared body length: `Some` only when every `Content-Length` field is the same
    /// non-negative integer (the runtimes' codecs refuse conflicting ones before this).
    pub fn content_length(&self) -> Option<u64> {
        let first = (*self.lengths.first()?)?;
        self.lengths
            .iter()
            .all(|l| *l == Some(first))
            .then_some(first)
    }

    /// Every `Cache-Control` field joined with `, `, or `None` when there is none.
    pub fn cache_control(&self) -> Option<String> {
        (!self.cache_control.is_empty()).then(|| self.cache_control.join(", "))
    }

    /// The first `Location` value.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The [`DROPPED_RESPONSE_HEADERS`] present in this head.
    pub fn dropped(&self) -> &[&'static str] {
        &self.dropped
    }
}

/// The changes to an origin response head before it reaches the client: headers to remove
/// (every value), then headers to set (replacing every value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseEdits {
    /// Lower-case names to remove.
    pub remove: Vec<&'static str>,
    /// Lower-case names and values to set.
    pub set: Vec<(&'static str, String)>,
}

/// The edits for a forwarded response: remove [`DROPPED_RESPONSE_HEADERS`] and, when the URL
/// carried `expires` (`max_age`), cap `Cache-Control` at the seconds remaining.
pub fn response_edits(head: &OriginHead, max_age: Option<u64>) -> ResponseEdits {
    let mut edits = ResponseEdits {
        remove: head.dropped().to_vec(),
        set: Vec::new(),
    };
    if let Some(max_age) = max_age {
        edits.set.push((
            "cache-control",
            cap_cache_control(head.cache_control().as_deref(), max_age),
        ));
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> OriginHead {
        OriginHead::of(200, fields.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    #[test]
    fn content_length_needs_one_agreeing_number() {
        assert_eq!(
            head(&[("Content-Length", "10737418240")]).content_length(),
            Some(10_737_418_240)
        );
        assert_eq!(head(&[("content-length", " 5 ")]).content_length(), Some(5));
        assert_eq!(
            head(&[("content-length", "5"), ("content-length", "5")]).content_length(),
            Some(5)
        );
        for bad in [
            &[("content-length", "5, 5")][..],
            &[("content-length", "-1")],
            &[],
            &[("content-length", "5"), ("content-length", "6")],
        ] {
            assert_eq!(head(bad).content_length(), None, "{bad:?}");
        }
    }

    #[test]
    fn repeated_cache_control_fields_are_joined() {
        let h = head(&[
            ("cache-control", "public"),
            ("etag", "x"),
            ("Cache-Control", "max-age=10"),
        ]);
        assert_eq!(h.cache_control().as_deref(), Some("public, max-age=10"));
        assert_eq!(head(&[]).cache_control(), None);
    }

    #[test]
    fn responses_lose_cookies_and_get_capped() {
        let h = head(&[
            ("Cache-Control", "public, max-age=3600"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        assert_eq!(
            response_edits(&h, Some(60)),
            ResponseEdits {
                remove: vec!["set-cookie"],
                set: vec![("cache-control", "public, max-age=60".to_owned())],
            }
        );
        assert_eq!(
            response_edits(&h, None),
            ResponseEdits {
                remove: vec!["set-cookie"],
                set: vec![],
            }
        );
        assert_eq!(
            response_edits(&head(&[]), Some(30)).set,
            [("cache-control", "max-age=30".to_owned())]
        );
    }

    #[test]
    fn followed_redirects_and_bodies() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_followed_redirect(s));
        }
        for s in [200, 300, 304, 305, 306, 309] {
            assert!(!is_followed_redirect(s));
        }
        assert!(!status_has_body(100) && !status_has_body(204) && !status_has_body(304));
        assert!(status_has_body(200) && status_has_body(404));
    }
}
