#!/usr/bin/env bash
# Validate the Prometheus rule files as `promtool check rules` does: deploy/prometheus/rulecheck is a
# small Go program on Prometheus' own rule parser (package rulefmt), built once from the Go module
# proxy into .cache/bin (git-ignored). promtool itself pulls every service-discovery SDK and takes
# tens of minutes to build on 2 cores; the rule checks are the same code. Without arguments it also
# evaluates each alert's expression with Prometheus' engine on series shaped like the engine's
# metrics (rulecheck/alerts_test.go: fires where it should, quiet where it should be).
#   deploy/prometheus/check.sh                  deploy/prometheus/*.yaml, then the alert scenarios
#   deploy/prometheus/check.sh RULE_FILE...     only the rule checks of these files
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
if [ $# -gt 0 ]; then
  exec "$CHECK" "$@"
fi
"$CHECK" deploy/prometheus/*.yaml
say "alert scenarios (go test; the first run compiles Prometheus' query engine)…"
cd "$SRC"
GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go test -count=1 .
