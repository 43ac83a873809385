//! The `check`, `sign`, `verify`, `verify-origin` and `envoy-config` subcommands (README: Command line); the
//! bootstrap itself is rendered by the `ixproxy-envoy-config` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ixproxy_core::auth::verify_origin_signature;
use ixproxy_core::config::{warnings, ConfigWarning};
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

/// Validates a config file; prints a summary (and the config's warnings on stderr; they do not
/// change the exit code) or the error naming the field.
pub fn check(args: &CheckArgs) -> ExitCode {
    match load_config(&args.config) {
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
