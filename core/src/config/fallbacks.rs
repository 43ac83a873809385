//! `image_missing` / `image_error` (SPEC §15): each an absolute http(s) URL that must pass the
//! source's own origin policy, so a fallback fetch can reach nothing a signed URL could not.

use super::{ConfigError, RawSource, Source};
use crate::fallback::FallbackImage;
use crate::forward::check_origin_policy;
use crate::origin::parse_origin;

/// The fallback fields of one `sources[]` entry, taken out of it before the rest is consumed.
pub(super) struct RawFallbacks {
    missing: (Option<String>, bool),
    error: (Option<String>, bool),
}

impl RawFallbacks {
    /// Takes the fallback fields out of `raw`.
    pub(super) fn take(raw: &mut RawSource) -> RawFallbacks {
        RawFallbacks {
            missing: (raw.image_missing.take(), raw.image_missing_append_qs),
            error: (raw.image_error.take(), raw.image_error_append_qs),
        }
    }

    /// `source` (validated but for its fallbacks) with its fallback images; `path` is the
    /// source's (`sources[i]`).
    pub(super) fn validate(self, mut source: Source, path: &str) -> Result<Source, ConfigError> {
        source.image_missing = image(&source, self.missing, path, "image_missing")?;
        source.image_error = image(&source, self.error, path, "image_error")?;
        Ok(source)
    }
}

fn image(
    source: &Source,
    (url, append_qs): (Option<String>, bool),
    path: &str,
    field: &str,
) -> Result<Option<FallbackImage>, ConfigError> {
    let error = |field: String, message: String| ConfigError {
        path: format!("{path}.{field}"),
        message,
    };
    let Some(url) = url else {
        if append_qs {
            return Err(error(
                format!("{field}_append_qs"),
                format!("set without {field}"),
            ));
        }
        return Ok(None);
    };
    let parsed = parse_origin(&url).map_err(|e| error(field.to_owned(), e.to_string()))?;
    check_origin_policy(source, &parsed).map_err(|rejection| {
        error(
            field.to_owned(),
            format!(
                "`{url}`: {} (allowed_origin_hosts, allow_private_origins)",
                rejection.reason()
            ),
        )
    })?;
    Ok(Some(FallbackImage {
        url: parsed,
        append_qs,
    }))
}
