# The two commands of the README. Each sets everything up first (scripts/setup.sh, idempotent).
.PHONY: setup demo test bench
VENV := .venv
DEMO_ARGS ?=
TEST_ARGS ?=

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/tritonrec demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/pytest $(TEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py $(BENCH_ARGS)
