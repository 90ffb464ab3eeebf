# Two commands: `make test` and `make demo`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: install test lint pytest demo benchmarks clean

install:
	@bash scripts/bootstrap.sh

# style, the package rules of docs/interfaces.md (.importlinter), types of the contract and the ROS layer
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy rig $(wildcard robot/ros)

pytest: install
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/flywheel-demo $(DEMO_ARGS)

benchmarks: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .fsim-venv .pytest_cache outputs
