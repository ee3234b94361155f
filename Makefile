# Convenience targets; the README's two commands are the source of truth.
PY := .venv/bin/python

.PHONY: setup test demo reliability reliability-report

setup:
	./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	.venv/bin/gradients demo

# The whole reliability suite (full-size scenarios included), then the report with its figures.
reliability: setup
	GRADIENTS_RELIABILITY_FULL=1 $(PY) -m pytest -q -m reliability tests/reliability
	$(PY) -m benchmarks.reliability_report

reliability-report: setup
	$(PY) -m benchmarks.reliability_report
