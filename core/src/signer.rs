//! The js-core-compatible signer (SPEC §3).
