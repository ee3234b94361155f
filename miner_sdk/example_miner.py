"""A minimal miner: accept text offers, download D_train, train a LoRA for a few steps, upload it.

    python -m miner_sdk.example_miner --validator 127.0.0.1:50052 --validator-hotkey 5F... \\
        --wallet-name miner --wallet-hotkey default

It shows the whole protocol, not how to win: a real miner tunes its training to the time it
has (see `miner_sdk.training` for full SFT/DPO trainers with deadline guards). The base model
in an offer is a local path in embedded mode (a hub id on a real network: download it first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miner_sdk.client import MinerClient, ReceivedOffer

log = logging.getLogger("example_miner")

TEXT_TYPES = ("INSTRUCT_TEXT", "CHAT")


@dataclass(frozen=True)
class ExampleMinerConfig:
    work_dir: Path
    steps: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 8
    max_rows: int = 64
    max_length: int = 256
    upload_margin_s: float = 2.0  # stop training this long before the deadline, to upload in time
    seed: int = 0


def read_rows(path: Path, limit: int) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def row_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The standard text schemas (instruction/input/output[/system] or conversations) as chat messages."""
    if "conversations" in row:
        return [
            {"role": m.get("role") or m.get("from", "user"), "content": m.get("content") or m.get("value", "")}
            for m in row["conversations"]
        ]
    user = row.get("instruction", "")
    if row.get("input"):
        user = f"{user}\n{row['input']}"
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": row.get("output", "")}]


def train_lora(
    base_model: str | Path,
    rows: list[dict[str, Any]],
    out_dir: Path,
    config: ExampleMinerConfig,
    stop_at: float = float("inf"),
) -> Path:
    """A few LoRA steps of causal-LM loss on the rows' chat transcripts; saves the adapter (safetensors)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    texts = [tokenizer.apply_chat_template(row_messages(r), tokenize=False) for r in rows]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    model.train()
    for step in range(config.steps):
        if time.time() >= stop_at:
            log.info("stopping after %d steps: the deadline is near", step)
            break
        text = texts[step % len(texts)]
        batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=config.max_length)
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        log.info("step %d loss %.4f", step, loss.item())
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


async def work_on(client: MinerClient, offer: ReceivedOffer, config: ExampleMinerConfig):
    """After accepting: download, train (in a thread, so offers keep flowing), upload."""
    task_dir = config.work_dir / offer.task_id
    data = await client.download_training_data(offer.task_id, task_dir / "train.jsonl")
    rows = read_rows(data, config.max_rows)
    stop_at = offer.deadline.timestamp() - config.upload_margin_s
    adapter = await asyncio.to_thread(train_lora, offer.base_model, rows, task_dir / "adapter", config, stop_at)
    submission = await client.submit(offer.task_id, adapter)
    log.info("uploaded %s for task %s (%d bytes)", submission.sha256, offer.task_id, submission.size_bytes)
    return submission


async def run(client: MinerClient, config: ExampleMinerConfig, max_tasks: int | None = None) -> list:
    """Answer offers forever (or until `max_tasks` were worked on); returns the submissions made."""
    jobs: list[asyncio.Task] = []
    async for offer in client.offers():
        if offer.task_type not in TEXT_TYPES:
            await offer.decline()
            log.info("declined %s task %s", offer.task_type, offer.task_id)
            continue
        if not await offer.accept():
            continue
        log.info("accepted task %s (%s, deadline %s)", offer.task_id, offer.base_model, offer.deadline.isoformat())
        jobs.append(asyncio.create_task(work_on(client, offer, config)))
        if max_tasks is not None and len(jobs) >= max_tasks:
            break
    return list(await asyncio.gather(*jobs))


def main(argv: list[str] | None = None) -> None:
    import bittensor as bt

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--validator", required=True, help="host:port of the validator's miner gateway")
    parser.add_argument(
        "--validator-hotkey", required=True, help="the validator's hotkey ss58 (calls are signed for it)"
    )
    parser.add_argument("--wallet-name", default="miner")
    parser.add_argument("--wallet-hotkey", default="default")
    parser.add_argument("--wallet-path", default="~/.bittensor/wallets")
    parser.add_argument("--work-dir", type=Path, default=Path("miner-work"))
    parser.add_argument("--steps", type=int, default=ExampleMinerConfig.steps)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    wallet = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=str(Path(args.wallet_path).expanduser()))
    config = ExampleMinerConfig(work_dir=args.work_dir, steps=args.steps)

    async def go() -> None:
        async with MinerClient(args.validator, wallet, args.validator_hotkey) as client:
            log.info("mining as %s", client.hotkey)
            await run(client, config)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
