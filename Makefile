# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# make demo DATASET=../shared/datasets/mpdd/metal_plate uses a real category instead of synthetic parts.
DATASET ?=
OUT ?= runs/demo

.PHONY: setup demo test lint
setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py --out $(OUT) $(if $(DATASET),--dataset $(DATASET))

test: setup lint
	.venv/bin/python -m pytest -q

# Lint, format check and type check of the daemon, the engines and calibration (pyproject.toml has the rules).
lint: setup
	.venv/bin/ruff check edge engines calibration
	.venv/bin/ruff format --check edge engines calibration
	.venv/bin/mypy
