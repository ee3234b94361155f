"""Run one evaluation group in a fresh child process with memory and time limits.

The child is forked from a multiprocessing "forkserver": a clean interpreter started once per
worker that has imported torch, transformers and peft and done nothing else, so a child
inherits no state, locks or CUDA context from the worker, yet does not pay the seconds of
importing those libraries again for every job (spawn did: about 6 s of CPU per job, the
bottleneck of a loaded CPU worker). On CPU the child caps its own address space with
RLIMIT_AS before loading anything, so a model or batch too large for the cap fails with an
allocation error in the child instead of taking the machine down; on CUDA no RLIMIT_AS is set
(the CUDA driver reserves huge virtual ranges) and GPU memory errors are reported the same way.
A crash (segfault, the kernel's OOM killer, os._exit), an exception or a timeout comes back as
a `ChildOutcome` with a reason; it never raises in the worker.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_OOM_MARKERS = ("can't allocate memory", "out of memory", "cannot allocate memory", "memoryerror")


@dataclass(frozen=True)
class ChildLimits:
    memory_bytes: int | None  # RLIMIT_AS of the child (ignored when device == "cuda")
    timeout_s: float
    torch_threads: int | None = None
    device: str = "cpu"


@dataclass
class ChildOutcome:
    ok: bool
    value: Any = None
    reason: str = ""


def _describe_exception(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or any(m in text.lower() for m in _OOM_MARKERS):
        return f"out of memory ({text[:500]})"
    return text[:2000]


def _child_entry(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], limits: ChildLimits) -> None:
    try:
        if limits.memory_bytes and limits.device != "cuda":
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if limits.torch_threads:
            import torch

            torch.set_num_threads(limits.torch_threads)
        value = fn(*args)
        conn.send(("ok", value))
    except BaseException as exc:  # noqa: BLE001 - everything becomes a stated reason
        try:
            conn.send(("error", _describe_exception(exc)))
        except BaseException:
            pass
    finally:
        conn.close()


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "the evaluation process did not exit"
    if exitcode < 0:
        sig = -exitcode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (likely killed for using too much memory)" if sig == signal.SIGKILL else ""
        return f"the evaluation process was killed by {name}{hint}"
    return f"the evaluation process exited with code {exitcode} without a result"


# Imported once by the fork server (never CUDA-initialised there); a missing one is skipped.
CHILD_PRELOAD = (
    "torch",
    "transformers",
    "peft",
    "services.eval_worker.orchestration",
    "services.eval_worker.text_eval",
)


def child_context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(CHILD_PRELOAD))  # read when the fork server starts (the first child)
    return ctx


def run_in_child(fn: Callable[..., Any], args: tuple[Any, ...], limits: ChildLimits) -> ChildOutcome:
    """fn(*args) in a fresh child; fn must be importable (module level) and args picklable."""
    ctx = child_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry, args=(sender, fn, args, limits), daemon=True)
    proc.start()
    sender.close()  # so recv() sees EOF when the child dies
    deadline = time.monotonic() + limits.timeout_s
    message = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ChildOutcome(False, reason=f"evaluation timed out after {limits.timeout_s:.0f} s")
            if receiver.poll(min(remaining, 0.5)):
                try:
                    message = receiver.recv()
                except (EOFError, OSError):
                    message = None
                break
            if not proc.is_alive() and not receiver.poll(0):
                break
    finally:
        if message is None or proc.is_alive():
            proc.join(timeout=5 if message is not None else 0.5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        receiver.close()
    if message is None:
        return ChildOutcome(False, reason=_exit_reason(proc.exitcode))
    status, payload = message
    if status == "ok":
        return ChildOutcome(True, value=payload)
    return ChildOutcome(False, reason=str(payload))


def run_in_process(fn: Callable[..., Any], args: tuple[Any, ...]) -> ChildOutcome:
    """Same contract without a child (EvalLimits.isolate=False): for tests and debugging only."""
    try:
        return ChildOutcome(True, value=fn(*args))
    except Exception as exc:  # noqa: BLE001
        return ChildOutcome(False, reason=_describe_exception(exc))
