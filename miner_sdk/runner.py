"""The reference miner: `gradients miner run --strategy NAME`.

Accepts offers for the task types it can train (one task at a time by default), downloads
D_train, trains with a named strategy from `miner_sdk.training` until shortly before the
deadline, and uploads the adapter before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miner_sdk.client import GatewayRefused, MinerClient, ReceivedOffer

log = logging.getLogger("gradients.miner")

# Offer task types (protobuf names) -> miner_sdk.training task types.
TRAINABLE = {"INSTRUCT_TEXT": "instruct", "CHAT": "chat", "DPO": "dpo", "GRPO": "grpo", "IMAGE": "image"}


@dataclass(frozen=True)
class MinerOptions:
    validator: str
    validator_hotkey: str
    strategy: str = "autotrain-default"
    work_dir: Path = Path(".miner")
    task_types: tuple[str, ...] = ("INSTRUCT_TEXT", "CHAT", "DPO", "GRPO", "IMAGE")
    max_concurrent_tasks: int = 1
    upload_margin_s: float = 3.0
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)


def warm_up(task_types: tuple[str, ...]) -> None:
    """Import the libraries the accepted task types train with."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import miner_sdk.training  # noqa: F401

    if "IMAGE" in task_types:
        import diffusers  # noqa: F401


def read_training_rows(path: Path, image_root: Path) -> list[dict]:
    """JSONL for text tasks; for image tasks a tar of rows.jsonl + images/ (unpacked to image_root)."""
    data = path.read_bytes()
    if data[257:262] == b"ustar":
        from miner_sdk.archive import safe_extract

        safe_extract(path, image_root)
        rows_file = image_root / "rows.jsonl"
        rows = [json.loads(line) for line in rows_file.read_text(encoding="utf-8").split("\n") if line.strip()]
        for row in rows:  # image rows name files under images/
            if "image" in row and not Path(row["image"]).is_absolute():
                row["image"] = str(image_root / "images" / Path(row["image"]).name)
        return rows
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]


class ReferenceMiner:
    def __init__(self, options: MinerOptions, wallet: Any):
        self.options = options
        self.client = MinerClient(options.validator, wallet, options.validator_hotkey)
        self.active: set[str] = set()
        self.done: list[dict] = []
        self._tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        # Import the training stack before taking offers: a cold import of torch, transformers,
        # peft (and diffusers) costs tens of seconds on a small machine, eaten from the first
        # task's training window otherwise.
        started = time.monotonic()
        await asyncio.to_thread(warm_up, self.options.task_types)
        log.info("training stack loaded in %.1fs", time.monotonic() - started)
        offers = self.client.offers()
        log.info(
            "miner %s connecting to %s (strategy %s)", self.client.hotkey, self.options.validator, self.options.strategy
        )
        try:
            while not stop.is_set():
                next_offer = asyncio.ensure_future(offers.__anext__())
                stopped = asyncio.ensure_future(stop.wait())
                finished, _ = await asyncio.wait({next_offer, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stopped in finished:
                    next_offer.cancel()
                    break
                stopped.cancel()
                await self.on_offer(next_offer.result())
        except StopAsyncIteration:
            pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.client.close()

    async def on_offer(self, offer: ReceivedOffer) -> None:
        busy = len(self.active) >= self.options.max_concurrent_tasks
        if offer.task_type not in self.options.task_types or offer.task_type not in TRAINABLE or busy:
            await offer.decline()
            log.info("declined %s task %s (%s)", offer.task_type, offer.task_id, "busy" if busy else "type not mined")
            return
        if not await offer.accept():
            return
        self.active.add(offer.task_id)
        log.info("accepted %s task %s, deadline %s", offer.task_type, offer.task_id, offer.deadline.isoformat())
        task = asyncio.create_task(self.work_on(offer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def work_on(self, offer: ReceivedOffer) -> None:
        from miner_sdk.training import Deadline, train

        task_dir = self.options.work_dir / offer.task_id
        try:
            data = await self.client.download_training_data(offer.task_id, task_dir / "train.data")
            rows = read_training_rows(data, task_dir / "images")
            deadline = Deadline(at=offer.deadline.timestamp(), upload_margin_s=self.options.upload_margin_s)
            started = time.time()
            result = await asyncio.to_thread(
                train,
                self.options.strategy,
                TRAINABLE[offer.task_type],
                offer.base_model,
                rows,
                task_dir / "out",
                deadline,
                self.options.seed,
                overrides=self.options.overrides or None,
                image_root=task_dir / "images",
            )
            submission = await self.client.submit(offer.task_id, result.adapter_dir)
            log.info(
                "uploaded task %s after %.1fs of training (%d trials, best val loss %s), sha256 %s",
                offer.task_id,
                time.time() - started,
                len(result.trials),
                result.best_val_loss,
                submission.sha256[:12],
            )
            self.done.append({"task_id": offer.task_id, "sha256": submission.sha256})
        except GatewayRefused as exc:
            log.error("task %s: the validator refused %s: %s", offer.task_id, exc.method, exc.details)
        except Exception:
            log.exception("task %s failed", offer.task_id)
        finally:
            self.active.discard(offer.task_id)
