"""`gradients accounts …`: the operator's tool for customer accounts and their API keys.

Accounts live in the validator's Redis (gradients/accounts.py); no RPC manages them, so these
commands talk to Redis directly: `--redis-url` / GRADIENTS_REDIS_URL, else the Redis of the
local mesh started by `gradients up` (its `<data-dir>/mesh.json`).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from gradients.accounts import Account, AccountError, AccountStore

app = typer.Typer(
    help="Customer accounts and API keys (operators; talks to the validator's Redis).", no_args_is_help=True
)

EXIT_ERROR = 2

REDIS_OPTION = typer.Option(
    "",
    "--redis-url",
    envvar="GRADIENTS_REDIS_URL",
    show_envvar=True,
    help="the validator's Redis (default: the local mesh's, from <data-dir>/mesh.json)",
)
NAMESPACE_OPTION = typer.Option(
    "gm", "--namespace", envvar="GRADIENTS_NAMESPACE", show_envvar=True, help="Redis key prefix of the mesh"
)
DATA_DIR_OPTION = typer.Option(
    Path(".data"),
    "--data-dir",
    envvar="GRADIENTS_DATA_DIR",
    help="data dir of a local `gradients up` (its mesh.json names the Redis)",
)
JSON_OPTION = typer.Option(False, "--json", help="machine-readable output on stdout")


@app.callback()
def accounts() -> None:
    """Customer accounts and API keys (operators; talks to the validator's Redis)."""


def fail(message: str, as_json: bool) -> None:
    typer.echo(f"error: {message}", err=True)
    if as_json:
        typer.echo(json.dumps({"error": {"message": message}}))
    raise typer.Exit(EXIT_ERROR)


def redis_url_for(redis_url: str, data_dir: Path) -> str:
    """The explicit URL, else the running local mesh's; ValueError saying how to name one."""
    if redis_url.strip():
        return redis_url.strip()
    from gradients.mesh import read_state

    try:
        state = read_state(data_dir)
    except (OSError, ValueError):
        state = None
    if state and state.get("redis_url"):
        return state["redis_url"]
    raise ValueError(
        f"no Redis to talk to: pass --redis-url or set GRADIENTS_REDIS_URL, or run where a local "
        f"`gradients up` keeps its state (--data-dir; no mesh.json in {data_dir})"
    )


def run_on_store(redis_url: str, namespace: str, work):
    """`await work(AccountStore)` against Redis; ConnectionError when Redis does not answer."""
    from gradients.runtime.store import Store

    async def main():
        store = Store.from_url(redis_url, namespace)
        try:
            try:
                alive = await store.ping()
            except Exception:  # redis raises several connection error types
                alive = False
            if not alive:
                raise ConnectionError(f"cannot reach Redis at {_shown_url(redis_url)}")
            return await work(AccountStore(store))
        finally:
            await store.close()

    return asyncio.run(main())


def _shown_url(url: str) -> str:
    """The URL without a password (redis://:secret@host → redis://***@host)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def account_dict(account: Account) -> dict:
    return {
        "name": account.name,
        "max_concurrent_tasks": account.max_concurrent_tasks,
        "tasks_per_hour": account.tasks_per_hour,
        "created_at": datetime.fromtimestamp(account.created_at, UTC).isoformat(timespec="seconds"),
        "revoked": account.revoked,
    }


def _quota(value: int) -> str:
    return str(value) if value else "no limit"


def _store_call(redis_url: str, data_dir: Path, namespace: str, as_json: bool, work):
    try:
        url = redis_url_for(redis_url, data_dir)
        return run_on_store(url, namespace, work)
    except (AccountError, ValueError, ConnectionError) as exc:  # texts meant for the operator
        fail(str(exc), as_json)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="account name: a-z, 0-9, '.', '_', '-'"),
    max_concurrent_tasks: int = typer.Option(
        0, "--max-concurrent-tasks", min=0, help="tasks running at once (0 = no limit)"
    ),
    tasks_per_hour: int = typer.Option(0, "--tasks-per-hour", min=0, help="tasks created per hour (0 = no limit)"),
    redis_url: str = REDIS_OPTION,
    namespace: str = NAMESPACE_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create an account and print its API key — once: only its hash is stored."""
    account, api_key = _store_call(
        redis_url, data_dir, namespace, as_json, lambda s: s.create(name, max_concurrent_tasks, tasks_per_hour)
    )
    if as_json:
        typer.echo(json.dumps({**account_dict(account), "api_key": api_key}))
        return
    console = Console()
    console.print(
        Panel(
            f"[bold]{api_key}[/bold]\n\nexport GRADIENTS_API_KEY={api_key}\n\n"
            "This key is shown once and cannot be shown again (only its hash is stored). "
            f"Give it to the customer; if it is lost, revoke the account and create a new one.",
            title=f"API key of account {account.name}",
            border_style="green",
            expand=False,
        ),
        soft_wrap=True,
    )
    console.print(
        f"quotas: {_quota(account.max_concurrent_tasks)} concurrent tasks, "
        f"{_quota(account.tasks_per_hour)} tasks per hour",
        highlight=False,
    )


@app.command("list")
def list_accounts(
    redis_url: str = REDIS_OPTION,
    namespace: str = NAMESPACE_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Every account with its quotas (never a key: they are not stored)."""
    found = _store_call(redis_url, data_dir, namespace, as_json, lambda s: s.list())
    if as_json:
        typer.echo(json.dumps({"accounts": [account_dict(a) for a in found]}))
        return
    table = Table(title=f"{len(found)} account(s)")
    for column in ("name", "concurrent tasks", "tasks per hour", "created (UTC)", "revoked"):
        table.add_column(column)
    for account in found:
        row = account_dict(account)
        table.add_row(
            account.name,
            _quota(account.max_concurrent_tasks),
            _quota(account.tasks_per_hour),
            row["created_at"],
            "[red]yes[/red]" if account.revoked else "no",
        )
    Console().print(table)


@app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="the account whose key stops working"),
    redis_url: str = REDIS_OPTION,
    namespace: str = NAMESPACE_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Revoke an account: its key is refused from now on (its tasks stay)."""
    account = _store_call(redis_url, data_dir, namespace, as_json, lambda s: s.revoke(name))
    if as_json:
        typer.echo(json.dumps(account_dict(account)))
    else:
        typer.echo(f"account {account.name} revoked: its API key is refused from now on")


if __name__ == "__main__":
    app()
