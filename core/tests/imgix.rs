//! The source settings of SPEC §15 as the core decides them: `enabled: false`, `dl`, the origin
//! identity (`origin_user_agent`, `origin_headers`) and where each applies.

use ixproxy_core::cache::cache_key;
use ixproxy_core::config::{MapSecrets, RawConfig};
use ixproxy_core::identity::DEFAULT_ORIGIN_USER_AGENT;
use ixproxy_core::sign::{sign_url, SignOptions};
use ixproxy_core::{decide, Decision, Forward, Outcome, RequestInfo, Sources};

const NOW: u64 = 1_700_000_000;

fn sources() -> Sources {
    let yaml = "\
sources:
  - name: on
    hosts: [on.test]
    secure_url_tokens: [t]
    origin_auth: {request_handshake: hs, hosts: [auth.example]}
    allowed_origin_hosts: [auth.example, other.example]
    origin_headers: {X-Api-Key: {env: KEY}, Referer: https://www.example/}
  - name: off
    hosts: [off.test]
    secure_url_tokens: [t]
    enabled: false
  - name: fwd
    hosts: [fwd.test]
    secure_url_tokens: [t]
    origin_user_agent: forward
  - name: custom
    hosts: [custom.test]
    secure_url_tokens: [t]
    origin_user_agent: imgix-compatible/2 (+https://ops.example)
";
    RawConfig::from_yaml(yaml)
        .and_then(|raw| raw.validate(&MapSecrets::new().with_env("KEY", "k3y")))
        .expect("valid")
        .sources
}

fn run(host: &str, target: &str) -> Decision {
    let request = RequestInfo {
        method: "GET",
        host,
        target,
    };
    decide(&sources(), &request, NOW)
}

fn forward(host: &str, url: &str, params: &[(&str, &str)]) -> Forward {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let target = sign_url("t", url, &params, &SignOptions::default());
    match run(host, &target) {
        Decision::Forward(f) => *f,
        Decision::Reject(r) => panic!("{url}: {r:?}"),
    }
}

#[test]
fn a_disabled_source_is_410_before_its_signature_is_looked_at() {
    let signed = sign_url("t", "https://a.example/x.jpg", &[], &SignOptions::default());
    for target in [
        signed.as_str(),
        "/https%3A%2F%2Fa.example%2Fx.jpg",
        "/x?s=zz",
    ] {
        let Decision::Reject(r) = run("off.test", target) else {
            panic!("{target}: forwarded");
        };
        assert_eq!((r.status(), r.outcome()), (410, Outcome::SourceDisabled));
        assert!(!r.reason().contains("a.example"));
    }
    // A wrong signature on an enabled source is still a 403.
    let Decision::Reject(r) = run("on.test", "/x?s=zz") else {
        panic!("forwarded");
    };
    assert_eq!(r.outcome(), Outcome::BadSignature);
}

#[test]
fn dl_sets_content_disposition_and_leaves_the_cache_key_alone() {
    let plain = forward(
        "fwd.test",
        "https://a.example/dir/photo.jpg",
        &[("w", "10")],
    );
    assert_eq!(plain.content_disposition(), None);
    let named = forward(
        "fwd.test",
        "https://a.example/dir/photo.jpg",
        &[("w", "10"), ("dl", "my \"photo\".jpg")],
    );
    assert_eq!(
        named.content_disposition(),
        Some("attachment; filename=\"my _photo_.jpg\"; filename*=UTF-8''my%20_photo_.jpg")
    );
    assert_eq!(cache_key(&plain), cache_key(&named), "dl is not in the key");
    let empty = forward("fwd.test", "https://a.example/dir/photo.jpg", &[("dl", "")]);
    assert!(empty
        .content_disposition()
        .is_some_and(|v| v.contains("filename=\"photo.jpg\"")));
    let base64 = forward("fwd.test", "https://a.example/x", &[("dl64", "日本.png")]);
    assert!(base64
        .content_disposition()
        .is_some_and(|v| v.ends_with("''%E6%97%A5%E6%9C%AC.png")));
    // The origin URL's own query is the origin's, never a download request.
    let own = forward("fwd.test", "https://a.example/x?dl=a.jpg", &[]);
    assert_eq!(own.content_disposition(), None);
    // A redirect hop keeps the client's request for a download.
    let hop = named.redirect("/elsewhere.png").expect("hop");
    assert_eq!(hop.content_disposition(), named.content_disposition());
}

#[test]
fn the_origin_user_agent_replaces_the_clients_unless_forwarded() {
    let default = forward("on.test", "https://auth.example/a.jpg", &[]);
    assert_eq!(default.origin_user_agent(), Some(DEFAULT_ORIGIN_USER_AGENT));
    assert!(!default.forwards_client_header("User-Agent", false));
    assert!(default.forwards_client_header("Accept", false));
    let custom = forward("custom.test", "https://a.example/a.jpg", &[]);
    assert_eq!(
        custom.origin_user_agent(),
        Some("imgix-compatible/2 (+https://ops.example)")
    );
    assert!(!custom.forwards_client_header("user-agent", false));
    let fwd = forward("fwd.test", "https://a.example/a.jpg", &[]);
    assert_eq!(fwd.origin_user_agent(), None);
    assert!(fwd.forwards_client_header("User-Agent", false));
    assert!(
        !fwd.forwards_client_header("User-Agent", true),
        "never on a cache fill"
    );
}

#[test]
fn origin_headers_go_where_origin_auth_goes() {
    let names = |f: &Forward| -> Vec<(String, String)> {
        f.origin_headers()
            .iter()
            .map(|h| (h.name.clone(), h.value.expose().to_owned()))
            .collect()
    };
    let first = forward("on.test", "https://auth.example/a.jpg", &[]);
    assert_eq!(
        names(&first),
        [
            ("referer".to_owned(), "https://www.example/".to_owned()),
            ("x-api-key".to_owned(), "k3y".to_owned())
        ]
    );
    // A host the source may fetch but not authenticate to gets none.
    let other = forward("on.test", "https://other.example/a.jpg", &[]);
    assert!(other.origin_headers().is_empty());
    // A same-origin hop keeps them; a cross-origin hop (host, scheme or port) loses them.
    let same = first.redirect("/b.jpg").expect("hop");
    assert_eq!(names(&same).len(), 2);
    for away in [
        "https://other.example/b.jpg",
        "http://auth.example/b.jpg",
        "https://auth.example:8443/b.jpg",
    ] {
        let hop = first.redirect(away).expect(away);
        assert!(hop.origin_headers().is_empty(), "{away}");
        assert!(!hop.may_receive_auth(), "{away}");
    }
}
