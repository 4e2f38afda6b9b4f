#!/usr/bin/env bash
# Run a command with Kafka and PostgreSQL available (design §2): use KAFKA_BOOTSTRAP_SERVERS and
# DATABASE_URL when both are set, else start (or reuse) the local ones with `incidents dev up`.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
  exports=$(.venv/bin/incidents dev up)
  eval "$exports"
  echo "using the local services (stop them with \`make dev-down\`):" >&2
  echo "$exports" >&2
fi
.venv/bin/incidents db migrate
exec "$@"
