"""`gradients up` brings the whole mesh up and SIGINT leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


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


@pytest.mark.timeout(180)
def test_up_serves_status_and_sigint_leaves_nothing(tmp_path: Path):
    data_dir = tmp_path / "mesh-data"
    env = dict(os.environ, GRADIENTS_DATA_DIR=str(data_dir))
    env.pop("GRADIENTS_NATS_URL", None)
    env.pop("GRADIENTS_REDIS_URL", None)
    up = subprocess.Popen(gradients("up", "--data-dir", str(data_dir)), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.monotonic()
        status = None
        while time.monotonic() - started < 60:
            status = subprocess.run(gradients("status", "--data-dir", str(data_dir)), env=env,
                                    capture_output=True, text=True, timeout=30)
            if status.returncode == 0:
                break
            assert up.poll() is None, up.stdout.read()
            time.sleep(0.5)
        assert status is not None and status.returncode == 0, status.stdout
        for name in ("task_service", "selector", "dataset_prep", "eval_worker", "scorer", "chain_bridge"):
            assert name in status.stdout
        assert status.stdout.count("SERVING") == 6
        assert len(processes_mentioning(str(data_dir))) >= 8  # 6 services + nats + redis

        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
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
