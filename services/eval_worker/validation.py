"""Checks a submission on disk before any model code touches it.

Only safetensors weights and plain JSON/text files are accepted. Every refusal raises
`SubmissionRefused` with a reason string meant for the miner. What is checked:
- the upload tree: regular files and folders only (no symlinks, devices, FIFOs), nothing that
  resolves outside the upload folder, a bounded number of files;
- no pickles or code: refused by file suffix (.bin, .pt, .pkl, .py, ...) and by sniffing the
  first bytes of every file (pickle protocol 2-5 magic, zip archives as torch checkpoints use,
  .npy headers);
- size caps (adapter bytes; full model at most `max_full_model_ratio` x the base's bytes),
  checked from file sizes before any file is parsed;
- the weights are a fine-tune of the task's base: a full model's config must match the base's
  architecture and dimensions, and its tensor names and shapes must equal the base's; every
  LoRA tensor must attach to an existing base module with matching in/out features and a rank
  within `max_lora_rank`; adapter options that change the architecture or would rewrite the
  shared base weights are refused;
- every tensor is floating point and finite (NaN/Inf refused).
Reading safetensors executes no code, so all of this runs in the worker process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.eval_worker.job import EvalLimits, Submission

# Suffixes of formats that can carry executable code (pickles, archives of pickles, code).
FORBIDDEN_SUFFIXES = {
    ".bin": "pickled PyTorch weights (.bin)",
    ".pt": "pickled PyTorch weights (.pt)",
    ".pth": "pickled PyTorch weights (.pth)",
    ".ckpt": "pickled checkpoint (.ckpt)",
    ".pkl": "pickle (.pkl)",
    ".pickle": "pickle (.pickle)",
    ".joblib": "joblib pickle",
    ".npy": "numpy array (may hold pickled objects)",
    ".npz": "numpy archive (may hold pickled objects)",
    ".h5": "HDF5/Keras weights",
    ".msgpack": "flax msgpack weights",
    ".py": "Python code",
    ".pyc": "Python bytecode",
    ".so": "native library",
    ".zip": "archive",
    ".tar": "archive",
    ".gz": "archive",
}
ALLOWED_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}

# Config fields that define the architecture and must equal the base's (when the base has them).
ARCHITECTURE_FIELDS = (
    "architectures",
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "head_dim",
)

# LoRA config fields we pass on to peft. Everything else must be absent/empty, or be one of the
# purely informational fields below; new peft options are refused until someone reviews them.
LORA_KEPT_FIELDS = {
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "fan_in_fan_out",
    "use_rslora",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
    "lora_bias",
    "exclude_modules",
}
LORA_INFORMATIONAL_FIELDS = {
    "peft_type",
    "base_model_name_or_path",
    "revision",
    "task_type",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "init_lora_weights",
    "megatron_core",
    "qalora_group_size",
    "ensure_weight_tying",
}

LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector.weight",
    ".lora_magnitude_vector",
    ".lora.down.weight",
    ".lora.up.weight",  # diffusers' own layout (image LoRAs)
)
# Suffix -> the PEFT role it plays in the shape checks.
LORA_ROLE = {".lora.down.weight": ".lora_A.weight", ".lora.up.weight": ".lora_B.weight"}
PEFT_PREFIX = "base_model.model."
IMAGE_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


class SubmissionRefused(Exception):
    """A submission failed validation; str(exc) is the reason given to the miner."""


@dataclass(frozen=True)
class WeightsInfo:
    shapes: dict[str, tuple[int, ...]]
    nbytes: int
    # tensor name -> (file, name in that file); tied heads point at the embedding
    locations: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BaseModelInfo:
    """What validation needs to know about the task's base model (read from headers only)."""

    config: dict[str, Any]
    weights: WeightsInfo
    # IMAGE bases: per component (unet, text_encoder, ...) shapes and the unet config.
    components: dict[str, WeightsInfo]


@dataclass(frozen=True)
class ValidatedSubmission:
    hotkey: str
    path: str
    kind: str  # "adapter" | "full"
    mixed_batch_ok: bool  # may share a mixed-adapter batch with other adapters
    lora_config: dict[str, Any] | None  # sanitised (text adapters)
    weight_file: str = ""  # image adapters: the one safetensors file to load


# ---------------------------------------------------------------------------------------
# Base model
# ---------------------------------------------------------------------------------------


def read_weights_info(files: list[Path]) -> WeightsInfo:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    locations: dict[str, tuple[str, str]] = {}
    nbytes = 0
    for f in files:
        nbytes += f.stat().st_size
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                shapes[key] = tuple(sf.get_slice(key).get_shape())
                locations[key] = (str(f), key)
    return WeightsInfo(shapes=shapes, nbytes=nbytes, locations=locations)


def read_base_info(base_dir: str | Path, task_type: str) -> BaseModelInfo:
    """Configs and tensor shapes of the base model, read from config.json and safetensors headers."""
    base = Path(base_dir)
    if not base.is_dir():
        raise ValueError(f"base_model_dir {base} is not a folder")
    if task_type == "IMAGE":
        components = {}
        for comp in IMAGE_COMPONENTS:
            files = sorted((base / comp).glob("*.safetensors")) if (base / comp).is_dir() else []
            if files:
                components[comp] = read_weights_info(files)
        if "unet" not in components and "transformer" not in components:
            raise ValueError(f"base pipeline {base} has no unet/ or transformer/ safetensors weights")
        denoiser = "unet" if "unet" in components else "transformer"
        config = json.loads((base / denoiser / "config.json").read_text())
        return BaseModelInfo(config=config, weights=components[denoiser], components=components)
    config_path = base / "config.json"
    if not config_path.is_file():
        raise ValueError(f"base model {base} has no config.json")
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise ValueError(f"base model {base} has no safetensors weights")
    config = json.loads(config_path.read_text())
    info = read_weights_info(files)
    shapes, locations = dict(info.shapes), dict(info.locations)
    # Tied embeddings: the head exists as a module although its tensor is not stored.
    if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes:
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
        locations["lm_head.weight"] = locations["model.embed_tokens.weight"]
    return BaseModelInfo(config=config, weights=WeightsInfo(shapes, info.nbytes, locations), components={})


# ---------------------------------------------------------------------------------------
# Upload tree, pickles, sizes
# ---------------------------------------------------------------------------------------


def _sniff_forbidden(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"{path.name} is a pickle (protocol {head[1]} magic bytes)"
    if head.startswith(b"PK\x03\x04"):
        return f"{path.name} is a zip archive (torch checkpoints are zipped pickles)"
    if head.startswith(b"\x93NUMPY"):
        return f"{path.name} is a numpy array file (may hold pickled objects)"
    if head.startswith(b"\x7fELF"):
        return f"{path.name} is a native executable"
    return None


def list_upload_files(root: Path, limits: EvalLimits) -> list[Path]:
    """Every regular file under root; refuses symlinks, special files and escapes."""
    if root.is_symlink():
        raise SubmissionRefused("the upload folder itself is a symlink")
    if not root.is_dir():
        raise SubmissionRefused(f"upload folder {root} does not exist")
    real_root = os.path.realpath(root)
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                raise SubmissionRefused(f"symlinks are not allowed ({rel} -> {os.readlink(p)})")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise SubmissionRefused(f"{rel} is not a regular file or folder")
            if os.path.commonpath([real_root, os.path.realpath(p)]) != real_root:
                raise SubmissionRefused(f"{rel} resolves outside the upload folder")
            if stat.S_ISREG(st.st_mode):
                files.append(p)
                if len(files) > limits.max_files:
                    raise SubmissionRefused(f"too many files (more than {limits.max_files})")
    return files


def refuse_code_and_pickles(root: Path, files: list[Path]) -> None:
    for f in files:
        rel = f.relative_to(root)
        for suffix in f.suffixes:
            reason = FORBIDDEN_SUFFIXES.get(suffix.lower())
            if reason:
                raise SubmissionRefused(f"{rel}: {reason} is not allowed; upload safetensors only")
        sniffed = _sniff_forbidden(f)
        if sniffed:
            raise SubmissionRefused(f"{sniffed}; upload safetensors only")


def directory_sha256(root: str | Path) -> str:
    """Content address of an upload folder: sha256 over sorted 'relative/path\\0<file sha256>\\n'."""
    root = Path(root)
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest.update(f"{f.relative_to(root).as_posix()}\0{h.hexdigest()}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------


def read_and_check_tensors(files: list[Path], root: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of all tensors; refuses unparsable files, duplicates, non-float and non-finite tensors."""
    import torch
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        rel = f.relative_to(root)
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    if key in shapes:
                        raise SubmissionRefused(f"tensor {key} appears in more than one file")
                    sl = sf.get_slice(key)
                    dtype = sl.get_dtype()
                    if dtype not in ALLOWED_FLOAT_DTYPES:
                        raise SubmissionRefused(f"tensor {key} in {rel} has dtype {dtype}; floating point only")
                    shapes[key] = tuple(sl.get_shape())
                    tensor = sf.get_tensor(key)
                    if not bool(torch.isfinite(tensor).all()):
                        raise SubmissionRefused(f"tensor {key} in {rel} contains NaN or Inf values")
        except SubmissionRefused:
            raise
        except Exception as exc:  # malformed header, truncated file, ...
            raise SubmissionRefused(f"{rel} is not a valid safetensors file ({exc})") from exc
    return shapes


def _strip_lora_suffix(key: str) -> tuple[str, str] | None:
    for suffix in LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def check_lora_shapes(
    shapes: dict[str, tuple[int, ...]],
    base_shapes: dict[str, tuple[int, ...]],
    max_rank: int,
    prefix_of: Callable[[str], str | None],
) -> None:
    """Every LoRA tensor must attach to a base module of matching dimensions, rank <= max_rank.

    prefix_of(key) maps an adapter key to (base key prefix or None); None = unknown layout.
    """
    if not shapes:
        raise SubmissionRefused("the adapter contains no tensors")
    ranks: dict[str, int] = {}
    for key, shape in shapes.items():
        stripped = prefix_of(key)
        if stripped is None:
            raise SubmissionRefused(f"adapter tensor {key} does not follow the PEFT key layout")
        split = _strip_lora_suffix(stripped)
        if split is None:
            # modules_to_save copies, or (".base_layer.") the wrapped base tensor itself, which
            # peft saves for targeted embeddings/heads; the latter must equal the base's values.
            stripped = stripped.replace(".base_layer.", ".")
            if stripped not in base_shapes:
                raise SubmissionRefused(f"adapter tensor {key} matches no tensor of the base model")
            if base_shapes[stripped] != shape:
                raise SubmissionRefused(
                    f"adapter tensor {key} has shape {list(shape)}, the base's is {list(base_shapes[stripped])}"
                )
            continue
        module, suffix = split
        suffix = LORA_ROLE.get(suffix, suffix)
        base_key = module + ".weight"
        if base_key not in base_shapes:
            raise SubmissionRefused(f"adapter tensor {key} targets {module}, which the base model does not have")
        base = base_shapes[base_key]
        out_features = base[0]
        if suffix == ".lora_A.weight":
            rank, in_features = shape[0], shape[1] if len(shape) > 1 else -1
            if len(shape) != len(base) or in_features != base[1]:
                raise SubmissionRefused(
                    f"adapter tensor {key} has shape {list(shape)}, incompatible with base {module} {list(base)}"
                )
        elif suffix == ".lora_B.weight":
            rank = shape[1] if len(shape) > 1 else -1
            if len(shape) != len(base) or shape[0] != out_features:
                raise SubmissionRefused(
                    f"adapter tensor {key} has shape {list(shape)}, incompatible with base {module} {list(base)}"
                )
        elif suffix == ".lora_embedding_A":  # [r, num_embeddings]
            rank = shape[0]
            if len(shape) != 2 or shape[1] != base[0]:
                raise SubmissionRefused(f"adapter tensor {key} has shape {list(shape)}, base {module} {list(base)}")
        elif suffix == ".lora_embedding_B":  # [embedding_dim, r]
            rank = shape[1] if len(shape) == 2 else -1
            if len(shape) != 2 or shape[0] != base[1]:
                raise SubmissionRefused(f"adapter tensor {key} has shape {list(shape)}, base {module} {list(base)}")
        else:  # bias / DoRA magnitude: one value per output feature
            if shape != (out_features,) and shape != (1, out_features):
                raise SubmissionRefused(f"adapter tensor {key} has shape {list(shape)}, expected [{out_features}]")
            continue
        if rank <= 0:
            raise SubmissionRefused(f"adapter tensor {key} has shape {list(shape)}; no LoRA rank")
        if rank > max_rank:
            raise SubmissionRefused(f"LoRA rank {rank} of {module} exceeds the cap of {max_rank}")
        if ranks.setdefault(module, rank) != rank:
            raise SubmissionRefused(f"LoRA A and B of {module} disagree on the rank")


def _is_empty(value: Any) -> bool:
    return value in (None, False, "", 0) or value == {} or value == []


def sanitise_lora_config(raw: dict[str, Any], max_rank: int) -> dict[str, Any]:
    """The adapter config fields we pass to peft; refuses options we have not reviewed."""
    if raw.get("peft_type", "LORA") != "LORA":
        raise SubmissionRefused(f"adapter type {raw.get('peft_type')!r} is not supported; LoRA only")
    for key, value in raw.items():
        if key in LORA_KEPT_FIELDS or key in LORA_INFORMATIONAL_FIELDS:
            continue
        if not _is_empty(value):
            raise SubmissionRefused(f"adapter option {key}={value!r} is not supported")
    kept = {k: raw[k] for k in LORA_KEPT_FIELDS if k in raw}
    r = kept.get("r", 8)
    if not isinstance(r, int) or r <= 0:
        raise SubmissionRefused(f"adapter config r={r!r} is not a positive integer")
    ranks = [r, *(kept.get("rank_pattern") or {}).values()]
    if not all(isinstance(x, int) and x > 0 for x in ranks):
        raise SubmissionRefused("adapter rank_pattern values must be positive integers")
    if max(ranks) > max_rank:
        raise SubmissionRefused(f"LoRA rank {max(ranks)} exceeds the cap of {max_rank}")
    alpha = kept.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SubmissionRefused(f"adapter config lora_alpha={alpha!r} is not a finite number")
    return kept


def _mixed_batch_ok(cfg: dict[str, Any]) -> bool:
    # peft refuses adapter_names with DoRA; a trained bias rewrites the base layer's bias, which
    # the other adapters in the batch share.
    return not cfg.get("use_dora") and cfg.get("bias", "none") == "none"


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _total_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def validate_submission(
    sub: Submission, base: BaseModelInfo, task_type: str, limits: EvalLimits
) -> ValidatedSubmission:
    """Accept or refuse one upload; raises SubmissionRefused(reason)."""
    root = Path(sub.path)
    files = list_upload_files(root, limits)
    if not files:
        raise SubmissionRefused("the upload is empty")
    refuse_code_and_pickles(root, files)
    if limits.verify_sha256 and sub.sha256 and directory_sha256(root) != sub.sha256:
        raise SubmissionRefused("content does not match the announced sha256")
    if task_type == "IMAGE":
        return _validate_image(sub, root, files, base, limits)
    return _validate_text(sub, root, files, base, limits)


def _validate_text(
    sub: Submission, root: Path, files: list[Path], base: BaseModelInfo, limits: EvalLimits
) -> ValidatedSubmission:
    adapter_config = root / "adapter_config.json"
    weights = sorted(f for f in files if f.parent == root and f.suffix == ".safetensors")
    if adapter_config.is_file():
        adapter_files = [f for f in weights if f.name.startswith("adapter_model")]
        if len(adapter_files) != 1:
            raise SubmissionRefused("an adapter upload needs exactly one adapter_model.safetensors")
        size = _total_bytes(adapter_files)
        if size > limits.max_adapter_bytes:
            raise SubmissionRefused(f"adapter is {size} bytes, over the cap of {limits.max_adapter_bytes}")
        cfg = sanitise_lora_config(_read_json(adapter_config), limits.max_lora_rank)
        shapes = read_and_check_tensors(adapter_files, root)

        def prefix_of(key: str) -> str | None:
            return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else None

        check_lora_shapes(shapes, base.weights.shapes, limits.max_lora_rank, prefix_of)
        check_base_layers_unchanged(adapter_files[0], base.weights)
        return ValidatedSubmission(sub.hotkey, str(root), "adapter", _mixed_batch_ok(cfg), cfg)

    config_path = root / "config.json"
    if not config_path.is_file():
        raise SubmissionRefused("neither adapter_config.json (LoRA) nor config.json (full model) found")
    if not weights:
        raise SubmissionRefused("no .safetensors weights found")
    size = _total_bytes(weights)
    cap = int(base.weights.nbytes * limits.max_full_model_ratio)
    if size > cap:
        raise SubmissionRefused(f"model weights are {size} bytes, over the cap of {cap}")
    check_config_matches(_read_json(config_path), base.config)
    shapes = read_and_check_tensors(weights, root)
    check_full_shapes(shapes, base.weights.shapes)
    return ValidatedSubmission(sub.hotkey, str(root), "full", False, None)


def check_base_layers_unchanged(adapter_file: Path, base: WeightsInfo) -> None:
    """Refuse an adapter that ships changed copies of base tensors (".base_layer." keys).

    Adapters of a group share one base model, and the base is the DPO/GRPO reference; the
    loader drops these tensors, so they are accepted only when identical to the base's.
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(adapter_file), framework="pt") as sf:
        for key in sf.keys():
            if ".base_layer." not in key:
                continue
            base_key = key[len(PEFT_PREFIX) :].replace(".base_layer.", ".")
            file, stored = base.locations[base_key]
            with safe_open(file, framework="pt") as bf:
                expected = bf.get_tensor(stored)
            if not torch.equal(sf.get_tensor(key).to(expected.dtype), expected):
                raise SubmissionRefused(
                    f"adapter tensor {key} changes the base model's {base_key}; "
                    "train it as modules_to_save or submit a full model"
                )


def check_config_matches(config: dict[str, Any], base_config: dict[str, Any]) -> None:
    for name in ARCHITECTURE_FIELDS:
        if name in base_config and config.get(name) != base_config[name]:
            raise SubmissionRefused(
                f"config {name}={config.get(name)!r} does not match the base model's {base_config[name]!r}"
            )
    if config.get("auto_map"):
        raise SubmissionRefused("config auto_map (custom model code) is not allowed")


def check_full_shapes(shapes: dict[str, tuple[int, ...]], base_shapes: dict[str, tuple[int, ...]]) -> None:
    for key, shape in shapes.items():
        if key not in base_shapes:
            raise SubmissionRefused(f"tensor {key} does not exist in the base model")
        if base_shapes[key] != shape:
            raise SubmissionRefused(f"tensor {key} has shape {list(shape)}, the base's is {list(base_shapes[key])}")
    missing = [k for k in base_shapes if k not in shapes and k != "lm_head.weight"]
    if missing:
        raise SubmissionRefused(f"{len(missing)} base tensors are missing, e.g. {missing[0]}")


def _read_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > 1024**2:
        raise SubmissionRefused(f"{path.name} is larger than 1 MiB")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SubmissionRefused(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise SubmissionRefused(f"{path.name} must hold a JSON object")
    return value


def _validate_image(
    sub: Submission, root: Path, files: list[Path], base: BaseModelInfo, limits: EvalLimits
) -> ValidatedSubmission:
    """Image submissions are diffusers LoRA files in PEFT key layout (unet./text_encoder. prefixes)."""
    from safetensors import safe_open

    weights = [f for f in files if f.suffix == ".safetensors" and f.parent == root]
    if len(weights) != 1:
        raise SubmissionRefused("an image submission must hold exactly one LoRA .safetensors file at its top level")
    size = _total_bytes(weights)
    if size > limits.max_adapter_bytes:
        raise SubmissionRefused(f"LoRA file is {size} bytes, over the cap of {limits.max_adapter_bytes}")
    try:
        with safe_open(str(weights[0]), framework="pt") as sf:
            metadata = sf.metadata() or {}
    except Exception as exc:
        raise SubmissionRefused(f"{weights[0].name} is not a valid safetensors file ({exc})") from exc
    raw_meta = metadata.get("lora_adapter_metadata")
    if raw_meta:
        try:
            meta = json.loads(raw_meta)
        except ValueError as exc:
            raise SubmissionRefused(f"lora_adapter_metadata is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise SubmissionRefused("lora_adapter_metadata must be a JSON object")
        sanitise_lora_config(meta, limits.max_lora_rank)
    shapes = read_and_check_tensors(weights, root)
    combined = {f"{comp}.{k}": s for comp, info in base.components.items() for k, s in info.shapes.items()}

    def prefix_of(key: str) -> str | None:
        comp = key.split(".", 1)[0]
        return key if comp in base.components else None

    check_lora_shapes(shapes, combined, limits.max_lora_rank, prefix_of)
    if any(_strip_lora_suffix(k) is None for k in shapes):
        raise SubmissionRefused("image LoRA files may hold LoRA tensors only")
    return ValidatedSubmission(sub.hotkey, str(root), "adapter", False, None, weight_file=weights[0].name)
