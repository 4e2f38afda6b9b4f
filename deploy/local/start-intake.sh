# Sourced by with-services.sh for `make run`: start `incidents intake` beside the engine, in the
# background (Ctrl-C in the terminal reaches both), with the example integrations and their secrets
# generated for this run unless set; print its URL and a first request. INTAKE_DISABLED=true skips it.
if [ "${INTAKE_DISABLED:-}" != true ]; then
  export INTAKE_INTEGRATIONS_FILE="${INTAKE_INTEGRATIONS_FILE:-deploy/local/integrations.yaml}"
  for var in INTAKE_ALERTMANAGER_TOKEN INTAKE_GRAFANA_HMAC_SECRET INTAKE_PAGERDUTY_ROUTING_KEY; do
    if [ -z "${!var:-}" ]; then
      export "$var=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')"
    fi
  done
  mkdir -p .cache
  .venv/bin/incidents intake >>.cache/intake.log 2>&1 &
  intake_pid=$!  # with-services.sh stops it when the command ends, however it ends
  intake_url="http://127.0.0.1:${INTAKE_HTTP_PORT:-8081}"
  echo "intake for monitors on $intake_url (logs: .cache/intake.log; integrations: $INTAKE_INTEGRATIONS_FILE):" >&2
  echo "  Alertmanager: $intake_url/v1/alertmanager/prometheus  bearer token \$INTAKE_ALERTMANAGER_TOKEN=$INTAKE_ALERTMANAGER_TOKEN" >&2
  echo "  PagerDuty Events v2: curl -s $intake_url/v2/enqueue -H 'Content-Type: application/json' -d '{\"routing_key\": \"$INTAKE_PAGERDUTY_ROUTING_KEY\", \"event_action\": \"trigger\", \"dedup_key\": \"disk-db-1\", \"payload\": {\"summary\": \"disk full on db-1\", \"source\": \"db-1\", \"severity\": \"critical\"}}'" >&2
fi
