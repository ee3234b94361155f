"""Children of the mesh: started safely from a gRPC process, and gone when their parent dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradients.runtime import embedded

HELPER = Path(__file__).parent.parent / "integration" / "spawn_under_grpc.py"


@pytest.mark.timeout(180)
def test_children_spawned_while_grpc_is_busy_do_not_crash():
    """With a preexec_fn (a plain fork), about one child in five of a busy gRPC process died with
    SIGSEGV or SIGABRT in grpc's fork handlers before exec; that is how respawned services and a
    restarted redis died in the reliability suite."""
    out = subprocess.run([sys.executable, str(HELPER), "60"], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    assert codes == {"0": 60}, codes


def test_child_exits_when_its_parent_dies(tmp_path):
    """A parent killed with SIGKILL takes its children with it (PR_SET_PDEATHSIG via the guard)."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from gradients.runtime import embedded; "
                f"c = embedded.spawn(['sleep', '60'], Path({str(tmp_path / 'log')!r})); "
                f"Path({str(pid_file)!r}).write_text(str(c.pid)); time.sleep(60)"
            ),
        ]
    )
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived its parent"


def test_guard_is_transparent(tmp_path):
    """The guard execs into the command: same pid, same exit status, same output."""
    child = embedded.spawn([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(7)"], tmp_path / "log")
    assert child.wait(30) == 7
    assert int((tmp_path / "log").read_text().strip()) == child.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (reaped by nobody yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
