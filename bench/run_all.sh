#!/usr/bin/env bash
# Run every explainer benchmark; extra arguments go to each (e.g. --quick, --device cuda, --threads 1).
#   bench/run_all.sh --quick            # a few minutes on a 2-core CPU
#   bench/run_all.sh --device cuda      # on a GPU machine
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../.venv/bin/python}"
[ -x "$PY" ] || PY=python
# The explainers, then the service: 2 workers vs 1, and an audit of 2,000 images.
for b in saliency_bench.py filters_bench.py lime_bench.py lime_memory.py job_64.py workers_bench.py audit_2000.py; do
  echo "=== $b $*"
  "$PY" "$b" "$@"
done
