"""Settings of task_service (environment variables)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gradients.runtime.config import non_negative, one_of, positive, setting
from services.task_service.logic import DatasetRef, DelayPolicy, SyntheticMix, SyntheticPools, TaskType


def _mix_check(value: str) -> str | None:
    try:
        parse_mix(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_mix(value: str) -> SyntheticMix:
    parts = [p for p in value.split(",") if p.strip()]
    if len(parts) != 4:
        raise ValueError("expected 4 comma-separated probabilities: instruct,dpo,grpo,image")
    return SyntheticMix(*(float(p) for p in parts))


def _pools_check(value: str) -> str | None:
    if not value:
        return None
    try:
        load_pools(Path(value))
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot load synthetic pools: {exc}"
    return None


def load_pools(path: Path) -> SyntheticPools:
    """JSON: {"base_models": {"INSTRUCT_TEXT": ["path", ...]}, "datasets": {"INSTRUCT_TEXT": [{"uri": ..., "rows": N}]},
    optional "reward_functions": {"GRPO": [{"name": "numeric_match", "weight": 1.0, "params": {}}]},
    optional "params_b": {"path": 0.135}}."""
    raw = json.loads(Path(path).read_text())
    return SyntheticPools(
        base_models={TaskType[k]: tuple(v) for k, v in raw["base_models"].items()},
        datasets={
            TaskType[k]: tuple(DatasetRef(d["uri"], int(d["rows"])) for d in v) for k, v in raw["datasets"].items()
        },
    )


@dataclass(frozen=True)
class TaskServiceSettings:
    max_active: int = setting(
        "GRADIENTS_TASK_MAX_ACTIVE", 8, "tasks past PENDING at once (organic first)", check=positive
    )
    synthetic_enabled: bool = setting("GRADIENTS_TASK_SYNTHETIC_ENABLED", False, "create synthetic tasks to fill gaps")
    max_synthetic: int = setting(
        "GRADIENTS_TASK_MAX_SYNTHETIC", 2, "cap on concurrent synthetic tasks", check=non_negative
    )
    synthetic_mix: str = setting(
        "GRADIENTS_TASK_SYNTHETIC_MIX",
        "0.25,0.10,0.30,0.35",
        "eq 1: P(instruct),P(dpo),P(grpo),P(image)",
        check=_mix_check,
    )
    synthetic_pools: str = setting(
        "GRADIENTS_TASK_SYNTHETIC_POOLS",
        "",
        "JSON file of base models and datasets per type for synthetic tasks",
        check=_pools_check,
    )
    synthetic_limit: int = setting(
        "GRADIENTS_TASK_SYNTHETIC_LIMIT",
        0,
        "synthetic tasks to create in all (0 = no limit; demos stop after N)",
        check=non_negative,
    )
    synthetic_seed: int | None = setting(
        "GRADIENTS_TASK_SYNTHETIC_SEED", None, "seed for synthetic draws (empty = random)"
    )
    delay_c_hours: float = setting(
        "GRADIENTS_TASK_DELAY_C_HOURS", 0.25, "c in dt_delay = dt_initial + c*attempts (§3.7)", check=non_negative
    )
    max_delays: int = setting(
        "GRADIENTS_TASK_MAX_DELAYS", 6, "delays before a task FAILS with no miners", check=non_negative
    )
    min_acceptances: int = setting(
        "GRADIENTS_TASK_MIN_ACCEPTANCES", 1, "accepted miners needed to start training", check=positive
    )
    retry_wait_hours: float = setting(
        "GRADIENTS_TASK_RETRY_WAIT_HOURS",
        0.25,
        "wait (nominal hours) before a DELAYED task looks for miners again",
        check=non_negative,
    )
    submission_grace_s: float = setting(
        "GRADIENTS_TASK_SUBMISSION_GRACE_S",
        2.0,
        "seconds after the deadline for in-flight upload events",
        check=non_negative,
    )
    tick_s: float = setting("GRADIENTS_TASK_TICK_S", 0.5, "scheduler and timer period (seconds)", check=positive)
    # ---- customers
    auth: str = setting(
        "GRADIENTS_TASK_AUTH",
        "required",
        "customer API keys: required (production) or open (local development: no key needed, every task visible)",
        check=one_of("required", "open"),
    )
    check_at_create: bool = setting(
        "GRADIENTS_TASK_CHECK_AT_CREATE",
        True,
        "CreateTask checks the base model and (with dataset_prep's InspectDataset) the dataset before storing a task",
    )
    inspect_timeout_s: float = setting(
        "GRADIENTS_TASK_INSPECT_TIMEOUT_S",
        120.0,
        "seconds CreateTask waits for the dataset check",
        check=positive,
    )
    max_dataset_bytes: int = setting(
        "GRADIENTS_TASK_MAX_DATASET_BYTES",
        2 * 1024**3,
        "largest dataset a customer may upload (bytes)",
        check=positive,
    )
    hf_token: str = setting(
        "GRADIENTS_TASK_HF_TOKEN",
        "",
        "Hugging Face token for pushing winners to the customer's result_model_name (empty = no push; download only)",
    )

    def delay_policy(self) -> DelayPolicy:
        return DelayPolicy(
            c_hours=self.delay_c_hours,
            max_attempts=self.max_delays,
            min_acceptances=self.min_acceptances,
            retry_wait_hours=self.retry_wait_hours,
        )

    def pools(self) -> SyntheticPools | None:
        return load_pools(Path(self.synthetic_pools)) if self.synthetic_pools else None

    def pool_extras(self) -> dict:
        """Optional parts of the pools file: "reward_functions" per type (GRPO needs them) and
        "params_b" per base model (phi(M) in billions, for eq 12)."""
        if not self.synthetic_pools:
            return {}
        raw = json.loads(Path(self.synthetic_pools).read_text())
        return {"reward_functions": raw.get("reward_functions", {}), "params_b": raw.get("params_b", {})}
