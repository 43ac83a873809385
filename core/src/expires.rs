//! `expires` (SPEC §4).
