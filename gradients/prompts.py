"""How a text row becomes a prompt: the one rule the miner SDK trains with and the evaluator scores with.

The prompt is the base tokenizer's chat template over [system?, user] with the generation
prompt added; an instruct row's user content is the instruction, then a newline and the input
when there is one (a blank input adds nothing). Preference and GRPO rows use their `prompt` as
the user content. Miners and the evaluator must agree token for token, or a well-trained model
is scored on text it never saw.
"""

from __future__ import annotations

from typing import Any, cast

Messages = list[dict[str, str]]

# The evaluator's template when the base tokenizer has none (the SDK trainers refuse such a base).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def instruct_user_content(instruction: str, extra: str) -> str:
    """The user turn of an instruct row: the instruction, then a newline and the input if any."""
    return f"{instruction}\n{extra}" if extra.strip() else instruction


def prompt_messages(system: str | None, user: str) -> Messages:
    """[system?, user]: the system message only when it has text."""
    messages: Messages = [{"role": "system", "content": system}] if system and system.strip() else []
    messages.append({"role": "user", "content": user})
    return messages


def render_chat(
    tokenizer: Any, messages: Messages, add_generation_prompt: bool = True, fallback_template: str | None = None
) -> str:
    """The messages through the tokenizer's chat template (or `fallback_template` when it has none)."""
    template = None if tokenizer.chat_template else fallback_template
    return cast(
        str,
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
        ),
    )
