//! Header maps: one host call reads a whole map (instead of a round trip through the Wasm
//! boundary per header), and only the edits that change it are written, one host call each
//! (what each way costs is measured in bench/NOTES.md).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Bytes, MapType};

use crate::edits::{self, HeaderEdit};

/// Every field of `map`, in order (lower-case names, values as bytes: the SDK's `get_map`
/// panics on a value that is not UTF-8, so only the `_bytes` calls are used).
pub fn read(map: MapType) -> Result<Vec<(String, Bytes)>, String> {
    hostcalls::get_map_bytes(map).map_err(|status| format!("cannot read headers: {status:?}"))
}

/// The first value of `name` (lower case, as Envoy hands names over) in a list read with
/// [`read`].
pub fn value<'a>(fields: &'a [(String, Bytes)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// [`value`] as text, when it is UTF-8.
pub fn text<'a>(fields: &'a [(String, Bytes)], name: &str) -> Option<&'a str> {
    value(fields, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Applies `edits` to `map`, one host call per edit that changes it: with `fields` (the map as
/// read) edits that change nothing ([`edits::changing`]) are left out; without (the map could
/// not be read) every edit is made, so nothing unread is lost. No call when nothing changes.
/// Writing the whole edited map back in one call (`proxy_set_header_map_pairs`, which makes
/// Envoy remove every field and add each again) costs Envoy about as much as the ~10 single
/// edits of a forwarded request, and far more than the few of a response (bench/NOTES.md).
pub fn write(
    map: MapType,
    fields: Option<Vec<(String, Bytes)>>,
    edits: &[HeaderEdit],
) -> Result<(), String> {
    let kept = match &fields {
        Some(fields) => edits::changing(fields, edits),
        None => edits.iter().collect(),
    };
    for edit in kept {
        let result = match edit {
            HeaderEdit::Set(name, value) => {
                hostcalls::set_map_value_bytes(map, name, Some(value.as_bytes()))
            }
            HeaderEdit::Remove(name) => hostcalls::set_map_value_bytes(map, name, None),
        };
        result.map_err(|status| {
            format!("cannot edit header {name}: {status:?}", name = edit.name())
        })?;
    }
    Ok(())
}
