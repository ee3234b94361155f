"""Tiny models built from a config, for tests and quick demos.

Nothing here downloads anything: the tokenizer is trained locally with `tokenizers`
on a small built-in corpus, and the models are randomly initialised from a config
with a fixed seed, so the same call always produces the same weights.
"""

from __future__ import annotations

import string
from pathlib import Path

TINY_LLAMA_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)

# A small corpus covering letters, digits and common words so any ASCII text tokenizes
# into a modest number of tokens.
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "instruction input output answer question response system user assistant",
    "what is the sum of and plus minus times equals result reverse upper lower",
    "translate summarise explain write list key value recall find",
    " ".join(string.ascii_lowercase),
    " ".join(string.ascii_uppercase),
    " ".join(string.digits),
    string.punctuation,
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(vocab_size: int = TINY_LLAMA_CONFIG["vocab_size"]):
    """A byte-level BPE tokenizer trained on the built-in corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny `LlamaForCausalLM` and its tokenizer (safetensors) under out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    cfg = dict(TINY_LLAMA_CONFIG, **overrides)
    cfg["vocab_size"] = max(cfg["vocab_size"], len(tokenizer))
    config = LlamaConfig(
        **cfg,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
