"""Run the whole mesh on one machine: embedded NATS and Redis plus the six services.

Used by `gradients up`, `gradients demo` and the tests. Each service is a real child
process (`python -m services.<name>`) on a free port; the children die with the parent
(PR_SET_PDEATHSIG, see embedded.with_parent), and a child that exits is reported, never silently restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradients.runtime import embedded

SERVICES = ("task_service", "selector", "dataset_prep", "eval_worker", "scorer", "chain_bridge")
ADDRESS_ENV = {name: f"GRADIENTS_{name.upper()}_ADDR" for name in SERVICES}
STATE_FILE = "mesh.json"


@dataclass
class MeshOptions:
    data_dir: Path = Path(".data")
    nats_url: str | None = None       # None = start an embedded nats-server
    redis_url: str | None = None      # None = start an embedded redis-server
    otlp_endpoint: str | None = None
    ready_timeout_s: float = 60.0
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceProcess:
    name: str
    address: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def check_health(address: str, timeout: float = 1.0) -> str:
    """SERVING, NOT_SERVING, UNKNOWN or UNREACHABLE."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


class Mesh:
    def __init__(self, options: MeshOptions):
        self.options = options
        self.data_dir = Path(options.data_dir).resolve()
        self.mesh_id = uuid.uuid4().hex[:12]
        self.nats: embedded.ManagedServer | None = None
        self.redis: embedded.ManagedServer | None = None
        self.nats_url = options.nats_url
        self.redis_url = options.redis_url
        self.children: dict[str, ServiceProcess] = {}
        self.addresses: dict[str, str] = {}

    # ---- start -------------------------------------------------------------------------

    def start_infrastructure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.nats_url:
            self.nats = embedded.start_nats(self.data_dir)
            self.nats_url = self.nats.url
        if not self.redis_url:
            self.redis = embedded.start_redis(self.data_dir)
            self.redis_url = self.redis.url

    def service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GRADIENTS_NATS_URL=self.nats_url or "",
            GRADIENTS_REDIS_URL=self.redis_url or "",
            GRADIENTS_DATA_DIR=str(self.data_dir),
            GRADIENTS_MESH_ID=self.mesh_id,
            PYTHONUNBUFFERED="1",
        )
        if self.options.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.options.otlp_endpoint
        for name, address in self.addresses.items():
            env[ADDRESS_ENV[name]] = address
        env.update(self.options.extra_env)
        return env

    def start_services(self) -> None:
        for name in self.options.services:
            self.addresses[name] = f"127.0.0.1:{embedded.free_port()}"
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in self.options.services:
            self.spawn(name)
        self.write_state()

    def spawn(self, name: str) -> ServiceProcess:
        env = self.service_env()
        env["GRADIENTS_GRPC_PORT"] = self.addresses[name].rsplit(":", 1)[1]
        log_path = self.data_dir / "logs" / f"{name}.log"
        process = embedded.spawn([sys.executable, "-m", f"services.{name}"], log_path, env)
        self.children[name] = ServiceProcess(name, self.addresses[name], process, log_path)
        return self.children[name]

    def start(self) -> None:
        self.start_infrastructure()
        self.start_services()

    def health(self) -> dict[str, str]:
        return {name: check_health(child.address) for name, child in self.children.items()}

    def dead_children(self) -> list[ServiceProcess]:
        return [c for c in self.children.values() if c.process.poll() is not None]

    def wait_ready(self, timeout_s: float | None = None) -> dict[str, str]:
        """Block until every service is SERVING; raise with the culprit's log otherwise."""
        deadline = time.monotonic() + (timeout_s or self.options.ready_timeout_s)
        while True:
            dead = self.dead_children()
            if dead:
                child = dead[0]
                raise RuntimeError(
                    f"{child.name} exited with code {child.process.returncode} during start-up:\n{child.log_tail()}"
                )
            status = self.health()
            if all(s == "SERVING" for s in status.values()):
                return status
            if time.monotonic() > deadline:
                waiting = {n: s for n, s in status.items() if s != "SERVING"}
                raise TimeoutError(f"services not SERVING after {timeout_s or self.options.ready_timeout_s}s: {waiting}")
            time.sleep(0.25)

    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "mesh_id": self.mesh_id,
            "nats_url": self.nats_url,
            "redis_url": self.redis_url,
            "otlp_endpoint": self.options.otlp_endpoint,
            "services": {n: {"address": c.address, "pid": c.process.pid} for n, c in self.children.items()},
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    # ---- stop --------------------------------------------------------------------------

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every service, wait for them (SIGKILL after grace), then the infrastructure."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        for server in (self.nats, self.redis):
            if server is not None:
                server.stop()
        try:
            (self.data_dir / STATE_FILE).unlink()
        except FileNotFoundError:
            pass


def read_state(data_dir: Path) -> dict | None:
    path = Path(data_dir) / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())
