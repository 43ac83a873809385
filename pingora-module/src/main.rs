//! `ixproxy`: the signed-URL Web Proxy gateway and its command line (README: Command line).

mod cli;
mod secrets;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc: measured in bench/ against glibc malloc on the same gateway (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Signed-URL Web Proxy gateway compatible with imgix URLs.
#[derive(Debug, Parser)]
#[command(name = "ixproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (without -c: an embedded demo config and a built-in origin on 127.0.0.1).
    Serve(serve::ServeArgs),
    /// Validate a config file (exit 0 valid, 1 invalid with the field named).
    Check(cli::CheckArgs),
    /// Sign an origin URL the way imgix's js-core does; prints the path and query.
    Sign(cli::SignArgs),
    /// Verify a request target (exit 0 valid and prints the origin URL, 1 invalid).
    Verify(cli::VerifyArgs),
    /// Verify a per-request origin signature (exit 0 valid, 1 invalid).
    VerifyOrigin(cli::VerifyOriginArgs),
    /// Print a complete Envoy bootstrap running the ixproxy Wasm filter for the same config.
    EnvoyConfig(cli::EnvoyConfigArgs),
    /// Remove a URL's entries (or the damaged ones) from Envoy's file-system cache directory
    /// (`cache.disk` on Envoy, which has no purge API).
    EnvoyCachePurge(cli::EnvoyCachePurgeArgs),
    /// GET /healthz (or --path) on the admin listener: exit 0 on 200, 1 otherwise with the
    /// reason (for container HEALTHCHECKs and probes).
    Healthcheck(cli::HealthcheckArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::EnvoyConfig(args) => cli::envoy_config(&args),
        Command::EnvoyCachePurge(args) => cli::envoy_cache_purge(&args),
        Command::Check(args) => cli::check(&args),
        Command::Sign(args) => cli::sign(&args),
        Command::Verify(args) => cli::verify_target(&args),
        Command::VerifyOrigin(args) => cli::verify_origin(&args),
        Command::Healthcheck(args) => cli::healthcheck(&args),
    }
}
