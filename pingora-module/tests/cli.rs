//! The `ixproxy` command line as a user runs it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ixproxy_conformance::ServeProcess;

const BLUEPRINT: &str =
    "/http%3A%2F%2Favatars.com%2Fjohn-smith.png?s=493a52f008c91416351f8b33d4883135";

fn ixproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ixproxy"))
        .args(args)
        .env_remove("IXPROXY_TEST_SECRET")
        .output()
        .expect("run ixproxy")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn verify_prints_the_origin_of_a_valid_target() {
    let out = ixproxy(&["verify", "--token", "FOO123bar", BLUEPRINT]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "http://avatars.com/john-smith.png\n");
}

#[test]
fn verify_shows_the_base_string_when_one_character_changes() {
    let changed = BLUEPRINT.replace("john", "jOhn");
    let out = ixproxy(&["verify", "--token", "FOO123bar", &changed]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("signature does not match"), "{err}");
    assert!(
        err.contains(
            "signature base string: FOO123bar/http%3A%2F%2Favatars.com%2FjOhn-smith.png\n"
        ),
        "{err}"
    );
    assert!(err.contains("expected s:"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn verify_accepts_any_of_several_tokens() {
    let out = ixproxy(&[
        "verify",
        "--token",
        "old",
        "--token",
        "FOO123bar",
        BLUEPRINT,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn sign_prints_exactly_the_imgix_target() {
    let out = ixproxy(&[
        "sign",
        "--token",
        "FOO123bar",
        "http://avatars.com/john-smith.png",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), format!("{BLUEPRINT}\n"));
    let out = ixproxy(&[
        "sign",
        "--token",
        "FOO123bar",
        "--param",
        "w=400",
        "--param",
        "h=300",
        "https://avatars.com/john-smith.png",
    ]);
    assert_eq!(
        stdout(&out),
        "/https%3A%2F%2Favatars.com%2Fjohn-smith.png?w=400&h=300&s=7fb92b2af2526019d64ec26465388533\n"
    );
}

#[test]
fn signed_expiring_urls_verify_until_they_expire() {
    let out = ixproxy(&[
        "sign",
        "--token",
        "t0k",
        "--param",
        "w=1",
        "--expires",
        "2000",
        "https://a.example/x.png",
    ]);
    let target = stdout(&out).trim().to_owned();
    assert!(target.contains("&expires=2000&s="), "{target}");
    let ok = ixproxy(&["verify", "--token", "t0k", "--now", "1999", &target]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let expired = ixproxy(&["verify", "--token", "t0k", "--now", "2000", &target]);
    assert_eq!(expired.status.code(), Some(1));
    assert!(stderr(&expired).contains("expired"), "{}", stderr(&expired));
}

#[test]
fn verify_rejects_form_errors_with_the_reason() {
    let out = ixproxy(&[
        "verify",
        "--token",
        "FOO123bar",
        "/http%3A%2F%2Fa.com%2Fx.png?w=1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("missing signature parameter s"), "{err}");
    assert!(err.contains("signature base string: FOO123bar/http%3A%2F%2Fa.com%2Fx.png?w=1"));
}

#[test]
fn verify_origin_checks_the_vector_and_the_skew_window() {
    let base = [
        "verify-origin",
        "--key",
        "test-signing-key",
        "--request-id",
        "a3c1f07cd7f9dc17fe9352dd391aa052f90ba51df95231f09fadc760b8457564",
        "--timestamp",
        "1709332618",
        "--signature",
        "v1,861B47427F21119C916A6BC56618D5E191C3208535A28A590D1D84E083F29A88",
    ];
    let run = |signature: &str, now: &str| {
        let mut args = base.to_vec();
        args[8] = signature;
        args.extend(["--now", now]);
        ixproxy(&args)
    };
    let good = base[8];
    assert_eq!(run(good, "1709332618").status.code(), Some(0));
    assert_eq!(
        run(good, "1709332918").status.code(),
        Some(0),
        "300 s skew is allowed"
    );
    assert_eq!(
        run(good, "1709332919").status.code(),
        Some(1),
        "301 s is outside the window"
    );
    let wrong = "v1,861B47427F21119C916A6BC56618D5E191C3208535A28A590D1D84E083F29A89";
    assert_eq!(run(wrong, "1709332618").status.code(), Some(1));
}

#[test]
fn verify_origin_accepts_any_visible_ascii_request_id() {
    let key = ixproxy_core::Secret::new("test-signing-key");
    for id in ["imgix-7f3a.req_01", "1", &"Z".repeat(128)] {
        let signature = ixproxy_core::auth::request_signature(&key, id, "1709332618");
        let out = ixproxy(&[
            "verify-origin",
            "--key",
            "test-signing-key",
            "--request-id",
            id,
            "--timestamp",
            "1709332618",
            "--signature",
            &signature,
            "--now",
            "1709332618",
        ]);
        assert_eq!(out.status.code(), Some(0), "{id}: {}", stderr(&out));
    }
    for bad in [&"Z".repeat(129), "has space"] {
        let out = ixproxy(&[
            "verify-origin",
            "--key",
            "k",
            "--request-id",
            bad,
            "--timestamp",
            "1709332618",
            "--signature",
            "v1,861B47427F21119C916A6BC56618D5E191C3208535A28A590D1D84E083F29A88",
            "--now",
            "1709332618",
        ]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            stderr(&out).contains("malformed request id"),
            "{}",
            stderr(&out)
        );
    }
}

/// Runs `ixproxy <command> -c FILE <extra>...` on `yaml` written to a temporary FILE.
fn with_config(name: &str, yaml: &str, command: &str, extra: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("ixproxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write config");
    let mut args = vec![command, "-c", file.to_str().expect("utf-8 path")];
    args.extend(extra);
    let out = ixproxy(&args);
    let _ = std::fs::remove_file(&file);
    out
}

fn check_yaml(name: &str, yaml: &str) -> Output {
    with_config(name, yaml, "check", &[])
}

const VALID: &str = "\
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9901
upstream: {connect_timeout: 3s, timeout: 10s}
sources:
  - name: assets
    hosts: [assets.example.com, img.example.com]
    secure_url_tokens: [aBcD1234]
    origin_auth:
      basic_auth: {username: user, password: pw}
      request_handshake: some-secret
      request_signing_key: k3y
    allowed_origin_hosts: [cdn.example.com, '*.example.org']
";

#[test]
fn check_accepts_a_valid_config() {
    let out = check_yaml("valid", VALID);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn check_names_a_disk_tier_directory_that_cannot_be_made() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let with_disk = |path: &std::path::Path| {
        format!(
            "{VALID}cache: {{max_bytes: 1048576, disk: {{path: '{}', max_bytes: 1073741824}}}}\n",
            path.display()
        )
    };
    let out = check_yaml("disk-ok", &with_disk(&dir.path().join("tier")));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = check_yaml("disk-bad", &with_disk(&file.join("tier")));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: cache.disk.path: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_names_the_field_of_each_invalid_config() {
    let long = "x".repeat(257);
    let cases = [
        (
            VALID.replace("some-secret", &long),
            "sources[0].origin_auth.request_handshake",
        ),
        (
            VALID.replace("username: user", "username: 'us:er'"),
            "sources[0].origin_auth.basic_auth.username",
        ),
        (
            VALID.replace("request_signing_key: k3y", "request_signing_key: ''"),
            "sources[0].origin_auth.request_signing_key",
        ),
        (
            VALID.replace("[aBcD1234]", "[]"),
            "sources[0].secure_url_tokens",
        ),
        (
            VALID.replace(
                "    secure_url_tokens",
                "    colour: blue\n    secure_url_tokens",
            ),
            "colour",
        ),
        (
            VALID.replace("'*.example.org'", "'exa*mple.org'"),
            "sources[0].allowed_origin_hosts[1]",
        ),
        (
            VALID.replace("password: pw", "password: {env: IXPROXY_TEST_SECRET}"),
            "sources[0].origin_auth.basic_auth.password",
        ),
        (VALID.replace("3s", "soon"), "upstream.connect_timeout"),
    ];
    for (i, (yaml, field)) in cases.iter().enumerate() {
        let out = check_yaml(&format!("invalid-{i}"), yaml);
        assert_eq!(
            out.status.code(),
            Some(1),
            "config should be refused ({field}):\n{yaml}"
        );
        let err = stderr(&out);
        assert!(err.contains(field), "error must name {field}: {err}");
        assert!(!err.contains(&long), "error must not echo the secret");
    }
}

#[test]
fn check_warns_about_short_tokens_and_a_public_admin_listener_but_accepts_them() {
    let yaml = VALID
        .replace("admin_listen: 127.0.0.1:9901", "admin_listen: 0.0.0.0:9901")
        .replace("[aBcD1234]", "[aBcD1234, 0123456789abcdef]");
    let out = check_yaml("warnings", &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(": ok ("), "{}", stdout(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("warning: admin_listen: 0.0.0.0:9901 is not a loopback address"),
        "{err}"
    );
    assert!(lines[0].contains("admin api"), "{err}");
    assert!(
        lines[1].starts_with(
            "warning: sources[0].secure_url_tokens[0]: token shorter than 16 characters"
        ),
        "{err}"
    );
    assert!(
        !err.contains("aBcD1234"),
        "a warning must not show the token"
    );

    let quiet = VALID.replace("[aBcD1234]", "[0123456789abcdef]");
    let out = check_yaml("no-warnings", &quiet);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "");
}

#[test]
fn check_names_each_bad_purge_api_key_and_warns_about_weak_ones() {
    let quiet = VALID.replace("[aBcD1234]", "[0123456789abcdef]");
    let refused = check_yaml(
        "purge-empty",
        &format!("purge_api_keys: [ak_0123456789abcdef, '']\n{quiet}"),
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("purge_api_keys[1]: must not be empty"),
        "{}",
        stderr(&refused)
    );
    let weak = check_yaml("purge-weak", &format!("purge_api_keys: [hunter2]\n{quiet}"));
    assert_eq!(weak.status.code(), Some(0), "{}", stderr(&weak));
    let err = stderr(&weak);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("warning: purge_api_keys[0]: key shorter than 16 characters"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("warning: purge_api_keys: no cache"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "a warning must not show the key");
}

#[test]
fn envoy_config_refuses_literal_secrets_unless_allowed() {
    let wasm = ["--wasm", "/opt/ixproxy_filter.wasm"];
    let out = with_config("literal", VALID, "envoy-config", &wasm);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: literal secrets would be readable in envoy's /config_dump"),
        "{err}"
    );
    for path in [
        "sources[0].secure_url_tokens[0]",
        "sources[0].origin_auth.basic_auth.username",
        "sources[0].origin_auth.basic_auth.password",
        "sources[0].origin_auth.request_handshake",
        "sources[0].origin_auth.request_signing_key",
    ] {
        assert!(err.contains(path), "{path}: {err}");
    }
    assert!(err.contains("{env: NAME}") && err.contains("--allow-literal-secrets"));
    for secret in ["aBcD1234", "some-secret", "k3y"] {
        assert!(!err.contains(secret), "the error shows {secret}: {err}");
    }

    let allowed = [wasm[0], wasm[1], "--allow-literal-secrets"];
    let out = with_config("literal-allowed", VALID, "envoy-config", &allowed);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("# Envoy bootstrap generated by `ixproxy envoy-config`"));
    // The warnings of `check` go to stderr here too.
    assert!(
        stderr(&out).starts_with("warning: sources[0].secure_url_tokens[0]: token shorter"),
        "{}",
        stderr(&out)
    );
}

/// A gateway whose admin listener the healthcheck probes; port 0, so the test reads the bound
/// address from the process.
fn serve() -> ServeProcess {
    let config = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nsources:\n  - name: a\n    \
                  hosts: [a.test]\n    secure_url_tokens: [tok-a]\n";
    ServeProcess::start_temp(Path::new(env!("CARGO_BIN_EXE_ixproxy")), config, &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `ixproxy healthcheck <args>`, and how long it took.
fn healthcheck(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut all = vec!["healthcheck"];
    all.extend(args);
    let out = ixproxy(&all);
    (out, started.elapsed())
}

/// Asserts a failed probe: exit 1, nothing on stdout, one line on stderr containing `reason`.
fn assert_unhealthy(out: &Output, reason: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(stdout(out).is_empty(), "{}", stdout(out));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("unhealthy: ") && err.contains(reason),
        "{err}"
    );
}

#[test]
fn healthcheck_passes_on_a_serving_gateway_by_address_and_by_config() {
    let gateway = serve();
    let admin = gateway.admin().to_string();
    let (out, _) = healthcheck(&["--admin", &admin]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("healthy: http://{admin}/healthz: HTTP/1.1 200 OK\n")
    );

    // From the config's admin_listen; an unspecified address is probed on loopback, and the
    // config's secrets are not resolved (this variable is not set).
    let port = gateway.admin().port();
    let yaml = format!(
        "listen: 0.0.0.0:8080\nadmin_listen: 0.0.0.0:{port}\nsources:\n  - name: a\n    \
         hosts: [a.test]\n    secure_url_tokens: [{{env: IXPROXY_TEST_SECRET}}]\n"
    );
    let out = with_config("health", &yaml, "healthcheck", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("healthy: http://127.0.0.1:{port}/healthz: ")),
        "{}",
        stdout(&out)
    );

    // --path: another admin path that answers 200, and one that does not.
    let (out, _) = healthcheck(&["--admin", &admin, "--path", "/metrics"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (out, _) = healthcheck(&["--admin", &admin, "--path", "/no-such-path"]);
    assert_unhealthy(&out, &format!("http://{admin}/no-such-path: HTTP/1.1 404"));
}

#[test]
fn healthcheck_fails_on_a_closed_port() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let admin = format!("127.0.0.1:{port}");
    let (out, took) = healthcheck(&["--admin", &admin]);
    assert_unhealthy(&out, &format!("http://{admin}/healthz: cannot connect: "));
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn healthcheck_gives_up_on_a_silent_listener_within_its_timeout() {
    // Connections complete in the kernel's backlog; nothing ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = listener.local_addr().expect("addr").to_string();
    let (out, took) = healthcheck(&["--admin", &admin, "--timeout", "300ms"]);
    assert_unhealthy(&out, "no answer within 300ms");
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(5)).contains(&took),
        "took {took:?}"
    );
    drop(listener);
}

#[test]
fn healthcheck_refuses_an_answer_that_is_not_http() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = listener.local_addr().expect("addr").to_string();
    // One connection, answered with a banner that is not HTTP; the accept is bounded by the
    // probe's own connect (it connects once).
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut request = [0u8; 512];
        let _ = conn.read(&mut request);
        let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
    });
    let (out, _) = healthcheck(&["--admin", &admin, "--timeout", "5s"]);
    server.join().expect("server thread");
    assert_unhealthy(&out, "not an HTTP response: \"SSH-2.0-OpenSSH_9.2\"");
}

#[test]
fn healthcheck_refuses_a_port_zero_admin_listen_and_bad_arguments() {
    let out = with_config(
        "health-port0",
        "admin_listen: 127.0.0.1:0\nsources: [{name: a, hosts: [a.test], secure_url_tokens: [t]}]\n",
        "healthcheck",
        &[],
    );
    assert_unhealthy(&out, "admin_listen: port 0");
    let out = with_config(
        "health-bad",
        "admin_listen: nowhere\nsources: [{name: a, hosts: [a.test], secure_url_tokens: [t]}]\n",
        "healthcheck",
        &[],
    );
    assert_unhealthy(&out, "admin_listen");
    // A path that would break the request line is refused by the argument parser (exit 2).
    let (out, _) = healthcheck(&["--admin", "127.0.0.1:1", "--path", "healthz"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn check_names_the_fallback_image_fields() {
    let cases = [
        (
            "    image_missing: https://elsewhere.example.net/m.png\n",
            "sources[0].image_missing",
        ),
        ("    image_error: not-a-url\n", "sources[0].image_error"),
        (
            "    image_error_append_qs: true\n",
            "sources[0].image_error_append_qs",
        ),
    ];
    for (i, (extra, field)) in cases.iter().enumerate() {
        let out = check_yaml(&format!("fallback-{i}"), &format!("{VALID}{extra}"));
        assert_eq!(out.status.code(), Some(1), "must be refused: {extra}");
        let err = stderr(&out);
        assert!(err.contains(field), "error must name {field}: {err}");
    }
    let valid = format!(
        "{VALID}    image_missing: https://cdn.example.com/missing.png\n    \
         image_missing_append_qs: true\n    image_error: https://img.example.org/error.png\n"
    );
    let out = check_yaml("fallback-valid", &valid);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn check_names_the_imgix_source_settings() {
    let cases = [
        ("    cors: on\n", "sources[0].cors"),
        (
            "    cors: {allow_origin: [\"https://app.example.com/path\"]}\n",
            "sources[0].cors.allow_origin[0]",
        ),
        (
            "    cors: {allow_origin: []}\n",
            "sources[0].cors.allow_origin",
        ),
        (
            "    origin_user_agent: \"bad\\nagent\"\n",
            "sources[0].origin_user_agent",
        ),
        (
            "    origin_headers: {Authorization: hunter2}\n",
            "sources[0].origin_headers.Authorization",
        ),
        (
            "    origin_headers: {X-Imgix-Foo: x}\n",
            "sources[0].origin_headers.X-Imgix-Foo",
        ),
        (
            "    origin_headers: {Accept: x}\n",
            "sources[0].origin_headers.Accept",
        ),
        ("    enabled: maybe\n", "sources[0].enabled"),
    ];
    for (i, (extra, field)) in cases.iter().enumerate() {
        let out = check_yaml(&format!("imgix-{i}"), &format!("{VALID}{extra}"));
        assert_eq!(out.status.code(), Some(1), "must be refused: {extra}");
        let err = stderr(&out);
        assert!(err.contains(field), "error must name {field}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    let valid = format!(
        "{VALID}    enabled: false\n    cors: {{allow_origin: [\"https://app.example.com\"]}}\n    \
         origin_user_agent: forward\n    origin_headers: {{X-Api-Key: hunter2}}\n"
    );
    let out = check_yaml("imgix-valid", &valid);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
