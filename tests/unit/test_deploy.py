"""deploy/: the image, compose file and Kubernetes manifests, checked offline (no Docker
engine or cluster here): they parse, the Kubernetes resources are valid against the API's
schemas (kubernetes-validate), and every command, variable, probe, port and file they name
exists in the code and the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from makelocal import nats_auth
from makelocal.cli import SERVICES
from makelocal.embedded import nats_binary
from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from services.registry.settings import RegistrySettings
from services.web.settings import WebSettings
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
# what the image runs (the mail sink is the `local` extra's, which the image leaves out)
COMMANDS = set(SERVICES)
PORTS = {"registry": 8001, "registry-relay": 8001, "matcher": 8002, "notifier": 8003,
         "web": 8000}
# the web page reads and writes these public APIs over HTTP (no NATS, no database)
WEB_UPSTREAMS = {"MAKELOCAL_REGISTRY_URL": "registry", "MAKELOCAL_MATCHER_URL": "matcher",
                 "MAKELOCAL_NOTIFIER_URL": "notifier"}


def variables() -> set[str]:
    """Every MAKELOCAL_* variable some service reads."""
    fields: set[str] = set()
    for settings in (RegistrySettings, MatcherSettings, NotifierSettings, WebSettings):
        fields |= set(settings.model_fields)
    return {f"MAKELOCAL_{name.upper()}" for name in fields}


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """deploy/Dockerfile's instructions (continuation lines joined, comments dropped) as
    (INSTRUCTION, arguments), by build stage."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", "")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_the_image_runs_the_cli_and_copies_what_exists() -> None:
    stages = dockerfile_stages()
    final = dict(stages[-1])
    assert final["ENTRYPOINT"] == '["makelocal"]'
    assert json.loads(final["CMD"])[0] in COMMANDS
    copied = {source for stage in stages for instruction, arguments in stage
              if instruction == "COPY" and not arguments.startswith("--")
              for source in arguments.split()[:-1]}
    for source in copied:
        assert (ROOT / source).exists(), source
    # every package pyproject.toml installs is in the build context the image installs from
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    # non-root, by the numeric id the Kubernetes manifests require (runAsUser 10001)
    assert final["USER"] == "10001"


def test_the_image_is_multi_stage_slim_and_installs_the_base_package_only() -> None:
    """No extra: NATS, PostgreSQL and the SMTP sink of `makelocal up` (the `local` extra),
    the bench's and the tests' packages stay out of production."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert {stage[0][1].split()[0] for stage in stages} == {"python:3.11-slim"}
    installs = [arguments for stage in stages for instruction, arguments in stage
                if instruction == "RUN" and "pip install" in arguments]
    assert installs
    for run in installs:
        for command in run.split("&&"):
            if "pip install" not in command:
                continue
            words = command.split("pip install", 1)[1].split()
            assert [w for w in words if not w.startswith("-")] == ["."], command
            assert not {"-e", "--editable", "-r", "--requirement"} & set(words), command
    assert not any(instruction == "RUN" and "pip install" in arguments
                   for instruction, arguments in stages[-1])  # built, then only copied


def test_compose_runs_the_whole_topology_with_commands_and_variables_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "makelocal:latest"}
    kinds = sorted(s["command"][0] for s in ours.values())
    assert kinds == ["matcher", "matcher", "notifier", "notifier", "registry", "registry",
                     "web"]
    assert {"nats-1", "nats-2", "nats-3", "postgres", "prometheus", "grafana",
            "mailpit"} <= set(services)
    known = variables()
    partitions = set()
    for name, service in ours.items():
        assert service["command"][0] in COMMANDS, name
        env = service["environment"]
        assert set(env) <= known, f"{name}: {set(env) - known}"
        user = nats_auth.COMMAND_USER.get(service["command"][0])  # its own NATS user
        if user is None:  # the web page: HTTP only, given no NATS or database to reach
            assert not {v for v in env if v.startswith(("MAKELOCAL_NATS_",
                                                         "MAKELOCAL_DATABASE_"))}, name
            assert "nats-1" not in service["depends_on"], name
            continue
        assert env["MAKELOCAL_NATS_URL"].count("nats://") == 3  # every cluster node
        assert env["MAKELOCAL_NATS_USER"] == user, name
        variable = nats_auth.password_variable(user)
        assert env["MAKELOCAL_NATS_PASSWORD"].startswith(f"${{{variable}:?"), name
        if service["command"][0] == "matcher":
            partitions.add(env["MAKELOCAL_MATCHER_PARTITION"])
            assert env["MAKELOCAL_PARTITIONS"] == "2"
    assert partitions == {"0", "1"}
    # the web page: the APIs by their compose names, its key a secret from the environment
    web = services["web"]["environment"]
    for variable, kind in WEB_UPSTREAMS.items():
        hosts = set()
        for url in web[variable].split(","):
            host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()
            assert ours[host]["command"][0] == kind and int(port) == PORTS[kind], variable
            assert host in services["web"]["depends_on"], host
            hosts.add(host)
        if kind == "matcher":  # each partition holds its own designs: the page asks all
            assert hosts == {n for n, s in ours.items() if s["command"][0] == "matcher"}
    assert web["MAKELOCAL_WEB_API_KEY"].startswith("${WEB_API_KEY:?")
    assert services["web"]["ports"] == [f"{web['MAKELOCAL_WEB_PORT']}:{PORTS['web']}"]
    # the links in alert emails open the web page, published on the host's port 8000
    for name, service in ours.items():
        if service["command"][0] == "notifier":
            env = service["environment"]
            assert env["MAKELOCAL_NOTIFIER_PUBLIC_URL"] == "http://localhost:8000", name
            assert env["MAKELOCAL_NOTIFIER_PAGES_URL"] == "http://localhost:8000", name
    for node in ("nats-1", "nats-2", "nats-3"):
        command = services[node]["command"]
        assert "--jetstream" in command and "--cluster_name" in command
        # only the users of nats/auth.conf, their passwords from the environment
        config = command[command.index("--config") + 1]
        assert f"./nats/auth.conf:{config}:ro" in services[node]["volumes"]
        assert set(services[node]["environment"]) == {
            nats_auth.password_variable(user) for user in nats_auth.USERS}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_compose_nats_users_are_the_rules_of_nats_auth_and_the_server_accepts_them() -> None:
    """deploy/nats/auth.conf is what makelocal.nats_auth renders for compose's partitions,
    and nats-server itself finds it valid once the passwords are in its environment."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    partitions = int(compose["x-env"]["MAKELOCAL_PARTITIONS"])
    path = DEPLOY / "nats" / "auth.conf"
    assert path.read_text() == nats_auth.server_config(
        nats_auth.deploy_passwords(), partitions=partitions), \
        "regenerate: python -m makelocal.nats_auth > deploy/nats/auth.conf"
    passwords = {nats_auth.password_variable(user): "x" for user in nats_auth.USERS}
    checked = subprocess.run([nats_binary(), "-c", str(path), "-t"], capture_output=True,
                             text=True, env=os.environ | passwords, timeout=30)
    assert checked.returncode == 0, checked.stderr
    missing = subprocess.run([nats_binary(), "-c", str(path), "-t"], capture_output=True,
                             text=True, env={}, timeout=30)
    assert missing.returncode != 0 and "NATS_REGISTRY_PASSWORD" in missing.stderr


def base_resources() -> list[dict]:
    base = DEPLOY / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in load_all(base / name)]


def test_kubernetes_manifests_are_valid_against_the_api_schemas() -> None:
    """Strict: an unknown or misplaced field (a probe under the pod, not the container)
    is an error, as `kubectl apply --validate=strict` would make it."""
    version = kubernetes_validate.latest_version()
    docs = base_resources()
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "Service",
                                         "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    # and the check can fail: the first Deployment with its probe one level too high
    broken = next(d for d in docs if d["kind"] == "Deployment")
    pod = broken["spec"]["template"]["spec"]
    pod["readinessProbe"] = pod["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_deployments_probe_request_and_run_what_exists() -> None:
    docs = base_resources()
    known = variables()
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= known, set(config["data"]) - known
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        "matcher-0", "matcher-1", "notifier", "registry", "web"]
    pod_labels = []
    for d in deployments:
        template = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= template["metadata"][
            "labels"].items()
        pod_labels.append(template["metadata"]["labels"])
        (container,) = template["spec"]["containers"]
        command = container["args"][0]
        assert command in COMMANDS
        port = container["ports"][0]["containerPort"]
        assert port == PORTS[command]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert template["spec"]["securityContext"] == {"runAsNonRoot": True,
                                                       "runAsUser": 10001}
        # scraped by Prometheus's pod discovery, on the port serving /metrics
        annotations = template["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)}
        assert {e["name"] for e in container["env"]} <= known
        env = {e["name"]: e for e in container["env"]}
        user = nats_auth.COMMAND_USER.get(command)  # its own NATS user, password in the Secret
        if user is None:  # the web page: HTTP only, no NATS user
            assert "MAKELOCAL_NATS_USER" not in env and "MAKELOCAL_NATS_PASSWORD" not in env
            continue
        assert env["MAKELOCAL_NATS_USER"]["value"] == user
        assert env["MAKELOCAL_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "makelocal", "key": nats_auth.secret_key(user)}
    for kind in ("Service", "PodDisruptionBudget"):
        for d in (x for x in docs if x["kind"] == kind):
            selector = d["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(selector.items() <= labels.items() for labels in pod_labels), d
    # the web page: its key from the Secret, the APIs at Services selecting their pods
    (web,) = (d for d in deployments if d["metadata"]["name"] == "web")
    env = {e["name"]: e for e in web["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAKELOCAL_WEB_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "makelocal", "key": "web-api-key"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for variable, kind in WEB_UPSTREAMS.items():
        for url in config["data"][variable].split(","):
            host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()
            service = services[host]
            assert [p["port"] for p in service["spec"]["ports"]] == [int(port)] == [
                PORTS[kind]]
            selected = [d for d in deployments if service["spec"]["selector"].items()
                        <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert selected and all(d["spec"]["template"]["spec"]["containers"][0]["args"][0]
                                    == kind for d in selected), variable
    matchers = config["data"]["MAKELOCAL_MATCHER_URL"].split(",")
    assert len(matchers) == sum(1 for d in deployments if d["spec"]["template"]["spec"][
        "containers"][0]["args"][0] == "matcher")  # every partition's matcher
    assert config["data"]["MAKELOCAL_NOTIFIER_PAGES_URL"] == config["data"][
        "MAKELOCAL_NOTIFIER_PUBLIC_URL"]  # both the web page's public URL
    overlay = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "production" /
                              "kustomization.yaml").read_text())
    assert (DEPLOY / "k8s" / "overlays" / "production" / overlay["resources"][0]).is_dir()
    names = {d["metadata"]["name"] for d in deployments}
    assert {r["name"] for r in overlay["replicas"]} <= names


def test_prometheus_scrapes_every_service_compose_and_makelocal_up_run() -> None:
    """deploy/prometheus/compose.yml has one job per service kind with every compose
    instance as a target; prometheus.yml (which `makelocal up --prometheus` fills with the
    stack's ports) has the same jobs."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    expected: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        if service.get("image") == "makelocal:latest":
            kind = service["command"][0]
            expected.setdefault(f"makelocal-{kind}", set()).add(f"{name}:{PORTS[kind]}")
    assert "makelocal-web" in expected
    for file in ("compose.yml", "prometheus.yml"):
        config = yaml.safe_load((DEPLOY / "prometheus" / file).read_text())
        jobs = {job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
                for job in config["scrape_configs"]}
        assert set(jobs) == set(expected), file
        if file == "compose.yml":
            assert jobs == expected


def test_nats_runs_three_jetstream_nodes_and_streams_keep_three_replicas() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    base = DEPLOY / "k8s" / "base"
    env = {e["name"]: e.get("value") for name in ("registry.yaml", "matcher.yaml",
                                                   "notifier.yaml")
           for d in load_all(base / name)
           for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    for service in ("REGISTRY", "MATCHER", "NOTIFIER"):
        assert env[f"MAKELOCAL_{service}_STREAM_REPLICAS"] == "3"


def test_nats_in_kubernetes_admits_only_the_users_of_nats_auth() -> None:
    """The Helm values' users are makelocal.nats_auth's rules for the base's partitions,
    every password read from the Secret `makelocal`, the key the services read too."""
    values = yaml.safe_load((DEPLOY / "k8s" / "nats-values.yaml").read_text())
    config = next(d for d in base_resources() if d["kind"] == "ConfigMap")
    partitions = int(config["data"]["MAKELOCAL_PARTITIONS"])
    assert values["config"]["merge"]["authorization"]["users"] == nats_auth.helm_users(
        partitions), "regenerate: python -m makelocal.nats_auth --helm"
    assert values["container"]["env"] == {
        nats_auth.password_variable(user): {"valueFrom": {"secretKeyRef": {
            "name": "makelocal", "key": nats_auth.secret_key(user)}}}
        for user in nats_auth.USERS}


def test_the_configuration_doc_documents_every_variable() -> None:
    """docs/configuration.md's table: every MAKELOCAL_ setting, a row each."""
    rows = [line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
            if line.startswith("| `")]
    documented = {name for line in rows
                  for name in re.findall(r"`(MAKELOCAL_[A-Z0-9_]+|OTEL_[A-Z_]+)`",
                                         line.split("|")[1])}
    missing = sorted(variables() - documented)
    assert not missing, f"docs/configuration.md's table lacks {missing}"
    # the standard OpenTelemetry variables the services' tracing reads
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_SERVICE_NAME"} <= documented
