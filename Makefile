# The two commands the README documents: `make demo` (the main job, offline, on the embedded
# model) and `make test` (lint + the test suite). Both create the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: install demo test
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cosmos-generate --model_id embedded:tiny --input_path assets/text2world.json \
		--resolution 256p --num_output_frames 29 --seed 7 --output_path outputs/demo.mp4 --overwrite

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
