"""docker-compose.yml and the Dockerfile, checked statically (CI machines have no Docker).

The stack itself cannot run here; these tests catch what breaks it before anyone
types `docker compose up`: a missing service, a bind mount of a path that is not
in the repo, ports and paths that disagree between compose, Prometheus and Grafana.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

EXPECTED_SERVICES = {
    "kafka",
    "kafka-init",
    "redis",
    "worker",
    "kpi-serve",
    "simulator",
    "prometheus",
    "alertmanager",
    "grafana",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount, in short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/", "~")):
                mounts.append((source, target))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_compose_file_parses_with_the_expected_services(services: dict[str, Any]) -> None:
    assert set(services) >= EXPECTED_SERVICES


def test_every_bind_mounted_host_path_exists(services: dict[str, Any]) -> None:
    mounts = [(name, src, dst) for name, svc in services.items() for src, dst in _bind_mounts(svc)]
    assert mounts, "expected the prometheus and grafana configuration to be bind-mounted"
    for name, source, _ in mounts:
        assert not source.startswith(("/", "~")), f"{name}: {source} is outside the repo"
        assert (REPO / source).exists(), f"{name}: bind-mounted {source} does not exist"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared, f"{name}: volume {volume} is not declared"


def test_kafka_runs_in_kraft_mode_with_a_healthcheck(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(str(env["KAFKA_PROCESS_ROLES"]).split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "zookeeper" not in COMPOSE.read_text().lower()
    assert "healthcheck" in kafka


def test_topics_are_created_before_anything_uses_them(services: dict[str, Any]) -> None:
    script = " ".join(_command(services["kafka-init"]))
    assert re.search(r"--topic crm-events --partitions 8\b", script)
    assert re.search(r"--topic crm-events\.dlq\b", script)
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker", "kpi-serve", "simulator"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["environment"]["KPI_TOPIC_PARTITIONS"] == "8"


def test_redis_keeps_an_append_only_file_on_a_volume(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    argv = _command(redis)
    assert _option(argv, "--appendonly") == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis


def test_workers_scale_and_wait_for_their_dependencies(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert worker["build"]["context"] == "."
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker and "ports" not in worker, "a scaled service cannot pin these"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    argv = _command(worker)
    assert argv[0] == "worker"
    assert _option(argv, "--kafka-url") == "kafka://kafka:9092"
    assert _option(argv, "--redis-url") == "redis://redis:6379/0"


def test_every_healthy_dependency_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, dict):
            for dep, spec in depends.items():
                if spec.get("condition") == "service_healthy":
                    assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"


def test_kpi_serve_publishes_its_port_and_takes_ingest_tokens(services: dict[str, Any]) -> None:
    serve = services["kpi-serve"]
    argv = _command(serve)
    assert argv[0] == "serve"
    assert _option(argv, "--port") == "9300"
    assert any(str(p).endswith("9300:9300") for p in serve["ports"])
    assert "KPI_INGEST_TOKENS" in serve["environment"]
    for setting in ("KPI_INGEST_HMAC_SECRET", "KPI_READ_TOKENS", "KPI_VIEW_KEYS"):
        assert setting in serve["environment"], setting


def test_published_ports_bind_to_loopback_unless_told_otherwise(services: dict[str, Any]) -> None:
    """KPIs are sensitive and several services have no login: nothing listens on every
    interface by default (issue 15); KPI_BIND_ADDRESS opens them deliberately."""
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert {"kpi-serve", "prometheus", "grafana"} <= set(published)
    for name, ports in published.items():
        for port in ports:
            host = re.sub(r"\$\{KPI_BIND_ADDRESS:-([^}]*)\}", r"\1", str(port)).rsplit(":", 2)
            assert len(host) == 3 and host[0] == "127.0.0.1", (name, port)


def test_simulator_only_runs_with_the_sim_profile(services: dict[str, Any]) -> None:
    simulator = services["simulator"]
    assert simulator["profiles"] == ["sim"]
    argv = _command(simulator)
    assert argv[0] == "simulate"
    assert _option(argv, "--rate") == "20"


def test_prometheus_scrapes_what_compose_runs(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert ("./prometheus", "/etc/prometheus") in _bind_mounts(prometheus)
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serve_port = _option(_command(services["kpi-serve"]), "--port")
    assert jobs["kpi"]["static_configs"][0]["targets"] == [f"kpi-serve:{serve_port}"]
    (dns,) = jobs["kpi-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A"
    assert str(dns["port"]) == _option(_command(services["worker"]), "--web-port")
    # A worker listening on the container's loopback cannot be scraped from the Prometheus container.
    assert _option(_command(services["worker"]), "--web-host") == "0.0.0.0"  # noqa: S104 - in its container
    assert config["global"]["scrape_interval"] == "15s"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    alertmanager_mounts = _bind_mounts(services["alertmanager"])
    assert ("./prometheus/alertmanager.yml", "/etc/alertmanager/alertmanager.yml") in alertmanager_mounts


def test_grafana_provisioning_and_home_dashboard_line_up(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = dict((dst, src) for src, dst in _bind_mounts(grafana))
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = yaml.safe_load((REPO / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == "./grafana/dashboards"
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/sales-wall.json"
    assert (REPO / "grafana" / "dashboards" / "sales-wall.json").is_file()


def test_dockerfile_builds_a_non_root_kpi_image() -> None:
    assert DOCKERFILE.is_file()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["kpi"\]$', text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}


def test_dockerfile_copies_exist_and_are_not_docker_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _ = line.split()
        for source in sources:
            source = source.rstrip("/")
            assert (REPO / source).exists(), f"COPY {source}: not in the repo"
            excluded = any(fnmatch.fnmatch(source, pattern) for pattern in ignored)
            assert not excluded, f"COPY {source}: excluded by .dockerignore"
