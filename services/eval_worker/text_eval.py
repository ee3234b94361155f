"""Completion-token cross-entropy for instruct and chat tasks (eqs 5, 6), many adapters at once.

All adapters of a group share one PeftModel. By the group's plan (plans.py) each sequence is
evaluated once per adapter either in mixed-adapter batches (peft's per-row `adapter_names`) or
with each adapter merged into the base weights in turn. Batches are built from "units": one
unit = one sequence under every adapter of the batch, so the rows of a unit always sit in the
same batch (same padded length); units are sorted by length and token-budgeted to limit padding.
The LM head runs only on scored positions (`_labelled_token_nll`).

Per-example loss = mean token cross-entropy over the example's completion tokens; a set's loss
= mean over its examples (eq 5: (1/|D|) sum_x l(M, x)), so long answers do not outweigh short ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from services.eval_worker.job import BASELINE_HOTKEY, EvalJob
from services.eval_worker.model_loading import (
    BASE_ADAPTER,
    attach_lora_adapters,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
)
from services.eval_worker.plans import can_merge, choose_plan, merged_adapter
from services.eval_worker.text_data import IGNORE_INDEX, TokenizedExample, text_examples
from services.eval_worker.validation import ValidatedSubmission


@dataclass
class MemberResult:
    """What a child returns for one submission: per-example numbers of the test and synth sets."""

    ok: bool
    reason: str = ""
    test: list[float] = field(default_factory=list)
    synth: list[float] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPlan:
    max_batch_tokens: int
    max_batch_size: int


def plan_unit_batches(lengths: Sequence[int], unit_sizes: Sequence[int], plan: BatchPlan) -> list[list[int]]:
    """Group unit indices into batches of whole units, longest first.

    A batch's rows x its longest sequence stays within max_batch_tokens and its rows within
    max_batch_size; a unit too big for the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    rows = 0
    current_max = 0
    for i in order:
        new_max = max(current_max, lengths[i])
        new_rows = rows + unit_sizes[i]
        if current and (new_rows * new_max > plan.max_batch_tokens or new_rows > plan.max_batch_size):
            batches.append(current)
            current, new_max, new_rows = [], lengths[i], unit_sizes[i]
        current.append(i)
        current_max, rows = new_max, new_rows
    if current:
        batches.append(current)
    return batches


Row = tuple[TokenizedExample, "str | None"]  # a sequence and the adapter it runs under (None: as is)


# Architectures whose causal-LM forward is exactly `lm_head(body(...).last_hidden_state)` (no logit
# scaling or soft-capping after the head), so the head may be applied to scored positions only.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2", "starcoder2"})


def split_head(model: Any) -> tuple[Any, Any] | None:
    """(transformer body, LM head) of a causal LM (peft-wrapped or not), or None when its forward
    does more than apply the head to the body's last hidden states."""
    from peft import PeftModel

    inner: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    body = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings()
    if body is None or head is None:
        return None
    return body, head


@contextmanager
def _rows_under(model: Any, owners: list[str] | None) -> Iterator[None]:
    """Route each batch row through its own adapter inside the body: peft's per-row routing hooks,
    exactly what PeftModel.forward installs for `adapter_names`."""
    if owners is None:
        yield
        return
    with model._enable_peft_forward_hooks(adapter_names=list(owners)):
        yield


def _labelled_token_nll(model: Any, ids: Any, mask: Any, labels: Any, owners: list[str] | None) -> tuple[Any, Any]:
    """NLL of every labelled token (row-major order) and the batch row it belongs to.

    The body runs over the whole batch; the LM head and its log-softmax run only on the positions
    whose next token is scored (for a 49k vocabulary the head over prompt tokens is a large share
    of the work). With mixed adapters the head's own LoRA (if any) is routed per gathered position.
    """
    import torch
    import torch.nn.functional as F

    keep = labels[:, 1:] != IGNORE_INDEX  # position p predicts token p + 1
    targets = labels[:, 1:][keep]
    row_of = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(keep)[keep]
    parts = split_head(model)
    if parts is not None:
        body, head = parts
        shared = shared_prefix_length(ids, keep) if owners is None else 0
        with _rows_under(model, owners):
            if shared >= MIN_SHARED_PREFIX:
                hidden = _body_after_shared_prefix(body, ids, mask, shared)
                keep = keep[:, shared:]
            else:
                hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        scored = hidden[:, :-1][keep]
        if owners is not None and _is_lora_layer(head):
            logits = head(scored, adapter_names=[owners[r] for r in row_of.tolist()])
        else:
            logits = head(scored)
        return F.cross_entropy(logits.float(), targets, reduction="none"), row_of
    # Other architectures: the full forward, with the head over the window from the batch's first
    # scored position (`logits_to_keep`); a per-row mask would flatten the batch, which peft's
    # per-row adapter_names forbid inside the model's forward.
    labelled_positions = keep.any(dim=0).nonzero()
    start = int(labelled_positions[0]) if len(labelled_positions) else 0
    window = torch.arange(start, labels.shape[1] - 1, device=labels.device)
    kwargs: dict[str, Any] = {} if owners is None else {"adapter_names": owners}
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=window, **kwargs).logits
    if logits.shape[1] != keep.shape[1] - start:  # a model that ignores logits_to_keep
        logits = logits[:, :-1][:, start:]
    return F.cross_entropy(logits[keep[:, start:]].float(), targets, reduction="none"), row_of


# A prompt prefix every row of a batch shares (a chat template's default system prompt: about a
# third of SmolLM2's tokens on short instruct rows) runs once per batch, its keys and values
# reused by every row; below a few tokens the extra call costs more than it saves.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(ids: Any, keep: Any) -> int:
    """Leading positions where every row has the same token and none is scored (no row's loss
    needs their hidden state), leaving every row at least one position to run. One row: 0 (a
    split would only add a call)."""
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0)
    limit = min(int(ids.shape[1]) - 1, int(same.int().argmin()) if not bool(same.all()) else int(ids.shape[1]))
    scored = keep.any(dim=0).nonzero()
    if len(scored):
        limit = min(limit, int(scored[0]))
    return max(limit, 0)


def _body_after_shared_prefix(body: Any, ids: Any, mask: Any, shared: int) -> Any:
    """Last hidden states of positions shared.. : the prefix once (batch of one), its cache
    repeated over the rows, then the rest of every row attending to it."""
    import torch

    prefix = body(input_ids=ids[:1, :shared], use_cache=True)
    cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values
    cache.batch_repeat_interleave(int(ids.shape[0]))
    positions = torch.arange(shared, ids.shape[1], device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
    return body(
        input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state


def _is_lora_layer(module: Any) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def unit_nll(
    model: Any,
    units: Sequence[Sequence[Row]],
    pad_id: int,
    device: str,
    plan: BatchPlan,
    per_token: bool = False,
) -> list[list[Any]]:
    """NLL of every row's labelled tokens; the rows of a unit always share a batch.

    Rows with an adapter name run in mixed-adapter batches (`adapter_names=[...]`, "__base__"
    = no adapter); rows with None run `model` as it is (a batch never mixes the two).
    Returns, per unit and row, (sum_nll, n_tokens) or, with per_token, the list of token NLLs.
    """
    import torch

    out: list[list[Any]] = [[None] * len(u) for u in units]
    lengths = [max(len(seq.input_ids) for seq, _ in u) for u in units]
    with torch.inference_mode():
        for batch in plan_unit_batches(lengths, [len(u) for u in units], plan):
            rows = [(ui, ri) for ui in batch for ri in range(len(units[ui]))]
            width = max(lengths[ui] for ui in batch)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            owners = []
            for r, (ui, ri) in enumerate(rows):
                seq, owner = units[ui][ri]
                n = len(seq.input_ids)
                ids[r, :n] = torch.tensor(seq.input_ids)
                labels[r, :n] = torch.tensor(seq.labels)
                mask[r, :n] = 1
                owners.append(owner)
            names: list[str] | None = None
            if any(o is not None for o in owners):
                if any(o is None for o in owners):
                    raise ValueError("a batch cannot mix adapter rows and as-is rows")
                names = cast("list[str]", owners)
            token_nll, row_of = _labelled_token_nll(model, ids.to(device), mask.to(device), labels.to(device), names)
            row_of_cpu = row_of.cpu()
            nll_cpu = token_nll.double().cpu()
            if per_token:
                for r, (ui, ri) in enumerate(rows):
                    out[ui][ri] = nll_cpu[row_of_cpu == r].tolist()
            else:
                sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, row_of_cpu, nll_cpu).tolist()
                counts = torch.bincount(row_of_cpu, minlength=len(rows)).tolist()
                for r, (ui, ri) in enumerate(rows):
                    out[ui][ri] = (sums[r], counts[r])
    return out


def sequence_nll(
    model: Any,
    sequences: Sequence[TokenizedExample],
    owners: Sequence[str | None],
    pad_id: int,
    device: str,
    plan: BatchPlan,
) -> dict[str | None, list[tuple[float, int]]]:
    """(sum_nll, n_tokens) of every sequence under every owner; one unit = one sequence x all owners."""
    units = [[(seq, owner) for owner in owners] for seq in sequences]
    nll = unit_nll(model, units, pad_id, device, plan)
    return {owner: [nll[i][k] for i in range(len(sequences))] for k, owner in enumerate(owners)}


def mean_token_losses(nll: list[tuple[float, int]]) -> list[float]:
    losses = []
    for total, count in nll:
        if count == 0:
            raise ValueError("an example has no completion token to score")
        losses.append(total / count)
    return losses


def batch_plan(job: EvalJob) -> BatchPlan:
    return BatchPlan(job.limits.max_batch_tokens, job.limits.max_batch_size)


@dataclass
class LoadedGroup:
    """A group's models, loaded once: one full model, one adapter, or the base with many adapters."""

    model: Any
    owners: dict[str, str | None]  # hotkey -> adapter name in mixed batches (None otherwise)
    failures: dict[str, str]
    mixed: bool  # several adapters on one PeftModel (selected per row with adapter_names)
    base_model: Any = None  # full-model groups that also need the base (DPO reference, GRPO KL)
    plan: str = "single"  # how group_nll evaluates a multi-adapter group: "mixed" | "merged"

    @contextmanager
    def base_view(self) -> Iterator[Any]:
        """The base model, without loading anything: the separately loaded base of a full-model
        group, the group's PeftModel with its adapters disabled, or the bare base (nothing attached)."""
        if self.base_model is not None:
            yield self.base_model
            return
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield self.model
            return
        if self.owners:
            raise ValueError("this full-model group did not load the base model (need_base)")
        yield self.model


def load_group(job: EvalJob, members: list[ValidatedSubmission], device: str, need_base: bool = False) -> LoadedGroup:
    if len(members) == 1 and members[0].kind == "full":
        model = load_causal_lm(members[0].path, device, config_dir=job.base_model_dir)
        base = load_causal_lm(job.base_model_dir, device) if need_base else None
        return LoadedGroup(model, {members[0].hotkey: None}, {}, mixed=False, base_model=base)
    if any(m.kind != "adapter" for m in members):
        raise ValueError("a multi-member group may hold adapters only")
    attached = attach_lora_adapters(load_causal_lm(job.base_model_dir, device), members, device)
    mixed = len(members) > 1
    owners: dict[str, str | None] = dict(attached.names)
    if not mixed and attached.names:
        attached.model.set_adapter(next(iter(attached.names.values())))
        owners = {h: None for h in owners}
    plan = "single"
    if mixed and owners:
        names = [n for n in owners.values() if n is not None]
        plan = choose_plan(job.limits.eval_plan, device, len(names), can_merge(attached.model, names))
        plan = "mixed" if plan == "single" else plan  # a mixed group left with one adapter
    return LoadedGroup(attached.model, owners, dict(attached.failures), mixed=mixed, plan=plan)


@dataclass
class GroupNll:
    members: dict[str, list[tuple[float, int]]]  # hotkey -> (sum_nll, n_tokens) per sequence
    reference: list[tuple[float, int]] | None  # the base model, when asked for


def group_nll(
    group: LoadedGroup,
    sequences: Sequence[TokenizedExample],
    pad_id: int,
    device: str,
    plan: BatchPlan,
    with_reference: bool = False,
) -> GroupNll:
    """NLL of every sequence under every member (and the base): one pass for a mixed group, or
    the base then each adapter merged in turn (group.plan, see plans.py)."""
    if group.mixed and group.plan == "merged":
        return merged_group_nll(group, sequences, pad_id, device, plan, with_reference)
    if group.mixed:
        owners: list[str | None] = list(group.owners.values()) + ([BASE_ADAPTER] if with_reference else [])
        nll = sequence_nll(group.model, sequences, owners, pad_id, device, plan)
        return GroupNll({h: nll[o] for h, o in group.owners.items()}, nll[BASE_ADAPTER] if with_reference else None)
    (hotkey,) = group.owners
    member = sequence_nll(group.model, sequences, [None], pad_id, device, plan)[None]
    reference = base_nll(group, sequences, pad_id, device, plan) if with_reference else None
    return GroupNll({hotkey: member}, reference)


def merged_group_nll(
    group: LoadedGroup,
    sequences: Sequence[TokenizedExample],
    pad_id: int,
    device: str,
    plan: BatchPlan,
    with_reference: bool = False,
) -> GroupNll:
    """Merged plan: adapters disabled, the base pass, then each adapter merged into the weights."""
    reference = base_nll(group, sequences, pad_id, device, plan) if with_reference else None
    members: dict[str, list[tuple[float, int]]] = {}
    with group.model.disable_adapter():  # LoRA layers run their (merged) base layers only
        for hotkey, name in group.owners.items():
            with merged_adapter(group.model, cast(str, name)):  # merged groups are mixed: every owner is named
                members[hotkey] = sequence_nll(group.model, sequences, [None], pad_id, device, plan)[None]
    return GroupNll(members, reference)


def base_nll(
    group: LoadedGroup, sequences: Sequence[TokenizedExample], pad_id: int, device: str, plan: BatchPlan
) -> list[tuple[float, int]]:
    """NLL of every sequence under the base alone (batched like a lone member's pass, so identical
    weights give bit-identical numbers)."""
    with group.base_view() as base:
        return sequence_nll(base, sequences, [None], pad_id, device, plan)[None]


def evaluate_text_group(
    job: EvalJob, members: list[ValidatedSubmission], baseline: bool = False
) -> dict[str, MemberResult]:
    """Instruct/chat: per-example completion cross-entropy on D_test and D_synth for each member.

    With baseline, the base model too (under BASELINE_HOTKEY): `__base__` rows in the members'
    mixed batches, the adapter disabled for a lone adapter, or the bare base when no member is left.
    """
    device = resolve_device(job.device)
    tokenizer = load_tokenizer(job.base_model_dir)
    max_len = job.limits.max_seq_len
    test = text_examples(tokenizer, job.task_type, job.test_rows, max_len)
    synth = text_examples(tokenizer, job.task_type, job.synth_rows, max_len)
    group = load_group(job, members, device, need_base=baseline)
    results = {h: MemberResult(ok=False, reason=r) for h, r in group.failures.items()}
    plan = batch_plan(job)
    reference = None
    if group.owners:
        nll = group_nll(group, test + synth, tokenizer.pad_token_id, device, plan, with_reference=baseline)
        for hotkey, member_nll in nll.members.items():
            losses = mean_token_losses(member_nll)
            results[hotkey] = MemberResult(ok=True, test=losses[: len(test)], synth=losses[len(test) :])
        reference = nll.reference
    elif baseline:
        reference = base_nll(group, test + synth, tokenizer.pad_token_id, device, plan)
    if reference is not None:
        losses = mean_token_losses(reference)
        results[BASELINE_HOTKEY] = MemberResult(ok=True, test=losses[: len(test)], synth=losses[len(test) :])
    return results
