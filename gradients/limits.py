"""Limits that more than one service enforces: what one service accepts, the next must not refuse.

A miner's submission passes the selector's gateway (the archive it streams) and then eval_worker
(the archive unpacked, the adapter weights inside). One cap for both: with a gateway cap above
eval's, a miner could upload, wait for evaluation and only then be refused.
"""

from __future__ import annotations

GiB = 1024**3

# Largest submission: the gateway's archive cap (GRADIENTS_SELECTOR_MAX_UPLOAD_BYTES) and
# eval_worker's unpacked/adapter cap (GRADIENTS_EVAL_MAX_UPLOAD_GB) both default to it. A LoRA
# of rank 256 on a 70B model is about 3 GiB in bf16; 4 GiB leaves room without inviting abuse.
MAX_SUBMISSION_BYTES = 4 * GiB
