"""The splits of §3.3: moved to `services/dataset_prep/logic.py` (dataset_prep's pure rules).

Re-exported here for the modules that still import them from this name (pipeline, synthesis,
settings and their tests).
"""

from __future__ import annotations

from services.dataset_prep.logic import (  # noqa: F401
    Split,
    SplitConfig,
    canonical_json,
    row_sha256,
    rows_sha256,
    split_rows,
    split_sizes,
)
