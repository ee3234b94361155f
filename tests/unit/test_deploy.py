"""deploy/ against the code: entry points, settings, ports, health checks, collector wiring.

Services and their settings are discovered (services/*/service.py → SPEC.settings_type), so a
service or setting added later is checked without editing this file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from opentelemetry.sdk import environment_variables as otel_sdk_env

from gradients.runtime.config import MeshSettings, settings_reference

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cluster.yml", "docker-compose.eval-worker.yml")
MESH_IMAGE = "${MESH_IMAGE:-gradients-mesh:latest}"
COMPOSE_OWN_VARIABLES = {"COMPOSE_PROJECT_NAME"}  # read by docker compose itself from .env


def discovered_services() -> dict[str, object]:
    """name → SPEC of every services/<name>/service.py."""
    specs = {}
    for path in sorted((ROOT / "services").glob("*/service.py")):
        name = path.parent.name
        specs[name] = importlib.import_module(f"services.{name}.service").SPEC
    return specs


SPECS = discovered_services()


def env_names(*classes) -> set[str]:
    return {name for name, _, _ in settings_reference(*[c for c in classes if c is not None])}


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def mesh_services(compose: dict) -> dict[str, dict]:
    """Compose services running one of our services (`python -m services.<name>`)."""
    out = {}
    for name, svc in compose.get("services", {}).items():
        command = svc.get("command") or []
        if command[:2] == ["python", "-m"] and command[2].startswith("services."):
            out[name] = svc
    return out


def published_container_ports(svc: dict) -> list[int]:
    return [int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])]


COMPOSE = load("docker-compose.yml")


def test_the_six_services_run_from_one_image_with_their_entry_points():
    services = mesh_services(COMPOSE)
    assert set(services) == set(SPECS) and len(SPECS) == 6
    for name, svc in services.items():
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert svc["image"] == MESH_IMAGE and svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None, f"services/{name}/__main__.py"
        assert SPECS[name].name == name


def test_each_entry_point_starts_and_reads_its_configuration():
    """`python -m services.<name>` reaches run_service: a bad setting stops it with exit 2 naming it."""
    env = dict(os.environ, GRADIENTS_LOG_LEVEL="LOUD")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SPECS
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err[-2000:]}"
        assert f"{name}: invalid configuration" in err and "GRADIENTS_LOG_LEVEL='LOUD'" in err, err[-2000:]


@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_every_variable_a_service_sets_is_read_by_its_settings(file):
    compose = load(file)
    services = compose["services"]
    checked = 0
    for name, svc in services.items():
        if name not in SPECS:
            continue
        known = env_names(MeshSettings, SPECS[name].settings_type)
        for var in svc.get("environment") or {}:
            if var.startswith("OTEL_") and hasattr(otel_sdk_env, var):
                continue  # read by the OpenTelemetry SDK itself (e.g. OTEL_METRIC_EXPORT_INTERVAL)
            assert var in known, f"{file}: {name} sets {var}, which no setting of {name} reads"
            checked += 1
    assert checked > 0


def test_ports_health_checks_and_addresses_match_the_config_defaults():
    services = mesh_services(COMPOSE)
    env = services["task_service"]["environment"]
    for name, svc in services.items():
        port = SPECS[name].default_port
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "gradients.healthcheck", f"127.0.0.1:{port}"]
        assert "GRADIENTS_GRPC_PORT" not in (svc.get("environment") or {}), "services listen on their default ports"
        assert all(p == port for p in published_container_ports(svc)), f"{name} publishes {svc['ports']}"
        # Every service reaches every other at host:default_port, host being its name or an alias.
        host, _, addr_port = env[f"GRADIENTS_{name.upper()}_ADDR"].rpartition(":")
        aliases = (svc.get("networks") or {}).get("default", {}).get("aliases", [])
        assert host in [name, *aliases] and int(addr_port) == port
        assert "_" not in host, "some gRPC clients reject '_' in host names"
    # They share one environment block (the x-mesh-service anchor).
    assert all(svc["environment"] == env for svc in services.values())
    assert published_container_ports(COMPOSE["services"]["task_service"]) == [SPECS["task_service"].default_port]
    assert published_container_ports(COMPOSE["services"]["selector"]) == [SPECS["selector"].default_port]


def test_healthcheck_module_exists():
    module = importlib.import_module("gradients.healthcheck")
    assert callable(module.main) and callable(module.check)


def test_infrastructure_nats_redis_and_dependencies():
    services = COMPOSE["services"]
    nats = services["nats"]
    assert "-js" in nats["command"] and nats["command"][nats["command"].index("-m") + 1] == "8222"
    assert any("127.0.0.1:8222/healthz" in part for part in nats["healthcheck"]["test"])
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name, svc in mesh_services(COMPOSE).items():
        for dep in ("nats", "redis"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", name
        assert svc["environment"]["GRADIENTS_NATS_URL"] == "nats://nats:4222"
        assert svc["environment"]["GRADIENTS_REDIS_URL"] == "redis://redis:6379/0"


def test_otlp_flows_from_services_through_the_collector_to_jaeger_and_prometheus():
    services = COMPOSE["services"]
    endpoint = mesh_services(COMPOSE)["task_service"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = endpoint.removeprefix("http://").split(":")
    assert host in services
    collector_svc = services[host]
    assert "./otel-collector.yaml:/etc/otelcol/config.yaml:ro" in collector_svc["volumes"]

    collector = load("otel-collector.yaml")
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"0.0.0.0:{port}"
    pipelines = collector["service"]["pipelines"]
    for pipeline in pipelines.values():
        assert set(pipeline["receivers"]) <= set(collector["receivers"])
        assert set(pipeline["processors"]) <= set(collector["processors"])
        assert set(pipeline["exporters"]) <= set(collector["exporters"])
    (traces_exporter,) = pipelines["traces"]["exporters"]
    jaeger_host, jaeger_port = collector["exporters"][traces_exporter]["endpoint"].split(":")
    assert jaeger_host == "jaeger" and jaeger_port == "4317" and "jaeger" in services
    assert published_container_ports(services["jaeger"]) == [16686]  # the UI

    (metrics_exporter,) = pipelines["metrics"]["exporters"]
    assert metrics_exporter == "prometheus"
    scrape_port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    prometheus = load("prometheus.yml")
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"{host}:{scrape_port}" in targets
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert published_container_ports(services["prometheus"]) == [9090]


def test_eval_worker_reserves_a_gpu_and_scales():
    worker = COMPOSE["services"]["eval_worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "replicas" in worker["deploy"]
    assert "container_name" not in worker and not worker.get("ports"), "a fixed name or host port blocks --scale"


def test_example_miner_runs_the_reference_miner_cli_in_its_own_profile():
    import typer.main

    from gradients.cli import app
    from miner_sdk.training.strategies import STRATEGIES

    miner = COMPOSE["services"]["miner"]
    assert miner["profiles"] == ["miner"] and miner["image"] == MESH_IMAGE
    command = miner["command"]
    assert command[:5] == ["gradients", "miner", "run", "--strategy", "autotrain-default"]
    assert "autotrain-default" in STRATEGIES
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gradients"] == "gradients.cli:app"
    run = typer.main.get_command(app).commands["miner"].commands["run"]
    options = {opt for param in run.params for opt in param.opts}
    used = {part for part in command if part.startswith("--")}
    assert used <= options, f"unknown options {used - options}"
    validator = command[command.index("--validator") + 1]
    assert validator == f"selector:{SPECS['selector'].default_port}"


def test_named_volumes_are_declared_and_every_service_keeps_its_data():
    for file in COMPOSE_FILES:
        compose = load(file)
        declared = set(compose.get("volumes") or {})
        for name, svc in compose["services"].items():
            for volume in svc.get("volumes", []):
                source = str(volume).split(":", 1)[0]
                if not source.startswith((".", "/", "~", "$")):
                    assert source in declared, f"{file}: {name} mounts undeclared volume {source}"
    for name, svc in mesh_services(COMPOSE).items():
        data = [v for v in svc["volumes"] if v.endswith(":/data")]
        assert len(data) == 1 and data[0].split(":")[0] in COMPOSE["volumes"], name
        assert svc["environment"]["GRADIENTS_DATA_DIR"] == "/data"


def compose_variables() -> set[str]:
    text = "".join((DEPLOY / f).read_text() for f in COMPOSE_FILES)
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))


def test_env_example_lists_every_setting_and_nothing_unknown():
    text = (DEPLOY / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    settings = env_names(MeshSettings, *[spec.settings_type for spec in SPECS.values()])
    missing = settings - listed
    assert not missing, f"not in deploy/.env.example (run python deploy/gen_env_example.py): {sorted(missing)}"
    unknown = listed - settings - compose_variables() - COMPOSE_OWN_VARIABLES
    assert not unknown, f"deploy/.env.example names variables nothing reads: {sorted(unknown)}"
    assert compose_variables() <= listed, f"compose variables missing from .env.example: {compose_variables() - listed}"


def test_env_example_is_up_to_date():
    check = subprocess.run(
        [sys.executable, str(DEPLOY / "gen_env_example.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr


def test_dockerfile_caches_dependencies_and_runs_unprivileged():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM")][0]] == "FROM python:3.11-slim"

    def first(predicate) -> int:
        return next(i for i, line in enumerate(lines) if predicate(line))

    torch_install = first(lambda line: line.startswith("RUN pip install --index-url") and "torch==" in line)
    copy_pyproject = first(lambda line: line.startswith("COPY pyproject.toml"))
    deps_install = first(lambda line: "pip install -r" in line)
    copy_source = first(lambda line: line.startswith("COPY gradients"))
    install_source = first(lambda line: "pip install --no-deps ." in line)
    assert torch_install < copy_pyproject < deps_install < copy_source < install_source

    args = dict(line.removeprefix("ARG ").split("=", 1) for line in lines if line.startswith("ARG ") and "=" in line)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    )
    assert pin == f"torch=={args['TORCH_VERSION']}", "the image's torch must be the one pyproject pins"

    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines[-1].startswith('CMD ["python", "-m", "services.')

    # Every package setuptools installs is copied (benchmarks stay out of the image).
    copied = {line.split()[1] for line in lines if line.startswith("COPY ") and line.split()[1] != "pyproject.toml"}
    packages = {
        p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "benchmarks")
    }
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not (copied | {"pyproject.toml"}) & ignored


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="neither `docker compose` nor docker-compose is installed")
def test_docker_compose_accepts_the_files(tmp_path):
    """Compose's own schema validation and interpolation (no Docker daemon needed)."""
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copy(deploy / ".env.example", deploy / ".env")
    compose = _compose_command()

    def config(*files: str, env: dict | None = None) -> subprocess.CompletedProcess:
        args = [arg for f in files for arg in ("-f", f)]
        return subprocess.run(
            [*compose, *args, "config", "-q"],
            cwd=deploy,
            capture_output=True,
            text=True,
            env=dict(os.environ, **(env or {})),
            timeout=60,
        )

    for files in (("docker-compose.yml",), ("docker-compose.yml", "docker-compose.cluster.yml")):
        result = config(*files)
        assert result.returncode == 0, result.stderr
    # The eval-worker file refuses to start without the mesh's NATS and Redis ...
    assert config("docker-compose.eval-worker.yml").returncode != 0
    # ... and is valid once they are given.
    mesh = {"GRADIENTS_NATS_URL": "nats://10.0.0.1:4222", "GRADIENTS_REDIS_URL": "redis://10.0.0.1:6379/0"}
    joined = config("docker-compose.eval-worker.yml", env=mesh)
    assert joined.returncode == 0, joined.stderr


def test_installed_top_level_packages_are_gradients_services_and_miner_sdk():
    """benchmarks/ and tests/ run from the checkout; installing them would claim generic names."""
    from setuptools import find_packages

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=found["include"], exclude=found.get("exclude", ()))
    assert {p.split(".")[0] for p in packages} == {"gradients", "services", "miner_sdk"}
