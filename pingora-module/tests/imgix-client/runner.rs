//! Runs imgix's own Management API client (`purge.cjs` beside this file) against an admin
//! listener; shared by the tests that check imgix's clients read ixproxy's purge answers
//! (`#[path]`-included, so it is compiled into each of them).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs imgix-management-js's purge of `url` with `key` against the admin listener `admin` (see
/// `tests/imgix-client/purge.cjs`) and returns what it printed: `{"status": 200, "body": …}` or
/// `{"status": N, "error": …}`. Waits at most `timeout`.
pub fn imgix_management_js_purge(
    admin: SocketAddr,
    key: &str,
    url: &str,
    timeout: Duration,
) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imgix-client");
    assert!(
        dir.join("node_modules/imgix-management-js").is_dir(),
        "imgix's client is not installed: run `npm ci` in {} (scripts/test-all.sh does)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("purge.cjs"))
        .args([&admin.to_string(), key, url])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("imgix-management-js did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("node: {e}"));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
