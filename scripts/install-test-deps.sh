#!/usr/bin/env bash
# Installs what the test suite talks to, when missing (Debian, as root):
# - a real upstream registry: docker-registry (distribution 2.8)
# - real clients: skopeo, containerd (ctr), podman, dockerd (docker.io), buildah; openssl;
#   chromium (headless) for the admin console
# - a real S3-speaking server: moto_server (PyPI moto[server]) in a venv, and a real Azure
#   Blob Storage server: Azurite (npm azurite), both under
#   ${ARCHWAY_TEST_TOOLS:-/opt/archway-test-tools}; tests find them there or on PATH.
set -euo pipefail
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
# Signs upstream images in the signature tests, as a publisher would by hand.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Renders the admin console in the console tests (headless, --dump-dom and --screenshot).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
tools=${ARCHWAY_TEST_TOOLS:-/opt/archway-test-tools}
if [ ! -x "$tools/venv/bin/moto_server" ]; then
  echo "installing moto[server] into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q 'moto[server]==5.*'
fi
if [ ! -x "$tools/azurite/node_modules/.bin/azurite-blob" ]; then
  echo "installing azurite into $tools/azurite"
  mkdir -p "$tools/azurite"
  npm install --prefix "$tools/azurite" --no-audit --no-fund --loglevel=error 'azurite@3'
fi
