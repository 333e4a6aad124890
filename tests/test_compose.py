"""dashboards/docker-compose.yml: every file it mounts exists, and its ports and paths agree
with prometheus.yml and the Grafana provisioning files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
COMPOSE = DASHBOARDS / "docker-compose.yml"
SPEC: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = SPEC["services"]


def _mounts(service: str) -> dict[PurePosixPath, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[PurePosixPath(target)] = (DASHBOARDS / source).resolve()
    return mounts


def _host_path(service: str, container_path: str) -> Path:
    """Where ``container_path`` of ``service`` lives on the host, through its mounts."""
    path = PurePosixPath(container_path)
    for target, source in _mounts(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{service} does not mount {container_path}")


def _flag(service: str, name: str) -> str:
    command = SERVICES[service]["command"]
    text = command if isinstance(command, str) else " ".join(command)
    value = next(word for word in text.split() if word.startswith(f"{name}="))
    return value.split("=", 1)[1]


def _published(service: str) -> list[str]:
    return [str(p) for p in SERVICES[service].get("ports", [])]


def test_every_mounted_file_exists() -> None:
    assert set(SERVICES) == {"prometheus", "serve", "grafana", "demo"}
    for service in SERVICES:
        for source in _mounts(service).values():
            assert source.exists(), f"{service} mounts {source}, which does not exist"


def test_every_port_is_published_on_127_0_0_1_only() -> None:
    ports = [p for service in SERVICES for p in _published(service)]
    assert ports == ["127.0.0.1:9090:9090", "127.0.0.1:9464:9464", "127.0.0.1:3000:3000"]


def test_prometheus_loads_the_shipped_config_and_rules_and_scrapes_serve() -> None:
    config_path = _host_path("prometheus", _flag("prometheus", "--config.file"))
    assert config_path == DASHBOARDS / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).is_file(), rule_file
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]]
    assert targets == ["localhost:9464"]
    # serve shares Prometheus's network namespace, so localhost:9464 is serve's port.
    assert SERVICES["serve"]["network_mode"] == "service:prometheus"
    serve = " ".join(SERVICES["serve"]["command"])
    assert "omniq-observe serve --host 0.0.0.0 --port 9464" in serve
    assert "--storage sqlite:////data/omniq-events.db" in serve
    assert "omniq-data:/data" in SERVICES["serve"]["volumes"]
    assert "omniq-data:/data" in SERVICES["demo"]["volumes"]
    assert _flag("prometheus", "--web.listen-address").endswith(":9090")


def test_grafana_gets_the_shipped_provisioning_and_dashboards() -> None:
    provisioning = DASHBOARDS / "grafana" / "provisioning"
    datasources = _host_path("grafana", "/etc/grafana/provisioning/datasources")
    assert datasources == provisioning / "datasources"
    source = yaml.safe_load((datasources / "omniq-prometheus.yml").read_text(encoding="utf-8"))
    url = urlsplit(source["datasources"][0]["url"])
    assert (url.hostname, url.port) == ("localhost", 9090)  # Prometheus, same namespace
    assert SERVICES["grafana"]["network_mode"] == "service:prometheus"
    providers = _host_path("grafana", "/etc/grafana/provisioning/dashboards")
    assert providers == provisioning / "dashboards"
    provider = yaml.safe_load((providers / "omniq.yml").read_text(encoding="utf-8"))
    folder = _host_path("grafana", provider["providers"][0]["options"]["path"])
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "omniq-overview.json", "omniq-queue.json",
    ]


def test_docker_compose_accepts_the_file_where_it_is_installed() -> None:
    docker = shutil.which("docker")
    works = docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30
    ).returncode == 0
    if not works:
        return  # `docker compose` is not on this machine; the checks above still hold
    result = subprocess.run([str(docker), "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
