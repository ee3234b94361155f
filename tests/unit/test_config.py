import dataclasses
import os
import subprocess
import sys

import pytest

from gradients.runtime.config import ConfigError, MeshSettings, load_settings, positive, setting, settings_reference


def test_defaults_load():
    s = load_settings(MeshSettings, {})
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.grpc_port is None
    assert s.bus_max_deliver == 5


def test_values_are_parsed_by_type():
    s = load_settings(MeshSettings, {"GRADIENTS_GRPC_PORT": "6000", "GRADIENTS_BUS_ACK_WAIT_S": "2.5"})
    assert s.grpc_port == 6000 and s.bus_ack_wait_s == 2.5


def test_every_bad_setting_is_named():
    with pytest.raises(ConfigError) as err:
        load_settings(MeshSettings, {"GRADIENTS_GRPC_PORT": "abc", "GRADIENTS_NATS_URL": "http://x"})
    text = str(err.value)
    assert "GRADIENTS_GRPC_PORT='abc': expected an integer" in text
    assert "GRADIENTS_NATS_URL='http://x': must be a URL starting with nats:// or tls://" in text


def test_range_checks():
    with pytest.raises(ConfigError, match="GRADIENTS_GRPC_PORT=70000"):
        load_settings(MeshSettings, {"GRADIENTS_GRPC_PORT": "70000"})
    with pytest.raises(ConfigError, match="GRADIENTS_LOG_LEVEL='LOUD': must be one of"):
        load_settings(MeshSettings, {"GRADIENTS_LOG_LEVEL": "LOUD"})


def test_missing_required_setting_is_named():
    @dataclasses.dataclass(frozen=True)
    class Needs:
        wallet: str = setting("GRADIENTS_TEST_WALLET", doc="wallet name")
        rate: float = setting("GRADIENTS_TEST_RATE", 1.0, check=positive)

    with pytest.raises(ConfigError, match="GRADIENTS_TEST_WALLET is required"):
        load_settings(Needs, {})
    with pytest.raises(ConfigError, match="GRADIENTS_TEST_RATE=-1.0: must be > 0"):
        load_settings(Needs, {"GRADIENTS_TEST_WALLET": "w", "GRADIENTS_TEST_RATE": "-1"})


def test_reference_lists_every_variable():
    names = [row[0] for row in settings_reference(MeshSettings)]
    assert "GRADIENTS_NATS_URL" in names and "OTEL_EXPORTER_OTLP_ENDPOINT" in names


@pytest.mark.parametrize("service", ["task_service", "scorer"])
def test_service_stops_at_start_naming_the_bad_setting(service):
    env = dict(os.environ, GRADIENTS_BUS_MAX_DELIVER="zero", GRADIENTS_REDIS_URL="localhost:6379")
    proc = subprocess.run(
        [sys.executable, "-m", f"services.{service}"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "GRADIENTS_BUS_MAX_DELIVER='zero': expected an integer" in proc.stderr
    assert "GRADIENTS_REDIS_URL='localhost:6379'" in proc.stderr


# A setting that only on_start can judge (the selector's pool bounds, a wallet) is a bad setting
# like any other: exit 2 naming it, no traceback, and nothing left connected behind it.
BAD_POOL = {"GRADIENTS_SELECTOR_TEXT_POOL_MIN": "20", "GRADIENTS_SELECTOR_TEXT_POOL_MAX": "10"}


def test_bad_setting_found_at_on_start_exits_2_naming_it(mesh_env):
    env = dict(os.environ, **mesh_env, **BAD_POOL)
    proc = subprocess.run(
        [sys.executable, "-m", "services.selector"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "GRADIENTS_SELECTOR_*_POOL_MIN/MAX" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_failed_on_start_closes_nats_and_redis(tmp_path, redis_server):
    import json
    import urllib.request

    import redis.asyncio as aioredis

    from gradients.runtime import ServiceHost, embedded
    from services.selector.service import SPEC

    monitor = embedded.free_port()
    nats = embedded.start_nats(tmp_path / "nats-mon", extra_args=["-m", str(monitor)])
    try:

        def nats_connections() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz", timeout=5) as reply:
                return json.load(reply)["num_connections"]

        probe = aioredis.from_url(redis_server.url)
        before = len(await probe.client_list())
        env = {
            "GRADIENTS_NATS_URL": nats.url,
            "GRADIENTS_REDIS_URL": redis_server.url,
            "GRADIENTS_GRPC_PORT": "0",
            "GRADIENTS_DATA_DIR": str(tmp_path / "data"),
            **BAD_POOL,
        }
        with pytest.raises(ConfigError, match=r"GRADIENTS_SELECTOR_\*_POOL_MIN/MAX") as failed:
            await ServiceHost.start(SPEC, env)
        # `failed` keeps the start frame (and its connections) alive: only closing frees them.
        assert failed.value is not None
        assert nats_connections() == 0
        assert len(await probe.client_list()) == before
        await probe.aclose()
    finally:
        nats.stop()
