//! `ixproxy envoy-cache-purge`: purge by URL for Envoy 1.40's file-system cache store, which
//! has no purge API of its own (README: Caching, `cache.disk` on Envoy).
//!
//! The store keeps one file per entry, `cache-<hash>` in `cache_path`, written to an anonymous
//! file and linked under its name only once complete, so a named file is never half-written by
//! Envoy. Its layout (Envoy 1.40, read from its source and checked against the files it
//! writes): a 24-byte block `CACH`, `0000` (the format version), the header size (u32), the
//! trailer size (u32) and the body size (u64), all big-endian; then a `CacheFileHeader`
//! protobuf whose field 1 is the entry's `Key` (`host` = 2, `path` = 3, `query` = 4,
//! `custom_fields` = 6 for a `Vary` variant, `scheme` = 8: 1 http, 2 https); then the body and
//! the trailers. The ixproxy filter sets `:scheme`, `:authority` and `:path` to the origin
//! URL's before the cache filter runs, so an entry's key is its origin URL.
//!
//! Envoy's v1 cache filter looks a file up by name on every request and keeps no index of its
//! own, so a removed file is a miss on the next request (measured). Nothing checks the bytes of
//! an entry, so the scan also finds the files whose sizes do not add up (a truncated file
//! crashes Envoy 1.40 when it is served): see [`Target::Damaged`].
//!
//! Every file is read as untrusted input: at most the fixed block and a bounded header, every
//! length checked, never following a symbolic link nor opening anything but a regular file; a
//! file that cannot be read as an entry is reported and left alone, never a panic. Only what
//! crashes Envoy 1.40 is removed as damaged: a file in a format it does not know (another Envoy
//! version's) is reported, so that a sweep after an upgrade does not empty the cache.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use ixproxy_core::origin::{OriginUrl, Scheme};

/// The name every entry file of the store starts with (followed by the key's hash).
pub const FILE_PREFIX: &str = "cache-";

/// The fixed block at the start of an entry file.
const FIXED_BLOCK: usize = 24;

/// The block's first eight bytes: the file identifier and the format version Envoy 1.40 writes.
const MAGIC: &[u8; 8] = b"CACH0000";

/// The largest header read: the key and the response headers (Envoy's own header limits are
/// far below this), so a file claiming more is not parsed.
const MAX_HEADER_BYTES: u32 = 1024 * 1024;

/// An entry's key as stored in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    /// `Key.scheme`: 0 unspecified, 1 http, 2 https.
    pub scheme: u64,
    /// `Key.host`: the `:authority` the entry was stored under.
    pub host: String,
    /// `Key.path`: the `:path`, with its query unless the query is stored apart.
    pub path: String,
    /// `Key.query` (empty when the query is part of `path`).
    pub query: String,
    /// A `Vary` variant (`custom_fields` set): purged with its URL like the plain entry.
    pub varied: bool,
}

impl EntryKey {
    /// Whether this entry was stored for `origin`.
    pub fn names(&self, origin: &OriginUrl) -> bool {
        let scheme_matches = match self.scheme {
            0 => true,
            1 => origin.scheme == Scheme::Http,
            2 => origin.scheme == Scheme::Https,
            _ => false,
        };
        let path_matches = if self.query.is_empty() {
            self.path == origin.path_and_query
        } else {
            origin
                .path_and_query
                .strip_prefix(self.path.as_str())
                .and_then(|rest| rest.strip_prefix('?'))
                == Some(self.query.as_str())
        };
        scheme_matches && path_matches && self.host == origin.authority()
    }

    /// The URL the entry was stored for, for the report.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            1 => "http://",
            2 => "https://",
            _ => "//",
        };
        let query = if self.query.is_empty() { "" } else { "?" };
        format!("{scheme}{}{}{query}{}", self.host, self.path, self.query)
    }
}

/// Why a file named like an entry is not one Envoy could serve correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Shorter than the fixed block.
    NoBlock,
    /// The block does not start with `CACH0000`.
    Magic,
    /// The file's length is not what its block says (truncated or extended).
    Length {
        /// The length the block gives (block, header, body and trailers).
        expected: u64,
        /// The file's length.
        actual: u64,
        /// The key, when the file still holds its whole header and that parses: a truncated
        /// file usually keeps it (it is at the start), so a purge by URL can still find it.
        key: Option<EntryKey>,
    },
    /// The header is not a `CacheFileHeader` with a key.
    Header(&'static str),
}

impl Damage {
    /// Whether Envoy 1.40 crashes serving such a file: these are what `--damaged` removes. The
    /// others are files in a format this tool does not read (another Envoy version's, or not
    /// Envoy's): reported, never removed.
    pub fn crashes_envoy(&self) -> bool {
        matches!(self, Damage::NoBlock | Damage::Length { .. })
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::NoBlock => write!(f, "shorter than the {FIXED_BLOCK}-byte block"),
            Damage::Magic => write!(f, "not an envoy 1.40 cache file (no CACH0000)"),
            Damage::Length {
                expected, actual, ..
            } => write!(f, "{actual} bytes where its block says {expected}"),
            Damage::Header(why) => write!(f, "header: {why}"),
        }
    }
}

/// What one entry file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A well-formed entry and its key.
    Key(EntryKey),
    /// Well-formed as far as its block goes, with a header over [`MAX_HEADER_BYTES`]: not read.
    Unread(u32),
    /// Damaged.
    Damaged(Damage),
}

/// Reads the entry file `file` of length `len`: the block and, when it is consistent, the key.
///
/// # Errors
/// An I/O error reading the file.
pub fn read_entry(file: &mut impl Read, len: u64) -> std::io::Result<Entry> {
    let mut block = [0u8; FIXED_BLOCK];
    if len < FIXED_BLOCK as u64 {
        return Ok(Entry::Damaged(Damage::NoBlock));
    }
    file.read_exact(&mut block)?;
    let (header_bytes, expected) = match parse_block(&block) {
        Ok(sizes) => sizes,
        Err(damage) => return Ok(Entry::Damaged(damage)),
    };
    let holds_header = FIXED_BLOCK as u64 + u64::from(header_bytes) <= len;
    if expected != u128::from(len) {
        let key = if holds_header && header_bytes <= MAX_HEADER_BYTES {
            read_header(file, header_bytes)?.ok()
        } else {
            None
        };
        return Ok(Entry::Damaged(Damage::Length {
            expected: u64::try_from(expected).unwrap_or(u64::MAX),
            actual: len,
            key,
        }));
    }
    if header_bytes > MAX_HEADER_BYTES {
        return Ok(Entry::Unread(header_bytes));
    }
    Ok(match read_header(file, header_bytes)? {
        Ok(key) => Entry::Key(key),
        Err(why) => Entry::Damaged(Damage::Header(why)),
    })
}

/// Reads the `header_bytes` after the block and the key in them.
fn read_header(
    file: &mut impl Read,
    header_bytes: u32,
) -> std::io::Result<Result<EntryKey, &'static str>> {
    let mut header = Vec::new();
    file.take(u64::from(header_bytes))
        .read_to_end(&mut header)?;
    if header.len() != header_bytes as usize {
        // The file shrank while it was read (Envoy replaced or evicted it).
        return Ok(Err("shorter than its size"));
    }
    Ok(parse_header(&header))
}

/// The header size and the whole file's length a block gives (in `u128`: the sum of a u64 and
/// two u32s plus the block cannot overflow it).
fn parse_block(block: &[u8; FIXED_BLOCK]) -> Result<(u32, u128), Damage> {
    if &block[..8] != MAGIC {
        return Err(Damage::Magic);
    }
    let u32_at =
        |at: usize| u32::from_be_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
    let header = u32_at(8);
    let trailer = u32_at(12);
    let mut body = [0u8; 8];
    body.copy_from_slice(&block[16..24]);
    let body = u64::from_be_bytes(body);
    let total = FIXED_BLOCK as u128 + u128::from(header) + u128::from(trailer) + u128::from(body);
    Ok((header, total))
}

/// A protobuf field's value, as far as the wire format tells.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed 32- or 64-bit value (not used by the fields read here).
    Fixed,
}

/// Reads protobuf wire format (fields in order), every length checked against what is left.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.rest.split_first().ok_or("cut in a varint")?;
            self.rest = rest;
            if shift == 63 && byte > 1 {
                return Err("varint over 64 bits");
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint over 10 bytes")
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        if n > self.rest.len() {
            return Err("length past the end");
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// The next field number and value; `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u64, Wire<'a>)>, &'static str> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let n = self.varint()?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            _ => return Err("unknown wire type"),
        };
        Ok(Some((tag >> 3, value)))
    }
}

/// The key of a serialized `CacheFileHeader`.
fn parse_header(header: &[u8]) -> Result<EntryKey, &'static str> {
    let mut fields = Fields { rest: header };
    let mut key = None;
    while let Some((number, value)) = fields.next_field()? {
        if number == 1 {
            let Wire::Bytes(bytes) = value else {
                return Err("key is not a message");
            };
            key = Some(bytes);
        }
    }
    parse_key(key.ok_or("no key")?)
}

fn parse_key(bytes: &[u8]) -> Result<EntryKey, &'static str> {
    let mut key = EntryKey {
        scheme: 0,
        host: String::new(),
        path: String::new(),
        query: String::new(),
        varied: false,
    };
    let mut fields = Fields { rest: bytes };
    let text = |value: Wire<'_>| match value {
        Wire::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "key text is not utf-8"),
        _ => Err("key text is not a string"),
    };
    while let Some((number, value)) = fields.next_field()? {
        match number {
            2 => key.host = text(value)?,
            3 => key.path = text(value)?,
            4 => key.query = text(value)?,
            6 => key.varied = true,
            8 => match value {
                Wire::Varint(scheme) => key.scheme = scheme,
                _ => return Err("key scheme is not a varint"),
            },
            _ => {}
        }
    }
    Ok(key)
}

/// What a scan of the directory removes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The entries stored for this origin URL (every `Vary` variant too), damaged ones
    /// included when their key can still be read.
    Url(&'a OriginUrl),
    /// The damaged entry files that crash Envoy 1.40 when served ([`Damage::crashes_envoy`]:
    /// their sizes do not add up). Bytes changed in place cannot be told from the file; a file
    /// in a format this tool does not read is reported, not removed.
    Damaged,
}

/// One file the scan removed, left alone or failed on.
#[derive(Debug)]
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// Its URL when it was read as an entry, else what is wrong with it.
    pub what: String,
}

/// What [`purge`] did.
#[derive(Debug, Default)]
pub struct Purged {
    /// The files removed.
    pub removed: Vec<Found>,
    /// Entry files left alone because they could not be judged: a format this tool does not
    /// read (not `CACH0000`, a header that does not parse), a header too large to read, or
    /// (purging a URL) a damaged file whose key cannot be read. Purging a URL, any of them may
    /// be that URL's.
    pub skipped: Vec<Found>,
    /// Directory entries that could not be listed, files that could not be read, and files
    /// that matched but could not be removed.
    pub failed: Vec<Found>,
}

/// Scans `dir`, an Envoy 1.40 file-system cache's `cache_path`, and unlinks each entry file
/// `target` names. Only regular files named `cache-*` are opened (the directory entry's type
/// is checked before the open, and the open neither follows a symbolic link nor takes a
/// terminal); a file that disappears during the scan (Envoy evicted or replaced it) is passed
/// over.
///
/// # Errors
/// `dir` cannot be listed.
pub fn purge(dir: &Path, target: Target<'_>) -> std::io::Result<Purged> {
    let mut purged = Purged::default();
    for dirent in std::fs::read_dir(dir)? {
        let dirent = match dirent {
            Ok(dirent) => dirent,
            Err(e) => {
                purged.failed.push(Found {
                    path: dir.to_owned(),
                    what: format!("cannot list: {e}"),
                });
                continue;
            }
        };
        let name = dirent.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(FILE_PREFIX)) {
            continue;
        }
        let path = dirent.path();
        // The entry's own type (not followed): links, FIFOs and device nodes are never opened.
        match dirent.file_type() {
            Ok(kind) if kind.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                purged.failed.push(Found {
                    path,
                    what: format!("unreadable: {e}"),
                });
                continue;
            }
        }
        let entry = match open_entry(&path) {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(e) => {
                purged.failed.push(Found {
                    path,
                    what: format!("unreadable: {e}"),
                });
                continue;
            }
        };
        let chosen = match (&entry, target) {
            (Entry::Key(key), Target::Url(origin)) => key.names(origin).then(|| key.url()),
            (
                Entry::Damaged(damage @ Damage::Length { key: Some(key), .. }),
                Target::Url(origin),
            ) => key
                .names(origin)
                .then(|| format!("{} (damaged: {damage})", key.url())),
            (Entry::Damaged(damage), Target::Damaged) if damage.crashes_envoy() => {
                Some(format!("damaged: {damage}"))
            }
            (Entry::Key(_) | Entry::Unread(_), Target::Damaged) => None,
            (Entry::Damaged(damage), _) => {
                purged.skipped.push(Found {
                    path,
                    what: format!("damaged: {damage}"),
                });
                continue;
            }
            (Entry::Unread(size), Target::Url(_)) => {
                purged.skipped.push(Found {
                    path,
                    what: format!("a {size}-byte header, not read"),
                });
                continue;
            }
        };
        let Some(what) = chosen else { continue };
        match std::fs::remove_file(&path) {
            Ok(()) => purged.removed.push(Found { path, what }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => purged.failed.push(Found {
                path,
                what: format!("cannot remove ({what}): {e}"),
            }),
        }
    }
    Ok(purged)
}

/// Opens and reads one entry file; `None` when it is gone or not a regular file.
fn open_entry(path: &Path) -> std::io::Result<Option<Entry>> {
    // The directory entry was a regular file, but it can be replaced before the open:
    // O_NOFOLLOW, a link planted in its place is not read through; O_NONBLOCK, a FIFO does not
    // block the open; O_NOCTTY, a terminal does not become this process's (anything that is not
    // a regular file is then passed over).
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path);
    let mut file: File = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    read_entry(&mut file, meta.len()).map(Some)
}

/// `text` with every control character, backslash and bidirectional or invisible formatting
/// character escaped (`\n`, `\u{202e}`), for printing names and keys read from untrusted
/// files on a terminal or in a log.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || c == '\\' || hidden {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ixproxy_core::origin::parse_origin;

    use super::*;

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn bytes_field(number: u64, value: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }

    /// An entry file the way Envoy 1.40 writes one: block, header (key, a response time, one
    /// header), body, no trailers.
    fn entry_file(scheme: u64, host: &str, path: &str, query: &str, body: &[u8]) -> Vec<u8> {
        let mut key = Vec::new();
        bytes_field(1, b"cluster_name_goes_here", &mut key);
        bytes_field(2, host.as_bytes(), &mut key);
        bytes_field(3, path.as_bytes(), &mut key);
        if !query.is_empty() {
            bytes_field(4, query.as_bytes(), &mut key);
        }
        varint(8 << 3, &mut key);
        varint(scheme, &mut key);
        let mut header = Vec::new();
        bytes_field(1, &key, &mut header);
        bytes_field(2, &[8, 1, 16, 2], &mut header);
        let mut status = Vec::new();
        bytes_field(1, b":status", &mut status);
        bytes_field(2, b"200", &mut status);
        bytes_field(3, &status, &mut header);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&(header.len() as u32).to_be_bytes());
        file.extend_from_slice(&0u32.to_be_bytes());
        file.extend_from_slice(&(body.len() as u64).to_be_bytes());
        file.extend_from_slice(&header);
        file.extend_from_slice(body);
        file
    }

    fn read(file: &[u8]) -> Entry {
        read_entry(&mut &file[..], file.len() as u64).expect("in memory")
    }

    fn origin(url: &str) -> OriginUrl {
        parse_origin(url).expect("origin url")
    }

    #[test]
    fn reads_the_key_and_names_its_url_only() {
        let file = entry_file(1, "127.0.0.1:8080", "/a/b.png?w=1", "", b"body");
        let Entry::Key(key) = read(&file) else {
            panic!("{:?}", read(&file));
        };
        assert_eq!(key.url(), "http://127.0.0.1:8080/a/b.png?w=1");
        assert!(key.names(&origin("http://127.0.0.1:8080/a/b.png?w=1")));
        for other in [
            "https://127.0.0.1:8080/a/b.png?w=1",
            "http://127.0.0.1:8081/a/b.png?w=1",
            "http://127.0.0.1:8080/a/b.png",
            "http://127.0.0.1:8080/a/b.png?w=2",
        ] {
            assert!(!key.names(&origin(other)), "{other}");
        }
        // A default port is not part of the stored authority, as the filter sets it.
        let Entry::Key(key) = read(&entry_file(2, "o.example", "/x", "q=1", b"")) else {
            panic!("key");
        };
        assert!(key.names(&origin("https://O.example:443/x?q=1")));
        assert!(!key.names(&origin("http://o.example/x?q=1")));
    }

    #[test]
    fn a_file_whose_sizes_do_not_add_up_is_damaged() {
        let file = entry_file(1, "h", "/p", "", b"0123456789");
        assert!(matches!(read(&file), Entry::Key(_)));
        let Entry::Key(key) = read(&file) else {
            panic!("key");
        };
        let cut = &file[..file.len() - 3];
        // The header is whole: the key is still read, so a purge by URL finds the file.
        assert_eq!(
            read(cut),
            Entry::Damaged(Damage::Length {
                expected: file.len() as u64,
                actual: cut.len() as u64,
                key: Some(key),
            })
        );
        // Cut inside the header: no key.
        let in_header = &file[..FIXED_BLOCK + 4];
        assert!(matches!(
            read(in_header),
            Entry::Damaged(Damage::Length { key: None, .. })
        ));
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            read(&longer),
            Entry::Damaged(Damage::Length { .. })
        ));
        assert_eq!(read(&file[..10]), Entry::Damaged(Damage::NoBlock));
        let mut magic = file.clone();
        magic[4] = b'1';
        assert_eq!(read(&magic), Entry::Damaged(Damage::Magic));
        // Sizes near the type limits neither overflow nor allocate.
        let mut huge = file[..FIXED_BLOCK].to_vec();
        huge[8..24].fill(0xff);
        assert!(matches!(read(&huge), Entry::Damaged(Damage::Length { .. })));
    }

    #[test]
    fn a_header_that_is_not_a_key_is_damaged_never_a_panic() {
        let good = entry_file(1, "h", "/p", "", b"");
        // Every prefix of the header, declared as the whole header: cut fields everywhere.
        let header = &good[FIXED_BLOCK..];
        for cut in 0..header.len() {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&(cut as u32).to_be_bytes());
            file.extend_from_slice(&[0; 12]);
            file.extend_from_slice(&header[..cut]);
            // Some prefixes end on a field boundary: a key or no key, never a panic.
            let _ = read(&file);
        }
        let hostile: [&[u8]; 5] = [
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // a length past the end
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ], // varint > 10 bytes
            &[0x0b],                               // a group (wire type 3)
            &[0x08, 0x01],                         // the key as a varint
            &[0x12, 0x00],                         // no key
        ];
        for header in hostile {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&(header.len() as u32).to_be_bytes());
            file.extend_from_slice(&[0; 12]);
            file.extend_from_slice(header);
            assert!(
                matches!(read(&file), Entry::Damaged(Damage::Header(_))),
                "{header:?}: {:?}",
                read(&file)
            );
        }
        // A host that is not UTF-8.
        let mut bad = entry_file(1, "h\u{e9}", "/p", "", b"");
        let at = bad.iter().position(|&b| b == 0xc3).expect("utf-8 byte");
        bad[at] = 0xff;
        assert_eq!(
            read(&bad),
            Entry::Damaged(Damage::Header("key text is not utf-8"))
        );
    }

    #[test]
    fn a_header_over_the_bound_is_not_read() {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&(MAX_HEADER_BYTES + 1).to_be_bytes());
        file.extend_from_slice(&[0; 12]);
        // Only the block is present: the length check must not be what stops it.
        let len = FIXED_BLOCK as u64 + u64::from(MAX_HEADER_BYTES) + 1;
        let entry = read_entry(&mut &file[..], len).expect("in memory");
        assert_eq!(entry, Entry::Unread(MAX_HEADER_BYTES + 1));
    }

    /// The names of `found`'s files, sorted.
    fn names(found: &[Found]) -> Vec<String> {
        let mut names: Vec<String> = found
            .iter()
            .filter_map(|f| f.path.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn purge_unlinks_the_urls_entries_and_leaves_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes);
        write("cache-1", &entry_file(1, "o.test", "/a.png", "", b"a")).expect("write");
        write("cache-2", &entry_file(1, "o.test", "/b.png", "", b"b")).expect("write");
        // Truncated in its body: the key is whole, it is the URL's.
        let damaged = entry_file(1, "o.test", "/a.png", "", b"aaaa");
        write("cache-3", &damaged[..damaged.len() - 1]).expect("write");
        // Truncated inside its header: whose it is cannot be told.
        write("cache-5", &damaged[..FIXED_BLOCK + 3]).expect("write");
        // Another URL's truncated file: not this purge's business.
        let other = entry_file(1, "o.test", "/b.png", "", b"bbbb");
        write("cache-6", &other[..other.len() - 1]).expect("write");
        write("notes.txt", b"not an entry").expect("write");
        std::os::unix::fs::symlink(dir.path().join("cache-1"), dir.path().join("cache-4"))
            .expect("symlink");
        // A FIFO would block an open without O_NONBLOCK; it is never opened.
        nix::unistd::mkfifo(
            &dir.path().join("cache-7"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");

        let url = origin("http://o.test/a.png");
        let purged = purge(dir.path(), Target::Url(&url)).expect("scan");
        assert_eq!(names(&purged.removed), ["cache-1", "cache-3"]);
        let what = |name: &str| {
            let found = purged.removed.iter().find(|f| f.path.ends_with(name));
            found.map(|f| f.what.clone()).unwrap_or_default()
        };
        assert_eq!(what("cache-1"), "http://o.test/a.png");
        let damaged = what("cache-3");
        assert!(
            damaged.starts_with("http://o.test/a.png (damaged: "),
            "{damaged}"
        );
        assert_eq!(names(&purged.skipped), ["cache-5"], "not judged");
        assert!(purged.failed.is_empty(), "{:?}", purged.failed);
        assert!(dir.path().join("cache-2").exists());
        assert!(dir.path().join("cache-6").exists());
        // The link was neither read nor removed.
        assert!(dir.path().join("cache-4").symlink_metadata().is_ok());

        let swept = purge(dir.path(), Target::Damaged).expect("scan");
        assert_eq!(names(&swept.removed), ["cache-5", "cache-6"]);
        assert!(swept.skipped.is_empty(), "{:?}", swept.skipped);
        assert!(dir.path().join("cache-2").exists());
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join("cache-7").exists());
        assert!(purge(&dir.path().join("missing"), Target::Damaged).is_err());
    }

    #[test]
    fn a_sweep_removes_only_what_crashes_envoy_and_reports_an_unknown_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes);
        let good = entry_file(1, "o.test", "/a.png", "", b"abcd");
        write("cache-good", &good).expect("write");
        write("cache-short", &good[..10]).expect("write");
        write("cache-cut", &good[..good.len() - 2]).expect("write");
        // Another format version, as an Envoy upgrade could write: whole, and left alone.
        let mut version = good.clone();
        version[4..8].copy_from_slice(b"0001");
        write("cache-version", &version).expect("write");
        // A header this tool cannot parse, sizes right.
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&2u32.to_be_bytes());
        header.extend_from_slice(&[0; 12]);
        header.extend_from_slice(&[0x08, 0x01]);
        write("cache-header", &header).expect("write");

        let swept = purge(dir.path(), Target::Damaged).expect("scan");
        assert_eq!(names(&swept.removed), ["cache-cut", "cache-short"]);
        assert_eq!(names(&swept.skipped), ["cache-header", "cache-version"]);
        for kept in ["cache-good", "cache-version", "cache-header"] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }
        // Purging a URL, a file it cannot read may be that URL's: reported.
        let url = origin("http://o.test/a.png");
        let purged = purge(dir.path(), Target::Url(&url)).expect("scan");
        assert_eq!(names(&purged.removed), ["cache-good"]);
        assert_eq!(names(&purged.skipped), ["cache-header", "cache-version"]);
    }

    #[test]
    fn names_and_keys_are_printed_escaped() {
        assert_eq!(
            escaped("/c/cache-1\x1b[2J\n\u{202e}gnp.exe\\"),
            "/c/cache-1\\u{1b}[2J\\n\\u{202e}gnp.exe\\\\"
        );
        assert_eq!(
            escaped("http://h/caf\u{e9}.png?a=b c"),
            "http://h/caf\u{e9}.png?a=b c"
        );
    }

    proptest::proptest! {
        /// Any bytes behind a block that declares them as the header: an answer, never a panic.
        #[test]
        fn any_header_bytes_are_read_without_panic(
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..256)
        ) {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&(header.len() as u32).to_be_bytes());
            file.extend_from_slice(&[0; 12]);
            file.extend_from_slice(&header);
            let _ = read(&file);
        }

        /// A well-formed entry with any one byte changed: an answer, never a panic.
        #[test]
        fn any_changed_byte_is_read_without_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut file = entry_file(2, "o.example:8443", "/a/b.png", "w=1", b"body bytes");
            let at = at % file.len();
            file[at] = byte;
            let _ = read(&file);
        }

        /// An entry stored for an origin URL (its key as the filter sets it: the normalised
        /// authority and path) is read back as naming exactly that URL.
        #[test]
        fn a_written_key_names_its_url(
            https in proptest::bool::ANY,
            host in "[a-z][a-z0-9]{0,10}\\.example",
            port in proptest::option::of(1u16..),
            path in "(/[a-zA-Z0-9._-]{1,8}){1,3}",
            query in proptest::option::of("[a-z]=[0-9]{1,4}"),
        ) {
            let scheme = if https { "https" } else { "http" };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let url = origin(&format!("{scheme}://{host}{port}{path}{query}"));
            let file = entry_file(
                if https { 2 } else { 1 },
                &url.authority(),
                &url.path_and_query,
                "",
                b"x",
            );
            let Entry::Key(key) = read(&file) else {
                panic!("not read back: {:?}", read(&file));
            };
            proptest::prop_assert!(key.names(&url));
            proptest::prop_assert_eq!(
                key.url(),
                format!("{scheme}://{}{}", url.authority(), url.path_and_query)
            );
            let other = origin(&format!("{scheme}://{host}{port}{path}/other{query}"));
            proptest::prop_assert!(!key.names(&other));
        }
    }
}
