"""Launch reward code in a separate, locked-down process (never `exec` in the worker).

`run_sandboxed(code, function, completions, kwargs, limits)` starts
`[unshare -n] python -I -B sandbox_runner.py <limits>` in an empty temporary folder with a
minimal environment and its own process group, sends the request on stdin, reads at most
`max_output_bytes` of the answer, and kills the whole process group after `wall_seconds`.
`-I` ignores PYTHON* variables, the user site and the current folder. The runner sets the
resource limits on itself (RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE=0, ...), blocks sockets and
other dangerous operations with an audit hook, and drops root; see sandbox_runner.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.eval_worker.job import SandboxLimits

RUNNER = Path(__file__).with_name("sandbox_runner.py")


@dataclass
class SandboxResult:
    ok: bool
    values: list[float] = field(default_factory=list)
    error: str = ""


@lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """The unshare invocation that gives the child an empty network namespace here, if any."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for prefix in ((exe, "--net"), (exe, "--net", "--map-root-user")):
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return ()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_sandboxed(
    code: str, function: str | None, completions: list[str], kwargs: dict[str, Any], limits: SandboxLimits
) -> SandboxResult:
    request = json.dumps({"code": code, "function": function, "completions": completions, "kwargs": kwargs})
    runner_limits = json.dumps({"memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds})
    cmd = [*network_namespace_prefix(), sys.executable, "-I", "-B", str(RUNNER), runner_limits]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    chunks: list[bytes] = []
    overflow = threading.Event()

    with tempfile.TemporaryDirectory(prefix="reward-sandbox-") as cwd:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None  # both are PIPEs

        def feed() -> None:
            try:
                stdin.write(request.encode())
            except (BrokenPipeError, OSError):
                pass
            finally:
                try:
                    stdin.close()
                except OSError:
                    pass

        def drain() -> None:
            size = 0
            for chunk in iter(lambda: stdout.read(65536), b""):
                size += len(chunk)
                if size > limits.max_output_bytes:
                    overflow.set()
                    _kill_group(proc)
                    return
                chunks.append(chunk)

        threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
        for t in threads:
            t.start()
        try:
            proc.wait(timeout=limits.wall_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)  # also ends anything the reward code left behind
        proc.wait()
        for t in threads:
            t.join(timeout=5)
        stdout.close()

    if timed_out:
        return SandboxResult(False, error=f"timed out after {limits.wall_seconds:g} s (wall clock)")
    if overflow.is_set():
        return SandboxResult(False, error=f"wrote more than {limits.max_output_bytes} bytes of output")
    raw = b"".join(chunks)
    if not raw:
        rc = proc.returncode
        if rc is not None and rc < 0 and -rc in (signal.SIGXCPU, signal.SIGKILL):
            return SandboxResult(False, error=f"exceeded its CPU time limit of {limits.cpu_seconds} s or was killed")
        return SandboxResult(
            False, error=f"the sandbox process ended with code {rc} and no answer (out of memory or crashed)"
        )
    try:
        answer = json.loads(raw)
    except ValueError:
        return SandboxResult(False, error="the sandbox answer was not valid JSON")
    if not answer.get("ok"):
        return SandboxResult(False, error=str(answer.get("error", "unknown error")))
    values = answer.get("values")
    if not isinstance(values, list) or len(values) != len(completions):
        return SandboxResult(False, error="the reward returned the wrong number of values")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return SandboxResult(False, error="the reward returned NaN, Inf or non-numbers")
    return SandboxResult(True, values=[float(v) for v in values])
