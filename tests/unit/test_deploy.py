"""Offline checks of everything under deploy/ and the Dockerfile: files parse, dashboards and alerts
only name metrics that hookstream/core/metrics.py registers, containers only get variables that
Settings.from_env knows (with values it accepts), Kubernetes manifests carry what production needs
(resources, probes, non-root with a read-only root and an emptyDir /tmp, migrations and topics as
init steps, one scrape per pod through a PodMonitor, scrape jobs named as the alerts select them), topics are created only by `hookstream topics` from hookstream/core/topics.py, and
every image is pinned. No Docker engine or cluster needed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import hookstream.core.metrics  # noqa: F401  (registers hookstream's collectors in REGISTRY)
from hookstream.core.settings import VARIABLES, Settings
from hookstream.core.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hookstream.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
K8S_FILES = sorted(K8S.glob("*.yaml"))
METRIC_NAME_RE = re.compile(r"\bhookstream_[a-z0-9_]+\b")
# Images built from this repository (compose builds it; Kubernetes pulls it from a registry).
HOOKSTREAM_IMAGE_RE = re.compile(r"(^|/)hookstream:")


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object the manifests create in the cluster (kustomization.yaml is kubectl's, not one)."""
    for path in K8S_FILES:
        for doc in load_yaml_documents(path):
            if doc.get("kind") != "Kustomization":
                yield path, doc


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name} under deploy/k8s, found {len(found)}"
    return found[0]


def exposed_metric_names() -> set[str]:
    """Every sample name hookstream's collectors expose, as a PromQL query would name them."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("hookstream_"):
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def settings_variables() -> set[str]:
    """Variable names Settings.from_env reads: the env names of settings.VARIABLES."""
    return {variable.env for variable in VARIABLES}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def hookstream_compose_services() -> dict[str, dict[str, Any]]:
    services = load_yaml_documents(COMPOSE)[0]["services"]
    return {name: svc for name, svc in services.items() if HOOKSTREAM_IMAGE_RE.search(svc.get("image", ""))}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def workloads() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, obj) for path, obj in k8s_objects() if obj["kind"] in ("Deployment", "Job")]


def all_promql_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [rule["expr"] for group in load_yaml_documents(ALERTS)[0]["groups"] for rule in group["rules"]]
    return exprs


# ---- every file parses ----------------------------------------------------------------------------


def test_deploy_has_yaml_files() -> None:
    assert COMPOSE in YAML_FILES and ALERTS in YAML_FILES and len(K8S_FILES) >= 9


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    docs = load_yaml_documents(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


# ---- metrics: the dashboard and the alerts name only metrics that exist ----------------------------


def test_metric_registry_is_what_the_contract_promises() -> None:
    names = exposed_metric_names()
    for required in ("hookstream_events_consumed_total", "hookstream_events_rejected_total",
                     "hookstream_delivery_attempts_total", "hookstream_delivery_attempt_duration_seconds_bucket",
                     "hookstream_delivery_latency_seconds_bucket", "hookstream_inflight_deliveries"):
        assert required in names


def test_dashboard_and_alerts_name_only_registered_metrics() -> None:
    known = exposed_metric_names()
    used = {name for expr in all_promql_expressions() for name in METRIC_NAME_RE.findall(expr)}
    assert used, "no hookstream_ metric found in the dashboard or the alerts"
    assert used <= known, f"not registered in hookstream/core/metrics.py: {sorted(used - known)}"


def test_dashboard_covers_every_operational_metric() -> None:
    dashboard_text = DASHBOARD.read_text(encoding="utf-8")
    for metric in ("hookstream_delivery_attempts_total", "hookstream_delivery_attempt_duration_seconds_bucket",
                   "hookstream_delivery_latency_seconds_bucket", "hookstream_consumer_lag",
                   "hookstream_inflight_deliveries", "hookstream_events_rejected_total",
                   "hookstream_retries_scheduled_total", "hookstream_retry_backlog",
                   "hookstream_circuit_breaker_transitions_total", "hookstream_outcome_flush_batch_size_bucket",
                   "hookstream_outcome_flush_duration_seconds_bucket", "hookstream_deliveries_finished_total"):
        assert metric in dashboard_text, f"the dashboard has no panel for {metric}"


def test_dashboard_is_a_grafana_dashboard_bound_to_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 9
    for panel in graphs:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    refs = [(p["id"], t["refId"]) for p in graphs for t in p["targets"]]
    assert len(refs) == len(set(refs)), "refIds must be unique within a panel"


def test_grafana_provisioning_matches_compose_mounts() -> None:
    provider = load_yaml_documents(DEPLOY / "grafana" / "provisioning" / "dashboards" / "hookstream.yml")[0]
    path = provider["providers"][0]["options"]["path"]
    grafana = load_yaml_documents(COMPOSE)[0]["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 2)[:2] if volume.endswith(":ro") else volume.split(":", 1)
                  for volume in grafana["volumes"])
    assert mounts.get("./grafana/dashboards") == path
    assert mounts.get("./grafana/provisioning") == "/etc/grafana/provisioning"
    datasource = load_yaml_documents(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# ---- Prometheus: scrape targets and alert metadata ------------------------------------------------


def test_prometheus_scrapes_each_service_on_its_default_port() -> None:
    config = load_yaml_documents(PROMETHEUS_CONFIG)[0]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    defaults = Settings()
    assert jobs["hookstream-router"]["dns_sd_configs"][0]["port"] == defaults.router_metrics_listen[1]
    # Several sender replicas: DNS service discovery yields one target per replica.
    assert jobs["hookstream-sender"]["dns_sd_configs"][0]["port"] == defaults.sender_metrics_listen[1]
    assert jobs["hookstream-api"]["static_configs"][0]["targets"] == [f"api:{defaults.api_listen[1]}"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file


def test_every_alert_has_a_runbook_and_a_severity() -> None:
    rules = [rule for group in load_yaml_documents(ALERTS)[0]["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert names >= {"HookstreamHighFailureRate", "HookstreamConsumerLagGrowing", "HookstreamDeadLetterSpike",
                     "HookstreamNoDeliveries", "HookstreamSenderDown", "HookstreamRouterDown"}
    for rule in rules:
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} fires on a single evaluation: give it a `for`"
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert name in readme, f"deploy/README.md does not describe {name}"


def promql_job_selectors() -> set[str]:
    """The values of every ``job="..."`` selector in the alert rules and the dashboard's queries."""
    matchers = [m for expr in all_promql_expressions() for m in re.findall(r'\bjob\s*(=~|!=|!~|=)\s*"([^"]*)"', expr)]
    assert all(op == "=" for op, _ in matchers), f"only job=\"...\" is understood here: {matchers}"
    return {value for _, value in matchers}


def compose_hookstream_jobs() -> set[str]:
    config = load_yaml_documents(PROMETHEUS_CONFIG)[0]
    return {job["job_name"] for job in config["scrape_configs"] if job["job_name"].startswith("hookstream-")}


def test_alerts_use_the_scrape_job_names() -> None:
    jobs = {job["job_name"] for job in load_yaml_documents(PROMETHEUS_CONFIG)[0]["scrape_configs"]}
    for job in re.findall(r'job="([^"]+)"', ALERTS.read_text(encoding="utf-8")):
        assert job in jobs, f"alerts.yml selects job {job!r}, which prometheus.yml does not scrape"


# ---- configuration: only variables Settings knows, with values it accepts -------------------------


def test_settings_variables_include_the_contract_variables() -> None:
    variables = settings_variables()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "HOOKSTREAM_METRICS_LISTEN", "HOOKSTREAM_API_LISTEN",
            "HOOKSTREAM_RETRY_DELAYS", "HOOKSTREAM_LOG_FORMAT"} <= variables


def test_compose_gives_hookstream_containers_only_known_valid_settings() -> None:
    services = hookstream_compose_services()
    assert {"migrate", "router", "sender", "api"} <= services.keys()
    known = settings_variables()
    for name, service in services.items():
        env = compose_env(service)
        assert set(env) <= known, f"compose service {name}: unknown variables {sorted(set(env) - known)}"
        Settings.from_env(env)  # raises SettingsError naming a bad value


def test_compose_services_listen_where_prometheus_and_the_host_look() -> None:
    services = hookstream_compose_services()
    for name, port in (("router", 9101), ("sender", 9102)):
        settings = Settings.from_env(compose_env(services[name]))
        assert settings.metrics_listen_for(name) == ("0.0.0.0", port), name
    assert Settings.from_env(compose_env(services["api"])).api_listen == ("0.0.0.0", 8080)
    assert services["sender"]["deploy"]["replicas"] >= 2
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("router", "sender", "api"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def container_env(obj: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The environment a Kubernetes container gets: envFrom ConfigMaps/Secrets, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(k8s_object("Secret", source["secretRef"]["name"])["stringData"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def test_k8s_config_and_secret_hold_only_known_variables() -> None:
    known = settings_variables()
    for path, obj in k8s_objects():
        if obj["kind"] in ("ConfigMap", "Secret"):
            keys = set(obj.get("data", {})) | set(obj.get("stringData", {}))
            assert keys <= known, f"{path.name}: unknown variables {sorted(keys - known)}"


def test_k8s_containers_get_only_known_valid_settings() -> None:
    known = settings_variables()
    assert workloads()
    for path, obj in workloads():
        for container in pod_spec(obj)["containers"] + pod_spec(obj).get("initContainers", []):
            env = container_env(obj, container)
            assert set(env) <= known, f"{path.name}: unknown variables {sorted(set(env) - known)}"
            assert "DATABASE_URL" in env and "KAFKA_BOOTSTRAP_SERVERS" in env, path.name
            Settings.from_env(env)


def test_dockerfile_sets_only_known_variables() -> None:
    known = settings_variables()
    text = DOCKERFILE.read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:HOOKSTREAM|KAFKA|DATABASE)_[A-Z0-9_]+)=", text))
    assert named <= known, sorted(named - known)


# ---- Kubernetes manifests ------------------------------------------------------------------------


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_manifest_has_required_keys_and_no_namespace(path: Path) -> None:
    for obj in load_yaml_documents(path):
        if obj.get("kind") == "Kustomization":
            continue
        assert obj.get("apiVersion") and obj.get("kind"), path.name
        assert obj["metadata"].get("name"), path.name
        assert "namespace" not in obj["metadata"], f"{path.name}: manifests are namespace-free"
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "hookstream", path.name


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml_documents(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_FILES} - {"kustomization.yaml"}
    assert listed == on_disk


def test_expected_k8s_objects_exist() -> None:
    kinds = {(obj["kind"], obj["metadata"]["name"]) for _, obj in k8s_objects()}
    assert {("ConfigMap", "hookstream-config"), ("Secret", "hookstream-db"),
            ("Deployment", "hookstream-router"), ("Deployment", "hookstream-sender"),
            ("Deployment", "hookstream-api"), ("Service", "hookstream-api"),
            ("PodDisruptionBudget", "hookstream-sender"), ("ScaledObject", "hookstream-sender"),
            ("PodMonitor", "hookstream-router"), ("PodMonitor", "hookstream-sender"),
            ("PodMonitor", "hookstream-api")} <= kinds


def test_no_migrate_job_migrations_and_topics_are_init_steps_of_every_deployment() -> None:
    # A Job's pod template is immutable: `kubectl apply` of a new image fails until it is deleted.
    assert not [obj["metadata"]["name"] for _, obj in k8s_objects() if obj["kind"] in ("Job", "CronJob")]
    deployments = [obj for _, obj in k8s_objects() if obj["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"hookstream-router", "hookstream-sender", "hookstream-api"}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        [main] = spec["containers"]
        init = spec.get("initContainers", [])
        assert [c.get("args") for c in init] == [["migrate"], ["topics"]], name
        for container in init:
            # the same image (one `images:` entry rewrites all), configuration and no command override
            assert container["image"] == main["image"], f"{name}: {container['name']}"
            assert container["envFrom"] == main["envFrom"], f"{name}: {container['name']}"
            assert "command" not in container, f"{name}: {container['name']} must run the image's entrypoint"


def test_every_container_states_resources_and_runs_as_non_root() -> None:
    for path, obj in workloads():
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, path.name
        assert spec["securityContext"]["runAsUser"] != 0, path.name
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), f"{path.name}: {container['name']}"
            assert "memory" in resources["limits"], f"{path.name}: {container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, path.name
            assert security.get("runAsUser", 1) != 0, path.name


def test_every_container_has_a_read_only_root_and_a_writable_tmp() -> None:
    # The image's last WORKDIR is /tmp and Python's tempfile writes there: with a read-only root,
    # every container (init containers included) needs /tmp mounted from an emptyDir.
    for path, obj in workloads():
        spec = pod_spec(obj)
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{path.name}: {container['name']}"
            assert container["securityContext"].get("readOnlyRootFilesystem") is True, where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in empty_dirs, f"{where}: read-only root without an emptyDir on /tmp"


@pytest.mark.parametrize(("component", "port", "listen_var", "liveness", "readiness"), [
    ("router", 9101, "HOOKSTREAM_METRICS_LISTEN", "/healthz", "/healthz"),
    ("sender", 9102, "HOOKSTREAM_METRICS_LISTEN", "/healthz", "/healthz"),
    ("api", 8080, "HOOKSTREAM_API_LISTEN", "/healthz", "/readyz"),
])
def test_deployment_probes_hit_the_port_the_process_listens_on(
    component: str, port: int, listen_var: str, liveness: str, readiness: str
) -> None:
    deployment = k8s_object("Deployment", f"hookstream-{component}")
    [container] = pod_spec(deployment)["containers"]
    assert container["args"] == [component]
    env = container_env(deployment, container)
    settings = Settings.from_env(env)
    listen = settings.api_listen if component == "api" else settings.metrics_listen_for(component)
    assert listen == ("0.0.0.0", port), f"{listen_var} must bind 0.0.0.0:{port} in a pod"
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["livenessProbe"]["httpGet"] == {"path": liveness, "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": readiness, "port": port}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_sender_scaling_targets_the_sender_group_and_deliveries_topic() -> None:
    defaults = Settings()
    scaled = k8s_object("ScaledObject", "hookstream-sender")
    assert scaled["apiVersion"].startswith("keda.sh/")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "hookstream-sender"
    assert scaled["spec"]["minReplicaCount"] >= 1, "at zero senders HookstreamSenderDown fires"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == defaults.sender_group
    assert meta["topic"] == defaults.delivery_topic
    assert int(meta["lagThreshold"]) > 0
    assert meta["bootstrapServers"] == k8s_object("ConfigMap", "hookstream-config")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    # KEDA owns the replica count: a fixed one would be reset on every `kubectl apply`.
    assert "replicas" not in k8s_object("Deployment", "hookstream-sender")["spec"]


def test_sender_scaling_stays_within_the_delivery_topics_partitions() -> None:
    # One partition feeds at most one sender of the group: more replicas than partitions sit idle.
    settings = Settings.from_env(k8s_object("ConfigMap", "hookstream-config")["data"])
    [delivery] = [s for s in topic_specs(settings) if s.name == settings.delivery_topic]
    assert k8s_object("ScaledObject", "hookstream-sender")["spec"]["maxReplicaCount"] <= delivery.partitions


def pod_monitor_job(monitor: dict[str, Any], pod_labels: dict[str, str], namespace: str = "NAMESPACE") -> str:
    """The ``job`` label the Prometheus Operator gives the targets of ``monitor``'s one endpoint: by
    default ``<namespace>/<name>``, or the pod label named by ``jobLabel``, then the endpoint's
    relabelings (action ``replace`` with the default regex) applied in order."""
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in pod_labels.items()}
    job = f"{namespace}/{monitor['metadata']['name']}"
    if monitor["spec"].get("jobLabel"):
        job = pod_labels.get(monitor["spec"]["jobLabel"], "")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    for rule in endpoint.get("relabelings", []):
        if rule.get("targetLabel") != "job":
            continue
        assert rule.get("action", "replace") == "replace", rule
        source = rule.get("separator", ";").join(meta.get(label, "") for label in rule.get("sourceLabels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), source)
        if match:
            job = match.expand(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1")))
    return job


def test_pod_monitors_scrape_every_deployment_with_the_job_names_the_alerts_use() -> None:
    monitors = [obj for _, obj in k8s_objects() if obj["kind"] == "PodMonitor"]
    jobs: dict[str, str] = {}  # deployment -> job
    for deployment in (obj for _, obj in k8s_objects() if obj["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selecting = [m for m in monitors if m["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(selecting) == 1, f"{name}: scraped by {len(selecting)} PodMonitors, expected exactly one"
        [monitor] = selecting
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert "namespaceSelector" not in monitor["spec"], "the monitors look in their own namespace"
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        [main] = pod_spec(deployment)["containers"]
        # The monitor names the container's port; it must be where the process serves /metrics.
        component = labels["app.kubernetes.io/component"]
        settings = Settings.from_env(container_env(deployment, main))
        listen = settings.api_listen if component == "api" else settings.metrics_listen_for(component)
        port = {p["name"]: p["containerPort"] for p in main["ports"]}.get(endpoint["port"])
        assert port == listen[1], f"{name}: the PodMonitor scrapes port {endpoint['port']!r}, /metrics is on {listen[1]}"
        assert endpoint.get("path", "/metrics") == "/metrics", name
        # The PodMonitor is the one scrape: annotation-based discovery would scrape every pod again.
        annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        assert not [k for k in annotations if k.startswith("prometheus.io/")], \
            f"{name}: prometheus.io/* annotations next to a PodMonitor scrape every series twice"
        jobs[name] = pod_monitor_job(monitor, labels)
    # The names compose's prometheus.yml gives the same jobs: one dashboard and one rule file for both.
    assert set(jobs.values()) == compose_hookstream_jobs()
    assert jobs == {f"hookstream-{c}": f"hookstream-{c}" for c in ("router", "sender", "api")}
    used = promql_job_selectors()
    assert used, "alerts.yml selects no job: this test would prove nothing"
    assert used <= set(jobs.values()), f"alerts select jobs no PodMonitor produces: {sorted(used - set(jobs.values()))}"


def test_pod_monitor_job_simulation_follows_the_operator() -> None:
    # The helper itself: the operator's default, jobLabel, and a replace relabeling with a group.
    monitor = {"metadata": {"name": "m"}, "spec": {"podMetricsEndpoints": [{"port": "metrics"}]}}
    assert pod_monitor_job(monitor, {"a": "b"}, namespace="ns") == "ns/m"
    monitor["spec"]["jobLabel"] = "app.kubernetes.io/component"
    assert pod_monitor_job(monitor, {"app.kubernetes.io/component": "sender"}) == "sender"
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"] = [
        {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "targetLabel": "job",
         "replacement": "hookstream-$1"}]
    assert pod_monitor_job(monitor, {"app.kubernetes.io/component": "sender"}) == "hookstream-sender"


# ---- topics: created by `hookstream topics` from hookstream/core/topics.py, never by hand -----------

# Where a deploy file may name a topic: the Settings variables that name them (and so the specs'
# names), and the KEDA trigger, which test_sender_scaling_* holds to Settings.
TOPIC_SETTINGS = {"HOOKSTREAM_SOURCE_TOPICS", "HOOKSTREAM_STATUS_TOPIC", "HOOKSTREAM_DEAD_LETTER_TOPIC",
                  "HOOKSTREAM_DELIVERY_TOPIC"}


def yaml_leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, bool]]:
    """Every (key path, text, is a key) of a parsed YAML document: its keys and its scalars."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key)), str(key), True
            yield from yaml_leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            yield from yaml_leaves(item, path)
    else:
        yield path, str(node), False


def known_topic_names() -> set[str]:
    """Every topic any deploy configuration makes hookstream use (defaults, k8s ConfigMap, compose)."""
    configs = [Settings(), Settings.from_env(k8s_object("ConfigMap", "hookstream-config")["data"])]
    configs += [Settings.from_env(compose_env(svc)) for svc in hookstream_compose_services().values()]
    return {spec.name for settings in configs for spec in topic_specs(settings)}


def test_no_deploy_file_lists_topics_or_partitions_by_hand() -> None:
    topics = known_topic_names()
    assert {"aiq.orders", "hookstream.deliveries", "hookstream.dead-letter"} <= topics
    for path in [COMPOSE, *K8S_FILES]:
        for doc in load_yaml_documents(path):
            for keys, text, is_key in yaml_leaves(doc):
                where = f"{path.relative_to(DEPLOY)}: {'.'.join(keys)}"
                assert "kafka-topics" not in text and "--partitions" not in text, f"{where}: topics made by hand"
                if is_key:
                    assert "partitions" not in text.lower(), f"{where}: a partition count by hand"
                    continue
                named = sorted(t for t in topics if t in text)
                allowed = (bool(keys) and keys[-1] in TOPIC_SETTINGS) or keys[-3:] == ("triggers", "metadata", "topic")
                assert not named or allowed, f"{where} names topics {named} by hand"


def test_compose_creates_topics_with_hookstream_and_nothing_else() -> None:
    services = load_yaml_documents(COMPOSE)[0]["services"]
    hookstream_services = hookstream_compose_services()
    topics = hookstream_services["topics"]
    # Nothing upstream runs in compose, so the source topics are created too.
    assert topics["command"] == ["topics", "--with-source-topics"]
    assert topics["restart"] == "no"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    # No topic from a first use with the broker's defaults: every one comes from the specs.
    broker = compose_env(services["kafka"])
    assert broker["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert not [key for key in broker if "PARTITIONS" in key]
    for name in ("router", "sender", "api"):
        assert hookstream_services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"

    sender_labels = k8s_object("Deployment", "hookstream-sender")["spec"]["template"]["metadata"]["labels"]
    pdb = k8s_object("PodDisruptionBudget", "hookstream-sender")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sender_labels.items()
    api = k8s_object("Deployment", "hookstream-api")
    service = k8s_object("Service", "hookstream-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    port_names = {p["name"] for p in pod_spec(api)["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names


# ---- images and the Dockerfile -------------------------------------------------------------------


def image_references() -> list[tuple[str, str]]:
    refs = [(f"compose:{name}", svc["image"]) for name, svc in load_yaml_documents(COMPOSE)[0]["services"].items()]
    for path, obj in workloads():
        spec = pod_spec(obj)
        refs += [(path.name, c["image"]) for c in spec["containers"] + spec.get("initContainers", [])]
    return refs


def test_every_image_is_pinned() -> None:
    refs = image_references()
    assert len(refs) >= 10
    for where, image in refs:
        if "@sha256:" in image:
            continue
        _, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{where}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{where}: {image} is not pinned to a version"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_base_image_is_pinned_and_user_is_not_root() -> None:
    instructions = dockerfile_instructions()
    bases = [arg for op, arg in instructions if op == "FROM"]
    assert bases, "no FROM"
    for base in bases:  # the build stage and the image
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim(@sha256:[0-9a-f]{64})?( AS \w+)?", base), base
    users = [arg for op, arg in instructions if op == "USER"]
    assert users, "the Dockerfile never switches away from root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert [op for op, _ in instructions].index("USER") > max(
        i for i, (op, _) in enumerate(instructions) if op == "RUN"), "every RUN should precede USER"


def test_dockerfile_runs_hookstream_and_exposes_its_ports() -> None:
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["hookstream"]
    assert json.loads(instructions["CMD"]) == ["all"]
    assert set(instructions["EXPOSE"].split()) == {"8080", "9101", "9102"}
    assert "HEALTHCHECK" not in instructions, "probes belong to the orchestrator (deploy/k8s)"
    text = DOCKERFILE.read_text(encoding="utf-8")
    # Installed from the wheel and the hashed lock (tests/unit/test_packaging.py checks the path).
    assert "PIP_NO_CACHE_DIR=1" in text and re.search(r"^COPY pyproject\.toml uv\.lock ", text, re.M)
    assert re.search(r"^RUN uv export --locked .*--require-hashes", text.replace("\\\n", " "), re.M)


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert lines and "**" in lines, "deny everything, then allow what the image needs"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed >= {"pyproject.toml", "uv.lock", "hookstream/**"}
    assert not any(entry.startswith((".venv", ".local", ".git")) for entry in allowed)


def test_dashboard_shows_the_failure_rate_by_event_type_and_unmatched_events() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    by_title = {p["title"]: p for p in dashboard["panels"]}
    [failure] = by_title["Failure rate by event type"]["targets"]
    assert "sum by (event_type)" in failure["expr"] and 'outcome="failure"' in failure["expr"]
    assert "hookstream_delivery_attempts_total" in failure["expr"]
    [unmatched] = by_title["Events routed to no webhook by reason"]["targets"]
    assert "sum by (reason) (rate(hookstream_events_unmatched_total" in unmatched["expr"]


def test_every_hookstream_metric_says_which_services_export_it() -> None:
    """A family left out of metrics.OWNERS would be exported (with zeros) by every process."""
    from hookstream.core import metrics

    defined = {family.name for family in REGISTRY.collect()
               if family.name.startswith("hookstream_") and not family.name.startswith("hookstream_api_")}
    assert defined <= set(metrics.OWNERS), sorted(defined - set(metrics.OWNERS))


# ---- deploy/local: the ports a checkout remembers ------------------------------------------------------

LOCAL_PORT_VARIABLES = ("HOOKSTREAM_LOCAL_KAFKA_PORT", "HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT",
                        "HOOKSTREAM_LOCAL_PG_PORT")


def local_ports(root: Path, **exported: str) -> list[str]:
    """The three ports deploy/local/ports.sh settles on for checkout ``root``."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in LOCAL_PORT_VARIABLES} | exported
    script = f'ROOT={root}; source {DEPLOY / "local" / "ports.sh"}; ' + \
        "; ".join(f'echo "${name}"' for name in LOCAL_PORT_VARIABLES)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_local_ports_default_then_remembered_and_an_exported_one_wins(tmp_path: Path) -> None:
    assert local_ports(tmp_path) == ["19092", "19093", "54329"]
    (tmp_path / ".local").mkdir()
    (tmp_path / ".local" / "env").write_text(
        "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092\nHOOKSTREAM_LOCAL_KAFKA_PORT=29092\n"
        "HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT=29093\nHOOKSTREAM_LOCAL_PG_PORT=54339\n")
    assert local_ports(tmp_path) == ["29092", "29093", "54339"]
    assert local_ports(tmp_path, HOOKSTREAM_LOCAL_PG_PORT="55555") == ["29092", "29093", "55555"]


def test_up_writes_every_local_port_to_the_env_file() -> None:
    up = (DEPLOY / "local" / "up.sh").read_text()
    for name in LOCAL_PORT_VARIABLES:
        assert f"{name}=$" in up, f"up.sh does not write {name} to .local/env"
