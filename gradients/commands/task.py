"""`gradients task …`: the customer's command line (create, watch, list, get, cancel, result, download).

Every command takes `--validator HOST:PORT` (GRADIENTS_VALIDATOR; default: the local mesh's
customer address from `<data-dir>/mesh.json`, else 127.0.0.1:50051), `--api-key`
(GRADIENTS_API_KEY) and `--json` (machine-readable output on stdout). A gRPC error is one line
on stderr, `error: <STATUS>: <details>`, and exit code 2. The key is never printed.
See docs/customers.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradients.customer import (
    TERMINAL_STATES,
    CustomerClient,
    CustomerError,
    apply_reward_params,
    confidence_text,
    improvement_text,
    is_dataset_uri,
    merge_adapter,
    parse_column_mapping,
    parse_reward,
    resolve_base_model,
    task_state,
    task_type,
)
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts

app = typer.Typer(
    help="Customer tasks: create a fine-tune, watch it, get the result and the winning model.", no_args_is_help=True
)

DEFAULT_VALIDATOR = "127.0.0.1:50051"
EXIT_FAILED = 1  # watch: the task FAILED or was CANCELLED
EXIT_ERROR = 2  # a gRPC error or a bad argument
WATCH_RECONNECTS = 5

VALIDATOR_OPTION = typer.Option(
    "",
    "--validator",
    envvar="GRADIENTS_VALIDATOR",
    show_envvar=True,
    help=f"the validator's customer API, HOST:PORT (default: the local mesh's, else {DEFAULT_VALIDATOR})",
)
API_KEY_OPTION = typer.Option(
    "",
    "--api-key",
    envvar="GRADIENTS_API_KEY",
    show_envvar=True,
    show_default=False,
    help="your API key (prefer the environment variable: a flag shows in `ps`)",
)
JSON_OPTION = typer.Option(False, "--json", help="machine-readable JSON on stdout")
DATA_DIR_OPTION = typer.Option(
    Path(".data"),
    "--data-dir",
    envvar="GRADIENTS_DATA_DIR",
    help="data dir of a local `gradients up` (its mesh.json names the validator)",
)


@app.callback()
def task() -> None:
    """Customer tasks: create a fine-tune, watch it, get the result and the winning model."""


# ---- shared plumbing --------------------------------------------------------------------------


def validator_address(explicit: str, data_dir: Path) -> str:
    """--validator / GRADIENTS_VALIDATOR, else the local mesh's task_service, else the default."""
    if explicit.strip():
        return explicit.strip()
    from gradients.mesh import read_state

    try:
        state = read_state(data_dir) or {}
    except (OSError, ValueError):
        state = {}
    address = state.get("customer_address") or state.get("services", {}).get("task_service", {}).get("address")
    return address or DEFAULT_VALIDATOR


def error_line(code: str, details: str, key_given: bool, api_key: str = "") -> list[str]:
    """The lines printed for a failed call: `error: CODE: details`, and a hint when one helps.

    The key, should a message ever contain it, is blanked out."""
    text = f"error: {code}: {details}" if code else f"error: {details}"
    lines = [text]
    if code == "UNAUTHENTICATED":
        lines.append(
            "hint: set GRADIENTS_API_KEY (or pass --api-key) to the key from `gradients accounts create`"
            if not key_given
            else "hint: the API key in GRADIENTS_API_KEY / --api-key was refused (unknown, revoked, or for "
            "another validator); ask the operator for a new one"
        )
    elif code == "UNAVAILABLE":
        lines.append("hint: is the validator running there? set GRADIENTS_VALIDATOR or pass --validator HOST:PORT")
    if api_key:
        lines = [line.replace(api_key, "<api key>") for line in lines]
    return lines


@dataclass
class Session:
    address: str
    api_key: str
    as_json: bool

    @property
    def out(self) -> Console:
        return Console(highlight=False, soft_wrap=True)

    @property
    def err(self) -> Console:
        return Console(stderr=True, highlight=False, soft_wrap=True)

    def client(self) -> CustomerClient:
        return CustomerClient(self.address, self.api_key)

    def emit(self, data) -> None:
        typer.echo(json.dumps(data))

    def fail(self, code: str, details: str) -> None:
        for line in error_line(code, details, bool(self.api_key), self.api_key):
            typer.echo(line, err=True)
        if self.as_json:
            self.emit(
                {
                    "error": {
                        "code": code or "INVALID_ARGUMENT",
                        "details": details.replace(self.api_key, "<api key>") if self.api_key else details,
                    }
                }
            )
        raise typer.Exit(EXIT_ERROR)


def session(validator: str, api_key: str, as_json: bool, data_dir: Path) -> Session:
    return Session(validator_address(validator, data_dir), api_key.strip(), as_json)


@contextmanager
def handled(s: Session) -> Iterator[None]:
    """gRPC errors and local problems as one clear line and exit code 2."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        s.fail(code.name, details or "")
    except CustomerError as exc:
        s.fail("", str(exc))


def to_dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def state_name(state: int) -> str:
    return pb.TaskState.Name(state) if state in pb.TaskState.values() else str(state)


def type_name(value: int) -> str:
    return pb.TaskType.Name(value) if value in pb.TaskType.values() else str(value)


def _when(task: pb.Task) -> str:
    if not task.created_at.seconds:
        return ""
    return datetime.fromtimestamp(task.created_at.seconds).strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def transfer_bar(s: Session, label: str):
    """A progress callback (bytes done, bytes in all) drawn on stderr; nothing with --json."""
    if s.as_json:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=s.err, transient=True
    ) as bar:
        job = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(job, completed=done, total=total or None)


# ---- create -----------------------------------------------------------------------------------


def read_reward_code(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError as exc:
        raise CustomerError(f"--reward-code {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def reward_functions(specs: list[str], code_file: Path | None, params: list[str] = ()) -> list[pb.RewardFunction]:
    """--reward NAME[:WEIGHT] options with their --reward-param NAME:KEY=VALUE; `--reward-code FILE`
    is the code of the `code` reward (added with weight 1 when no `--reward code[:W]` names it)."""
    code = read_reward_code(code_file)
    functions = [parse_reward(spec, code) for spec in specs]
    has_code = any(f.name == "code" for f in functions)
    if has_code and not code:
        raise CustomerError("--reward code needs --reward-code FILE (the reward function's Python source)")
    if code and not has_code:
        functions.append(parse_reward("code", code))
    apply_reward_params(functions, params)
    return functions


@app.command("create")
def create(
    type_: str = typer.Option(..., "--type", help="instruct | chat | dpo | grpo | image"),
    base_model: str = typer.Option(
        ..., "--base-model", help="the model to fine-tune: a Hub id (org/name) or a folder the validator can read"
    ),
    dataset: str = typer.Option(
        ...,
        "--dataset",
        help="a local file or folder (uploaded first), or a URI: "
        "upload:<sha256>, a Hub id org/name (or org/name@revision:split), "
        "http(s)://…",
    ),
    format_: str = typer.Option(
        "",
        "--format",
        help="jsonl | json | csv | parquet | hf_disk | image_folder (default: from the file name or folder)",
    ),
    column: list[str] = typer.Option([], "--column", help="STANDARD=YOURS, e.g. instruction=question (repeat)"),
    hours: float = typer.Option(0.0, "--hours", min=0.0, help="training time in hours (0 = the validator decides)"),
    params_b: float = typer.Option(
        0.0, "--params-b", min=0.0, help="base model size in billions of parameters (0 = from its config)"
    ),
    reward: list[str] = typer.Option(
        [],
        "--reward",
        help="GRPO reward NAME[:WEIGHT] (repeat): format, length, exact_match, numeric_match, keyword, code",
    ),
    reward_param: list[str] = typer.Option(
        [], "--reward-param", help="NAME:KEY=VALUE for a --reward (repeat), e.g. numeric_match:column=answer"
    ),
    reward_code: Path | None = typer.Option(None, "--reward-code", help="Python file with a `code` reward function"),
    result_model_name: str = typer.Option(
        "", "--result-model-name", help="Hub repo org/name the winner is pushed to (when the validator can push)"
    ),
    request_id: str = typer.Option("", "--request-id", help="idempotency key: the same ID never creates two tasks"),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Create a fine-tuning task (a local dataset is uploaded first); prints the task id."""
    s = session(validator, api_key, as_json, data_dir)
    with handled(s):
        # Everything local is checked before the first byte goes out.
        kind = type_.strip().lower()
        ttype = task_type(kind)
        mapping = parse_column_mapping(column, kind)
        rewards = reward_functions(reward, reward_code, reward_param)
        local = Path(dataset).expanduser()
        upload = None
        with s.client() as client:
            if local.exists():
                with transfer_bar(s, f"uploading {local.name}") as progress:
                    upload = client.upload_dataset(local, format_ or None, progress)
                uri, fmt = upload.uri, upload.format
                if not as_json:
                    s.err.print(
                        f"uploaded {local.name}: {upload.size_bytes} bytes, {upload.format}, {upload.uri}", markup=False
                    )
            elif is_dataset_uri(dataset) or dataset.startswith("file://"):
                uri, fmt = dataset, format_
            else:
                raise CustomerError(
                    f"--dataset {dataset!r}: no such local file or folder, and not a dataset URI "
                    "(upload:<sha256>, org/name[@revision][:split], http(s)://…)"
                )
            created = client.create_task(
                ttype, base_model, uri, fmt, mapping, hours, params_b, rewards, result_model_name, request_id
            )
    if as_json:
        s.emit(
            {
                "task": to_dict(created),
                "upload": None
                if upload is None
                else {
                    "uri": upload.uri,
                    "sha256": upload.sha256,
                    "size_bytes": upload.size_bytes,
                    "format": upload.format,
                },
            }
        )
        return
    out = s.out
    tid = created.task_id
    out.print(f"task {tid} created ({type_name(created.type)}, {state_name(created.state)})", markup=False)
    span = f"{created.hours:g} h" if created.hours else "the time the validator allots"
    out.print(
        f"what happens next: the validator prepares your dataset (train/test split), miners train for {span}, "
        "then every submission and the base model are evaluated on the held-out test data.",
        markup=False,
    )
    out.print(f"  gradients task watch {tid}        follow it until it is scored", markup=False)
    out.print(f"  gradients task result {tid}       the winner against the base model (once SCORED)", markup=False)
    out.print(f"  gradients task download {tid} --out DIR [--merge]   the winning model", markup=False)


# ---- follow -----------------------------------------------------------------------------------


def update_dict(update: ts.TaskUpdate) -> dict:
    t = update.task
    return {
        "task_id": t.task_id,
        "state": state_name(t.state),
        "stage": update.stage,
        "message": update.message,
        "progress": t.progress,
        "failure_reason": t.failure_reason,
    }


def finish_watch(s: Session, task: pb.Task) -> None:
    name = state_name(task.state)
    if task.state == pb.SCORED:
        if not s.as_json:
            s.out.print(f"task {task.task_id} SCORED — see: gradients task result {task.task_id}", markup=False)
        raise typer.Exit(0)
    if not s.as_json:
        s.err.print(f"task {task.task_id} {name}: {task.failure_reason or 'no reason given'}", markup=False)
    raise typer.Exit(EXIT_FAILED)


@app.command("watch")
def watch(
    task_id: str = typer.Argument(..., help="the task id `task create` printed"),
    timeout: float = typer.Option(0.0, "--timeout", min=0.0, help="give up after this many seconds (0 = never)"),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Follow a task's stages and progress; exit 0 when SCORED, 1 when FAILED or CANCELLED."""
    s = session(validator, api_key, as_json, data_dir)
    deadline = time.monotonic() + timeout if timeout else None
    shown: tuple | None = None
    reconnects = 0
    with handled(s), s.client() as client:
        while True:
            remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
            last: pb.Task | None = None
            try:
                for update in client.watch_task(task_id, timeout=remaining):
                    last = update.task
                    line = (update.stage, update.message, update.task.state)
                    if line != shown:  # the same report twice says nothing new
                        shown = line
                        if as_json:
                            s.emit(update_dict(update))
                        else:
                            stamp = datetime.now().strftime("%H:%M:%S")
                            s.out.print(f"{stamp}  {update.stage:<20} {update.message}", markup=False)
                    if last.state in TERMINAL_STATES:
                        break
            except grpc.RpcError as exc:
                # The validator restarting is not the task failing: reconnect a few times.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or reconnects >= WATCH_RECONNECTS:
                    raise
                reconnects += 1
                time.sleep(min(2.0 * reconnects, 10.0))
                continue
            if last is None or last.state not in TERMINAL_STATES:
                last = client.get_task(task_id)  # the stream ended early: where is the task now?
            if last.state in TERMINAL_STATES:
                finish_watch(s, last)


@app.command("list")
def list_tasks(
    state: str = typer.Option("", "--state", help="only tasks in this state (e.g. scored, training, failed)"),
    type_: str = typer.Option("", "--type", help="only tasks of this type"),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Your tasks, oldest first."""
    s = session(validator, api_key, as_json, data_dir)
    with handled(s):
        wanted_state = task_state(state) if state else pb.TASK_STATE_UNSPECIFIED
        wanted_type = task_type(type_) if type_ else pb.TASK_TYPE_UNSPECIFIED
        with s.client() as client:
            tasks = client.list_tasks(wanted_state, wanted_type)
    if as_json:
        s.emit({"tasks": [to_dict(t) for t in tasks]})
        return
    table = Table(title=f"{len(tasks)} task(s)")
    for name in ("task id", "type", "state", "base model", "created", "progress / reason"):
        table.add_column(name)
    for t in tasks:
        table.add_row(
            escape(t.task_id),
            type_name(t.type),
            state_name(t.state),
            escape(t.base_model),
            _when(t),
            escape(t.failure_reason or t.progress),
        )
    s.out.print(table)


def print_task(s: Session, t: pb.Task) -> None:
    rows = [
        ("task id", t.task_id),
        ("type", type_name(t.type)),
        ("state", state_name(t.state)),
        ("base model", t.base_model),
        ("dataset", t.dataset.uri),
        ("rows", str(t.dataset.row_count or "")),
        ("hours", f"{t.hours:g}" if t.hours else ""),
        ("created", _when(t)),
        ("progress", t.progress),
        ("miners", str(len(t.miner_hotkeys)) if t.miner_hotkeys else ""),
        ("failure", t.failure_reason),
        ("result model name", t.result_model_name),
    ]
    for label, value in rows:
        if value:
            s.out.print(f"{label + ':':<19}{value}", markup=False)


@app.command("get")
def get(
    task_id: str = typer.Argument(...),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """One task's state and details."""
    s = session(validator, api_key, as_json, data_dir)
    with handled(s), s.client() as client:
        found = client.get_task(task_id)
    if as_json:
        s.emit(to_dict(found))
    else:
        print_task(s, found)


@app.command("cancel")
def cancel(
    task_id: str = typer.Argument(...),
    reason: str = typer.Option("", "--reason", help="kept as the task's failure reason"),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Cancel a task that has not ended."""
    s = session(validator, api_key, as_json, data_dir)
    with handled(s), s.client() as client:
        cancelled = client.cancel_task(task_id, reason)
    if as_json:
        s.emit(to_dict(cancelled))
    else:
        s.out.print(f"task {cancelled.task_id} {state_name(cancelled.state)}", markup=False)


# ---- results ----------------------------------------------------------------------------------


def _loss(value: float) -> str:
    return f"{value:.4f}"


def result_table(result: ts.CustomerTaskResult) -> Table:
    table = Table(title=f"task {result.task_id}: {state_name(result.state)}")
    for name in ("", "model", "rank", "test loss", "synth loss", "weighted", "score", "note"):
        table.add_column(name)
    if result.winner_hotkey:
        w = result.winner
        table.add_row(
            "★",
            f"winner {escape(result.winner_hotkey)}",
            "1",
            _loss(w.test),
            _loss(w.synth),
            _loss(w.weighted),
            next((f"{m.task_score:.3f}" for m in result.miners if m.miner_hotkey == result.winner_hotkey), ""),
            f"{result.winner_kind}, {improvement_text(result)} vs base" if result.has_base else result.winner_kind,
        )
    if result.has_base:
        b = result.base
        table.add_row(
            "",
            f"base {escape(result.base_model)}",
            "",
            _loss(b.test),
            _loss(b.synth),
            _loss(b.weighted),
            "",
            "the model before fine-tuning",
        )
    for m in result.miners:
        if m.miner_hotkey == result.winner_hotkey:
            continue
        losses = (_loss(m.losses.test), _loss(m.losses.synth), _loss(m.losses.weighted)) if m.ok else ("", "", "")
        notes = [n for n, on in (("duplicate", m.duplicate), ("suspicious", m.suspicious)) if on]
        if m.failure_reason:
            notes.append(m.failure_reason)
        table.add_row(
            "",
            escape(m.miner_hotkey),
            str(m.rank) if m.rank > 0 else "–",
            *losses,
            f"{m.task_score:.3f}" if m.rank > 0 else "",
            escape("; ".join(notes)),
        )
    return table


@app.command("result")
def result(
    task_id: str = typer.Argument(...),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """The winner against the base model and the other miners (once the task is SCORED)."""
    s = session(validator, api_key, as_json, data_dir)
    with handled(s), s.client() as client:
        found = client.get_result(task_id)
    if as_json:
        s.emit(to_dict(found))
        return
    out = s.out
    out.print(result_table(found))
    if not found.winner_hotkey:
        out.print("no valid submission: there is no winning model to download")
        return
    out.print(f"improvement over the base model (weighted loss): {improvement_text(found)}")
    out.print(f"rank-1 confidence: {confidence_text(found)}")
    out.print(f"winning {found.winner_kind}: {found.winner_size_bytes} bytes, sha256 {found.winner_sha256}")
    if found.pushed_repository:
        out.print(f"pushed to the Hub: {found.pushed_repository}")
    elif found.push_error:
        out.print(f"not pushed to {found.result_model_name or 'the Hub'}: {found.push_error}", markup=False)
    out.print(f"download it: gradients task download {task_id} --out DIR [--merge]", markup=False)


@app.command("download")
def download(
    task_id: str = typer.Argument(...),
    out: Path = typer.Option(..., "--out", help="folder the winning model is written to"),
    merge: bool = typer.Option(False, "--merge", help="also merge an adapter into the base model: OUT/merged"),
    base_model: str = typer.Option(
        "",
        "--base-model",
        help="the base model for --merge (default: the task's, a local folder or a Hub id in the local cache)",
    ),
    validator: str = VALIDATOR_OPTION,
    api_key: str = API_KEY_OPTION,
    as_json: bool = JSON_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Download the winning submission (sha256 checked) and extract it into OUT."""
    s = session(validator, api_key, as_json, data_dir)
    merged = None
    with handled(s):
        with s.client() as client, transfer_bar(s, "downloading") as progress:
            got = client.download_result(task_id, out, progress)
        if merge:
            if got.kind == "full":
                if not as_json:
                    s.err.print("the winner is a full model already: nothing to merge")
            else:
                ref = base_model or got.base_model
                if not ref:
                    raise CustomerError("the validator did not say which base model to merge into; pass --base-model")
                base = resolve_base_model(ref)
                if not as_json:
                    s.err.print(f"merging the adapter into {ref}…", markup=False)
                merged = merge_adapter(out, base, out / "merged")
    if as_json:
        s.emit(
            {
                "task_id": task_id,
                "archive": str(got.archive),
                "sha256": got.sha256,
                "size_bytes": got.size_bytes,
                "kind": got.kind,
                "base_model": got.base_model,
                "out_dir": str(got.out_dir),
                "files": [str(p) for p in got.files],
                "merged": str(merged) if merged else None,
            }
        )
        return
    o = s.out
    o.print(f"wrote {got.archive} ({got.size_bytes} bytes, sha256 {got.sha256} verified)", markup=False)
    o.print(f"extracted the winning {got.kind} ({len(got.files)} files) into {got.out_dir}", markup=False)
    if merged:
        o.print(f"merged model: {merged} (AutoModelForCausalLM.from_pretrained({str(merged)!r}))", markup=False)
    elif got.kind == "adapter":
        o.print(
            f"load it: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({got.base_model!r}), "
            f"{str(got.out_dir)!r}) — or pass --merge for a full model",
            markup=False,
        )


if __name__ == "__main__":
    app()
