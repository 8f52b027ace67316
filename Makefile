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

$(VENV)/.installed: requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The main job on the stand-in data, every stage on the CPU demo config.
demo: $(VENV)/.installed
	$(PY) -m pipelines.phantom --out $(DEMO_DATA)
	$(PY) -m pipelines.data inspect $(DEMO_DATA)
	$(PY) train_vae.py --config configs/demo.yaml --data $(DEMO_DATA) --output_dir $(DEMO_OUT)/vae_run --resume_from_checkpoint latest
	$(PY) train_unet.py --config configs/demo.yaml --vae $(DEMO_OUT)/vae_run/vae --data $(DEMO_DATA) --output_dir $(DEMO_OUT)/model --resume_from_checkpoint latest
	$(PY) sample.py --model $(DEMO_OUT)/model --label all --out $(DEMO_OUT)/samples
	$(PY) embed.py --model $(DEMO_OUT)/model --data $(DEMO_DATA) --out $(DEMO_OUT)/embedding --with_generated 100
	$(PY) evaluate.py --model $(DEMO_OUT)/model --data $(DEMO_DATA) --out $(DEMO_OUT)/eval

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_OUT)
