#!/usr/bin/env bash
# Build the real Prometheus Alertmanager from its Go module once and cache the binary under .cache/
# (like the Kafka jars); print the binary's path. Used by the intake's tests and by hand:
#   deploy/local/alertmanager.sh            -> .cache/alertmanager/v0.35.0/alertmanager
# The module ships without the web UI's built assets (ui/web.go embeds app/dist), so a plain
# `go install` fails: copy the module out of the module cache, put placeholder pages where the
# assets go, and build ./cmd/alertmanager inside the copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION="${ALERTMANAGER_VERSION:-v0.35.0}"
CACHE="${DEVSTACK_CACHE_DIR:-$PWD/.cache}"
OUT="$CACHE/alertmanager/$VERSION"
BIN="$OUT/alertmanager"
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if ! [ -x "$GO" ]; then
  echo "error: building Alertmanager needs Go, and neither \`go\` on PATH nor /usr/local/go/bin/go exists." >&2
  echo "       Install Go 1.24+ (https://go.dev/dl/) or set GO=/path/to/go." >&2
  exit 2
fi
# Go's own module and build caches (as deploy/helm/check.sh and deploy/prometheus/check.sh use
# them): the Prometheus modules the rule checker compiles are downloaded and compiled once for both.
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
echo "building Prometheus Alertmanager $VERSION from its Go module into $OUT (once, ~2 min)" >&2
dir=$("$GO" mod download -json "github.com/prometheus/alertmanager@$VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
work=$(mktemp -d "${TMPDIR:-/tmp}/alertmanager-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$dir/." "$work/src"
chmod -R u+w "$work/src"
for ui in elm mantine; do
  mkdir -p "$work/src/ui/app/dist/$ui"
  echo "<!doctype html><title>Alertmanager</title><p>UI not built (intake test binary)</p>" \
    >"$work/src/ui/app/dist/$ui/index.html"
done
mkdir -p "$OUT"
(cd "$work/src" && "$GO" build -o "$BIN.tmp" ./cmd/alertmanager)
mv "$BIN.tmp" "$BIN"
echo "$BIN"
