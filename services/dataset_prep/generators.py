"""Synthetic row generators G(x, τ) (§3.3): an OpenAI-compatible endpoint or a local model.

The contract, shared by every backend: a `RowRequest` shows the model some fields of a
source row and names the keys the answer must have; the model replies with a JSON object
holding exactly those keys, each a non-empty string. Anything else (not JSON, wrong keys,
empty values) is *malformed*: retried up to `attempts_per_row` times, then the row is
dropped (None) — a malformed answer is never passed on.

A run of `max_consecutive_failures` failures (any success resets the run) stops the whole
batch with `GenerationAborted`, so a dead endpoint or a model that cannot follow the format
fails fast with a reason. For the HTTP backend a failure is one failed attempt (transport
error or malformed answer); for the local backend, whose field-by-field fallback rescues
malformed answers, it is a row that could not be produced at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.dataset_prep.errors import GenerationAborted

ProgressFn = Callable[[int, int], None]

SYSTEM_PROMPT = (
    "You write synthetic training examples for fine-tuning language models. "
    "Reply with a single JSON object and nothing else."
)


@dataclass(frozen=True)
class RowRequest:
    source: dict[str, str]  # fields of the original row shown to the model
    keys: tuple[str, ...]  # keys the answer must hold, each a non-empty string
    task: str  # what to write, in words
    temperature: float
    variant: int = 0  # tells repeated requests for one source apart (seeds)
    seed: int = 0  # the task's seed (synthesis.task_seed): another task, other rows

    def fingerprint(self) -> str:
        data = [self.source, list(self.keys), self.task, self.temperature, self.variant, self.seed]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class Generator(Protocol):
    """Anything that turns requests into validated answers (None = dropped)."""

    name: str

    def generate(
        self, requests: Sequence[RowRequest], on_progress: ProgressFn | None = None
    ) -> list[dict[str, str] | None]: ...


@dataclass
class GenerationStats:
    attempts: int = 0
    transport_errors: int = 0
    malformed: int = 0
    dropped_rows: int = 0
    fallback_rows: int = 0  # local generator: rows rebuilt field by field
    json_valid: int = 0  # local generator: JSON attempts that gave a valid answer
    json_skipped_rows: int = 0  # local generator: rows sent straight to the fallback


class MalformedAnswer(ValueError):
    """The model's reply broke the JSON contract."""


class RequestFailed(RuntimeError):
    """The endpoint did not produce a reply (HTTP error, timeout, bad response body)."""


def user_prompt(request: RowRequest) -> str:
    # The instructions come before the example: a batch of rows of one task then shares them
    # as a common prefix, computed once (generators.shared_prefix_length).
    keys = ", ".join(f'"{k}"' for k in request.keys)
    return (
        f"{request.task}\n\n"
        "Return only a JSON object whose values are non-empty strings, "
        f"with exactly these keys: {keys}.\n\n"
        f"Original example (JSON):\n{json.dumps(request.source, ensure_ascii=False, indent=1)}"
    )


def chat_messages(request: RowRequest) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(request)},
    ]


def parse_answer(text: str, keys: Sequence[str]) -> dict[str, str]:
    """The JSON object in `text` if it holds exactly `keys` with non-empty string values.

    Tolerates prose or a ```json fence around the object (models often add them).
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    obj: Any = None
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            break
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    if not isinstance(obj, dict):
        raise MalformedAnswer(f"no JSON object in the answer: {text[:80]!r}")
    if set(obj) != set(keys):
        raise MalformedAnswer(f"answer has keys {sorted(obj)}, expected {sorted(keys)}")
    for key in keys:
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            raise MalformedAnswer(f"answer key '{key}' is empty or not a string")
    return {key: obj[key] for key in keys}


class FailureRun:
    """Counts consecutive failed attempts across threads; trips at a threshold."""

    def __init__(self, limit: int, where: str):
        if limit < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1, not {limit}")
        self.limit = limit
        self.where = where
        self.run = 0
        self.reason: str | None = None
        self._lock = threading.Lock()

    @property
    def aborted(self) -> bool:
        return self.reason is not None

    def success(self) -> None:
        with self._lock:
            self.run = 0

    def failure(self, error: str) -> None:
        with self._lock:
            self.run += 1
            if self.run >= self.limit and self.reason is None:
                self.reason = (
                    f"generation aborted after {self.run} consecutive failed attempts "
                    f"({self.where}); last error: {error}"
                )


# --------------------------------------------------------------------------- OpenAI-compatible


@dataclass(frozen=True)
class OpenAIGeneratorConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 ; requests go to {base_url}/chat/completions
    model: str
    api_key: str | None = None
    max_concurrency: int = 8
    attempts_per_row: int = 3
    max_consecutive_failures: int = 10
    request_timeout_s: float = 60.0
    retry_backoff_s: float = 1.0  # sleep backoff·attempt before a retry
    max_tokens: int = 1024
    json_mode: bool = False  # also send response_format={"type": "json_object"}
    seed: int | None = None  # when set, sent as "seed" (+ request variant) for reproducibility

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {self.base_url!r}")
        if self.max_concurrency < 1 or self.attempts_per_row < 1:
            raise ValueError("max_concurrency and attempts_per_row must be >= 1")


class OpenAICompatibleGenerator:
    """POST {base_url}/chat/completions from a thread pool; stdlib urllib only."""

    def __init__(self, config: OpenAIGeneratorConfig):
        self.config = config
        self.name = f"openai:{config.model}"
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.stats = GenerationStats()
        self._stats_lock = threading.Lock()

    def generate(
        self, requests: Sequence[RowRequest], on_progress: ProgressFn | None = None
    ) -> list[dict[str, str] | None]:
        self.stats = GenerationStats()
        where = f"model '{self.config.model}' at {self.url}"
        run = FailureRun(self.config.max_consecutive_failures, where)
        results: list[dict[str, str] | None] = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            futures = {pool.submit(self._one, r, run): i for i, r in enumerate(requests)}
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if on_progress:
                    on_progress(done, len(requests))
        if run.aborted:
            raise GenerationAborted(run.reason or "")
        return results

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _one(self, request: RowRequest, run: FailureRun) -> dict[str, str] | None:
        for attempt in range(self.config.attempts_per_row):
            if run.aborted:
                return None
            if attempt and self.config.retry_backoff_s:
                time.sleep(self.config.retry_backoff_s * attempt)
            self._count(attempts=1)
            try:
                answer = parse_answer(self._complete(request), request.keys)
            except RequestFailed as err:
                self._count(transport_errors=1)
                run.failure(str(err))
                continue
            except MalformedAnswer as err:
                self._count(malformed=1)
                run.failure(f"malformed answer: {err}")
                continue
            run.success()
            return answer
        self._count(dropped_rows=1)
        return None

    def _complete(self, request: RowRequest) -> str:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": chat_messages(request),
            "temperature": request.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        if self.config.seed is not None:
            body["seed"] = (self.config.seed + request.seed + request.variant) % 2**31
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        http_request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            timeout = self.config.request_timeout_s
            with urllib.request.urlopen(http_request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace")
            raise RequestFailed(f"HTTP {err.code} from {self.url}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise RequestFailed(f"{self.url} unreachable: {getattr(err, 'reason', err)}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RequestFailed(f"not a chat-completions response: {payload[:120]!r}") from None
        if not isinstance(content, str):
            raise RequestFailed(f"message content is not text: {content!r:.80}")
        return content


# --------------------------------------------------------------------------- local transformers


@dataclass(frozen=True)
class LocalGeneratorConfig:
    model_path: str
    max_new_tokens: int = 256
    attempts_per_row: int = 2
    max_consecutive_failures: int = 10
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    top_p: float = 1.0
    # Used only when the JSON answer stays malformed: generate each field separately,
    # conditioned on the original field, so weak (or tiny test) models keep the schema.
    field_fallback: bool = True
    fallback_max_new_tokens: int = 48
    fallback_min_new_tokens: int = 4
    fallback_attempts: int = 3
    # Rows per `model.generate` call, and its token budget: rows x (longest prompt + new
    # tokens) of one call stays within batch_tokens (one row always fits). batch_rows=1 is
    # the one-row-per-call baseline of benchmarks/synthetic_generation.py.
    batch_rows: int = 64
    batch_tokens: int = 16384
    # A model that writes no valid JSON answer in its first `json_probe_rows` attempts of a
    # generate call cannot do the JSON contract (tiny or base models): the rest of the call
    # goes straight to the field-by-field fallback instead of paying for answers that never
    # parse. 0 keeps the JSON stage for every row.
    json_probe_rows: int = 32

    def __post_init__(self) -> None:
        if self.batch_rows < 1 or self.batch_tokens < 1:
            raise ValueError("batch_rows and batch_tokens must be >= 1")


def plan_batches(
    lengths: Sequence[int],
    max_new_tokens: int,
    batch_rows: int,
    batch_tokens: int,
    groups: Sequence[str] | None = None,
) -> list[list[int]]:
    """Indices of `lengths` (prompt tokens per row) grouped into generate calls.

    Rows are taken group by group (`groups`: rows whose prompts share their instructions, so a
    call of one group shares a long prefix), shortest first within a group (ties in input
    order), so a call pads little; a call holds at most `batch_rows` rows and rows x (its
    longest prompt + max_new_tokens) <= batch_tokens, except that a row too long for the
    budget still gets a call of its own.
    """
    group = groups or [""] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (group[i], lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        cost = (len(current) + 1) * (max(longest, lengths[index]) + max_new_tokens)
        if current and (len(current) >= batch_rows or cost > batch_tokens):
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, lengths[index])
    if current:
        batches.append(current)
    return batches


def json_stage_useless(attempts: int, valid: int, probe_rows: int) -> bool:
    """After `attempts` JSON attempts of which `valid` parsed: skip the JSON stage from now on?

    Only once at least `probe_rows` attempts were made and none parsed (probe_rows 0: never).
    """
    return probe_rows > 0 and attempts >= probe_rows and valid == 0


class JsonObjectEnd:
    """Per row: has the text so far closed its first top-level JSON object?

    Fed one piece of text at a time (a decoded token); braces inside JSON strings do not
    count. A batched generation stops a row there instead of letting it ramble on (models add
    explanations after the object) while the longest row of the batch sets the pace. A row
    that writes `max_preamble` visible characters without opening an object is given up as
    well: its answer will not parse, and the field-by-field fallback takes over sooner.
    """

    def __init__(self, max_preamble: int = 32) -> None:
        self.max_preamble = max_preamble
        self.preamble = 0
        self.depth = 0
        self.started = False
        self.in_string = False
        self.escaped = False
        self.done = False

    def feed(self, text: str) -> bool:
        for char in text:
            if self.done:
                break
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"' and self.started:
                self.in_string = True
            elif char == "{":
                self.depth += 1
                self.started = True
            elif not self.started:
                if not char.isspace():
                    self.preamble += 1
                    self.done = self.preamble > self.max_preamble
            elif char == "}" and self.started:
                self.depth -= 1
                self.done = self.depth == 0
        return self.done


@dataclass
class _Sampler:
    tokenizer: Any
    model: Any
    device: str
    top_p: float
    lock: threading.Lock = field(default_factory=threading.Lock)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def encode(self, messages: list[dict[str, str]], max_new_tokens: int, answer_prefix: str = "") -> list[int]:
        """Token ids of the chat prompt, followed by the start of the answer when one is given."""
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        text = self.prompt_text(messages) + answer_prefix
        ids = self.tokenizer(text, add_special_tokens=not has_template)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(ids) + max_new_tokens > limit:
            # Keep the tail: the example and the generation prompt matter most.
            keep = limit - max_new_tokens
            if keep <= 0:
                raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the context {limit}")
            ids = ids[-keep:]
        return list(ids)

    def sample_batch(
        self,
        prompts: Sequence[list[int]],
        temperature: float,
        seed: int,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        stop_after_json: bool = False,
        answer_prefixes: Sequence[str] | None = None,
        row_limits: Sequence[int] | None = None,
    ) -> list[str]:
        """One batched generation for several encoded prompts, run until every row is done.

        `answer_prefixes`: text each prompt already ends with as the start of its answer (the
        JSON object's opening), fed to the object-end tracker first. `row_limits`: new tokens
        per row (each at most max_new_tokens), so one rambling row does not hold the batch.
        """
        prefixes = answer_prefixes or [""] * len(prompts)
        limits = row_limits or [max_new_tokens] * len(prompts)
        rows = [
            RowInFlight(list(p), min(limit, max_new_tokens), _object_end(prefix) if stop_after_json else None)
            for p, prefix, limit in zip(prompts, prefixes, limits, strict=True)
        ]
        self.run_batch(rows, Sampling(temperature, self.top_p, seed), min_new_tokens)
        return [self.tokenizer.decode(row.new, skip_special_tokens=True) for row in rows]

    def run_batch(
        self, rows: Sequence[RowInFlight], sampling: Sampling, min_new_tokens: int, park_below: int = 0
    ) -> None:
        """Advance `rows` together in one batched generation; each gets its new tokens appended.

        The rows' common leading tokens (system prompt, task text) are run once and their
        key/value cache shared by every row; each row's own tokens follow, left-padded, so every
        row's generation starts right after its own tokens. A row that is done (EOS, its JSON
        object closed, or its limit) leaves the batch: the rest no longer pay for it
        (`model.generate` would keep computing it until the longest row ends). Once fewer than
        `park_below` rows are left, the call returns with those rows not done (parked): a step of
        a few rows costs nearly what a step of many does, so they go on in a later call, together
        with the other parked rows (`LocalTransformersGenerator._sample`), instead of alone.
        """
        import torch
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        prompts = [row.tokens for row in rows]
        shared = shared_prefix_length(prompts, SHARED_PREFIX_MIN_TOKENS)
        tails = [p[shared:] for p in prompts]
        width = shared + max(len(t) for t in tails)
        head = list(prompts[0][:shared])
        input_ids = torch.tensor([head + [pad] * (width - shared - len(t)) + t for t in tails], dtype=torch.long)
        attention = torch.tensor(
            [[1] * shared + [0] * (width - shared - len(t)) + [1] * len(t) for t in tails], dtype=torch.long
        )
        # One generation at a time: the sampling generator is seeded per call for determinism.
        with self.lock, torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            if shared:
                self.model(
                    input_ids=input_ids[:1, :shared].to(self.device), cache=cache, use_cache=True, logits_to_keep=1
                )
                cache.batch_repeat_interleave(len(rows))
            self._decode(
                rows,
                input_ids.to(self.device),
                attention.to(self.device),
                shared,
                cache,
                sampling,
                min_new_tokens,
                park_below,
            )

    def _decode(
        self,
        rows: Sequence[RowInFlight],
        input_ids: Any,
        attention: Any,
        cached: int,
        cache: Any,
        sampling: Sampling,
        min_new_tokens: int,
        park_below: int,
    ) -> None:
        """Prefill what is not cached yet, then one token per step for the rows still going.
        Positions count real tokens only (left padding takes none)."""
        import torch

        stop_ids = eos_token_ids(self.model, self.tokenizer)
        alive = [i for i, row in enumerate(rows) if not row.done]  # batch position -> row
        if len(alive) < len(rows):
            raise ValueError("run_batch takes rows that are not done")
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        feed, feed_positions, mask = input_ids[:, cached:], positions[:, cached:], attention
        rng = torch.Generator(device="cpu").manual_seed(sampling.seed)
        while alive:
            logits = self.model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=feed_positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            if stop_ids:
                early = [j for j, i in enumerate(alive) if len(rows[i].new) < min_new_tokens]
                if early:
                    logits[
                        torch.tensor(early, device=logits.device)[:, None], torch.tensor(stop_ids, device=logits.device)
                    ] = -math.inf
            chosen = next_tokens(logits.float(), sampling, rng).tolist()
            keep = []
            for j, token in enumerate(chosen):
                row = rows[alive[j]]
                row.step(token, token in stop_ids, self.tokenizer)
                if not row.done:
                    keep.append(j)
            if not keep or len(keep) < park_below:
                break
            last = feed_positions[:, -1:]
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, last = mask[index], last[index]
                alive = [alive[j] for j in keep]
            feed = torch.tensor([[rows[i].new[-1]] for i in alive], dtype=torch.long, device=mask.device)
            feed_positions = last + 1
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=mask.device)], dim=1)


@dataclass
class RowInFlight:
    """One prompt being generated, possibly over several batched calls (parked in between)."""

    prompt: list[int]
    limit: int  # new tokens at most
    end: JsonObjectEnd | None = None  # stops the row where its JSON object closes
    new: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def tokens(self) -> list[int]:
        """What the model has to have seen before the row's next token."""
        return self.prompt + self.new

    def step(self, token: int, is_stop: bool, tokenizer: Any) -> None:
        if is_stop:
            self.done = True
            return
        self.new.append(token)
        if len(self.new) >= self.limit:
            self.done = True
        elif self.end is not None and self.end.feed(tokenizer.decode([token], skip_special_tokens=True)):
            self.done = True


def _object_end(prefix: str) -> JsonObjectEnd:
    end = JsonObjectEnd()
    end.feed(prefix)
    return end


# transformers' sampling defaults, kept so rows read as they did with `model.generate`.
TOP_K = 50


@dataclass(frozen=True)
class Sampling:
    temperature: float  # 0 = greedy
    top_p: float
    seed: int


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a row: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def next_tokens(logits: Any, sampling: Sampling, rng: Any) -> Any:
    """One token per row: argmax at temperature 0, else top-k / top-p sampling at τ."""
    import torch

    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    top = torch.topk(logits, min(TOP_K, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top.values, dim=-1)
    if sampling.top_p < 1.0:
        # Keep the smallest head of the sorted candidates whose mass reaches top_p (at least one).
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    picked = torch.multinomial(probs.cpu(), 1, generator=rng).to(logits.device)
    return top.indices.gather(1, picked).squeeze(1)


# Below this many common leading tokens a shared cache saves less than its own forward costs.
SHARED_PREFIX_MIN_TOKENS = 8


def shared_prefix_length(prompts: Sequence[Sequence[int]], min_tokens: int) -> int:
    """Leading tokens common to every prompt that can be computed once for the whole batch.

    At least one token of every prompt stays its own (generation continues from it), and a
    single prompt or a prefix shorter than `min_tokens` shares nothing (0).
    """
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    length = 0
    first = prompts[0]
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length if length >= min_tokens else 0


# A JSON answer's new-token limit: this many tokens per token of the source row, plus slack.
ANSWER_TOKENS_PER_SOURCE_TOKEN = 2
ANSWER_TOKENS_SLACK = 32


def json_answer_prefix(request: RowRequest) -> str:
    """The opening of the JSON answer up to its first value, `{"<first key>": "`, written for a
    local model: it then cannot answer with prose, code or other keys before the object."""
    return "{" + json.dumps(request.keys[0], ensure_ascii=False) + ': "'


@dataclass
class _Job:
    """One prompt of a batched stage: which request (and key) it serves, its seed parts."""

    row: int
    messages: list[dict[str, str]]
    temperature: float
    seed_parts: tuple
    key: str = ""
    answer_prefix: str = ""  # the answer's opening, written for the model (part of the prompt)
    new_tokens: int | None = None  # this prompt's new-token limit (None: the stage's)
    group: str = ""  # prompts of one group share their instructions (batched together)


class LocalTransformersGenerator:
    """A local causal LM (AutoModelForCausalLM), many rows per `generate` call.

    Requests are taken in chunks of CHUNK_CALLS x `batch_rows` (in order: progress and the
    failure run advance per chunk); within a chunk every stage (JSON attempts, then the
    field-by-field fallback) samples its prompts in token-bounded, left-padded batches of equal
    τ, rows that run long carried over from one call to the next. A JSON answer starts with its
    first key already written (`json_answer_prefix`) and may take about twice its source's
    tokens. A call's seed is derived from the configured seed and its rows' fingerprints, so
    the same requests give the same rows.
    """

    def __init__(self, config: LocalGeneratorConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.name = f"local:{config.model_path}"
        tokenizer = AutoTokenizer.from_pretrained(config.model_path)
        model = AutoModelForCausalLM.from_pretrained(config.model_path, dtype=getattr(torch, config.dtype)).to(
            config.device
        )
        model.eval()
        self._sampler = _Sampler(tokenizer, model, config.device, config.top_p)
        self.stats = GenerationStats()
        self.calls = 0  # model.generate calls so far (the benchmark reports rows per call)

    def _answer_budget(self, request: RowRequest) -> int:
        """New tokens for one JSON answer: a rewrite is about as long as its source, so
        ANSWER_TOKENS_PER_SOURCE_TOKEN x the source's tokens + ANSWER_TOKENS_SLACK, capped by
        max_new_tokens (a row that has not closed its object by then will not)."""
        source = len(self._sampler.tokenizer(json.dumps(request.source, ensure_ascii=False))["input_ids"])
        return min(self.config.max_new_tokens, ANSWER_TOKENS_PER_SOURCE_TOKEN * source + ANSWER_TOKENS_SLACK)

    def _seed(self, *parts: object) -> int:
        text = ":".join([str(self.config.seed), *map(str, parts)])
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)

    def generate(
        self, requests: Sequence[RowRequest], on_progress: ProgressFn | None = None
    ) -> list[dict[str, str] | None]:
        self.stats = GenerationStats()
        run = FailureRun(self.config.max_consecutive_failures, self.name)
        results: list[dict[str, str] | None] = []
        reported = 0

        def progress(done: int) -> None:  # rows done / total, never twice the same
            nonlocal reported
            if on_progress and done > reported:
                reported = done
                on_progress(done, len(requests))

        # Several calls' worth of rows per chunk: rows parked by one call go on with the next.
        size = self.config.batch_rows * CHUNK_CALLS
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            # Within a chunk: rows through their first JSON pass, so a long chunk shows progress.
            answers, errors = self._chunk(chunk, lambda n, at=start: progress(at + n))
            for answer, error in zip(answers, errors, strict=True):
                results.append(answer)
                if answer is None:
                    run.failure(f"malformed answer: {error}")
                else:
                    run.success()
                if run.aborted:
                    raise GenerationAborted(run.reason or "")
            progress(len(results))
        return results

    def _chunk(
        self, requests: Sequence[RowRequest], on_first_pass: Callable[[int], None] | None = None
    ) -> tuple[list[dict[str, str] | None], list[str]]:
        answers: list[dict[str, str] | None] = [None] * len(requests)
        errors = [""] * len(requests)
        fingerprints = [r.fingerprint() for r in requests]
        for attempt in range(self.config.attempts_per_row):
            if json_stage_useless(self.stats.attempts, self.stats.json_valid, self.config.json_probe_rows):
                if attempt == 0:
                    self.stats.json_skipped_rows += len(requests)
                break
            jobs = [
                _Job(
                    i,
                    chat_messages(r),
                    r.temperature,
                    (fingerprints[i], "json", attempt),
                    answer_prefix=json_answer_prefix(r),
                    new_tokens=self._answer_budget(r),
                    group=json.dumps([r.task, r.keys]),
                )
                for i, r in enumerate(requests)
                if answers[i] is None
            ]
            if not jobs:
                break
            self.stats.attempts += len(jobs)
            texts = self._sample(
                jobs, self.config.max_new_tokens, stop_after_json=True, on_done=on_first_pass if attempt == 0 else None
            )
            for job, text in zip(jobs, texts, strict=True):
                try:
                    answers[job.row] = parse_answer(text, requests[job.row].keys)
                    self.stats.json_valid += 1
                except MalformedAnswer as err:
                    self.stats.malformed += 1
                    errors[job.row] = str(err)
        missing = [i for i, a in enumerate(answers) if a is None]
        if self.config.field_fallback and missing:
            rebuilt = self._field_by_field([requests[i] for i in missing], [fingerprints[i] for i in missing])
            for i, answer in zip(missing, rebuilt, strict=True):
                answers[i] = answer
                if answer is not None:
                    self.stats.fallback_rows += 1
        self.stats.dropped_rows += sum(1 for a in answers if a is None)
        return answers, errors

    def _field_by_field(
        self, requests: Sequence[RowRequest], fingerprints: Sequence[str]
    ) -> list[dict[str, str] | None]:
        """Build the answers one key at a time from plain generated text (all rows batched)."""
        partial: list[dict[str, str]] = [{} for _ in requests]
        for attempt in range(self.config.fallback_attempts):
            jobs = [
                _Job(
                    i,
                    _field_messages(r, key),
                    r.temperature,
                    (fingerprints[i], "field", key, attempt),
                    key,
                    group=json.dumps([r.task, key]),
                )
                for i, r in enumerate(requests)
                for key in r.keys
                if key not in partial[i]
            ]
            if not jobs:
                break
            texts = self._sample(jobs, self.config.fallback_max_new_tokens, self.config.fallback_min_new_tokens)
            for job, text in zip(jobs, texts, strict=True):
                if text.strip():
                    partial[job.row][job.key] = text.strip()
        return [
            {key: p[key] for key in r.keys} if all(key in p for key in r.keys) else None
            for r, p in zip(requests, partial, strict=True)
        ]

    def _sample(
        self,
        jobs: Sequence[_Job],
        max_new_tokens: int,
        min_new_tokens: int = 0,
        stop_after_json: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Texts for `jobs` in their order: batched by τ, then by the token budget.

        Calls are made until every row is done; a call that shrinks below an eighth of its rows
        parks the rest (`_Sampler.run_batch`) while other rows still wait, and the parked rows
        go on together once the fresh ones are through, so few calls run with a handful of
        rows. `on_done(n)` after each call: n of the jobs are done.
        """
        by_temperature: dict[float, list[int]] = {}
        for index, job in enumerate(jobs):
            by_temperature.setdefault(job.temperature, []).append(index)
        rows = [
            RowInFlight(
                self._sampler.encode(job.messages, max_new_tokens, job.answer_prefix),
                min(job.new_tokens or max_new_tokens, max_new_tokens),
                _object_end(job.answer_prefix) if stop_after_json else None,
            )
            for job in jobs
        ]
        for temperature, members in by_temperature.items():
            # Parked rows wait until no fresh row is left and then go on together: mixed in with
            # fresh rows, their longer token lists would set every row's padding.
            fresh, parked = list(members), []
            while fresh or parked:
                pool = fresh or parked
                # Cost of a row: what it has to attend to plus the new tokens it may still add.
                plan = plan_batches(
                    [len(rows[i].tokens) + rows[i].limit - len(rows[i].new) for i in pool],
                    0,
                    self.config.batch_rows,
                    self.config.batch_tokens,
                    [jobs[i].group for i in pool],
                )
                chosen = [pool[b] for b in plan[0]]
                taken = set(chosen)
                pool[:] = [i for i in pool if i not in taken]
                seed = self._seed(*(part for i in chosen for part in jobs[i].seed_parts), len(rows[chosen[0]].new))
                park_below = len(chosen) // PARK_FRACTION if fresh or parked else 0
                self._sampler.run_batch(
                    [rows[i] for i in chosen],
                    Sampling(temperature, self.config.top_p, seed),
                    min_new_tokens,
                    park_below,
                )
                self.calls += 1
                if on_done:
                    on_done(sum(1 for row in rows if row.done))
                parked += [i for i in chosen if not rows[i].done]
        return [
            job.answer_prefix + self._sampler.tokenizer.decode(row.new, skip_special_tokens=True)
            for job, row in zip(jobs, rows, strict=True)
        ]


# A batched call stops once fewer than 1/PARK_FRACTION of its rows are left and other rows wait.
PARK_FRACTION = 8
# Requests per chunk of `generate` (progress and the failure run advance per chunk): this many
# calls of batch_rows each (8 x 64: the default 300 synthetic rows in one chunk, so the JSON
# retries and the fallback run once, in calls as full as they get).
CHUNK_CALLS = 8


def _field_messages(request: RowRequest, key: str) -> list[dict[str, str]]:
    if key in request.source:
        content = f"{request.task}\nOriginal {key}: {request.source[key]}\nNew {key}:"
    else:
        context = "\n".join(f"{k}: {v}" for k, v in request.source.items())
        content = f"{request.task}\n{context}\n{key}:"
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- images


class ImageGenerator(Protocol):
    name: str

    def generate_image(self, prompt: str, width: int, height: int, seed: int) -> Any:
        """A PIL image for `prompt`, width and height divisible by 64."""
        ...


@dataclass(frozen=True)
class DiffusersImageConfig:
    pipeline_path: str  # a folder saved by a diffusers text-to-image pipeline
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    device: str = "cpu"
    dtype: str = "float32"


class DiffusersImageGenerator:
    """Text-to-image through whatever pipeline the folder holds (SD, SDXL, Flux...)."""

    def __init__(self, config: DiffusersImageConfig):
        import torch
        from diffusers import DiffusionPipeline

        self.config = config
        self.name = f"diffusers:{config.pipeline_path}"
        self._torch = torch
        self.pipe = DiffusionPipeline.from_pretrained(config.pipeline_path, dtype=getattr(torch, config.dtype)).to(
            config.device
        )
        self.pipe.set_progress_bar_config(disable=True)

    def generate_image(self, prompt: str, width: int, height: int, seed: int) -> Any:
        from services.dataset_prep.images import cover_crop

        if width % 64 or height % 64:
            raise ValueError(f"image size must be divisible by 64, not {width}x{height}")
        generator = self._torch.Generator(device="cpu").manual_seed(seed)
        image = self.pipe(
            prompt=prompt,
            width=width,
            height=height,
            num_inference_steps=self.config.num_inference_steps,
            guidance_scale=self.config.guidance_scale,
            generator=generator,
        ).images[0]
        if image.size != (width, height):  # some pipelines round sizes; restore the contract
            image = cover_crop(image, width, height)
        return image
