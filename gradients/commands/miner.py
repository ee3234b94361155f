"""`gradients miner run`: the reference miner."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

app = typer.Typer(help="Reference miners (see miner_sdk/README.md).", no_args_is_help=True)


def load_signer(dev_key: str, wallet_name: str, wallet_hotkey: str, wallet_path: str):
    """A bittensor wallet from disk, or a deterministic dev keypair (`//NAME`) for local meshes."""
    if dev_key:
        from gradients.runtime.auth import dev_keypair

        return dev_keypair(dev_key)
    import bittensor as bt

    kwargs = {"name": wallet_name, "hotkey": wallet_hotkey}
    if wallet_path:
        kwargs["path"] = wallet_path
    return bt.Wallet(**kwargs)


@app.command("run")
def run(
    validator: str = typer.Option(..., help="the validator's miner gateway, host:port"),
    validator_hotkey: str = typer.Option(..., help="the validator's hotkey ss58 (requests are bound to it)"),
    strategy: str = typer.Option("autotrain-default", help="autotrain-default, lr-sweep or random-search"),
    dev_key: str = typer.Option("", help="use the dev keypair //NAME instead of a wallet (local meshes only)"),
    wallet_name: str = typer.Option("miner", help="bittensor wallet (coldkey) name"),
    wallet_hotkey: str = typer.Option("default", help="bittensor hotkey name"),
    wallet_path: str = typer.Option("", help="wallets folder (default ~/.bittensor/wallets)"),
    work_dir: Path = typer.Option(Path(".miner"), help="downloads, checkpoints and adapters"),
    task_types: str = typer.Option("INSTRUCT_TEXT,CHAT,DPO,GRPO,IMAGE", help="task types to accept"),
    seed: int = typer.Option(0, help="training seed"),
    upload_margin: float = typer.Option(3.0, help="seconds before the deadline when training stops to upload"),
) -> None:
    """Accept offers, train with STRATEGY until shortly before each deadline, upload."""
    from miner_sdk.runner import MinerOptions, ReferenceMiner
    from miner_sdk.training.strategies import STRATEGIES

    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; one of {', '.join(sorted(STRATEGIES))}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = MinerOptions(
        validator=validator,
        validator_hotkey=validator_hotkey,
        strategy=strategy,
        work_dir=work_dir,
        task_types=tuple(t.strip() for t in task_types.split(",") if t.strip()),
        seed=seed,
        upload_margin_s=upload_margin,
    )
    signer = load_signer(dev_key, wallet_name, wallet_hotkey, wallet_path)

    async def main() -> None:
        miner = ReferenceMiner(options, signer)  # its gRPC channel belongs to this event loop
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await miner.run(stop)

    asyncio.run(main())
