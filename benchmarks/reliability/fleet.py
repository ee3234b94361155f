"""Fast SDK miners: many real `MinerClient`s in one event loop, with instant "training".

Each miner owns a distinct LoRA adapter built once (a random LoRA of the base plus noise
seeded by the miner's index, so every miner's loss differs); on an offer it accepts,
downloads D_train through the gateway like any miner, and uploads its adapter at once.
Every upload the gateway acknowledged is recorded, so a scenario can check that none was
lost. The miners speak the real signed protocol to the real gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradients.runtime.auth import dev_keypair
from miner_sdk.client import Backoff, GatewayRefused, MinerClient, ReceivedOffer

log = logging.getLogger("gradients.reliability.fleet")


def fleet_names(count: int, prefix: str = "rel-miner") -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def build_adapters(base_dir: Path, out_dir: Path, count: int, noise: float = 0.05) -> list[Path]:
    """`count` distinct adapter folders: one random LoRA, then seeded noise on its LoRA factors."""
    import torch
    from safetensors.torch import load_file, save_file

    from benchmarks.submissions import save_random_lora

    seed_dir = out_dir / "seed-lora"
    if not (seed_dir / "adapter_model.safetensors").exists():
        save_random_lora(base_dir, seed_dir, r=4, seed=0, scale=0.3)
    tensors = load_file(str(seed_dir / "adapter_model.safetensors"))
    folders = []
    for i in range(count):
        folder = out_dir / f"adapter-{i}"
        if not (folder / "adapter_model.safetensors").exists():
            folder.mkdir(parents=True, exist_ok=True)
            gen = torch.Generator().manual_seed(1000 + i)
            # Only the LoRA factors: PEFT also saves copies of base layers (".base_layer."), which
            # evaluation accepts only when identical to the base model's.
            noisy = {
                k: (v + noise * torch.randn(v.shape, generator=gen)).contiguous() if "lora_" in k else v
                for k, v in tensors.items()
            }
            shutil.copy(seed_dir / "adapter_config.json", folder / "adapter_config.json")
            partial = folder / "adapter_model.safetensors.partial"  # the folder may be a shared cache
            save_file(noisy, str(partial))
            os.replace(partial, folder / "adapter_model.safetensors")
        folders.append(folder)
    return folders


@dataclass
class Upload:
    task_id: str
    hotkey: str
    sha256: str
    upload_seq: int
    at: float


@dataclass
class StageTimes:
    """Seconds per miner-side stage, for the load report."""

    offer_to_answer: list[float] = field(default_factory=list)
    download: list[float] = field(default_factory=list)
    upload: list[float] = field(default_factory=list)


class FastMiner:
    def __init__(self, name: str, address: str, validator_hotkey: str, adapter: Path, work_dir: Path, fleet: Fleet):
        self.name = name
        self.keypair = dev_keypair(name)
        self.hotkey = self.keypair.ss58_address
        self.adapter = adapter
        self.work_dir = work_dir
        self.fleet = fleet
        self.client = MinerClient(address, self.keypair, validator_hotkey, backoff=Backoff(initial_s=0.2, max_s=2.0))
        self._runner: asyncio.Task | None = None
        self._work: set[asyncio.Task] = set()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"miner {self.name}")

    async def _run(self) -> None:
        try:
            async for offer in self.client.offers():
                received = time.monotonic()
                if not await offer.accept():
                    continue
                self.fleet.times.offer_to_answer.append(time.monotonic() - received)
                job = asyncio.create_task(self._work_on(offer))
                self._work.add(job)
                job.add_done_callback(self._work.discard)
        except GatewayRefused as exc:
            self.fleet.errors.append(f"{self.name}: {exc}")
        except asyncio.CancelledError:
            raise

    async def _work_on(self, offer: ReceivedOffer) -> None:
        task_id = offer.task_id
        try:
            started = time.monotonic()
            await self.client.download_training_data(task_id, self.work_dir / task_id / "train.data", wait_s=60)
            self.fleet.times.download.append(time.monotonic() - started)
            started = time.monotonic()
            # The validator may be restarting (a fault scenario): retry transient refusals until the deadline.
            while True:
                try:
                    submission = await self.client.submit(task_id, self.adapter)
                    break
                except GatewayRefused as exc:
                    if (
                        exc.code.name not in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")
                        or time.time() > offer.deadline.timestamp()
                    ):
                        raise
                    await asyncio.sleep(0.5)
            self.fleet.times.upload.append(time.monotonic() - started)
            self.fleet.uploads.append(
                Upload(task_id, self.hotkey, submission.sha256, submission.upload_seq, time.time())
            )
        except GatewayRefused as exc:
            self.fleet.refusals.append(f"{self.name} task {task_id}: {exc.method} {exc.code.name} {exc.details}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, the scenario decides
            self.fleet.errors.append(f"{self.name} task {task_id}: {type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        for task in [self._runner, *self._work]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._runner, *self._work] if t is not None], return_exceptions=True)
        await self.client.close()


class Fleet:
    """N fast miners connected to one gateway."""

    def __init__(self, names: list[str], address: str, validator_hotkey: str, adapters: list[Path], work_dir: Path):
        self.uploads: list[Upload] = []
        self.refusals: list[str] = []
        self.errors: list[str] = []
        self.times = StageTimes()
        self.miners = [
            FastMiner(n, address, validator_hotkey, adapters[i % len(adapters)], work_dir / n, self)
            for i, n in enumerate(names)
        ]

    @property
    def hotkeys(self) -> list[str]:
        return [m.hotkey for m in self.miners]

    async def start(self, connect_timeout_s: float = 60.0) -> None:
        for miner in self.miners:
            miner.start()
        await asyncio.gather(*(m.client.wait_connected(connect_timeout_s) for m in self.miners))

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.miners))

    def acknowledged(self) -> dict[tuple[str, str], Upload]:
        """The latest acknowledged upload per (task, miner)."""
        latest: dict[tuple[str, str], Upload] = {}
        for up in self.uploads:
            key = (up.task_id, up.hotkey)
            if key not in latest or up.upload_seq > latest[key].upload_seq:
                latest[key] = up
        return latest


def write_uid_file(path: Path, hotkeys: list[str]) -> Path:
    path.write_text(json.dumps({h: i for i, h in enumerate(hotkeys)}))
    return path
