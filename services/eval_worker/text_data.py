"""Rows -> token ids with a loss mask (prompt tokens labelled -100).

The base model's tokenizer and chat template are always used (a submission's own tokenizer
files are ignored), so every submission is scored on identical token sequences.

- Instruct rows {instruction, input, output, system?}: prompt = chat template of
  [system?, user(instruction + "\\n" + input)] with the generation prompt; completion =
  output + eos. An empty (or blank) input gives user content = instruction alone (as miner_sdk trains).
- Chat rows {conversations: [{role, content}]}: the conversation is rendered turn by turn; the
  text each assistant turn adds (its content and the template's end-of-turn marker) is scored,
  everything else is masked.
- Preference rows {prompt, chosen, rejected, system?}: prompt as for instruct with user content =
  prompt; each answer + eos is a completion.
Over-long sequences: prompt tokens are dropped from the left first (one is
always kept), then the completion is cut on the right; chat rows keep their last max_len tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradients import prompts
from gradients.prompts import FALLBACK_CHAT_TEMPLATE

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _require(row: dict[str, Any], key: str, kind: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{kind} row needs a string {key!r} column, got {type(value).__name__}")
    return value


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return prompts.render_chat(tokenizer, messages, add_generation_prompt, FALLBACK_CHAT_TEMPLATE)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_ids(tokenizer: Any) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ValueError("the base tokenizer has no eos token")
    return [tokenizer.eos_token_id]


def fit_to_length(prompt: list[int], completion: list[int], max_len: int) -> TokenizedExample:
    if not completion:
        raise ValueError("an example needs at least one completion token")
    if max_len < 2:
        raise ValueError("max_seq_len must be at least 2")
    overflow = len(prompt) + len(completion) - max_len
    if overflow > 0:
        # Keep one prompt token: the first completion token is predicted from it.
        prompt = prompt[min(overflow, max(len(prompt) - 1, 0)) :]
        completion = completion[: max_len - len(prompt)]
    return TokenizedExample(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)


def prompt_messages(row: dict[str, Any], user_content: str) -> list[dict[str, str]]:
    system = row.get("system")
    return prompts.prompt_messages(system if isinstance(system, str) else None, user_content)


def instruct_prompt_ids(tokenizer: Any, row: dict[str, Any]) -> list[int]:
    instruction = _require(row, "instruction", "instruct")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError(f"instruct row 'input' must be a string, got {type(extra).__name__}")
    user = prompts.instruct_user_content(instruction, extra)
    return _encode(tokenizer, render_chat(tokenizer, prompt_messages(row, user), True))


def instruct_example(tokenizer: Any, row: dict[str, Any], max_len: int) -> TokenizedExample:
    prompt = instruct_prompt_ids(tokenizer, row)
    completion = _encode(tokenizer, _require(row, "output", "instruct")) + _eos_ids(tokenizer)
    return fit_to_length(prompt, completion, max_len)


def chat_example(tokenizer: Any, row: dict[str, Any], max_len: int) -> TokenizedExample:
    conversation = row.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("chat row needs a non-empty 'conversations' list")
    messages = []
    for turn in conversation:
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise ValueError("each conversation turn needs string 'role' and 'content'")
        messages.append({"role": turn["role"], "content": turn["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("chat row has no assistant turn to score")

    # Segments of (text, scored?) whose concatenation is the rendered conversation.
    segments: list[tuple[str, bool]] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            before = render_chat(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
            after = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if not before.startswith(rendered) or not after.startswith(before):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            segments.append((before[len(rendered) :], False))
            segments.append((after[len(before) :], True))
            rendered = after
        else:
            after = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if not after.startswith(rendered):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            segments.append((after[len(rendered) :], False))
            rendered = after

    ids: list[int] = []
    labels: list[int] = []
    for text, scored in segments:
        if not text:
            continue
        seg = _encode(tokenizer, text)
        ids += seg
        labels += seg if scored else [IGNORE_INDEX] * len(seg)
    if len(ids) > max_len:
        # Keep the end of the conversation (its last answers) rather than its start.
        ids, labels = ids[-max_len:], labels[-max_len:]
        if all(t == IGNORE_INDEX for t in labels[1:]):
            raise ValueError("after truncation to max_seq_len no assistant token is left")
    return TokenizedExample(ids, labels)


def preference_examples(tokenizer: Any, row: dict[str, Any], max_len: int) -> tuple[TokenizedExample, TokenizedExample]:
    """(chosen, rejected) sequences of one DPO row."""
    prompt = _encode(tokenizer, render_chat(tokenizer, prompt_messages(row, _require(row, "prompt", "DPO")), True))
    eos = _eos_ids(tokenizer)
    chosen = _encode(tokenizer, _require(row, "chosen", "DPO")) + eos
    rejected = _encode(tokenizer, _require(row, "rejected", "DPO")) + eos
    return fit_to_length(prompt, chosen, max_len), fit_to_length(prompt, rejected, max_len)


def generation_prompt_ids(tokenizer: Any, row: dict[str, Any], max_len: int) -> list[int]:
    """GRPO: the chat-formatted prompt, left-truncated to max_len tokens."""
    ids = _encode(tokenizer, render_chat(tokenizer, prompt_messages(row, _require(row, "prompt", "GRPO")), True))
    return ids[-max_len:]


def text_examples(tokenizer: Any, task_type: str, rows: list[dict[str, Any]], max_len: int) -> list[TokenizedExample]:
    if task_type == "INSTRUCT_TEXT":
        return [instruct_example(tokenizer, r, max_len) for r in rows]
    if task_type == "CHAT":
        return [chat_example(tokenizer, r, max_len) for r in rows]
    raise ValueError(f"text_examples does not handle task type {task_type}")
