"""Batched local generation: the batch plan, the task's seed, and batching keeps the rows' contract."""

from __future__ import annotations

import pytest

from services.dataset_prep.generators import LocalGeneratorConfig, LocalTransformersGenerator, RowRequest, plan_batches
from services.dataset_prep.synthesis import task_seed


def test_plan_takes_rows_shortest_first_and_caps_rows_per_call():
    # Sorted by length (ties in input order): 1 (3), 3 (3), 0 (5), 2 (8); two rows per call.
    assert plan_batches([5, 3, 8, 3], max_new_tokens=2, batch_rows=2, batch_tokens=100) == [[1, 3], [0, 2]]


def test_plan_keeps_each_call_within_the_token_budget():
    # [0, 2] costs 2 x (8 + 2) = 20 tokens: it fits a budget of 20, not one of 19.
    assert plan_batches([5, 3, 8, 3], 2, batch_rows=2, batch_tokens=20) == [[1, 3], [0, 2]]
    assert plan_batches([5, 3, 8, 3], 2, batch_rows=2, batch_tokens=19) == [[1, 3], [0], [2]]
    # Four rows of 3 + 2 tokens = 20: all in one call when rows allow it.
    assert plan_batches([3, 3, 3, 3], 2, batch_rows=8, batch_tokens=20) == [[0, 1, 2, 3]]


def test_plan_takes_rows_group_by_group_and_prices_a_call_by_its_longest_row():
    # Groups b, a, b, a: a's rows (1, 3) first, shortest first, then b's (2 before 0: 4 < 9).
    groups = ["b", "a", "b", "a"]
    assert plan_batches([9, 6, 4, 2], 0, batch_rows=2, batch_tokens=100, groups=groups) == [[3, 1], [2, 0]]
    # [3, 1] costs 2 x 6 = 12; row 2 (4 tokens) joining it would cost 3 x 6, its longest row's price.
    assert plan_batches([9, 6, 4, 2], 0, batch_rows=4, batch_tokens=12, groups=groups) == [[3, 1], [2], [0]]


def test_a_row_longer_than_the_budget_still_gets_a_call():
    assert plan_batches([50, 1], 10, batch_rows=4, batch_tokens=20) == [[1], [0]]
    assert plan_batches([], 10, batch_rows=4, batch_tokens=20) == []


def test_one_row_per_call():
    assert plan_batches([4, 2, 9], 16, batch_rows=1, batch_tokens=10**6) == [[1], [0], [2]]


def test_task_seed_mixes_the_task_id_into_the_configured_seed():
    # int(sha256("<seed>:<task id>")[:8], 16)
    assert task_seed(42, "task-a") == 3962209602
    assert task_seed(42, "task-b") == 3189112810
    assert task_seed(7, "task-a") == 40369233
    assert task_seed(42, "") == 42  # no task: the configured seed itself


def test_bad_batch_settings_are_refused():
    with pytest.raises(ValueError, match="batch_rows and batch_tokens"):
        LocalGeneratorConfig("/m", batch_rows=0)


def test_many_rows_per_call_keep_order_schema_and_determinism(tiny_llama, monkeypatch):
    from services.dataset_prep import generators

    # 2 rows per call and 4 calls per chunk of `generate`: chunks of 8 requests.
    monkeypatch.setattr(generators, "CHUNK_CALLS", 4)
    options = dict(max_new_tokens=12, fallback_max_new_tokens=6, attempts_per_row=1, batch_rows=2)
    requests = [
        RowRequest(
            {"instruction": f"add {i} and {i + 1}" + " please" * (i % 3), "output": str(2 * i + 1)},
            ("instruction", "output"),
            "Write a new example.",
            0.6,
            0,
            1234,
        )
        for i in range(10)
    ]
    progress: list[tuple[int, int]] = []
    batched = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama), **options))
    rows = batched.generate(requests, lambda done, total: progress.append((done, total)))
    assert len(rows) == 10 and all(r is not None and set(r) == {"instruction", "output"} for r in rows)
    assert all(v.strip() for r in rows for v in r.values())
    # 10 rows in chunks of 8: progress after each call of the first JSON pass, rows done / total.
    assert progress == [(2, 10), (4, 10), (6, 10), (8, 10), (10, 10)]
    # Chunk 1: 4 JSON calls (8 rows) + 16 fallback prompts in 8 calls; chunk 2: 1 + 2 calls.
    # The tiny model never writes JSON, and its fallback answers are never empty.
    assert batched.calls == 15  # against 10 x (1 + 2) with one prompt per call
    assert batched.stats.malformed == 10 and batched.stats.fallback_rows == 10
    again = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama), **options))
    assert again.generate(requests) == rows
    other_task = [RowRequest(r.source, r.keys, r.task, r.temperature, r.variant, 99) for r in requests]
    assert again.generate(other_task) != rows


@pytest.mark.parametrize(
    "pieces, done_at",
    [
        (['Sure: {"a": ', '"1"}', " and more"], 1),  # closes with the second piece
        (['{"a": "}{"', ', "b": {"c": "x"}', "}"], 2),  # braces inside strings and a nested object
        (['no object "}" here', " {", '"k": "v\\"}"'], None),  # an escaped quote keeps the string open
        (["} stray close first", '{"k": "v"}'], 1),
    ],
)
def test_json_object_end_sees_where_the_first_object_closes(pieces, done_at):
    from services.dataset_prep.generators import JsonObjectEnd

    end = JsonObjectEnd()
    states = [end.feed(piece) for piece in pieces]
    assert states.index(True) == done_at if done_at is not None else not any(states)


def test_a_row_that_never_opens_an_object_is_given_up_after_its_preamble():
    from services.dataset_prep.generators import JsonObjectEnd

    end = JsonObjectEnd(max_preamble=10)
    assert not end.feed("```json\n")  # 7 visible characters: still waiting for the object
    assert not end.feed("   ")  # whitespace does not count
    assert end.feed("abcd")  # 11 > 10: given up
    opened = JsonObjectEnd(max_preamble=10)
    assert not opened.feed("Here: {") and not opened.feed('"a": "long text without end')
    assert opened.feed('"}')


def test_shared_prefix_is_the_common_leading_tokens_less_one_per_prompt():
    from services.dataset_prep.generators import shared_prefix_length

    # Common: 1 2 3 (then 4 vs 9); the shortest prompt keeps one token of its own.
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 9]], min_tokens=2) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]], min_tokens=1) == 2
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9]], min_tokens=4) == 0  # too short to pay
    assert shared_prefix_length([[1, 2, 3, 4]], min_tokens=1) == 0  # one prompt: nothing to share
    assert shared_prefix_length([[5, 2], [1, 2]], min_tokens=1) == 0


def test_json_stage_is_skipped_only_after_a_probe_without_one_valid_answer():
    from services.dataset_prep.generators import json_stage_useless

    assert not json_stage_useless(attempts=31, valid=0, probe_rows=32)
    assert json_stage_useless(attempts=32, valid=0, probe_rows=32)
    assert not json_stage_useless(attempts=64, valid=1, probe_rows=32)
    assert not json_stage_useless(attempts=100, valid=0, probe_rows=0)  # 0: never skipped


def test_a_shared_prefix_cache_gives_the_rows_a_plain_batch_gives(tiny_llama, monkeypatch):
    from services.dataset_prep import generators

    generator = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama)))
    sampler = generator._sampler
    requests = [
        RowRequest(
            {"instruction": f"add {i} and {i * 7}" + " now" * i, "output": str(8 * i)},
            ("instruction", "output"),
            "Write a new example of the same task.",
            0.0,
        )
        for i in range(5)
    ]
    prompts = [sampler.encode(generators.chat_messages(r), 24) for r in requests]
    assert generators.shared_prefix_length(prompts, generators.SHARED_PREFIX_MIN_TOKENS) > 0
    shared = sampler.sample_batch(prompts, 0.0, 1, 24)
    monkeypatch.setattr(generators, "SHARED_PREFIX_MIN_TOKENS", 10**9)  # no sharing
    assert sampler.sample_batch(prompts, 0.0, 1, 24) == shared


def test_a_model_that_writes_no_json_goes_to_the_fallback_after_the_probe(tiny_llama, monkeypatch):
    from services.dataset_prep import generators

    # One row per call and 4 calls per chunk of `generate`: chunks of 4 requests.
    monkeypatch.setattr(generators, "CHUNK_CALLS", 4)
    options = dict(max_new_tokens=12, fallback_max_new_tokens=6, attempts_per_row=2, batch_rows=1, json_probe_rows=4)
    requests = [
        RowRequest(
            {"instruction": f"add {i} and {i + 1}", "output": str(2 * i + 1)},
            ("instruction", "output"),
            "Write a new example.",
            0.6,
            0,
            1,
        )
        for i in range(12)
    ]
    generator = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama), **options))
    rows = generator.generate(requests)
    assert all(r is not None for r in rows)
    # Chunk 1 (4 rows) tries JSON once (4 attempts, none valid): the probe is spent, so its second
    # attempt and chunks 2-3 go straight to the field-by-field fallback.
    assert generator.stats.attempts == 4 and generator.stats.json_valid == 0
    assert generator.stats.json_skipped_rows == 8 and generator.stats.fallback_rows == 12


def test_rows_leave_the_batch_when_done_and_the_others_write_what_generate_writes(tiny_llama):
    """Greedy rows of the pruning decoder = the same rows of `model.generate`, cut where each
    row was done; rows stop at different steps (the tiny model writes no JSON object, so each
    row is given up after its own preamble), so rows really leave the batch midway."""
    import torch

    from services.dataset_prep import generators

    generator = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama)))
    sampler = generator._sampler
    requests = [
        RowRequest(
            {"instruction": f"add {i} and {i * 3}" + " then" * i, "output": str(4 * i)}, ("output",), "New.", 0.0
        )
        for i in range(4)
    ]
    prompts = [sampler.encode(generators.chat_messages(r), 40) for r in requests]
    ours = sampler.sample_batch(prompts, 0.0, 1, 40, stop_after_json=True)
    lengths = {len(sampler.tokenizer(text, add_special_tokens=False).input_ids) for text in ours}
    assert len(lengths) > 1  # the rows ended at different steps

    pad = sampler.tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        full = sampler.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False)
    for text, row in zip(ours, full[:, width:].tolist(), strict=True):
        plain = sampler.tokenizer.decode(row, skip_special_tokens=True)
        assert text and plain.startswith(text)


def test_sampling_is_seeded_and_keeps_to_top_k_and_top_p():
    import torch

    from services.dataset_prep.generators import TOP_K, Sampling, next_tokens

    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0] + [-20.0 - 0.01 * i for i in range(60)]] * 3)
    first = next_tokens(logits, Sampling(0.6, 0.9, 7), torch.Generator().manual_seed(7))
    again = next_tokens(logits, Sampling(0.6, 0.9, 7), torch.Generator().manual_seed(7))
    assert first.tolist() == again.tolist()
    assert next_tokens(logits, Sampling(0.0, 1.0, 7), torch.Generator()).tolist() == [1, 1, 1]  # greedy
    # top_p 0.5: token 1 alone holds more than half the mass (3.0 vs 2.9 at τ 0.6 is ~54 %).
    picks = next_tokens(logits.repeat(50, 1), Sampling(0.6, 0.5, 1), torch.Generator().manual_seed(1))
    assert set(picks.tolist()) == {1}
    wide = next_tokens(logits.repeat(200, 1), Sampling(5.0, 1.0, 1), torch.Generator().manual_seed(1))
    ranked = torch.topk(logits[0], TOP_K).indices.tolist()
    assert set(wide.tolist()) <= set(ranked) and len(set(wide.tolist())) > 3


def _greedy_rows(tiny_llama, n: int):
    from services.dataset_prep import generators

    sampler = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama)))._sampler
    requests = [
        RowRequest({"instruction": f"add {i} and {i * 5}" + " again" * i}, ("instruction",), "New.", 0.0)
        for i in range(n)
    ]
    return sampler, [sampler.encode(generators.chat_messages(r), 40) for r in requests]


def test_each_row_stops_at_its_own_token_limit(tiny_llama):
    from services.dataset_prep.generators import RowInFlight, Sampling

    sampler, prompts = _greedy_rows(tiny_llama, 3)
    rows = [RowInFlight(list(p), limit) for p, limit in zip(prompts, [3, 12, 7], strict=True)]
    # min_new_tokens bans EOS for the whole run, so only the limits end the rows.
    sampler.run_batch(rows, Sampling(0.0, 1.0, 1), min_new_tokens=12)
    assert [len(row.new) for row in rows] == [3, 12, 7] and all(row.done for row in rows)
    longer = [RowInFlight(list(p), 12) for p in prompts]
    sampler.run_batch(longer, Sampling(0.0, 1.0, 1), min_new_tokens=12)
    assert [row.new[: len(short.new)] for row, short in zip(longer, rows, strict=True)] == [r.new for r in rows]
    # sample_batch caps a row's limit at max_new_tokens.
    texts = sampler.sample_batch(prompts, 0.0, 1, 12, min_new_tokens=12, row_limits=[3, 40, 7])
    assert texts[1] == sampler.tokenizer.decode(longer[1].new, skip_special_tokens=True)


def test_parked_rows_go_on_in_a_later_call_and_write_what_one_call_writes(tiny_llama):
    """Greedy: rows parked when the batch shrank, then finished in a second call with a new row,
    get the tokens an uninterrupted call gives them."""
    from services.dataset_prep.generators import RowInFlight, Sampling

    sampler, prompts = _greedy_rows(tiny_llama, 5)
    limits = [2, 2, 2, 14, 14]
    whole = [RowInFlight(list(p), limit) for p, limit in zip(prompts, limits, strict=True)]
    sampler.run_batch(whole, Sampling(0.0, 1.0, 1), min_new_tokens=14)
    assert all(row.done for row in whole) and [len(row.new) for row in whole] == limits

    rows = [RowInFlight(list(p), limit) for p, limit in zip(prompts[:4], limits[:4], strict=True)]
    # 4 rows: after step 2 only one is left (< 2): it is parked, not finished.
    sampler.run_batch(rows, Sampling(0.0, 1.0, 1), min_new_tokens=14, park_below=2)
    assert [row.done for row in rows] == [True, True, True, False] and len(rows[3].new) == 2
    late = RowInFlight(list(prompts[4]), limits[4])
    sampler.run_batch([rows[3], late], Sampling(0.0, 1.0, 1), min_new_tokens=14)
    assert rows[3].done and late.done
    assert [row.new for row in rows + [late]] == [row.new for row in whole]


def test_a_json_answer_starts_with_its_first_key_written(tiny_llama):
    """The local model continues `{"<first key>": "`, so prose or other keys cannot come first;
    the text handed to the parser holds that opening, and the row's tracker knows it."""
    from services.dataset_prep import generators

    request = RowRequest({"instruction": "add 1 and 2", "output": "3"}, ("instruction", "output"), "New.", 0.0)
    prefix = generators.json_answer_prefix(request)
    assert prefix == '{"instruction": "'
    assert generators.parse_answer(prefix + 'add 2 and 5", "output": "7"} and more', request.keys) == {
        "instruction": "add 2 and 5",
        "output": "7",
    }
    end = generators._object_end(prefix)
    assert not end.done and end.feed('x", "output": "y"') is False and end.feed("}") is True

    generator = LocalTransformersGenerator(LocalGeneratorConfig(str(tiny_llama), max_new_tokens=8))
    job = generators._Job(0, generators.chat_messages(request), 0.0, ("x",), answer_prefix=prefix, new_tokens=8)
    (text,) = generator._sample([job], 8, stop_after_json=True)
    assert text.startswith(prefix)
    sampler = generator._sampler
    plain = sampler.encode(generators.chat_messages(request), 8)
    assert sampler.encode(generators.chat_messages(request), 8, prefix)[: len(plain) - 1] == plain[:-1]
    # A rewrite may take about twice its source's tokens, capped by max_new_tokens.
    assert generator._answer_budget(request) == 8
