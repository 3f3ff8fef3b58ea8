# medseg — every target installs what it needs (idempotently) into .venv first.
#
# torch: an existing torch is kept. If the Python you run make with already has torch
# (e.g. a CUDA build you installed), the venv is created with --system-site-packages and
# reuses it; otherwise $(TORCH_SPEC) is installed (CPU build on our CI machines).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.medseg-installed
DEMO_DIR ?= demo_output
PIPELINE ?= pipelines/demo.yaml
PYTEST_ARGS ?=

.PHONY: install demo test lint train predict evaluate bench clean help browser

help:
	@echo "make demo       synthetic dataset -> check -> train -> predict -> evaluate (report path printed)"
	@echo "make test       install and run the test suite"
	@echo "make lint       ruff + mypy"
	@echo "make train PIPELINE=pipelines/x.yaml [DATA=dataset.json] [OUT=runs/x] [SET='k=v ...']"
	@echo "make predict MODEL=runs/x INPUT=path OUTPUT=dir"
	@echo "make evaluate PRED=dir REF=dir|manifest OUT=dir"
	@echo "make bench      benchmarks (training, inference, evaluation) -> benchmarks/RESULTS.md"
	@echo "make clean      remove the venv, caches and demo outputs"

$(PY):
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "medseg: reusing the torch of $(PYTHON) ($$($(PYTHON) -c 'import torch; print(torch.__version__)'))"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

install: $(STAMP)

$(STAMP): $(PY) pyproject.toml
	@$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
		echo "medseg: keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "medseg: installing $(TORCH_SPEC)"; $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(PY) -m medseg.demo --output $(DEMO_DIR)

# Headless Chromium renders the HTML report in one test; best effort (skipped without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		&& echo "medseg: installed chromium for the report rendering test" ; } || echo "medseg: chromium not available; its test will skip"

test: install browser
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): that is a broken test suite, not a pass"; fi; \
	exit $$rc

lint: install
	$(VENV)/bin/ruff check medseg tests benchmarks
	$(VENV)/bin/mypy

train: install
	$(PY) -m medseg train $(PIPELINE) $(if $(DATA),--data $(DATA)) $(if $(OUT),--output $(OUT)) $(foreach s,$(SET),--set $(s))

predict: install
	$(PY) -m medseg predict --model $(MODEL) --input $(INPUT) --output $(OUTPUT) $(ARGS)

evaluate: install
	$(PY) -m medseg evaluate --pred $(PRED) --ref $(REF) --output $(OUT) $(ARGS)

bench: install
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
