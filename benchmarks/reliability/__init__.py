"""The reliability suite's scenarios: faults, load, bad input and hostile miners.

Each scenario is a plain function that runs real processes (embedded NATS and Redis, the
six services, SDK miners) and returns `ScenarioResult`s. `tests/reliability/` runs them at
CI size and asserts on the results; `python -m benchmarks.reliability_report` runs them at
full size and prints the table.
"""

from benchmarks.reliability.common import ScenarioResult, percentile

__all__ = ["ScenarioResult", "percentile"]
