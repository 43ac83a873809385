//! Header maps as whole lists: one host call reads a map, one writes it back after any number
//! of edits, instead of a round trip through the Wasm boundary per header (what those cost is
//! measured in bench/NOTES.md).

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

/// Applies `edits` to `map`. With `fields` (the map as read) the edited list is written back
/// as the whole map in one host call (Envoy re-evaluates the route after a request header
/// change); without (the map could not be read) each edit is its own host call, so nothing
/// unread is lost. No call when there is nothing to change.
pub fn write(
    map: MapType,
    fields: Option<Vec<(String, Bytes)>>,
    edits: &[HeaderEdit],
) -> Result<(), String> {
    if edits.is_empty() {
        return Ok(());
    }
    let Some(fields) = fields else {
        for edit in edits {
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
        return Ok(());
    };
    let fields = edits::edited(fields, edits);
    hostcalls::set_map_bytes(
        map,
        fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect(),
    )
    .map_err(|status| format!("cannot write headers: {status:?}"))
}
