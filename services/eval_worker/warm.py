"""Warm bases: a worker keeps a base model loaded across jobs of the same base (CPU).

A cold evaluation child loads the base from disk for every group. A warm holder is a process
started from the same fork server that loads one base once, under the same limits as a child
(address-space cap, torch threads), and then runs each group in a fork of itself: the fork
finds the loaded base in `WARM_BASES` (its own copy-on-write copy, so what an adapter or a merge
does to it never reaches the holder or the next job), and a crash, a timeout or an allocation
failure ends that fork only, reported as a `ChildOutcome` like a cold child's.

The worker keeps at most `EvalLimits.warm_bases` holders (least recently used is closed first),
which bounds the memory they hold; a busy holder is not waited for (the group runs cold). CUDA
keeps cold children: a CUDA context does not survive a fork.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from services.eval_worker.isolation import ChildLimits, ChildOutcome, _child_entry, _exit_reason, child_context

# In a holder and its forks: the loaded base, by (real path, device); a fork takes it once.
WARM_BASES: dict[tuple[str, str], Any] = {}
# How long past the group's own timeout the worker waits for a holder that stopped answering.
HOLDER_GRACE_S = 30.0


def warm_key(path: str, device: str) -> tuple[str, str]:
    return os.path.realpath(path), device


def take_warm_base(path: str, device: str) -> Any | None:
    """The loaded base for `path` if this process is a fork of a warm holder (only once)."""
    return WARM_BASES.pop(warm_key(path, device), None)


def _wait_status_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return _exit_reason(-os.WTERMSIG(status))
    return _exit_reason(os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)


def _run_forked(
    fn: Callable[..., Any], args: tuple[Any, ...], limits: ChildLimits, holder_conn: Any
) -> tuple[str, Any]:
    """fn(*args) in a fork of this holder, bounded by limits.timeout_s: ("ok", value) or ("error", reason)."""
    receiver, sender = child_context().Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the fork: run the group and leave without running the holder's cleanup
        try:
            receiver.close()
            holder_conn.close()
            _child_entry(sender, fn, args, replace(limits, memory_bytes=None))  # the cap is inherited
        finally:
            os._exit(0)
    sender.close()
    deadline = time.monotonic() + limits.timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                return "error", f"evaluation timed out after {limits.timeout_s:.0f} s"
            if receiver.poll(min(remaining, 0.5)):
                try:
                    message: tuple[str, Any] = receiver.recv()
                    return message
                except (EOFError, OSError):
                    break
            done, status = os.waitpid(pid, os.WNOHANG)
            if done and not receiver.poll(0):
                return "error", _wait_status_reason(status)
        _, status = os.waitpid(pid, 0)
        pid = 0
        return "error", _wait_status_reason(status)
    finally:
        receiver.close()
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _holder_main(conn: Any, base_dir: str, device: str, limits: ChildLimits) -> None:
    """The holder: load the base under the child limits, then one forked run per request."""
    try:
        if limits.memory_bytes:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if limits.torch_threads:
            import torch

            torch.set_num_threads(limits.torch_threads)
        from services.eval_worker.model_loading import load_causal_lm

        WARM_BASES[warm_key(base_dir, device)] = load_causal_lm(base_dir, device)
        conn.send(("ready", None))
    except BaseException as exc:  # noqa: BLE001 - the worker falls back to cold children
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
        return
    model = WARM_BASES[warm_key(base_dir, device)]
    while True:
        try:
            fn, args, group_limits = conn.recv()
        except (EOFError, OSError):
            return  # the worker is gone
        WARM_BASES[warm_key(base_dir, device)] = model  # every fork finds it
        conn.send(_run_forked(fn, args, group_limits, conn))


@dataclass
class _Holder:
    key: tuple[Any, ...]
    process: Any
    conn: Any
    busy: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=10)


class WarmBases:
    """The worker's warm holders, at most `limit` of them (least recently used closed first)."""

    def __init__(self) -> None:
        self._holders: OrderedDict[tuple[Any, ...], _Holder] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._holders)

    def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], limits: ChildLimits, base_dir: str, limit: int
    ) -> ChildOutcome | None:
        """fn(*args) in a fork of the warm holder of base_dir; None: run it in a cold child instead."""
        if limit <= 0 or limits.device != "cpu":
            return None
        key = (*warm_key(base_dir, limits.device), limits.torch_threads, limits.memory_bytes)
        holder = self._acquire(key, base_dir, limits, limit)
        if holder is None:
            return None
        try:
            holder.conn.send((fn, args, limits))
            if holder.conn.poll(limits.timeout_s + HOLDER_GRACE_S):
                status, payload = holder.conn.recv()
                if status == "ok":
                    return ChildOutcome(True, value=payload)
                return ChildOutcome(False, reason=str(payload))
        except (EOFError, OSError):
            pass
        finally:
            holder.busy.release()
        # The holder died or stopped answering: drop it; the group runs cold.
        self._drop(holder)
        return None

    def _acquire(self, key: tuple[Any, ...], base_dir: str, limits: ChildLimits, limit: int) -> _Holder | None:
        with self._lock:
            holder = self._holders.get(key)
            if holder is not None:
                if not holder.process.is_alive():
                    self._holders.pop(key)
                    holder.close()
                    holder = None
                elif not holder.busy.acquire(blocking=False):
                    return None  # another group of this base is running: do not wait
                else:
                    self._holders.move_to_end(key)
                    return holder
            while len(self._holders) >= limit:
                idle = next((h for h in self._holders.values() if not h.busy.locked()), None)
                if idle is None:
                    return None
                self._holders.pop(idle.key)
                idle.close()
            holder = self._start(key, base_dir, limits)
            if holder is None:
                return None
            holder.busy.acquire()
            self._holders[key] = holder
            return holder

    def _start(self, key: tuple[Any, ...], base_dir: str, limits: ChildLimits) -> _Holder | None:
        ctx = child_context()
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_holder_main, args=(theirs, base_dir, limits.device, limits), daemon=True)
        process.start()
        theirs.close()
        holder = _Holder(key, process, ours)
        try:
            if ours.poll(limits.timeout_s) and ours.recv()[0] == "ready":
                return holder
        except (EOFError, OSError):
            pass
        holder.close()  # could not load the base: a cold child will say why
        return None

    def _drop(self, holder: _Holder) -> None:
        with self._lock:
            if self._holders.get(holder.key) is holder:
                self._holders.pop(holder.key)
        holder.close()

    def close(self) -> None:
        with self._lock:
            holders, self._holders = list(self._holders.values()), OrderedDict()
        for holder in holders:
            holder.close()
