"""`gradients demo`: the rich live view of a full tournament round."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

if TYPE_CHECKING:  # gradients.demo pulls in bittensor: imported when the demo runs, not for every CLI call
    from gradients.demo import Demo, DemoSnapshot

console = Console()

STATE_STYLE = {
    "SCORED": "green",
    "FAILED": "red",
    "CANCELLED": "red",
    "TRAINING": "yellow",
    "EVALUATING": "cyan",
    "PREEVALUATION": "cyan",
    "PREPARING_DATA": "blue",
    "LOOKING_FOR_MINERS": "magenta",
    "DELAYED": "magenta",
}
STAGE_HELP = {
    "PENDING": "waiting for a slot",
    "PREPARING_DATA": "splitting train/test and generating synthetic rows",
    "LOOKING_FOR_MINERS": "offering the task to miners (eq 2 weights)",
    "DELAYED": "too few miners accepted; will retry with more time",
    "TRAINING": "miners are fine-tuning until the deadline",
    "PREEVALUATION": "deadline passed; collecting last uploads",
    "EVALUATING": "eval worker scoring every submission on D_test and D_synth",
    "SCORED": "scored; weights updated",
    "FAILED": "failed",
}


def short(text: str, n: int = 8) -> str:
    return text[:n]


def tasks_table(demo: Demo, snap: DemoSnapshot) -> Table:
    from gradients.v1 import common_pb2 as pb

    table = Table(title="Tasks", expand=True)
    for col in ("task", "type", "state", "hours", "miners", "what is happening"):
        table.add_column(col)
    now = time.time()
    for t in snap.tasks:
        state = pb.TaskState.Name(t.state)
        style = STATE_STYLE.get(state, "white")
        note = STAGE_HELP.get(state, "")
        if state == "TRAINING" and t.deadline.seconds:
            note += f" ({max(0, t.deadline.seconds - now):.0f}s left)"
        if state == "FAILED":
            note = t.failure_reason
        if t.progress and state == "PREPARING_DATA":
            note = t.progress
        miners = ", ".join(demo.names.get(h, (short(h),))[0] for h in t.miner_hotkeys)
        table.add_row(
            short(t.task_id),
            pb.TaskType.Name(t.type),
            f"[{style}]{state}[/{style}]",
            f"{t.hours:g}",
            miners or "-",
            note,
        )
    return table


def leaderboard_table(demo: Demo, snap: DemoSnapshot, title: str = "Leaderboard (S_final, eqs 13-15)") -> Table:
    weights = {}
    if snap.weights is not None and snap.weights.uids:
        total = sum(snap.weights.weights_u16) or 1
        weights = {uid: w / total for uid, w in zip(snap.weights.uids, snap.weights.weights_u16)}
    uid_of = demo.uids
    table = Table(title=title, expand=True)
    for col in ("#", "miner", "strategy", "hotkey", "final score", "weight share"):
        table.add_column(col)
    for i, entry in enumerate(snap.leaderboard, start=1):
        name, strategy = demo.names.get(entry.miner_hotkey, ("?", "?"))
        uid = uid_of.get(entry.miner_hotkey) if uid_of else None
        share = f"{weights[uid]:.1%}" if uid is not None and uid in weights else "-"
        table.add_row(str(i), name, strategy, short(entry.miner_hotkey, 12), f"{entry.final_score:.4f}", share)
    return table


def view(demo: Demo, snap: DemoSnapshot) -> Group:
    elapsed = time.monotonic() - demo.started
    header = Panel(
        f"Gradients demo · {demo.options.miners} miners · {demo.options.tasks} tasks "
        f"({', '.join(demo.options.types)}) · model {demo.options.model} · "
        f"{snap.miners_connected} miners connected · {elapsed:.0f}s",
        style="bold",
    )
    return Group(header, tasks_table(demo, snap), leaderboard_table(demo, snap))


def demo(
    miners: int = typer.Option(6, help="reference miners (strategies rotate)"),
    tasks: int = typer.Option(2, help="synthetic tasks in the round"),
    types: str = typer.Option("instruct", help="comma-separated: instruct, dpo, grpo, image"),
    model: str = typer.Option("tiny", help="tiny (built from a config) or smollm2 (SmolLM2-135M from PyPI)"),
    data_dir: Path = typer.Option(Path(".data/demo"), help="where everything of the round is kept"),
    time_scale: float = typer.Option(15.0, help="real seconds per nominal task hour"),
    timeout: float = typer.Option(600.0, help="give up after this many seconds"),
    seed: int = typer.Option(0, help="seed of datasets and task draws"),
) -> None:
    """Run a full tournament round on this machine and show who won and what weights were set."""
    from gradients.demo import Demo, DemoOptions, run_round

    options = DemoOptions(
        data_dir=data_dir,
        miners=miners,
        tasks=tasks,
        model=model,
        time_scale=time_scale,
        types=tuple(t.strip() for t in types.split(",") if t.strip()),
        timeout_s=timeout,
        seed=seed,
        otlp_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
    )
    round_ = Demo(options)
    code = 0
    try:
        with console.status("starting…") as status:
            round_.start(status=lambda msg: status.update(msg))
        if round_.api_key:  # during the round the customer CLI can be tried against this mesh
            console.print(
                f"customer API {round_.mesh.addresses['task_service']}, export GRADIENTS_API_KEY={round_.api_key}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        with Live(console=console, refresh_per_second=2) as live:
            snap = asyncio.run(run_round(round_, on_update=lambda s: live.update(view(round_, s))))
        print_summary(round_, snap)
    except KeyboardInterrupt:
        console.print("interrupted")
        code = 130
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}")
        console.print(f"logs: {options.data_dir / 'mesh' / 'logs'}")
        code = 1
    finally:
        round_.stop()
    raise typer.Exit(code)


def losses_table(demo: Demo) -> Table:
    """Per scored task: the winner's L_weighted against the base model's and the best
    autotrain-default miner's ("–" when no default miner took part in the task)."""
    table = Table(
        title="Winner against the base model and the default strategy (L_weighted, lower is better)", expand=True
    )
    for col in ("task", "winner", "winner loss", "base loss", "vs base", "best autotrain-default", "vs default"):
        table.add_column(col)
    try:
        summaries = asyncio.run(demo.task_summaries())
    except Exception as exc:  # the summary must still print the rest
        table.add_row("-", f"results unavailable: {exc}", "", "", "", "", "")
        return table

    def gain(reference: float | None, loss: float) -> str:
        return f"{(reference - loss) / reference:+.1%}" if reference else "–"

    for s in summaries:
        name, strategy = demo.names.get(s.winner, (short(s.winner), "?"))
        default = (
            "–" if s.default_loss is None else f"{s.default_loss:.4f} ({demo.names.get(s.default_miner, ('?',))[0]})"
        )
        table.add_row(
            short(s.task_id),
            f"{name} ({strategy})",
            f"{s.winner_loss:.4f}",
            "–" if s.base_loss is None else f"{s.base_loss:.4f}",
            gain(s.base_loss, s.winner_loss),
            default,
            gain(s.default_loss, s.winner_loss),
        )
    return table


def print_summary(demo: Demo, snap: DemoSnapshot) -> None:
    from gradients.v1 import common_pb2 as pb

    console.rule("Round finished")
    console.print(tasks_table(demo, snap))
    console.print(leaderboard_table(demo, snap, "Final leaderboard"))
    console.print(losses_table(demo))
    if snap.leaderboard:
        best = snap.leaderboard[0]
        name, strategy = demo.names.get(best.miner_hotkey, ("?", "?"))
        console.print(f"[bold]Winner:[/bold] {name} ({strategy}), S_final {best.final_score:.4f}")
    if snap.weights is not None and snap.weights.uids:
        pairs = ", ".join(f"uid {u}: {w}" for u, w in zip(snap.weights.uids, snap.weights.weights_u16))
        console.print(
            f"[bold]Weights set[/bold] (u16, {snap.weights.backend} backend, sequence {snap.weights.sequence}): {pairs}"
        )
    scored = sum(1 for t in snap.tasks if t.state == pb.SCORED)
    console.print(f"{scored} of {len(snap.tasks)} tasks scored in {time.monotonic() - demo.started:.0f}s")
    otlp = demo.options.otlp_endpoint
    console.print(
        "Traces: "
        + (
            f"exported over OTLP to {otlp} (one trace per task)"
            if otlp
            else "not exported — set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. a Jaeger at localhost:4317) to see one trace per task"
        )
    )
    console.print(f"Logs: {demo.options.data_dir / 'mesh' / 'logs'}   ledger: {demo.options.data_dir / 'mesh'}")
    if demo.api_key and demo.mesh is not None and demo.mesh.info is not None:
        info = demo.mesh.info
        say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731 - keys stay on one line
        say(
            f"Customer API {info.customer_address} · miner gateway {info.miner_gateway_address} · validator hotkey "
            f"{info.validator_hotkey}"
        )
        say(
            f"Customer account '{info.local_account}' API key (valid while this mesh runs): "
            f"export GRADIENTS_API_KEY={demo.api_key}"
        )
