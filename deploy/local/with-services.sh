#!/usr/bin/env bash
# Run a command with Kafka and PostgreSQL available (design §2): use KAFKA_BOOTSTRAP_SERVERS and
# DATABASE_URL when both are set, else start (or reuse) this checkout's local ones (`incidents dev up`).
# Local services this script started are stopped when the command ends (Ctrl-C included), unless
# KEEP_SERVICES=1; services that were already running (`incidents dev up` beforehand) are left alone.
# `incidents demo` gets local services of its own (folder demo/ of the checkout's, database
# incidents_demo): its generated incidents never reach the topics or the database of `make run`.
# The read API is closed without a token: unless INCIDENTS_API_TOKEN or INCIDENTS_API_OPEN is given,
# a token is generated for this run and the curl line to use it is printed, with the console's URL.
set -euo pipefail
cd "$(dirname "$0")/../.."
incidents=.venv/bin/incidents
started_here=
say() { echo "$*" >&2; }
stop_started_services() {
  local status=$?
  trap - EXIT
  trap '' INT TERM  # a second Ctrl-C must not leave the services half stopped
  if [ -n "${intake_pid:-}" ] && kill -0 "$intake_pid" 2>/dev/null; then
    kill -TERM "$intake_pid" 2>/dev/null || true  # the intake started beside the command ends with it
    wait "$intake_pid" 2>/dev/null || true
  fi
  if [ -n "$started_here" ]; then
    say ""
    say "stopping the local Kafka and PostgreSQL this run started (KEEP_SERVICES=1 keeps them running)…"
    if "$incidents" dev down >/dev/null 2>&1; then
      say "stopped; their data stays for the next run (\`$incidents dev reset\` deletes it)."
    else
      say "could not stop them all: run \`$incidents dev down\` (\`$incidents dev status\` says what runs)."
    fi
  fi
  exit "$status"
}
demo=
if [ "$(basename "$1")" = incidents ] && [ "${2:-}" = demo ]; then
  demo=1
fi
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  if [ -n "$demo" ]; then  # services of its own: its incidents never reach make run's topics or database
    DEVSTACK_HOME="$("$incidents" dev home)/demo"
    export DEVSTACK_HOME
  fi
  if "$incidents" dev status >/dev/null 2>&1; then
    kept="they were running before this run"
  elif [ "${KEEP_SERVICES:-}" = 1 ]; then
    kept="KEEP_SERVICES=1"
  else
    kept=
  fi
  [ -n "$kept" ] || started_here=1
  trap stop_started_services EXIT
  # Ctrl-C reaches every process of the foreground group: the command shuts down on its own and its
  # exit status (0 after a graceful stop) is this script's; an interrupted set-up fails with it.
  trap 'interrupted=1' INT
  trap 'exit 143' TERM
  exports=$("$incidents" dev up)
  eval "$exports"
  if [ -n "$demo" ]; then
    export DATABASE_URL="${DATABASE_URL%/*}/incidents_demo"
    say "using the demo's own local services (not those of make run):"
  else
    say "using this checkout's local services:"
  fi
  say "  export KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
  say "  export DATABASE_URL=$DATABASE_URL"
  if [ -n "$kept" ]; then
    say "they keep running after this run ($kept): stop them with \`$incidents dev down\` (or \`make dev-down\`)"
  else
    say "they stop when this run ends (KEEP_SERVICES=1 keeps them running)"
  fi
fi
.venv/bin/incidents db migrate
if [ "$(basename "$1")" = incidents ] && [ "${2:-}" = serve ]; then
  url="http://127.0.0.1:${INCIDENTS_HTTP_PORT:-8080}"
  if [ -n "${INCIDENTS_API_TOKEN:-}" ]; then
    echo "read API: curl -s -H \"Authorization: Bearer \$INCIDENTS_API_TOKEN\" $url/incidents" >&2
  elif [ "${INCIDENTS_API_OPEN:-}" = true ]; then
    echo "read API: OPEN without a token (INCIDENTS_API_OPEN=true): curl -s $url/incidents" >&2
  else
    INCIDENTS_API_TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')
    export INCIDENTS_API_TOKEN
    echo "read API token generated for this run (set INCIDENTS_API_TOKEN to choose one):" >&2
    echo "  curl -s -H 'Authorization: Bearer $INCIDENTS_API_TOKEN' $url/incidents" >&2
  fi
  # after the token is exported: the intake reads the engine with it (SMS STATUS)
  . deploy/local/start-intake.sh  # the monitors' intake beside the engine
  if [ -n "${INCIDENTS_API_TOKEN:-}" ]; then
    echo "SRE console: $url/console/ (sign in with your name and the API token)" >&2
  else
    echo "SRE console: $url/console/ (sign in with your name)" >&2
  fi
elif [ "$(basename "$1")" = incidents ] && [ "${2:-}" = demo ]; then
  . deploy/local/start-intake.sh  # the monitors' intake beside the demo's engine
  echo "the demo shows the engine's outputs live and serves no HTTP; \`make run\` serves the read API" >&2
fi
if [ -z "$started_here" ] && [ -z "${kept:-}" ] && [ -z "${intake_pid:-}" ]; then
  exec "$@"  # services given by the environment: nothing to stop afterwards
fi
trap stop_started_services EXIT
if [ -n "${interrupted:-}" ]; then  # Ctrl-C during the set-up (the trap only noted it): no command
  say "interrupted before the command started"
  exit 130
fi
# Not exec: the EXIT trap stops the services. Ctrl-C reaches the command (same process group),
# which shuts down gracefully; this shell waits for it, then stops what it started.
status=0
"$@" || status=$?
if [ -n "${kept:-}" ]; then
  say "the local Kafka and PostgreSQL keep running ($kept): stop them with \`$incidents dev down\`"
fi
exit "$status"
