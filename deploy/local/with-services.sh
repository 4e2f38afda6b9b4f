#!/usr/bin/env bash
# Run a command with Kafka and PostgreSQL available (design §2): use KAFKA_BOOTSTRAP_SERVERS and
# DATABASE_URL when both are set, else start (or reuse) the local ones with `incidents dev up`.
# The read API is closed without a token: unless INCIDENTS_API_TOKEN or INCIDENTS_API_OPEN is given,
# a token is generated for this run and the curl line to use it is printed, with the console's URL.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  exports=$(.venv/bin/incidents dev up)
  eval "$exports"
  echo "using the local services (stop them with \`make dev-down\`):" >&2
  echo "$exports" >&2
fi
.venv/bin/incidents db migrate
if [ "$(basename "$1")" = incidents ] && [ "${2:-}" = serve ]; then
  . deploy/local/start-intake.sh  # the monitors' intake beside the engine
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
  if [ -n "${INCIDENTS_API_TOKEN:-}" ]; then
    echo "SRE console: $url/console/ (sign in with your name and the API token)" >&2
  else
    echo "SRE console: $url/console/ (sign in with your name)" >&2
  fi
elif [ "$(basename "$1")" = incidents ] && [ "${2:-}" = demo ]; then
  . deploy/local/start-intake.sh  # the monitors' intake beside the demo's engine
  echo "the demo shows the engine's outputs live and serves no HTTP; \`make run\` serves the read API" >&2
fi
exec "$@"
