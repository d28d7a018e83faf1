"""deploy/k8s: every manifest and every rendered overlay against the Kubernetes schemas, and against the code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate  # ships no type information (see the mypy override in pyproject.toml)
import pytest

from manager.config import load_config
from tests.deploy import files, names
from tests.deploy.kustomize import Doc, identity, kubectl, render, render_with_kubectl

# The schema versions the manifests must satisfy: the oldest Kubernetes still commonly run and a current one.
K8S_VERSIONS = ("1.30.0", "1.34.0")
SCHEMALESS_KINDS = frozenset({"ServiceMonitor"})  # a CRD: checked structurally in test_servicemonitor
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
PROBE_PATHS = {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/readyz"}


@pytest.fixture(autouse=True)
def _pipeline() -> Iterator[None]:
    with names.pipeline_registered():
        yield


@pytest.fixture(scope="module", params=[o for o in files.OVERLAYS])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    name: str = request.param
    return name, render(files.K8S / "overlays" / name)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def settings() -> dict[str, str]:
    (configmap,) = files.load_documents(files.K8S / "base" / "configmap.yaml")
    data: dict[str, str] = configmap["data"]
    return data


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def validate(doc: Doc, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(
            f"{where}: {doc['kind']}/{doc['metadata']['name']} is not valid for Kubernetes {version}: "
            f"{exc.message} at {'.'.join(str(p) for p in exc.path)}"
        )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", files.k8s_manifests(), ids=lambda p: str(p.relative_to(files.K8S)))
def test_every_manifest_file_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = files.load_documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        if doc["kind"] not in SCHEMALESS_KINDS:
            validate(doc, version, str(path.relative_to(files.ROOT)))


def test_the_schema_check_rejects_what_kubernetes_would() -> None:
    """The validator is strict: an unknown field and a wrong type both fail (else the test above proves nothing)."""
    (deployment, *_) = files.load_documents(files.K8S / "schedulers" / "csv-import" / "csv-import.yaml")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[0], strict=True)
    wrong = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_overlay_validates(overlay: tuple[str, list[Doc]], version: str) -> None:
    name, docs = overlay
    assert by_kind(docs, "Deployment"), f"overlay {name} renders no Deployment"
    for doc in docs:
        if doc["kind"] not in SCHEMALESS_KINDS:
            validate(doc, version, f"overlay {name}")


def test_the_test_renderer_agrees_with_kubectl_kustomize(overlay: tuple[str, list[Doc]]) -> None:
    binary = kubectl()
    if binary is None:
        pytest.skip(
            "kubectl (with its built-in kustomize) is not installed; the overlays were rendered by the "
            "test renderer only"
        )
    name, docs = overlay
    theirs = {identity(doc): doc for doc in render_with_kubectl(binary, files.K8S / "overlays" / name)}
    ours = {identity(doc): doc for doc in docs}
    assert sorted(ours) == sorted(theirs)
    for key, doc in ours.items():
        assert doc == theirs[key], f"overlay {name}: {key} differs from kubectl kustomize"


def test_each_pattern_runs_every_scheduler_exactly_once(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    running: dict[str, list[str]] = {}
    for deployment, pod in pod_specs(by_kind(docs, "Deployment")):
        (container,) = pod["containers"]
        env = {**settings(), **{e["name"]: e.get("value", "") for e in container.get("env", [])}}
        argv = container.get("command") or ["python", "-m", "runner"]  # the image's ENTRYPOINT
        for scheduler in files.schedulers_run([*argv, *container.get("args", [])], env, files.DEPLOYED_SCHEDULERS):
            running.setdefault(scheduler, []).append(deployment["metadata"]["name"])
    assert set(running) <= names.known_schedulers(), (
        f"unknown scheduler names: {set(running) - names.known_schedulers()}"
    )
    assert set(running) == files.DEPLOYED_SCHEDULERS, f"overlay {name} runs {sorted(running)}"
    twice = {s: where for s, where in running.items() if len(where) > 1}
    assert not twice, f"overlay {name} runs a scheduler in two Deployments: {twice}"


def test_probes_use_routes_and_the_port_the_app_serves(overlay: tuple[str, list[Doc]]) -> None:
    routes = names.http_routes()
    port = int(settings()["SCHEDULER_HTTP_PORT"])
    for deployment, pod in pod_specs(by_kind(overlay[1], "Deployment")):
        where = deployment["metadata"]["name"]
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": port}, f"{where}: the container port must be SCHEDULER_HTTP_PORT ({port})"
        for probe, path in PROBE_PATHS.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{where}: {probe} should ask {path}"
            assert "GET" in routes[get["path"]], f"{where}: {probe} path {get['path']} is not served"
            assert ports.get(get["port"], get["port"]) == port, f"{where}: {probe} port"


def test_the_settings_and_secret_example_are_a_configuration_the_code_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in list(os.environ):
        if variable.startswith(("SCHEDULER_", "DATABASE_", "OPENAI_")) or variable.endswith(("_INTERVAL", "_ENABLED")):
            monkeypatch.delenv(variable)
    secret = files.secret_example()
    for key, value in {**settings(), **secret["stringData"]}.items():
        monkeypatch.setenv(key, value)
    config = load_config()
    assert config.platform.scheduler_http_host == "0.0.0.0"
    assert config.storage.driver == "postgresql", "pods must share a server database, not a per-pod SQLite file"
    assert config.platform.scheduler_admin_token is not None


def test_settings_and_secrets_are_variables_the_code_reads(overlay: tuple[str, list[Doc]]) -> None:
    variables = set(settings()) | set(files.secret_example()["stringData"])
    for _, pod in pod_specs(overlay[1]):
        for container in pod["containers"]:
            variables |= {e["name"] for e in container.get("env", [])}
    assert not names.unknown_settings(variables), f"not read by the code: {names.unknown_settings(variables)}"


def test_containers_get_settings_from_the_configmap_and_the_secret(overlay: tuple[str, list[Doc]]) -> None:
    configmaps = {doc["metadata"]["name"] for doc in by_kind(overlay[1], "ConfigMap")}
    secret = files.secret_example()["metadata"]["name"]
    assert not by_kind(overlay[1], "Secret"), "an overlay must never ship (and overwrite) the Secret"
    for owner, pod in pod_specs(overlay[1]):
        for container in pod["containers"]:
            sources = container["envFrom"]
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= configmaps
            assert [s["secretRef"]["name"] for s in sources if "secretRef" in s] == [secret], owner["metadata"]["name"]


def test_pods_are_locked_down(overlay: tuple[str, list[Doc]]) -> None:
    for owner, pod in pod_specs(overlay[1]):
        where = owner["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["runAsNonRoot"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where


def test_termination_grace_outlasts_the_drain(overlay: tuple[str, list[Doc]]) -> None:
    grace = files.seconds(settings()["SCHEDULER_SHUTDOWN_GRACE"])
    for deployment, pod in pod_specs(by_kind(overlay[1], "Deployment")):
        assert pod["terminationGracePeriodSeconds"] > grace, deployment["metadata"]["name"]


def test_every_object_carries_the_recommended_labels(overlay: tuple[str, list[Doc]]) -> None:
    for doc in overlay[1]:
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
    for owner, _ in pod_specs(overlay[1]):
        template = owner["spec"]["template"]["metadata"]["labels"]
        assert set(RECOMMENDED_LABELS) <= set(template), owner["metadata"]["name"]
        selector = owner["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= template.items(), f"{owner['metadata']['name']}: selector misses its pods"


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_disruption_budgets_exactly_where_two_or_more_replicas_run(overlay: tuple[str, list[Doc]]) -> None:
    budgets = by_kind(overlay[1], "PodDisruptionBudget")
    for deployment in by_kind(overlay[1], "Deployment"):
        pods = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if matches(b["spec"]["selector"]["matchLabels"], pods)]
        replicas = deployment["spec"].get("replicas", 1)
        where = deployment["metadata"]["name"]
        if replicas >= 2:
            assert len(covering) == 1, f"{where}: {replicas} replicas need one PodDisruptionBudget"
            assert covering[0]["spec"]["minAvailable"] < replicas, f"{where}: the budget would block every drain"
        else:
            assert not covering, f"{where}: a budget on one replica blocks node drains forever"
    assert len(budgets) == sum(d["spec"].get("replicas", 1) >= 2 for d in by_kind(overlay[1], "Deployment"))


def test_every_deployment_has_a_service_for_metrics_and_admin(overlay: tuple[str, list[Doc]]) -> None:
    services = by_kind(overlay[1], "Service")
    for deployment in by_kind(overlay[1], "Deployment"):
        pods = deployment["spec"]["template"]["metadata"]["labels"]
        (service,) = [s for s in services if matches(s["spec"]["selector"], pods)]
        (port,) = service["spec"]["ports"]
        assert port["name"] == "http" and port["targetPort"] == "http", deployment["metadata"]["name"]


def test_the_scaling_pattern(overlay: tuple[str, list[Doc]]) -> None:
    """Two replicas (failover) for the pipeline; one for retention; session-processing twice in mixed."""
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in by_kind(overlay[1], "Deployment")}
    for name, count in replicas.items():
        expected = 1 if name == "livedash-run-history-retention" else 2
        assert count == expected, f"{name}: {count} replicas"
    if overlay[0] == "mixed":
        assert replicas["livedash-session-processing"] == 2


def test_the_migration_job_runs_the_one_shot_migrate(overlay: tuple[str, list[Doc]]) -> None:
    (job,) = by_kind(overlay[1], "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "manager", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 1


def test_servicemonitor_scrapes_every_scheduler_service() -> None:
    docs = render(files.K8S / "overlays" / "servicemonitor")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector: dict[str, str] = monitor["spec"]["selector"]["matchLabels"]
    services = by_kind(docs, "Service")
    scraped = [s for s in services if matches(selector, s["metadata"]["labels"])]
    assert scraped == services, "the ServiceMonitor must select every scheduler Service"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and "GET" in names.http_routes()["/metrics"]
    assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}


def test_no_secret_value_outside_the_example() -> None:
    """Only secret.example.yaml holds credentials (placeholders); nothing else names a password or token value."""
    secret = files.secret_example()["stringData"]
    for path in files.k8s_manifests():
        if path.name == "secret.example.yaml":
            continue
        text = path.read_text(encoding="utf-8")
        for key in ("DATABASE_URL", "DATABASE_PASSWORD", "SCHEDULER_ADMIN_TOKEN", "OPENAI_API_KEY"):
            assert f"{key}:" not in text and f"name: {key}" not in text, f"{path}: {key} belongs in the Secret"
        for value in secret.values():
            assert not value or value not in text, f"{path} repeats a secret value"
