"""deploy/, checked offline (no cluster, no Docker, no network).

- Every Kubernetes manifest validates against the official Kubernetes JSON schemas bundled in
  `kubernetes-validate` (strict: unknown fields are errors), for the oldest and the newest
  Kubernetes version the package knows. The ServiceMonitor, a CRD outside those schemas, is
  checked by hand.
- The pieces fit together: probes, ports, selectors, the ConfigMap's config (a valid gateway
  config with the Secret's variables), the grace periods, the security context, HPA and PDB.
- The compose stack: two gateways built from the Dockerfile sharing Redis, Prometheus scraping
  them, Grafana provisioned with the dashboard; every file it mounts exists.
- The Grafana dashboard asks only for metrics and labels of the SPEC's metrics table, and those
  metrics are registered in `gateway.metrics.REGISTRY`: what the gateway really exports.
"""

from __future__ import annotations

import base64
import functools
import json
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import GatewayConfig, parse_config
from gateway.providers.registry import provider_type

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"

NAMESPACE = "llm-gateway"
GATEWAY = "llm-gateway"  # the Deployment, Service, HPA and PDB
# Kinds outside the core schemas: not applied by the kustomization, checked structurally here.
CRD_FILES = {"servicemonitor.yaml"}

# SPEC.md, "Metrics": the contract. name → (type, labels)
SPEC_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "gateway_requests_total": ("counter", frozenset({"tier", "model", "feature", "status"})),
    "gateway_request_duration_seconds": ("histogram", frozenset({"tier", "model", "stream"})),
    "gateway_time_to_first_token_seconds": ("histogram", frozenset({"tier", "model"})),
    "gateway_overhead_seconds": ("histogram", frozenset({"stream"})),
    "gateway_tokens_total": ("counter", frozenset({"feature", "model", "kind"})),
    "gateway_cost_usd_total": ("counter", frozenset({"feature", "model"})),
    "gateway_fallbacks_total": ("counter", frozenset({"tier", "from_model", "to_model", "reason"})),
    "gateway_upstream_errors_total": ("counter", frozenset({"provider", "model", "reason"})),
    "gateway_rate_limited_total": ("counter", frozenset({"plan", "limit"})),
    "gateway_in_flight_requests": ("gauge", frozenset({"tier"})),
    "gateway_model_available": ("gauge", frozenset({"model"})),
    "gateway_config_reloads_total": ("counter", frozenset({"result"})),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
TARGET_LABELS = frozenset({"instance", "job"})  # added by Prometheus to every scraped series


# --- helpers --------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every document under deploy/kubernetes, parsed once: don't modify them, copy first."""
    return [(path, doc) for path in manifest_files() for doc in yaml_documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/kubernetes, got {len(found)}"
    return found[0]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def gateway_container() -> dict[str, Any]:
    containers = pod_spec(find("Deployment", GATEWAY))["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]]
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return int(named[0])


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def gateway_pod_env() -> dict[str, str]:
    """The environment the gateway container gets: literal env, envFrom and secretKeyRef."""
    container = gateway_container()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "secretRef" in source, "config comes from the ConfigMap file, keys from Secrets"
        env.update(secret_values(find("Secret", source["secretRef"]["name"])))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            values = secret_values(find("Secret", ref["name"]))
            assert ref["key"] in values, f"env {item['name']}: Secret has no key {ref['key']!r}"
            env[item["name"]] = values[ref["key"]]
    return env


def config_path_in_pod() -> str:
    env = {e["name"]: e.get("value") for e in gateway_container().get("env", [])}
    path = env.get("GATEWAY_CONFIG")
    assert path, "GATEWAY_CONFIG must name the mounted config file"
    return str(path)


def configmap_config_text() -> str:
    configmap = find("ConfigMap", "llm-gateway-config")
    text: str = configmap["data"][posixpath.basename(config_path_in_pod())]
    return text


def cluster_config() -> GatewayConfig:
    return parse_config(configmap_config_text(), env=gateway_pod_env())


def required_variables(config_text: str) -> set[str]:
    """`${VAR}` without a default: the config cannot load unless they are set."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config_text))


def mount_covering(mounts: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    for mount in mounts:
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount
    return None


def prestop_sleep_seconds(container: dict[str, Any]) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


# --- Kubernetes: schemas and kustomization ----------------------------------------------------


def kubernetes_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    versions = all_versions()  # sorted oldest first
    return list(dict.fromkeys([versions[0], versions[-1]]))


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    checked = 0
    for path, doc in manifests():
        if path.name in CRD_FILES:
            continue
        for version in kubernetes_versions():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{path.name}: {doc['kind']} {doc['metadata']['name']}, "
                    f"Kubernetes {version}: {where}: {exc.message}"
                )
            except SchemaNotFoundError as exc:
                pytest.fail(f"{path.name}: {exc.message}")
            checked += 1
    assert checked >= 9 * len(kubernetes_versions())


def test_the_schema_check_catches_a_misspelt_field() -> None:
    import kubernetes_validate

    deployment = json.loads(json.dumps(find("Deployment", GATEWAY)))
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_versions()[-1], strict=True)


def test_servicemonitor_scrapes_the_gateway_service_on_metrics() -> None:
    (path,) = [K8S / name for name in CRD_FILES]
    (monitor,) = yaml_documents(path)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    service = find("Service", GATEWAY)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    # /metrics is on the main port only while metrics_port is unset.
    assert cluster_config().server.metrics_port is None


def test_kustomization_lists_every_manifest_and_sets_the_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    expected = {p.name for p in manifest_files()} - CRD_FILES
    assert set(listed) == expected
    assert find("Namespace", NAMESPACE)
    for path, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {doc['kind']}"


# --- Kubernetes: the pieces fit together -------------------------------------------------------


def test_configmap_holds_a_valid_gateway_config_with_redis_limits() -> None:
    config = cluster_config()  # raises ConfigError listing every problem
    assert config.limits.backend == "redis"
    assert config.usage.sinks.redis is True
    assert config.usage.features
    assert config.server.host == "0.0.0.0"
    assert config.server.shutdown_grace_s == 30


def test_every_variable_the_config_needs_comes_from_the_secret_or_env() -> None:
    env = gateway_pod_env()
    missing = required_variables(configmap_config_text()) - set(env)
    assert not missing, f"the config needs {sorted(missing)}, which the pod does not get"
    secret = secret_values(find("Secret", "llm-gateway-keys"))
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert name in secret, f"{name}: provider keys belong in the Secret"
    # Secrets never sit in the ConfigMap or in the Deployment's literal env.
    literal_env = {e["name"] for e in gateway_container().get("env", []) if "value" in e}
    assert not literal_env & set(secret)


def test_redis_url_reaches_the_redis_service() -> None:
    config = cluster_config()
    if "REDIS_URL" in gateway_pod_env():
        pytest.skip("REDIS_URL is set: an external Redis")
    url = config.limits.redis_url
    match = re.fullmatch(r"redis://([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)/\d+", url)
    assert match, url
    service = find("Service", match.group(1))
    assert int(match.group(2)) in [p["port"] for p in service["spec"]["ports"]]
    redis = find("Deployment", match.group(1))
    assert selects(service["spec"]["selector"], pod_labels(redis))
    assert redis["spec"]["replicas"] == 1, "limits must be counted in one Redis"
    assert pod_spec(redis)["containers"][0]["image"].startswith("redis:")


def test_configmap_is_mounted_as_a_directory_where_gateway_config_points() -> None:
    container = gateway_container()
    path = config_path_in_pod()
    mount = mount_covering(container["volumeMounts"], path)
    assert mount is not None, f"GATEWAY_CONFIG={path} is not inside any volume mount"
    assert "subPath" not in mount and "subPathExpr" not in mount, (
        "a subPath mount never sees ConfigMap updates, so the config would not reload"
    )
    assert posixpath.dirname(path) == mount["mountPath"].rstrip("/")
    (volume,) = [
        v for v in pod_spec(find("Deployment", GATEWAY))["volumes"] if v["name"] == mount["name"]
    ]
    assert volume["configMap"]["name"] == "llm-gateway-config"
    assert "items" not in volume["configMap"]
    assert "--config" not in container.get("args", []) + container.get("command", [])


def test_probes_ask_readyz_and_healthz_on_the_gateway_port() -> None:
    container = gateway_container()
    port = cluster_config().server.port
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert container_port(container, readiness["port"]) == port
    assert container["readinessProbe"]["periodSeconds"] <= 5
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert container_port(container, liveness["port"]) == port
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_termination_grace_covers_the_prestop_pause_and_the_drain() -> None:
    container = gateway_container()
    grace = pod_spec(find("Deployment", GATEWAY))["terminationGracePeriodSeconds"]
    pause = prestop_sleep_seconds(container)
    drain = cluster_config().server.shutdown_grace_s
    assert 1 <= pause <= 15
    assert grace > pause + drain, (
        f"terminationGracePeriodSeconds {grace} must exceed the preStop pause {pause} plus "
        f"server.shutdown_grace_s {drain}, or streams are killed mid-drain"
    )


def test_gateway_runs_as_non_root_on_a_read_only_root() -> None:
    spec = pod_spec(find("Deployment", GATEWAY))
    container = gateway_container()
    pod_security, security = spec["securityContext"], container["securityContext"]
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
    assert security.get("runAsUser", pod_security.get("runAsUser")) == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile"))
    assert seccomp == {"type": "RuntimeDefault"}
    assert spec.get("automountServiceAccountToken") is False
    # Whatever the gateway writes goes to a writable volume.
    jsonl = cluster_config().usage.sinks.jsonl
    if jsonl is not None:
        mount = mount_covering(container["volumeMounts"], jsonl)
        assert mount is not None and not mount.get("readOnly"), jsonl
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume


def test_gateway_has_requests_and_limits() -> None:
    resources = gateway_container()["resources"]
    quantity = re.compile(r"\d+(\.\d+)?(m|k|M|G|Ki|Mi|Gi)?")  # the schema takes any string
    for kind in ("cpu", "memory"):
        for bound in ("requests", "limits"):
            assert quantity.fullmatch(str(resources[bound][kind])), (bound, kind)
    assert resources["requests"]["memory"] == "128Mi"
    assert resources["limits"]["memory"] == "256Mi"


def test_image_and_port() -> None:
    container = gateway_container()
    assert container["image"] == "llm-gateway:latest"
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert port["containerPort"] == cluster_config().server.port == 8080


def test_service_selects_the_gateway_pods_and_targets_their_port() -> None:
    deployment, service = find("Deployment", GATEWAY), find("Service", GATEWAY)
    selector = service["spec"]["selector"]
    assert selects(selector, pod_labels(deployment))
    assert not selects(selector, pod_labels(find("Deployment", "redis")))
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == 80
    assert container_port(gateway_container(), port["targetPort"]) == 8080


def test_hpa_scales_the_gateway_deployment_on_cpu() -> None:
    hpa = find("HorizontalPodAutoscaler", GATEWAY)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": GATEWAY,
    }
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] == 10
    resources = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert [r["name"] for r in resources] == ["cpu"]
    # Utilization is relative to the request: without one the HPA cannot compute it.
    assert "cpu" in gateway_container()["resources"]["requests"]
    # The HPA owns the replica count; a count in the Deployment would reset it on each apply.
    assert "replicas" not in find("Deployment", GATEWAY)["spec"]


def test_pdb_covers_the_gateway_pods_and_allows_a_drain() -> None:
    pdb = find("PodDisruptionBudget", GATEWAY)
    deployment = find("Deployment", GATEWAY)
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels(deployment))
    assert not selects(selector, pod_labels(find("Deployment", "redis")))
    min_replicas = find("HorizontalPodAutoscaler", GATEWAY)["spec"]["minReplicas"]
    if "minAvailable" in pdb["spec"]:
        assert 1 <= pdb["spec"]["minAvailable"] < min_replicas
    else:
        assert pdb["spec"]["maxUnavailable"] == 1


def test_prometheus_kubernetes_scrape_config_finds_the_gateway_pods() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert sd["namespaces"]["names"] == [NAMESPACE]
    labels = pod_labels(find("Deployment", GATEWAY))
    annotations = find("Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    keep = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    meta_label = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    assert re.fullmatch(keep[meta_label], labels["app.kubernetes.io/name"])
    assert re.fullmatch(
        keep["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
        annotations["prometheus.io/scrape"],
    )
    port_names = [p["name"] for p in gateway_container()["ports"]]
    assert any(
        re.fullmatch(keep["__meta_kubernetes_pod_container_port_name"], n) for n in port_names
    )
    assert annotations["prometheus.io/path"] == "/metrics"


# --- compose ----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def gateway_services() -> dict[str, dict[str, Any]]:
    """Services built from the repo's Dockerfile that run the gateway (not the load generator)."""
    services = compose()["services"]
    return {
        name: service
        for name, service in services.items()
        if "build" in service and "entrypoint" not in service and "profiles" not in service
    }


def host_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) per published port, short syntax."""
    out = []
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        address = parts[0] if len(parts) == 3 else "0.0.0.0"
        out.append((address, int(parts[-2]), int(parts[-1])))
    return out


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((DEPLOY / source).resolve(), target))
    return out


def compose_gateway_config(service: dict[str, Any]) -> tuple[GatewayConfig, str]:
    command = service["command"]
    path = (
        command[command.index("--config") + 1]
        if "--config" in command
        else ("/etc/gateway/config.yaml")
    )
    for source, target in bind_mounts(service):
        if path == target:
            return parse_config(source.read_text(), env=service.get("environment", {})), path
        if path.startswith(target.rstrip("/") + "/"):
            file = source / path[len(target.rstrip("/")) + 1 :]
            return parse_config(file.read_text(), env=service.get("environment", {})), path
    raise AssertionError(f"{path}: not mounted into the gateway container")


# The Compose Specification's service keys: a misspelt key (`depend_on`) is otherwise ignored.
COMPOSE_SERVICE_KEYS = frozenset(
    {
        "annotations",
        "attach",
        "blkio_config",
        "build",
        "cap_add",
        "cap_drop",
        "cgroup",
        "cgroup_parent",
        "command",
        "configs",
        "container_name",
        "cpu_count",
        "cpu_percent",
        "cpu_period",
        "cpu_quota",
        "cpu_rt_period",
        "cpu_rt_runtime",
        "cpu_shares",
        "cpus",
        "cpuset",
        "credential_spec",
        "depends_on",
        "deploy",
        "develop",
        "device_cgroup_rules",
        "devices",
        "dns",
        "dns_opt",
        "dns_search",
        "domainname",
        "driver_opts",
        "entrypoint",
        "env_file",
        "environment",
        "expose",
        "extends",
        "external_links",
        "extra_hosts",
        "gpus",
        "group_add",
        "healthcheck",
        "hostname",
        "image",
        "init",
        "ipc",
        "isolation",
        "labels",
        "links",
        "logging",
        "mac_address",
        "mem_limit",
        "mem_reservation",
        "mem_swappiness",
        "memswap_limit",
        "network_mode",
        "networks",
        "oom_kill_disable",
        "oom_score_adj",
        "pid",
        "pids_limit",
        "platform",
        "ports",
        "post_start",
        "pre_stop",
        "privileged",
        "profiles",
        "pull_policy",
        "read_only",
        "restart",
        "runtime",
        "scale",
        "secrets",
        "security_opt",
        "shm_size",
        "stdin_open",
        "stop_grace_period",
        "stop_signal",
        "storage_opt",
        "sysctls",
        "tmpfs",
        "tty",
        "ulimits",
        "user",
        "userns_mode",
        "uts",
        "volumes",
        "volumes_from",
        "working_dir",
    }
)
COMPOSE_TOP_KEYS = frozenset(
    {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
)
HEALTHCHECK_KEYS = frozenset(
    {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
)


def test_compose_uses_only_compose_spec_keys() -> None:
    data = compose()
    assert "version" not in data, "the top-level version key is obsolete"
    assert {k for k in data if not k.startswith("x-")} <= COMPOSE_TOP_KEYS
    named_volumes = set(data.get("volumes") or {})
    for name, service in data["services"].items():
        unknown = set(service) - COMPOSE_SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {sorted(unknown)}"
        assert "image" in service or "build" in service, name
        assert set(service.get("healthcheck", {})) <= HEALTHCHECK_KEYS, name
        for dependency in service.get("depends_on", []):
            assert dependency in data["services"], f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named_volumes, f"{name}: volume {source} is not declared"


def test_compose_runs_two_gateways_built_from_the_dockerfile() -> None:
    services = gateway_services()
    assert sorted(services) == ["gateway-1", "gateway-2"]
    for name, service in services.items():
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert service["command"][0] == "serve"
        depends = service["depends_on"]
        assert "redis" in depends, f"{name} must depend on redis"
        if isinstance(depends, dict):
            assert depends["redis"]["condition"] == "service_healthy"
        assert service["read_only"] is True
        assert "healthcheck" in service


def test_compose_publishes_distinct_host_ports() -> None:
    published = [
        (address, port)
        for service in compose()["services"].values()
        for address, port, _ in host_ports(service)
    ]
    assert len(published) == len(set(published)), published
    gateway_ports = [port for s in gateway_services().values() for _, port, _ in host_ports(s)]
    assert len(gateway_ports) == len(set(gateway_ports)) == 2


def test_compose_gateway_config_is_valid_mock_only_and_shares_redis() -> None:
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:")
    assert "healthcheck" in services["redis"]
    for name, service in gateway_services().items():
        config, _ = compose_gateway_config(service)
        assert {provider_type(p) for p in config.providers.values()} == {"mock"}, (
            "no API keys needed"
        )
        assert config.limits.backend == "redis"
        host = re.fullmatch(r"redis://([a-z0-9-]+):6379/\d+", config.limits.redis_url)
        assert host and host.group(1) in services, config.limits.redis_url
        assert config.usage.sinks.redis is True
        assert config.usage.features
        assert [c for _, _, c in host_ports(service)] == [config.server.port]
        # A read-only container: the only file the gateway writes lives on a tmpfs.
        if config.usage.sinks.jsonl is not None:
            tmpfs = service["tmpfs"]
            jsonl_dir = posixpath.dirname(config.usage.sinks.jsonl)
            assert jsonl_dir in tmpfs, f"{name}: {jsonl_dir} must be a tmpfs"
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace and int(grace.group(1)) > config.server.shutdown_grace_s


def test_compose_config_is_mounted_as_a_directory_so_edits_reload() -> None:
    for service in gateway_services().values():
        _, path = compose_gateway_config(service)
        targets = [target for _, target in bind_mounts(service)]
        assert posixpath.dirname(path) in targets


def test_every_file_compose_mounts_exists() -> None:
    for name, service in compose()["services"].items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_compose_prometheus_scrapes_both_gateways() -> None:
    prometheus = compose()["services"]["prometheus"]
    config_flag = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    (config_path,) = [a.split("=", 1)[1] for a in config_flag]
    (source,) = [s for s, t in bind_mounts(prometheus) if t == config_path]
    config = yaml.safe_load(source.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
        if job.get("metrics_path", "/metrics") == "/metrics"
    }
    for name, service in gateway_services().items():
        port = compose_gateway_config(service)[0].server.port
        assert port == 8080
        assert f"{name}:{port}" in targets


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", datasource["url"])
    assert match and match.group(1) in services
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "gateway.yaml").read_text())[
        "providers"
    ]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_readme_names_only_files_that_exist() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "kubectl apply -k deploy/kubernetes" in text
    assert "docker compose -f deploy/compose.yaml" in text
    for path in re.findall(r"deploy/[\w./-]*[\w/]", text):
        assert (ROOT / path).exists(), f"deploy/README.md mentions {path}, which does not exist"


# --- the Grafana dashboard ----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel query and every query variable."""
    for panel in panels():
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"${variable['name']}", query["query"] if isinstance(query, dict) else query


METRIC = re.compile(r"\bgateway_[a-z0-9_]+\b")


def base_metric(name: str) -> str:
    """`gateway_x_seconds_bucket` → `gateway_x_seconds` for SPEC histograms; else the name."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and SPEC_METRICS.get(base, ("",))[0] == "histogram":
            return base
    return name


def dashboard_metric_names() -> set[str]:
    return {name for _, expr in expressions() for name in METRIC.findall(expr)}


def test_dashboard_queries_name_only_metrics_of_the_spec() -> None:
    for where, expr in expressions():
        names = METRIC.findall(expr)
        assert names, f"{where}: {expr!r} asks for no gateway metric"
        for name in names:
            base = base_metric(name)
            assert base in SPEC_METRICS, f"{where}: {name} is not in SPEC.md's metrics table"
            kind = SPEC_METRICS[base][0]
            if kind == "histogram":
                assert name != base, f"{where}: a histogram is queried as _bucket, _sum or _count"


def test_dashboard_queries_use_only_the_metrics_labels() -> None:
    selector = re.compile(r"\b(gateway_[a-z0-9_]+)\{([^}]*)\}")
    matcher = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
    grouping = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
    for panel in panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            allowed: set[str] = set(TARGET_LABELS)
            for name in METRIC.findall(expr):
                allowed |= SPEC_METRICS[base_metric(name)][1]
                if name.endswith("_bucket"):
                    allowed.add("le")
            for name, matchers in selector.findall(expr):
                labels = set(matcher.findall(matchers))
                extra = labels - SPEC_METRICS[base_metric(name)][1] - TARGET_LABELS
                assert not extra, f"{panel['title']}: {name} has no label {sorted(extra)}"
            for group in grouping.findall(expr):
                labels = {label.strip() for label in group.split(",") if label.strip()}
                assert labels <= allowed, f"{panel['title']}: by ({group}) in {expr!r}"
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= allowed, f"{panel['title']}: legend {target['legendFormat']!r}"


def test_dashboard_has_panels_for_what_ops_look_at() -> None:
    def has(predicate: Any) -> bool:
        return any(predicate(t["expr"]) for p in panels() for t in p.get("targets", []))

    wanted = {
        "requests": lambda e: "gateway_requests_total" in e and "status" in e,
        "errors": lambda e: "gateway_requests_total" in e and '"5..' in e,
        "upstream errors": lambda e: "gateway_upstream_errors_total" in e,
        "fallbacks": lambda e: "gateway_fallbacks_total" in e and "reason" in e,
        "TTFT": lambda e: (
            "histogram_quantile" in e and "gateway_time_to_first_token_seconds_bucket" in e
        ),
        "request duration": lambda e: "gateway_request_duration_seconds_bucket" in e,
        "overhead p99": lambda e: (
            "histogram_quantile(0.99" in e and "gateway_overhead_seconds_bucket" in e
        ),
        "tokens per feature": lambda e: (
            "gateway_tokens_total" in e and re.search(r"by \([^)]*feature", e)
        ),
        "cost per feature": lambda e: (
            "gateway_cost_usd_total" in e and re.search(r"by \([^)]*feature", e)
        ),
        "in flight": lambda e: "gateway_in_flight_requests" in e,
        "model availability": lambda e: "gateway_model_available" in e,
        "rate limited": lambda e: "gateway_rate_limited_total" in e,
        "config reloads": lambda e: "gateway_config_reloads_total" in e,
    }
    missing = [what for what, predicate in wanted.items() if not has(predicate)]
    assert not missing, f"the dashboard has no panel for {missing}"


def test_dashboard_is_well_formed_for_grafana() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    builtins = {"__rate_interval", "__interval", "__range"}
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= variables | builtins, f"{panel['title']}: {used - variables - builtins}"


def test_dashboard_metrics_are_registered_by_the_gateway() -> None:
    """The dashboard's metrics exist in the process's registry with the labels it uses:
    what /metrics really serves, not only what the SPEC promises."""
    import gateway.metrics
    from gateway.metrics import REGISTRY, Collector

    exported: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            exported.add(family.name + "_total")
        elif family.type == "histogram":
            exported.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            exported.add(family.name)
    missing = sorted(dashboard_metric_names() - exported)
    assert not missing, f"the dashboard asks for metrics the gateway does not export: {missing}"

    registered_labels: dict[str, set[str]] = {}
    for collector in vars(gateway.metrics).values():
        if isinstance(collector, Collector):
            registered_labels[collector.name] = set(collector.labelnames)
    for name in {base_metric(n) for n in dashboard_metric_names()}:
        assert registered_labels.get(name) == set(SPEC_METRICS[name][1]), (
            f"{name}: the gateway registers labels {sorted(registered_labels.get(name, []))}, "
            f"the SPEC says {sorted(SPEC_METRICS[name][1])}"
        )
