# The two set-up commands for a fresh machine:
#   make serve   installs everything into .venv (from the lock) and starts the server on the embedded default
#   make test    installs everything (with the test tools, from the lock) into .venv and runs the whole test suite
# make lock refreshes the lock files from pyproject.toml's ranges (docs/install.md, "Upgrading dependencies").
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is not in the lock, so a GPU machine can choose its build: TORCH=torch==<version> (the CUDA wheel you
# want). It is installed after the lock, so its own needs (sympy, networkx...) are the locked ones; a CUDA build
# adds its nvidia-* packages. The default is the CPU wheel this machine has on disk.
TORCH  ?= torch==2.13.0
LOCK_RUNTIME := requirements/runtime.txt
LOCK_TEST    := requirements/test.txt
# The CLIP BPE vocabulary (the tiny models' tokenizer) is one data file inside the open_clip_torch wheel; the
# package itself is never installed (it would want timm and torchvision). Pinned here, not in the lock, because
# only the wheel is downloaded (hash-checked) and the file extracted from it into the venv.
OPEN_CLIP        := open_clip_torch==3.3.0
OPEN_CLIP_SHA256 := $(shell cat requirements/open-clip-wheel.sha256)
CLIP_VOCAB       := $(VENV)/share/diffserve/bpe_simple_vocab_16e6.txt.gz

.PHONY: serve test test-container install install-test system-deps lock bench clean fleet-demo docs

# --no-deps: the lock is the whole set (pip check runs after, and tests/test_install.py checks the venv
# against the lock); --require-hashes: every file is the one the lock names.
# The locks are universal (one file for every supported Python, environment markers on the lines that differ):
# pip installs the lines whose markers hold for this interpreter. $(2): other locks the venv may equal instead
# (`make serve` after `make test` keeps the test venv, a superset of the runtime lock at the same versions).
define install_lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-deps --require-hashes -r $(1)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) requirements/check_venv.py $(1) $(2)
endef

$(VENV)/.installed-runtime: $(LOCK_RUNTIME) pyproject.toml $(CLIP_VOCAB)
	$(call install_lock,$(LOCK_RUNTIME),$(LOCK_TEST))
	touch $@

$(VENV)/.installed-test: $(LOCK_TEST) pyproject.toml $(CLIP_VOCAB)
	$(call install_lock,$(LOCK_TEST))
	touch $@

$(CLIP_VOCAB): requirements/open-clip-wheel.sha256
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(VENV)/downloads && mkdir -p $(VENV)/downloads $(dir $@)
	echo "$(OPEN_CLIP) --hash=sha256:$(OPEN_CLIP_SHA256)" > $(VENV)/downloads/open-clip.txt
	$(PIP) download -q --no-deps --require-hashes -r $(VENV)/downloads/open-clip.txt -d $(VENV)/downloads
	cd $(VENV)/downloads && $(abspath $(PY)) -c "import glob, sys, zipfile; \
	  open(sys.argv[1], 'wb').write(zipfile.ZipFile(glob.glob('open_clip_torch-*.whl')[0]).read('open_clip/bpe_simple_vocab_16e6.txt.gz'))" \
	  $(abspath $@)
	rm -rf $(VENV)/downloads

install: $(VENV)/.installed-runtime
install-test: $(VENV)/.installed-test

serve: install
	$(VENV)/bin/diffserve serve $(ARGS)

# Debian packages the tests need (Chromium for the playground's browser tests); idempotent, root the first time
system-deps:
	bash scripts/system-deps.sh

# The suite runs on TEST_JOBS processes (pytest-xdist): tests/conftest.py puts files that share a session server in
# one group, so each server starts once; one pytest kept CI's second core idle. TEST_JOBS=0: one plain pytest.
TEST_JOBS ?= 2
test: install-test system-deps
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder -q --ignore=tests/test_container.py $(PYTEST_ARGS)

# The container image built from the Dockerfile and run (README "Deploy"): its own dockerd, a Debian 12 base
# made with mmdebstrap (Debian's docker.io + mmdebstrap: system-deps.sh --container, root), the README's worked
# example in the container; compose.yaml checked by docker-compose. Apart from `make test`: it takes ~10 minutes.
test-container: install-test
	bash scripts/system-deps.sh --container
	$(PY) -m pytest -q -s tests/test_container.py tests/test_deploy_files.py $(PYTEST_ARGS)

# Re-resolve both locks from pyproject.toml's ranges (and requirements/*.in), newest versions allowed, for every
# Python pyproject.toml admits (uv's universal resolution: one lock, markers where an interpreter differs, e.g.
# async-timeout below 3.11.3). torch and opencv-python are resolved but left out (see TORCH above and
# requirements/pip-check-allow.txt), and so are the CUDA packages torch's PyPI metadata names
# (requirements/torch-cuda-excludes.txt). Drop --upgrade from LOCK_FLAGS to add a package without moving the rest.
LOCK_FLAGS := --universal --python-version 3.11 --quiet --generate-hashes --upgrade \
	--no-emit-package torch --no-emit-package opencv-python \
	--excludes requirements/torch-cuda-excludes.txt --constraint requirements/torch-cpu.txt
# uv runs in its own venv, so the project venv stays exactly the lock.
LOCK_VENV := .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "uv==0.13.8"
	$(LOCK_VENV)/bin/uv pip compile $(LOCK_FLAGS) -o $(LOCK_RUNTIME) pyproject.toml requirements/runtime.in
	$(LOCK_VENV)/bin/uv pip compile $(LOCK_FLAGS) --constraint $(LOCK_RUNTIME) --extra test -o $(LOCK_TEST) \
		pyproject.toml requirements/runtime.in

# The fleet on loopback: real PostgreSQL, Redis and SeaweedFS, one API, two workers (docs/fleet.md). Ctrl-C stops it.
fleet-demo: install-test system-deps
	$(PY) scripts/fleet_demo.py

# The docs site (mkdocs.yml, docs/) into site/; --strict fails on any warning (a broken link or anchor, a page
# missing from the nav). tests/test_docs.py runs the same build, so CI (`make test`) does too;
# `$(VENV)/bin/mkdocs serve` shows the pages while editing.
docs: install-test
	$(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) data site
