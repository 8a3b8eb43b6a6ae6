#!/usr/bin/env bash
# System packages the test suite needs, from Debian: Chromium for the playground's browser tests
# (driven by Playwright with executable_path=/usr/bin/chromium; Playwright never downloads a browser) and
# PostgreSQL's server binaries (tests/pgserver.py runs initdb + pg_ctl in a temp dir; no service is started),
# Redis (the fleet's Celery broker: tests/redisserver.py runs redis-server on a free loopback port), iproute2
# (`ip netns`: the fleet test runs its workers as other hosts in network namespaces) and iptables (the
# partition tests cut a worker's host off: its link drops every packet or refuses every connection).
# With --container (make test-container): Debian's docker.io (dockerd, containerd, runc and a client with
# BuildKit; the test starts its own dockerd on its own socket and data dir) and mmdebstrap (the test's Debian 12
# base image, built from Debian's packages since no image registry need be reachable) and docker-compose
# (`docker-compose config` validates compose.yaml: tests/test_deploy_files.py), instead of the above.
# Idempotent: does nothing when they are present. Needs root (or sudo) the first time.
set -euo pipefail
missing=()
if [ "${1:-}" = "--container" ]; then
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
else
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then as_root=(sudo); else
    echo "system-deps: need root to install: ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1
  fi
fi
echo "system-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
