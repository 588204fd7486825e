#!/usr/bin/env bash
# The Prometheus side of docs/monitoring/ (CI runs it; needs promtool, from
# Debian's prometheus package):
#   - the alerting rules load (promtool check rules),
#   - their unit tests pass: each alert fires where it should and only there
#     (promtool test rules),
#   - every query of the Grafana dashboard is valid PromQL (checked as
#     recording rules, Grafana's variables replaced by plain values).
# The metric names themselves are checked against GET /metrics by
# tests/test_monitoring_docs.py, in the test suite, which needs no promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMTOOL="${PROMTOOL:-promtool}"
if ! command -v "$PROMTOOL" >/dev/null; then
    echo "check_monitoring: $PROMTOOL not found (apt-get install prometheus ships it)" >&2
    exit 1
fi

"$PROMTOOL" check rules docs/monitoring/alerts.yml
"$PROMTOOL" test rules docs/monitoring/alerts.test.yml

queries="$(mktemp --suffix=.json)"
trap 'rm -f "$queries"' EXIT
python3 - docs/monitoring/taskq-dashboard.json >"$queries" <<'EOF'
import json
import re
import sys

with open(sys.argv[1]) as f:
    board = json.load(f)

DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def plain(expr):
    # $__rate_interval and the like become durations, $namespace a regex.
    return re.sub(
        r"\$\{?(\w+)(?::\w+)?\}?", lambda m: DURATIONS.get(m.group(1), ".*"), expr
    )


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


rules = [
    {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": plain(target["expr"])}
    for panel in panels(board["panels"])
    for target in panel.get("targets", [])
    if target.get("expr")
]
# JSON is YAML: promtool reads it as a rules file.
json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sys.stdout, indent=1)
EOF
echo "Dashboard queries ($(grep -c '"record"' "$queries") of them), as PromQL:"
"$PROMTOOL" check rules "$queries"
