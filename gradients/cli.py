"""The `gradients` command line."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gradients.mesh import SERVICES, Mesh, MeshOptions, OperatorInfo, check_health, fixed_addresses, read_state

app = typer.Typer(
    help="Gradients Mesh: the validator of a decentralised fine-tuning marketplace.", no_args_is_help=True
)
console = Console()


def _register_subcommands() -> None:
    from gradients.commands import accounts, demo, miner, scores, task

    app.add_typer(miner.app, name="miner")
    app.add_typer(scores.app, name="scores")
    app.add_typer(task.app, name="task")
    app.add_typer(accounts.app, name="accounts")
    app.command("demo")(demo.demo)


_register_subcommands()

DATA_DIR_OPTION = typer.Option(
    Path(os.environ.get("GRADIENTS_DATA_DIR", ".data")), "--data-dir", help="state, logs and embedded servers' data"
)


def _traces_destination(otlp_endpoint: str | None) -> str:
    return (
        f"traces + metrics → OTLP/gRPC {otlp_endpoint}"
        if otlp_endpoint
        else "not exported (set OTEL_EXPORTER_OTLP_ENDPOINT)"
    )


def health_table(title: str, addresses: dict[str, str], status: dict[str, str], otlp: str | None) -> Table:
    table = Table(title=title)
    table.add_column("service")
    table.add_column("address")
    table.add_column("health")
    table.add_column("traces")
    for name in addresses:
        s = status.get(name, "UNKNOWN")
        colour = "green" if s == "SERVING" else "red"
        table.add_row(name, addresses[name], f"[{colour}]{s}[/{colour}]", _traces_destination(otlp))
    return table


LOCAL_ACCOUNT = "local"


def print_operator_info(info: OperatorInfo, api_key: str, dev_miners: Sequence[str] = ()) -> None:
    """Where customers and miners connect, the hotkey miners sign for, and the local key."""

    def say(text: str) -> None:  # soft_wrap: a piped terminal is 80 columns; keys must stay on one line
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    say(f"customer API (TaskService): {info.customer_address}   export GRADIENTS_VALIDATOR={info.customer_address}")
    say(f"miner gateway (MinerGateway): {info.miner_gateway_address}")
    say(f"validator hotkey (miners sign for it): {info.validator_hotkey or 'unknown, see the selector log'}")
    command = f"gradients miner run --validator {info.miner_gateway_address} --validator-hotkey {info.validator_hotkey}"
    for name in dev_miners:
        say(f"  a miner (allowed): {command} --dev-key {name}")
    if not dev_miners:
        say(
            f"  a miner: {command} --dev-key NAME   (start `gradients up --dev-miner NAME` to allow it, or list "
            "its hotkey in GRADIENTS_SELECTOR_ALLOWED_HOTKEYS)"
        )
    # Only the key's hash is stored, so this is the one time it is shown; the next `up` rotates it.
    say(f"customer account '{info.local_account}' API key (shown once; each `up` issues a new one):")
    say(f"  export GRADIENTS_API_KEY={api_key}")


def dev_miner_env(names: Sequence[str]) -> dict[str, str]:
    """The selector's allow-list with the dev keypairs //NAME added to what the environment lists."""
    if not names:
        return {}
    from gradients.runtime.auth import dev_keypair

    listed = [h for h in os.environ.get("GRADIENTS_SELECTOR_ALLOWED_HOTKEYS", "").split(",") if h.strip()]
    added = [dev_keypair(name).ss58_address for name in names]
    return {"GRADIENTS_SELECTOR_ALLOWED_HOTKEYS": ",".join(dict.fromkeys([*listed, *added]))}


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    # Once: a second Ctrl-C (or a signal forwarded twice) while the mesh stops would break off the
    # shutdown with a traceback and leave processes behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop()


@app.command()
def up(
    data_dir: Path = DATA_DIR_OPTION,
    nats_url: str = typer.Option(os.environ.get("GRADIENTS_NATS_URL", ""), help="external NATS; empty = embedded"),
    redis_url: str = typer.Option(os.environ.get("GRADIENTS_REDIS_URL", ""), help="external Redis; empty = embedded"),
    ready_timeout: float = typer.Option(60.0, help="seconds to wait for every service to be SERVING"),
    dev_miner: list[str] = typer.Option(  # noqa: B008 (typer's way)
        [],
        metavar="NAME",
        help="allow the dev keypair //NAME as a miner (repeatable); prints its `gradients miner run` line",
    ),
) -> None:
    """Start embedded NATS and Redis (unless URLs are given) and the six services.

    A service whose GRADIENTS_<SERVICE>_ADDR is set listens on that address's port; the others
    get free ports. Creates (or re-keys) the customer account `local` and prints its key.
    """
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    try:
        fixed = fixed_addresses()
    except ValueError as exc:
        console.print(f"[bold red]start-up failed:[/bold red] {exc}")
        raise typer.Exit(1) from None
    mesh = Mesh(
        MeshOptions(
            data_dir=data_dir,
            nats_url=nats_url or None,
            redis_url=redis_url or None,
            otlp_endpoint=otlp,
            ready_timeout_s=ready_timeout,
            addresses=fixed,
            extra_env=dev_miner_env(dev_miner),
        )
    )
    # Both explicitly: a shell starting us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    exit_code = 0
    try:
        with console.status("starting NATS, Redis and the six services…"):
            mesh.start()
            status = mesh.wait_ready()
        console.print(health_table("Gradients mesh is up", mesh.addresses, status, otlp))
        console.print(f"NATS {mesh.nats_url}   Redis {mesh.redis_url}   logs {mesh.data_dir / 'logs'}")
        api_key = mesh.ensure_account(LOCAL_ACCOUNT)
        info = mesh.operator_info(LOCAL_ACCOUNT)
        mesh.publish(info)
        print_operator_info(info, api_key, dev_miner)
        if otlp:
            console.print(
                f"traces and metrics → {otlp} (with deploy/'s collector: Jaeger http://localhost:16686, "
                "Prometheus http://localhost:9090)"
            )
        console.print("Press Ctrl-C to stop.")
        while True:
            dead = mesh.dead_children()
            if dead:
                for child in dead:
                    console.print(f"[bold red]✗ {child.name} exited with code {child.process.returncode}[/bold red]")
                    console.print(child.log_tail(2000), markup=False)
                console.print("[bold red]shutting the mesh down: a service died (no automatic restart)[/bold red]")
                exit_code = 1
                break
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):  # Ctrl-C / SIGTERM
        console.print("stopping…")
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        console.print(f"[bold red]start-up failed:[/bold red] {exc}", markup=True)
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        mesh.stop()
        console.print("mesh stopped")
    raise typer.Exit(exit_code)


@app.command()
def status(data_dir: Path = DATA_DIR_OPTION) -> None:
    """Health of a running mesh; exit code 0 only when all six services are SERVING."""
    state = read_state(data_dir)
    if state is None:
        console.print(f"no mesh running from {data_dir} (no mesh.json)")
        raise typer.Exit(1)
    addresses = {name: info["address"] for name, info in state["services"].items()}
    health = {name: check_health(address) for name, address in addresses.items()}
    console.print(health_table("Gradients mesh status", addresses, health, state.get("otlp_endpoint")))
    if state.get("customer_address"):
        console.print(
            f"customer API {state['customer_address']}   miner gateway {state['miner_gateway_address']}   "
            f"validator hotkey {state['validator_hotkey']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    ok = set(SERVICES) <= set(health) and all(health[name] == "SERVING" for name in SERVICES)
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    app()
