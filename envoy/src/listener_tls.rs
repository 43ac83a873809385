//! HTTPS on the gateway listener (`tls:`, README: TLS and HTTP/2): Envoy picks a filter chain by
//! the client's SNI, and each chain carries its certificate in its transport socket. So every
//! `tls.certificates` entry with hosts is one chain matching them
//! (`filter_chain_match.server_names`: Envoy matches exact names before `*.` wildcards, as the
//! native gateway does; unlike it, Envoy's `*.example.com` also matches deeper names, and an SNI
//! with a trailing dot matches no name and gets the default), and the first entry is also the chain without a match: the default for
//! other names and for clients that send no SNI. `tls: {cert_file, key_file}` is that default
//! chain alone. Each chain holds the same HTTP connection manager.
//!
//! The files are referenced by absolute path, never inlined (a key in the bootstrap would be
//! in every copy of it), and read by Envoy when it starts; a changed file needs a restart (or a
//! hot restart) of Envoy, where `ixproxy serve` re-reads them on SIGHUP. The TLS handshake is
//! bounded by `client_header_timeout`, as natively: the TLS inspector must read the client hello
//! within it (`listener_filters_timeout`, then the connection is closed) and the handshake must
//! end within it (`transport_socket_connect_timeout`).

use std::path::Path;
use std::time::Duration;

use ixproxy_core::config::{Tls, TlsCertificate};
use serde_yaml::Value;

use crate::{duration, strings, typed};

/// `tls` with every file made absolute against `config_dir` (where the generator resolves
/// relative paths, as for `upstream.ca_file`).
pub(crate) fn absolute(tls: &Tls, config_dir: &Path) -> Tls {
    let resolve = |file: &str| crate::absolute_in(config_dir, file);
    let mut tls = tls.clone();
    for entry in &mut tls.certificates {
        entry.files.cert_file = resolve(&entry.files.cert_file);
        entry.files.key_file = resolve(&entry.files.key_file);
    }
    tls
}

/// The listener fields for `tls` around the HTTP connection manager filter `hcm`:
/// `filter_chains` (one plain chain without TLS), and with TLS the TLS inspector and its
/// timeout.
pub(crate) fn listener_fields(
    tls: Option<&Tls>,
    header_timeout: Duration,
    hcm: Value,
) -> Vec<(&'static str, Value)> {
    let Some(tls) = tls else {
        return vec![(
            "filter_chains",
            Value::from(vec![map! { "filters" => vec![hcm] }]),
        )];
    };
    let chain = |name: String, entry: &TlsCertificate, server_names: Option<&[String]>| {
        let mut chain = map! { "name" => name };
        if let Some(names) = server_names {
            chain["filter_chain_match"] = map! { "server_names" => names.to_vec() };
        }
        chain["filters"] = Value::from(vec![hcm.clone()]);
        chain["transport_socket"] = transport_socket(entry);
        chain["transport_socket_connect_timeout"] = Value::from(duration(header_timeout));
        chain
    };
    let mut chains: Vec<Value> = tls
        .certificates
        .iter()
        .enumerate()
        .filter(|(_, entry)| !entry.hosts.is_empty())
        .map(|(i, entry)| chain(format!("certificate-{i}"), entry, Some(&entry.hosts)))
        .collect();
    if let Some(first) = tls.certificates.first() {
        chains.push(chain("default".to_owned(), first, None));
    }
    vec![
        (
            "listener_filters",
            Value::from(vec![map! {
                "name" => "envoy.filters.listener.tls_inspector",
                "typed_config" => typed(
                    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                    map! {},
                ),
            }]),
        ),
        (
            "listener_filters_timeout",
            Value::from(duration(header_timeout)),
        ),
        ("filter_chains", Value::from(chains)),
    ]
}

/// The downstream TLS transport socket serving `entry`'s certificate, offering `h2` then
/// `http/1.1` through ALPN (the connection manager's `AUTO` codec follows what was chosen).
fn transport_socket(entry: &TlsCertificate) -> Value {
    map! {
        "name" => "envoy.transport_sockets.tls",
        "typed_config" => typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            map! {
                "common_tls_context" => map! {
                    "alpn_protocols" => strings(&["h2", "http/1.1"]),
                    "tls_certificates" => vec![map! {
                        "certificate_chain" => map! { "filename" => entry.files.cert_file.as_str() },
                        "private_key" => map! { "filename" => entry.files.key_file.as_str() },
                    }],
                },
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{generate_ok, hcm, CONFIG};

    fn chains(bootstrap: &Value) -> &Vec<Value> {
        bootstrap["static_resources"]["listeners"][0]["filter_chains"]
            .as_sequence()
            .expect("filter chains")
    }

    fn files(chain: &Value) -> (&str, &str) {
        let cert =
            &chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0];
        (
            cert["certificate_chain"]["filename"]
                .as_str()
                .expect("cert"),
            cert["private_key"]["filename"].as_str().expect("key"),
        )
    }

    #[test]
    fn each_certificate_is_a_chain_for_its_names_and_the_first_also_the_default() {
        let (_, bootstrap) = generate_ok(&format!(
            "{CONFIG}limits: {{client_header_timeout: 4s}}\ntls:\n  certificates:\n  \
             - hosts: [Img.Example.com]\n    cert_file: /etc/a.crt\n    key_file: /etc/a.key\n  \
             - hosts: [b.example.com, \"*.wild.example.com\"]\n    cert_file: b.crt\n    \
             key_file: keys/b.key\n"
        ));
        let listener = &bootstrap["static_resources"]["listeners"][0];
        assert_eq!(
            listener["listener_filters"][0]["name"],
            "envoy.filters.listener.tls_inspector"
        );
        assert_eq!(listener["listener_filters_timeout"], "4s");
        let chains = chains(&bootstrap);
        assert_eq!(chains.len(), 3);
        let names = |chain: &Value| {
            serde_yaml::to_string(&chain["filter_chain_match"]["server_names"]).expect("yaml")
        };
        assert_eq!(names(&chains[0]), "- img.example.com\n");
        assert_eq!(
            names(&chains[1]),
            "- b.example.com\n- '*.wild.example.com'\n"
        );
        assert!(chains[2].get("filter_chain_match").is_none(), "the default");
        assert_eq!(files(&chains[0]), ("/etc/a.crt", "/etc/a.key"));
        assert_eq!(files(&chains[2]), files(&chains[0]));
        // Relative paths are resolved against the config's directory.
        assert_eq!(
            files(&chains[1]),
            (
                "/nonexistent-config-dir/b.crt",
                "/nonexistent-config-dir/keys/b.key"
            )
        );
        for chain in chains {
            assert_eq!(chain["transport_socket_connect_timeout"], "4s");
            let context = &chain["transport_socket"]["typed_config"];
            assert_eq!(
                context["@type"],
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
            );
            assert_eq!(
                context["common_tls_context"]["alpn_protocols"],
                strings(&["h2", "http/1.1"])
            );
            assert_eq!(&chain["filters"][0]["typed_config"], hcm(&bootstrap));
        }
    }

    #[test]
    fn one_pair_is_the_default_chain_alone_and_no_tls_one_plain_chain() {
        let (_, bootstrap) = generate_ok(&format!(
            "{CONFIG}tls:\n  cert_file: /c.pem\n  key_file: /k.pem\n"
        ));
        let tls_chains = chains(&bootstrap);
        assert_eq!(tls_chains.len(), 1);
        assert!(tls_chains[0].get("filter_chain_match").is_none());
        assert_eq!(files(&tls_chains[0]), ("/c.pem", "/k.pem"));
        assert_eq!(tls_chains[0]["transport_socket_connect_timeout"], "10s");

        let (_, plain) = generate_ok(CONFIG);
        let listener = &plain["static_resources"]["listeners"][0];
        assert!(listener.get("listener_filters").is_none());
        let plain_chains = chains(&plain);
        assert_eq!(plain_chains.len(), 1);
        assert!(plain_chains[0].get("transport_socket").is_none());
        assert!(plain_chains[0].get("name").is_none());
    }
}
