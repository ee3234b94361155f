"""dataset_prep against a real HTTP server on 127.0.0.1 speaking OpenAI chat-completions.

The server (written for these tests) answers each request from the example in its prompt:
well-formed JSON by default, and misbehaves for source rows carrying a marker word —
MALFORMED (prose), WRONGKEYS, EMPTYVAL, FLAKY (HTTP 500, then wrong keys, then a good
answer) and ECHO (returns the source row unchanged, which the leakage check must drop).
It also serves dataset files over GET for the URL loader.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.reliability.generator_endpoint import read_prompt
from services.dataset_prep.errors import DatasetRejected, GenerationAborted
from services.dataset_prep.generators import (
    OpenAICompatibleGenerator,
    OpenAIGeneratorConfig,
)
from services.dataset_prep.loading import load_table
from services.dataset_prep.logic import row_sha256
from services.dataset_prep.pipeline import (
    DatasetSpec,
    GeneratorSet,
    PrepConfig,
    prepare_dataset,
)
from services.dataset_prep.schema import ColumnMapping, RejectionLimits, TaskKind


class ChatCompletionsServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.reset()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "no such file")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload = server.answer(self.path, dict(self.headers), body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.requests: list[dict] = []
            self.attempts: Counter[str] = Counter()
            self.down = False
            self.in_flight = 0
            self.max_in_flight = 0

    def answer(self, path: str, headers: dict, body: dict) -> tuple[int, dict]:
        prompt = body["messages"][-1]["content"]
        keys, source = read_prompt(prompt)
        marker = json.dumps(source, sort_keys=True)
        with self.lock:
            self.requests.append({"path": path, "headers": headers, "body": body, "keys": keys, "source": source})
            self.attempts[marker] += 1
            attempt = self.attempts[marker]
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        if self.down:
            return 500, {"error": {"message": "overloaded"}}
        delay = re.search(r"SLOW(\d+)", marker)
        if delay:  # answers out of request order: SLOW<ms>
            time.sleep(int(delay.group(1)) / 1000)
        model = body["model"]
        good = {k: f"{model} variant of {source.get(k) or source.get('prompt')}" for k in keys}
        if "MALFORMED" in marker:
            content = "I would rather answer in prose."
        elif "WRONGKEYS" in marker:
            content = json.dumps({"something": "else"})
        elif "EMPTYVAL" in marker:
            content = json.dumps({k: "" for k in keys})
        elif "FLAKY" in marker and attempt == 1:
            return 500, {"error": {"message": "temporary failure"}}
        elif "FLAKY" in marker and attempt == 2:
            content = json.dumps({"wrong": "keys"})
        elif "ECHO" in marker:
            content = json.dumps({k: source[k] for k in keys})
        else:
            content = "```json\n" + json.dumps(good) + "\n```"
        return 200, {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = ChatCompletionsServer()
    yield srv
    srv.close()


@pytest.fixture
def api(server):
    server.reset()
    return server


def generator(server: ChatCompletionsServer, model: str = "strong-model", **overrides):
    options = dict(
        base_url=server.base_url,
        model=model,
        api_key="sk-test",
        max_concurrency=4,
        attempts_per_row=3,
        max_consecutive_failures=50,
        retry_backoff_s=0.0,
        max_tokens=256,
        request_timeout_s=10,
    )
    return OpenAICompatibleGenerator(OpenAIGeneratorConfig(**{**options, **overrides}))


def write_instruct(path: Path, n: int, markers: dict[int, str] | None = None) -> Path:
    markers = markers or {}
    lines = []
    for i in range(n):
        tag = f" {markers[i]}" if i in markers else ""
        lines.append(json.dumps({"q": f"what is {i} times 3{tag}", "a": str(3 * i)}))
    path.write_text("\n".join(lines) + "\n")
    return path


QA = ColumnMapping(fields={"instruction": "q", "output": "a"})


@pytest.mark.parametrize("n, n_test, n_synth", [(50, 5, 50), (2_000, 200, 300), (20_000, 1_000, 300)])
def test_pipeline_split_sizes_end_to_end(api, tmp_path, n, n_test, n_synth):
    spec = DatasetSpec(str(write_instruct(tmp_path / "d.jsonl", n)), TaskKind.INSTRUCT, QA)
    gens = GeneratorSet(text=generator(api, max_concurrency=8))
    prepared = prepare_dataset(spec, gens)
    assert (prepared.train.num_rows, prepared.test.num_rows, prepared.synth.num_rows) == (
        n - n_test,
        n_test,
        n_synth,
    )
    assert len(api.requests) == n_synth
    train = {row_sha256(r) for r in prepared.train.rows}
    assert not train & {row_sha256(r) for r in prepared.test.rows}
    assert not train & {row_sha256(r) for r in prepared.synth.rows}
    for split in (prepared.train, prepared.test, prepared.synth):
        assert split.sha256 == hashlib.sha256(split.to_jsonl_bytes()).hexdigest()
    if n == 50:  # same input and seed -> same hashes, synthetic split included
        again = prepare_dataset(spec, gens)
        assert [s.sha256 for s in (again.train, again.test, again.synth)] == [
            s.sha256 for s in (prepared.train, prepared.test, prepared.synth)
        ]


def test_retries_drop_malformed_rows_and_keep_the_schema(api, tmp_path):
    markers = {
        0: "FLAKY",
        1: "FLAKY",
        2: "FLAKY",
        3: "MALFORMED",
        4: "MALFORMED",
        5: "MALFORMED",
        6: "WRONGKEYS",
        7: "WRONGKEYS",
        8: "EMPTYVAL",
        9: "EMPTYVAL",
        10: "ECHO",
        11: "ECHO",
    }
    spec = DatasetSpec(str(write_instruct(tmp_path / "d.jsonl", 40, markers)), TaskKind.INSTRUCT, QA)
    gen = generator(api)
    prepared = prepare_dataset(spec, GeneratorSet(text=gen))  # |D| = 40 -> every row is a source once

    # Each FLAKY row took three attempts (500, wrong keys, good) and was kept.
    flaky = [r for r in prepared.synth.rows if "FLAKY" in r["instruction"]]
    assert len(flaky) == 3
    assert all(count == 3 for key, count in api.attempts.items() if "FLAKY" in key)
    # Malformed answers were retried to the limit, then dropped — never passed on.
    assert all(
        count == 3
        for key, count in api.attempts.items()
        if any(m in key for m in ("MALFORMED", "WRONGKEYS", "EMPTYVAL"))
    )
    text = json.dumps(prepared.synth.rows)
    assert "MALFORMED" not in text and "WRONGKEYS" not in text and "EMPTYVAL" not in text
    assert gen.stats.transport_errors == 3
    assert gen.stats.malformed == 3 + 7 * 3  # FLAKY's wrong-keys tries + 7 bad rows x 3 tries
    assert gen.stats.dropped_rows == 7
    # ECHO rows came back equal to their source rows: the leakage check dropped them.
    assert prepared.stats.synth_generated == 40 - 7
    assert prepared.stats.synth_leaked == 2
    assert prepared.synth.num_rows == 31
    for row in prepared.synth.rows:
        assert set(row) == {"instruction", "input", "output"}
        assert row["instruction"].startswith("strong-model variant of what is")
        assert row["output"].strip() and row["input"] == ""

    # What went over the wire: the configured model, key, temperature τ = 0.6 and route.
    for request in api.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == "Bearer sk-test"
        assert request["body"]["model"] == "strong-model"
        assert request["body"]["temperature"] == 0.6
        assert request["body"]["max_tokens"] == 256
        assert request["keys"] == ["instruction", "output"]


def test_requests_are_bounded_and_answers_keep_the_request_order(api):
    from services.dataset_prep.generators import RowRequest

    # Early requests answer last (SLOW<ms> decreasing): completion order is the reverse.
    requests = [RowRequest({"prompt": f"p{i} SLOW{(12 - i) * 15}"}, ("prompt",), "Reword.", 0.6, i) for i in range(12)]
    progress: list[tuple[int, int]] = []
    gen = generator(api, max_concurrency=3)
    answers = gen.generate(requests, lambda done, total: progress.append((done, total)))
    assert [a["prompt"] for a in answers] == [f"strong-model variant of p{i} SLOW{(12 - i) * 15}" for i in range(12)]
    assert api.max_in_flight == 3  # never more than the setting, and it was used
    assert progress == [(i, 12) for i in range(1, 13)]
    # The same requests again: the same answers in the same order.
    assert gen.generate(requests) == answers


def test_configured_temperature_is_sent(api, tmp_path):
    from services.dataset_prep.synthesis import SynthesisConfig

    spec = DatasetSpec(str(write_instruct(tmp_path / "d.jsonl", 20)), TaskKind.INSTRUCT, QA)
    config = PrepConfig(synthesis=SynthesisConfig(text_temperature=0.9))
    prepare_dataset(spec, GeneratorSet(text=generator(api)), config)
    assert {r["body"]["temperature"] for r in api.requests} == {0.9}


def test_a_run_of_failures_stops_generation_with_a_reason(api, tmp_path):
    api.down = True
    spec = DatasetSpec(str(write_instruct(tmp_path / "d.jsonl", 100)), TaskKind.INSTRUCT, QA)
    gens = GeneratorSet(text=generator(api, max_consecutive_failures=5, max_concurrency=2))
    with pytest.raises(GenerationAborted) as err:
        prepare_dataset(spec, gens)
    reason = err.value.reason
    assert reason.startswith("generation aborted after 5 consecutive failed attempts")
    assert f"model 'strong-model' at http://127.0.0.1:{api.port}/v1/chat/completions" in reason
    assert "HTTP 500" in reason and "overloaded" in reason
    # It stopped: far fewer than 100 rows x 3 attempts were sent (in-flight ones may finish).
    assert 5 <= len(api.requests) <= 5 + 2


def test_unreachable_endpoint_aborts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens
    gen = OpenAICompatibleGenerator(
        OpenAIGeneratorConfig(
            base_url=f"http://127.0.0.1:{port}/v1",
            model="m",
            max_consecutive_failures=3,
            retry_backoff_s=0.0,
            request_timeout_s=5,
        )
    )
    spec = DatasetSpec(str(write_instruct(tmp_path / "d.jsonl", 20)), TaskKind.INSTRUCT, QA)
    with pytest.raises(GenerationAborted, match="after 3 consecutive .*unreachable"):
        prepare_dataset(spec, GeneratorSet(text=gen))


def test_too_few_surviving_rows_fail_the_preparation(api, tmp_path):
    markers = {i: "MALFORMED" for i in range(0, 20, 2)}  # half the rows
    spec = DatasetSpec(str(write_instruct(tmp_path / "d.jsonl", 20, markers)), TaskKind.INSTRUCT, QA)
    config = PrepConfig(min_synth_kept_fraction=0.75)
    with pytest.raises(GenerationAborted, match="only 10 of 20 synthetic rows survived.*at least 15"):
        prepare_dataset(spec, GeneratorSet(text=generator(api)), config)


def test_dpo_chosen_from_strong_rejected_from_weak(api, tmp_path):
    path = tmp_path / "dpo.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"explain {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
            for i in range(20)
        )
    )
    gens = GeneratorSet(text=generator(api, "strong-model"), weak_text=generator(api, "weak-model"))
    prepared = prepare_dataset(DatasetSpec(str(path), TaskKind.DPO), gens)
    assert prepared.synth.num_rows == 20
    for row in prepared.synth.rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"].startswith("strong-model variant of explain")
        assert row["chosen"].startswith("strong-model variant of good")
        # The weak model answered the *new* prompt.
        assert row["rejected"] == f"weak-model variant of {row['prompt']}"
    weak = [r for r in api.requests if r["body"]["model"] == "weak-model"]
    assert len(weak) == 20 and all(r["keys"] == ["response"] for r in weak)


def test_grpo_rows_keep_the_reward_columns(api, tmp_path):
    path = tmp_path / "grpo.jsonl"
    rows = [{"question": f"what is {i}+{i}", "answer": 2 * i, "meta": {"level": i % 3}} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = ColumnMapping(fields={"prompt": "question"}, extra_columns=("answer", "meta"))
    prepared = prepare_dataset(DatasetSpec(str(path), TaskKind.GRPO, mapping), GeneratorSet(text=generator(api)))
    by_prompt = {r["question"]: r for r in rows}
    assert prepared.synth.num_rows == 20
    for row in prepared.synth.rows:
        source = by_prompt[row["prompt"].removeprefix("strong-model variant of ")]
        assert (row["answer"], row["meta"]) == (source["answer"], source["meta"])
    assert prepared.schema.extra_columns == ("answer", "meta")


def test_image_prompts_at_tau_04_and_new_images(api, tmp_path):
    from services.dataset_prep.generators import (
        DiffusersImageConfig,
        DiffusersImageGenerator,
    )
    from services.dataset_prep.synthesis import SynthesisConfig
    from services.dataset_prep.tiny_image import build_tiny_sd_pipeline

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (100 + 7 * i, 90), (20 * i, 0, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a blue tile {i}")
    image_gen = DiffusersImageGenerator(
        DiffusersImageConfig(str(build_tiny_sd_pipeline(tmp_path / "sd")), num_inference_steps=2)
    )
    config = PrepConfig(synthesis=SynthesisConfig(image_max_side=128), limits=RejectionLimits(min_rows=10))
    prepared = prepare_dataset(
        DatasetSpec(str(folder), TaskKind.IMAGE),
        GeneratorSet(text=generator(api), image=image_gen),
        config,
    )
    assert {r["body"]["temperature"] for r in api.requests} == {0.4}
    assert prepared.synth.num_rows == 10
    for row in prepared.synth.rows:
        assert row["caption"].startswith("strong-model variant of a blue tile")
        size = Image.open(io.BytesIO(prepared.synth.images[row["image"]])).size
        assert size[0] % 64 == 0 and size[1] % 64 == 0


def test_datasets_load_from_urls(api, tmp_path):
    rows = [{"q": f"q{i}", "a": f"a{i}"} for i in range(15)]
    api.files["/data/train.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    url = f"http://127.0.0.1:{api.port}/data/train.jsonl"
    table = load_table(url)
    assert table.rows == rows and table.source == url
    prepared = prepare_dataset(DatasetSpec(url, TaskKind.INSTRUCT, QA), GeneratorSet(text=generator(api)))
    assert prepared.train.num_rows + prepared.test.num_rows == 15

    with pytest.raises(DatasetRejected, match="could not download .*missing.jsonl: HTTP 404"):
        load_table(f"http://127.0.0.1:{api.port}/data/missing.jsonl")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(DatasetRejected, match="could not download http://127.0.0.1:\\d+/x.csv: "):
        load_table(f"http://127.0.0.1:{closed}/x.csv")
