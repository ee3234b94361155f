"""The base model a customer names, checked at CreateTask: it exists, and of which kind.

A local model folder or a Hub id `org/name[@revision]`. Offline (HF_HUB_OFFLINE=1) the id
must be in the local Hugging Face cache; online only its config file is fetched here (the
weights are downloaded by the services that load them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gradients.sources import SourceRefused, hf_cache_dir, hf_offline, model_kind, params_b_from_config, resolve_model


class ModelRefused(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ModelInfo:
    kind: str  # "text" | "diffusion"
    params_b: float | None  # phi(M) estimated from the config (None: unknown)


def _config_only(repo: str, revision: str | None, cache_dir: Path) -> ModelInfo:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename, kind in (("model_index.json", "diffusion"), ("config.json", "text")):
        try:
            path = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=str(cache_dir)))
        except EntryNotFoundError:
            continue
        return ModelInfo(kind, params_b_from_config(path) if kind == "text" else None)
    raise ModelRefused(f"model {repo!r} has neither config.json nor model_index.json")


def inspect_base_model(ref: str, data_dir: str | os.PathLike) -> ModelInfo:
    cache = hf_cache_dir(data_dir)
    text = ref.strip()
    try:
        if hf_offline() or Path(text).expanduser().is_dir() or text.startswith((".", "/", "~")):
            folder = resolve_model(text, cache)
        else:
            repo, _, revision = text.partition("@")
            try:
                folder = resolve_model(text, cache) if _cached(repo, cache) else None
            except SourceRefused:
                folder = None
            if folder is None:
                resolve_model_syntax(text)
                try:
                    return _config_only(repo, revision or None, cache)
                except ModelRefused:
                    raise
                except Exception as exc:  # network, repository not found, gated...
                    raise ModelRefused(
                        f"model {text!r} could not be looked up on the Hugging Face Hub ({type(exc).__name__})"
                    ) from None
        kind = model_kind(folder)
    except SourceRefused as exc:
        raise ModelRefused(exc.reason) from None
    return ModelInfo(kind, params_b_from_config(folder) if kind == "text" else None)


def _cached(repo: str, cache: Path) -> bool:
    return (cache / ("models--" + repo.replace("/", "--"))).is_dir()


def resolve_model_syntax(text: str) -> None:
    """SourceRefused for a string that is no Hub model id (checked before any network call)."""
    import re

    if (
        not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?", text)
        or ".." in text
        or "--" in text.split("@")[0]
    ):
        raise SourceRefused(
            "base_model",
            "is neither a local model folder (config.json or model_index.json) "
            "nor a Hugging Face model id 'org/name[@revision]'",
        )
