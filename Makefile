# The two commands the README documents: `make demo` (the main job, offline, on the embedded
# model) and `make test` (lint + the test suite). Both create the virtual environment first.
# `make stack` starts the production stack (README "Production"; STACK_ARGS="--gpus 2 --host 0.0.0.0"...).
# `make ui-check` looks at an evaluation in MLflow's UI in headless Chromium (README "Evaluation and comparison").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# pip compiles every installed module to bytecode one file at a time (about 90 s here); this compiles them on
# every core. Like pip, it leaves out the files this Python cannot compile (torch ships a 3.12-only test file).
export COMPILE := import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)

# constraints.txt is the tested set of versions (`make lock` refreshes it); pyproject.toml keeps ranges.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[test]"
	$(BIN)/python -c "$$COMPILE" $(VENV)
	touch $@

.PHONY: install lock demo test ui-check stack stack-status stack-down
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cosmos-generate --model_id embedded:tiny --input_path assets/text2world.json \
		--resolution 256p --num_output_frames 29 --seed 7 --output_path outputs/demo.mp4 --overwrite

# The suite starts dozens of Python processes: where PYTHONDONTWRITEBYTECODE is set, each would compile
# this project's modules (and pytest its test files) again; unset, they are compiled once (`__pycache__`).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

ui-check: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[ui]"
	$(BIN)/python scripts/ui_check.py $(UI_CHECK_ARGS)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e ".[test,ui]"
	{ head -3 constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

stack: $(BIN)/.installed
	$(BIN)/python scripts/stack.py up $(STACK_ARGS)

stack-status: $(BIN)/.installed
	$(BIN)/python scripts/stack.py status $(STACK_ARGS)

stack-down: $(BIN)/.installed
	$(BIN)/python scripts/stack.py down $(STACK_ARGS)
