"""A customer's whole journey through the CLI, against a running local mesh with a miner.

Real processes throughout: embedded NATS and Redis, the six services (keys required, datasets
checked at CreateTask), one reference miner training a tiny model, and `gradients …` run as
subprocesses exactly as a customer and an operator would: account created, JSONL uploaded,
task watched to SCORED, result (winner against the base model), download (sha256 equal to the
miner's upload), peft loads the adapter and generates, `--merge` writes a full model.
The second test runs the shell blocks of docs/customers.md against the same mesh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gradients.mesh import Mesh, MeshOptions
from gradients.runtime.auth import dev_keypair
from gradients.runtime.embedded import spawn

ROOT = Path(__file__).resolve().parents[2]
TIME_SCALE = 20.0  # real seconds per nominal hour: `--hours 2` trains for 40 s
ROWS = 96
_ENTRY_POINT = Path(sys.executable).with_name("gradients")
GRADIENTS = [str(_ENTRY_POINT)] if _ENTRY_POINT.exists() else [sys.executable, "-m", "gradients.cli"]


@dataclass
class LocalMesh:
    mesh: Mesh
    base_model: Path
    dataset: Path
    miner_log: Path
    miner_dir: Path
    work: Path

    @property
    def validator(self) -> str:
        return self.mesh.addresses["task_service"]

    def env(self, api_key: str | None = None, **extra: str) -> dict[str, str]:
        """A customer's shell: nothing of the test's GRADIENTS_* settings, the validator, a key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIENTS_")}
        env.update(
            GRADIENTS_VALIDATOR=self.validator,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            COLUMNS="200",
        )
        if api_key is not None:
            env["GRADIENTS_API_KEY"] = api_key
        env.update(extra)
        return env

    def cli(
        self, *args: str, api_key: str | None = None, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*GRADIENTS, *args],
            env=self.env(api_key, **extra),
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def write_dataset(path: Path) -> Path:
    """A learnable instruct dataset (word reversal and sums: distinct rows, so the test split
    leaves training rows) under the customer's own column names."""
    from gradients.models import procedural

    rows = procedural.generate("strings", ROWS // 2, seed=3) + procedural.generate("arithmetic", ROWS // 2, seed=3)
    path.write_text(
        "".join(
            json.dumps({"question": r["instruction"], "context": r["input"], "answer": r["output"]}) + "\n"
            for r in rows
        )
    )
    return path


def wait_for_miner(mesh: Mesh, timeout_s: float = 90) -> None:
    from gradients.v1 import selector_pb2, selector_pb2_grpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(mesh.addresses["selector"]) as channel:
                reply = selector_pb2_grpc.SelectorStub(channel).ListMiners(
                    selector_pb2.ListMinersRequest(connected_only=True), timeout=5
                )
            if any(m.connected for m in reply.miners):
                return
        except grpc.RpcError:
            pass
        assert not mesh.dead_children(), [c.log_tail() for c in mesh.dead_children()]
        time.sleep(0.5)
    raise AssertionError("the miner did not connect")


@pytest.fixture(scope="module")
def local_mesh(tmp_path_factory):
    from gradients.models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("customer")
    base = build_tiny_llama(root / "models" / "tiny-llama", seed=0)
    dataset = write_dataset(root / "train.jsonl")
    validator, miner = dev_keypair("customer-journey-validator"), dev_keypair("customer-journey-miner")
    env = {
        "GRADIENTS_TASK_AUTH": "required",
        "GRADIENTS_TIME_SCALE": str(TIME_SCALE),
        "GRADIENTS_TASK_TICK_S": "0.25",
        "GRADIENTS_TASK_RETRY_WAIT_HOURS": "0.1",
        "GRADIENTS_SELECTOR_ALLOWED_HOTKEYS": miner.ss58_address,
        "GRADIENTS_SELECTOR_VALIDATOR_HOTKEY": validator.ss58_address,
        "GRADIENTS_DATASET_MAX_SYNTH_ROWS": "8",
        "GRADIENTS_DATASET_LOCAL_MAX_NEW_TOKENS": "24",
        "GRADIENTS_CHAIN_BACKEND": "ledger",
        "GRADIENTS_BUS_ACK_WAIT_S": "15",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    mesh = Mesh(MeshOptions(data_dir=root / "mesh", extra_env=env, ready_timeout_s=120))
    miner_process = None
    try:
        mesh.start()
        mesh.wait_ready()
        miner_log = mesh.data_dir / "logs" / "miner.log"
        miner_env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        miner_process = spawn(
            [
                sys.executable,
                "-m",
                "gradients.cli",
                "miner",
                "run",
                "--validator",
                mesh.addresses["selector"],
                "--validator-hotkey",
                validator.ss58_address,
                "--dev-key",
                "customer-journey-miner",
                "--work-dir",
                str(root / "miner"),
                "--strategy",
                "autotrain-default",
                "--upload-margin",
                "6",
            ],
            miner_log,
            miner_env,
        )
        wait_for_miner(mesh)
        work = root / "customer"
        work.mkdir()
        yield LocalMesh(mesh, base, dataset, miner_log, root / "miner", work)
    finally:
        if miner_process is not None and miner_process.poll() is None:
            miner_process.send_signal(signal.SIGTERM)
            try:
                miner_process.wait(5)
            except subprocess.TimeoutExpired:
                miner_process.kill()
                miner_process.wait()
        mesh.stop()


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def miner_upload_sha256(m: LocalMesh, task_id: str, tmp: Path) -> str:
    """The digest of what the miner uploaded: its adapter folder packed as the SDK packs it
    (deterministic), checked against the digest prefix the miner logged."""
    from miner_sdk.archive import pack

    logged = re.search(rf"uploaded task {re.escape(task_id)} .*sha256 ([0-9a-f]{{12,64}})", m.miner_log.read_text())
    assert logged, f"the miner never logged an upload of {task_id}:\n{m.miner_log.read_text()[-3000:]}"
    digest = sha256_of(pack(m.miner_dir / task_id / "out" / "adapter", tmp / "miner-upload.tar"))
    assert digest.startswith(logged.group(1))
    return digest


@pytest.mark.timeout(420)
def test_customer_journey_through_the_cli(local_mesh: LocalMesh, tmp_path: Path):
    m = local_mesh
    data_dir = str(m.mesh.data_dir)

    # The operator creates an account in the validator's Redis (found through mesh.json).
    created = json.loads(
        ok(m.cli("accounts", "create", "alice", "--tasks-per-hour", "5", "--data-dir", data_dir, "--json")).stdout
    )
    key = created["api_key"]
    assert key.startswith("gm_") and created["tasks_per_hour"] == 5 and created["revoked"] is False
    listed = ok(m.cli("accounts", "list", "--data-dir", data_dir, "--json")).stdout
    assert "alice" in {a["name"] for a in json.loads(listed)["accounts"]} and key not in listed

    # The customer uploads a JSONL under their own column names and creates a task.
    proc = ok(
        m.cli(
            "task",
            "create",
            "--type",
            "instruct",
            "--base-model",
            str(m.base_model),
            "--dataset",
            str(m.dataset),
            "--column",
            "instruction=question",
            "--column",
            "input=context",
            "--column",
            "output=answer",
            "--hours",
            "2",
            "--request-id",
            "journey-1",
            "--json",
            api_key=key,
        )
    )
    answer = json.loads(proc.stdout)
    task_id = answer["task"]["task_id"]
    assert answer["upload"]["uri"] == f"upload:{sha256_of(m.dataset)}" and answer["upload"]["format"] == "jsonl"
    assert answer["task"]["account"] == "alice" and answer["task"]["dataset"]["uri"] == answer["upload"]["uri"]
    assert key not in proc.stdout + proc.stderr

    # Another account cannot see it; an unknown key and a revoked one are refused, with a hint.
    bob = json.loads(ok(m.cli("accounts", "create", "bob", "--data-dir", data_dir, "--json")).stdout)["api_key"]
    other = m.cli("task", "get", task_id, api_key=bob)
    assert other.returncode == 2 and other.stderr.startswith("error: NOT_FOUND: "), other.stderr
    bad_key = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    refused = m.cli("task", "list", api_key=bad_key)
    assert refused.returncode == 2 and refused.stderr.startswith("error: UNAUTHENTICATED: "), refused.stderr
    assert "hint:" in refused.stderr and bad_key not in refused.stdout + refused.stderr
    ok(m.cli("accounts", "revoke", "bob", "--data-dir", data_dir))
    revoked = m.cli("task", "list", "--json", api_key=bob)
    assert revoked.returncode == 2 and json.loads(revoked.stdout)["error"]["code"] == "UNAUTHENTICATED"
    no_key = m.cli("task", "get", task_id, api_key="")
    assert no_key.returncode == 2 and "GRADIENTS_API_KEY" in no_key.stderr

    # The same request id gives the same task.
    again = json.loads(
        ok(
            m.cli(
                "task",
                "create",
                "--type",
                "instruct",
                "--base-model",
                str(m.base_model),
                "--dataset",
                answer["upload"]["uri"],
                "--format",
                "jsonl",
                "--column",
                "instruction=question",
                "--column",
                "input=context",
                "--column",
                "output=answer",
                "--hours",
                "2",
                "--request-id",
                "journey-1",
                "--json",
                api_key=key,
            )
        ).stdout
    )
    assert again["task"]["task_id"] == task_id and again["upload"] is None

    # Watched to SCORED: exit 0, the stages on the way.
    watched = ok(m.cli("task", "watch", task_id, "--timeout", "300", api_key=key, timeout=330))
    assert "SCORED" in watched.stdout and "TRAINING" in watched.stdout, watched.stdout
    listed_tasks = json.loads(ok(m.cli("task", "list", "--state", "scored", "--json", api_key=key)).stdout)["tasks"]
    assert [t["task_id"] for t in listed_tasks] == [task_id]

    # The result: the winner against the base model, on the same splits.
    result = json.loads(ok(m.cli("task", "result", task_id, "--json", api_key=key)).stdout)
    assert result["state"] == "SCORED" and result["has_base"] is True
    assert result["winner_hotkey"] == dev_keypair("customer-journey-miner").ss58_address
    assert result["winner"]["test"] < result["base"]["test"], result
    assert result["improvement"] > 0 and "rank1_confidence" not in result  # one valid submission
    table = ok(m.cli("task", "result", task_id, api_key=key)).stdout
    assert "winner" in table and "base" in table and "n/a (one valid submission)" in table, table

    # The download is the miner's upload, byte for byte; --merge writes a full model.
    out = tmp_path / "winner"
    got = json.loads(
        ok(m.cli("task", "download", task_id, "--out", str(out), "--merge", "--json", api_key=key, timeout=300)).stdout
    )
    archive = Path(got["archive"])
    assert sha256_of(archive) == got["sha256"] == result["winner_sha256"] == miner_upload_sha256(m, task_id, tmp_path)
    assert got["kind"] == "adapter" and (out / "adapter_config.json").is_file()
    assert Path(got["merged"]) == out / "merged" and not list(out.glob(".*.part"))

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(m.base_model)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(m.base_model), out).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "reverse the word\nhello"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    generated = tuned.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()
    with torch.no_grad():  # the merged model is the adapted model, not the base
        assert torch.allclose(merged(**inputs).logits, tuned(**inputs).logits, atol=1e-4)


def docs_script() -> str:
    text = (ROOT / "docs" / "customers.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 5, "docs/customers.md lost its runnable blocks"
    return "\n".join(blocks)


@pytest.mark.timeout(420)
def test_customer_guide_runs_as_written(local_mesh: LocalMesh, tmp_path: Path):
    m = local_mesh
    key = json.loads(
        ok(m.cli("accounts", "create", "guide-reader", "--data-dir", str(m.mesh.data_dir), "--json")).stdout
    )["api_key"]
    script = docs_script()
    bin_dir = str(Path(sys.executable).parent)  # `gradients` and `python` of this checkout
    env = m.env(
        key,
        BASE_MODEL=str(m.base_model),
        DATASET=str(m.dataset),
        GRADIENTS_REDIS_URL=m.mesh.redis_url,
        PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
    )
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    )
    assert "SCORED" in proc.stdout
    assert (tmp_path / "winner" / "adapter_config.json").is_file()
    assert (tmp_path / "winner" / "merged" / "config.json").is_file()
    assert key not in proc.stdout + proc.stderr
