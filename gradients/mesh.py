"""Run the whole mesh on one machine: embedded NATS and Redis plus the six services.

Used by `gradients up`, `gradients demo` and the tests. Each service is a real child
process (`python -m services.<name>`) on a free port, or on the port of a fixed address
(`MeshOptions.addresses`; `gradients up` takes them from GRADIENTS_<SERVICE>_ADDR); the
children die with the parent (PR_SET_PDEATHSIG, see embedded.with_parent), and a child that
exits is reported, never silently restarted.
"""

from __future__ import annotations

import dataclasses
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
    nats_url: str | None = None  # None = start an embedded nats-server
    redis_url: str | None = None  # None = start an embedded redis-server
    otlp_endpoint: str | None = None
    ready_timeout_s: float = 60.0
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    # service -> "host:port" it must be reachable at (the rest get free ports). Only explicit:
    # a test process may carry GRADIENTS_*_ADDR of another mesh in its environment.
    addresses: dict[str, str] = field(default_factory=dict)


def parse_address(variable: str, value: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT setting; ValueError naming the variable otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{variable}={value!r} is not HOST:PORT with a port in 1-65535")
    return host.strip("[]"), int(port)


def fixed_addresses(env: dict[str, str] | None = None) -> dict[str, str]:
    """The GRADIENTS_<SERVICE>_ADDR set in `env` (default os.environ), as addresses a client
    dials: a wildcard or empty host becomes 127.0.0.1 (the service binds GRADIENTS_GRPC_HOST)."""
    env = os.environ if env is None else env
    out = {}
    for name, variable in ADDRESS_ENV.items():
        value = env.get(variable, "").strip()
        if value:
            host, port = parse_address(variable, value)
            out[name] = f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"
    return out


@dataclass(frozen=True)
class OperatorInfo:
    """What miners and customers of this mesh need to know (printed by `up`, kept in mesh.json)."""

    customer_address: str  # task_service: the customer API (authorization: Bearer <key>)
    miner_gateway_address: str  # selector's MinerGateway (its own port, or GRADIENTS_SELECTOR_GATEWAY_PORT)
    validator_hotkey: str  # the receiver miners sign for
    local_account: str = ""  # account created for local use (its key is never written down)


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
        self.info: OperatorInfo | None = None

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
        fixed = {n: a for n, a in self.options.addresses.items() if n in self.options.services}
        taken = {parse_address(ADDRESS_ENV.get(n, n), a)[1] for n, a in fixed.items()}
        for name in self.options.services:
            if name in fixed:
                self.addresses[name] = fixed[name]
                continue
            port = embedded.free_port()
            while port in taken:  # a free port now may be one a fixed service binds next
                port = embedded.free_port()
            taken.add(port)
            self.addresses[name] = f"127.0.0.1:{port}"
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
                raise TimeoutError(
                    f"services not SERVING after {timeout_s or self.options.ready_timeout_s}s: {waiting}"
                )
            time.sleep(0.25)

    # ---- what to tell miners and customers ----------------------------------------------

    def miner_gateway_address(self) -> str:
        """Where miners connect: the selector's port, unless the gateway has its own."""
        env = self.service_env()
        port = env.get("GRADIENTS_SELECTOR_GATEWAY_PORT", "").strip()
        selector = self.addresses.get("selector", "")
        if not port or not selector:
            return selector
        return f"{selector.rsplit(':', 1)[0]}:{port}"

    def validator_hotkey(self) -> str:
        """The ss58 the selector signs for: GRADIENTS_SELECTOR_VALIDATOR_HOTKEY, else its wallet's
        hotkey (the selector creates it in allowlist mode, so read this once it is SERVING)."""
        env = self.service_env()
        configured = env.get("GRADIENTS_SELECTOR_VALIDATOR_HOTKEY", "").strip()
        if configured:
            return configured
        import bittensor as bt

        path = env.get("GRADIENTS_SELECTOR_WALLET_PATH", "").strip() or str(self.data_dir / "wallets")
        wallet = bt.Wallet(
            name=env.get("GRADIENTS_SELECTOR_WALLET_NAME", "").strip() or "validator",
            hotkey=env.get("GRADIENTS_SELECTOR_WALLET_HOTKEY", "").strip() or "default",
            path=path,
        )
        for read in (lambda: wallet.hotkeypub.ss58_address, lambda: wallet.hotkey.ss58_address):
            try:
                return read()
            except FileNotFoundError:
                continue
        return ""

    def operator_info(self, local_account: str = "") -> OperatorInfo:
        return OperatorInfo(
            self.addresses.get("task_service", ""), self.miner_gateway_address(), self.validator_hotkey(), local_account
        )

    def ensure_account(self, name: str = "local") -> str:
        """Create account `name` in this mesh's Redis, or rotate its key; returns the key."""
        import asyncio

        from gradients.accounts import AccountStore
        from gradients.runtime.store import Store

        async def ensure() -> str:
            store = Store.from_url(self.redis_url, self.service_env().get("GRADIENTS_NAMESPACE") or "gm")
            try:
                return await AccountStore(store).ensure(name)
            finally:
                await store.close()

        return asyncio.run(ensure())

    async def tasks(self) -> list:
        """Every task record, oldest first, read from Redis: the operator's view, which includes
        the synthetic tasks no customer account owns (TaskService shows an account its own)."""
        from gradients.runtime.store import ProtoRepository, Store
        from gradients.v1 import common_pb2 as pb

        store = Store.from_url(self.redis_url, self.service_env().get("GRADIENTS_NAMESPACE") or "gm")
        try:
            tasks = await ProtoRepository(store, "task", pb.Task).all()  # task_service's TaskRepository prefix
        finally:
            await store.close()
        return sorted(tasks, key=lambda t: (t.created_at.ToNanoseconds(), t.task_id))

    def publish(self, info: OperatorInfo) -> None:
        """Keep the operator info in mesh.json for other tools (never the key)."""
        self.info = info
        self.write_state()

    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "mesh_id": self.mesh_id,
            "nats_url": self.nats_url,
            "redis_url": self.redis_url,
            "otlp_endpoint": self.options.otlp_endpoint,
            "services": {n: {"address": c.address, "pid": c.process.pid} for n, c in self.children.items()},
        }
        if self.info is not None:
            state.update(dataclasses.asdict(self.info))
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
