//! One origin fetch per object across replicas (README: Caching, "One fetch per object across
//! replicas"; SPEC §16): the shipped consistent-hashing front, deploy/front/envoy-front.yaml,
//! run in a real Envoy 1.40 over three `ixproxy serve` replicas with the memory cache on, in
//! front of the recording origin, which counts what reaches it.
//!
//! The front's config is the shipped file with only its addresses changed: the listeners and
//! the admin on 127.0.0.1 port 0, the three replicas' loopback addresses (IP literals, which
//! its STRICT_DNS cluster takes as they are, with no DNS query) and admin ports in place of
//! `ixproxy-N:8080`/`9901`, and its connections to them from 127.0.0.2, the one address the
//! replicas' `trusted_proxies` lists.
//!
//! Each of [`URLS`] (or `IXPROXY_FLEET_URLS`) origin URLs is requested [`VARIANTS`] times,
//! each time signed with other gateway params (another query and signature, the same cache
//! key), one after the other as a client would: each URL is fetched from the origin once,
//! every request for it is served by the same replica (found by its `X-Request-ID` in the
//! replicas' access logs), all three replicas serve, and each names the client (the address
//! the front appended), neither the front nor a forged `X-Forwarded-For` entry. Then a replica
//! is killed: its URLs are fetched once more, by the replicas that take its share over, and an
//! object of a live replica is fetched again only if it moved (with Maglev almost none do).
//! Then another one drains (SIGTERM): the front's health checks take it off while it still
//! accepts, within its grace period.
//! First, the same requests through the front with a random replica per request (the shipped
//! file with its hash removed) fetch URLs several times: the check that the rest can fail.
//! With `--nocapture` it prints the figures of the README (bench/fleet.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ixproxy_conformance::access_log::json_lines;
use ixproxy_conformance::client::{send, RawRequest};
use ixproxy_conformance::origin::{pattern, RecordingOrigin};
use ixproxy_conformance::{EnvoyGateway, Gateway, ServeProcess, Signal};
use ixproxy_core::sign::{sign_url, SignOptions};
use serde_yaml::Value;

const TIMEOUT: Duration = Duration::from_secs(15);
const TOKEN: &str = "tok-fleet";
/// Distinct origin URLs per run: with even shares, the chance that one of three replicas gets
/// none of them is 3 × (2/3)^36, about 1e-6. `IXPROXY_FLEET_URLS` raises it for the figures
/// (bench/fleet.sh).
const URLS: usize = 36;
/// Requests per URL, each signed with other params.
const VARIANTS: usize = 3;
/// How long the replicas' access logs may take to show every request (written in batches
/// within ~50 ms).
const LOG_WAIT: Duration = Duration::from_secs(5);
/// The replicas' `server.grace_period` (the default): how long a draining replica keeps
/// accepting after SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// The address the front connects to the replicas from, and the only one they trust.
const FRONT_SOURCE: &str = "127.0.0.2";

/// [`URLS`], or more from `IXPROXY_FLEET_URLS`.
fn urls() -> usize {
    std::env::var("IXPROXY_FLEET_URLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(URLS, |n: usize| n.max(URLS))
}

fn replica_config() -> String {
    format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: json
trusted_proxies: [{FRONT_SOURCE}/32]
upstream:
  connect_timeout: 2s
  timeout: 8s
cache:
  max_bytes: 4194304
  max_object_bytes: 262144
sources:
  - name: assets
    hosts: [assets.test]
    secure_url_tokens: [{TOKEN}]
    allow_private_origins: true
"
    )
}

/// Three replicas and the origin, in one temporary directory (configs, logs, the front's).
struct Fleet {
    origin: RecordingOrigin,
    replicas: Vec<ServeProcess>,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let origin = RecordingOrigin::start().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("ixproxy-fleet-")
            .tempdir()
            .expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_ixproxy"));
        let replicas = (0..3)
            .map(|_| {
                ServeProcess::start(bin, &replica_config(), &[], dir.path())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        Fleet {
            origin,
            replicas,
            dir,
        }
    }

    /// The shipped front with this fleet's addresses, changed further by `edit`, running.
    fn front(&self, edit: impl FnOnce(&mut Value)) -> EnvoyGateway {
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/front/envoy-front.yaml");
        let text = std::fs::read_to_string(&shipped).expect("deploy/front/envoy-front.yaml");
        let mut bootstrap: Value = serde_yaml::from_str(&text).expect("front yaml");
        local_addresses(&mut bootstrap, &self.replicas);
        edit(&mut bootstrap);
        let text = serde_yaml::to_string(&bootstrap).expect("front yaml");
        let front = EnvoyGateway::start_bootstrap(text.as_bytes(), self.dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        await_healthy(&front, self.replicas.len());
        front
    }
}

/// Waits (bounded by [`TIMEOUT`]) until `front` counts `count` healthy replicas in
/// `/clusters`: a replica takes its share once it passed a health check, and Envoy may report
/// ready before the first check of every replica.
fn await_healthy(front: &EnvoyGateway, count: usize) {
    let admin = front.admin_addr();
    let request = RawRequest::get(&admin.to_string(), "/clusters");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let text = send(admin, &request, TIMEOUT)
            .map(|r| r.body_text())
            .unwrap_or_default();
        let healthy = text
            .lines()
            .filter(|l| l.starts_with("replicas::") && l.ends_with("::health_flags::healthy"))
            .count();
        if healthy == count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{healthy} of {count} replicas healthy on the front:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn socket_address(address: &str, port: u16) -> Value {
    serde_yaml::from_str(&format!("{{address: \"{address}\", port_value: {port}}}"))
        .expect("socket address")
}

/// The front's `replicas` cluster.
fn replicas_cluster(bootstrap: &mut Value) -> &mut Value {
    bootstrap["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("clusters")
        .iter_mut()
        .find(|c| c["name"] == "replicas")
        .expect("the replicas cluster")
}

/// Points the shipped front at `replicas` on loopback: listeners and admin on port 0, the
/// `replicas` cluster's endpoints at their gateway addresses and admin ports (health checks),
/// in the shipped order, each keeping its `hostname` (what its share is keyed on), connected
/// from [`FRONT_SOURCE`]. The cluster stays STRICT_DNS (Envoy hashes on hostnames only for DNS
/// clusters); an IP literal resolves to itself.
fn local_addresses(bootstrap: &mut Value, replicas: &[ServeProcess]) {
    bootstrap["admin"]["address"]["socket_address"] = socket_address("127.0.0.1", 0);
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_sequence_mut()
        .expect("listeners");
    for listener in listeners {
        listener["address"]["socket_address"] = socket_address("127.0.0.1", 0);
    }
    let cluster = replicas_cluster(bootstrap);
    cluster["upstream_bind_config"]["source_address"] = socket_address(FRONT_SOURCE, 0);
    let endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_sequence_mut()
        .expect("lb_endpoints");
    assert_eq!(endpoints.len(), replicas.len(), "one endpoint per replica");
    for (endpoint, replica) in endpoints.iter_mut().zip(replicas) {
        let endpoint = &mut endpoint["endpoint"];
        let listen = replica.listen();
        endpoint["address"]["socket_address"] =
            socket_address(&listen.ip().to_string(), listen.port());
        endpoint["health_check_config"]["port_value"] = Value::from(replica.admin().port());
    }
}

/// The shipped front with its hash taken out: a random replica per request, what a plain
/// Kubernetes Service (kube-proxy picks an endpoint at random) does for new connections.
fn random(bootstrap: &mut Value) {
    let cluster = replicas_cluster(bootstrap);
    cluster["lb_policy"] = Value::from("RANDOM");
    let mapping = cluster.as_mapping_mut().expect("cluster");
    mapping.remove("maglev_lb_config");
    let common = mapping
        .get_mut("common_lb_config")
        .and_then(Value::as_mapping_mut)
        .expect("common_lb_config");
    common.remove("consistent_hashing_lb_config");
    let route = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
    route
        .as_mapping_mut()
        .expect("route")
        .remove("hash_policy")
        .expect("the shipped route hashes");
}

/// The origin URL of object `i` of run `run`: a distinct size per object, a query of its own
/// (part of the origin URL, so part of the hash and of the cache key).
fn origin_url(origin: SocketAddr, run: &str, i: usize) -> String {
    format!("http://{origin}/fresh/600/{}?run={run}", 1000 + i)
}

/// Sends `GET` for object `i`, variant `variant` of run `run` through `front`, with a forged
/// `X-Forwarded-For` and the request id `run-i-variant`; checks the 200 and its body.
fn get(front: SocketAddr, origin: SocketAddr, run: &str, i: usize, variant: usize) -> String {
    let params: Vec<(String, String)> = match variant {
        0 => Vec::new(),
        v => vec![("w".to_owned(), (100 * v).to_string())],
    };
    let target = sign_url(
        TOKEN,
        &origin_url(origin, run, i),
        &params,
        &SignOptions::default(),
    );
    let id = format!("{run}-{i}-{variant}");
    let mut request = RawRequest::get("assets.test", &target);
    request.headers = vec![
        ("x-request-id".to_owned(), id.clone()),
        ("x-forwarded-for".to_owned(), "203.0.113.9".to_owned()),
    ];
    let response = send(front, &request, TIMEOUT).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(response.status, 200, "{id}: {}", response.body_text());
    assert_eq!(response.body, pattern(1000 + i), "{id}: body");
    id
}

/// Every request of `run`, in the order a client sends them: the variants of
/// one object one after the other.
fn run_all(front: SocketAddr, fleet: &Fleet, run: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..urls() {
        for variant in 0..VARIANTS {
            ids.push(get(front, fleet.origin.http, run, i, variant));
        }
    }
    ids
}

/// Origin fetches per object of `run`.
fn origin_fetches(fleet: &Fleet, run: &str) -> Vec<usize> {
    let requests = fleet.origin.requests();
    (0..urls())
        .map(|i| {
            let target = format!("/fresh/600/{}?run={run}", 1000 + i);
            requests.iter().filter(|r| r.target == target).count()
        })
        .collect()
}

/// Where each request id of `ids` was served: replica index and its access log line, once
/// every id is in a log (bounded by [`LOG_WAIT`]).
fn served_by(fleet: &Fleet, ids: &[String]) -> BTreeMap<String, (usize, serde_json::Value)> {
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let mut found = BTreeMap::new();
    let deadline = std::time::Instant::now() + LOG_WAIT;
    while found.len() < wanted.len() && std::time::Instant::now() < deadline {
        found.clear();
        for (index, replica) in fleet.replicas.iter().enumerate() {
            for line in json_lines(|| replica.log(), 0, Duration::ZERO) {
                if let Some(id) = line["request_id"].as_str() {
                    if wanted.contains(id) {
                        found.insert(id.to_owned(), (index, line));
                    }
                }
            }
        }
        if found.len() < wanted.len() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        found.len(),
        wanted.len(),
        "every request in one replica's access log"
    );
    found
}

/// The replica that served every variant of object `i` of `run`.
fn replica_of(
    served: &BTreeMap<String, (usize, serde_json::Value)>,
    run: &str,
    i: usize,
    variants: usize,
) -> usize {
    let replicas: BTreeSet<usize> = (0..variants)
        .map(|v| served[&format!("{run}-{i}-{v}")].0)
        .collect();
    assert_eq!(
        replicas.len(),
        1,
        "object {i} of {run} was served by replicas {replicas:?}"
    );
    replicas.into_iter().next().expect("one replica")
}

/// Prints a figure row: policy, requests, origin fetches, fetches per URL, requests per replica.
fn figure(policy: &str, fetches: &[usize], served: &BTreeMap<String, (usize, serde_json::Value)>) {
    let total: usize = fetches.iter().sum();
    let mut per_replica = [0usize; 3];
    for (replica, _) in served.values() {
        per_replica[*replica] += 1;
    }
    println!(
        "| {policy} | {} URLs x {VARIANTS} | {total} | {:.2} (max {}) | {} / {} / {} |",
        urls(),
        total as f64 / urls() as f64,
        fetches.iter().max().copied().unwrap_or(0),
        per_replica[0],
        per_replica[1],
        per_replica[2],
    );
}

#[test]
fn the_front_sends_each_origin_url_to_one_replica_and_moves_only_a_leaving_replicas_share() {
    let mut fleet = Fleet::start();
    println!("| front | requests | origin fetches | per URL | requests per replica |");
    println!("| --- | --- | --- | --- | --- |");

    // The control first: without the hash the same requests are fetched by several replicas.
    {
        let front = fleet.front(random);
        let ids = run_all(front.addr(), &fleet, "random");
        let fetches = origin_fetches(&fleet, "random");
        let served = served_by(&fleet, &ids);
        figure("random (no hash)", &fetches, &served);
        assert!(
            fetches.iter().sum::<usize>() > urls(),
            "without the hash each URL was fetched once ({fetches:?}): the check below could not fail"
        );
    }

    let front = fleet.front(|_| {});
    let ids = run_all(front.addr(), &fleet, "hash");
    let fetches = origin_fetches(&fleet, "hash");
    let served = served_by(&fleet, &ids);
    figure("maglev (deploy/front)", &fetches, &served);
    assert_eq!(fetches, vec![1; urls()], "origin fetches per URL");
    let owner: Vec<usize> = (0..urls())
        .map(|i| replica_of(&served, "hash", i, VARIANTS))
        .collect();
    for replica in 0..3 {
        assert!(
            owner.contains(&replica),
            "replica {replica} served nothing: {owner:?}"
        );
    }
    let client_ip = served.values().next().expect("a request").1["client_ip"].clone();
    for (id, (_, line)) in &served {
        // The first request of each object missed, the others hit on the same replica.
        let expected = if id.ends_with("-0") { "miss" } else { "hit" };
        assert_eq!(line["cache"], expected, "{id}: {line}");
        // The front is trusted and the address it appended is the client; the forged entry is
        // not. (Envoy appends its machine's own non-loopback address for a loopback client.)
        assert_eq!(line["client_ip"], client_ip, "{id}: {line}");
    }
    assert!(
        client_ip.is_string() && client_ip != "203.0.113.9" && client_ip != FRONT_SOURCE,
        "client_ip {client_ip}: the forged entry or the front"
    );

    // A replica dies: its objects go to the others and are fetched once more there; an object
    // of a live replica is fetched again exactly when it moved (Maglev refills its table, a
    // few entries of the survivors can change hands; ring hash moves more).
    let dead = owner[0];
    let killed = &mut fleet.replicas[dead];
    killed
        .signal(Signal::SIGKILL)
        .unwrap_or_else(|e| panic!("kill replica {dead}: {e}"));
    killed
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|e| panic!("replica {dead}: {e}"))
        .expect("the killed replica exits");
    let mut ids = Vec::new();
    for i in 0..urls() {
        ids.push(get(front.addr(), fleet.origin.http, "hash", i, VARIANTS));
    }
    let after = origin_fetches(&fleet, "hash");
    let served = served_by(&fleet, &ids);
    let mut moved_live = 0;
    for i in 0..urls() {
        let id = format!("hash-{i}-{VARIANTS}");
        let (now, line) = &served[&id];
        assert_ne!(*now, dead, "{id} served by the dead replica");
        if *now == owner[i] {
            assert_eq!(
                after[i], 1,
                "object {i} stayed on its replica: no new fetch"
            );
            assert_eq!(line["cache"], "hit", "{id}: {line}");
        } else {
            assert_eq!(after[i], 2, "object {i} moved: one more fetch");
            assert_eq!(line["cache"], "miss", "{id}: {line}");
            moved_live += usize::from(owner[i] != dead);
        }
    }
    let of_dead = owner.iter().filter(|&&r| r == dead).count();
    let live = urls() - of_dead;
    println!(
        "replica {dead} killed: its {of_dead} URLs fetched once more by the others; \
         {moved_live} of the other {live} moved between live replicas"
    );
    // Maglev moves about 0.1 % of them (bench/fleet_churn.py), ring hash about 13 %.
    assert!(
        moved_live * 10 <= live,
        "{moved_live} of {live} objects of live replicas moved"
    );

    // A replica drains (SIGTERM): it answers /readyz 503 and keeps serving for its
    // server.grace_period (5 s) before it closes its listener; the front's health checks
    // must take it off before that, so no request meets a closed listener.
    let draining = (0..3).find(|&r| r != dead).expect("a live replica");
    let drained = std::time::Instant::now();
    fleet.replicas[draining]
        .signal(Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("SIGTERM replica {draining}: {e}"));
    await_healthy(&front, 1);
    let took = drained.elapsed();
    assert!(
        took < DRAIN_GRACE
            && std::net::TcpStream::connect(fleet.replicas[draining].listen()).is_ok(),
        "the draining replica left the front after {took:?}, its grace period is {DRAIN_GRACE:?}"
    );
    println!("replica {draining} draining: off the front after {took:?}");
    drop(front);
}
