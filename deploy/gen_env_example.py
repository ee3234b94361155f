"""Write deploy/.env.example: every setting of every service, from the settings dataclasses.

    python deploy/gen_env_example.py           # rewrite it
    python deploy/gen_env_example.py --check   # exit 1 when it is stale (a setting was added)

Services are discovered (services/*/service.py SPEC.settings_type), so a new setting shows up
here without editing this script. Settings that docker-compose.yml wires itself (URLs,
addresses) are listed commented out with the value compose gives them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
sys.path.insert(0, str(ROOT))
OUT = DEPLOY / ".env.example"
COMPOSE = DEPLOY / "docker-compose.yml"

# Variables docker compose itself substitutes into docker-compose*.yml: (name, value, doc).
COMPOSE_VARIABLES = [
    ("COMPOSE_PROJECT_NAME", "gradients", "prefix of containers, volumes and the network"),
    ("MESH_IMAGE", "gradients-mesh:latest", "tag of the image built from deploy/Dockerfile"),
    (
        "TORCH_INDEX_URL",
        "https://download.pytorch.org/whl/cpu",
        "torch wheel index at build time; a CUDA one (e.g. .../whl/cu128) for GPU evaluation",
    ),
    ("EVAL_WORKER_REPLICAS", "1", "eval_worker containers (each reserves one NVIDIA GPU)"),
    ("TASK_SERVICE_PUBLISHED_PORT", "50051", "host port of task_service (customers)"),
    ("SELECTOR_PUBLISHED_PORT", "50052", "host port of the selector's miner gateway (miners)"),
    ("OTLP_PUBLISHED_PORT", "4317", "host port of the collector's OTLP/gRPC receiver"),
    ("JAEGER_UI_PORT", "16686", "host port of the Jaeger UI (traces)"),
    ("PROMETHEUS_PORT", "9090", "host port of Prometheus (metrics)"),
    ("BITTENSOR_WALLETS_DIR", "~/.bittensor/wallets", "host wallets folder, mounted read-only at /wallets"),
    ("MINER_DEV_KEY", "Bob", "example miner (profile miner): dev keypair //NAME it signs with"),
    ("NATS_IMAGE", "nats:2.11-alpine", "NATS server image"),
    ("REDIS_IMAGE", "redis:7.4-alpine", "Redis image"),
    ("OTEL_COLLECTOR_IMAGE", "otel/opentelemetry-collector-contrib:0.128.0", "OpenTelemetry Collector image"),
    ("JAEGER_IMAGE", "jaegertracing/jaeger:2.7.0", "Jaeger v2 image"),
    ("PROMETHEUS_IMAGE", "prom/prometheus:v3.4.1", "Prometheus image"),
]

# Settings given a value (not just their default) so `docker compose --profile miner up` works
# out of the box: the example miner signs as //Bob for a validator identified as //Alice.
ACTIVE_EXAMPLES = {
    "GRADIENTS_SELECTOR_VALIDATOR_HOTKEY": (
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
        "//Alice, a dev identity: on finney/testnet clear it (the wallet's hotkey is used)",
    ),
    "GRADIENTS_SELECTOR_ALLOWED_HOTKEYS": (
        "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
        "//Bob, the example miner (allowlist mode only)",
    ),
}

from gradients.mesh import SERVICES  # noqa: E402 - after the sys.path insert above


def env_value(value: object) -> str:
    """A default written the way load_settings parses it back (tuples comma-joined, None empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(env_value(v) for v in value)
    return str(value)


def settings_rows(cls: type | None) -> list[tuple[str, str, str]]:
    """(env, default as an env value, doc) of each field of a settings dataclass."""
    from gradients.runtime.config import REQUIRED, settings_fields

    if cls is None:
        return []
    # A required setting gets an empty value: the operator must set it.
    return [(env, "" if default is REQUIRED else env_value(default), doc) for env, default, doc in settings_fields(cls)]


def discover() -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(section title, [(env, default, doc)])]: MeshSettings, then each service's settings."""
    from gradients.generated import service_specs
    from gradients.runtime.config import MeshSettings

    sections = [("Every service (MeshSettings)", settings_rows(MeshSettings))]
    for spec in service_specs():
        sections.append((f"{spec.name} (gRPC port {spec.default_port})", settings_rows(spec.settings_type)))
    return sections


def compose_environment() -> dict[str, str]:
    """Settings docker-compose.yml sets on the mesh services (they win over .env)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    wired: dict[str, str] = {}
    for name in SERVICES:
        wired.update({k: str(v) for k, v in (compose["services"][name].get("environment") or {}).items()})
    return wired


def render() -> str:
    sections = discover()
    known = {env for _, rows in sections for env, _, _ in rows}
    stale = sorted(set(ACTIVE_EXAMPLES) - known)
    if stale:
        raise SystemExit(f"gen_env_example.py: ACTIVE_EXAMPLES names settings that no longer exist: {stale}")
    wired = compose_environment()
    lines = [
        "# Gradients Mesh settings for deploy/docker-compose.yml: cp .env.example .env, then edit.",
        "# Generated by deploy/gen_env_example.py from the settings dataclasses; do not edit by hand.",
        "# '# NAME=value' lines show the default: uncomment to change it. Lines marked",
        "# 'set by docker-compose.yml' are wired there and an entry here does not override them.",
        "",
        "## Docker Compose (images, build, ports, scale)",
    ]
    for env, value, doc in COMPOSE_VARIABLES:
        lines += [f"# {doc}", f"{env}={value}"]
    for title, rows in sections:
        lines += ["", f"## {title}"]
        if not rows:
            lines.append("# (no service-specific settings)")
        for env, default, doc in rows:
            lines.append(f"# {doc}" if doc else f"# {env}")
            if env in wired:
                lines.append(f"# {env}={wired[env]}  (set by docker-compose.yml)")
            elif env in ACTIVE_EXAMPLES:
                value, why = ACTIVE_EXAMPLES[env]
                lines += [f"# default: {default!r}; example value: {why}", f"{env}={value}"]
            else:
                lines.append(f"# {env}={default}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if .env.example is stale")
    args = parser.parse_args()
    from gradients.generated import write_or_check

    return write_or_check(OUT, render(), args.check, "python deploy/gen_env_example.py")


if __name__ == "__main__":
    sys.exit(main())
