# The two commands the README documents: `make demo` (the main job, offline, on the embedded
# model) and `make test` (lint + the test suite). Both create the virtual environment first.
# `make stack` starts the production stack (README "Production"; STACK_ARGS="--gpus 2 --host 0.0.0.0"...).
# `make ui-check` looks at an evaluation in MLflow's UI in headless Chromium (README "Evaluation and comparison").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# uv installs the tested set (constraints.txt) from the package sources pip is configured with
# (scripts/install.py); pip only installs uv. Nothing is compiled ahead: each module is compiled when first imported.
$(BIN)/.installed: pyproject.toml constraints.txt scripts/install.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt uv
	$(BIN)/python scripts/install.py --quiet -c constraints.txt -e ".[test]"
	touch $@

.PHONY: install lock demo test ui-check stack stack-status stack-down
install: $(BIN)/.installed

demo: $(BIN)/.installed
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/cosmos-generate --model_id embedded:tiny --input_path assets/text2world.json \
		--resolution 256p --num_output_frames 29 --seed 7 --output_path outputs/demo.mp4 --overwrite

# Nothing is compiled at install (above), and the suite starts dozens of Python processes: where
# PYTHONDONTWRITEBYTECODE is set, each would compile every module it imports (torch's, diffusers'...) again;
# unset, each module is compiled once, by the first process that imports it (`__pycache__`). So for the demo too.
test: $(BIN)/.installed
	$(BIN)/ruff check .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

ui-check: $(BIN)/.installed
	$(BIN)/python scripts/install.py --quiet -c constraints.txt -e ".[ui]"
	$(BIN)/python scripts/ui_check.py $(UI_CHECK_ARGS)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet uv -e ".[test,ui]"
	{ head -3 constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

stack: $(BIN)/.installed
	$(BIN)/python scripts/stack.py up $(STACK_ARGS)

stack-status: $(BIN)/.installed
	$(BIN)/python scripts/stack.py status $(STACK_ARGS)

stack-down: $(BIN)/.installed
	$(BIN)/python scripts/stack.py down $(STACK_ARGS)
