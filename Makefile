# The two commands the README documents: `make demo` (the main job, offline, on the embedded
# model) and `make test` (lint + the test suite). Both create the virtual environment first.
# `make stack` starts the production stack (README "Production"; STACK_ARGS="--gpus 2 --host 0.0.0.0"...).
# `make ui-check` looks at an evaluation in MLflow's UI in headless Chromium (README "Evaluation and comparison").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: install demo test ui-check stack stack-status stack-down
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cosmos-generate --model_id embedded:tiny --input_path assets/text2world.json \
		--resolution 256p --num_output_frames 29 --seed 7 --dtype float32 --output_path outputs/demo.mp4 --overwrite

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

ui-check: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[ui]"
	$(BIN)/python scripts/ui_check.py $(UI_CHECK_ARGS)

stack: $(BIN)/.installed
	$(BIN)/python scripts/stack.py up $(STACK_ARGS)

stack-status: $(BIN)/.installed
	$(BIN)/python scripts/stack.py status $(STACK_ARGS)

stack-down: $(BIN)/.installed
	$(BIN)/python scripts/stack.py down $(STACK_ARGS)
