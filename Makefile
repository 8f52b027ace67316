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

.PHONY: test demo demo128 lint venv browser app clean-demo gpu-wheels gpu-check

$(VENV)/.installed: requirements.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -r requirements.txt
	$(PY) -m pip install -q --no-cache-dir --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# The browser the app's test drives: Debian's Chromium and its driver (root installs them once;
# nothing downloads a browser at run time).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium chromium-driver >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	else echo "install Debian's chromium and chromium-driver as root: sudo make browser" >&2; exit 2; fi

# Then the tests that compare across batch sizes, threads or code paths, again under two other
# CPU kernel variants (AVX2-only; no vector ISA, 1 thread): a new host kind cannot surprise them.
test: $(VENV)/.installed browser
	$(PY) -m pytest -q tests
	$(PY) -m tools.kernel_variants --variants ci

# The browser app on the `make demo` model: http://127.0.0.1:7860
app: $(VENV)/.installed
	$(PY) app.py --model $(DEMO_OUT)/model --data $(DEMO_DATA)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The main job on the stand-in data, every stage on the CPU demo config, timed; writes
# $(DEMO_OUT)/report.md. Rerun to resume an interrupted run.
# DEMO_ARGS=--no_time_caps trains every step however long the host takes (the speed check in
# the first minute says when the time caps would cut the training short).
demo: $(VENV)/.installed
	$(PY) -m tools.demo --data $(DEMO_DATA) --out $(DEMO_OUT) --config configs/demo.yaml $(DEMO_ARGS)

# The sharper demo: the same stages at 128 px (configs/demo128.yaml), its own time (README).
demo128: $(VENV)/.installed
	$(PY) -m tools.demo --data $(DEMO_DATA) --out outputs/demo128 --config configs/demo128.yaml $(DEMO_ARGS)

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_OUT) outputs/demo128

# Wheels of what a GPU image lacks (it reaches no registry): diffusers, datasets and the two of
# its needs such images miss, nibabel and nilearn for the stand-in set; CPython 3.12, x86-64,
# at requirements.txt's versions (the three needs at the versions the venv resolves). Into .whl/
# (git-ignored), which travels with the tree to the GPU machine; bench/gpu_check.sh installs it.
GPU_WHEEL_NEEDS := dill==0.4.1 multiprocess==0.70.19 nibabel==5.4.2
GPU_WHEEL_PLATFORMS := manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(foreach p,$(GPU_WHEEL_PLATFORMS),--platform $(p)_x86_64) -d .whl \
		$$(grep -E '^(diffusers|datasets|nilearn)==' requirements.txt) $(GPU_WHEEL_NEEDS)
	@ls -1 .whl && du -ch .whl/*.whl | tail -1

# On a GPU machine: every stage of configs/adni256.yaml for a few minutes, timed and counted
# (bench/gpu_check.py); GPU_CHECK_ARGS e.g. "--minutes 1 --out /tmp/gc".
gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_ARGS)
