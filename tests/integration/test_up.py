"""`gradients up` brings the whole mesh up and SIGINT leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gradients.accounts import AccountStore
from gradients.mesh import check_health
from gradients.runtime.auth import dev_keypair
from gradients.runtime.embedded import free_port
from gradients.runtime.store import Store


def gradients(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradients.cli", *args]


def processes_mentioning(marker: str) -> list[int]:
    """PIDs whose command line or environment mentions `marker` (our data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


class Lines:
    """`up`'s output, read while it runs (it prints the key once and keeps running)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not printed within {timeout_s}s:\n{self.text}")


async def authenticate(redis_url: str, api_key: str):
    store = Store.from_url(redis_url)
    try:
        return await AccountStore(store).authenticate(api_key)
    finally:
        await store.close()


@pytest.mark.timeout(180)
def test_up_serves_status_and_sigint_leaves_nothing(tmp_path: Path):
    data_dir = tmp_path / "mesh-data"
    env = dict(os.environ, GRADIENTS_DATA_DIR=str(data_dir))
    for name in (
        "NATS_URL",
        "REDIS_URL",
        "SELECTOR_VALIDATOR_HOTKEY",
        "SELECTOR_GATEWAY_PORT",
        "DATASET_PREP_ADDR",
        "EVAL_WORKER_ADDR",
        "SCORER_ADDR",
        "CHAIN_BRIDGE_ADDR",
    ):
        env.pop(f"GRADIENTS_{name}", None)
    # Two documented addresses set: those services must listen there; the other four get free ports.
    task_port, selector_port = free_port(), free_port()
    while selector_port == task_port:
        selector_port = free_port()
    env["GRADIENTS_TASK_SERVICE_ADDR"] = f"127.0.0.1:{task_port}"
    env["GRADIENTS_SELECTOR_ADDR"] = f"0.0.0.0:{selector_port}"  # a wildcard host is dialled as 127.0.0.1
    up = subprocess.Popen(
        gradients("up", "--data-dir", str(data_dir), "--dev-miner", "alice"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Lines(up.stdout)
    try:
        started = time.monotonic()
        status = None
        while time.monotonic() - started < 60:
            status = subprocess.run(
                gradients("status", "--data-dir", str(data_dir)), env=env, capture_output=True, text=True, timeout=30
            )
            if status.returncode == 0:
                break
            assert up.poll() is None, output.text
            time.sleep(0.5)
        assert status is not None and status.returncode == 0, status.stdout
        for name in ("task_service", "selector", "dataset_prep", "eval_worker", "scorer", "chain_bridge"):
            assert name in status.stdout
        assert status.stdout.count("SERVING") == 6
        assert len(processes_mentioning(str(data_dir))) >= 8  # 6 services + nats + redis

        # The fixed ports are honoured, and the services reach each other there.
        customer, gateway = f"127.0.0.1:{task_port}", f"127.0.0.1:{selector_port}"
        assert check_health(customer) == "SERVING" and check_health(gateway) == "SERVING"
        key = output.wait_for(r"export GRADIENTS_API_KEY=(gm_[A-Za-z0-9_-]+)\n", 30).group(1)
        state = json.loads((data_dir / "mesh.json").read_text())
        assert state["services"]["task_service"]["address"] == customer
        assert state["services"]["selector"]["address"] == gateway
        others = {state["services"][n]["address"] for n in ("dataset_prep", "eval_worker", "scorer", "chain_bridge")}
        assert customer not in others and gateway not in others and len(others) == 4
        selector_env = (Path("/proc") / str(state["services"]["selector"]["pid"]) / "environ").read_bytes()
        assert f"GRADIENTS_TASK_SERVICE_ADDR={customer}".encode() in selector_env.split(b"\0")

        # What miners and customers need is printed, and kept in mesh.json (without the key).
        printed = output.text
        hotkey = state["validator_hotkey"]
        assert re.fullmatch(r"5[1-9A-HJ-NP-Za-km-z]{47}", hotkey), state
        assert f"validator hotkey {hotkey}" in (data_dir / "logs" / "selector.log").read_text()  # the one in use
        assert f"validator hotkey (miners sign for it): {hotkey}" in printed
        assert f"miner gateway (MinerGateway): {gateway}" in printed and state["miner_gateway_address"] == gateway
        assert f"customer API (TaskService): {customer}" in printed and state["customer_address"] == customer
        # --dev-miner alice: its hotkey is on the selector's allow-list, and its command line is printed.
        alice = dev_keypair("alice").ss58_address
        allowed = [v for v in selector_env.split(b"\0") if v.startswith(b"GRADIENTS_SELECTOR_ALLOWED_HOTKEYS=")]
        assert allowed and alice in allowed[0].decode()
        assert (
            f"a miner (allowed): gradients miner run --validator {gateway} --validator-hotkey {hotkey} --dev-key alice"
            in printed
        )
        assert state["local_account"] == "local" and key not in json.dumps(state)
        account = asyncio.run(authenticate(state["redis_url"], key))
        assert account is not None and account.name == "local"
        assert asyncio.run(authenticate(state["redis_url"], key[:-1] + ("A" if key[-1] != "A" else "B"))) is None

        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
        output.thread.join(10)
        out = output.text
        assert up.returncode == 0, out
        assert "mesh stopped" in out
    finally:
        if up.poll() is None:
            up.kill()
    deadline = time.monotonic() + 10
    while processes_mentioning(str(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(data_dir)) == []
    after = subprocess.run(gradients("status", "--data-dir", str(data_dir)), env=env, capture_output=True, text=True)
    assert after.returncode == 1


def test_status_without_a_mesh_exits_nonzero(tmp_path: Path):
    proc = subprocess.run(gradients("status", "--data-dir", str(tmp_path)), capture_output=True, text=True)
    assert proc.returncode == 1 and "no mesh running" in proc.stdout
