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
    proc = subprocess.run([sys.executable, "-m", f"services.{service}"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "GRADIENTS_BUS_MAX_DELIVER='zero': expected an integer" in proc.stderr
    assert "GRADIENTS_REDIS_URL='localhost:6379'" in proc.stderr
