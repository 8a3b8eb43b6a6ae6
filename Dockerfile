# diffserve's container image: the same lock as `make install`, a non-root user, data on /data, port 8000.
#
#   CPU (default):  docker build -t diffserve .
#   CUDA:           docker build -t diffserve:cuda \
#                     --build-arg TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
#                   (torch's CUDA wheels bring the CUDA runtime libraries; the host needs the NVIDIA driver and
#                   the NVIDIA Container Toolkit: docker run --gpus all ... -e DIFFSERVE_DEVICE=cuda)
#   Another base:   --build-arg BASE=nvidia/cuda:12.8.0-runtime-ubuntu24.04 (any glibc image with Python >= 3.11,
#                   or with apt-get: Debian's / Ubuntu's python3 + python3-venv are installed when python3 is absent)
#   Behind a proxy that re-signs TLS: --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt (pip trusts it).
#
# Needs BuildKit (DOCKER_BUILDKIT=1 with docker 20.10+, or buildx): RUN --mount for the pip cache and the CA.
# tests/test_container.py builds this file from a Debian 12 base made with mmdebstrap and runs the README's
# worked example in the container (make test-container).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# torch is not in the lock (the Makefile's TORCH=): the CPU build by default; see above for CUDA.
ARG TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

ENV VENV=/opt/diffserve \
    PATH=/opt/diffserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIFFSERVE_DATA_DIR=/data \
    DIFFSERVE_HOST=0.0.0.0 \
    DIFFSERVE_PORT=8000 \
    HF_HOME=/data/huggingface

# Python where the base has none (e.g. nvidia/cuda images); a base with python3 skips this.
RUN if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 10001 diffserve \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/diffserve diffserve \
 && mkdir -p /data && chown diffserve:diffserve /data

# The sources are bind-mounted into each step (nothing of them stays in a layer but what pip installs).
# The lock first (its layer survives code changes): hash-checked, --no-deps, then torch on top of it.
RUN --mount=type=bind,source=requirements,target=/src/requirements \
    --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    cd /src \
 && if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv "$VENV" \
 && "$VENV/bin/pip" install -q --no-deps --require-hashes -r requirements/runtime.txt
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && "$VENV/bin/pip" install -q $TORCH

# The CLIP BPE vocabulary, as `make install` takes it: one file from the hash-checked open_clip_torch wheel
# (pin and hash from the Makefile and requirements/open-clip-wheel.sha256), the package itself not installed.
RUN --mount=type=bind,source=Makefile,target=/src/Makefile \
    --mount=type=bind,source=requirements/open-clip-wheel.sha256,target=/src/open-clip-wheel.sha256 \
    --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    cd /src \
 && if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pin="$(sed -n 's/^OPEN_CLIP *:= *//p' Makefile)" && test -n "$pin" \
 && mkdir -p /tmp/clip "$VENV/share/diffserve" \
 && echo "$pin --hash=sha256:$(cat open-clip-wheel.sha256)" > /tmp/clip/req.txt \
 && "$VENV/bin/pip" download -q --no-deps --require-hashes -r /tmp/clip/req.txt -d /tmp/clip \
 && "$VENV/bin/python" -c "import glob, sys, zipfile; open(sys.argv[1], 'wb').write(zipfile.ZipFile( \
      glob.glob('/tmp/clip/open_clip_torch-*.whl')[0]).read('open_clip/bpe_simple_vocab_16e6.txt.gz'))" \
      "$VENV/share/diffserve/bpe_simple_vocab_16e6.txt.gz" \
 && rm -rf /tmp/clip

# The project itself (not editable: the image holds no source tree; what setuptools writes into the
# read-write bind mount is thrown away), then the drift check: the venv equals the lock, pip check clean.
RUN --mount=type=bind,target=/src,rw \
    cd /src \
 && "$VENV/bin/pip" install -q --no-deps --no-build-isolation --no-cache-dir . \
 && "$VENV/bin/python" requirements/check_venv.py requirements/runtime.txt

USER diffserve
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DIFFSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["diffserve"]
CMD ["serve"]
