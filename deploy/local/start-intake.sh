# Sourced by with-services.sh for `make run`: start `incidents intake` beside the engine, in the
# background (Ctrl-C in the terminal reaches both), with the example integrations and their secrets
# unless set: this checkout's, generated once into intake-secrets.env of `incidents dev home` and the
# same on every run (`incidents dev secrets` prints them, `incidents dev reset` deletes them); print
# its URL and a first request. INTAKE_DISABLED=true skips it.
if [ "${INTAKE_DISABLED:-}" != true ]; then
  export INTAKE_INTEGRATIONS_FILE="${INTAKE_INTEGRATIONS_FILE:-deploy/local/integrations.yaml}"
  intake_secrets=$(.venv/bin/incidents dev secrets)  # says what went wrong when it cannot
  while IFS= read -r line; do
    [[ $line == export\ * ]] || continue
    var=${line#export }
    var=${var%%=*}
    if [ -n "$var" ] && [ -z "${!var:-}" ]; then  # a variable already set wins
      eval "$line"
    fi
  done <<<"$intake_secrets"
  mkdir -p .cache
  .venv/bin/incidents intake >>.cache/intake.log 2>&1 &
  intake_pid=$!  # with-services.sh stops it when the command ends, however it ends
  intake_url="http://127.0.0.1:${INTAKE_HTTP_PORT:-8081}"
  echo "intake for monitors on $intake_url (logs: .cache/intake.log; integrations: $INTAKE_INTEGRATIONS_FILE):" >&2
  home_var=${DEVSTACK_HOME:+DEVSTACK_HOME=$DEVSTACK_HOME }  # the demo's services have a folder of their own
  echo "  its secrets are this checkout's, the same on every run: \`eval \"\$(${home_var}.venv/bin/incidents dev secrets)\"\` sets them in a shell (file $(.venv/bin/incidents dev home)/intake-secrets.env; \`incidents dev reset\` deletes it)" >&2
  echo "  Alertmanager: $intake_url/v1/alertmanager/prometheus  bearer token \$INTAKE_ALERTMANAGER_TOKEN=$INTAKE_ALERTMANAGER_TOKEN" >&2
  echo "  PagerDuty Events v2: curl -s $intake_url/v2/enqueue -H 'Content-Type: application/json' -d '{\"routing_key\": \"$INTAKE_PAGERDUTY_ROUTING_KEY\", \"event_action\": \"trigger\", \"dedup_key\": \"disk-db-1\", \"payload\": {\"summary\": \"disk full on db-1\", \"source\": \"db-1\", \"severity\": \"critical\"}}'" >&2
fi
