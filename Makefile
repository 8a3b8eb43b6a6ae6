# The two set-up commands for a fresh machine:
#   make serve   installs everything into .venv and starts the server on the embedded default
#   make test    installs everything (with the test tools) into .venv and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned, so pip takes the CPU wheel instead of pulling the CUDA build
TORCH  ?= torch==2.13.0

.PHONY: serve test install install-test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]"
	# the real CLIP BPE vocabulary for the offline tiny models (data file only; the package is never imported)
	$(PIP) install -q --no-deps open_clip_torch
	# InsightFace for Flux PuLID's face detection and ArcFace (its other needs are in pyproject.toml)
	$(PIP) install -q --no-deps "insightface==2.1"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/diffserve serve $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) data
