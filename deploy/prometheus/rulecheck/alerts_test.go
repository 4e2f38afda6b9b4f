package main

// The alerts' expressions, evaluated by Prometheus' own engine on series shaped like the engine's
// /metrics: each fires where it should and stays quiet where it should not. `ALERT(Name)` in a
// scenario stands for count(<that alert's expr>) as written in the rule file, so an empty result is
// "does not fire". (The `for:` durations are rule-manager semantics and not evaluated here.)

import (
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
)

const ruleFile = "../incident-engine-rules.yaml"

const scenarios = `
# A replica stops answering: IncidentEngineDown for it; IncidentEngineAbsent only once none is up.
load 1m
  up{job="incident-sla-engine", instance="a:8080"} 1 1 1 0 0 0 0 0
  up{job="incident-sla-engine", instance="b:8080"} 1 1 1 1 1 0 0 0
  up{job="something-else", instance="c:8080"} 1 1 1 1 1 1 1 1

eval instant at 2m ALERT(IncidentEngineDown)

eval instant at 3m ALERT(IncidentEngineDown)
  {} 1

eval instant at 4m ALERT(IncidentEngineAbsent)

eval instant at 6m ALERT(IncidentEngineAbsent)
  {} 1

# No target scraped at all (past the lookback of the last sample): absent too.
eval instant at 30m ALERT(IncidentEngineAbsent)
  {} 1

clear
# Lag is summed over the partitions of every replica.
load 1m
  incidents_consumer_lag{job="incident-sla-engine", instance="a", partition="0"} 600 600 10
  incidents_consumer_lag{job="incident-sla-engine", instance="b", partition="1"} 600 600 10

eval instant at 1m ALERT(IncidentEngineConsumerLag)
  {} 1

eval instant at 2m ALERT(IncidentEngineConsumerLag)

clear
# Every replica reports the same outbox table: the largest report counts, not their sum.
load 1m
  incidents_outbox_backlog{job="incident-sla-engine", instance="a"} 1500 600 5
  incidents_outbox_backlog{job="incident-sla-engine", instance="b"} 1500 600 5

eval instant at 0m ALERT(IncidentEngineOutboxBacklog)
  {} 1

eval instant at 1m ALERT(IncidentEngineOutboxBacklog)

clear
# Healthy: every firing within 50 ms.
load 1m
  incidents_timer_lateness_seconds_bucket{job="incident-sla-engine", instance="a", le="0.05"} 0+100x10
  incidents_timer_lateness_seconds_bucket{job="incident-sla-engine", instance="a", le="10.0"} 0+100x10
  incidents_timer_lateness_seconds_bucket{job="incident-sla-engine", instance="a", le="+Inf"} 0+100x10

eval instant at 10m ALERT(IncidentEngineTimersLate)

clear
# Late: every firing between 50 ms and 10 s (p99 about 9.9 s).
load 1m
  incidents_timer_lateness_seconds_bucket{job="incident-sla-engine", instance="a", le="0.05"} 0+0x10
  incidents_timer_lateness_seconds_bucket{job="incident-sla-engine", instance="a", le="10.0"} 0+100x10
  incidents_timer_lateness_seconds_bucket{job="incident-sla-engine", instance="a", le="+Inf"} 0+100x10

eval instant at 10m ALERT(IncidentEngineTimersLate)
  {} 1

clear
# Duplicates (a second acknowledgement from another phone line) are normal; 5 schema errors a minute
# are below the threshold.
load 1m
  incidents_rejections_total{job="incident-sla-engine", instance="a", reason="duplicate"} 0+1000x10
  incidents_rejections_total{job="incident-sla-engine", instance="a", reason="schema"} 0+5x10

eval instant at 10m ALERT(IncidentEngineDeadLetters)

clear
load 1m
  incidents_rejections_total{job="incident-sla-engine", instance="a", reason="schema"} 0+20x10

eval instant at 10m ALERT(IncidentEngineDeadLetters)
  {} 1

clear
# The first unprocessable message, dropped timer, parked output: seen because the series start at 0.
load 1m
  incidents_rejections_total{job="incident-sla-engine", instance="a", reason="unprocessable"} 0 0 0 0 1 1 1
  incidents_timers_dropped_total{job="incident-sla-engine", instance="a"} 0 0 0 0 1 1 1
  incidents_outbox_parked_total{job="incident-sla-engine", instance="a", topic="incidents.rejected"} 0 0 0 0 1 1 1
  incidents_outbox_parked_total{job="incident-sla-engine", instance="a", topic="incidents.state"} 0 0 0 0 0 0 0

eval instant at 3m ALERT(IncidentEngineUnprocessable)

eval instant at 5m ALERT(IncidentEngineUnprocessable)
  {} 1

eval instant at 3m ALERT(IncidentEngineTimersDropped)

eval instant at 5m ALERT(IncidentEngineTimersDropped)
  {} 1

eval instant at 3m ALERT(IncidentEngineOutputsParked)

eval instant at 5m ALERT(IncidentEngineOutputsParked)
  {} 1

clear
# A breach a minute for an hour; warnings do not count.
load 1m
  incidents_sla_outputs_total{job="incident-sla-engine", instance="a", kind="breached", clock="ack", severity="critical"} 0+1x60
  incidents_sla_outputs_total{job="incident-sla-engine", instance="a", kind="warning", clock="ack", severity="critical"} 0+100x60

eval instant at 60m ALERT(IncidentEngineBreachRate)
  {} 1

clear
load 1m
  incidents_sla_outputs_total{job="incident-sla-engine", instance="a", kind="breached", clock="ack", severity="critical"} 0+0.1x60
  incidents_sla_outputs_total{job="incident-sla-engine", instance="a", kind="warning", clock="ack", severity="critical"} 0+100x60

eval instant at 60m ALERT(IncidentEngineBreachRate)
`

func alertExprs(t *testing.T) map[string]string {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	groups, errs := rulefmt.ParseFile(ruleFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), logger)
	if len(errs) > 0 {
		t.Fatalf("%s: %v", ruleFile, errs)
	}
	exprs := map[string]string{}
	for _, group := range groups.Groups {
		for _, rule := range group.Rules {
			exprs[rule.Alert] = rule.Expr
		}
	}
	return exprs
}

func TestEachAlertFiresWhereItShouldAndOnlyThere(t *testing.T) {
	exprs := alertExprs(t)
	script := scenarios
	for name := range exprs {
		if !strings.Contains(script, "ALERT("+name+")") {
			t.Errorf("alert %s has no scenario", name)
		}
	}
	script = regexp.MustCompile(`ALERT\((\w+)\)`).ReplaceAllStringFunc(script, func(call string) string {
		name := call[len("ALERT(") : len(call)-1]
		expr, ok := exprs[name]
		if !ok {
			t.Fatalf("a scenario names %s, which the rule file does not have", name)
		}
		return "count(" + strings.TrimSpace(expr) + ")"
	})
	engine := promqltest.NewTestEngine(t, false, 5*time.Minute, promqltest.DefaultMaxSamplesPerQuery)
	promqltest.RunTest(t, script, engine)
}
