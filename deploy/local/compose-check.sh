#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine: `docker compose config` or Debian's docker-compose.
set -euo pipefail
cd "$(dirname "$0")/../.."
if docker compose version >/dev/null 2>&1; then
  exec docker compose -f docker-compose.yml config --quiet
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "compose-check: installing Debian's docker-compose (offline validator)" >&2
    (apt-get install -y -qq docker-compose >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq docker-compose; }) >/dev/null
  else
    echo "compose-check: need 'docker compose' or 'docker-compose' (apt-get install docker-compose)" >&2
    exit 1
  fi
fi
docker-compose -f docker-compose.yml config --quiet
echo "compose-check: docker-compose.yml is valid" >&2
