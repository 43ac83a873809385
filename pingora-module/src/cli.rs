//! The `check`, `sign`, `verify`, `verify-origin`, `envoy-config`, `envoy-cache-purge` and
//! `healthcheck` subcommands (README: Command line); the bootstrap itself is rendered, and Envoy's
//! cache files read, by the `ixproxy-envoy-config` crate.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ixproxy_core::auth::verify_origin_signature;
use ixproxy_core::config::{
    parse_duration, warnings, ConfigWarning, RawConfig, DEFAULT_ADMIN_LISTEN,
};
use ixproxy_core::expires::check_target_expires;
use ixproxy_core::origin::decode_origin;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::verify::{md5_hex, split_target, verify, SignatureError};
use ixproxy_core::Secret;

use crate::secrets::load_config;

/// `ixproxy check -c FILE`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file (YAML, README: Configuration).
    #[arg(short, long)]
    pub config: PathBuf,
}

/// `ixproxy envoy-config -c FILE --wasm PATH`.
#[derive(Debug, Args)]
pub struct EnvoyConfigArgs {
    /// Config file (YAML, README: Configuration), the same one `ixproxy serve` takes.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Where Envoy finds `ixproxy_filter.wasm` (made absolute; not opened).
    #[arg(long)]
    pub wasm: PathBuf,
    /// Embed literal secrets in the bootstrap, where Envoy's admin `/config_dump` shows them
    /// (default: refuse them; write `{env: NAME}` instead).
    #[arg(long)]
    pub allow_literal_secrets: bool,
}

/// `ixproxy envoy-cache-purge --cache-path DIR (--url URL | --damaged)`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["url", "damaged"])))]
pub struct EnvoyCachePurgeArgs {
    /// The directory of Envoy's file-system cache (`cache.disk.path`).
    #[arg(long)]
    pub cache_path: PathBuf,
    /// The origin URL whose entries are removed, as signed (not percent-encoded as a whole).
    #[arg(long)]
    pub url: Option<String>,
    /// Remove the entry files whose sizes do not add up (truncated or extended), on which
    /// Envoy 1.40 crashes; files in a format it does not read are reported, not removed.
    #[arg(long)]
    pub damaged: bool,
}

/// `ixproxy healthcheck`: one `GET` on the admin listener, for container and orchestrator probes
/// (a distroless image has no curl).
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Config file whose `admin_listen` is probed; only that field is used (no secret is
    /// resolved, so a probe does not fail because a secret file is unreadable).
    #[arg(short, long, conflicts_with = "admin")]
    pub config: Option<PathBuf>,
    /// Admin address to probe (default: `admin_listen`'s default, 127.0.0.1:9901). An
    /// unspecified address (0.0.0.0, [::]) is probed on loopback.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Path to GET: `/healthz` (the process is alive) or `/readyz` (it takes traffic).
    #[arg(long, default_value = "/healthz", value_parser = parse_probe_path)]
    pub path: String,
    /// Bound on the whole probe: connect, request and status line.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `ixproxy sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Secure URL token of the source.
    #[arg(long)]
    pub token: String,
    /// A gateway parameter `key=value`, in order; repeatable.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Adds `expires=UNIX` (unix seconds) after the other parameters.
    #[arg(long)]
    pub expires: Option<i64>,
    /// Use the path exactly as given (js-core `disablePathEncoding`), for already-encoded paths.
    #[arg(long)]
    pub no_path_encoding: bool,
    /// The origin URL (or a plain path).
    pub origin_url: String,
}

/// `ixproxy verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Secure URL token; repeat to try several (rotation).
    #[arg(long = "token", required = true)]
    pub tokens: Vec<String>,
    /// Unix seconds to check `expires` against (default: now).
    #[arg(long)]
    pub now: Option<u64>,
    /// The request target: path and query exactly as sent (`/http%3A%2F%2F...?w=1&s=...`).
    pub target: String,
}

/// `ixproxy verify-origin`.
#[derive(Debug, Args)]
pub struct VerifyOriginArgs {
    /// The source's `request_signing_key`.
    #[arg(long)]
    pub key: String,
    /// `X-Imgix-Signature-Request-Id`.
    #[arg(long)]
    pub request_id: String,
    /// `X-Imgix-Signature-Timestamp`.
    #[arg(long)]
    pub timestamp: String,
    /// `X-Imgix-Signature`.
    #[arg(long)]
    pub signature: String,
    /// Unix seconds to compare the timestamp with (default: now).
    #[arg(long)]
    pub now: Option<u64>,
    /// Allowed clock skew in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_skew: u64,
}

/// An origin-form request target: `/`, then visible ASCII only (it goes on the request line).
fn parse_probe_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected a path such as /healthz (a `/`, then visible ASCII), got {s:?}"
        ))
    }
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Current unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints each warning as `warning: path: message` on stderr.
pub fn print_warnings(warnings: &[ConfigWarning]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// Validates a config file, reads its TLS certificates and keys and checks that the disk
/// tier's directory can be made and written; prints a summary (and the config's warnings on
/// stderr; they do not change the exit code) or the error naming the field.
pub fn check(args: &CheckArgs) -> ExitCode {
    // The TLS files are read as `ixproxy serve` reads them: a certificate that would stop the
    // start (or a reload) is an error here too, naming its field.
    let loaded = load_config(&args.config).and_then(|config| {
        if let Some(tls) = &config.operating.tls {
            crate::serve::check_tls(tls)?;
        }
        if let Some(disk) = config.cache.as_ref().and_then(|c| c.disk.as_ref()) {
            crate::serve::check_disk(disk)?;
        }
        Ok(config)
    });
    match loaded {
        Ok(config) => {
            print_warnings(&warnings(&config));
            let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
            println!(
                "{}: ok ({} source(s): {}; listen {}, admin {})",
                args.config.display(),
                names.len(),
                names.join(", "),
                config.listen,
                config.admin_listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the signed path and query.
pub fn sign(args: &SignArgs) -> ExitCode {
    let mut params = args.params.clone();
    if let Some(expires) = args.expires {
        params.push(("expires".to_owned(), expires.to_string()));
    }
    let options = SignOptions {
        disable_path_encoding: args.no_path_encoding,
    };
    println!(
        "{}",
        sign_url(&args.token, &args.origin_url, &params, &options)
    );
    ExitCode::SUCCESS
}

/// Verifies a target; prints the origin URL, or why not with the signature base string.
pub fn verify_target(args: &VerifyArgs) -> ExitCode {
    let tokens: Vec<Secret> = args.tokens.iter().map(Secret::new).collect();
    let signed = match verify(&args.target, &tokens) {
        Ok(signed) => signed,
        Err(e) => {
            eprintln!("invalid: {e}");
            explain_signature(&args.target, &args.tokens, e);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = check_target_expires(&signed, args.now.unwrap_or_else(unix_now)) {
        eprintln!("invalid: signature ok, but {e}");
        return ExitCode::FAILURE;
    }
    match decode_origin(signed.path) {
        Ok(origin) => {
            println!("{}", origin.to_url_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("invalid: signature ok, but {e}");
            ExitCode::FAILURE
        }
    }
}

/// Shows what was hashed and what the signature should have been, so an encoding mismatch
/// between the SDK and the URL as sent is visible.
fn explain_signature(target: &str, tokens: &[String], error: SignatureError) {
    let (base_target, got) = match split_target(target) {
        Ok(signed) => (signed, Some(signed.signature)),
        Err(_) => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let query = query
                .split('&')
                .filter(|p| *p != "s" && !p.starts_with("s="))
                .collect::<Vec<_>>()
                .join("&");
            eprintln!("note: the base below is the target without any s parameter ({error})");
            print_bases(path, &query, tokens, None);
            return;
        }
    };
    print_bases(base_target.path, base_target.query, tokens, got);
}

fn print_bases(path: &str, query: &str, tokens: &[String], got: Option<&str>) {
    for token in tokens {
        let mut base = format!("{token}{path}");
        if !query.is_empty() {
            base.push('?');
            base.push_str(query);
        }
        eprintln!("signature base string: {base}");
        eprintln!("expected s:            {}", md5_hex(&base));
    }
    if let Some(got) = got {
        eprintln!("got s:                 {got}");
    }
}

/// Checks a per-request origin signature.
pub fn verify_origin(args: &VerifyOriginArgs) -> ExitCode {
    let result = verify_origin_signature(
        &Secret::new(args.key.clone()),
        &args.request_id,
        &args.timestamp,
        &args.signature,
        args.now.unwrap_or_else(unix_now),
        args.max_skew,
    );
    match result {
        Ok(()) => {
            println!("valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the Envoy bootstrap for a config file, and the config's warnings on stderr.
pub fn envoy_config(args: &EnvoyConfigArgs) -> ExitCode {
    let options = ixproxy_envoy_config::Options {
        allow_literal_secrets: args.allow_literal_secrets,
    };
    let result = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))
        .and_then(|yaml| {
            let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
            ixproxy_envoy_config::generate_with(&yaml, &cwd, &args.wasm, &options)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(generated) => {
            print_warnings(&generated.warnings);
            print!("{}", generated.bootstrap);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Removes the entry files of Envoy's file-system cache that `--url` or `--damaged` names:
/// one line per file removed on stdout, then a count (and, with `--url`, how many files were
/// not judged); files not judged and failures on stderr. Names and keys read from the files
/// are printed escaped. Exit 1 when the directory or a file cannot be listed or read, the URL
/// is not an origin URL, a file could not be removed, or (with `--url`) a file was not judged:
/// it may have been that URL's.
pub fn envoy_cache_purge(args: &EnvoyCachePurgeArgs) -> ExitCode {
    use ixproxy_envoy_config::cache_files::{escaped, purge, Found, Target};
    let origin = match args.url.as_deref().map(ixproxy_core::origin::parse_origin) {
        Some(Ok(origin)) => Some(origin),
        Some(Err(e)) => {
            eprintln!("error: --url: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let target = origin.as_ref().map_or(Target::Damaged, Target::Url);
    let shown = |found: &Found| (escaped(&found.path.to_string_lossy()), escaped(&found.what));
    let purged = match purge(&args.cache_path, target) {
        Ok(purged) => purged,
        Err(e) => {
            let dir = escaped(&args.cache_path.to_string_lossy());
            eprintln!("error: cannot list {dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (path, what) in purged.removed.iter().map(shown) {
        println!("removed {path}: {what}");
    }
    for (path, what) in purged.skipped.iter().map(shown) {
        eprintln!("skipped {path}: {what}");
    }
    for (path, what) in purged.failed.iter().map(shown) {
        eprintln!("error: {path}: {what}");
    }
    let removed = purged.removed.len();
    // A file not judged may be the URL's: the purge is then not known to be complete.
    let incomplete = origin.is_some() && !purged.skipped.is_empty();
    if incomplete {
        let skipped = purged.skipped.len();
        println!("{removed} file(s) removed, {skipped} not judged (may be the URL's)");
    } else {
        println!("{removed} file(s) removed");
    }
    if purged.failed.is_empty() && !incomplete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The longest status line the probe reads before giving up on the answer.
const MAX_STATUS_LINE: usize = 1024;

/// GETs `--path` on the admin listener; exit 0 when it answers 200 in time, 1 otherwise, with
/// one line saying why (stdout on success, stderr on failure).
pub fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let addr = match probe_address(args) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://{addr}{}", args.path);
    match probe(addr, &args.path, args.timeout) {
        Ok(line) if status_code(&line) == Some(200) => {
            println!("healthy: {url}: {line}");
            ExitCode::SUCCESS
        }
        Ok(line) if status_code(&line).is_some() => {
            eprintln!("unhealthy: {url}: {line}");
            ExitCode::FAILURE
        }
        Ok(line) => {
            eprintln!("unhealthy: {url}: not an HTTP response: {line:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--admin`, or the config's `admin_listen`, or the default; an unspecified IP becomes the
/// loopback address of its family.
fn probe_address(args: &HealthcheckArgs) -> Result<SocketAddr, String> {
    let mut addr = match (&args.admin, &args.config) {
        (Some(addr), _) => *addr,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let raw =
                RawConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let text = raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
            let addr: SocketAddr = text
                .parse()
                .map_err(|_| format!("admin_listen: `{text}` is not a socket address"))?;
            if addr.port() == 0 {
                return Err(format!(
                    "admin_listen: port 0 in {} (any free port): give the bound address with --admin",
                    path.display()
                ));
            }
            addr
        }
        (None, None) => DEFAULT_ADMIN_LISTEN
            .parse()
            .map_err(|_| "the default admin address does not parse".to_owned())?,
    };
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Ok(addr)
}

/// Sends `GET path` and returns the response's status line (without CRLF), all within
/// `timeout`.
fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {timeout:?}"))
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, left()?).map_err(|e| format!("cannot connect: {e}"))?;
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {timeout:?}")
        }
        _ => e.to_string(),
    };
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ixproxy-healthcheck\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {}", timed_out(e)))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 256];
    // Each read waits at most what is left of the deadline and the answer is capped, so this
    // ends within `timeout` having read at most MAX_STATUS_LINE bytes.
    while !answer.contains(&b'\n') && answer.len() < MAX_STATUS_LINE {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) if answer.is_empty() => return Err("connection closed without an answer".into()),
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    Ok(line.trim_end_matches('\r').chars().take(120).collect())
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn status_code(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    let after = rest.get(3..)?;
    if code.bytes().all(|b| b.is_ascii_digit()) && (after.is_empty() || after.starts_with(' ')) {
        code.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_only_from_http_status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("HTTP/1.1 204"), Some(204));
        for line in [
            "",
            "SSH-2.0-OpenSSH",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 20x",
            "HTTP/2 200",
        ] {
            assert_eq!(status_code(line), None, "{line:?}");
        }
    }

    #[test]
    fn probe_paths_must_be_request_targets() {
        assert_eq!(parse_probe_path("/readyz").as_deref(), Ok("/readyz"));
        for bad in ["healthz", "/a b", "/a\r\nX: y", ""] {
            assert!(parse_probe_path(bad).is_err(), "{bad:?}");
        }
    }

    fn args(admin: Option<&str>, config: Option<PathBuf>) -> HealthcheckArgs {
        HealthcheckArgs {
            config,
            admin: admin.map(|a| a.parse().expect("addr")),
            path: "/healthz".into(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        for (given, probed) in [
            ("0.0.0.0:9901", "127.0.0.1:9901"),
            ("[::]:9", "[::1]:9"),
            ("10.1.2.3:80", "10.1.2.3:80"),
        ] {
            assert_eq!(
                probe_address(&args(Some(given), None)).map(|a| a.to_string()),
                Ok(probed.to_owned())
            );
        }
        assert_eq!(
            probe_address(&args(None, None)).map(|a| a.to_string()),
            Ok(DEFAULT_ADMIN_LISTEN.to_owned())
        );
    }
}
