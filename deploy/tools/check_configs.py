"""Checks the ixproxy configs that deploy/ ships, and that the files around them agree with them.

    python deploy/tools/check_configs.py IXPROXY_BIN ENVOY_BIN

- `ixproxy check` on deploy/docker/ixproxy.yaml, deploy/systemd/ixproxy.yaml and the config
  embedded in deploy/kubernetes/configmap.yaml. Their `{file: PATH}` secrets name paths of the
  target machine (/run/secrets/..., /run/credentials/...), so each is checked as a copy whose
  paths point at placeholder files in a temporary directory;
- Kubernetes: every secret file the config names is a key of the Secret and lies in the
  directory the StatefulSet mounts it at; the config is mounted where the container's `-c`
  points; terminationGracePeriodSeconds covers preStop + 2 x server.grace_period + shutdown;
  `cache.disk.path` is a directory inside (not the root of: root's and readable by everyone,
  while ixproxy creates its own 0700) the mount of a volume claim template asking for more than
  `cache.disk.max_bytes`, mounted writable, its files the pod's group (fsGroup);
  `cache.peers.dns` is the headless Service the StatefulSet names (clusterIP None, not-ready
  pods published) at the admin port; the autoscaler scales the StatefulSet; the NetworkPolicy
  lets the front reach the gateway and admin ports and the other replicas the admin port;
- the consistent-hashing front (deploy/front/envoy-front.yaml and the Envoy config in
  deploy/kubernetes/front.yaml): `envoy --mode validate` accepts both with no deprecated field;
  they differ only in the `replicas` cluster's endpoints; the Kubernetes one lists the
  StatefulSet's pods ixproxy-0 .. ixproxy-(maxReplicas - 1) by their stable names on the
  headless Service, at the gateway port, health-checked at the admin port on the readiness
  probe's path; in both, a replica that turns /readyz 503 leaves the hash table before its
  server.grace_period ends (interval x unhealthy_threshold + timeout), and idle connections to
  a replica end before its limits.client_idle_timeout (the Kubernetes ConfigMap's, and for the
  standalone front the Docker config's); the hash (MAGLEV on the replicas' host names, `:path`
  without its query, no panic mode, health checks at least every interval, a replica gone
  from DNS gone from the table); the replicas' configs count no connections per client
  (every connection comes from the front) and their header limits fit max_request_headers_kb,
  and the Kubernetes ones trust the front's X-Forwarded-For (trusted_proxies);
  the edge timeouts and HTTP/2 limits are the gateway's own Envoy listener's
  (envoy/envoy.yaml); the overload manager bounds connections (the probes' metrics listener
  outside the bound) and the heap, below the front container's memory limit;
- systemd: TimeoutStopSec covers 2 x server.grace_period + shutdown, and each credential the config
  names is loaded by the unit (LoadCredential=);
- the image's runtime conditions, as far as they can be had without a container engine (as
  root, with util-linux's unshare and setpriv): `ixproxy serve` on the Docker config runs as
  UID/GID 65532 in a mount namespace whose root filesystem is read-only and whose /tmp is an
  empty tmpfs, answers `ixproxy healthcheck`, writes nothing into /tmp, and exits 0 on SIGTERM.
  The copy listens on 127.0.0.1 port 0 (never a fixed port) with a 1 s grace period.

Prints one line per check (`ok   ...` or `FAIL ...: why`); exits 1 if any failed. Needs PyYAML
(installed in .venv with kubernetes-validate).
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
FILE_SECRET = re.compile(r"\{file:\s*([^\s},]+)\s*\}")
# Pingora's runtime shutdown after the grace period (serve's SHUTDOWN_SECONDS), plus margin.
SHUTDOWN_SECONDS = 1
# Placeholder secret values: long enough for the token-length warning, short enough for
# request_signing_key (at most 32 characters).
PLACEHOLDER = "placeholder-secret-0123456789ab"

failures = 0


def report(name, problem=None):
    """Prints one result line and counts failures."""
    global failures
    if problem:
        failures += 1
        print(f"FAIL {name}: {problem}")
    else:
        print(f"ok   {name}")


def seconds(text):
    """A config or systemd duration (`5s`, `500ms`, `1m`, or bare seconds) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text).strip())
    if not match:
        raise ValueError(f"unreadable duration {text!r}")
    factor = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * factor


def grace_period(config_text):
    """server.grace_period of a config, in seconds (default 5 s)."""
    server = (yaml.safe_load(config_text) or {}).get("server") or {}
    return seconds(server.get("grace_period", "5s"))


def ixproxy_check(binary, name, config_text):
    """`ixproxy check` on a copy of the config whose file secrets point at placeholders."""
    with tempfile.TemporaryDirectory(prefix="ixproxy-deploy-") as tmp:
        root = Path(tmp)

        def placeholder(match):
            path = root / match.group(1).lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PLACEHOLDER + "\n")
            return "{file: " + str(path) + "}"

        copy = root / "ixproxy.yaml"
        copy.write_text(FILE_SECRET.sub(placeholder, config_text))
        run = subprocess.run(
            [binary, "check", "-c", str(copy)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        problem = None
        if run.returncode != 0:
            problem = (run.stderr or run.stdout).strip().replace(str(root), "")
        report(f"ixproxy check {name}", problem)


def documents(path):
    """The Kubernetes objects of a manifest, by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def check_kubernetes(binary):
    """The ConfigMap's config, and the StatefulSet, Secret and Services around it."""
    k8s = DEPLOY / "kubernetes"
    configmap = documents(k8s / "configmap.yaml")["ConfigMap"]
    secret = documents(k8s / "secret.yaml")["Secret"]
    statefulset = documents(k8s / "statefulset.yaml")["StatefulSet"]
    config_key, config_text = next(iter(configmap["data"].items()))
    ixproxy_check(binary, f"kubernetes/configmap.yaml ({config_key})", config_text)

    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    problems = []

    config_dirs = [
        mounts[name]
        for name, v in volumes.items()
        if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    ]
    args = container.get("args", [])
    config_arg = args[args.index("-c") + 1] if "-c" in args else None
    if config_arg not in [f"{d}/{config_key}" for d in config_dirs]:
        problems.append(f"-c {config_arg} is not {config_key} of a mounted ConfigMap")

    secret_dirs = [
        mounts[name]
        for name, v in volumes.items()
        if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
    ]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for path in FILE_SECRET.findall(config_text):
        directory, _, key = path.rpartition("/")
        if directory not in secret_dirs or key not in keys:
            problems.append(f"{{file: {path}}} is not a key of the mounted Secret")

    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    # SIGTERM serves on for grace_period, then requests in flight get grace_period again.
    needed = pre_stop.get("seconds", 0) + 2 * grace_period(config_text) + SHUTDOWN_SECONDS
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if termination <= needed:
        problems.append(
            f"terminationGracePeriodSeconds {termination} <= preStop + 2 x grace_period + "
            f"{SHUTDOWN_SECONDS} s = {needed}"
        )
    problems += check_tiers(statefulset, container, mounts, config_text)
    report("kubernetes: StatefulSet, Secret, Services and ConfigMap agree", "; ".join(problems))


def quantity_bytes(text):
    """A Kubernetes storage quantity (`12Gi`, `500M`, bare bytes) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text).strip())
    if not match:
        raise ValueError(f"unreadable quantity {text!r}")
    factor = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match.group(2)]
    return int(match.group(1)) * factor


def check_tiers(statefulset, container, mounts, config_text):
    """The disk tier's volume, the peers' headless Service and the autoscaler's target."""
    k8s = DEPLOY / "kubernetes"
    problems = []
    cache = (yaml.safe_load(config_text) or {}).get("cache") or {}
    disk = cache.get("disk")
    if disk:
        claims = {
            c["metadata"]["name"]: c for c in statefulset["spec"].get("volumeClaimTemplates", [])
        }
        inside = lambda mount: disk["path"].startswith(mount.rstrip("/") + "/")
        claim = next((claims[n] for n, path in mounts.items()
                      if inside(path) and n in claims), None)
        if claim is None:
            problems.append(f"cache.disk.path {disk['path']} is not a directory inside a volume "
                            "claim template's mount (the mount's root is readable by everyone; "
                            "ixproxy creates the directory 0700)")
        elif any(m["name"] == claim["metadata"]["name"] and m.get("readOnly")
                 for m in container["volumeMounts"]):
            problems.append(f"cache.disk.path {disk['path']} is mounted readOnly")
        else:
            size = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
            if size <= disk["max_bytes"]:
                problems.append(f"volume {claim['metadata']['name']} ({size} bytes) is not above "
                                f"cache.disk.max_bytes {disk['max_bytes']}")
        # The volume is root's when created: only fsGroup lets UID 65532 write it.
        security = statefulset["spec"]["template"]["spec"].get("securityContext") or {}
        if security.get("fsGroup") is None:
            problems.append("no fsGroup: the disk tier's volume is not writable by the pod's user")
    headless = documents(k8s / "service.yaml")["Service"]
    namespace = statefulset["metadata"]["namespace"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if statefulset["spec"].get("serviceName") != headless["metadata"]["name"]:
        problems.append("the StatefulSet's serviceName is not the headless Service of service.yaml")
    if headless["spec"].get("clusterIP") != "None" or not headless["spec"].get(
            "publishNotReadyAddresses"):
        problems.append("service.yaml: clusterIP None and publishNotReadyAddresses true needed")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in headless["spec"]["selector"].items()):
        problems.append("service.yaml does not select the StatefulSet's pods")
    peers = (cache.get("peers") or {}).get("dns")
    expected = f"{headless['metadata']['name']}.{namespace}.svc.cluster.local:{ports['admin']}"
    if peers is not None and peers != expected:
        problems.append(f"cache.peers.dns {peers} is not {expected}")
    hpa = documents(k8s / "horizontalpodautoscaler.yaml")["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("StatefulSet", statefulset["metadata"]["name"]):
        problems.append(f"the autoscaler scales {target['kind']}/{target['name']}")
    problems += network_policy_problems(statefulset, ports, labels)
    return problems


def admits(policy, peer_labels, port_name, port_number):
    """Whether one of the policy's ingress rules lets pods of this namespace labelled
    `peer_labels` reach `port_name` (or its number)."""
    for rule in policy["spec"].get("ingress") or []:
        peers = rule.get("from")
        peer_ok = peers is None or any(
            "namespaceSelector" not in peer and "ipBlock" not in peer and all(
                peer_labels.get(k) == v
                for k, v in (peer.get("podSelector") or {}).get("matchLabels", {}).items())
            for peer in peers)
        ports = rule.get("ports")
        port_ok = ports is None or any(p.get("port") in (port_name, port_number) for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def network_policy_problems(statefulset, ports, labels):
    """The replicas' NetworkPolicy: it selects them and lets the front reach the gateway port
    and the admin port (its health checks), and the other replicas the admin port (fleet
    purge)."""
    k8s = DEPLOY / "kubernetes"
    policies = [d for d in yaml.safe_load_all((k8s / "networkpolicy.yaml").read_text())
                if d and d["kind"] == "NetworkPolicy"]
    policy = next((p for p in policies if all(
        labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())),
        None)
    if policy is None:
        return ["networkpolicy.yaml: no NetworkPolicy selects the StatefulSet's pods"]
    front = documents(k8s / "front.yaml")["Deployment"]
    front_labels = front["spec"]["template"]["metadata"]["labels"]
    problems = []
    for who, peer_labels, port in [("the front", front_labels, "http"),
                                   ("the front", front_labels, "admin"),
                                   ("the other replicas", labels, "admin")]:
        if not admits(policy, peer_labels, port, ports[port]):
            problems.append(f"networkpolicy.yaml: {who} cannot reach the replicas' {port} port")
    return problems


def envoy_validate(envoy, name, text):
    """`envoy --mode validate` on `text`; a deprecated field fails too."""
    with tempfile.TemporaryDirectory(prefix="ixproxy-front-") as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(text)
        run = subprocess.run(
            [envoy, "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp,
        )
    log = run.stdout + run.stderr
    problem = None
    if run.returncode != 0 or "' OK" not in log:
        problem = log.strip().splitlines()[-1] if log.strip() else f"exit {run.returncode}"
    elif "Deprecated field" in log:
        problem = next(line for line in log.splitlines() if "Deprecated field" in line)
    report(f"envoy --mode validate {name}", problem)


def replicas_cluster(bootstrap):
    """The front's `replicas` cluster."""
    return next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "replicas")


def timing_problems(name, cluster, config_text):
    """A replica answers /readyz 503 for server.grace_period before closing its listener: the
    front's checks must take it off the hash table within that time. And the front closes an
    idle connection to a replica before the replica's client_idle_timeout does."""
    problems = []
    config = yaml.safe_load(config_text) or {}
    grace = grace_period(config_text)
    check = cluster["health_checks"][0]
    took = seconds(check["interval"]) * check["unhealthy_threshold"] + seconds(check["timeout"])
    if took >= grace:
        problems.append(f"{name}: a draining replica leaves the hash table after {took} s, not "
                        f"within server.grace_period {grace} s")
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    idle = seconds(options["common_http_protocol_options"]["idle_timeout"])
    replica_idle = seconds((config.get("limits") or {}).get("client_idle_timeout", "30s"))
    if idle >= replica_idle:
        problems.append(f"{name}: idle connections to a replica last {idle} s, the replica's "
                        f"client_idle_timeout {replica_idle} s")
    return problems


def replica_problems(name, bootstrap, config_text):
    """What the replicas behind a front must not count or refuse: connections per client
    (all come from the front's address, so a per-client limit refuses everyone at once) and
    heads the front lets through (the replica answers its own 431 or 414)."""
    problems = []
    limits = (yaml.safe_load(config_text) or {}).get("limits") or {}
    if limits.get("max_connections_per_client", 0) != 0:
        problems.append(f"{name}: the replicas' limits.max_connections_per_client must be 0 "
                        f"behind a front (every connection comes from its address)")
    replica_head = (limits.get("max_request_header_bytes", 32768)
                    + limits.get("max_request_target_bytes", 8192))
    headers_kb = listener_hcm(bootstrap)["max_request_headers_kb"]
    if not replica_head <= headers_kb * 1024 <= replica_head + 2048:
        problems.append(f"{name}: max_request_headers_kb {headers_kb} is not the replicas' "
                        f"header and target limits ({replica_head} bytes) plus at most 2 KiB")
    return problems


def listener_hcm(bootstrap, name="front"):
    """The connection manager of the listener `name`."""
    listener = next(l for l in bootstrap["static_resources"]["listeners"] if l["name"] == name)
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def hash_problems(bootstrap):
    """One origin URL, one replica: MAGLEV on the replicas' names, the path without its query,
    no panic mode, checks that never slow down, removed replicas off the table at once."""
    problems = []
    cluster = replicas_cluster(bootstrap)
    if cluster.get("lb_policy") != "MAGLEV":
        problems.append(f"lb_policy is {cluster.get('lb_policy')}, not MAGLEV")
    common = cluster.get("common_lb_config") or {}
    if not (common.get("consistent_hashing_lb_config") or {}).get("use_hostname_for_hashing"):
        problems.append("use_hostname_for_hashing is off: a replica's new IP would move its share")
    if (common.get("healthy_panic_threshold") or {}).get("value") != 0:
        problems.append("healthy_panic_threshold must be 0 (no requests to unhealthy replicas)")
    if not cluster.get("ignore_health_on_host_removal"):
        problems.append("ignore_health_on_host_removal must be true")
    check = cluster["health_checks"][0]
    for key, default in [("no_traffic_interval", "60s"), ("unhealthy_interval", "0s"),
                         ("no_traffic_healthy_interval", "0s")]:
        if seconds(check.get(key, default)) > seconds(check["interval"]):
            problems.append(f"{key} is above interval: checks slow down (a replica's return, "
                            f"or when idle)")
    routes = listener_hcm(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    expected = [{"header": {"header_name": ":path", "regex_rewrite": {
        "pattern": {"regex": "\\?.*$"}, "substitution": ""}}}]
    if any(r["route"].get("hash_policy") != expected for r in routes):
        problems.append("every route must hash on :path with its query removed (regex \\?.*$)")
    return problems


def edge_problems(bootstrap):
    """The front's client-side timeouts and HTTP/2 limits are those of the gateway's own Envoy
    listener (envoy/envoy.yaml), so the front holds a slow or idle client no longer."""
    gateway = yaml.safe_load((DEPLOY.parent / "envoy/envoy.yaml").read_text())
    ours, theirs = listener_hcm(bootstrap), listener_hcm(gateway, "ixproxy")
    problems = []
    for key in ["request_headers_timeout", "stream_idle_timeout", "stream_flush_timeout"]:
        if key not in ours or seconds(ours[key]) > seconds(theirs[key]):
            problems.append(f"{key} {ours.get(key)} is above envoy/envoy.yaml's {theirs[key]}")
    idle = ours.get("common_http_protocol_options", {}).get("idle_timeout")
    if idle is None or seconds(idle) > seconds(theirs["common_http_protocol_options"]["idle_timeout"]):
        problems.append(f"idle_timeout {idle} is above envoy/envoy.yaml's")
    if ours.get("http2_protocol_options") != theirs["http2_protocol_options"]:
        problems.append("http2_protocol_options differ from envoy/envoy.yaml's")
    return problems


def memory_problems(bootstrap, container):
    """Connections bounded (the probes' listener outside the bound), and the heap monitor with
    its actions at most 5/8 of the front container's memory limit (the rest: Envoy's code,
    stacks, freed pages not yet returned and what arrives between two readings;
    bench/front_memory.py measured 490 MiB for 320 MiB)."""
    problems = []
    overload = bootstrap.get("overload_manager") or {}
    monitors = {m["name"]: m["typed_config"] for m in overload.get("resource_monitors") or []}
    if "max_active_downstream_connections" not in monitors.get(
            "envoy.resource_monitors.global_downstream_max_connections", {}):
        problems.append("no global_downstream_max_connections monitor")
    heap = monitors.get("envoy.resource_monitors.fixed_heap", {}).get("max_heap_size_bytes")
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    if heap is None:
        problems.append("no fixed_heap monitor")
    elif int(heap) * 8 > limit * 5:
        problems.append(f"fixed_heap max_heap_size_bytes {heap} is above 5/8 of the container's "
                        f"memory limit {limit}")
    metrics = next(l for l in bootstrap["static_resources"]["listeners"] if l["name"] == "metrics")
    if not metrics.get("ignore_global_conn_limit"):
        problems.append("the metrics listener counts against the connection limit: a client "
                        "holding every connection fails the kubelet's probes")
    triggered = {a["name"] for a in overload.get("actions") or []
                 if any(t["name"] == "envoy.resource_monitors.fixed_heap" for t in a["triggers"])}
    for action in ["shrink_heap", "reset_high_memory_stream", "stop_accepting_requests"]:
        if f"envoy.overload_actions.{action}" not in triggered:
            problems.append(f"no {action} on the heap monitor")
    return problems


def check_front(envoy):
    """The standalone front and the Kubernetes one: valid, alike, and matching the fleet."""
    k8s = DEPLOY / "kubernetes"
    standalone_text = (DEPLOY / "front/envoy-front.yaml").read_text()
    front_docs = documents(k8s / "front.yaml")
    embedded_text = next(iter(front_docs["ConfigMap"]["data"].values()))
    envoy_validate(envoy, "front/envoy-front.yaml", standalone_text)
    envoy_validate(envoy, "kubernetes/front.yaml (envoy.yaml)", embedded_text)

    try:
        standalone = yaml.safe_load(standalone_text)
        embedded = yaml.safe_load(embedded_text)
    except yaml.YAMLError as e:
        report("front: Kubernetes and standalone fronts agree with the StatefulSet", str(e))
        return
    problems = []
    endpoints = replicas_cluster(embedded).pop("load_assignment")
    replicas_cluster(standalone).pop("load_assignment")
    if standalone != embedded:
        problems.append("kubernetes/front.yaml's Envoy config differs from front/envoy-front.yaml "
                        "beyond the replicas' endpoints")

    statefulset = documents(k8s / "statefulset.yaml")["StatefulSet"]
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    hpa = documents(k8s / "horizontalpodautoscaler.yaml")["HorizontalPodAutoscaler"]
    name = statefulset["metadata"]["name"]
    domain = (f"{statefulset['spec']['serviceName']}."
              f"{statefulset['metadata']['namespace']}.svc.cluster.local")
    expected = [
        {"hostname": f"{name}-{n}",
         "address": {"socket_address": {"address": f"{name}-{n}.{domain}",
                                        "port_value": ports["http"]}},
         "health_check_config": {"port_value": ports["admin"]}}
        for n in range(hpa["spec"]["maxReplicas"])
    ]
    listed = [e["endpoint"] for group in endpoints["endpoints"] for e in group["lb_endpoints"]]
    if listed != expected:
        problems.append(f"kubernetes/front.yaml must list {name}-0 .. {name}-"
                        f"{hpa['spec']['maxReplicas'] - 1} on {domain} (the autoscaler's "
                        f"maxReplicas), gateway port {ports['http']}, checks on {ports['admin']}")
    probe = container["readinessProbe"]["httpGet"]["path"]
    check_path = replicas_cluster(embedded)["health_checks"][0]["http_health_check"]["path"]
    if check_path != probe:
        problems.append(f"the front checks {check_path}, the replicas are ready on {probe}")
    config_text = next(iter(documents(k8s / "configmap.yaml")["ConfigMap"]["data"].values()))
    for label, bootstrap, replica_config in [
        ("kubernetes/front.yaml", embedded, config_text),
        ("front/envoy-front.yaml", standalone, (DEPLOY / "docker/ixproxy.yaml").read_text()),
    ]:
        problems += timing_problems(label, replicas_cluster(bootstrap), replica_config)
        problems += replica_problems(label, bootstrap, replica_config)
    # The two are equal but for the endpoints (checked above): the rest is checked once.
    problems += hash_problems(standalone) + edge_problems(standalone)
    # The Kubernetes replicas sit behind the front only (NetworkPolicy): their access log must
    # believe it. (The Docker config also serves without a front, trusting no one.)
    if not (yaml.safe_load(config_text) or {}).get("trusted_proxies"):
        problems.append("configmap.yaml: trusted_proxies must list the front's addresses")
    problems += memory_problems(standalone, front_docs["Deployment"]["spec"]["template"]["spec"][
        "containers"][0])
    report("front: Kubernetes and standalone fronts agree with the StatefulSet", "; ".join(problems))


def check_systemd(binary):
    """The unit's example config, and the unit's stop timeout and credentials."""
    config_text = (DEPLOY / "systemd/ixproxy.yaml").read_text()
    ixproxy_check(binary, "systemd/ixproxy.yaml", config_text)
    unit = (DEPLOY / "systemd/ixproxy.service").read_text()
    settings = re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE)
    problems = []
    stop = [value for key, value in settings if key == "TimeoutStopSec"]
    needed = 2 * grace_period(config_text) + SHUTDOWN_SECONDS
    if not stop or seconds(stop[-1]) <= needed:
        problems.append(f"TimeoutStopSec must exceed 2 x grace_period + {SHUTDOWN_SECONDS} s")
    credentials = {value.split(":", 1)[0] for key, value in settings if key == "LoadCredential"}
    for path in FILE_SECRET.findall(config_text):
        directory, _, name = path.rpartition("/")
        if directory != "/run/credentials/ixproxy.service" or name not in credentials:
            problems.append(f"{{file: {path}}} is not a LoadCredential= of the unit")
    report("systemd: unit and config agree", "; ".join(problems))


# The line `ixproxy serve` prints once both listeners are bound.
SERVE_LINE = re.compile(r"^ixproxy: gateway on http://(\S+), admin on http://(\S+) ")
# How long the sandboxed gateway may take to start, and to stop after SIGTERM.
SERVE_TIMEOUT = 15
# The image's user (distroless "nonroot").
IMAGE_UID = 65532


def check_read_only_root(binary):
    """The Docker config served as the image runs it: UID 65532, read-only root, tmpfs /tmp."""
    name = f"docker/ixproxy.yaml served as UID {IMAGE_UID}, read-only root, tmpfs /tmp"
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        print(f"skip {name}: needs root and util-linux's unshare and setpriv")
        return
    # Staged outside /tmp, which the sandbox replaces by an empty tmpfs (the checkout itself may
    # be under /tmp): /var/tmp when it is there, else beside the binary.
    var_tmp = Path("/var/tmp")
    work = var_tmp if var_tmp.is_dir() and os.access(var_tmp, os.W_OK) else Path(binary).parent
    if str(work.resolve()).startswith("/tmp/"):
        print(f"skip {name}: no staging directory outside /tmp")
        return
    with tempfile.TemporaryDirectory(prefix="ixproxy-readonly-", dir=work) as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        binary = str(shutil.copy2(Path(binary).resolve(), root / "ixproxy"))
        os.chmod(binary, 0o755)

        def placeholder(match):
            path = root / match.group(1).lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
            path.write_text(PLACEHOLDER + "\n")
            path.chmod(0o644)
            return "{file: " + str(path) + "}"

        text = FILE_SECRET.sub(placeholder, (DEPLOY / "docker/ixproxy.yaml").read_text())
        text = re.sub(r"(?m)^listen: .*$", "listen: 127.0.0.1:0", text)
        text = re.sub(r"(?m)^admin_listen: .*$", "admin_listen: 127.0.0.1:0", text)
        text = re.sub(r"(?m)^(\s+grace_period:) .*$", r"\1 1s", text)
        config = root / "ixproxy.yaml"
        config.write_text(text)
        config.chmod(0o644)
        script = (
            "mount --bind -o ro / / && mount -t tmpfs -o mode=1777 tmpfs /tmp && "
            f"exec setpriv --reuid={IMAGE_UID} --regid={IMAGE_UID} --clear-groups -- "
            f'"{binary}" serve -c "{config}"'
        )
        # unshare and sh exec into the gateway, so this pid is the gateway's.
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = queue.Queue()
        log = []

        def read():
            for line in proc.stderr:
                log.append(line.rstrip())
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        problem = None
        try:
            admin = None
            while admin is None:
                line = lines.get(timeout=SERVE_TIMEOUT)
                if line is None:
                    raise RuntimeError("exited before serving")
                match = SERVE_LINE.match(line)
                admin = match and match.group(2)
            probe = subprocess.run(
                [binary, "healthcheck", "--admin", admin],
                capture_output=True,
                text=True,
                timeout=SERVE_TIMEOUT,
                check=False,
            )
            if probe.returncode != 0:
                raise RuntimeError(probe.stderr.strip())
            written = os.listdir(f"/proc/{proc.pid}/root/tmp")
            if written:
                raise RuntimeError(f"wrote into /tmp: {written}")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=SERVE_TIMEOUT)
            if code != 0:
                raise RuntimeError(f"exit code {code} after SIGTERM")
        except (RuntimeError, queue.Empty, subprocess.TimeoutExpired) as e:
            problem = f"{e or 'timed out'}; log: {' | '.join(log[-5:])}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        report(name, problem)


def main():
    binary = sys.argv[1]
    envoy = sys.argv[2]
    ixproxy_check(binary, "docker/ixproxy.yaml", (DEPLOY / "docker/ixproxy.yaml").read_text())
    check_read_only_root(binary)
    check_systemd(binary)
    check_kubernetes(binary)
    check_front(envoy)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
