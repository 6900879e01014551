#!/usr/bin/env bash
# Validates the Kubernetes kit in deploy/ offline: renders every kustomization (kubectl kustomize,
# or kustomize), checks each object against the Kubernetes JSON schemas (strict) and the KEDA
# ScaledObject against deploy/schemas/, then what the binaries expect of them (probes, ports,
# grace periods, autoscaling, Secrets). Details: deploy/tools/validate.py. No cluster needed.
#
# Installs its Python packages (pinned in deploy/tools/requirements.txt; they carry the schemas)
# into .local/deploy-venv once; later runs reuse it. .ci/run runs this before the tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.local/deploy-venv"
REQS="$ROOT/deploy/tools/requirements.txt"
STAMP="$VENV/.requirements.sha256"

log() { printf '[validate-deploy] %s\n' "$*" >&2; }

command -v python3 >/dev/null || { log "python3 not found"; exit 1; }
if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  log "neither kubectl nor kustomize is installed: one of them renders the kustomizations"
  exit 1
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing the validator's packages into .local/deploy-venv"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQS"
  echo "$want" >"$STAMP"
fi

exec "$VENV/bin/python" "$ROOT/deploy/tools/validate.py" --root "$ROOT" --self-test
