# One-command set-up: `make test` and `make demo` build .venv from requirements.txt when it is
# missing or older than requirements.txt, then run.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/phantom
DEMO_OUT ?= outputs/demo
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test demo lint venv clean-demo

$(VENV)/.installed: requirements.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -r requirements.txt
	$(PY) -m pip install -q --no-cache-dir --no-deps -e .
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The main job on the stand-in data, every stage on the CPU demo config, timed; writes
# $(DEMO_OUT)/report.md. Rerun to resume an interrupted run.
demo: $(VENV)/.installed
	$(PY) -m tools.demo --data $(DEMO_DATA) --out $(DEMO_OUT) --config configs/demo.yaml

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_OUT)
