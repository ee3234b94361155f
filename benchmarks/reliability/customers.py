"""Hostile customers: the customer API (TaskService) attacked with real calls on a running mesh.

Run by the hostile scenario (benchmarks/reliability/hostile.py) after its round, on the same
mesh (task_service with GRADIENTS_TASK_AUTH=required, the production default):

- no key, a bad key (unknown, altered, wrong scheme), a revoked key -> UNAUTHENTICATED on
  every TaskService method;
- another account's task (and a synthetic task no account owns) for get / watch / cancel /
  result / download -> NOT_FOUND, as if it did not exist; another account's upload digest
  -> INVALID_ARGUMENT;
- dataset URIs `/etc/passwd`, `/`, `../x`, a `..` climb out of an allowed root, a symlink
  inside the root pointing out of it, `file:///etc/passwd` -> INVALID_ARGUMENT at CreateTask;
- `http://` to loopback (a live server holding the data), `localhost`, `[::1]`, private and
  the metadata address 169.254.169.254 -> INVALID_ARGUMENT, with http enabled by the operator
  (so it is the address check that refuses, not the scheme), and the live server is never hit;
- uploads over the size limit (announced, or lied about) and with a wrong sha256 -> refused,
  nothing in the artifact store, nothing left in the spool;
- an account over its quotas (concurrent tasks, tasks per hour) -> RESOURCE_EXHAUSTED saying
  when to retry;
- 20 concurrent CreateTask calls with one request_id -> one task.

For every refused CreateTask: no task record was added and the attacker owns no task; no
answer and no log line quotes the outside file's content, the outside path or an API key.
Tasks this creates (the victim's, the quota's) are cancelled at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gradients.accounts import AccountStore, new_api_key
from gradients.models import procedural
from gradients.runtime import EventBus
from gradients.runtime.artifacts import open_artifact_store
from gradients.runtime.store import Store
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc

NO_KEY = "no API key"
BAD_KEY = "bad API key"
REVOKED_KEY = "revoked API key"
FOREIGN_TASK = "another account's task"
LOCAL_PATHS = "dataset path outside the roots"
PRIVATE_URLS = "dataset URL not public"
OVERSIZED = "oversized dataset upload"
MISMATCH = "sha256-mismatched upload"
QUOTA = "quota exceeded"
ONE_REQUEST_ID = "20 CreateTask, one request_id"
CUSTOMER_ROWS = (
    NO_KEY,
    BAD_KEY,
    REVOKED_KEY,
    FOREIGN_TASK,
    LOCAL_PATHS,
    PRIVATE_URLS,
    OVERSIZED,
    MISMATCH,
    QUOTA,
    ONE_REQUEST_ID,
)

MAX_DATASET_BYTES = 200_000  # GRADIENTS_TASK_MAX_DATASET_BYTES for the scenario: oversized stays fast
SECRET = "GM-CUSTOMER-SECRET-7f3a"  # in the rows of the file outside the roots: must never come back
PASSWD_MARK = "root:x:0:0"
CONCURRENT_CREATES = 20
METHODS = (
    "CreateTask",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "WatchTask",
    "UploadDataset",
    "GetTaskResult",
    "DownloadResult",
)


@dataclass
class Attempt:
    row: str
    what: str
    expected: tuple[str, ...]  # any of these status names
    reasons: tuple[str, ...] = ()  # any of these in the details ("" = no requirement)
    code: str = ""
    details: str = ""
    extra: list[str] = field(default_factory=list)  # further failed checks

    @property
    def handled(self) -> bool:
        return (
            self.code in self.expected
            and (not self.reasons or any(r in self.details for r in self.reasons))
            and not self.extra
        )

    def describe(self) -> str:
        more = f"; {'; '.join(self.extra)}" if self.extra else ""
        return f"{self.what}: got {self.code} {self.details[:160]!r}, expected {self.expected} {self.reasons}{more}"


class Files:
    """The folders the attacks point at: an allowed root, and outside it a file worth stealing."""

    def __init__(self, base: Path):
        self.base = Path(base).resolve()
        self.root = self.base / "customer-root"
        self.outside = self.base / "customer-outside"
        rows = procedural.generate(next(iter(procedural.FAMILIES)), 40, 3)
        self.good = procedural.write_jsonl(rows, self.base / "customer-upload" / "train.jsonl")
        secret_rows = [{**r, "output": f"{SECRET} {r.get('output', '')}"} for r in rows]
        self.secret = procedural.write_jsonl(secret_rows, self.outside / "secret.jsonl")
        self.root.mkdir(parents=True, exist_ok=True)
        procedural.write_jsonl(rows, self.root / "inside.jsonl")
        self.link = self.root / "link.jsonl"
        if not self.link.is_symlink():
            os.symlink(self.secret, self.link)

    def env(self) -> dict[str, str]:
        return {
            "GRADIENTS_DATASET_LOCAL_ROOTS": str(self.root),
            # On, so that http URLs are refused by the address check, not for their scheme.
            "GRADIENTS_DATASET_ALLOW_HTTP": "true",
            "GRADIENTS_TASK_MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
        }


class SecretServer:
    """An HTTP server on loopback serving the secret rows: if the validator fetched it, it would work."""

    def __init__(self, payload: bytes):
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SecretServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def upload_chunks(
    data: bytes,
    filename: str = "train.jsonl",
    size: int | None = None,
    sha256: str | None = None,
    chunk: int = 64 * 1024,
) -> list[ts.DatasetChunk]:
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    chunks = [ts.DatasetChunk(data=p) for p in parts]
    chunks[0].filename = filename
    chunks[0].size_bytes = len(data) if size is None else size
    chunks[0].sha256 = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    return chunks


class CustomerClient:
    """TaskService calls with chosen metadata; (status name, details, reply) instead of exceptions."""

    def __init__(self, address: str):
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = ts_grpc.TaskServiceStub(self.channel)
        # Client streams on the blocking API: grpc.aio reports a refusal that arrives while chunks
        # are still being written as INTERNAL instead of the server's status (grpc/grpc#36066).
        self.sync_channel = grpc.insecure_channel(address)
        self.sync_stub = ts_grpc.TaskServiceStub(self.sync_channel)

    async def close(self) -> None:
        await self.channel.close()
        self.sync_channel.close()

    async def call(self, method: str, request, metadata=(), timeout_s: float = 30.0) -> tuple[str, str, object]:
        try:
            if method == "UploadDataset":
                reply = await asyncio.to_thread(
                    self.sync_stub.UploadDataset, iter(request), metadata=metadata, timeout=timeout_s
                )
            elif method in ("WatchTask", "DownloadResult"):
                stream = getattr(self.stub, method)(request, metadata=metadata, timeout=timeout_s)
                reply = None
                try:
                    async for reply in stream:  # noqa: B007  (`reply`, the first reply, is returned below)
                        break  # the first reply says it was answered; no need to wait for the end
                finally:
                    stream.cancel()
            else:
                reply = await getattr(self.stub, method)(request, metadata=metadata, timeout=timeout_s)
            return "OK", "", reply
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or "", None


def requests_for(task_id: str, base_model: str, uri: str) -> dict[str, object]:
    """One plausible request per TaskService method (aimed at a real task where one is named)."""
    return {
        "CreateTask": create_request(base_model, uri),
        "GetTask": ts.GetTaskRequest(task_id=task_id),
        "ListTasks": ts.ListTasksRequest(),
        "CancelTask": ts.CancelTaskRequest(task_id=task_id, reason="hostile"),
        "WatchTask": ts.WatchTaskRequest(task_id=task_id),
        "UploadDataset": upload_chunks(b'{"instruction": "a", "output": "b"}\n'),
        "GetTaskResult": ts.GetResultRequest(task_id=task_id),
        "DownloadResult": ts.DownloadResultRequest(task_id=task_id),
    }


def create_request(base_model: str, uri: str, request_id: str = "") -> ts.CreateTaskRequest:
    return ts.CreateTaskRequest(
        type=pb.INSTRUCT_TEXT,
        base_model=base_model,
        hours=1,
        request_id=request_id,
        dataset=pb.DatasetSpec(uri=uri, column_mapping={"instruction": "instruction", "output": "output"}),
    )


class CustomerAttacks:
    def __init__(
        self,
        address: str,
        redis_url: str,
        nats_url: str,
        data_dir: Path,
        base_model: str,
        files: Files,
        list_tasks: Callable,
        logs_dir: Path,
        namespace: str = "gm",
    ):
        self.address = address
        self.redis_url = redis_url
        self.nats_url = nats_url
        self.data_dir = Path(data_dir)
        self.base_model = base_model
        self.files = files
        self.list_tasks = list_tasks
        self.logs_dir = logs_dir
        self.namespace = namespace
        self.attempts: list[Attempt] = []
        self.keys: list[str] = []
        self.errors: list[str] = []

    async def record(self, attempt: Attempt, method: str, request, metadata=()) -> Attempt:
        attempt.code, attempt.details, _ = await self.client.call(method, request, metadata)
        for secret in (SECRET, PASSWD_MARK, str(self.files.outside), *self.keys):
            if secret and secret in attempt.details:
                attempt.extra.append("the answer quotes a secret (file content, outside path or key)")
        self.attempts.append(attempt)
        return attempt

    async def run(self) -> list[Attempt]:
        store = Store.from_url(self.redis_url, self.namespace)
        accounts = AccountStore(store)
        self.client = CustomerClient(self.address)
        try:
            await self._run(accounts)
        finally:
            await self.client.close()
            await store.close()
        return self.attempts

    async def _account(self, accounts: AccountStore, name: str, **quotas) -> str:
        _, key = await accounts.create(name, **quotas)
        self.keys.append(key)
        return key

    async def _run(self, accounts: AccountStore) -> None:
        victim = await self._account(accounts, "hostile-victim")
        attacker = await self._account(accounts, "hostile-attacker")
        revoked = await self._account(accounts, "hostile-revoked")
        await accounts.revoke("hostile-revoked")
        limited = await self._account(accounts, "hostile-limited", max_concurrent_tasks=1, tasks_per_hour=1)
        synthetic = next((t.task_id for t in await self.list_tasks() if not t.organic), "")

        # The victim uploads a dataset and creates its task 20 times at once with one request_id.
        code, details, upload = await self.client.call(
            "UploadDataset", upload_chunks(self.files.good.read_bytes()), bearer(victim)
        )
        if code != "OK":
            self.errors.append(f"the victim's valid upload was refused: {code} {details[:200]}")
            return
        victim_uri = upload.uri
        await self.one_request_id(accounts, victim, victim_uri)
        victim_tasks = await accounts.task_ids("hostile-victim")
        victim_task = victim_tasks[0] if victim_tasks else ""

        # Keys: none, bad, revoked -> UNAUTHENTICATED on every method.
        requests = requests_for(victim_task or "00000000-0000-0000-0000-000000000000", self.base_model, victim_uri)
        bad_keys = {
            "unknown key": bearer(new_api_key()),
            "altered key": bearer(attacker[:-1] + ("A" if attacker[-1] != "A" else "B")),
            "wrong scheme": (("authorization", f"Basic {attacker}"),),
            "empty bearer": (("authorization", "Bearer"),),
        }
        for method, request in requests.items():
            await self.record(
                Attempt(NO_KEY, f"{method} without a key", ("UNAUTHENTICATED",), ("API key",)), method, request
            )
            for label, metadata in bad_keys.items():
                await self.record(
                    Attempt(BAD_KEY, f"{method} with {label}", ("UNAUTHENTICATED",), ("API key",)),
                    method,
                    request,
                    metadata,
                )
            await self.record(
                Attempt(REVOKED_KEY, f"{method} with a revoked key", ("UNAUTHENTICATED",), ("API key",)),
                method,
                request,
                bearer(revoked),
            )

        # Another account's task (and a synthetic one) is NOT_FOUND; another account's upload is refused.
        for task_id, whose in ((victim_task, "the victim's"), (synthetic, "a synthetic")):
            if not task_id:
                self.errors.append(f"no {whose} task to aim at")
                continue
            for method in ("GetTask", "WatchTask", "CancelTask", "GetTaskResult", "DownloadResult"):
                await self.record(
                    Attempt(FOREIGN_TASK, f"{method} of {whose} task", ("NOT_FOUND",), ("not found",)),
                    method,
                    requests_for(task_id, self.base_model, "")[method],
                    bearer(attacker),
                )
        listed = await self.client.call("ListTasks", ts.ListTasksRequest(page_size=500), bearer(attacker))
        seen = [t.task_id for t in listed[2].tasks] if listed[0] == "OK" else ["?"]
        self.attempts.append(
            Attempt(
                FOREIGN_TASK,
                "ListTasks by the attacker lists nothing",
                ("OK",),
                (),
                listed[0],
                listed[1],
                [f"lists {len(seen)} tasks"] if seen else [],
            )
        )
        await self.record(
            Attempt(FOREIGN_TASK, "CreateTask on another account's upload", ("INVALID_ARGUMENT",), ("dataset.uri",)),
            "CreateTask",
            create_request(self.base_model, victim_uri),
            bearer(attacker),
        )
        if victim_task:  # the victim still sees (and may cancel) its own task
            code, details, _ = await self.client.call(
                "CancelTask", ts.CancelTaskRequest(task_id=victim_task), bearer(victim)
            )
            if code not in ("OK", "FAILED_PRECONDITION"):
                self.errors.append(f"the victim could not cancel its own task: {code} {details[:160]}")

        await self.dataset_uris(accounts, attacker)
        await self.uploads(attacker)
        await self.quota(accounts, limited, victim_uri)
        self.check_logs()

    async def one_request_id(self, accounts: AccountStore, key: str, uri: str) -> None:
        request = create_request(self.base_model, uri, request_id="hostile-same-request")
        replies = await asyncio.gather(
            *(self.client.call("CreateTask", request, bearer(key)) for _ in range(CONCURRENT_CREATES))
        )
        ids = {reply.task.task_id for code, _, reply in replies if code == "OK"}
        codes = sorted({code for code, _, _ in replies})
        owned = await accounts.task_ids("hostile-victim")
        extra = []
        if codes != ["OK"]:
            extra.append(f"answers {codes}: {[d[:120] for c, d, _ in replies if c != 'OK'][:2]}")
        if len(ids) != 1 or len(owned) != 1:
            extra.append(f"{len(ids)} task ids answered, {len(owned)} tasks owned")
        self.attempts.append(
            Attempt(
                ONE_REQUEST_ID,
                f"{CONCURRENT_CREATES} concurrent CreateTask, one request_id",
                ("OK",),
                (),
                codes[0] if len(codes) == 1 else ",".join(codes),
                f"{len(ids)} task(s) for {CONCURRENT_CREATES} calls",
                extra,
            )
        )

    async def dataset_uris(self, accounts: AccountStore, key: str) -> None:
        f = self.files
        local = {
            "/etc/passwd": "/etc/passwd",
            "/": "/",
            "../x": "../x",
            "file:///etc/passwd": "file:///etc/passwd",
            "a .. climb out of the root": f"{f.root}/../{f.outside.name}/secret.jsonl",
            "a symlink out of the root": str(f.link),
        }
        before = len(await self.list_tasks())
        for label, uri in local.items():
            await self.record(
                Attempt(LOCAL_PATHS, f"CreateTask dataset {label}", ("INVALID_ARGUMENT",), ("dataset",)),
                "CreateTask",
                create_request(self.base_model, uri),
                bearer(key),
            )
        with SecretServer(f.secret.read_bytes()) as server:
            urls = {
                "loopback (a live server)": f"http://127.0.0.1:{server.port}/train.jsonl",
                "localhost": f"http://localhost:{server.port}/train.jsonl",
                "IPv6 loopback": f"http://[::1]:{server.port}/train.jsonl",
                "a private address": "http://10.0.0.1/train.jsonl",
                "the metadata address": "http://169.254.169.254/latest/meta-data/",
            }
            for label, uri in urls.items():
                await self.record(
                    Attempt(PRIVATE_URLS, f"CreateTask dataset {label}", ("INVALID_ARGUMENT",), ("dataset",)),
                    "CreateTask",
                    create_request(self.base_model, uri),
                    bearer(key),
                )
            hits = server.hits
        if hits:
            self.attempts[-1].extra.append(f"the loopback server was fetched {hits} times")
        after = len(await self.list_tasks())
        owned = await accounts.task_ids("hostile-attacker")
        if after != before or owned:
            self.attempts[-1].extra.append(
                f"refused CreateTask calls stored tasks ({before} -> {after}, attacker owns {owned})"
            )

    async def uploads(self, key: str) -> None:
        big = self.files.good.read_bytes() * (MAX_DATASET_BYTES // self.files.good.stat().st_size + 2)
        lied = self.files.good.read_bytes() * 3
        cases = [
            (
                OVERSIZED,
                "an upload announced over the limit",
                big,
                upload_chunks(big),
                ("RESOURCE_EXHAUSTED",),
                "limit",
            ),
            (
                OVERSIZED,
                "an upload announcing fewer bytes than it sends",
                lied,
                upload_chunks(lied, size=len(lied) // 3),
                ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"),
                "announced",
            ),
            (
                OVERSIZED,
                "an upload announcing 1 TiB",
                lied,
                upload_chunks(lied, size=1 << 40),
                ("RESOURCE_EXHAUSTED",),
                "limit",
            ),
            (
                MISMATCH,
                "an upload whose bytes do not match its sha256",
                lied,
                upload_chunks(lied, sha256=hashlib.sha256(b"something else").hexdigest()),
                ("INVALID_ARGUMENT",),
                "sha256",
            ),
            (
                MISMATCH,
                "an upload with a malformed sha256",
                lied,
                upload_chunks(lied, sha256="x" * 64),
                ("INVALID_ARGUMENT",),
                "sha256",
            ),
        ]
        bus = await EventBus.connect(self.nats_url, "hostile-customers")
        try:
            artifacts = open_artifact_store("nats", bus.js, self.data_dir)
            for row, what, data, chunks, codes, reason in cases:
                attempt = await self.record(Attempt(row, what, codes, (reason,)), "UploadDataset", chunks, bearer(key))
                for digest in {hashlib.sha256(data).hexdigest(), chunks[0].sha256}:
                    if len(digest) == 64 and await artifacts.exists(digest):
                        attempt.extra.append(f"{digest[:12]} is in the artifact store")
        finally:
            await bus.stop(1)
        spool = self.data_dir / "task_service" / "spool"
        left = [p.name for p in spool.iterdir()] if spool.is_dir() else []
        if left:
            self.attempts[-1].extra.append(f"the spool kept {left[:3]}")

    async def quota(self, accounts: AccountStore, key: str, victim_uri: str) -> None:
        code, details, upload = await self.client.call(
            "UploadDataset", upload_chunks(self.files.good.read_bytes()), bearer(key)
        )
        if code != "OK":
            self.errors.append(f"the limited account's upload was refused: {code} {details[:160]}")
            return
        first = await self.client.call("CreateTask", create_request(self.base_model, upload.uri), bearer(key))
        if first[0] != "OK":
            self.errors.append(f"the limited account's first task was refused: {first[0]} {first[1][:160]}")
            return
        await self.record(
            Attempt(QUOTA, "a second task while one runs (max 1 at once)", ("RESOURCE_EXHAUSTED",), ("retry",)),
            "CreateTask",
            create_request(self.base_model, upload.uri),
            bearer(key),
        )
        await self.client.call("CancelTask", ts.CancelTaskRequest(task_id=first[2].task.task_id), bearer(key))
        await self.record(
            Attempt(QUOTA, "a second task within the hour (max 1 per hour)", ("RESOURCE_EXHAUSTED",), ("retry in",)),
            "CreateTask",
            create_request(self.base_model, upload.uri),
            bearer(key),
        )
        owned = await accounts.task_ids("hostile-limited")
        if len(owned) != 1:
            self.attempts[-1].extra.append(f"the limited account owns {len(owned)} tasks, expected 1")

    def check_logs(self) -> None:
        """No service log line carries a key, the outside file's content or its path."""
        found = []
        for log in sorted(self.logs_dir.glob("*.log")):
            text = log.read_text(errors="replace")
            for label, secret in (
                ("the outside file's content", SECRET),
                ("/etc/passwd's content", PASSWD_MARK),
                ("the outside path", str(self.files.outside)),
                *(("an API key", k) for k in self.keys),
            ):
                if secret in text:
                    found.append(f"{log.name} holds {label}")
        for attempt in self.attempts:
            if attempt.row in (LOCAL_PATHS, NO_KEY) and found:
                attempt.extra.extend(found)
                break


def summarise(attempts: list[Attempt]) -> dict[str, dict]:
    """Per row: tried, handled, the status counts and one reason (for the report)."""
    out: dict[str, dict] = {
        row: {"tried": 0, "handled": 0, "codes": {}, "reason": "", "problems": []} for row in CUSTOMER_ROWS
    }
    for a in attempts:
        row = out[a.row]
        row["tried"] += 1
        row["codes"][a.code] = row["codes"].get(a.code, 0) + 1
        if a.handled:
            row["handled"] += 1
            row["reason"] = row["reason"] or a.details[:160]
        else:
            row["problems"].append(a.describe())
    return out


__all__ = ["CUSTOMER_ROWS", "CustomerAttacks", "Files", "summarise"]


if __name__ == "__main__":
    print(json.dumps(CUSTOMER_ROWS))
