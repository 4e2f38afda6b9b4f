// Command rulecheck validates Prometheus rule files with the parser and checks of
// `promtool check rules` (package rulefmt: YAML fields, PromQL expressions, durations, label names,
// annotation templates), without building promtool itself, whose service-discovery dependencies take
// tens of minutes to compile on a small machine.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rulecheck RULE_FILE...")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	p := parser.NewParser(parser.Options{})
	failed := false
	for _, file := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, p, logger)
		if len(errs) > 0 {
			failed = true
			fmt.Fprintf(os.Stderr, "%s: FAILED\n", file)
			for _, err := range errs {
				fmt.Fprintf(os.Stderr, "  %v\n", err)
			}
			continue
		}
		rules := 0
		for _, group := range groups.Groups {
			rules += len(group.Rules)
		}
		fmt.Printf("%s: SUCCESS: %d rules found\n", file, rules)
	}
	if failed {
		os.Exit(1)
	}
}
