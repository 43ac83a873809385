//! imgix URL signature verification over the raw request target (SPEC §1).
