"""The Helm chart (charts/streaming-analytics) and the flink-operator/ manifests, checked offline.

The chart is rendered with ``helm template`` (``.local/bin/helm``, built by ``make install``) for
its default values and for values-production.yaml. Every rendered document is validated: core
kinds against the Kubernetes schemas that ``kubernetes-validate`` ships (strict: unknown fields
fail), custom resources (FlinkDeployment, FlinkStateSnapshot, ServiceMonitor, PodMonitor,
PrometheusRule) against the openAPIV3Schema of their CRDs in ``../shared/schemas/crds``, made
strict the way the API server prunes (an object that lists its properties accepts no others).
The alert rules go through ``promtool check rules`` (``.local/bin/promtool``, also from
``make install``). A missing tool fails these tests: it never skips them.

Run: ``.venv/bin/python -m pytest -q tests/unit/test_chart.py`` (or ``-m chart``).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streaming_analytics.settings import VARIABLES, Settings
from tests.support.crd_schemas import CRDS, crd_errors
from transforms import metrics

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streaming-analytics"
PRODUCTION_VALUES = CHART / "values-production.yaml"
OPERATOR_DIR = ROOT / "flink-operator"
OPERATIONS_MD = ROOT / "docs" / "operations.md"

KUBERNETES_VERSION = "1.33.0"
RELEASE = "analytics"
NAMESPACE = "analytics"
HARNESS_PORT = 50000
FLINK_RUNNER_MAIN = "org.apache.beam.runners.flink.FlinkPipelineRunner"
#: Our loopback-only worker pool (Beam's worker_pool_main binds every interface).
HARNESS_MODULE = "pipelines.worker_pool"
LOOPBACK = "127.0.0.1"
#: Beam's only Flink runner served to the project is beam-runners-flink-1.19 (2.62.0).
FLINK_VERSION = "v1_19"
#: Every Flink key the chart and flink-operator/ may set, each checked against Flink 1.19.3's
#: ConfigOptions (flink-dist-1.19.3.jar); "metrics.reporter.<name>.*" keys are per reporter and
#: "kubernetes.operator.*" keys belong to the operator. Add a key here only after that check.
FLINK_1_19_KEYS = frozenset({
    "taskmanager.numberOfTaskSlots", "classloader.resolve-order", "rest.port", "jobmanager.rpc.port",
    "blob.server.port", "taskmanager.rpc.port", "taskmanager.data.port",
    "metrics.internal.query-service.port", "io.tmp.dirs", "execution.checkpointing.interval",
    "execution.checkpointing.mode", "execution.checkpointing.timeout", "execution.checkpointing.min-pause",
    "execution.checkpointing.tolerable-failed-checkpoints",
    "execution.checkpointing.externalized-checkpoint-retention", "state.checkpoints.num-retained",
    "state.backend.type", "state.backend.incremental", "state.checkpoints.dir", "state.savepoints.dir",
    "high-availability.type", "high-availability.storageDir", "metrics.job.status.enable",
})
#: Flink 2.x names of settings that Flink 1.19 calls by their state.* names (unknown to 1.19).
FLINK_2_ONLY_KEYS = frozenset({
    "execution.checkpointing.dir", "execution.checkpointing.savepoint-dir",
    "execution.checkpointing.num-retained", "execution.checkpointing.incremental",
})
#: The pod-local scratch directory every read-only container needs (a path compared, never written).
TMP = "/tmp"  # noqa: S108
PUSH_METRICS = (
    "push_connections_open", "push_connections_active", "push_subscriptions", "push_messages_sent_total",
    "push_messages_dropped_total", "push_redis_read_lag_seconds", "push_send_latency_seconds_bucket",
    "push_disconnects_total",
)
#: Kinds validated against a CRD; the rest must be core Kubernetes kinds.
CUSTOM_KINDS = {"FlinkDeployment", "FlinkStateSnapshot", "ServiceMonitor", "PodMonitor", "PrometheusRule"}

Doc = dict[str, Any]


# --- tools and rendering ---------------------------------------------------------------------------

def _tool(name: str) -> Path:
    path = Settings.from_env().tools_dir / "bin" / name
    assert path.is_file(), f"{path} is missing: run `make install` (scripts/install.sh installs {name})"
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool("helm")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("promtool")


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def render_text(helm: Path, *values_files: Path, sets: tuple[str, ...] = ()) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION]
    for f in values_files:
        args += ["--values", str(f)]
    for s in sets:
        args += ["--set", s]
    done = _helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(helm: Path, *values_files: Path, sets: tuple[str, ...] = ()) -> list[Doc]:
    return [d for d in yaml.safe_load_all(render_text(helm, *values_files, sets=sets)) if d]


def render_error(helm: Path, *sets: str) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION]
    for s in sets:
        args += ["--set", s]
    done = _helm(helm, *args)
    assert done.returncode != 0, "the chart rendered although it should have refused these values"
    return done.stderr


@pytest.fixture(scope="session")
def default_docs(helm: Path) -> list[Doc]:
    return render(helm)


@pytest.fixture(scope="session")
def production_docs(helm: Path) -> list[Doc]:
    return render(helm, PRODUCTION_VALUES)


def operator_docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(OPERATOR_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.fixture(scope="session", params=["default", "production", "flink-operator"])
def any_docs(request: pytest.FixtureRequest, helm: Path) -> list[Doc]:
    """Every set of manifests a cluster may receive: the chart's two value sets and flink-operator/."""
    if request.param == "default":
        return render(helm)
    if request.param == "production":
        return render(helm, PRODUCTION_VALUES)
    return operator_docs()


@pytest.fixture(scope="session", params=["default", "production"])
def chart_docs(request: pytest.FixtureRequest, helm: Path) -> list[Doc]:
    return render(helm) if request.param == "default" else render(helm, PRODUCTION_VALUES)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def every(docs: list[Doc], kind: str) -> list[Doc]:
    """The documents of ``kind``, of which there must be at least one: a check that loops over
    them would pass without checking anything if a rename or a values change dropped them all."""
    found = of_kind(docs, kind)
    assert found, f"expected at least one {kind}"
    return found


def one(docs: list[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --- schema validation -----------------------------------------------------------------------------

def validate(doc: Doc) -> None:
    kind = doc["kind"]
    if kind in CUSTOM_KINDS:
        errors = crd_errors(doc)
        assert not errors, f"{kind}/{doc['metadata'].get('name')}: " + "; ".join(errors)
    else:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            pytest.fail(f"{kind}/{doc['metadata'].get('name')}: {path}: {e.message}")


# --- walking pods ----------------------------------------------------------------------------------

def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc | None]]:
    """(where, pod spec, the FlinkDeployment role resource or None) for every pod the docs create."""
    for d in docs:
        name = d["metadata"].get("name", d["metadata"].get("generateName"))
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{d['kind']}/{name}", d["spec"]["template"]["spec"], None
        elif d["kind"] == "FlinkDeployment":
            for role in ("jobManager", "taskManager"):
                template = d["spec"][role]["podTemplate"]
                yield f"FlinkDeployment/{name}/{role}", template["spec"], d["spec"][role]


def pod_labels(docs: list[Doc]) -> Iterator[tuple[str, dict[str, str]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["metadata"]["labels"]
        elif d["kind"] == "FlinkDeployment":
            for role in ("jobManager", "taskManager"):
                yield (f"FlinkDeployment/{d['metadata']['name']}/{role}",
                       d["spec"][role]["podTemplate"]["metadata"]["labels"])


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def harness_of(spec: Doc) -> Doc | None:
    found = [c for c in containers(spec) if HARNESS_MODULE in c.get("command", [])]
    assert len(found) <= 1
    return found[0] if found else None


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are expected here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def flag(command: list[str], name: str) -> str | None:
    """The value of ``name`` in an argv (``--name value`` or ``--name=value``), None if absent."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def flink_container(spec: Doc) -> Doc:
    found: list[Doc] = [c for c in spec["containers"] if c["name"] == "flink-main-container"]
    assert len(found) == 1
    return found[0]


# --- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_should_pass_helm_lint(helm: Path, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBERNETES_VERSION]
    if values:
        args += ["--values", str(values)]
    done = _helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_should_render_only_valid_documents(any_docs: list[Doc]) -> None:
    assert any_docs
    for doc in any_docs:
        validate(doc)


def test_should_validate_flink_pod_templates_as_core_pods(any_docs: list[Doc]) -> None:
    for d in every(any_docs, "FlinkDeployment"):
        for role in ("jobManager", "taskManager"):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"template-{role.lower()}"},
                   **{k: v for k, v in d["spec"][role]["podTemplate"].items() if k == "spec"}}
            validate(pod)


def test_should_render_every_kind_the_platform_needs(chart_docs: list[Doc]) -> None:
    kinds = {d["kind"] for d in chart_docs}
    assert kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "ServiceMonitor", "NetworkPolicy", "ServiceAccount", "FlinkDeployment", "PodMonitor",
                     "PrometheusRule", "ConfigMap"}
    for d in chart_docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["helm.sh/chart"].startswith("streaming-analytics-")
        assert len(d["metadata"]["name"]) <= 63


def test_should_harden_every_container(any_docs: list[Doc]) -> None:
    for where, spec, flink_role in pod_specs(any_docs):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert not any("hostPath" in v for v in volumes.values()), where
        for c in containers(spec):
            here = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, here
            assert sc.get("allowPrivilegeEscalation") is False, here
            assert sc.get("readOnlyRootFilesystem") is True, here
            assert sc.get("privileged", False) is False, here
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], here
            assert not sc.get("capabilities", {}).get("add"), here
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", here
            # a read-only root needs a writable /tmp of the pod's own
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == TMP]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], here
            if c["name"] == "flink-main-container":
                # Flink sizes its own container from spec.<role>.resource (requests = limits).
                assert flink_role is not None
                assert {"cpu", "memory"} <= set(flink_role["resource"]), here
            else:
                resources = c.get("resources", {})
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{here}: {bound}"


def test_should_not_mount_a_token_into_push_pods(chart_docs: list[Doc]) -> None:
    deployment = one(chart_docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    account = next(a for a in of_kind(chart_docs, "ServiceAccount")
                   if a["metadata"]["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def test_should_run_the_push_server_as_documented(chart_docs: list[Doc]) -> None:
    deployment = one(chart_docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (push,) = spec["containers"]
    assert push["command"] == ["python", "-m", "push_server"]
    env = env_of(push)
    assert env["SA_PUSH_HOST"]["value"] == "0.0.0.0"  # noqa: S104 (the pod's interfaces, on purpose)
    port = int(env["SA_PUSH_PORT"]["value"])
    assert push["ports"] == [{"name": "push", "containerPort": port, "protocol": "TCP"}]
    assert push["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert push["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert push["startupProbe"]["httpGet"]["port"] == "push"


def test_should_outlast_the_drain_with_the_termination_grace_period(chart_docs: list[Doc]) -> None:
    spec = one(chart_docs, "Deployment")["spec"]["template"]["spec"]
    (push,) = spec["containers"]
    drain = int(env_of(push)["SA_PUSH_DRAIN_TIMEOUT_S"]["value"])
    pre_stop = push.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    # Sanic gives the drain 2 s more to exit (push_server/app.py GRACEFUL_SHUTDOWN_TIMEOUT).
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + 2


def test_should_point_the_hpa_at_the_push_deployment(chart_docs: list[Doc]) -> None:
    hpa = one(chart_docs, "HorizontalPodAutoscaler")
    deployment = one(chart_docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_should_keep_a_push_pod_available_during_disruptions(chart_docs: list[Doc]) -> None:
    pdb = one(chart_docs, "PodDisruptionBudget")
    labels = one(chart_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_should_select_the_push_service_and_its_named_port_in_the_service_monitor(
        chart_docs: list[Doc]) -> None:
    monitor = one(chart_docs, "ServiceMonitor")
    service = one(chart_docs, "Service")
    deployment = one(chart_docs, "Deployment")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "push"
    assert endpoint["path"] == "/metrics"
    # ... and the Service reaches the pods' named port
    template = deployment["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    container_ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    assert port["targetPort"] in container_ports


def test_should_select_the_flink_pods_and_their_metrics_port_in_the_pod_monitor(
        chart_docs: list[Doc]) -> None:
    monitor = one(chart_docs, "PodMonitor")
    flink = one(chart_docs, "FlinkDeployment")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    reporter_port = int(flink["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"])
    for role in ("jobManager", "taskManager"):
        template = flink["spec"][role]["podTemplate"]
        assert selects(monitor["spec"]["selector"], template["metadata"]["labels"]), role
        main = next(c for c in template["spec"]["containers"] if c["name"] == "flink-main-container")
        assert {"name": endpoint["port"], "containerPort": reporter_port, "protocol": "TCP"} in main["ports"]
    assert flink["spec"]["flinkConfiguration"]["metrics.reporter.prom.factory.class"].endswith(
        "PrometheusReporterFactory")


def test_should_cover_every_workload_with_network_policies(any_docs: list[Doc]) -> None:
    policies = of_kind(any_docs, "NetworkPolicy")
    for where, labels in pod_labels(any_docs):
        covering = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert covering, f"no NetworkPolicy selects {where}"
        types = {t for p in covering for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, where


def _ports(rule: Doc) -> list[Doc]:
    return list(rule.get("ports", []))


def test_should_never_expose_the_sdk_harness_port(any_docs: list[Doc]) -> None:
    # The harness is really there and really listens on that port ...
    harnesses = [h for _, spec, _ in pod_specs(any_docs) if (h := harness_of(spec))]
    assert harnesses
    for h in harnesses:
        assert flag(h["command"], "--port") == str(HARNESS_PORT)
        assert not any(p.get("containerPort") == HARNESS_PORT for p in h.get("ports", []))
    # ... and no policy, Service or declared port lets anyone else in.
    for policy in every(any_docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            name = policy["metadata"]["name"]
            assert _ports(rule), f"{name}: an ingress rule without ports admits every port"
            for port in _ports(rule):
                number = port["port"]
                assert isinstance(number, int), "named ports could resolve to the harness"
                assert number != HARNESS_PORT
                assert not (number <= HARNESS_PORT <= port.get("endPort", number))
    for service in of_kind(any_docs, "Service"):  # none in flink-operator/: the operator makes them
        for port in service["spec"]["ports"]:
            assert HARNESS_PORT not in (port["port"], port.get("targetPort"))
    for _, spec, _ in pod_specs(any_docs):
        for c in containers(spec):
            assert all(p["containerPort"] != HARNESS_PORT for p in c.get("ports", []))


def test_should_put_the_sdk_harness_beside_every_taskmanager_only(any_docs: list[Doc]) -> None:
    for flink in every(any_docs, "FlinkDeployment"):
        tm = flink["spec"]["taskManager"]["podTemplate"]["spec"]
        jm = flink["spec"]["jobManager"]["podTemplate"]["spec"]
        harness = harness_of(tm)
        assert harness is not None
        assert harness_of(jm) is None
        if harness in tm.get("initContainers", []):
            assert harness["restartPolicy"] == "Always", "an init container that is no sidecar never ends"


def test_should_pass_the_job_settings_to_the_sdk_harness(any_docs: list[Doc]) -> None:
    for flink in every(any_docs, "FlinkDeployment"):
        spec = flink["spec"]["taskManager"]["podTemplate"]["spec"]
        harness = harness_of(spec)
        assert harness is not None
        env = env_of(harness)
        for name in ("SA_KAFKA_BOOTSTRAP", "SA_KAFKA_TOPIC_EVENTS", "SA_KAFKA_TOPIC_DLQ",
                     "SA_KAFKA_CONSUMER_GROUP"):
            assert env[name]["value"], name
        for name in ("SA_POSTGRES_DSN", "SA_REDIS_URL"):
            assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name
        mounts = {m["mountPath"]: m for m in harness["volumeMounts"]}
        model_mount = mounts[env["SA_MODEL_DIR"]["value"]]
        assert model_mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == model_mount["name"])
        assert "hostPath" not in volume and "emptyDir" not in volume


def test_should_pass_only_documented_sa_variables(any_docs: list[Doc]) -> None:
    for where, spec, _ in pod_specs(any_docs):
        for c in containers(spec):
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), f"{where}/{c['name']}: duplicate env"
            unknown = [n for n in names if n.startswith("SA_") and n not in VARIABLES]
            assert not unknown, f"{where}/{c['name']}: {unknown} are not in streaming_analytics/settings.py"


def test_should_name_only_documented_sa_variables_in_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for section in (values["config"], values["push"]["env"], values["pipeline"]["env"]):
        assert set(section) <= set(VARIABLES)
    chart_managed = {"SA_PUSH_HOST", "SA_PUSH_PORT", "SA_PUSH_DRAIN_TIMEOUT_S", "SA_JWT_PUBLIC_KEYS_FILE",
                     "SA_PUSH_TLS_CERT", "SA_PUSH_TLS_KEY", "SA_MODEL_DIR",
                     "SA_JWT_SECRET", "SA_POSTGRES_DSN", "SA_REDIS_URL"}
    for section in (values["config"], values["push"]["env"], values["pipeline"]["env"]):
        assert not chart_managed & set(section), "the chart sets these itself"


def test_should_upgrade_the_pipeline_with_savepoints(any_docs: list[Doc]) -> None:
    flink = one(any_docs, "FlinkDeployment")
    spec = flink["spec"]
    config = spec["flinkConfiguration"]
    assert spec["flinkVersion"] == FLINK_VERSION
    assert spec["mode"] == "native"
    job = spec["job"]
    assert job["upgradeMode"] == "savepoint"
    assert re.fullmatch(r"local:///opt/flink/usrlib/[\w.-]+\.jar", job["jarURI"])
    assert job["entryClass"] == FLINK_RUNNER_MAIN
    assert job["allowNonRestoredState"] is False
    assert config["execution.checkpointing.interval"]
    assert config["state.checkpoints.dir"]
    assert config["state.savepoints.dir"]
    assert config["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert "kubernetes.operator.deployment.rollback.enabled" in config
    assert all(isinstance(v, str) for v in config.values()), "flinkConfiguration values must be strings"


def test_should_keep_version_labels_off_flink_pod_templates(chart_docs: list[Doc]) -> None:
    """A chart upgrade that changes nothing of the job must not change its pod templates: the
    operator would take a savepoint and redeploy the job for a label."""
    for where, labels in pod_labels(chart_docs):
        if where.startswith("FlinkDeployment/"):
            assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(labels), where


def test_should_keep_state_durable_in_production(helm: Path) -> None:
    for docs in (render(helm, PRODUCTION_VALUES), operator_docs()):
        config = one(docs, "FlinkDeployment")["spec"]["flinkConfiguration"]
        for key in ("state.checkpoints.dir", "state.savepoints.dir", "high-availability.storageDir"):
            assert config[key].startswith("s3://"), key
        assert config["high-availability.type"] == "kubernetes"
        assert config["kubernetes.operator.deployment.rollback.enabled"] == "true"
        assert not of_kind(docs, "PersistentVolumeClaim")
    for name in ("values.yaml", "values-production.yaml"):
        assert "hostPath" not in _keys(yaml.safe_load((CHART / name).read_text())), name


def _keys(tree: Any) -> set[str]:
    if isinstance(tree, dict):
        return set(tree) | {k for v in tree.values() for k in _keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in _keys(v)}
    return set()


def test_should_render_no_secret_value_when_an_existing_secret_is_given(helm: Path) -> None:
    canaries = ("canary-jwt-5d1e", "postgresql://canary:pw-7f3a@db:5432/x", "redis://:canary-9b2c@r:6379/0")
    text = render_text(helm, sets=(
        "secrets.existingSecret=platform-secrets", f"secrets.jwtSecret={canaries[0]}",
        f"secrets.postgresDsn={canaries[1]}", f"secrets.redisUrl={canaries[2]}"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert not of_kind(docs, "Secret")
    for canary in canaries:
        assert canary not in text
        assert base64.b64encode(canary.encode()).decode() not in text
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for _, spec, _ in pod_specs(docs) for c in containers(spec)
            for e in c.get("env", []) if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    assert refs and set(refs) == {"platform-secrets"}


def test_should_migrate_the_schema_in_a_hook_before_upgrades(helm: Path, chart_docs: list[Doc]) -> None:
    job = one(chart_docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", "streaming_analytics.db.migrate"]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "pre-upgrade" in hooks
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert "secretKeyRef" in env["SA_POSTGRES_DSN"]["valueFrom"]
    # With a Secret managed outside the chart the schema exists before anything else starts.
    managed = [d for d in yaml.safe_load_all(render_text(helm, sets=("secrets.existingSecret=s",))) if d]
    assert "pre-install" in one(managed, "Job")["metadata"]["annotations"]["helm.sh/hook"].split(",")


def test_should_keep_secret_values_out_of_env_literals(chart_docs: list[Doc]) -> None:
    for where, spec, _ in pod_specs(chart_docs):
        for c in containers(spec):
            for e in c.get("env", []):
                if e["name"] in VARIABLES and VARIABLES[e["name"]].secret:
                    assert "value" not in e, f"{where}/{c['name']}: {e['name']} inline"


@pytest.mark.parametrize(("sets", "message"), [
    (("pipeline.job.upgradeMode=stateless",), "would drop the job's window and dedup state"),
    (("pipeline.operator.rollbackEnabled=true",), "needs pipeline.highAvailability.enabled"),
    (("pipeline.storage.enabled=false",), "is not durable"),
    (("pipeline.checkpointing.dir=file:///tmp/checkpoints",), "is not durable"),
    (("pipeline.job.savepointRedeployNonce=1",), "initialSavepointPath, which is empty"),
    (("pipeline.models.volume.hostPath.path=/models",), "must not be a hostPath"),
], ids=["stateless", "rollback-without-ha", "pod-local-dirs", "tmp-dir", "redeploy-without-path",
        "hostpath-models"])
def test_should_refuse_values_that_would_lose_state(helm: Path, sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(helm, *sets)


def test_should_render_a_rollback_to_a_savepoint(helm: Path) -> None:
    savepoint = "s3://bucket/savepoints/savepoint-abc123-0123456789ab"
    docs = render(helm, PRODUCTION_VALUES, sets=(
        f"pipeline.job.initialSavepointPath={savepoint}", "pipeline.job.savepointRedeployNonce=3",
        "pipeline.job.savepointTriggerNonce=7", "pipeline.job.allowNonRestoredState=true"))
    job = one(docs, "FlinkDeployment")["spec"]["job"]
    assert job["initialSavepointPath"] == savepoint
    assert job["savepointRedeployNonce"] == 3
    assert job["savepointTriggerNonce"] == 7
    assert job["allowNonRestoredState"] is True
    for doc in docs:
        validate(doc)


def _alert_rules(docs: list[Doc]) -> list[Doc]:
    rule = one(docs, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_should_give_every_alert_a_severity_summary_and_runbook(chart_docs: list[Doc]) -> None:
    anchors = _anchors(OPERATIONS_MD.read_text())
    rules = _alert_rules(chart_docs)
    names = {r["alert"] for r in rules}
    assert names >= {"PushServerDown", "PushServerNotReady", "PushSlowClientDisconnects",
                     "PushRedisReadLagHigh", "FlinkJobNotRunning", "FlinkJobRestarting",
                     "FlinkCheckpointFailures", "PipelineDeadLetterRateHigh", "PipelineConsumerLagHigh"}
    for r in rules:
        assert r["expr"], r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        url = r["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/operations.md"), r["alert"]
        assert anchor in anchors, f"{r['alert']}: no heading for #{anchor} in docs/operations.md"
    slow = next(r for r in rules if r["alert"] == "PushSlowClientDisconnects")
    assert 'push_disconnects_total{' in slow["expr"] and 'code="4001"' in slow["expr"]


def test_should_pass_promtool_check_rules(chart_docs: list[Doc], promtool: Path, tmp_path: Path) -> None:
    rule = one(chart_docs, "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run([str(promtool), "check", "rules", str(rules_file)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alert_rules(chart_docs))} rules found" in done.stdout


def _dashboards(docs: list[Doc]) -> dict[str, Doc]:
    found = {}
    for cm in every(docs, "ConfigMap"):
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1":
            for name, text in cm["data"].items():
                found[name] = json.loads(text)
    return found


def _exprs(dashboard: Doc) -> str:
    return "\n".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))


def test_should_ship_dashboards_for_the_grafana_sidecar(chart_docs: list[Doc]) -> None:
    dashboards = _dashboards(chart_docs)
    assert set(dashboards) == {"push-server.json", "pipeline.json"}
    for name, d in dashboards.items():
        assert d["uid"] and d["title"] and d["panels"], name
        assert any(v["name"] == "datasource" for v in d["templating"]["list"]), name
    push = _exprs(dashboards["push-server.json"])
    for metric in PUSH_METRICS:
        assert metric in push, metric
    assert "histogram_quantile(0.99" in push and "sum by (code)" in push
    pipeline = _exprs(dashboards["pipeline.json"])
    for metric in ("flink_jobmanager_job_uptime", "flink_jobmanager_job_numberOfCompletedCheckpoints",
                   "flink_jobmanager_job_numberOfFailedCheckpoints", "numRecordsInPerSecond",
                   "numRecordsOutPerSecond", "backPressuredTimeMsPerSecond"):
        assert metric in pipeline, metric


def _uncommented_keys(path: Path) -> list[str]:
    """Keys of a values file without a comment line right above them (or inline). Keys inside a
    Kubernetes object (resources, securityContext, a volume source, selectors, list items) are
    documented by the comment of the key that holds them."""
    missing = []
    previous = ""
    stack: list[tuple[int, str]] = []
    inside_object = ("resources", "podSecurityContext", "securityContext", "volume", "resource",
                     "liveness", "readiness", "startup", "labels", "additionalLabels", "to", "ingressFrom",
                     "restFrom", "metricsFrom", "tlsConfig", "annotations")
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if match and not stripped.startswith("-"):
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.startswith("#") or "#" in line.split(":", 1)[1]
            if not documented and not any(k in inside_object for _, k in stack):
                missing.append(".".join([k for _, k in stack] + [key]))
            stack.append((indent, key))
        previous = stripped
    return missing


@pytest.mark.parametrize("name", ["values.yaml", "values-production.yaml"])
def test_should_comment_every_key_of_the_values_files(name: str) -> None:
    assert _uncommented_keys(CHART / name) == []


def test_should_keep_the_flink_operator_manifest_in_step_with_the_chart(production_docs: list[Doc]) -> None:
    chart = one(production_docs, "FlinkDeployment")["spec"]
    standalone = one(operator_docs(), "FlinkDeployment")["spec"]
    for key in ("flinkVersion", "mode"):
        assert standalone[key] == chart[key], key
    for key in ("jarURI", "entryClass", "upgradeMode", "allowNonRestoredState"):
        assert standalone["job"][key] == chart["job"][key], key
    # the same Flink settings, except those that name this release's own storage and sizes
    local = {"state.checkpoints.dir", "state.savepoints.dir", "high-availability.storageDir"}
    chart_config = {k: v for k, v in chart["flinkConfiguration"].items() if k not in local}
    standalone_config = {k: v for k, v in standalone["flinkConfiguration"].items() if k not in local}
    assert standalone_config == chart_config
    chart_harness = harness_of(chart["taskManager"]["podTemplate"]["spec"])
    standalone_harness = harness_of(standalone["taskManager"]["podTemplate"]["spec"])
    assert chart_harness is not None and standalone_harness is not None
    assert standalone_harness["command"] == chart_harness["command"]
    assert standalone_harness["startupProbe"] == chart_harness["startupProbe"]
    assert set(env_of(standalone_harness)) == set(env_of(chart_harness))
    for role in ("jobManager", "taskManager"):
        chart_main = flink_container(chart[role]["podTemplate"]["spec"])
        standalone_main = flink_container(standalone[role]["podTemplate"]["spec"])
        assert set(env_of(standalone_main)) == set(env_of(chart_main)), role


def test_should_reference_the_flink_deployment_from_the_savepoint_example() -> None:
    snapshot = one(operator_docs(), "FlinkStateSnapshot")
    flink = one(operator_docs(), "FlinkDeployment")
    assert snapshot["spec"]["jobReference"] == {"kind": "FlinkDeployment", "name": flink["metadata"]["name"]}
    assert snapshot["spec"]["savepoint"]["disposeOnDelete"] is False


# --- Flink 1.19 with Beam's 2.62 runner ------------------------------------------------------------

def _crd_flink_versions() -> list[str]:
    crd = yaml.safe_load((CRDS / "flinkdeployments.flink.apache.org-v1.yml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return list(spec["properties"]["flinkVersion"]["enum"])


def test_should_run_flink_1_19_the_minor_of_beams_flink_runner(any_docs: list[Doc]) -> None:
    assert FLINK_VERSION in _crd_flink_versions(), "the operator's CRD does not accept Flink 1.19"
    for flink in every(any_docs, "FlinkDeployment"):
        assert flink["spec"]["flinkVersion"] == FLINK_VERSION


def test_should_use_only_configuration_keys_flink_1_19_knows(any_docs: list[Doc]) -> None:
    for flink in every(any_docs, "FlinkDeployment"):
        config = flink["spec"]["flinkConfiguration"]
        own = {k for k in config if not k.startswith(("kubernetes.operator.", "metrics.reporter."))}
        assert not own & FLINK_2_ONLY_KEYS, "Flink 2.x key names: Flink 1.19 ignores them"
        assert own <= FLINK_1_19_KEYS, f"not checked against Flink 1.19: {sorted(own - FLINK_1_19_KEYS)}"
        # state and checkpoint storage under their 1.19 names, so they are really in effect
        for key in ("state.checkpoints.dir", "state.savepoints.dir", "state.checkpoints.num-retained",
                    "state.backend.type", "state.backend.incremental"):
            assert config.get(key), key
        assert {k for k in config if k.startswith("metrics.reporter.")} == {
            "metrics.reporter.prom.factory.class", "metrics.reporter.prom.port"}


def test_should_load_beams_runner_from_flinks_lib_parent_first(any_docs: list[Doc]) -> None:
    """The lib jar in /opt/flink/lib only stops the per-job metaspace leak when the job jar's copies
    of the same classes are never loaded: parent-first."""
    for flink in every(any_docs, "FlinkDeployment"):
        assert flink["spec"]["flinkConfiguration"]["classloader.resolve-order"] == "parent-first"


def test_should_bind_the_sdk_harness_to_loopback_only(any_docs: list[Doc]) -> None:
    harnesses = [h for _, spec, _ in pod_specs(any_docs) if (h := harness_of(spec))]
    assert harnesses
    for h in harnesses:
        command = h["command"]
        assert command[:3] == ["python", "-m", HARNESS_MODULE]
        assert flag(command, "--host") == LOOPBACK
        assert flag(command, "--port") == str(HARNESS_PORT)
        # kubelet's tcpSocket/httpGet/grpc probes dial the pod IP, where a loopback pool is not
        probe = h["startupProbe"]
        assert not {"tcpSocket", "httpGet", "grpc"} & set(probe)
        script = probe["exec"]["command"][-1]
        assert f'"{LOOPBACK}", {HARNESS_PORT}' in script


def test_should_give_the_flink_containers_the_kafka_bootstrap_servers(any_docs: list[Doc]) -> None:
    """The Kafka read is Java KafkaIO in the TaskManager JVM (and the JobManager lists partitions when
    it builds the job): both read SA_KAFKA_BOOTSTRAP from their own container, and it must be the
    Kafka the Python workers beside them use."""
    for flink in every(any_docs, "FlinkDeployment"):
        harness = harness_of(flink["spec"]["taskManager"]["podTemplate"]["spec"])
        assert harness is not None
        expected = env_of(harness)["SA_KAFKA_BOOTSTRAP"]["value"]
        for role in ("taskManager", "jobManager"):
            env = env_of(flink_container(flink["spec"][role]["podTemplate"]["spec"]))
            assert env["SA_KAFKA_BOOTSTRAP"]["value"] == expected, role


def _egress_allows(policies: list[Doc], labels: dict[str, str], port: int) -> bool:
    for policy in policies:
        spec = policy["spec"]
        if not selects(spec["podSelector"], labels) or "Egress" not in spec["policyTypes"]:
            continue
        for rule in spec.get("egress", []):
            ports = _ports(rule)
            if not ports:
                return True  # a rule without ports admits every port
            for p in ports:
                first = p["port"]
                assert isinstance(first, int), "named ports cannot be checked offline"
                if p.get("protocol", "TCP") == "TCP" and first <= port <= int(p.get("endPort", first)):
                    return True
    return False


def test_should_let_every_flink_pod_reach_the_kafka_bootstrap_servers(any_docs: list[Doc]) -> None:
    policies = of_kind(any_docs, "NetworkPolicy")
    for flink in every(any_docs, "FlinkDeployment"):
        for role in ("taskManager", "jobManager"):
            template = flink["spec"][role]["podTemplate"]
            servers = env_of(flink_container(template["spec"]))["SA_KAFKA_BOOTSTRAP"]["value"]
            for server in servers.split(","):
                port = int(server.rsplit(":", 1)[1])
                assert _egress_allows(policies, template["metadata"]["labels"], port), f"{role}: {server}"


def test_should_refuse_to_render_without_kafka_bootstrap_servers(helm: Path) -> None:
    """The Java Kafka read knows no default: an empty value must not reach the Flink containers."""
    message = render_error(helm, "pipeline.env.SA_KAFKA_BOOTSTRAP=")
    assert "pipeline.env.SA_KAFKA_BOOTSTRAP is required" in message


def test_should_count_records_read_with_counters_the_flink_job_reports(chart_docs: list[Doc]) -> None:
    """On Flink the Kafka read is Java KafkaIO: the Python source's counter never appears, and a
    ratio over it would never fire. Records read are those that reached the parse step."""
    dead_letters = next(r for r in _alert_rules(chart_docs) if r["alert"] == "PipelineDeadLetterRateHigh")
    denominator = dead_letters["expr"].split("/", 1)[1]
    assert metrics.EVENTS_PARSED in denominator and metrics.INVALID_EVENTS in denominator
    exprs = "\n".join(r["expr"] for r in _alert_rules(chart_docs))
    exprs += "\n".join(_exprs(d) for d in _dashboards(chart_docs).values())
    assert metrics.KAFKA_RECORDS_READ not in exprs
