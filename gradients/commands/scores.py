"""`gradients scores replay`: recompute every score from the scorer's log (for auditors)."""

from __future__ import annotations

import asyncio
import json
import os

import typer

app = typer.Typer(
    help="Scores: replay the scorer's event log and check it against the live scores.", no_args_is_help=True
)

# Exit codes: 0 = replayed and consistent; 1 = a recomputed task or the digest differs from the
# live one; 2 = nothing to replay or bad arguments.
EXIT_MISMATCH = 1
EXIT_NOTHING = 2


@app.callback()
def scores() -> None:
    """Scores: replay the scorer's event log and check it against the live scores."""


async def replay_from_url(redis_url: str, namespace: str, now: float | None):
    """Connect, replay (services/scorer/replay.py), close; the command's work, callable from async code."""
    from gradients.runtime import Store
    from services.scorer.replay import replay_store

    store = Store.from_url(redis_url, namespace)
    try:
        if not await store.ping():
            raise ConnectionError(f"cannot reach Redis at {redis_url}")
        return await replay_store(store, now)
    finally:
        await store.close()


def replay_report(redis_url: str, namespace: str, now: float | None):
    return asyncio.run(replay_from_url(redis_url, namespace, now))


def report_dict(report) -> dict:
    from gradients.timestamps import MICROS, micros_to_iso

    r = report.result
    return {
        "digest": report.digest,
        "now": report.now,
        "now_iso": micros_to_iso(round(report.now * MICROS)),
        "config_version": r.config_version,
        "config_digest": r.config_digest,
        "entries": report.entries,
        "recomputed": report.recomputed,
        "not_recomputed": list(report.not_recomputed),
        "mismatches": {m.task_id: list(m.problems) for m in report.mismatches},
        "live_digest": report.live.digest if report.live else None,
        "matches_live": report.matches_live,
        "scores": [
            {"miner_hotkey": hk, "final": f, "temporal": t}
            for hk, f, t in sorted(zip(r.hotkeys, r.final, r.temporal), key=lambda x: (-x[1], x[0]))
        ],
    }


@app.command("replay")
def replay(
    redis_url: str = typer.Option(
        os.environ.get("GRADIENTS_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "--redis-url",
        help="Redis holding the scorer's log",
    ),
    namespace: str = typer.Option(os.environ.get("GRADIENTS_NAMESPACE", "gm"), "--namespace", help="Redis key prefix"),
    now: str = typer.Option(
        "",
        "--now",
        help="ISO-8601 time (UTC unless an offset is given) or unix seconds; "
        "default: the 'now' of the last live computation",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the full report as JSON"),
    top: int = typer.Option(10, "--top", help="miners to list (0 = none)"),
) -> None:
    """Recompute every task score from its logged inputs, then S_final as of NOW, and print the digest."""
    from gradients.timestamps import parse_now
    from services.scorer.replay import NothingToReplay

    try:
        at = parse_now(now) if now else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--now") from None
    try:
        report = replay_report(redis_url, namespace, at)
    except NothingToReplay as exc:
        typer.echo(f"nothing to replay: {exc}", err=True)
        raise typer.Exit(EXIT_NOTHING) from None
    except ConnectionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_NOTHING) from None
    data = report_dict(report)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(
            f"replayed {data['entries']} tasks ({data['recomputed']} recomputed from their inputs, "
            f"{len(data['mismatches'])} differ) as of {data['now_iso']} ({data['now']!r})"
        )
        typer.echo(f"scoring config {data['config_version']} ({data['config_digest'][:16]}…)")
        if data["not_recomputed"]:
            typer.echo(f"scored under another config, stored scores used: {', '.join(data['not_recomputed'])}")
        for task_id, problems in data["mismatches"].items():
            typer.echo(f"MISMATCH {task_id}: {'; '.join(problems)}")
        for row in data["scores"][: max(top, 0)]:
            typer.echo(f"  {row['miner_hotkey']}  final {row['final']:.6f}  temporal {row['temporal']:.6f}")
        if report.live is not None:
            verdict = "matches" if report.matches_live else "DIFFERS FROM"
            typer.echo(f"{verdict} the live digest {report.live.digest}")
        else:
            typer.echo("no live computation at this 'now' to compare with")
        typer.echo(f"digest {report.digest}")
    if not report.ok:
        raise typer.Exit(EXIT_MISMATCH)


if __name__ == "__main__":
    app()
