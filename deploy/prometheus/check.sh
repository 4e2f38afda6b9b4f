#!/usr/bin/env bash
# Validate the Prometheus rule files as `promtool check rules` does: deploy/prometheus/rulecheck is a
# small Go program on Prometheus' own rule parser (package rulefmt), built once from the Go module
# proxy into .cache/bin (git-ignored). promtool itself pulls every service-discovery SDK and takes
# tens of minutes to build on 2 cores; the rule checks are the same code.
#   deploy/prometheus/check.sh [RULE_FILE...]   default: deploy/prometheus/*.yaml
set -euo pipefail
cd "$(dirname "$0")/../.."

SRC=deploy/prometheus/rulecheck
DIGEST="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-12)"
BIN="$PWD/.cache/bin"
CHECK="$BIN/rulecheck-$DIGEST"

say() { echo "rules-check: $*" >&2; }

if [ ! -x "$CHECK" ]; then
  if ! command -v go >/dev/null 2>&1; then
    say "need Go to build the rule checker (apt-get install -y golang)"
    exit 1
  fi
  say "building the rule checker from the Go module proxy (once; cached at $CHECK)…"
  started=$SECONDS
  mkdir -p "$BIN"
  (cd "$SRC" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go build -o "$CHECK.tmp" .)
  mv "$CHECK.tmp" "$CHECK"
  say "built in $((SECONDS - started)) s"
fi
if [ $# -eq 0 ]; then
  set -- deploy/prometheus/*.yaml
fi
exec "$CHECK" "$@"
