//! Hex text of byte strings, one case at a time: the signature `s` and request ids are
//! lowercase, the per-request origin signature uppercase, and each is decoded in its own case
//! only (a changed case is a different string, never the same signature).

/// Lowercase digits.
pub(crate) const LOWER: &[u8; 16] = b"0123456789abcdef";
/// Uppercase digits.
pub(crate) const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the hex text of `bytes` in `digits`' case: pairs of digits into a stack buffer, then
/// one copy per 64 bytes (request ids and signatures are made per request).
pub(crate) fn push(out: &mut String, bytes: &[u8], digits: &[u8; 16]) {
    let mut text = [0u8; 128];
    for chunk in bytes.chunks(64) {
        for (pair, b) in text.chunks_exact_mut(2).zip(chunk) {
            pair[0] = digits[usize::from(b >> 4)];
            pair[1] = digits[usize::from(b & 0x0f)];
        }
        // Hex digits are ASCII: never the fallback.
        out.push_str(std::str::from_utf8(&text[..chunk.len() * 2]).unwrap_or_default());
    }
}

/// The hex text of `bytes` in `digits`' case.
pub(crate) fn encode(bytes: &[u8], digits: &[u8; 16]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes, digits);
    out
}

/// The `N` bytes of exactly `2 * N` hex characters in `digits`' case, or `None` for anything
/// else (another length, a character of the other case, a non-hex character).
pub(crate) fn decode<const N: usize>(text: &str, digits: &[u8; 16]) -> Option<[u8; N]> {
    let letters = digits[10];
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        _ if (letters..letters + 6).contains(&c) => Some(c - letters + 10),
        _ => None,
    };
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_its_own_case_only() {
        let bytes = [0x00, 0x0f, 0xab, 0xff];
        assert_eq!(encode(&bytes, LOWER), "000fabff");
        assert_eq!(encode(&bytes, UPPER), "000FABFF");
        assert_eq!(decode::<4>("000fabff", LOWER), Some(bytes));
        assert_eq!(decode::<4>("000FABFF", UPPER), Some(bytes));
        assert_eq!(decode::<4>("000FABFF", LOWER), None, "other case");
        assert_eq!(decode::<4>("000fabff", UPPER), None, "other case");
        assert_eq!(decode::<4>("000fabf", LOWER), None, "length");
        assert_eq!(decode::<4>("000fabfg", LOWER), None, "not hex");
        let all: [u8; 256] = std::array::from_fn(|i| i as u8);
        let text = encode(&all, LOWER);
        assert_eq!(&text[..6], "000102");
        assert_eq!(&text[506..], "fdfeff");
        assert_eq!(decode::<256>(&text, LOWER), Some(all), "several chunks");
    }

    #[test]
    fn long_inputs_are_encoded_whole_across_buffer_chunks() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..=9).collect();
        let text = encode(&bytes, LOWER);
        assert_eq!(text.len(), bytes.len() * 2);
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(&text[2 * i..2 * i + 2], format!("{b:02x}"), "byte {i}");
        }
    }
}
