import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh():
    """Fails when protos/ changed without re-running scripts/gen_protos.py."""
    proc = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_event_subject_has_a_message_and_stream():
    from gradients.runtime import events

    for subject, cls in events.EVENT_TYPES.items():
        assert events.stream_for(subject).name
        assert cls.DESCRIPTOR.full_name.startswith("gradients.v1.")
