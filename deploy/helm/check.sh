#!/usr/bin/env bash
# Lint and render the Helm chart with the default and the production values, then validate every
# manifest against the Kubernetes schemas, offline. Helm is built once from the Go module proxy
# into .cache/bin (git-ignored); kubernetes-validate comes from the dev extra (`make venv`).
#   deploy/helm/check.sh              rendered manifests land in .cache/helm-rendered/
#   deploy/helm/check.sh helm ARGS…   run the cached helm (built first if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# Oldest and newest Kubernetes the chart supports (Chart.yaml kubeVersion >=1.27).
KUBE_VERSIONS="${KUBE_VERSIONS:-1.27.0 1.37.0}"
RENDER_KUBE_VERSION="${RENDER_KUBE_VERSION:-1.33.0}"  # what .Capabilities says while rendering
CHART=deploy/helm/incident-sla-engine
PROD_VALUES=deploy/helm/values-production.yaml
OUT="${HELM_CHECK_OUT:-.cache/helm-rendered}"
BIN="$PWD/.cache/bin"
HELM="$BIN/helm-$HELM_VERSION"
VALIDATE="${KUBERNETES_VALIDATE:-.venv/bin/kubernetes-validate}"
[ -x "$VALIDATE" ] || VALIDATE="$(command -v kubernetes-validate || echo "$VALIDATE")"

say() { echo "helm-check: $*" >&2; }

if [ ! -x "$HELM" ]; then
  if ! command -v go >/dev/null 2>&1; then
    say "need Go to build helm $HELM_VERSION (apt-get install -y golang, or put helm at $HELM)"
    exit 1
  fi
  say "building helm $HELM_VERSION from the Go module proxy (once; cached at $HELM)…"
  started=$SECONDS
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mkdir -p "$BIN"
  mv "$tmp/helm" "$HELM"
  say "built helm in $((SECONDS - started)) s"
fi
# Keep helm's caches and config inside the repository's cache, away from the user's home.
export HELM_CACHE_HOME="$PWD/.cache/helm/cache" HELM_CONFIG_HOME="$PWD/.cache/helm/config" \
  HELM_DATA_HOME="$PWD/.cache/helm/data"
if [ "${1:-}" = helm ]; then
  shift
  exec "$HELM" "$@"
fi
if [ ! -x "$VALIDATE" ]; then
  say "missing $VALIDATE: run \`make venv\` (kubernetes-validate is in the dev extra)"
  exit 1
fi

mkdir -p "$OUT"

render() {  # render NAME [helm args...]
  local name="$1"
  shift
  say "lint + template ($name values)"
  "$HELM" lint --strict --kube-version "$RENDER_KUBE_VERSION" "$CHART" "$@" >"$OUT/$name.lint.txt" 2>&1 || { cat "$OUT/$name.lint.txt" >&2; return 1; }
  "$HELM" template incidents "$CHART" --namespace incidents --kube-version "$RENDER_KUBE_VERSION" "$@" >"$OUT/$name.yaml"
}
render default
render production -f "$PROD_VALUES"

for version in $KUBE_VERSIONS; do
  say "kubernetes-validate --strict against Kubernetes $version"
  # CRD kinds (ServiceMonitor) have no schema there: a warning, checked by the pytest instead.
  "$VALIDATE" --strict --quiet -k "$version" "$OUT/default.yaml" "$OUT/production.yaml"
done
say "chart OK: $OUT/default.yaml, $OUT/production.yaml"
