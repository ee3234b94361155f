"""The load benchmark's fake remote generator, driven by dataset_prep's real HTTP client."""

from __future__ import annotations

import time

from benchmarks.reliability.generator_endpoint import FakeGeneratorEndpoint
from services.dataset_prep.generators import OpenAICompatibleGenerator, OpenAIGeneratorConfig, RowRequest


def test_the_fake_endpoint_answers_every_key_after_its_latency_with_bounded_slots():
    requests = [
        RowRequest({"instruction": f"add {i} and 1", "output": str(i + 1)}, ("instruction", "output"), "New.", 0.6)
        for i in range(6)
    ]
    with FakeGeneratorEndpoint(latency_s=0.2, slots=2) as endpoint:
        env = endpoint.env()
        assert env["GRADIENTS_DATASET_GENERATOR"] == "openai" and env["GRADIENTS_DATASET_OPENAI_BASE_URL"].endswith(
            "/v1"
        )
        client = OpenAICompatibleGenerator(
            OpenAIGeneratorConfig(env["GRADIENTS_DATASET_OPENAI_BASE_URL"], "fake", max_concurrency=6)
        )
        started = time.perf_counter()
        answers = client.generate(requests)
        took = time.perf_counter() - started
    assert endpoint.requests == 6
    # 6 requests, 2 at a time, 0.2 s each: three rounds.
    assert took >= 0.6
    for request, answer in zip(requests, answers, strict=True):
        assert set(answer) == {"instruction", "output"}
        assert answer["instruction"].startswith(request.source["instruction"] + " (variant ")
        assert answer != request.source
