"""The example miner against the selector, with task_service's part played by the test:
offer → accept → TRAINING → download → LoRA on a tiny llama → upload → a loadable adapter."""

from __future__ import annotations

import asyncio
import json

from gradients.models.tiny import build_tiny_llama
from gradients.runtime import ServiceHost, events
from gradients.v1 import common_pb2 as pb
from miner_sdk.archive import safe_extract
from miner_sdk.client import MinerClient
from miner_sdk.example_miner import ExampleMinerConfig, run
from services.selector.service import SPEC
from services.selector.testing import EventCollector, dev_keypair, make_task, publish_state, selector_env

VALIDATOR = dev_keypair("validator")
MINER = dev_keypair("example-miner")
ROWS = [{"instruction": f"Add {i} and {i}.", "output": str(2 * i)} for i in range(20)]


async def test_example_miner_trains_and_uploads_an_adapter(mesh_env, nats_server, tmp_path):
    base = build_tiny_llama(tmp_path / "tiny-llama")
    env = selector_env(mesh_env, [MINER.ss58_address], VALIDATOR.ss58_address, OFFER_TIMEOUT_S="2")
    env["GRADIENTS_TIME_SCALE"] = "30"  # a 1-hour task has 30 s
    host = await ServiceHost.start(SPEC, env=env)
    selected = await EventCollector.start(nats_server.url, events.MINERS_SELECTED)
    received = await EventCollector.start(nats_server.url, events.SUBMISSION_RECEIVED)
    client = MinerClient(host.address, MINER, VALIDATOR.ss58_address)
    miner = asyncio.create_task(run(client, ExampleMinerConfig(work_dir=tmp_path / "work", steps=3), max_tasks=1))
    try:
        await client.wait_connected(10)
        image = make_task(pb.IMAGE, base_model=str(base))
        await publish_state(host.ctx.bus, image, pb.LOOKING_FOR_MINERS, version=3)
        declined, _ = await selected.next()
        assert list(declined.declined) == [MINER.ss58_address] and not declined.accepted

        train_key = await host.ctx.artifacts.put_bytes("".join(json.dumps(r) + "\n" for r in ROWS).encode())
        task = make_task(pb.INSTRUCT_TEXT, base_model=str(base), train_artifact=train_key, train_rows=len(ROWS))
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        chosen, _ = await selected.next()
        assert list(chosen.accepted) == [MINER.ss58_address]
        # task_service's part: TRAINING with the accepted miners and the promised deadline.
        task.miner_hotkeys.extend(chosen.accepted)
        task.deadline.CopyFrom(chosen.deadline)
        await publish_state(host.ctx.bus, task, pb.TRAINING, version=4)

        [submission] = await asyncio.wait_for(miner, timeout=90)
        event, _ = await received.next()
        assert event.submission == submission and submission.kind == "adapter"
        archive = tmp_path / "submission.tar"
        archive.write_bytes(await host.ctx.artifacts.get_bytes(submission.artifact))
        files = {p.name for p in safe_extract(archive, tmp_path / "adapter")}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files

        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter")
        assert any("lora_A" in name for name, _ in model.named_parameters())
    finally:
        miner.cancel()
        await asyncio.gather(miner, return_exceptions=True)
        await client.close()
        await selected.stop()
        await received.stop()
        await host.stop(1)
