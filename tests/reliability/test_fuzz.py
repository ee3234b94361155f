"""Bad input: the fuzzer over every gRPC method of a real mesh (CI size)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import gradients.v1
from benchmarks.reliability.fuzz import FuzzOptions, fuzz_mesh
from gradients.v1 import miner_gateway_pb2 as gw
from gradients.v1 import task_service_pb2 as ts

pytestmark = [pytest.mark.reliability]


def methods_in_descriptors() -> set[str]:
    """Every method path the generated code declares, plus health and reflection (on every process)."""
    services = [
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    for module in pkgutil.iter_modules(gradients.v1.__path__):
        if module.name.endswith("_pb2"):
            services += importlib.import_module(f"gradients.v1.{module.name}").DESCRIPTOR.services_by_name.values()
    return {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}


@pytest.mark.timeout(240)
async def test_every_method_answers_bad_input_with_a_proper_status(tmp_path: Path):
    options = FuzzOptions.ci(data_dir=tmp_path)
    report = await fuzz_mesh(options)
    results = report.results(options)

    assert [r.name for r in results] == [f"fuzz {name}" for name in options.services]
    for result in results:
        assert result.ok, result.summary()
        assert result.figures["methods"] > 0, result.summary()
        assert result.tried >= result.figures["methods"] * options.examples_per_method, result.summary()

    # Every declared method was fuzzed somewhere; health and reflection on every process.
    fuzzed = {path for rep in report.services.values() for path, stats in rep.methods.items() if stats.tried}
    assert methods_in_descriptors() <= fuzzed
    for name, rep in report.services.items():
        assert rep.alive and rep.health == "SERVING", name
        assert {
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        } <= set(rep.methods), name
        assert not rep.unfuzzed, f"{name} serves {rep.unfuzzed}, which the fuzzer did not reach"

    # Gateway methods: unsigned and forged calls are refused; validly signed ones always pass
    # authentication (the typed ones that unsigned got UNAUTHENTICATED reach the handler).
    gateway = {
        path: stats
        for path, stats in report.services["selector"].methods.items()
        if path.startswith("/gradients.v1.MinerGateway/")
    }
    assert len(gateway) == len(gw.DESCRIPTOR.services_by_name["MinerGateway"].methods), list(gateway)
    for path, stats in gateway.items():
        assert stats.codes["unsigned:UNAUTHENTICATED"] > 0, (path, stats.codes)
        assert stats.codes["forged:UNAUTHENTICATED"] > 0, (path, stats.codes)
        assert "unsigned:OK" not in stats.codes and "forged:OK" not in stats.codes, (path, stats.codes)
        assert "signed:UNAUTHENTICATED" not in stats.codes, (path, stats.codes)
        assert "signed:PERMISSION_DENIED" not in stats.codes, (path, stats.codes)

    # TaskService (the customer API, new methods included): without a valid key nothing is
    # answered OK, and the fuzz account's valid key is never refused as unauthenticated.
    customer = {
        path: stats
        for path, stats in report.services["task_service"].methods.items()
        if path.startswith("/gradients.v1.TaskService/")
    }
    declared = {m.name for m in ts.DESCRIPTOR.services_by_name["TaskService"].methods}
    assert {"UploadDataset", "GetTaskResult", "DownloadResult"} <= declared
    assert {p.rsplit("/", 1)[1] for p in customer} == declared, list(customer)
    for path, stats in customer.items():
        assert stats.codes["no-key:UNAUTHENTICATED"] > 0 and stats.codes["bad-key:UNAUTHENTICATED"] > 0, (
            path,
            stats.codes,
        )
        assert "no-key:OK" not in stats.codes and "bad-key:OK" not in stats.codes, (path, stats.codes)
        assert "key:UNAUTHENTICATED" not in stats.codes, (path, stats.codes)
        assert sum(n for k, n in stats.codes.items() if k.startswith("key:")) > 0, (path, stats.codes)
